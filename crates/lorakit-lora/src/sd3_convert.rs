//! Converting an SD3 / SD3.5 LoRA to kohya or diffusers names (`lorakit convert`, and in memory
//! for `merge`), whatever layout it was written in ([`crate::sd3`]).
//!
//! * To kohya, the q/k/v parts diffusers keeps apart are fused back into SAI's `attn.qkv` /
//!   `attn2.qkv`: parts sharing one down weight (a kohya file converted to diffusers) become one
//!   pair again, `up` = the parts' ups stacked; other parts are stacked block-diagonally (`down` =
//!   the downs concatenated, rank = the sum of ranks), as sd-scripts' `split_qkv` saves them.
//!   alpha keeps each part's scale (`alpha/rank`); parts with different scales have them folded
//!   into `up`, alpha = rank. A part the file lacks gets zero rows (hidden = the layer's input).
//! * To diffusers, a qkv is split in three: a block-diagonal `up` (sd-scripts' `split_qkv` save)
//!   is cut into its blocks, otherwise every part gets a copy of `down` and its rows of `up`;
//!   `alpha/rank` is folded into `lora_B` (diffusers ignores alphas).
//! * `final_layer.adaLN_modulation.1` ↔ `norm_out.linear` and the last block's context modulation
//!   ↔ its `norm1_context.linear` swap the halves of `up` (SAI: shift, scale; diffusers: scale,
//!   shift), as diffusers' `convert_sd3_transformer_checkpoint_to_diffusers` does to the weights.
//! * The patch-embedding conv (`x_embedder.proj` ↔ `pos_embed.proj`) keeps its 4-D shapes.
//!
//! `scale · up · down` of every layer is unchanged either way (tested against diffusers' checkpoint
//! conversion of the same deltas in `tests/sd3_layouts.rs`).

use crate::convert::{ConvertError, Target};
use crate::flux_convert::block_diagonal;
use crate::keys::{Family, LoraModule, ModuleKind, ModuleSet};
use crate::safetensors_file::{LoraFile, Tensor};
use crate::sd3::{parse, Sd3Name, Site};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

/// A converted SD3 LoRA, before it is written.
pub(crate) struct Sd3Converted {
    /// The output tensors.
    pub tensors: BTreeMap<String, Tensor>,
    /// (input module, output module) pairs.
    pub renamed: Vec<(String, String)>,
    /// Modules whose `alpha/rank` was folded into `up`.
    pub folded: usize,
    /// What the user should know about the result.
    pub notes: Vec<String>,
}

/// One input module with its weights and their stored shapes.
struct Piece<'a> {
    module: &'a LoraModule,
    name: Sd3Name,
    down: Vec<f32>,
    up: Vec<f32>,
    down_shape: Vec<usize>,
    up_shape: Vec<usize>,
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
    /// True when `up`'s halves must be swapped to go from this piece's naming to `diffusers`'.
    fn swap_to(&self, diffusers: bool) -> bool {
        self.name.site.swaps_halves(self.inn(), self.out()) && self.name.layout.diffusers_halves() != diffusers
    }
}

fn shape_error(path: &Path, module: &str, reason: String) -> ConvertError {
    ConvertError::Sd3Shape { path: path.to_path_buf(), module: module.to_string(), reason }
}

