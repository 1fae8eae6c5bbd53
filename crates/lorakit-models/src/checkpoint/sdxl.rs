//! SDXL specifics of checkpoint loading: the flag tensors single files carry, the variants
//! lorakit refuses, and the configurations of a single file read from its weights.
//!
//! A single file has no config.json. Sizes the weights show (widths, depths, layer and block
//! counts, projection and embedding sizes) are read from them; what they cannot show comes
//! from SDXL base 1.0's published configs: attention heads of 64 channels each, 32 norm
//! groups, the activations, the VAE's scaling factor 0.13025 and `force_upcast`. So the SDXL
//! base model and its fine-tunes get exactly diffusers' configs, and distilled variants with
//! fewer transformer blocks (SSD-1B, Vega) get their own depths.

use std::collections::BTreeSet;

use lorakit_lora::safetensors_file::LoraFile;
use serde_json::{json, Value};

use crate::clip::ClipTextConfig;
use crate::vae::AutoencoderKLConfig;
use crate::Weights;

use super::ldm_keys::SDXL_REFINER_PREFIX;

/// The top-level flag tensors of a single file (ComfyUI's conventions; their values are not
/// read, only their presence).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelFlags {
    /// `v_pred`: the model predicts v (NoobAI-XL v-pred and other v-prediction SDXL files).
    pub v_pred: bool,
    /// `ztsnr`: trained with a zero-terminal-SNR noise schedule.
    pub ztsnr: bool,
    /// `edm_mean`/`edm_std` (Playground v2.5) or `edm_vpred.sigma_max` (EDM v-prediction).
    pub edm: bool,
}

impl ModelFlags {
    /// The flags among a file's tensor names.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut flags = ModelFlags::default();
        for name in names {
            match name {
                "v_pred" => flags.v_pred = true,
                "ztsnr" => flags.ztsnr = true,
                "edm_mean" | "edm_std" | "edm_vpred.sigma_max" | "edm_vpred.sigma_min" => flags.edm = true,
                _ => {}
            }
        }
        flags
    }
}

/// Refuses SDXL-family files lorakit cannot train, by name: the refiner (its only text
/// encoder is OpenCLIP bigG as embedder 0, its U-Net conditions on an aesthetic score) and
/// EDM-parameterised models (Playground v2.5, EDM v-prediction), whose noise schedule and
/// latent normalisation are not SDXL's.
pub fn refuse_unsupported_variant(file: &LoraFile) -> crate::Result<()> {
    let refuse = |message: &str| {
        Err(crate::Error::UnsupportedFamily { path: file.path().to_path_buf(), message: message.to_string() })
    };
    if file.tensor_names().any(|n| n.starts_with(SDXL_REFINER_PREFIX)) {
        return refuse(
            "this is an SDXL refiner (`conditioner.embedders.0.model.*`, no CLIP-L text encoder); lorakit trains the SDXL base model — pick an SDXL base checkpoint",
        );
    }
    if ModelFlags::from_names(file.tensor_names()).edm {
        return refuse(
            "this SDXL-architecture model uses an EDM noise schedule (`edm_*` keys, e.g. Playground v2.5), which lorakit does not train — pick an SDXL model with the standard schedule",
        );
    }
    Ok(())
}

/// The configurations of an SDXL single file, as diffusers `config.json` values.
#[derive(Debug, Clone, PartialEq)]
pub struct SdxlConfigs {
    /// `UNet2DConditionModel` config.
    pub unet: Value,
    /// `AutoencoderKL` config.
    pub vae: Value,
    /// Text encoder 1's `CLIPTextConfig`.
    pub text_encoder: Value,
    /// Text encoder 2's `CLIPTextConfig` (with `projection_dim`).
    pub text_encoder_2: Value,
}

/// SDXL base 1.0's `unet/config.json` (as sd-scripts' `DIFFUSERS_SDXL_UNET_CONFIG` and the
/// diffusers folder give it).
pub fn sdxl_unet_config() -> Value {
    serde_json::from_str(SDXL_UNET_CONFIG).expect("the SDXL U-Net config is valid JSON")
}

const SDXL_UNET_CONFIG: &str = r#"{
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": false,
        "class_embed_type": null,
        "class_embeddings_concat": false,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 2048,
        "cross_attention_norm": null,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": false,
        "encoder_hid_dim": null,
        "encoder_hid_dim_type": null,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": null,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": null,
        "num_class_embeds": null,
        "only_cross_attention": false,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": false,
        "resnet_time_scale_shift": "default",
        "sample_size": 128,
        "time_cond_proj_dim": null,
        "time_embedding_act_fn": null,
        "time_embedding_dim": null,
        "time_embedding_type": "positional",
        "timestep_post_act": null,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "upcast_attention": false,
        "use_linear_projection": true
    }"#;

/// Channels per attention head in SDXL's U-Net and text encoders.
const HEAD_DIM: usize = 64;

