//! Flux.1 LoRA module names in every layout people publish, mapped to one [`Site`]: the layer of
//! the model a module adapts, and which parts of a fused layer it covers.
//!
//! | layout | example module (tensor names add `.lora_down.weight` / `.lora_A.weight` / …) |
//! |---|---|
//! | kohya / sd-scripts | `lora_unet_double_blocks_0_img_attn_qkv`, `lora_te1_text_model_encoder_layers_0_mlp_fc1`, `lora_te3_encoder_block_0_layer_0_SelfAttention_q` |
//! | BFL / ComfyUI / ai-toolkit (Chroma) | `diffusion_model.double_blocks.0.img_attn.qkv` (also bare or `base_model.model.`-prefixed) |
//! | diffusers / PEFT / ai-toolkit | `transformer.transformer_blocks.0.attn.to_q` (prefix optional), `text_encoder.text_model.…` |
//! | kohya-style diffusers names | `lora_transformer_single_transformer_blocks_0_proj_mlp` |
//! | XLabs | `double_blocks.0.processor.qkv_lora1` |
//!
//! BFL's fused layers are split in diffusers: a double block's `img_attn.qkv` is `attn.to_q/to_k/to_v`
//! (`txt_attn.qkv`: `add_q_proj/add_k_proj/add_v_proj`), a single block's `linear1` is
//! `attn.to_q/to_k/to_v` + `proj_mlp` (out = 3·hidden + mlp). The tables follow diffusers'
//! `_convert_kohya_flux_lora_to_diffusers` / `_convert_xlabs_flux_lora_to_diffusers` /
//! `_convert_bfl_flux_control_lora_to_diffusers` and sd-scripts' `convert_flux_lora.py`; the
//! kohya names are sd-scripts' `networks/lora_flux.py` ones (spec §13.1).

use crate::blocks::{block_of, Block};
use crate::dit_names::{child, clip_layer, indexed, t5_layer, T5};
use crate::keys::Component;
use std::fmt;
use std::ops::Range;