/// Reads every module of `set` as an SD3 layer and writes it in `to`'s naming.
pub(crate) fn convert_sd3(file: &LoraFile, set: &ModuleSet, to: Target) -> Result<Sd3Converted, ConvertError> {
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
                family: Family::Sd3,
            });
        };
        let conv = matches!(m.kind, ModuleKind::Conv { .. });
        if conv != name.site.is_conv() {
            let want = if name.site.is_conv() { "the patch-embedding conv" } else { "a linear layer" };
            return Err(shape_error(
                path,
                &m.name,
                format!("is a {} module but `{}` is {want}", m.kind, name.site.path()),
            ));
        }
        let shape = |key: &str| file.info(key).map(|i| i.shape.clone()).unwrap_or_default();
        let piece = Piece {
            module: m,
            down: file.tensor_f32(&m.down_key)?,
            up: file.tensor_f32(&m.up_key)?,
            down_shape: shape(&m.down_key),
            up_shape: shape(&m.up_key),
            name,
        };
        by_site.entry(piece.name.site).or_default().push(piece);
    }
    let mut out = Sd3Converted { tensors: BTreeMap::new(), renamed: Vec::new(), folded: 0, notes: Vec::new() };
    let (mut padded, mut chunked, mut t5) = (0, 0, 0);
    for (site, pieces) in &by_site {
        check_overlap(path, *site, pieces)?;
        if matches!(site, Site::T5(..)) {
            t5 += 1;
        }
        match to {
            Target::Kohya => padded += to_kohya(path, *site, pieces, &mut out)?,
            Target::Peft => {
                for piece in pieces {
                    chunked += to_diffusers(path, *site, piece, &mut out)?;
                }
            }
        }
    }
    if padded > 0 {
        out.notes.push(format!(
            "{padded} fused qkv layers lack some of their diffusers parts; those parts were written as zero rows"
        ));
    }
    if chunked > 0 {
        out.notes.push(format!(
            "{chunked} fused qkv layers held sd-scripts split_qkv parts (block-diagonal up) and were cut into them"
        ));
    }
    if to == Target::Peft && t5 > 0 {
        out.notes.push(format!(
            "{t5} T5-XXL modules are written as text_encoder_3.…; diffusers' StableDiffusion3Pipeline does not load T5 LoRAs"
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
        return Err(shape_error(path, module, format!("modulation has {out} outputs, not an even number")));
    }
    let half = out / 2 * rank;
    let (a, b) = up.split_at_mut(half);
    a.swap_with_slice(b);
    Ok(())
}

/// Writes one layer in kohya naming; returns 1 when parts were missing (zero rows).
fn to_kohya(path: &Path, site: Site, pieces: &[Piece<'_>], out: &mut Sd3Converted) -> Result<usize, ConvertError> {
    let name = site.kohya_name();
    let n = site.part_count();
    let first = &pieces[0];
    // The whole layer in one module: copied, shapes kept (the modulation's halves swapped back).
    if pieces.len() == 1 && first.name.parts == (0..n) {
        let mut up = first.up.clone();
        if first.swap_to(false) {
            swap_halves(path, &first.module.name, &mut up, first.out(), first.rank())?;
        }
        let down = Tensor::new(first.down_shape.clone(), first.down.clone());
        put_kohya(out, &name, down, Tensor::new(first.up_shape.clone(), up), first.module.alpha);
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
    // q, k and v are equally wide (the model's hidden size, = the layer's input).
    let known: Vec<usize> = widths.iter().flatten().copied().collect();
    if known.iter().any(|w| *w != known[0]) {
        return Err(shape_error(
            path,
            &first.module.name,
            format!("and the other parts of `{}` have q/k/v widths {known:?}, which differ", site.path()),
        ));
    }
    let missing = widths.iter().any(Option::is_none);
    let width = known[0];
    if missing && width != inn {
        return Err(shape_error(
            path,
            &first.module.name,
            format!(
                "is {width} wide from {inn} inputs; a missing q/k/v part cannot be sized (SD3's are hidden × hidden)"
            ),
        ));
    }
    let total = width * n;
    let row_of = |p: &Piece<'_>| p.name.parts.start * width;

    let shared = pieces.iter().all(|p| p.rank() == first.rank() && p.scale() == first.scale() && p.down == first.down);
    if shared {
        let r = first.rank();
        let mut up = vec![0f32; total * r];
        for p in pieces {
            let row = row_of(p);
            up[row * r..(row + p.out()) * r].copy_from_slice(&p.up);
        }
        let down = Tensor::new(vec![r, inn], first.down.clone());
        put_kohya(out, &name, down, Tensor::new(vec![total, r], up), first.scale() * r as f32);
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
        put_kohya(out, &name, Tensor::new(vec![rank, inn], down), Tensor::new(vec![total, rank], up), alpha);
    }
    for p in pieces {
        out.renamed.push((p.module.name.clone(), name.clone()));
    }
    Ok(usize::from(missing))
}

fn put_kohya(out: &mut Sd3Converted, name: &str, down: Tensor, up: Tensor, alpha: f32) {
    out.tensors.insert(format!("{name}.lora_down.weight"), down);
    out.tensors.insert(format!("{name}.lora_up.weight"), up);
    out.tensors.insert(format!("{name}.alpha"), Tensor::scalar(alpha));
}

/// Writes one module in diffusers naming, split into the parts it covers; returns 1 when it was
/// cut along a block-diagonal `up`.
fn to_diffusers(path: &Path, site: Site, p: &Piece<'_>, out: &mut Sd3Converted) -> Result<usize, ConvertError> {
    let names = site.diffusers_names();
    let parts: Range<usize> = p.name.parts.clone();
    let (rank, inn, rows) = (p.rank(), p.inn(), p.out());
    let scale = p.scale();
    let mut up = p.up.clone();
    if p.swap_to(true) {
        swap_halves(path, &p.module.name, &mut up, rows, rank)?;
    }
    if scale != 1.0 {
        up.iter_mut().for_each(|v| *v *= scale);
        out.folded += 1;
    }
    let k = parts.len();
    if k == 1 {
        let down = Tensor::new(p.down_shape.clone(), p.down.clone());
        put_diffusers(out, &names[parts.start], down, Tensor::new(p.up_shape.clone(), up));
        out.renamed.push((p.module.name.clone(), names[parts.start].clone()));
        return Ok(0);
    }
    if rows % k != 0 {
        return Err(shape_error(
            path,
            &p.module.name,
            format!("{rows} outputs do not split into the {k} parts of `{}`", site.path()),
        ));
    }
    let widths = vec![rows / k; k];
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
                put_diffusers(out, name, Tensor::new(vec![r, inn], down), Tensor::new(vec![*w, r], up_j));
            }
            None => put_diffusers(
                out,
                name,
                Tensor::new(vec![rank, inn], p.down.clone()),
                Tensor::new(vec![*w, rank], rows_j.to_vec()),
            ),
        }
        out.renamed.push((p.module.name.clone(), name.clone()));
        row += w;
    }
    Ok(usize::from(chunk.is_some()))
}

fn put_diffusers(out: &mut Sd3Converted, name: &str, down: Tensor, up: Tensor) {
    out.tensors.insert(format!("{name}.lora_A.weight"), down);
    out.tensors.insert(format!("{name}.lora_B.weight"), up);
}