/// The configs of an SDXL single file from its converted weights (see the module docs). Each
/// store is read where it has the tensor in question; what is absent keeps SDXL base's value
/// (building the model then names the missing tensors).
pub fn infer_configs(unet: &Weights, vae: &Weights, te1: &Weights, te2: Option<&Weights>) -> SdxlConfigs {
    let text_encoder = clip_config(te1, ClipTextConfig::sdxl_te1(), false);
    let text_encoder_2 = match te2 {
        Some(te2) => clip_config(te2, ClipTextConfig::sdxl_te2(), true),
        None => ClipTextConfig::sdxl_te2(),
    };
    let pooled = text_encoder_2.projection_dim.unwrap_or(text_encoder_2.hidden_size);
    SdxlConfigs {
        unet: unet_config(unet, pooled),
        vae: serde_json::to_value(vae_config(vae)).expect("a VAE config serialises"),
        text_encoder: serde_json::to_value(text_encoder).expect("a CLIP config serialises"),
        text_encoder_2: serde_json::to_value(text_encoder_2).expect("a CLIP config serialises"),
    }
}

/// Dimension `i` of tensor `name`, if present.
fn dim(w: &Weights, name: &str, i: usize) -> Option<usize> {
    w.tensor(name).and_then(|t| t.dims().get(i).copied())
}

/// The distinct indices N of keys `prefix.N.…`, sorted.
fn indices(w: &Weights, prefix: &str) -> BTreeSet<usize> {
    let prefix = format!("{prefix}.");
    w.names()
        .filter_map(|n| n.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_once('.').and_then(|(i, _)| i.parse().ok()))
        .collect()
}

/// How many indices `prefix.0 …` run without a gap.
fn count(w: &Weights, prefix: &str) -> usize {
    let found = indices(w, prefix);
    (0..).take_while(|i| found.contains(i)).count()
}

/// Heads of `width` channels at 64 per head (SDXL's layout), or `preset` when `width` is the
/// preset's width, or one head when 64 does not divide it. A width other than SDXL's is logged:
/// the head count is a guess the weights cannot confirm.
fn heads(what: &str, width: usize, preset_width: usize, preset_heads: usize) -> usize {
    if width == preset_width {
        return preset_heads;
    }
    let heads = if width >= HEAD_DIM && width % HEAD_DIM == 0 { width / HEAD_DIM } else { 1 };
    tracing::warn!(
        "{what} is {width} wide where SDXL's is {preset_width}: assuming {heads} attention head(s) of {} channels, which the weights cannot confirm (a diffusers folder's config.json says)",
        width / heads
    );
    heads
}

fn clip_config(w: &Weights, preset: ClipTextConfig, projection: bool) -> ClipTextConfig {
    let mut cfg = preset.clone();
    let emb = "text_model.embeddings";
    if let Some(v) = dim(w, &format!("{emb}.token_embedding.weight"), 0) {
        cfg.vocab_size = v;
    }
    if let Some(d) = dim(w, &format!("{emb}.token_embedding.weight"), 1) {
        cfg.hidden_size = d;
    }
    if let Some(p) = dim(w, &format!("{emb}.position_embedding.weight"), 0) {
        cfg.max_position_embeddings = p;
    }
    let layers = count(w, "text_model.encoder.layers");
    if layers > 0 {
        cfg.num_hidden_layers = layers;
    }
    if let Some(i) = dim(w, "text_model.encoder.layers.0.mlp.fc1.weight", 0) {
        cfg.intermediate_size = i;
    }
    let what = if projection { "text encoder 2" } else { "text encoder 1" };
    cfg.num_attention_heads = heads(what, cfg.hidden_size, preset.hidden_size, preset.num_attention_heads);
    if projection {
        cfg.projection_dim = Some(dim(w, "text_projection.weight", 0).unwrap_or(cfg.hidden_size));
    }
    cfg
}

