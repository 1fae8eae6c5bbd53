//! SD3 / SD3.5 LoRA module names in every layout people publish, mapped to one [`Site`]: the layer
//! of the MMDiT (or of a text encoder) a module adapts, and which parts of a fused layer it covers.
//!
//! | layout | example module (tensor names add `.lora_down.weight` / `.lora_A.weight` / …) |
//! |---|---|
//! | kohya / sd-scripts | `lora_unet_joint_blocks_0_x_block_attn_qkv`, `lora_te1_…` (CLIP-L), `lora_te2_…` (CLIP-G), `lora_te3_…` (T5) |
//! | SAI / ComfyUI | `diffusion_model.joint_blocks.0.x_block.attn.qkv` (also bare or `base_model.model.`-prefixed) |
//! | diffusers / PEFT | `transformer.transformer_blocks.0.attn.to_q` (prefix optional), `text_encoder.`, `text_encoder_2.`, `text_encoder_3.` |
//! | kohya-style diffusers names (OneTrainer) | `lora_transformer_transformer_blocks_0_attn_to_q` |
//!
//! SAI's fused `attn.qkv` is three layers in diffusers: `attn.to_q/to_k/to_v` in the x (image)
//! block, `attn.add_q_proj/add_k_proj/add_v_proj` in the context block, `attn2.to_q/…` for
//! SD3.5 Medium's second x-block attention. Two layers order their output halves differently:
//! SAI's `final_layer.adaLN_modulation.1` and the last block's `context_block.adaLN_modulation.1`
//! (the pre-only block, 2 × hidden outputs) are (shift, scale), diffusers' `norm_out.linear` and
//! `norm1_context.linear` of that block (scale, shift). The tables follow diffusers'
//! `convert_sd3_transformer_checkpoint_to_diffusers` (single_file_utils.py) and ComfyUI's
//! `mmdit_to_diffusers`; the kohya names are sd-scripts' `networks/lora_sd3.py` ones (spec §13.4).

use crate::blocks::{block_of, Block};
use crate::dit_names::{child, clip_layer, indexed, t5_layer, T5};
use crate::keys::Component;
use std::fmt;
use std::ops::Range;

/// Joint-block children, in sd-scripts' creation order: SAI path, then the diffusers layers it
/// splits into.
const JOINT: [(&str, &[&str]); 12] = [
    ("context_block.attn.qkv", &["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
    ("context_block.attn.proj", &["attn.to_add_out"]),
    ("context_block.mlp.fc1", &["ff_context.net.0.proj"]),
    ("context_block.mlp.fc2", &["ff_context.net.2"]),
    ("context_block.adaLN_modulation.1", &["norm1_context.linear"]),
    ("x_block.attn.qkv", &["attn.to_q", "attn.to_k", "attn.to_v"]),
    ("x_block.attn.proj", &["attn.to_out.0"]),
    ("x_block.attn2.qkv", &["attn2.to_q", "attn2.to_k", "attn2.to_v"]),
    ("x_block.attn2.proj", &["attn2.to_out.0"]),
    ("x_block.mlp.fc1", &["ff.net.0.proj"]),
    ("x_block.mlp.fc2", &["ff.net.2"]),
    ("x_block.adaLN_modulation.1", &["norm1.linear"]),
];

/// Index of `context_block.adaLN_modulation.1` in [`JOINT`].
const CONTEXT_MODULATION: usize = 4;

/// Children of [`JOINT`] the last (pre-only) block's context block lacks.
const NOT_PRE_ONLY: [usize; 3] = [1, 2, 3];

/// Children of [`JOINT`] only SD3.5 Medium's dual-attention blocks have.
const ATTN2: [usize; 2] = [7, 8];

/// Layers outside the blocks: sd-scripts' `emb_dims` targets, in its order (context, t, x, y,
/// final modulation, final linear). `x_embedder.proj` is the patch-embedding conv.
const GLOBAL: [(&str, &[&str]); 8] = [
    ("context_embedder", &["context_embedder"]),
    ("t_embedder.mlp.0", &["time_text_embed.timestep_embedder.linear_1"]),
    ("t_embedder.mlp.2", &["time_text_embed.timestep_embedder.linear_2"]),
    ("x_embedder.proj", &["pos_embed.proj"]),
    ("y_embedder.mlp.0", &["time_text_embed.text_embedder.linear_1"]),
    ("y_embedder.mlp.2", &["time_text_embed.text_embedder.linear_2"]),
    ("final_layer.adaLN_modulation.1", &["norm_out.linear"]),
    ("final_layer.linear", &["proj_out"]),
];

/// Index of `final_layer.adaLN_modulation.1` in [`GLOBAL`].
const FINAL_MODULATION: usize = 6;

/// Index of `x_embedder.proj` (the conv) in [`GLOBAL`].
const PATCH_EMBED: usize = 3;

/// CLIP layer children (HF `CLIPTextModelWithProjection`, under `text_model.encoder.layers.N.`),
/// in the order HF's `CLIPAttention` defines them (sd-scripts' creation order).
const CLIP: [&str; 6] =
    ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"];

/// The layer of an SD3 MMDiT (or of its text encoders) a LoRA module adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Site {
    /// CLIP-L layer `i`, child `k`.
    ClipL(u32, usize),
    /// CLIP-G (OpenCLIP bigG) layer `i`, child `k`.
    ClipG(u32, usize),
    /// T5-XXL block `i`, child `k`.
    T5(u32, usize),
    /// A layer outside the joint blocks (embedders, final layer).
    Global(usize),
    /// Joint block `i`, child `k` of the joint-block table.
    Joint(u32, usize),
}

/// The shape of an MMDiT as far as its LoRA targets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arch {
    /// Joint blocks (SD3 Medium and 3.5 Medium: 24; 3.5 Large: 38); the last one is pre-only.
    pub depth: u32,
    /// Blocks whose x block has a second attention (SD3.5 Medium: 0–12; others none).
    pub attn2_blocks: Vec<u32>,
}

