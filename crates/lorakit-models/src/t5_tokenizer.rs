//! The T5 tokenizer of T5-XXL v1.1 (Flux's and SD3's second text encoder): SentencePiece unigram
//! with 32,100 pieces, run by the `tokenizers` crate from an HF `tokenizer.json`.
//!
//! The `tokenizer.json` of `google/t5-v1_1-xxl` is compiled into the binary (gzipped,
//! `assets/t5_tokenizer.json.gz`; provenance in `assets/README.md`), so single-file checkpoints
//! need no download; a user's own file (e.g. `tokenizer_2/tokenizer.json` of a diffusers Flux
//! folder) can be loaded with [`T5Tokenizer::from_file`].
//!
//! Prompts are tokenised as sd-scripts' `FluxTokenizeStrategy` does through transformers'
//! `T5TokenizerFast(text, max_length=N, padding="max_length", truncation=True)`: the file's own
//! normaliser (precompiled charsmap, runs of spaces collapsed), Metaspace pre-tokeniser, unigram
//! model and post-processor (`</s>` appended, id 1); truncation to N keeping the `</s>`; padding
//! with `<pad>` (id 0) to N; attention mask 1 on every real token (EOS included), 0 on padding.
//! These are the same `tokenizers` settings transformers applies, so the ids are the library's,
//! not a re-implementation.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{Device, Tensor};
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::{Error, Result};

/// The embedded `tokenizer.json` of `google/t5-v1_1-xxl`, gzipped.
const TOKENIZER_JSON_GZ: &[u8] = include_bytes!("../assets/t5_tokenizer.json.gz");

/// sd-scripts' `t5xxl_max_token_length` default for Flux.1-dev (and SD3).
pub const T5_MAX_LENGTH_DEV: usize = 512;
/// sd-scripts' `t5xxl_max_token_length` default for Flux.1-schnell.
pub const T5_MAX_LENGTH_SCHNELL: usize = 256;

/// Token ids and attention masks of a batch of prompts, each padded or truncated to `max_length`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct T5Tokens {
    /// Row-major (batch, max_length) token ids.
    pub input_ids: Vec<u32>,
    /// Row-major (batch, max_length): 1 for real tokens (the final `</s>` included), 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Number of prompts.
    pub batch: usize,
    /// Positions per prompt.
    pub max_length: usize,
    /// Per prompt, how many tokens truncation dropped (0 when the prompt fitted).
    pub dropped: Vec<usize>,
}

impl T5Tokens {
    /// The ids as a (batch, max_length) u32 tensor.
    pub fn ids_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_slice(&self.input_ids, (self.batch, self.max_length), device)
    }

    /// The attention mask as a (batch, max_length) u32 tensor.
    pub fn mask_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_slice(&self.attention_mask, (self.batch, self.max_length), device)
    }

    /// The ids of prompt `i` (all `max_length` positions).
    pub fn row(&self, i: usize) -> &[u32] {
        &self.input_ids[i * self.max_length..(i + 1) * self.max_length]
    }
}

/// A tokenizer set up for one `max_length`, and that length.
type Configured = (usize, Arc<Tokenizer>);

/// The T5 tokenizer (see the module docs). Clones are cheap and share the vocabulary.
#[derive(Clone)]
pub struct T5Tokenizer {
    /// Without truncation or padding.
    inner: Arc<Tokenizer>,
    /// A copy configured for the last `max_length` asked for: copying the vocabulary costs tens
    /// of milliseconds, and a run tokenises every caption at one length.
    configured: Arc<Mutex<Option<Configured>>>,
    source: String,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer").field("source", &self.source).finish_non_exhaustive()
    }
}

impl T5Tokenizer {
    /// `<pad>`: padding id (also T5's decoder start id).
    pub const PAD: u32 = 0;
    /// `</s>`: appended to every prompt.
    pub const EOS: u32 = 1;
    /// `<unk>`: characters the vocabulary cannot spell (emoji, most CJK).
    pub const UNK: u32 = 2;