/// Double-block children: BFL path, then the diffusers layers it splits into.
const DOUBLE: [(&str, &[&str]); 10] = [
    ("img_mod.lin", &["norm1.linear"]),
    ("img_attn.qkv", &["attn.to_q", "attn.to_k", "attn.to_v"]),
    ("img_attn.proj", &["attn.to_out.0"]),
    ("img_mlp.0", &["ff.net.0.proj"]),
    ("img_mlp.2", &["ff.net.2"]),
    ("txt_mod.lin", &["norm1_context.linear"]),
    ("txt_attn.qkv", &["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
    ("txt_attn.proj", &["attn.to_add_out"]),
    ("txt_mlp.0", &["ff_context.net.0.proj"]),
    ("txt_mlp.2", &["ff_context.net.2"]),
];

/// Single-block children.
const SINGLE: [(&str, &[&str]); 3] = [
    ("linear1", &["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]),
    ("linear2", &["proj_out"]),
    ("modulation.lin", &["norm.linear"]),
];

/// Layers outside the blocks (sd-scripts' `in_dims` inputs, and the final layer other trainers
/// adapt). `final_layer.adaLN_modulation.1` ↔ `norm_out.linear` swaps the halves of its output
/// (BFL: shift, scale; diffusers: scale, shift).
const GLOBAL: [(&str, &[&str]); 10] = [
    ("img_in", &["x_embedder"]),
    ("time_in.in_layer", &["time_text_embed.timestep_embedder.linear_1"]),
    ("time_in.out_layer", &["time_text_embed.timestep_embedder.linear_2"]),
    ("vector_in.in_layer", &["time_text_embed.text_embedder.linear_1"]),
    ("vector_in.out_layer", &["time_text_embed.text_embedder.linear_2"]),
    ("guidance_in.in_layer", &["time_text_embed.guidance_embedder.linear_1"]),
    ("guidance_in.out_layer", &["time_text_embed.guidance_embedder.linear_2"]),
    ("txt_in", &["context_embedder"]),
    ("final_layer.linear", &["proj_out"]),
    ("final_layer.adaLN_modulation.1", &["norm_out.linear"]),
];

/// Index of `final_layer.adaLN_modulation.1` in [`GLOBAL`].
const FINAL_MODULATION: usize = 9;

/// CLIP-L layer children (HF `CLIPTextModel`, under `text_model.encoder.layers.N.`).
const CLIP: [&str; 6] =
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"];

/// XLabs processor LoRAs of a double block: name, index in [`DOUBLE`], parts covered.
const XLABS_DOUBLE: [(&str, usize, Range<usize>); 4] =
    [("qkv_lora1", 1, 0..3), ("proj_lora1", 2, 0..1), ("qkv_lora2", 6, 0..3), ("proj_lora2", 7, 0..1)];

/// XLabs processor LoRAs of a single block (diffusers maps `qkv_lora` to q/k/v of `linear1`,
/// `proj_lora` to `proj_out` = `linear2`).
const XLABS_SINGLE: [(&str, usize, Range<usize>); 2] = [("qkv_lora", 0, 0..3), ("proj_lora", 1, 0..1)];

/// The layer of Flux.1 (or its text encoders) a LoRA module adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Site {
    /// Double-stream block `i`, child `k` of [`DOUBLE`].
    Double(u32, usize),
    /// Single-stream block `i`, child `k` of the single-block table.
    Single(u32, usize),
    /// A layer outside the blocks (input embedders, final layer).
    Global(usize),
    /// CLIP-L layer `i`, child `k`.
    Clip(u32, usize),
    /// T5-XXL block `i`, child `k`.
    T5(u32, usize),
}

impl Site {
    /// Every layer a Flux LoRA can adapt in a model with `double` / `single` blocks, a CLIP-L of
    /// `clip_layers` layers and a T5 of `t5_blocks` blocks (Flux.1: 19, 38, 12, 24), in model order.
    pub fn all(double: u32, single: u32, clip_layers: u32, t5_blocks: u32) -> Vec<Site> {
        let mut out = Vec::new();
        out.extend((0..clip_layers).flat_map(|i| (0..CLIP.len()).map(move |k| Site::Clip(i, k))));
        out.extend((0..t5_blocks).flat_map(|i| (0..T5.len()).map(move |k| Site::T5(i, k))));
        out.extend((0..GLOBAL.len()).map(Site::Global));
        out.extend((0..double).flat_map(|i| (0..DOUBLE.len()).map(move |k| Site::Double(i, k))));
        out.extend((0..single).flat_map(|i| (0..SINGLE.len()).map(move |k| Site::Single(i, k))));
        out
    }

    fn children(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Site::Double(_, k) => DOUBLE[k],
            Site::Single(_, k) => SINGLE[k],
            Site::Global(k) => GLOBAL[k],
            Site::Clip(_, k) => (CLIP[k], &[]),
            Site::T5(_, k) => (T5[k], &[]),
        }
    }

    /// The BFL / HF path of the layer: `double_blocks.0.img_attn.qkv`,
    /// `text_model.encoder.layers.3.mlp.fc1`, `encoder.block.0.layer.0.SelfAttention.q`.
    pub fn path(self) -> String {
        let child = self.children().0;
        match self {
            Site::Double(i, _) => format!("double_blocks.{i}.{child}"),
            Site::Single(i, _) => format!("single_blocks.{i}.{child}"),
            Site::Global(_) => child.to_string(),
            Site::Clip(i, _) => format!("text_model.encoder.layers.{i}.{child}"),
            Site::T5(i, _) => format!("encoder.block.{i}.{child}"),
        }
    }

    /// The kohya / sd-scripts module name (`lora_unet_double_blocks_0_img_attn_qkv`).
    pub fn kohya_name(self) -> String {
        let prefix = match self {
            Site::Clip(..) => "lora_te1",
            Site::T5(..) => "lora_te3",
            _ => "lora_unet",
        };
        format!("{prefix}_{}", self.path().replace('.', "_"))
    }

    /// How many diffusers layers the layer splits into (3 for qkv, 4 for `linear1`, else 1).
    pub fn part_count(self) -> usize {
        self.children().1.len().max(1)
    }

    /// The diffusers module name of each part, prefixed (`transformer.`, `text_encoder.` for
    /// CLIP-L, `text_encoder_2.` for T5-XXL as `FluxPipeline` names its encoders).
    pub fn diffusers_names(self) -> Vec<String> {
        let (_, parts) = self.children();
        match self {
            Site::Double(i, _) => parts.iter().map(|p| format!("transformer.transformer_blocks.{i}.{p}")).collect(),
            Site::Single(i, _) => {
                parts.iter().map(|p| format!("transformer.single_transformer_blocks.{i}.{p}")).collect()
            }
            Site::Global(_) => parts.iter().map(|p| format!("transformer.{p}")).collect(),
            Site::Clip(..) => vec![format!("text_encoder.{}", self.path())],
            Site::T5(..) => vec![format!("text_encoder_2.{}", self.path())],
        }
    }

    /// True for the layer whose output halves are swapped between BFL and diffusers.
    pub fn swaps_halves(self) -> bool {
        self == Site::Global(FINAL_MODULATION)
    }

    /// True for fused layers whose parts diffusers keeps as separate layers.
    pub fn is_fused(self) -> bool {
        self.part_count() > 1
    }

    /// Output width of each part, given the layer's input width (= the model's hidden size for
    /// fused layers) and total output width: qkv splits in three equal parts, `linear1` in
    /// hidden, hidden, hidden and the rest (the MLP).
    pub fn part_widths(self, in_features: usize, out_features: usize) -> Option<Vec<usize>> {
        match self.part_count() {
            1 => Some(vec![out_features]),
            3 if out_features % 3 == 0 => Some(vec![out_features / 3; 3]),
            4 if out_features > 3 * in_features => {
                Some(vec![in_features, in_features, in_features, out_features - 3 * in_features])
            }
            _ => None,
        }
    }

    /// The block label (`D00`–`D18`, `S00`–`S37`, `BASE` for inputs, `FINAL`, `TE1`, `TE3`).
    pub fn block(self) -> Block {
        block_of(&self.kohya_name())
    }

    /// The network the layer belongs to.
    pub fn component(self) -> Component {
        match self {
            Site::Clip(..) => Component::TextEncoder1,
            Site::T5(..) => Component::TextEncoder3,
            _ => Component::Unet,
        }
    }
}

/// The naming a module name was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layout {
    /// kohya / sd-scripts: `lora_unet_double_blocks_0_img_attn_qkv`, `lora_te1_…`, `lora_te3_…`.
    Kohya,
    /// BFL paths with dots: `diffusion_model.double_blocks.0.img_attn.qkv` (ComfyUI, BFL, ai-toolkit
    /// Chroma), bare (BFL control LoRAs) or `base_model.model.`-prefixed.
    Bfl,
    /// diffusers paths: `transformer.transformer_blocks.0.attn.to_q`, `text_encoder.text_model.…`.
    Diffusers,
    /// diffusers paths in kohya form: `lora_transformer_transformer_blocks_0_attn_to_q`.
    KohyaDiffusers,
    /// XLabs processors: `double_blocks.0.processor.qkv_lora1`.
    XLabs,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Kohya => "kohya/sd-scripts",
            Layout::Bfl => "BFL/ComfyUI",
            Layout::Diffusers => "diffusers/PEFT",
            Layout::KohyaDiffusers => "kohya-style diffusers names",
            Layout::XLabs => "XLabs",
        })
    }
}

