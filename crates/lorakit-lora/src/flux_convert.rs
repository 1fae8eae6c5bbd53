//! Converting a Flux.1 LoRA to kohya or diffusers names (`lorakit convert`, and in memory for
//! `merge`/`generate`), whatever layout it was written in ([`crate::flux`]).
//!
//! * To kohya, the parts diffusers keeps apart are fused back into BFL's layers, as sd-scripts'
//!   `convert_flux_lora.py` (`convert_ai_toolkit_to_sd_scripts`) does: `to_q/to_k/to_v` →
//!   `img_attn_qkv`, `to_q/to_k/to_v/proj_mlp` → `linear1`. Parts that share one down weight (a
//!   kohya file converted to diffusers) become one pair again, `up` = the parts' ups stacked; other
//!   parts are stacked block-diagonally (`down` = the downs concatenated, rank = the sum of ranks).
//!   alpha keeps each part's scale (`alpha/rank`); parts with different scales have them folded
//!   into `up`, alpha = rank. A part the file lacks gets zero rows (q/k/v: hidden = the layer's
//!   input width; linear1's MLP: the file's own MLP width, else 4 × hidden as in Flux.1).
//! * To diffusers, a fused layer is split as diffusers' `_convert_kohya_flux_lora_to_diffusers` and
//!   sd-scripts do: a block-diagonal `up` (sd-scripts' `split_qkv` save) is cut into its blocks,
//!   otherwise every part gets a copy of `down` and its rows of `up`; `alpha/rank` is folded into
//!   `lora_B` (diffusers ignores alphas).
//! * `final_layer.adaLN_modulation.1` ↔ `norm_out.linear` swaps the halves of `up` (BFL: shift,
//!   scale; diffusers: scale, shift).
//!
//! `scale · up · down` of every layer is unchanged either way (tested against diffusers' own
//! conversion in `tests/flux_layouts.rs`).

use crate::convert::{ConvertError, Target};
use crate::flux::{parse, FluxName, Layout, Site};
use crate::keys::{Family, LoraModule, ModuleSet};
use crate::safetensors_file::{LoraFile, Tensor};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

/// A converted Flux LoRA, before it is written.
pub(crate) struct FluxConverted {
    /// The output tensors.
    pub tensors: BTreeMap<String, Tensor>,
    /// (input module, output module) pairs.
    pub renamed: Vec<(String, String)>,
    /// Modules whose `alpha/rank` was folded into `up`.
    pub folded: usize,
    /// What the user should know about the result.
    pub notes: Vec<String>,
}

/// One input module with its weights.
struct Piece<'a> {
    module: &'a LoraModule,
    name: FluxName,
    down: Vec<f32>,
    up: Vec<f32>,
}

impl Piece<'_> {
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
    /// True when the name is in diffusers' order of the final layer's halves.
    fn diffusers_halves(&self) -> bool {
        matches!(self.name.layout, Layout::Diffusers | Layout::KohyaDiffusers)
    }
}

fn shape_error(path: &Path, module: &str, reason: String) -> ConvertError {
    ConvertError::FluxShape { path: path.to_path_buf(), module: module.to_string(), reason }
}