pub(crate) fn vae_config(w: &Weights) -> AutoencoderKLConfig {
    let mut cfg = AutoencoderKLConfig::sdxl();
    let levels = count(w, "encoder.down_blocks");
    let channels: Vec<usize> =
        (0..levels).filter_map(|i| dim(w, &format!("encoder.down_blocks.{i}.resnets.0.conv1.weight"), 0)).collect();
    if !channels.is_empty() && channels.len() == levels {
        cfg.down_block_types = vec!["DownEncoderBlock2D".into(); levels];
        cfg.up_block_types = vec!["UpDecoderBlock2D".into(); levels];
        cfg.block_out_channels = channels;
    }
    let per_block = count(w, "encoder.down_blocks.0.resnets");
    if per_block > 0 {
        cfg.layers_per_block = per_block;
    }
    if let Some(c) = dim(w, "encoder.conv_in.weight", 1) {
        cfg.in_channels = c;
    }
    if let Some(c) = dim(w, "decoder.conv_out.weight", 0) {
        cfg.out_channels = c;
    }
    if let Some(c) = dim(w, "decoder.conv_in.weight", 1) {
        cfg.latent_channels = c;
    }
    cfg.use_quant_conv = w.contains("quant_conv.weight");
    cfg.use_post_quant_conv = w.contains("post_quant_conv.weight");
    cfg.mid_block_add_attention = w.names().any(|n| n.starts_with("encoder.mid_block.attentions.0."));
    if cfg.block_out_channels.iter().any(|c| c % cfg.norm_num_groups != 0) {
        cfg.norm_num_groups = cfg.block_out_channels.iter().fold(0, |g, &c| gcd(g, c)).max(1);
    }
    cfg
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn unet_config(w: &Weights, pooled_dim: usize) -> Value {
    let mut cfg = sdxl_unet_config();
    let preset_channels: Vec<usize> =
        serde_json::from_value(cfg["block_out_channels"].clone()).expect("preset block_out_channels");
    let preset_heads: Vec<usize> =
        serde_json::from_value(cfg["attention_head_dim"].clone()).expect("preset attention_head_dim");
    let levels = count(w, "down_blocks");
    let channels: Vec<usize> =
        (0..levels).filter_map(|i| dim(w, &format!("down_blocks.{i}.resnets.0.conv1.weight"), 0)).collect();
    if levels == 0 || channels.len() != levels {
        return cfg;
    }
    let attention = |side: &str, i: usize| w.names().any(|n| n.starts_with(&format!("{side}.{i}.attentions.0.")));
    let depth = |prefix: String| count(w, &format!("{prefix}.transformer_blocks")).max(1);
    let down_types: Vec<&str> =
        (0..levels).map(|i| if attention("down_blocks", i) { "CrossAttnDownBlock2D" } else { "DownBlock2D" }).collect();
    let up_types: Vec<&str> =
        (0..levels).map(|i| if attention("up_blocks", i) { "CrossAttnUpBlock2D" } else { "UpBlock2D" }).collect();
    let per_block = count(w, "down_blocks.0.resnets").max(1);
    let down_depth: Vec<usize> = (0..levels).map(|i| depth(format!("down_blocks.{i}.attentions.0"))).collect();
    // diffusers builds up block i's attentions with the depth of down block levels − 1 − i
    // unless `reverse_transformer_layers_per_block` says otherwise (distilled models).
    let up_depth: Vec<Vec<usize>> = (0..levels)
        .map(|i| (0..=per_block).map(|j| depth(format!("up_blocks.{i}.attentions.{j}"))).collect())
        .collect();
    let uniform_up =
        (0..levels).all(|i| !attention("up_blocks", i) || up_depth[i].iter().all(|&d| d == down_depth[levels - 1 - i]));
    let head_counts: Vec<usize> = channels
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let (pc, ph) = (preset_channels.get(i).copied().unwrap_or(0), preset_heads.get(i).copied().unwrap_or(0));
            heads(&format!("U-Net level {i}"), c, pc, ph)
        })
        .collect();
    let cross = (0..levels)
        .flat_map(|i| [format!("down_blocks.{i}.attentions.0"), format!("up_blocks.{i}.attentions.0")])
        .chain(["mid_block.attentions.0".to_string()])
        .find_map(|p| dim(w, &format!("{p}.transformer_blocks.0.attn2.to_k.weight"), 1));
    let proj_in_rank = (0..levels)
        .map(|i| format!("down_blocks.{i}.attentions.0.proj_in.weight"))
        .chain(["mid_block.attentions.0.proj_in.weight".to_string()])
        .find_map(|n| w.tensor(&n).map(|t| t.rank()));
    let set = |cfg: &mut Value, key: &str, value: Value| {
        cfg[key] = value;
    };
    set(&mut cfg, "block_out_channels", json!(channels));
    set(&mut cfg, "down_block_types", json!(down_types));
    set(&mut cfg, "up_block_types", json!(up_types));
    set(&mut cfg, "layers_per_block", json!(per_block));
    set(&mut cfg, "transformer_layers_per_block", json!(down_depth));
    if !uniform_up {
        set(&mut cfg, "reverse_transformer_layers_per_block", json!(up_depth));
    }
    set(&mut cfg, "attention_head_dim", json!(head_counts));
    if !w.names().any(|n| n.starts_with("mid_block.")) {
        set(&mut cfg, "mid_block_type", Value::Null);
    }
    if let Some(c) = cross {
        set(&mut cfg, "cross_attention_dim", json!(c));
    }
    if let Some(rank) = proj_in_rank {
        set(&mut cfg, "use_linear_projection", json!(rank == 2));
    }
    if let Some(c) = dim(w, "conv_in.weight", 1) {
        set(&mut cfg, "in_channels", json!(c));
    }
    if let Some(c) = dim(w, "conv_out.weight", 0) {
        set(&mut cfg, "out_channels", json!(c));
    }
    if let Some(input) = dim(w, "add_embedding.linear_1.weight", 1) {
        set(&mut cfg, "projection_class_embeddings_input_dim", json!(input));
        // pooled text vector + 6 size/crop numbers, each a sinusoidal embedding.
        if input > pooled_dim && (input - pooled_dim) % 6 == 0 {
            set(&mut cfg, "addition_time_embed_dim", json!((input - pooled_dim) / 6));
        }
    }
    if channels.iter().any(|c| c % 32 != 0) {
        set(&mut cfg, "norm_num_groups", json!(channels.iter().fold(0, |g, &c| gcd(g, c)).max(1)));
    }
    cfg
}
