//! Which block of the model a LoRA module belongs to, named the way users
//! read LoRA block weights: SD1.x/SD2.x `IN01`–`IN11`, `M00`, `OUT00`–`OUT11`
//! (sd-scripts' `get_block_index`, spec §2.5, i.e. LDM `input_blocks.k` /
//! `output_blocks.k` numbering); SDXL `IN00`–`IN08`, `M00`–`M02`,
//! `OUT00`–`OUT08`; Flux `D00`–`D18` (double blocks) and `S00`–`S37` (single
//! blocks); SD3 `J00`… (joint blocks); text encoders `TE`, `TE1`, `TE2`, `TE3`.

use std::fmt;

/// A block label, ordered as the model runs: text encoders, input, middle, output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Block {
    /// A text encoder: "TE" (SD1/SD2), "TE1"/"TE2" (SDXL, SD3 CLIP), "TE3" (T5).
    TextEncoder(&'static str),
    /// Time/label embeddings and other inputs (SDXL `time_embed`, Flux `img_in`, …).
    Base,
    /// U-Net input block k.
    In(u32),
    /// U-Net middle block k.
    Mid(u32),
    /// U-Net output block k.
    Out(u32),
    /// SD3 joint block k.
    Joint(u32),
    /// Flux double-stream block k.
    Double(u32),
    /// Flux single-stream block k.
    Single(u32),
    /// Final layers (SDXL `out`, Flux `final_layer`).
    Final,
    /// A module whose block is not known.
    Other,
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Block::TextEncoder(te) => write!(f, "{te}"),
            Block::Base => write!(f, "BASE"),
            Block::In(k) => write!(f, "IN{k:02}"),
            Block::Mid(k) => write!(f, "M{k:02}"),
            Block::Out(k) => write!(f, "OUT{k:02}"),
            Block::Joint(k) => write!(f, "J{k:02}"),
            Block::Double(k) => write!(f, "D{k:02}"),
            Block::Single(k) => write!(f, "S{k:02}"),
            Block::Final => write!(f, "FINAL"),
            Block::Other => write!(f, "OTHER"),
        }
    }
}

/// The number that follows `prefix` at the start of `name` (`"down_blocks_2_x"`, `"down_blocks_"` → 2).
fn numbered(name: &str, prefix: &str) -> Option<u32> {
    let tail = name.strip_prefix(prefix)?;
    let digits = &tail[..tail.find(|c: char| !c.is_ascii_digit()).unwrap_or(tail.len())];
    digits.parse().ok()
}

/// The block of a kohya module name (`lora_unet_…`, `lora_te1_…`; no `.lora_down.weight` suffix).
pub fn block_of(module: &str) -> Block {
    for (prefix, te) in [("lora_te1_", "TE1"), ("lora_te2_", "TE2"), ("lora_te3_", "TE3"), ("lora_te_", "TE")] {
        if module.starts_with(prefix) {
            return Block::TextEncoder(te);
        }
    }
    let Some(rest) = module.strip_prefix("lora_unet_") else {
        return Block::Other;
    };
    // SD1.x / SD2.x (diffusers layout): sd-scripts' get_block_index.
    for (prefix, is_down) in [("down_blocks_", true), ("up_blocks_", false)] {
        if let Some(i) = numbered(rest, prefix) {
            let tail = &rest[prefix.len() + i.to_string().len()..];
            let j = ["_resnets_", "_attentions_"].iter().find_map(|p| numbered(tail, p));
            let idx = match j {
                Some(j) => 3 * i + j,
                None if tail.starts_with("_downsamplers_") || tail.starts_with("_upsamplers_") => 3 * i + 2,
                None => return Block::Other,
            };
            return if is_down { Block::In(1 + idx) } else { Block::Out(idx) };
        }
    }
    if rest.starts_with("mid_block_") {
        return Block::Mid(0);
    }
    // SDXL (original SGM layout).
    if let Some(k) = numbered(rest, "input_blocks_") {
        return Block::In(k);
    }
    if let Some(k) = numbered(rest, "middle_block_") {
        return Block::Mid(k);
    }
    if let Some(k) = numbered(rest, "output_blocks_") {
        return Block::Out(k);
    }
    if rest.starts_with("time_embed_") || rest.starts_with("label_emb_") {
        return Block::Base;
    }
    if rest.starts_with("out_") {
        return Block::Final;
    }
    // Flux and SD3 transformers.
    if let Some(k) = numbered(rest, "double_blocks_") {
        return Block::Double(k);
    }
    if let Some(k) = numbered(rest, "single_blocks_") {
        return Block::Single(k);
    }
    if let Some(k) = numbered(rest, "joint_blocks_") {
        return Block::Joint(k);
    }
    if [
        "img_in",
        "txt_in",
        "time_in_",
        "vector_in_",
        "guidance_in_",
        "x_embedder",
        "context_embedder",
        "t_embedder_",
        "y_embedder_",
    ]
    .iter()
    .any(|p| rest.starts_with(p))
    {
        return Block::Base;
    }
    if rest.starts_with("final_layer") {
        return Block::Final;
    }
    Block::Other
}