    /// The embedded `google/t5-v1_1-xxl` tokenizer (parsed once per process, ~80 ms).
    pub fn new() -> Result<Self> {
        static EMBEDDED: OnceLock<std::result::Result<T5Tokenizer, String>> = OnceLock::new();
        let parsed = EMBEDDED.get_or_init(|| {
            let mut json = Vec::with_capacity(1 << 21);
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(TOKENIZER_JSON_GZ), &mut json)
                .map_err(|e| format!("embedded T5 tokenizer.json: {e}"))?;
            Self::from_bytes(&json, "embedded T5 tokenizer.json (google/t5-v1_1-xxl)").map_err(|e| e.to_string())
        });
        parsed.clone().map_err(Error::Tokenizer)
    }

    /// A T5 `tokenizer.json` from disk (e.g. `tokenizer_2/tokenizer.json` of a diffusers Flux
    /// folder). Errors name the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// A T5 `tokenizer.json` held in memory; `source` names it in errors. The file must map
    /// `<pad>` to 0 and `</s>` to 1 (the ids the T5 encoder and sd-scripts rely on) and its
    /// post-processor must append `</s>`.
    pub fn from_bytes(json: &[u8], source: &str) -> Result<Self> {
        let fail = |what: String| Error::Tokenizer(format!("{source}: {what}"));
        // `tokenizers` panics instead of failing on some malformed fields (a precompiled charsmap
        // that is not base64); a bad file must be an error that names it, not a crash.
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(json)).unwrap_or_else(|payload| {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the tokenizers library failed on it".into());
            Err(message.into())
        });
        let mut inner = parsed.map_err(|e| fail(format!("not a usable tokenizer.json: {e}")))?;
        for (token, id) in [("<pad>", Self::PAD), ("</s>", Self::EOS)] {
            match inner.token_to_id(token) {
                Some(found) if found == id => {}
                found => {
                    return Err(fail(format!(
                        "not a T5 tokenizer: {token} has id {found:?}, T5 needs {id} (is this another model's tokenizer.json?)"
                    )))
                }
            }
        }
        // Truncation and padding are set per call; whatever the file configures is dropped.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| fail(e.to_string()))?;
        let tokenizer = T5Tokenizer { inner: Arc::new(inner), configured: Arc::default(), source: source.to_string() };
        let probe = tokenizer.encode("a")?;
        if probe.last() != Some(&Self::EOS) {
            return Err(fail(format!(
                "not a T5 tokenizer: it does not end a prompt with </s> (\"a\" gives {probe:?})"
            )));
        }
        Ok(tokenizer)
    }

    /// Where the tokenizer came from (a path or "embedded …").
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Pieces plus added tokens (32,100 for T5 v1.1; the model's embedding has 32,128 rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of one prompt with `</s>` appended, neither truncated nor padded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| self.error(e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// sd-scripts' T5 tokenisation of a batch: each prompt to exactly `max_length` ids (truncated
    /// with its `</s>` kept, padded with `<pad>`) and its attention mask. A truncated prompt is
    /// logged as a warning naming the dropped token count, because the model never sees those
    /// words.
    pub fn tokenize<S: AsRef<str>>(&self, prompts: &[S], max_length: usize) -> Result<T5Tokens> {
        if max_length == 0 {
            return Err(Error::Invalid("T5 tokenizer: max_length must be at least 1 (room for </s>)".into()));
        }
        let tok = self.configured_for(max_length)?;
        let texts: Vec<&str> = prompts.iter().map(AsRef::as_ref).collect();
        let encodings = tok.encode_batch(texts.clone(), true).map_err(|e| self.error(e))?;
        let mut out = T5Tokens {
            input_ids: Vec::with_capacity(prompts.len() * max_length),
            attention_mask: Vec::with_capacity(prompts.len() * max_length),
            batch: prompts.len(),
            max_length,
            dropped: Vec::with_capacity(prompts.len()),
        };
        for (text, enc) in texts.iter().zip(&encodings) {
            let (ids, mask) = (enc.get_ids(), enc.get_attention_mask());
            if ids.len() != max_length || mask.len() != max_length {
                return Err(Error::Tokenizer(format!(
                    "{}: produced {} ids for max_length {max_length} (does the file configure something unusual?)",
                    self.source,
                    ids.len()
                )));
            }
            // Only a prompt that fills every position can have been cut; count its real length.
            let dropped =
                if mask[max_length - 1] == 1 { self.encode(text)?.len().saturating_sub(max_length) } else { 0 };
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    max_length,
                    "T5 prompt truncated: {dropped} token(s) beyond t5xxl_max_token_length {max_length} were dropped"
                );
            }
            out.input_ids.extend_from_slice(ids);
            out.attention_mask.extend_from_slice(mask);
            out.dropped.push(dropped);
        }
        Ok(out)
    }

    /// Text of `ids`; with `skip_special_tokens`, `<pad>`, `</s>`, `<unk>` and the sentinels are
    /// left out (transformers' `decode(…, skip_special_tokens=True)`).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| self.error(e))
    }

    /// The tokenizer with transformers' settings for `padding="max_length", truncation=True`.
    fn configured_for(&self, max_length: usize) -> Result<Arc<Tokenizer>> {
        let mut cache = self.configured.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((len, tok)) = cache.as_ref() {
            if *len == max_length {
                return Ok(Arc::clone(tok));
            }
        }
        let mut tok = (*self.inner).clone();
        tok.with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| self.error(e))?;
        tok.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: Self::PAD,
            pad_type_id: 0,
            pad_token: "<pad>".into(),
        }));
        let tok = Arc::new(tok);
        *cache = Some((max_length, Arc::clone(&tok)));
        Ok(tok)
    }

    fn error(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer(format!("{}: {e}", self.source))
    }
}