impl Site {
    /// Every layer an SD3 LoRA can adapt in `arch` with CLIP-L / CLIP-G / T5 encoders of
    /// `clip_l`, `clip_g` layers and `t5` blocks (SD3: 12, 32, 24), in sd-scripts' order: text
    /// encoders, joint blocks, then the `emb_dims` layers.
    pub fn all(arch: &Arch, clip_l: u32, clip_g: u32, t5: u32) -> Vec<Site> {
        let mut out = Vec::new();
        out.extend((0..clip_l).flat_map(|i| (0..CLIP.len()).map(move |k| Site::ClipL(i, k))));
        out.extend((0..clip_g).flat_map(|i| (0..CLIP.len()).map(move |k| Site::ClipG(i, k))));
        out.extend((0..t5).flat_map(|i| (0..T5.len()).map(move |k| Site::T5(i, k))));
        for i in 0..arch.depth {
            let pre_only = i + 1 == arch.depth;
            let attn2 = arch.attn2_blocks.contains(&i);
            for k in 0..JOINT.len() {
                if (pre_only && NOT_PRE_ONLY.contains(&k)) || (!attn2 && ATTN2.contains(&k)) {
                    continue;
                }
                out.push(Site::Joint(i, k));
            }
        }
        out.extend((0..GLOBAL.len()).map(Site::Global));
        out
    }

