//! The conversion engine shared by the DiT families (Flux.1 in [`crate::flux_convert`], SD3 /
//! SD3.5 in [`crate::sd3_convert`]): a LoRA in any layout of the family is read as layers
//! ([`DitSite`]) and written in kohya or diffusers naming.
//!
//! * To kohya, the parts diffusers keeps apart are fused back into the original layer, as
//!   sd-scripts' converters do. Parts that share one down weight (a kohya file converted to
//!   diffusers) become one pair again, `up` = the parts' ups stacked; other parts are stacked
//!   block-diagonally (`down` = the downs concatenated, rank = the sum of ranks), as sd-scripts'
//!   `split_qkv` saves them. alpha keeps each part's scale (`alpha/rank`); parts with different
//!   scales have them folded into `up`, alpha = rank. A part the file lacks gets zero rows, sized
//!   by the family ([`DitSite::missing_width`]).
//! * To diffusers, a fused layer is split: a block-diagonal `up` (sd-scripts' `split_qkv` save) is
//!   cut into its blocks, otherwise every part gets a copy of `down` and its rows of `up`;
//!   `alpha/rank` is folded into `lora_B` (diffusers ignores alphas).
//! * Modulation layers whose output halves are (shift, scale) in the original model and (scale,
//!   shift) in diffusers ([`DitSite::swaps_halves`]) have the halves of `up` swapped.
//!
//! A module copied whole keeps its stored shapes (SD3's patch-embedding conv stays 4-D).
//! `scale · up · down` of every layer is unchanged either way.

use crate::convert::{ConvertError, Target};
use crate::keys::{Family, LoraModule, ModuleKind, ModuleSet};
use crate::safetensors_file::{LoraFile, Tensor};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

/// A module name read in a family's naming.
pub(crate) struct DitPart<S> {
    /// The layer.
    pub site: S,
    /// The parts of a fused layer covered (`0..part_count` for the whole layer).
    pub parts: Range<usize>,
    /// True when the naming orders modulation halves as diffusers does.
    pub diffusers_halves: bool,
}

/// A DiT family's layers as the engine sees them. Each method states one way the families may
/// differ; the answers live beside the family ([`crate::flux_convert`], [`crate::sd3_convert`]).
pub(crate) trait DitSite: Copy + Ord {
    /// The family, for errors.
    const FAMILY: Family;
    /// What the notes call its fused layers (`fused`, `fused qkv`).
    const FUSED: &'static str;
    /// diffusers' component holding T5-XXL (`text_encoder_2`, `text_encoder_3`).
    const T5_COMPONENT: &'static str;
    /// The diffusers pipeline, which does not load T5 LoRAs.
    const PIPELINE: &'static str;
    /// The `lorakit_convert` metadata note.
    const METADATA_NOTE: &'static str;

    /// Reads a module name in any of the family's layouts.
    fn parse(module: &str) -> Option<DitPart<Self>>;
    /// The original model's path of the layer, for messages.
    fn path(self) -> String;
    /// The kohya / sd-scripts module name.
    fn kohya_name(self) -> String;
    /// The diffusers module name of each part.
    fn diffusers_names(self) -> Vec<String>;
    /// How many diffusers layers the layer splits into.
    fn part_count(self) -> usize;
    /// Output width of each part of the whole layer, from its input and output widths.
    fn part_widths(self, in_features: usize, out_features: usize) -> Option<Vec<usize>>;
    /// True when `up`'s halves are swapped between the original naming and diffusers'.
    fn swaps_halves(self, in_features: usize, out_features: usize) -> bool;
    /// True for a T5-XXL layer (the note on diffusers' T5 support).
    fn is_t5(self) -> bool;
    /// Why a module of `kind` cannot adapt this layer, if it cannot.
    fn kind_error(self, kind: ModuleKind) -> Option<String>;
    /// The model's MLP width a module covering `parts` with `out_features` outputs shows.
    fn mlp_width(self, _parts: &Range<usize>, _out_features: usize) -> Option<usize> {
        None
    }
    /// The width of a `part` the file lacks, given the layer's input width, the width of its
    /// q/k/v parts the file has and the MLP width the file shows; `Err(reason)` when it cannot
    /// be sized.
    fn missing_width(self, part: usize, inn: usize, qkv: Option<usize>, mlp: Option<usize>) -> Result<usize, String>;
    /// The family's error for a module whose shape does not fit its layer.
    fn shape_error(path: &Path, module: &str, reason: String) -> ConvertError;
}