/// A module name read as Flux: the layer, which of its parts the module covers, and the naming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluxName {
    /// The layer.
    pub site: Site,
    /// The parts of a fused layer covered (`0..part_count` for the whole layer).
    pub parts: Range<usize>,
    /// The naming the module was written in.
    pub layout: Layout,
}

/// Reads a module name (a tensor name without `.lora_down.weight` / `.lora_A.weight` / …) in any
/// Flux layout; `None` when it names no Flux LoRA target.
pub fn parse(name: &str) -> Option<FluxName> {
    let name = name.strip_prefix("base_model.model.").unwrap_or(name);
    // kohya names: BFL paths (sd-scripts), or diffusers paths under `lora_unet_` / `lora_transformer_`.
    for prefix in ["lora_unet_", "lora_transformer_"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let (site, parts, diffusers) = dit(rest, "_")?;
            let layout = if diffusers { Layout::KohyaDiffusers } else { Layout::Kohya };
            return Some(FluxName { site, parts, layout });
        }
    }
    for (prefix, clip) in [("lora_te1_", true), ("lora_te_", true), ("lora_te3_", false)] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let site = if clip { clip_site(rest, "_") } else { t5_site(rest, "_") }?;
            return Some(FluxName { site, parts: 0..1, layout: Layout::Kohya });
        }
    }
    let text = [
        ("text_encoder.", true, Layout::Diffusers),
        ("text_encoders.clip_l.transformer.", true, Layout::Bfl),
        ("text_encoder_2.", false, Layout::Diffusers),
        ("text_encoders.t5xxl.transformer.", false, Layout::Bfl),
    ];
    for (prefix, clip, layout) in text {
        if let Some(rest) = name.strip_prefix(prefix) {
            let site = if clip { clip_site(rest, ".") } else { t5_site(rest, ".") }?;
            return Some(FluxName { site, parts: 0..1, layout });
        }
    }
    let rest = ["model.diffusion_model.", "diffusion_model.", "transformer.", "lora_unet."]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    if let Some((site, parts)) = xlabs(rest) {
        return Some(FluxName { site, parts, layout: Layout::XLabs });
    }
    let (site, parts, diffusers) = dit(rest, ".")?;
    let layout = if diffusers { Layout::Diffusers } else { Layout::Bfl };
    Some(FluxName { site, parts, layout })
}

