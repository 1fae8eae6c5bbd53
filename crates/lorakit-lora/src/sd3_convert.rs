//! What converting an SD3 / SD3.5 LoRA (`lorakit convert`, and in memory for `merge`) needs to
//! know beyond the shared engine ([`crate::dit_convert`]), whatever layout it was written in
//! ([`crate::sd3`]).
//!
//! * The only fused layers are SAI's `attn.qkv` / `attn2.qkv` (diffusers: three layers); a part
//!   the file lacks is hidden wide, so a file whose q/k/v are not as wide as their input is
//!   refused rather than guessed.
//! * `final_layer.adaLN_modulation.1` ↔ `norm_out.linear` and the last block's context modulation
//!   ↔ its `norm1_context.linear` swap the halves of `up` (SAI: shift, scale; diffusers: scale,
//!   shift), as diffusers' `convert_sd3_transformer_checkpoint_to_diffusers` does to the weights.
//! * The patch-embedding conv (`x_embedder.proj` ↔ `pos_embed.proj`) is the one conv target and
//!   keeps its 4-D shapes.
//!
//! Tested against diffusers' checkpoint conversion of the same deltas in `tests/sd3_layouts.rs`.

use crate::convert::ConvertError;
use crate::dit_convert::{DitPart, DitSite};
use crate::keys::{Family, ModuleKind};
use crate::sd3::{parse, Site};
use std::path::Path;

impl DitSite for Site {
    const FAMILY: Family = Family::Sd3;
    const FUSED: &'static str = "fused qkv";
    const T5_COMPONENT: &'static str = "text_encoder_3";
    const PIPELINE: &'static str = "StableDiffusion3Pipeline";
    const METADATA_NOTE: &'static str =
        "SD3 qkv layers fused/split and modulation halves swapped as diffusers' SD3 checkpoint conversion";

    fn parse(module: &str) -> Option<DitPart<Self>> {
        let n = parse(module)?;
        Some(DitPart { site: n.site, parts: n.parts, diffusers_halves: n.layout.diffusers_halves() })
    }
    fn path(self) -> String {
        Site::path(self)
    }
    fn kohya_name(self) -> String {
        Site::kohya_name(self)
    }
    fn diffusers_names(self) -> Vec<String> {
        Site::diffusers_names(self)
    }
    fn part_count(self) -> usize {
        Site::part_count(self)
    }
    /// q, k and v are equally wide.
    fn part_widths(self, _in_features: usize, out_features: usize) -> Option<Vec<usize>> {
        let n = self.part_count();
        (out_features % n == 0).then(|| vec![out_features / n; n])
    }
    fn swaps_halves(self, in_features: usize, out_features: usize) -> bool {
        Site::swaps_halves(self, in_features, out_features)
    }
    fn is_t5(self) -> bool {
        matches!(self, Site::T5(..))
    }
    /// Only `x_embedder.proj` is a conv (a 1×1 conv module is a linear one stored 4-D).
    fn kind_error(self, kind: ModuleKind) -> Option<String> {
        let conv = matches!(kind, ModuleKind::Conv { .. });
        let want = if self.is_conv() { "the patch-embedding conv" } else { "a linear layer" };
        (conv != self.is_conv()).then(|| format!("is a {kind} module but `{}` is {want}", self.path()))
    }
    /// SD3's q/k/v are hidden × hidden, so a missing one is as wide as the layer's input.
    fn missing_width(self, _part: usize, inn: usize, qkv: Option<usize>, _mlp: Option<usize>) -> Result<usize, String> {
        match qkv {
            Some(width) if width != inn => Err(format!(
                "is {width} wide from {inn} inputs; a missing q/k/v part cannot be sized (SD3's are hidden × hidden)"
            )),
            _ => Ok(inn),
        }
    }
    fn shape_error(path: &Path, module: &str, reason: String) -> ConvertError {
        ConvertError::Sd3Shape { path: path.to_path_buf(), module: module.to_string(), reason }
    }
}