/// A converted DiT LoRA, before it is written.
pub(crate) struct DitConverted {
    /// The output tensors.
    pub tensors: BTreeMap<String, Tensor>,
    /// (input module, output module) pairs.
    pub renamed: Vec<(String, String)>,
    /// Modules whose `alpha/rank` was folded into `up`.
    pub folded: usize,
    /// What the user should know about the result.
    pub notes: Vec<String>,
}

/// One input module with its weights in their stored shapes.
struct Piece<'a, S> {
    module: &'a LoraModule,
    name: DitPart<S>,
    down: Tensor,
    up: Tensor,
}

impl<S: DitSite> Piece<'_, S> {
    fn rank(&self) -> usize {
        self.module.rank
    }
    fn inn(&self) -> usize {
        self.module.in_features
    }
    fn out(&self) -> usize {
        self.module.out_features
    }
    fn scale(&self) -> f32 {
        self.module.scale()
    }
    /// True when `up`'s halves must be swapped to go from this piece's naming to `diffusers`'.
    fn swap_to(&self, diffusers: bool) -> bool {
        self.name.site.swaps_halves(self.inn(), self.out()) && self.name.diffusers_halves != diffusers
    }
    /// The shape error of this module.
    fn error(&self, path: &Path, reason: String) -> ConvertError {
        S::shape_error(path, &self.module.name, reason)
    }
}

/// Reads every module of `set` as a layer of `S`'s family and writes it in `to`'s naming.
pub(crate) fn convert_dit<S: DitSite>(
    file: &LoraFile,
    set: &ModuleSet,
    to: Target,
) -> Result<DitConverted, ConvertError> {
    let path = file.path();
    let mut by_site: BTreeMap<S, Vec<Piece<'_, S>>> = BTreeMap::new();
    for m in &set.modules {
        if m.mid_key.is_some() {
            return Err(ConvertError::Tucker { path: path.to_path_buf(), module: m.name.clone() });
        }
        let Some(name) = S::parse(&m.name) else {
            return Err(ConvertError::Unmappable {
                path: path.to_path_buf(),
                module: m.name.clone(),
                family: S::FAMILY,
            });
        };
        if let Some(reason) = name.site.kind_error(m.kind) {
            return Err(S::shape_error(path, &m.name, reason));
        }
        let tensor = |key: &str| -> Result<Tensor, ConvertError> {
            let shape = file.info(key).map(|i| i.shape.clone()).unwrap_or_default();
            Ok(Tensor::new(shape, file.tensor_f32(key)?))
        };
        let piece = Piece { module: m, down: tensor(&m.down_key)?, up: tensor(&m.up_key)?, name };
        by_site.entry(piece.name.site).or_default().push(piece);
    }
    let mlp_width =
        by_site.iter().find_map(|(site, pieces)| pieces.iter().find_map(|p| site.mlp_width(&p.name.parts, p.out())));
    let mut out = DitConverted { tensors: BTreeMap::new(), renamed: Vec::new(), folded: 0, notes: Vec::new() };
    let (mut padded, mut chunked, mut t5) = (0, 0, 0);
    for (site, pieces) in &by_site {
        check_overlap(path, *site, pieces)?;
        if site.is_t5() {
            t5 += 1;
        }
        match to {
            Target::Kohya => padded += to_kohya(path, *site, pieces, mlp_width, &mut out)?,
            Target::Peft => {
                for piece in pieces {
                    chunked += to_diffusers(path, *site, piece, &mut out)?;
                }
            }
        }
    }
    let fused = S::FUSED;
    if padded > 0 {
        out.notes.push(format!(
            "{padded} {fused} layers lack some of their diffusers parts; those parts were written as zero rows"
        ));
    }
    if chunked > 0 {
        out.notes.push(format!(
            "{chunked} {fused} layers held sd-scripts split_qkv parts (block-diagonal up) and were cut into them"
        ));
    }
    if to == Target::Peft && t5 > 0 {
        out.notes.push(format!(
            "{t5} T5-XXL modules are written as {}.…; diffusers' {} does not load T5 LoRAs",
            S::T5_COMPONENT,
            S::PIPELINE
        ));
    }
    // Already in the target naming: every module keeps its name and its tensor suffixes.
    let down_suffix = match to {
        Target::Kohya => ".lora_down.weight",
        Target::Peft => ".lora_A.weight",
    };
    let unchanged = out.renamed.iter().all(|(a, b)| a == b)
        && set.modules.iter().all(|m| m.down_key.strip_suffix(down_suffix) == Some(m.name.as_str()));
    if unchanged {
        return Err(ConvertError::AlreadyTarget { path: path.to_path_buf(), scheme: set.scheme });
    }
    Ok(out)
}