/// A DiT layer in BFL or diffusers naming (dots or underscores for separators), and whether the
/// name was diffusers'.
fn dit(rest: &str, sep: &str) -> Option<(Site, Range<usize>, bool)> {
    // `single_transformer_blocks` first: it ends with `transformer_blocks`.
    for (container, diffusers, single) in [
        ("single_transformer_blocks", true, true),
        ("transformer_blocks", true, false),
        ("single_blocks", false, true),
        ("double_blocks", false, false),
    ] {
        if let Some((i, tail)) = indexed(rest, container, sep) {
            let table: &[(&str, &[&str])] = if single { &SINGLE } else { &DOUBLE };
            let (k, parts) = child(table, tail, sep, diffusers)?;
            let site = if single { Site::Single(i, k) } else { Site::Double(i, k) };
            return Some((site, parts, diffusers));
        }
    }
    [false, true].into_iter().find_map(|diffusers| {
        child(&GLOBAL, rest, sep, diffusers).map(|(k, parts)| (Site::Global(k), parts, diffusers))
    })
}

/// An XLabs processor LoRA (`double_blocks.0.processor.qkv_lora1`).
fn xlabs(rest: &str) -> Option<(Site, Range<usize>)> {
    if let Some((i, tail)) = indexed(rest, "double_blocks", ".") {
        let name = tail.strip_prefix("processor.")?;
        let (_, k, parts) = XLABS_DOUBLE.iter().find(|(n, _, _)| *n == name)?;
        return Some((Site::Double(i, *k), parts.clone()));
    }
    let (i, tail) = indexed(rest, "single_blocks", ".")?;
    let name = tail.strip_prefix("processor.")?;
    let (_, k, parts) = XLABS_SINGLE.iter().find(|(n, _, _)| *n == name)?;
    Some((Site::Single(i, *k), parts.clone()))
}

fn clip_site(rest: &str, sep: &str) -> Option<Site> {
    clip_layer(rest, sep, &CLIP).map(|(i, k)| Site::Clip(i, k))
}