    fn children(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Site::Joint(_, k) => JOINT[k],
            Site::Global(k) => GLOBAL[k],
            Site::ClipL(_, k) | Site::ClipG(_, k) => (CLIP[k], &[]),
            Site::T5(_, k) => (T5[k], &[]),
        }
    }

    /// The SAI / HF path of the layer: `joint_blocks.0.x_block.attn.qkv`,
    /// `text_model.encoder.layers.3.mlp.fc1`, `encoder.block.0.layer.0.SelfAttention.q`.
    pub fn path(self) -> String {
        let child = self.children().0;
        match self {
            Site::Joint(i, _) => format!("joint_blocks.{i}.{child}"),
            Site::Global(_) => child.to_string(),
            Site::ClipL(i, _) | Site::ClipG(i, _) => format!("text_model.encoder.layers.{i}.{child}"),
            Site::T5(i, _) => format!("encoder.block.{i}.{child}"),
        }
    }

    /// The kohya / sd-scripts module name (`lora_unet_joint_blocks_0_x_block_attn_qkv`).
    pub fn kohya_name(self) -> String {
        let prefix = match self {
            Site::ClipL(..) => "lora_te1",
            Site::ClipG(..) => "lora_te2",
            Site::T5(..) => "lora_te3",
            _ => "lora_unet",
        };
        format!("{prefix}_{}", self.path().replace('.', "_"))
    }

    /// How many diffusers layers the layer splits into (3 for a qkv, else 1).
    pub fn part_count(self) -> usize {
        self.children().1.len().max(1)
    }

    /// True for fused layers whose parts diffusers keeps as separate layers.
    pub fn is_fused(self) -> bool {
        self.part_count() > 1
    }

    /// The diffusers module name of each part, prefixed as `StableDiffusion3Pipeline` names its
    /// components (`transformer.`, `text_encoder.` CLIP-L, `text_encoder_2.` CLIP-G,
    /// `text_encoder_3.` T5).
    pub fn diffusers_names(self) -> Vec<String> {
        let (_, parts) = self.children();
        match self {
            Site::Joint(i, _) => parts.iter().map(|p| format!("transformer.transformer_blocks.{i}.{p}")).collect(),
            Site::Global(_) => parts.iter().map(|p| format!("transformer.{p}")).collect(),
            Site::ClipL(..) => vec![format!("text_encoder.{}", self.path())],
            Site::ClipG(..) => vec![format!("text_encoder_2.{}", self.path())],
            Site::T5(..) => vec![format!("text_encoder_3.{}", self.path())],
        }
    }

    /// True when the layer's output halves are (shift, scale) in SAI's order and (scale, shift) in
    /// diffusers': the final modulation, and a context-block modulation of `2 × in_features`
    /// outputs (the last, pre-only block's; every other block's has 6 × hidden).
    pub fn swaps_halves(self, in_features: usize, out_features: usize) -> bool {
        match self {
            Site::Global(k) => k == FINAL_MODULATION,
            Site::Joint(_, k) => k == CONTEXT_MODULATION && out_features == 2 * in_features,
            _ => false,
        }
    }

    /// True for the patch-embedding conv (`x_embedder.proj`, diffusers' `pos_embed.proj`), the
    /// one layer that is not linear.
    pub fn is_conv(self) -> bool {
        self == Site::Global(PATCH_EMBED)
    }

    /// True for the layers only SD3.5 Medium's dual-attention blocks have (`x_block.attn2.*`).
    pub fn is_attn2(self) -> bool {
        matches!(self, Site::Joint(_, k) if ATTN2.contains(&k))
    }

    /// The block label (`J00`…, `BASE` for the embedders, `FINAL`, `TE1`, `TE2`, `TE3`).
    pub fn block(self) -> Block {
        block_of(&self.kohya_name())
    }

    /// The network the layer belongs to.
    pub fn component(self) -> Component {
        match self {
            Site::ClipL(..) => Component::TextEncoder1,
            Site::ClipG(..) => Component::TextEncoder2,
            Site::T5(..) => Component::TextEncoder3,
            _ => Component::Unet,
        }
    }
}

/// The naming a module name was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layout {
    /// kohya / sd-scripts: `lora_unet_joint_blocks_0_x_block_attn_qkv`, `lora_te1_…` … `lora_te3_…`.
    Kohya,
    /// SAI paths with dots: `diffusion_model.joint_blocks.0.x_block.attn.qkv` (ComfyUI), bare or
    /// `base_model.model.`-prefixed; text encoders as `text_encoders.clip_l.transformer.…`.
    Sai,
    /// diffusers paths: `transformer.transformer_blocks.0.attn.to_q`, `text_encoder.text_model.…`.
    Diffusers,
    /// diffusers paths in kohya form: `lora_transformer_transformer_blocks_0_attn_to_q` (OneTrainer).
    KohyaDiffusers,
}

impl Layout {
    /// True for the namings whose modulation halves are in diffusers' order.
    pub fn diffusers_halves(self) -> bool {
        matches!(self, Layout::Diffusers | Layout::KohyaDiffusers)
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Kohya => "kohya/sd-scripts",
            Layout::Sai => "SAI/ComfyUI",
            Layout::Diffusers => "diffusers/PEFT",
            Layout::KohyaDiffusers => "kohya-style diffusers names",
        })
    }
}

/// A module name read as SD3: the layer, which of its parts the module covers, and the naming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sd3Name {
    /// The layer.
    pub site: Site,
    /// The parts of a fused layer covered (`0..part_count` for the whole layer).
    pub parts: Range<usize>,
    /// The naming the module was written in.
    pub layout: Layout,
}