/// Two modules covering the same part of a layer are refused.
fn check_overlap<S: DitSite>(path: &Path, site: S, pieces: &[Piece<'_, S>]) -> Result<(), ConvertError> {
    let mut owner: Vec<Option<&str>> = vec![None; site.part_count()];
    for p in pieces {
        for part in p.name.parts.clone() {
            if let Some(first) = owner[part] {
                return Err(ConvertError::Duplicate {
                    path: path.to_path_buf(),
                    first: first.to_string(),
                    second: p.module.name.clone(),
                    target: site.kohya_name(),
                });
            }
            owner[part] = Some(&p.module.name);
        }
    }
    Ok(())
}

/// `p`'s `up` with its two halves of rows (out × rank) swapped.
fn swapped_up<S: DitSite>(path: &Path, p: &Piece<'_, S>) -> Result<Vec<f32>, ConvertError> {
    let out = p.out();
    if out % 2 != 0 {
        return Err(p.error(path, format!("modulation has {out} outputs, not an even number")));
    }
    let mut up = p.up.data.clone();
    let (a, b) = up.split_at_mut(out / 2 * p.rank());
    a.swap_with_slice(b);
    Ok(up)
}

/// The rank of each block when `up` (out × rank, rows split by `widths`) is block-diagonal with
/// `widths.len()` equal-rank blocks, as sd-scripts' `split_qkv` saves it; `None` otherwise.
pub(crate) fn block_diagonal(up: &[f32], rank: usize, widths: &[usize]) -> Option<usize> {
    let k = widths.len();
    if k < 2 || rank % k != 0 {
        return None;
    }
    let r = rank / k;
    let mut row = 0;
    for (j, w) in widths.iter().enumerate() {
        for i in row..row + w {
            let line = &up[i * rank..(i + 1) * rank];
            let off = line.iter().enumerate().any(|(c, v)| c / r != j && *v != 0.0);
            if off {
                return None;
            }
        }
        row += w;
    }
    Some(r)
}

/// Writes one layer in kohya naming; returns 1 when parts were missing (zero rows).
fn to_kohya<S: DitSite>(
    path: &Path,
    site: S,
    pieces: &[Piece<'_, S>],
    mlp_width: Option<usize>,
    out: &mut DitConverted,
) -> Result<usize, ConvertError> {
    let name = site.kohya_name();
    let n = site.part_count();
    let first = &pieces[0];
    // The whole layer in one module: copied, shapes kept (modulation halves swapped back).
    if pieces.len() == 1 && first.name.parts == (0..n) {
        let up = if first.swap_to(false) { swapped_up(path, first)? } else { first.up.data.clone() };
        let up = Tensor::new(first.up.shape.clone(), up);
        put_kohya(out, &name, first.down.clone(), up, first.module.alpha);
        out.renamed.push((first.module.name.clone(), name));
        return Ok(0);
    }
    let inn = first.inn();
    if let Some(p) = pieces.iter().find(|p| p.inn() != inn) {
        let reason = format!(
            "has input width {} but `{}` has {inn}; they cannot be parts of one layer",
            p.inn(),
            first.module.name
        );
        return Err(p.error(path, reason));
    }
    let mut widths: Vec<Option<usize>> = vec![None; n];
    for p in pieces {
        let k = p.name.parts.len();
        if p.out() % k != 0 {
            return Err(p.error(path, format!("{} outputs do not split into {k} parts", p.out())));
        }
        for part in p.name.parts.clone() {
            widths[part] = Some(p.out() / k);
        }
    }
    // q, k and v are equally wide (the model's hidden size).
    let qkv: Vec<usize> = widths.iter().take(3).flatten().copied().collect();
    if qkv.iter().any(|w| *w != qkv[0]) {
        let reason = format!("and the other parts of `{}` have q/k/v widths {qkv:?}, which differ", site.path());
        return Err(first.error(path, reason));
    }
    let missing = widths.iter().any(Option::is_none);
    let widths = (0..n)
        .map(|part| match widths[part] {
            Some(w) => Ok(w),
            None => site.missing_width(part, inn, qkv.first().copied(), mlp_width),
        })
        .collect::<Result<Vec<usize>, String>>()
        .map_err(|reason| first.error(path, reason))?;
    let offsets: Vec<usize> = widths.iter().scan(0, |acc, w| Some(std::mem::replace(acc, *acc + w))).collect();
    let total: usize = widths.iter().sum();
    let row_of = |p: &Piece<'_, S>| offsets[p.name.parts.start];

    let shared =
        pieces.iter().all(|p| p.rank() == first.rank() && p.scale() == first.scale() && p.down.data == first.down.data);
    if shared {
        let r = first.rank();
        let mut up = vec![0f32; total * r];
        for p in pieces {
            let row = row_of(p);
            up[row * r..(row + p.out()) * r].copy_from_slice(&p.up.data);
        }
        let down = Tensor::new(vec![r, inn], first.down.data.clone());
        put_kohya(out, &name, down, Tensor::new(vec![total, r], up), first.scale() * r as f32);
    } else {
        let rank: usize = pieces.iter().map(Piece::rank).sum();
        let same_scale = pieces.iter().all(|p| p.scale() == first.scale());
        let mut down = Vec::with_capacity(rank * inn);
        let mut up = vec![0f32; total * rank];
        let mut col = 0;
        for p in pieces {
            down.extend_from_slice(&p.down.data);
            let factor = if same_scale { 1.0 } else { p.scale() };
            let row = row_of(p);
            for i in 0..p.out() {
                for c in 0..p.rank() {
                    up[(row + i) * rank + col + c] = p.up.data[i * p.rank() + c] * factor;
                }
            }
            col += p.rank();
        }
        let alpha = if same_scale { first.scale() * rank as f32 } else { rank as f32 };
        if !same_scale {
            out.folded += 1;
        }
        put_kohya(out, &name, Tensor::new(vec![rank, inn], down), Tensor::new(vec![total, rank], up), alpha);
    }
    for p in pieces {
        out.renamed.push((p.module.name.clone(), name.clone()));
    }
    Ok(usize::from(missing))
}

fn put_kohya(out: &mut DitConverted, name: &str, down: Tensor, up: Tensor, alpha: f32) {
    out.tensors.insert(format!("{name}.lora_down.weight"), down);
    out.tensors.insert(format!("{name}.lora_up.weight"), up);
    out.tensors.insert(format!("{name}.alpha"), Tensor::scalar(alpha));
}

/// Writes one module in diffusers naming, split into the parts it covers; returns 1 when it was
/// cut along a block-diagonal `up`.
fn to_diffusers<S: DitSite>(
    path: &Path,
    site: S,
    p: &Piece<'_, S>,
    out: &mut DitConverted,
) -> Result<usize, ConvertError> {
    let names = site.diffusers_names();
    let parts: Range<usize> = p.name.parts.clone();
    let (rank, inn, rows) = (p.rank(), p.inn(), p.out());
    let scale = p.scale();
    let mut up = if p.swap_to(true) { swapped_up(path, p)? } else { p.up.data.clone() };
    if scale != 1.0 {
        up.iter_mut().for_each(|v| *v *= scale);
        out.folded += 1;
    }
    let k = parts.len();
    if k == 1 {
        put_diffusers(out, &names[parts.start], p.down.clone(), Tensor::new(p.up.shape.clone(), up));
        out.renamed.push((p.module.name.clone(), names[parts.start].clone()));
        return Ok(0);
    }
    let widths = if parts == (0..site.part_count()) {
        site.part_widths(inn, rows)
    } else {
        (rows % k == 0).then(|| vec![rows / k; k])
    };
    let Some(widths) = widths else {
        let reason = format!("{rows} outputs from {inn} inputs do not split into the {k} parts of `{}`", site.path());
        return Err(p.error(path, reason));
    };
    let chunk = block_diagonal(&p.up.data, rank, &widths);
    let mut row = 0;
    for (j, w) in widths.iter().enumerate() {
        let name = &names[parts.start + j];
        let rows_j = &up[row * rank..(row + w) * rank];
        match chunk {
            Some(r) => {
                let down = p.down.data[j * r * inn..(j + 1) * r * inn].to_vec();
                let up_j: Vec<f32> =
                    rows_j.chunks_exact(rank).flat_map(|line| line[j * r..(j + 1) * r].iter().copied()).collect();
                put_diffusers(out, name, Tensor::new(vec![r, inn], down), Tensor::new(vec![*w, r], up_j));
            }
            None => {
                let down = Tensor::new(vec![rank, inn], p.down.data.clone());
                put_diffusers(out, name, down, Tensor::new(vec![*w, rank], rows_j.to_vec()));
            }
        }
        out.renamed.push((p.module.name.clone(), name.clone()));
        row += w;
    }
    Ok(usize::from(chunk.is_some()))
}

fn put_diffusers(out: &mut DitConverted, name: &str, down: Tensor, up: Tensor) {
    out.tensors.insert(format!("{name}.lora_A.weight"), down);
    out.tensors.insert(format!("{name}.lora_B.weight"), up);
}

/// Asserts that each site's kohya name and each of its diffusers names read back as it.
#[cfg(test)]
pub(crate) fn assert_names_round_trip<S: DitSite + std::fmt::Debug>(sites: &[S]) {
    for &site in sites {
        assert_eq!(S::parse(&site.kohya_name()).map(|n| n.site), Some(site));
        for (p, name) in site.diffusers_names().iter().enumerate() {
            let n = S::parse(name).unwrap_or_else(|| panic!("{name} not parsed"));
            assert_eq!((n.site, n.parts), (site, p..p + 1), "{name}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_diagonal_needs_exact_zeros_off_the_diagonal() {
        // 2 parts of width 2, rank 2 (1 per part).
        let up = [1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 4.0];
        assert_eq!(block_diagonal(&up, 2, &[2, 2]), Some(1));
        let mut dense = up;
        dense[1] = 1e-9;
        assert_eq!(block_diagonal(&dense, 2, &[2, 2]), None);
        assert_eq!(block_diagonal(&up, 2, &[4]), None);
        assert_eq!(block_diagonal(&up[..6], 3, &[1, 1]), None, "rank not a multiple of the parts");
    }
}