fn t5_site(rest: &str, sep: &str) -> Option<Site> {
    t5_layer(rest, sep).map(|(i, k)| Site::T5(i, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str) -> (Site, Range<usize>, Layout) {
        let n = parse(name).unwrap_or_else(|| panic!("{name} not parsed"));
        (n.site, n.parts, n.layout)
    }

    #[test]
    fn every_layout_names_the_same_layer() {
        let qkv = Site::Double(3, 1);
        for (name, parts, layout) in [
            ("lora_unet_double_blocks_3_img_attn_qkv", 0..3, Layout::Kohya),
            ("diffusion_model.double_blocks.3.img_attn.qkv", 0..3, Layout::Bfl),
            ("double_blocks.3.img_attn.qkv", 0..3, Layout::Bfl),
            ("base_model.model.double_blocks.3.img_attn.qkv", 0..3, Layout::Bfl),
            ("double_blocks.3.processor.qkv_lora1", 0..3, Layout::XLabs),
            ("transformer.transformer_blocks.3.attn.to_k", 1..2, Layout::Diffusers),
            ("transformer_blocks.3.attn.to_v", 2..3, Layout::Diffusers),
            ("lora_transformer_transformer_blocks_3_attn_to_q", 0..1, Layout::KohyaDiffusers),
        ] {
            assert_eq!(site(name), (qkv, parts, layout), "{name}");
        }
        assert_eq!(
            site("transformer.single_transformer_blocks.37.proj_mlp"),
            (Site::Single(37, 0), 3..4, Layout::Diffusers)
        );
        assert_eq!(site("lora_unet_single_blocks_0_modulation_lin").0, Site::Single(0, 2));
        assert_eq!(site("transformer.x_embedder"), (Site::Global(0), 0..1, Layout::Diffusers));
        assert_eq!(site("lora_unet_time_in_in_layer").0, Site::Global(1));
        assert_eq!(site("diffusion_model.img_in"), (Site::Global(0), 0..1, Layout::Bfl));
        assert_eq!(site("lora_unet_final_layer_adaLN_modulation_1").0, Site::Global(FINAL_MODULATION));
        assert_eq!(site("lora_unet_norm_out_linear"), (Site::Global(FINAL_MODULATION), 0..1, Layout::KohyaDiffusers));
        assert_eq!(site("transformer.proj_out"), (Site::Global(8), 0..1, Layout::Diffusers));
        assert_eq!(site("text_encoder.text_model.encoder.layers.11.self_attn.out_proj").0, Site::Clip(11, 3));
        assert_eq!(site("lora_te1_text_model_encoder_layers_0_mlp_fc1").0, Site::Clip(0, 4));
        assert_eq!(site("lora_te3_encoder_block_23_layer_1_DenseReluDense_wi_0").0, Site::T5(23, 4));
        assert_eq!(site("text_encoder_2.encoder.block.0.layer.0.SelfAttention.o").0, Site::T5(0, 3));
        for bad in [
            "lora_unet_double_blocks_0_img_attn_norm",
            "lora_unet_down_blocks_0_attentions_0_proj_in",
            "unet.down_blocks.0.attentions.0.proj_in",
            "transformer.transformer_blocks.x.attn.to_q",
            "lora_te2_text_model_encoder_layers_0_mlp_fc1",
            "transformer.transformer_blocks.0.img_attn.qkv",
            "double_blocks.0.attn.to_q",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names_round_trip() {
        let sites = [Site::Double(18, 6), Site::Single(37, 0), Site::Global(7), Site::Clip(2, 1), Site::T5(5, 6)];
        crate::dit_convert::assert_names_round_trip(&sites);
        assert_eq!(Site::Single(2, 0).part_widths(48, 336), Some(vec![48, 48, 48, 192]));
        assert_eq!(Site::Double(0, 1).part_widths(48, 144), Some(vec![48; 3]));
        assert_eq!(Site::Double(0, 1).part_widths(48, 100), None);
    }
}
