//! Token ids as text encoders read them: a (batch, length) tensor of any integer dtype, checked
//! against the vocabulary (and a position limit) on the host before any lookup, so a bad id is an
//! error naming its sequence and position rather than an out-of-range index.

use candle_core::{DType, Result, Tensor};

/// Validated ids, row-major (batch, len).
pub(crate) struct TokenIds {
    pub(crate) batch: usize,
    pub(crate) len: usize,
    pub(crate) ids: Vec<u32>,
}

/// Reads `input_ids` (B, L) for the encoder named `encoder` (in messages, e.g. "T5 encoder"):
/// every id below `vocab`, at most `max_len` positions when given.
pub(crate) fn read_token_ids(
    input_ids: &Tensor,
    vocab: usize,
    max_len: Option<usize>,
    encoder: &str,
) -> Result<TokenIds> {
    let (batch, len) = match input_ids.dims() {
        &[b, l] => (b, l),
        dims => candle_core::bail!("{encoder}: token ids must be (batch, length), got shape {dims:?}"),
    };
    if batch == 0 || len == 0 {
        candle_core::bail!("{encoder}: token ids of shape {:?} are empty", input_ids.dims())
    }
    if let Some(max_len) = max_len.filter(|&m| len > m) {
        candle_core::bail!(
            "{len} tokens per sequence, the {encoder} takes at most {max_len} (longer prompts go through encode_chunked)"
        )
    }
    let flat = input_ids.flatten_all()?;
    let wide: Vec<i64> = match input_ids.dtype() {
        DType::U8 => flat.to_vec1::<u8>()?.into_iter().map(i64::from).collect(),
        DType::U32 => flat.to_vec1::<u32>()?.into_iter().map(i64::from).collect(),
        DType::I16 => flat.to_vec1::<i16>()?.into_iter().map(i64::from).collect(),
        DType::I32 => flat.to_vec1::<i32>()?.into_iter().map(i64::from).collect(),
        DType::I64 => flat.to_vec1::<i64>()?,
        other => candle_core::bail!("{encoder}: token ids must have an integer dtype, got {other:?}"),
    };
    let mut ids = Vec::with_capacity(wide.len());
    for (i, &id) in wide.iter().enumerate() {
        if id < 0 || id >= vocab as i64 {
            candle_core::bail!(
                "{encoder}: token id {id} (sequence {}, position {}) is outside its vocabulary of {vocab} ids",
                i / len,
                i % len
            )
        }
        ids.push(id as u32);
    }
    Ok(TokenIds { batch, len, ids })
}