/// The slot numbering of sd-scripts' block-wise dims and learning-rate weights (spec §2.5):
/// SD1.x/SD2.x 25 slots (0 = never used, IN01–IN11 = 1–11, M00 = 12, OUT00–OUT11 = 13–24),
/// SDXL 23 slots (BASE = 0, IN00–IN08 = 1–9, M00–M02 = 10–12, OUT00–OUT08 = 13–21, FINAL = 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockLayout {
    Sd,
    Sdxl,
}

impl BlockLayout {
    /// The layout of a U-Net's module names, as sd-scripts decides it: SDXL when any module
    /// name has `input_blocks` or `output_blocks`.
    pub fn detect<'a>(unet_modules: impl IntoIterator<Item = &'a str>) -> Self {
        let sdxl = unet_modules.into_iter().any(|n| n.contains("input_blocks") || n.contains("output_blocks"));
        if sdxl {
            BlockLayout::Sdxl
        } else {
            BlockLayout::Sd
        }
    }

    /// Number of slots of `block_dims`-style lists.
    pub fn slots(self) -> usize {
        match self {
            BlockLayout::Sd => 25,
            BlockLayout::Sdxl => 23,
        }
    }

    /// Length of the `down_lr_weight` / `up_lr_weight` lists.
    pub fn down_up_len(self) -> usize {
        match self {
            BlockLayout::Sd => 12,
            BlockLayout::Sdxl => 9,
        }
    }

    /// Length of the `mid_lr_weight` list.
    pub fn mid_len(self) -> usize {
        match self {
            BlockLayout::Sd => 1,
            BlockLayout::Sdxl => 3,
        }
    }

    /// The slot of a U-Net module (`lora_unet_…`), `None` for modules outside the numbered blocks
    /// (text encoders, SD `conv_in`) — sd-scripts' `get_block_index` returning −1.
    pub fn slot(self, module: &str) -> Option<usize> {
        let slot = match (self, block_of(module)) {
            (BlockLayout::Sd, Block::In(k)) if (1..=11).contains(&k) => k,
            (BlockLayout::Sd, Block::Mid(0)) => 12,
            (BlockLayout::Sd, Block::Out(k)) if k <= 11 => 13 + k,
            (BlockLayout::Sdxl, Block::Base) => 0,
            (BlockLayout::Sdxl, Block::In(k)) if k <= 8 => 1 + k,
            (BlockLayout::Sdxl, Block::Mid(k)) if k <= 2 => 10 + k,
            (BlockLayout::Sdxl, Block::Out(k)) if k <= 8 => 13 + k,
            (BlockLayout::Sdxl, Block::Final) => 22,
            _ => return None,
        };
        Some(slot as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_blocks_follow_sd_scripts_slots() {
        let cases = [
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "IN01"),
            ("lora_unet_down_blocks_0_attentions_1_proj_in", "IN02"),
            ("lora_unet_down_blocks_0_downsamplers_0_conv", "IN03"),
            ("lora_unet_down_blocks_1_resnets_0_conv1", "IN04"),
            ("lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_ff_net_2", "IN08"),
            ("lora_unet_down_blocks_3_resnets_1_conv2", "IN11"),
            ("lora_unet_mid_block_attentions_0_proj_out", "M00"),
            ("lora_unet_up_blocks_0_resnets_0_conv1", "OUT00"),
            ("lora_unet_up_blocks_0_upsamplers_0_conv", "OUT02"),
            ("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", "OUT03"),
            ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_out_0", "OUT11"),
            ("lora_te_text_model_encoder_layers_11_mlp_fc2", "TE"),
            ("lora_unet_conv_in", "OTHER"),
        ];
        for (name, want) in cases {
            assert_eq!(block_of(name).to_string(), want, "{name}");
        }
    }

    #[test]
    fn sdxl_flux_sd3_blocks() {
        let cases = [
            ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "IN04"),
            ("lora_unet_input_blocks_3_0_op", "IN03"),
            ("lora_unet_middle_block_1_transformer_blocks_3_attn2_to_out_0", "M01"),
            ("lora_unet_output_blocks_2_2_conv", "OUT02"),
            ("lora_unet_time_embed_0", "BASE"),
            ("lora_te2_text_model_encoder_layers_31_self_attn_out_proj", "TE2"),
            ("lora_unet_double_blocks_18_txt_mlp_2", "D18"),
            ("lora_unet_single_blocks_37_linear1", "S37"),
            ("lora_unet_img_in", "BASE"),
            ("lora_te3_encoder_block_0_layer_0_SelfAttention_q", "TE3"),
            ("lora_unet_joint_blocks_5_x_block_attn_qkv", "J05"),
        ];
        for (name, want) in cases {
            assert_eq!(block_of(name).to_string(), want, "{name}");
        }
    }

    #[test]
    fn slots_follow_sd_scripts_get_block_index() {
        let sd = [
            ("lora_unet_down_blocks_0_attentions_0_proj_in", Some(1)),
            ("lora_unet_down_blocks_0_downsamplers_0_conv", Some(3)),
            ("lora_unet_down_blocks_3_resnets_1_conv2", Some(11)),
            ("lora_unet_mid_block_attentions_0_proj_out", Some(12)),
            ("lora_unet_up_blocks_0_resnets_0_conv1", Some(13)),
            ("lora_unet_up_blocks_0_upsamplers_0_conv", Some(15)),
            ("lora_unet_up_blocks_3_attentions_2_proj_out", Some(24)),
            ("lora_te_text_model_encoder_layers_0_mlp_fc1", None),
        ];
        for (name, want) in sd {
            assert_eq!(BlockLayout::Sd.slot(name), want, "{name}");
        }
        let sdxl = [
            ("lora_unet_time_embed_0", Some(0)),
            ("lora_unet_input_blocks_0_0", Some(1)),
            ("lora_unet_input_blocks_8_1_proj_in", Some(9)),
            ("lora_unet_middle_block_2_out_layers_3", Some(12)),
            ("lora_unet_output_blocks_8_1_proj_out", Some(21)),
            ("lora_unet_out_2", Some(22)),
        ];
        for (name, want) in sdxl {
            assert_eq!(BlockLayout::Sdxl.slot(name), want, "{name}");
        }
        assert_eq!(BlockLayout::detect(["lora_unet_down_blocks_0_attentions_0_proj_in"]), BlockLayout::Sd);
        assert_eq!(BlockLayout::detect(["lora_unet_input_blocks_4_1_proj_in"]), BlockLayout::Sdxl);
    }

    #[test]
    fn blocks_sort_in_model_order() {
        let mut v = [Block::Out(0), Block::Mid(0), Block::In(11), Block::TextEncoder("TE"), Block::In(2)];
        v.sort();
        let names: Vec<String> = v.iter().map(|b| b.to_string()).collect();
        assert_eq!(names, ["TE", "IN02", "IN11", "M00", "OUT00"]);
    }
}