/// Reads every module of `set` as a Flux layer and writes it in `to`'s naming.
pub(crate) fn convert_flux(file: &LoraFile, set: &ModuleSet, to: Target) -> Result<FluxConverted, ConvertError> {
    let path = file.path();
    let mut by_site: BTreeMap<Site, Vec<Piece<'_>>> = BTreeMap::new();
    for m in &set.modules {
        if m.mid_key.is_some() {
            return Err(ConvertError::Tucker { path: path.to_path_buf(), module: m.name.clone() });
        }
        let Some(name) = parse(&m.name) else {
            return Err(ConvertError::Unmappable {
                path: path.to_path_buf(),
                module: m.name.clone(),
                family: Family::Flux,
            });
        };
        if m.kind != crate::keys::ModuleKind::Linear {
            return Err(shape_error(
                path,
                &m.name,
                format!("is a {} module; every Flux LoRA target is linear", m.kind),
            ));
        }
        let piece = Piece { module: m, name, down: file.tensor_f32(&m.down_key)?, up: file.tensor_f32(&m.up_key)? };
        by_site.entry(piece.name.site).or_default().push(piece);
    }
    let mlp_width = mlp_width(&by_site);
    let mut out = FluxConverted { tensors: BTreeMap::new(), renamed: Vec::new(), folded: 0, notes: Vec::new() };
    let (mut padded, mut chunked, mut t5) = (0, 0, 0);
    for (site, pieces) in &by_site {
        check_overlap(path, *site, pieces)?;
        if matches!(site, Site::T5(..)) {
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
    if padded > 0 {
        out.notes.push(format!(
            "{padded} fused layers lack some of their diffusers parts; those parts were written as zero rows"
        ));
    }
    if chunked > 0 {
        out.notes.push(format!(
            "{chunked} fused layers held sd-scripts split_qkv parts (block-diagonal up) and were cut into them"
        ));
    }
    if to == Target::Peft && t5 > 0 {
        out.notes.push(format!(
            "{t5} T5-XXL modules are written as text_encoder_2.…; diffusers' FluxPipeline does not load T5 LoRAs"
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

/// The MLP width the file shows (a single block's `proj_mlp`, or a double block's first MLP layer).
fn mlp_width(by_site: &BTreeMap<Site, Vec<Piece<'_>>>) -> Option<usize> {
    by_site.iter().find_map(|(site, pieces)| {
        pieces.iter().find_map(|p| match site {
            Site::Single(_, 0) if p.name.parts == (3..4) => Some(p.out()),
            Site::Double(_, 3) | Site::Double(_, 8) => Some(p.out()),
            _ => None,
        })
    })
}

/// Two modules covering the same part of a layer are refused.
fn check_overlap(path: &Path, site: Site, pieces: &[Piece<'_>]) -> Result<(), ConvertError> {
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

/// Swaps the two halves of `up`'s rows (out × rank).
fn swap_halves(path: &Path, module: &str, up: &mut [f32], out: usize, rank: usize) -> Result<(), ConvertError> {
    if out % 2 != 0 {
        return Err(shape_error(path, module, format!("final-layer modulation has {out} outputs, not an even number")));
    }
    let half = out / 2 * rank;
    let (a, b) = up.split_at_mut(half);
    a.swap_with_slice(b);
    Ok(())
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
fn to_kohya(
    path: &Path,
    site: Site,
    pieces: &[Piece<'_>],
    mlp_width: Option<usize>,
    out: &mut FluxConverted,
) -> Result<usize, ConvertError> {
    let name = site.kohya_name();
    let n = site.part_count();
    let first = &pieces[0];
    // The whole layer in one module: copied (the final modulation's halves swapped back from diffusers).
    if pieces.len() == 1 && first.name.parts == (0..n) {
        let mut up = first.up.clone();
        if site.swaps_halves() && first.diffusers_halves() {
            swap_halves(path, &first.module.name, &mut up, first.out(), first.rank())?;
        }
        put_kohya(out, &name, first.down.clone(), first.rank(), first.inn(), up, first.out(), first.module.alpha);
        out.renamed.push((first.module.name.clone(), name));
        return Ok(0);
    }
    let inn = first.inn();
    if let Some(p) = pieces.iter().find(|p| p.inn() != inn) {
        return Err(shape_error(
            path,
            &p.module.name,
            format!(
                "has input width {} but `{}` has {inn}; they cannot be parts of one layer",
                p.inn(),
                first.module.name
            ),
        ));
    }
    let mut widths: Vec<Option<usize>> = vec![None; n];
    for p in pieces {
        let k = p.name.parts.len();
        if p.out() % k != 0 {
            return Err(shape_error(path, &p.module.name, format!("{} outputs do not split into {k} parts", p.out())));
        }
        for part in p.name.parts.clone() {
            widths[part] = Some(p.out() / k);
        }
    }
    // q, k and v are equally wide (the model's hidden size).
    let qkv: Vec<usize> = widths.iter().take(3).flatten().copied().collect();
    if qkv.iter().any(|w| *w != qkv[0]) {
        return Err(shape_error(
            path,
            &first.module.name,
            format!("and the other parts of `{}` have q/k/v widths {qkv:?}, which differ", site.path()),
        ));
    }
    let missing = widths.iter().any(Option::is_none);
    // linear1's fourth part is the MLP; every other part of a fused layer is hidden wide (= its input).
    let widths: Vec<usize> = widths
        .iter()
        .enumerate()
        .map(|(part, w)| w.unwrap_or(if part == 3 { mlp_width.unwrap_or(4 * inn) } else { inn }))
        .collect();
    let offsets: Vec<usize> = widths.iter().scan(0, |acc, w| Some(std::mem::replace(acc, *acc + w))).collect();
    let total: usize = widths.iter().sum();
    let row_of = |p: &Piece<'_>| offsets[p.name.parts.start];

    let shared = pieces.iter().all(|p| p.rank() == first.rank() && p.scale() == first.scale() && p.down == first.down);
    if shared {
        let r = first.rank();
        let mut up = vec![0f32; total * r];
        for p in pieces {
            let row = row_of(p);
            up[row * r..(row + p.out()) * r].copy_from_slice(&p.up);
        }
        put_kohya(out, &name, first.down.clone(), r, inn, up, total, first.scale() * r as f32);
    } else {
        let rank: usize = pieces.iter().map(Piece::rank).sum();
        let same_scale = pieces.iter().all(|p| p.scale() == first.scale());
        let mut down = Vec::with_capacity(rank * inn);
        let mut up = vec![0f32; total * rank];
        let mut col = 0;
        for p in pieces {
            down.extend_from_slice(&p.down);
            let factor = if same_scale { 1.0 } else { p.scale() };
            let row = row_of(p);
            for i in 0..p.out() {
                for c in 0..p.rank() {
                    up[(row + i) * rank + col + c] = p.up[i * p.rank() + c] * factor;
                }
            }
            col += p.rank();
        }
        let alpha = if same_scale { first.scale() * rank as f32 } else { rank as f32 };
        if !same_scale {
            out.folded += 1;
        }
        put_kohya(out, &name, down, rank, inn, up, total, alpha);
    }
    for p in pieces {
        out.renamed.push((p.module.name.clone(), name.clone()));
    }
    Ok(usize::from(missing))
}

#[allow(clippy::too_many_arguments)]
fn put_kohya(
    out: &mut FluxConverted,
    name: &str,
    down: Vec<f32>,
    rank: usize,
    inn: usize,
    up: Vec<f32>,
    rows: usize,
    alpha: f32,
) {
    out.tensors.insert(format!("{name}.lora_down.weight"), Tensor::new(vec![rank, inn], down));
    out.tensors.insert(format!("{name}.lora_up.weight"), Tensor::new(vec![rows, rank], up));
    out.tensors.insert(format!("{name}.alpha"), Tensor::scalar(alpha));
}

/// Writes one module in diffusers naming, split into the parts it covers; returns 1 when it was
/// cut along a block-diagonal `up`.
fn to_diffusers(path: &Path, site: Site, p: &Piece<'_>, out: &mut FluxConverted) -> Result<usize, ConvertError> {
    let names = site.diffusers_names();
    let parts: Range<usize> = p.name.parts.clone();
    let (rank, inn, rows) = (p.rank(), p.inn(), p.out());
    let scale = p.scale();
    let mut up = p.up.clone();
    if site.swaps_halves() && !p.diffusers_halves() {
        swap_halves(path, &p.module.name, &mut up, rows, rank)?;
    }
    if scale != 1.0 {
        up.iter_mut().for_each(|v| *v *= scale);
        out.folded += 1;
    }
    let k = parts.len();
    if k == 1 {
        put_diffusers(out, &names[parts.start], p.down.clone(), rank, inn, up, rows);
        out.renamed.push((p.module.name.clone(), names[parts.start].clone()));
        return Ok(0);
    }
    let widths = if parts == (0..site.part_count()) {
        site.part_widths(inn, rows)
    } else {
        (rows % k == 0).then(|| vec![rows / k; k])
    };
    let Some(widths) = widths else {
        return Err(shape_error(
            path,
            &p.module.name,
            format!("{rows} outputs from {inn} inputs do not split into the {k} parts of `{}`", site.path()),
        ));
    };
    let chunk = block_diagonal(&p.up, rank, &widths);
    let mut row = 0;
    for (j, w) in widths.iter().enumerate() {
        let name = &names[parts.start + j];
        let rows_j = &up[row * rank..(row + w) * rank];
        match chunk {
            Some(r) => {
                let down = p.down[j * r * inn..(j + 1) * r * inn].to_vec();
                let up_j: Vec<f32> =
                    rows_j.chunks_exact(rank).flat_map(|line| line[j * r..(j + 1) * r].iter().copied()).collect();
                put_diffusers(out, name, down, r, inn, up_j, *w);
            }
            None => put_diffusers(out, name, p.down.clone(), rank, inn, rows_j.to_vec(), *w),
        }
        out.renamed.push((p.module.name.clone(), name.clone()));
        row += w;
    }
    Ok(usize::from(chunk.is_some()))
}

fn put_diffusers(
    out: &mut FluxConverted,
    name: &str,
    down: Vec<f32>,
    rank: usize,
    inn: usize,
    up: Vec<f32>,
    rows: usize,
) {
    out.tensors.insert(format!("{name}.lora_A.weight"), Tensor::new(vec![rank, inn], down));
    out.tensors.insert(format!("{name}.lora_B.weight"), Tensor::new(vec![rows, rank], up));
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