/// Reads a module name (a tensor name without `.lora_down.weight` / `.lora_A.weight` / …) in any
/// SD3 layout; `None` when it names no SD3 LoRA target.
pub fn parse(name: &str) -> Option<Sd3Name> {
    let name = name.strip_prefix("base_model.model.").unwrap_or(name);
    for prefix in ["lora_unet_", "lora_transformer_"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let (site, parts, diffusers) = mmdit(rest, "_", prefix == "lora_transformer_")?;
            let layout = if diffusers { Layout::KohyaDiffusers } else { Layout::Kohya };
            return Some(Sd3Name { site, parts, layout });
        }
    }
    let text: [(&str, &str, Layout); 9] = [
        ("lora_te1_", "_", Layout::Kohya),
        ("lora_te2_", "_", Layout::Kohya),
        ("lora_te3_", "_", Layout::Kohya),
        ("text_encoder.", ".", Layout::Diffusers),
        ("text_encoder_2.", ".", Layout::Diffusers),
        ("text_encoder_3.", ".", Layout::Diffusers),
        ("text_encoders.clip_l.transformer.", ".", Layout::Sai),
        ("text_encoders.clip_g.transformer.", ".", Layout::Sai),
        ("text_encoders.t5xxl.transformer.", ".", Layout::Sai),
    ];
    for (n, (prefix, sep, layout)) in text.iter().enumerate() {
        if let Some(rest) = name.strip_prefix(prefix) {
            let site = match n % 3 {
                0 => clip_layer(rest, sep, &CLIP).map(|(i, k)| Site::ClipL(i, k)),
                1 => clip_layer(rest, sep, &CLIP).map(|(i, k)| Site::ClipG(i, k)),
                _ => t5_layer(rest, sep).map(|(i, k)| Site::T5(i, k)),
            }?;
            return Some(Sd3Name { site, parts: 0..1, layout: *layout });
        }
    }
    let rest = ["model.diffusion_model.", "diffusion_model.", "transformer."]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    let (site, parts, diffusers) = mmdit(rest, ".", name.starts_with("transformer."))?;
    let layout = if diffusers { Layout::Diffusers } else { Layout::Sai };
    Some(Sd3Name { site, parts, layout })
}

/// An MMDiT layer in SAI or diffusers naming (dots or underscores for separators), and whether
/// the name was diffusers'. `context_embedder` is both: `diffusers_prefix` (a diffusers
/// component prefix was seen) decides.
fn mmdit(rest: &str, sep: &str, diffusers_prefix: bool) -> Option<(Site, Range<usize>, bool)> {
    for (container, diffusers) in [("transformer_blocks", true), ("joint_blocks", false)] {
        if let Some((i, tail)) = indexed(rest, container, sep) {
            let (k, parts) = child(&JOINT, tail, sep, diffusers)?;
            return Some((Site::Joint(i, k), parts, diffusers));
        }
    }
    [diffusers_prefix, !diffusers_prefix].into_iter().find_map(|diffusers| {
        child(&GLOBAL, rest, sep, diffusers).map(|(k, parts)| (Site::Global(k), parts, diffusers))
    })
}

