//! Reading module names of the DiT families ([`crate::flux`], [`crate::sd3`]): the same path can
//! be written with dots (BFL/SAI, diffusers) or underscores (kohya), so every lookup takes the
//! separator, and a name matches a table entry only as a whole (kohya's underscores are lossy).

use std::ops::Range;

/// T5-XXL block children (HF `T5EncoderModel`, under `encoder.block.N.`), as sd-scripts targets
/// them; Flux and SD3 use the same encoder.
pub(crate) const T5: [&str; 7] = [
    "layer.0.SelfAttention.q",
    "layer.0.SelfAttention.k",
    "layer.0.SelfAttention.v",
    "layer.0.SelfAttention.o",
    "layer.1.DenseReluDense.wi_0",
    "layer.1.DenseReluDense.wi_1",
    "layer.1.DenseReluDense.wo",
];

/// `"<prefix><sep><index><sep><tail>"` → (index, tail).
pub(crate) fn indexed<'a>(name: &'a str, prefix: &str, sep: &str) -> Option<(u32, &'a str)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix(sep)?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    let index = rest[..end].parse().ok()?;
    Some((index, rest[end..].strip_prefix(sep)?))
}

/// `child` written with `sep` for its dots equals `tail`.
fn same(child: &str, tail: &str, sep: &str) -> bool {
    child.len() == tail.len() && child.replace('.', sep) == tail
}

/// A lookup in a table of (original path, diffusers parts): by the original name (the whole
/// layer) or by a diffusers name (one part) → (index in the table, parts covered).
pub(crate) fn child(
    table: &[(&str, &[&str])],
    tail: &str,
    sep: &str,
    diffusers: bool,
) -> Option<(usize, Range<usize>)> {
    table.iter().enumerate().find_map(|(k, (original, parts))| {
        if diffusers {
            parts.iter().position(|d| same(d, tail, sep)).map(|p| (k, p..p + 1))
        } else {
            same(original, tail, sep).then(|| (k, 0..parts.len().max(1)))
        }
    })
}

/// A CLIP layer `text_model.encoder.layers.<i>.<child>` → (i, index of the child in `children`,
/// whose order is the family's own).
pub(crate) fn clip_layer(rest: &str, sep: &str, children: &[&str]) -> Option<(u32, usize)> {
    encoder_layer(rest, sep, &["text_model", "encoder", "layers"], children)
}

/// A T5 block layer `encoder.block.<i>.<child>` → (i, index of the child in [`T5`]).
pub(crate) fn t5_layer(rest: &str, sep: &str) -> Option<(u32, usize)> {
    encoder_layer(rest, sep, &["encoder", "block"], &T5)
}

fn encoder_layer(rest: &str, sep: &str, container: &[&str], children: &[&str]) -> Option<(u32, usize)> {
    let (i, tail) = indexed(rest, &container.join(sep), sep)?;
    children.iter().position(|c| same(c, tail, sep)).map(|k| (i, k))
}
