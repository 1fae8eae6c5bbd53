//! What converting a Flux.1 LoRA (`lorakit convert`, and in memory for `merge`/`generate`) needs
//! to know beyond the shared engine ([`crate::dit_convert`]), whatever layout it was written in
//! ([`crate::flux`]).
//!
//! * Fused layers follow sd-scripts' `convert_flux_lora.py` (`convert_ai_toolkit_to_sd_scripts`)
//!   and diffusers' `_convert_kohya_flux_lora_to_diffusers`: `to_q/to_k/to_v` ↔ `img_attn_qkv`,
//!   `to_q/to_k/to_v/proj_mlp` ↔ `linear1`.
//! * A part the file lacks: q/k/v are hidden wide (the layer's input width); linear1's MLP is the
//!   file's own MLP width, else 4 × hidden as in Flux.1.
//! * `final_layer.adaLN_modulation.1` ↔ `norm_out.linear` swaps the halves of `up` (BFL: shift,
//!   scale; diffusers: scale, shift).
//! * Every Flux LoRA target is linear.
//!
//! Tested against diffusers' own conversion in `tests/flux_layouts.rs`.

use crate::convert::ConvertError;
use crate::dit_convert::{DitPart, DitSite};
use crate::flux::{parse, Layout, Site};
use crate::keys::{Family, ModuleKind};
use std::ops::Range;
use std::path::Path;

impl DitSite for Site {
    const FAMILY: Family = Family::Flux;
    const FUSED: &'static str = "fused";
    const T5_COMPONENT: &'static str = "text_encoder_2";
    const PIPELINE: &'static str = "FluxPipeline";
    const METADATA_NOTE: &'static str = "Flux layers fused/split as sd-scripts' convert_flux_lora.py";

    fn parse(module: &str) -> Option<DitPart<Self>> {
        let n = parse(module)?;
        let diffusers_halves = matches!(n.layout, Layout::Diffusers | Layout::KohyaDiffusers);
        Some(DitPart { site: n.site, parts: n.parts, diffusers_halves })
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
    fn part_widths(self, in_features: usize, out_features: usize) -> Option<Vec<usize>> {
        Site::part_widths(self, in_features, out_features)
    }
    fn swaps_halves(self, _in_features: usize, _out_features: usize) -> bool {
        Site::swaps_halves(self)
    }
    fn is_t5(self) -> bool {
        matches!(self, Site::T5(..))
    }
    fn kind_error(self, kind: ModuleKind) -> Option<String> {
        (kind != ModuleKind::Linear).then(|| format!("is a {kind} module; every Flux LoRA target is linear"))
    }
    /// A single block's `proj_mlp` or a double block's first MLP layer is the MLP wide.
    fn mlp_width(self, parts: &Range<usize>, out_features: usize) -> Option<usize> {
        match self {
            Site::Single(_, 0) if *parts == (3..4) => Some(out_features),
            Site::Double(_, 3) | Site::Double(_, 8) => Some(out_features),
            _ => None,
        }
    }
    /// linear1's fourth part is the MLP; every other part of a fused layer is hidden wide.
    fn missing_width(self, part: usize, inn: usize, _qkv: Option<usize>, mlp: Option<usize>) -> Result<usize, String> {
        Ok(if part == 3 { mlp.unwrap_or(4 * inn) } else { inn })
    }
    fn shape_error(path: &Path, module: &str, reason: String) -> ConvertError {
        ConvertError::FluxShape { path: path.to_path_buf(), module: module.to_string(), reason }
    }
}