/// The SD3 model a file's modules (name, input width) show, where they tell: `3.5 Medium` when
/// a module adapts its dual-attention blocks' `attn2`, `3.5 Large` when the joint blocks are
/// 2432 wide (38 blocks × 64; SD3 Medium and 3.5 Medium are 1536).
pub fn variant<'a>(modules: impl IntoIterator<Item = (&'a str, usize)>) -> Option<&'static str> {
    let mut large = false;
    for (name, in_features) in modules {
        let Some(n) = parse(name) else { continue };
        if n.site.is_attn2() {
            return Some("3.5 Medium");
        }
        // Every joint-block layer but the MLP's second takes the hidden width.
        let hidden_input = matches!(n.site, Site::Joint(_, k) if k != 3 && k != 10);
        large |= hidden_input && in_features == 2432;
    }
    large.then_some("3.5 Large")
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
        let qkv = Site::Joint(3, 5);
        for (name, parts, layout) in [
            ("lora_unet_joint_blocks_3_x_block_attn_qkv", 0..3, Layout::Kohya),
            ("diffusion_model.joint_blocks.3.x_block.attn.qkv", 0..3, Layout::Sai),
            ("joint_blocks.3.x_block.attn.qkv", 0..3, Layout::Sai),
            ("base_model.model.joint_blocks.3.x_block.attn.qkv", 0..3, Layout::Sai),
            ("transformer.transformer_blocks.3.attn.to_k", 1..2, Layout::Diffusers),
            ("base_model.model.transformer_blocks.3.attn.to_v", 2..3, Layout::Diffusers),
            ("lora_transformer_transformer_blocks_3_attn_to_q", 0..1, Layout::KohyaDiffusers),
        ] {
            assert_eq!(site(name), (qkv, parts, layout), "{name}");
        }
        assert_eq!(
            site("transformer.transformer_blocks.0.attn.add_v_proj"),
            (Site::Joint(0, 0), 2..3, Layout::Diffusers)
        );
        assert_eq!(site("transformer.transformer_blocks.2.attn2.to_out.0").0, Site::Joint(2, 8));
        assert_eq!(site("lora_unet_joint_blocks_2_x_block_attn2_qkv").0, Site::Joint(2, 7));
        assert_eq!(site("lora_unet_joint_blocks_23_context_block_adaLN_modulation_1").0, Site::Joint(23, 4));
        assert_eq!(site("transformer.transformer_blocks.1.norm1_context.linear").0, Site::Joint(1, 4));
        assert_eq!(site("lora_unet_x_embedder_proj").0, Site::Global(PATCH_EMBED));
        assert_eq!(site("transformer.pos_embed.proj"), (Site::Global(PATCH_EMBED), 0..1, Layout::Diffusers));
        assert_eq!(site("lora_unet_t_embedder_mlp_2").0, Site::Global(2));
        assert_eq!(site("transformer.time_text_embed.text_embedder.linear_1").0, Site::Global(4));
        assert_eq!(site("lora_unet_final_layer_adaLN_modulation_1").0, Site::Global(FINAL_MODULATION));
        assert_eq!(site("transformer.norm_out.linear").0, Site::Global(FINAL_MODULATION));
        assert_eq!(site("lora_te2_text_model_encoder_layers_31_mlp_fc2").0, Site::ClipG(31, 5));
        assert_eq!(site("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj").0, Site::ClipG(0, 2));
        assert_eq!(site("text_encoder.text_model.encoder.layers.11.self_attn.out_proj").0, Site::ClipL(11, 3));
        assert_eq!(site("lora_te3_encoder_block_23_layer_1_DenseReluDense_wi_0").0, Site::T5(23, 4));
        assert_eq!(site("text_encoder_3.encoder.block.0.layer.0.SelfAttention.o").0, Site::T5(0, 3));
        assert_eq!(site("text_encoders.clip_g.transformer.text_model.encoder.layers.1.mlp.fc1").0, Site::ClipG(1, 4));
        for bad in [
            "lora_unet_double_blocks_0_img_attn_qkv",
            "lora_unet_joint_blocks_0_x_block_attn_ln_q",
            "lora_unet_down_blocks_0_attentions_0_proj_in",
            "transformer.transformer_blocks.x.attn.to_q",
            "transformer.single_transformer_blocks.0.proj_mlp",
            "joint_blocks.0.attn.to_q",
            "transformer.transformer_blocks.0.x_block.attn.qkv",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names_round_trip_and_halves() {
        let sites = [Site::Joint(23, 4), Site::Joint(0, 7), Site::Global(3), Site::ClipG(2, 1), Site::T5(5, 6)];
        crate::dit_convert::assert_names_round_trip(&sites);
        assert!(Site::Joint(23, 4).swaps_halves(1536, 3072));
        assert!(!Site::Joint(22, 4).swaps_halves(1536, 6 * 1536));
        assert!(Site::Global(FINAL_MODULATION).swaps_halves(1536, 3072));
        assert!(!Site::Joint(0, 11).swaps_halves(1536, 3072));
        let arch = Arch { depth: 3, attn2_blocks: vec![0] };
        let all = Site::all(&arch, 0, 0, 0);
        // Block 0: 12 children; block 1: 10 (no attn2); block 2 (pre-only): 7; 8 globals.
        assert_eq!(all.len(), 12 + 10 + 7 + 8);
        let names: Vec<String> = all.iter().map(|s| s.kohya_name()).collect();
        assert_eq!(variant(names.iter().map(|n| (n.as_str(), 64))), Some("3.5 Medium"));
        assert_eq!(variant(names[12..].iter().map(|n| (n.as_str(), 2432))), Some("3.5 Large"));
        assert_eq!(variant(names[12..].iter().map(|n| (n.as_str(), 1536))), None);
    }
}
