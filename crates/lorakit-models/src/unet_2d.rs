//! The conditional UNet of Stable Diffusion 1.x/2.x and SDXL (diffusers
//! `unets/unet_2d_condition.py`, with the timestep and SDXL `text_time` embeddings of
//! `embeddings.py`).
//!
//! Built from a diffusers `config.json` ([`UNet2DConditionModelConfig`]) and weights under
//! diffusers keys; every conv and linear is named by its module path, so
//! [`UNet2DConditionModel::lora_targets`] yields exactly the layers that sd-scripts'
//! `networks/lora.py` creates modules for. Their kohya names follow the layout sd-scripts' own
//! UNet uses ([`KohyaLayout`]): diffusers paths for SD1/SD2, the original SGM layout for SDXL
//! ([`UNet2DConditionModel::lora_targets_in`]).

use candle_core::{DType, Result, Tensor};
use lorakit_nn::activation::silu;
use lorakit_nn::lora::{LoraTarget, TargetGroup};
use lorakit_nn::{Conv2d, ForwardCtx, GroupNorm, Linear};
use serde::{Deserialize, Serialize};

use crate::resnet::{push_conv, push_linear, push_norm, ParamShapes};
use crate::unet_2d_blocks::{
    BlockConfig, CrossAttentionConfig, CrossAttnDownBlock2D, CrossAttnUpBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn,
    UpBlock2D,
};
use crate::weights::WeightsView;

/// A config value diffusers accepts either once for all blocks or as one value per block.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same value for every block.
    One(T),
    /// One value per down block (up blocks use the list reversed).
    Many(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value for each of `n` blocks; a list of the wrong length is an error naming `field`.
    pub fn expand(&self, n: usize, field: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); n]),
            PerBlock::Many(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Many(v) => candle_core::bail!("UNet config: {field} has {} entries for {n} blocks", v.len()),
        }
    }
}

/// diffusers' `UNet2DConditionModel` configuration, read from its `config.json` (unknown keys
/// are ignored, missing ones take diffusers' defaults). Fields for features this crate does not
/// implement are kept so that [`UNet2DConditionModelConfig::validate`] can refuse such models
/// instead of silently computing something else.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct UNet2DConditionModelConfig {
    /// Latent size the model was trained at (informational).
    pub sample_size: Option<usize>,
    /// Latent channels in.
    pub in_channels: usize,
    /// Channels out (the noise prediction).
    pub out_channels: usize,
    /// Maps the input from [0, 1] to [-1, 1] first.
    pub center_input_sample: bool,
    /// Timestep embedding order cos, sin (SD: true).
    pub flip_sin_to_cos: bool,
    /// Timestep frequency shift (SD: 0).
    pub freq_shift: f64,
    /// Down block classes, shallowest first.
    pub down_block_types: Vec<String>,
    /// Mid block class (`None`: no mid block).
    pub mid_block_type: Option<String>,
    /// Up block classes, deepest first.
    pub up_block_types: Vec<String>,
    /// `attn1` attends to the text too, per block.
    pub only_cross_attention: PerBlock<bool>,
    /// Channels per resolution.
    pub block_out_channels: Vec<usize>,
    /// ResNets per down block (up blocks have one more).
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the downsampler convs.
    pub downsample_padding: usize,
    /// Output divisor of the mid block's ResNets.
    pub mid_block_scale_factor: f64,
    /// Dropout (only 0 is supported).
    pub dropout: f64,
    /// ResNet activation (only `silu`).
    pub act_fn: String,
    /// GroupNorm groups.
    pub norm_num_groups: Option<usize>,
    /// GroupNorm epsilon of the ResNets and the output norm.
    pub norm_eps: f64,
    /// Text context width, per block.
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer blocks per Transformer2DModel, per block.
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Unsupported (SDXL-refiner style per-layer lists); must be null.
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Unsupported; must be null.
    pub encoder_hid_dim: Option<usize>,
    /// Unsupported; must be null.
    pub encoder_hid_dim_type: Option<String>,
    /// Despite its name, the number of attention heads per block (diffusers' historical naming,
    /// used when `num_attention_heads` is null).
    pub attention_head_dim: PerBlock<usize>,
    /// Heads per block; overrides `attention_head_dim` when set.
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Unsupported; must be false.
    pub dual_cross_attention: bool,
    /// `proj_in`/`proj_out` are linears (SD2) rather than 1×1 convs (SD1).
    pub use_linear_projection: bool,
    /// Unsupported; must be null.
    pub class_embed_type: Option<String>,
    /// `text_time` (SDXL: pooled text embedding and size/crop ids added to the time embedding)
    /// or null; other types are unsupported.
    pub addition_embed_type: Option<String>,
    /// Width of each `text_time` id's sinusoidal features (SDXL: 256).
    pub addition_time_embed_dim: Option<usize>,
    /// Unsupported; must be null.
    pub num_class_embeds: Option<usize>,
    /// Attention in f32 (SD2.1).
    pub upcast_attention: bool,
    /// Only `default` is supported.
    pub resnet_time_scale_shift: String,
    /// Unsupported; must be false.
    pub resnet_skip_time_act: bool,
    /// Output divisor of the down/up blocks' ResNets.
    pub resnet_out_scale_factor: f64,
    /// Only `positional` is supported.
    pub time_embedding_type: String,
    /// Width of the time embedding (default 4 × the first block's channels).
    pub time_embedding_dim: Option<usize>,
    /// Unsupported; must be null.
    pub time_embedding_act_fn: Option<String>,
    /// Unsupported; must be null.
    pub timestep_post_act: Option<String>,
    /// Unsupported; must be null.
    pub time_cond_proj_dim: Option<usize>,
    /// Kernel of `conv_in` (odd).
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out` (odd).
    pub conv_out_kernel: usize,
    /// Input width of `add_embedding` with `text_time`: pooled text width + ids × addition_time_embed_dim
    /// (SDXL: 1280 + 6 × 256 = 2816).
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Only `default` is supported.
    pub attention_type: String,
    /// Unsupported; ignored without a class embedding.
    pub class_embeddings_concat: bool,
    /// `only_cross_attention` of the mid block (default: the global bool).
    pub mid_block_only_cross_attention: Option<bool>,
    /// Unsupported; must be null.
    pub cross_attention_norm: Option<String>,
    /// Unused without an addition embedding.
    pub addition_embed_type_num_heads: usize,
}

impl Default for UNet2DConditionModelConfig {
    /// diffusers' constructor defaults (note: `cross_attention_dim` 1280, not SD1.5's 768).
    fn default() -> Self {
        UNet2DConditionModelConfig {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
                .map(String::from)
                .to_vec(),
            mid_block_type: Some("UNetMidBlock2DCrossAttn".into()),
            up_block_types: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
                .map(String::from)
                .to_vec(),
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            resnet_skip_time_act: false,
            resnet_out_scale_factor: 1.0,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            projection_class_embeddings_input_dim: None,
            attention_type: "default".into(),
            class_embeddings_concat: false,
            mid_block_only_cross_attention: None,
            cross_attention_norm: None,
            addition_embed_type_num_heads: 64,
        }
    }
}

/// One down or up block as the model builds it.
#[derive(Clone, Debug)]
struct BlockPlan {
    kind: String,
    cfg: BlockConfig,
}

/// The whole block structure derived from a config (shared by the constructor,
/// `parameter_shapes` and the SGM names, so they cannot disagree).
#[derive(Clone, Debug)]
struct Plan {
    time_embed_dim: usize,
    /// `text_time`: (features per id, `add_embedding` input width).
    add_embedding: Option<(usize, usize)>,
    down: Vec<BlockPlan>,
    mid: Option<BlockConfig>,
    up: Vec<BlockPlan>,
    groups: usize,
}

impl UNet2DConditionModelConfig {
    /// Stable Diffusion 1.5's UNet (`runwayml/stable-diffusion-v1-5/unet/config.json`).
    pub fn sd15() -> Self {
        UNet2DConditionModelConfig {
            sample_size: Some(64),
            cross_attention_dim: PerBlock::One(768),
            ..Default::default()
        }
    }

    /// Stable Diffusion 2.x's UNet (768-v / base: linear projections, 1024-wide context,
    /// heads 5/10/20/20 of width 64, upcast attention as in 2.1).
    pub fn sd2() -> Self {
        UNet2DConditionModelConfig {
            sample_size: Some(96),
            cross_attention_dim: PerBlock::One(1024),
            attention_head_dim: PerBlock::Many(vec![5, 10, 20, 20]),
            use_linear_projection: true,
            upcast_attention: true,
            ..Default::default()
        }
    }

    /// SDXL base 1.0's UNet (`stabilityai/stable-diffusion-xl-base-1.0/unet/config.json`, as
    /// sd-scripts' `DIFFUSERS_SDXL_UNET_CONFIG`): three levels, no attention at the first, 1/2/10
    /// transformer blocks of 64-wide heads, linear projections, a 2048-wide context and the
    /// `text_time` addition embedding (2,567,463,684 parameters).
    pub fn sdxl() -> Self {
        UNet2DConditionModelConfig {
            sample_size: Some(128),
            down_block_types: ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
                .map(String::from)
                .to_vec(),
            up_block_types: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"].map(String::from).to_vec(),
            block_out_channels: vec![320, 640, 1280],
            cross_attention_dim: PerBlock::One(2048),
            attention_head_dim: PerBlock::Many(vec![5, 10, 20]),
            transformer_layers_per_block: PerBlock::Many(vec![1, 2, 10]),
            use_linear_projection: true,
            addition_embed_type: Some("text_time".into()),
            addition_time_embed_dim: Some(256),
            projection_class_embeddings_input_dim: Some(2816),
            ..Default::default()
        }
    }

    /// The layout sd-scripts names this UNet's modules by: SGM for an SDXL UNet (a `text_time`
    /// addition embedding; sd-scripts trains SDXL on its own SGM-layout UNet), diffusers module
    /// paths otherwise (its SD1/SD2 UNet copies diffusers' attribute names).
    pub fn kohya_layout(&self) -> KohyaLayout {
        if self.addition_embed_type.as_deref() == Some("text_time") {
            KohyaLayout::Sgm
        } else {
            KohyaLayout::Diffusers
        }
    }

    /// The SGM (original Stability) path of a diffusers module path or parameter key of a model
    /// of this configuration (`down_blocks.1.attentions.0.proj_in` → `input_blocks.4.1.proj_in`,
    /// `up_blocks.0.upsamplers.0.conv.weight` → `output_blocks.2.2.conv.weight`, `…resnets.0.conv1`
    /// → `….0.in_layers.2`). `None` for a path outside the model or an inconsistent configuration.
    pub fn sgm_path(&self, diffusers_path: &str) -> Option<String> {
        SgmNames::new(&self.plan().ok()?).map(diffusers_path)
    }

    /// Refuses configurations with features this implementation does not have.
    pub fn validate(&self) -> Result<()> {
        let unsupported = |what: &str| -> Result<()> { candle_core::bail!("UNet config: {what} is not supported") };
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            candle_core::bail!(
                "UNet config: {} block_out_channels, {} down_block_types and {} up_block_types must agree",
                n,
                self.down_block_types.len(),
                self.up_block_types.len()
            )
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return unsupported(&format!("down block type {t}"));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return unsupported(&format!("up block type {t}"));
            }
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2DCrossAttn") => {}
            Some(t) => return unsupported(&format!("mid block type {t}")),
        }
        if self.class_embed_type.is_some() || self.num_class_embeds.is_some() {
            return unsupported("a class embedding");
        }
        match self.addition_embed_type.as_deref() {
            None | Some("text_time") => {}
            Some(t) => return unsupported(&format!("addition_embed_type {t} (only text_time)")),
        }
        if self.encoder_hid_dim.is_some() || self.encoder_hid_dim_type.is_some() {
            return unsupported("encoder_hid_dim");
        }
        if self.time_cond_proj_dim.is_some() || self.time_embedding_act_fn.is_some() || self.timestep_post_act.is_some()
        {
            return unsupported("a conditioned or activated time embedding");
        }
        if self.time_embedding_type != "positional" {
            return unsupported(&format!("time_embedding_type {}", self.time_embedding_type));
        }
        if self.resnet_time_scale_shift != "default" || self.resnet_skip_time_act {
            return unsupported("a non-default ResNet time embedding");
        }
        if self.attention_type != "default" || self.dual_cross_attention || self.cross_attention_norm.is_some() {
            return unsupported("this attention variant");
        }
        if self.reverse_transformer_layers_per_block.as_ref().is_some_and(|v| !v.is_null()) {
            return unsupported("reverse_transformer_layers_per_block");
        }
        if self.act_fn != "silu" {
            return unsupported(&format!("act_fn {}", self.act_fn));
        }
        if self.dropout != 0.0 {
            return unsupported("dropout");
        }
        if self.norm_num_groups.is_none() {
            return unsupported("norm_num_groups null");
        }
        if self.conv_in_kernel % 2 == 0 || self.conv_out_kernel % 2 == 0 {
            return unsupported("an even conv_in/conv_out kernel");
        }
        self.plan().map(|_| ())
    }

    /// Resolves per-block settings the way diffusers' constructor does.
    fn plan(&self) -> Result<Plan> {
        let n = self.block_out_channels.len();
        if n == 0 || self.up_block_types.len() != n || self.down_block_types.len() != n {
            candle_core::bail!("UNet config: block_out_channels and the block type lists must have the same length")
        }
        let ch = &self.block_out_channels;
        let groups = self.norm_num_groups.unwrap_or(32);
        let time_embed_dim = self.time_embedding_dim.unwrap_or(ch[0] * 4);
        let add_embedding = match self.addition_embed_type.as_deref() {
            Some("text_time") => match (self.addition_time_embed_dim, self.projection_class_embeddings_input_dim) {
                (Some(d), Some(p)) if d > 0 && p > 0 => Some((d, p)),
                (d, p) => candle_core::bail!(
                    "UNet config: addition_embed_type text_time needs positive addition_time_embed_dim and \
                     projection_class_embeddings_input_dim, got {d:?} and {p:?}"
                ),
            },
            _ => None,
        };
        let heads =
            self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).expand(n, "attention_head_dim")?;
        let layers = self.layers_per_block.expand(n, "layers_per_block")?;
        let cross_dim = self.cross_attention_dim.expand(n, "cross_attention_dim")?;
        let tlayers = self.transformer_layers_per_block.expand(n, "transformer_layers_per_block")?;
        let only_cross = self.only_cross_attention.expand(n, "only_cross_attention")?;
        let cross = |i: usize, only: bool| CrossAttentionConfig {
            num_attention_heads: heads[i],
            transformer_layers_per_block: tlayers[i],
            cross_attention_dim: cross_dim[i],
            use_linear_projection: self.use_linear_projection,
            only_cross_attention: only,
            upcast_attention: self.upcast_attention,
        };
        let block = |num_layers, in_channels, out_channels, prev, add, factor, cross: Option<CrossAttentionConfig>| {
            BlockConfig {
                num_layers,
                in_channels,
                out_channels,
                prev_output_channel: prev,
                temb_channels: Some(time_embed_dim),
                resnet_eps: self.norm_eps,
                resnet_groups: groups,
                output_scale_factor: factor,
                add_resample: add,
                downsample_padding: self.downsample_padding,
                cross_attention: cross,
            }
        };
        let mut down = Vec::with_capacity(n);
        let mut output = ch[0];
        for (i, kind) in self.down_block_types.iter().enumerate() {
            let input = output;
            output = ch[i];
            let c = (kind == "CrossAttnDownBlock2D").then(|| cross(i, only_cross[i]));
            let cfg = block(layers[i], input, output, 0, i + 1 < n, self.resnet_out_scale_factor, c);
            down.push(BlockPlan { kind: kind.clone(), cfg });
        }
        let mid = match self.mid_block_type {
            Some(_) => {
                let only = self.mid_block_only_cross_attention.unwrap_or(match &self.only_cross_attention {
                    PerBlock::One(b) => *b,
                    PerBlock::Many(_) => false,
                });
                let c = cross(n - 1, only);
                // One (transformer, ResNet) pair; the transformer depth comes from `c`.
                Some(block(1, ch[n - 1], ch[n - 1], 0, false, self.mid_block_scale_factor, Some(c)))
            }
            None => None,
        };
        let mut up = Vec::with_capacity(n);
        let mut output = ch[n - 1];
        for (i, kind) in self.up_block_types.iter().enumerate() {
            let r = n - 1 - i; // the matching down block
            let prev = output;
            output = ch[r];
            let input = ch[r.saturating_sub(1)];
            let c = (kind == "CrossAttnUpBlock2D").then(|| cross(r, only_cross[r]));
            let cfg = block(layers[r] + 1, input, output, prev, i + 1 < n, self.resnet_out_scale_factor, c);
            up.push(BlockPlan { kind: kind.clone(), cfg });
        }
        for (i, b) in down.iter().chain(&up).enumerate() {
            if let Some(c) = &b.cfg.cross_attention {
                if c.num_attention_heads == 0 || b.cfg.out_channels % c.num_attention_heads != 0 {
                    candle_core::bail!(
                        "UNet config: block {i} has {} channels, not divisible into {} heads",
                        b.cfg.out_channels,
                        c.num_attention_heads
                    )
                }
            }
        }
        Ok(Plan { time_embed_dim, add_embedding, down, mid, up, groups })
    }

    /// Activation memory of a training step relative to SD 1.5's UNet at the same latent size,
    /// from the block structure: per latent pixel, Σ channels / 4^level over the ResNets and over
    /// the transformer blocks, weighted 37 : 11 (floats a ResNet and a transformer block keep
    /// per channel and pixel, fitted to the SD1.5 and SDXL step benchmarks in BENCHMARKS.md:
    /// SDXL keeps about 1.3× SD 1.5's activations, not the 3× its parameter count suggests,
    /// since its full-resolution level has no attention). An inconsistent config gives 1.0.
    pub fn activation_scale(&self) -> f64 {
        fn units(cfg: &UNet2DConditionModelConfig) -> Option<f64> {
            const RESNET: f64 = 37.0;
            const TRANSFORMER: f64 = 11.0;
            let plan = cfg.plan().ok()?;
            let mut total = 0.0;
            let mut add = |level: usize, b: &BlockConfig, resnets: usize| {
                let per_pixel = b.out_channels as f64 / 4f64.powi(level as i32);
                let depth = b.cross_attention.as_ref().map_or(0, |c| c.transformer_layers_per_block);
                total += per_pixel * (RESNET * resnets as f64 + TRANSFORMER * (b.num_layers * depth) as f64);
            };
            let n = plan.down.len();
            for (level, b) in plan.down.iter().enumerate() {
                add(level, &b.cfg, b.cfg.num_layers);
            }
            if let Some(mid) = &plan.mid {
                // One transformer between two ResNets.
                add(n - 1, mid, mid.num_layers + 1);
            }
            for (i, b) in plan.up.iter().enumerate() {
                add(n - 1 - i, &b.cfg, b.cfg.num_layers);
            }
            Some(total)
        }
        match (units(self), units(&Self::sd15())) {
            (Some(u), Some(sd15)) if u > 0.0 => u / sd15,
            _ => 1.0,
        }
    }

    /// Every diffusers key (and its shape) a model of this configuration reads, in diffusers'
    /// `state_dict` order. For SD1.5: 686 keys, 859,520,964 parameters; SDXL base: 1680 keys,
    /// 2,567,463,684 parameters. An inconsistent
    /// configuration (see [`UNet2DConditionModelConfig::validate`]) yields an empty list.
    pub fn parameter_shapes(&self) -> ParamShapes {
        let Ok(plan) = self.plan() else { return Vec::new() };
        let ch = &self.block_out_channels;
        let mut out = Vec::new();
        push_conv(&mut out, "conv_in", self.in_channels, ch[0], self.conv_in_kernel);
        push_linear(&mut out, "time_embedding.linear_1", ch[0], plan.time_embed_dim, true);
        push_linear(&mut out, "time_embedding.linear_2", plan.time_embed_dim, plan.time_embed_dim, true);
        if let Some((_, proj)) = plan.add_embedding {
            push_linear(&mut out, "add_embedding.linear_1", proj, plan.time_embed_dim, true);
            push_linear(&mut out, "add_embedding.linear_2", plan.time_embed_dim, plan.time_embed_dim, true);
        }
        for (i, b) in plan.down.iter().enumerate() {
            let prefix = format!("down_blocks.{i}");
            match b.kind.as_str() {
                "CrossAttnDownBlock2D" => CrossAttnDownBlock2D::parameter_shapes(&prefix, &b.cfg, &mut out),
                _ => DownBlock2D::parameter_shapes(&prefix, &b.cfg, &mut out),
            }
        }
        for (i, b) in plan.up.iter().enumerate() {
            let prefix = format!("up_blocks.{i}");
            match b.kind.as_str() {
                "CrossAttnUpBlock2D" => CrossAttnUpBlock2D::parameter_shapes(&prefix, &b.cfg, &mut out),
                _ => UpBlock2D::parameter_shapes(&prefix, &b.cfg, &mut out),
            }
        }
        if let Some(mid) = &plan.mid {
            UNetMidBlock2DCrossAttn::parameter_shapes("mid_block", mid, &mut out);
        }
        push_norm(&mut out, "conv_norm_out", ch[0]);
        push_conv(&mut out, "conv_out", ch[0], self.out_channels, self.conv_out_kernel);
        out
    }
}

/// The module layout kohya's LoRA module names are built from (see
/// [`UNet2DConditionModelConfig::kohya_layout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KohyaLayout {
    /// diffusers module paths, as sd-scripts' SD1/SD2 UNet has them
    /// (`lora_unet_down_blocks_1_attentions_0_proj_in`).
    Diffusers,
    /// The original SGM layout of sd-scripts' SDXL UNet (`lora_unet_input_blocks_4_1_proj_in`,
    /// `…_in_layers_2`, `…_input_blocks_3_0_op`, `…_output_blocks_2_2_conv`).
    Sgm,
}

/// One diffusers → SGM prefix; `resnet` prefixes also rename the block's layers.
struct SgmPrefix {
    diffusers: String,
    sgm: String,
    resnet: bool,
}

/// The diffusers → SGM module map of one block plan, in the numbering of the original UNet:
/// `input_blocks.k` counts conv_in, then each down ResNet (with its transformer as `.1`) and each
/// downsampler; `middle_block` is ResNet, transformer, ResNet, …; `output_blocks.k` counts each
/// up ResNet, its transformer at `.1` and, after a level's last ResNet, its upsampler at the next
/// index (`.1` without attention, `.2` with).
struct SgmNames {
    prefixes: Vec<SgmPrefix>,
}

impl SgmNames {
    fn new(plan: &Plan) -> Self {
        let mut prefixes = Vec::new();
        let mut push =
            |diffusers: String, sgm: String, resnet: bool| prefixes.push(SgmPrefix { diffusers, sgm, resnet });
        for (d, g) in [
            ("conv_in", "input_blocks.0.0"),
            ("time_embedding.linear_1", "time_embed.0"),
            ("time_embedding.linear_2", "time_embed.2"),
            ("add_embedding.linear_1", "label_emb.0.0"),
            ("add_embedding.linear_2", "label_emb.0.2"),
            ("conv_norm_out", "out.0"),
            ("conv_out", "out.2"),
        ] {
            push(d.into(), g.into(), false);
        }
        let mut k = 1;
        for (i, b) in plan.down.iter().enumerate() {
            for j in 0..b.cfg.num_layers {
                push(format!("down_blocks.{i}.resnets.{j}"), format!("input_blocks.{k}.0"), true);
                if b.cfg.cross_attention.is_some() {
                    push(format!("down_blocks.{i}.attentions.{j}"), format!("input_blocks.{k}.1"), false);
                }
                k += 1;
            }
            if b.cfg.add_resample {
                push(format!("down_blocks.{i}.downsamplers.0.conv"), format!("input_blocks.{k}.0.op"), false);
                k += 1;
            }
        }
        if let Some(mid) = &plan.mid {
            push("mid_block.resnets.0".into(), "middle_block.0".into(), true);
            for j in 0..mid.num_layers {
                push(format!("mid_block.attentions.{j}"), format!("middle_block.{}", 2 * j + 1), false);
                push(format!("mid_block.resnets.{}", j + 1), format!("middle_block.{}", 2 * j + 2), true);
            }
        }
        let mut k = 0;
        for (i, b) in plan.up.iter().enumerate() {
            let attention = b.cfg.cross_attention.is_some();
            for j in 0..b.cfg.num_layers {
                push(format!("up_blocks.{i}.resnets.{j}"), format!("output_blocks.{k}.0"), true);
                if attention {
                    push(format!("up_blocks.{i}.attentions.{j}"), format!("output_blocks.{k}.1"), false);
                }
                if b.cfg.add_resample && j + 1 == b.cfg.num_layers {
                    let index = if attention { 2 } else { 1 };
                    push(format!("up_blocks.{i}.upsamplers.0"), format!("output_blocks.{k}.{index}"), false);
                }
                k += 1;
            }
        }
        SgmNames { prefixes }
    }

    /// The SGM path of a diffusers module path or key; `None` outside the map.
    fn map(&self, path: &str) -> Option<String> {
        self.prefixes.iter().find_map(|p| {
            let rest = path.strip_prefix(p.diffusers.as_str())?;
            let rest = match rest {
                "" => return Some(p.sgm.clone()),
                r => r.strip_prefix('.')?,
            };
            if !p.resnet {
                return Some(format!("{}.{rest}", p.sgm));
            }
            let (layer, tail) = rest.split_once('.').map_or((rest, None), |(l, t)| (l, Some(t)));
            let layer = match layer {
                "norm1" => "in_layers.0",
                "conv1" => "in_layers.2",
                "time_emb_proj" => "emb_layers.1",
                "norm2" => "out_layers.0",
                "conv2" => "out_layers.3",
                "conv_shortcut" => "skip_connection",
                _ => return None,
            };
            Some(match tail {
                Some(t) => format!("{}.{layer}.{t}", p.sgm),
                None => format!("{}.{layer}", p.sgm),
            })
        })
    }
}

/// Where an SGM path sits in sd-scripts' creation order for its SDXL UNet: input blocks, the
/// middle block, output blocks, each by block and layer index; inside a transformer `proj_in`,
/// then each transformer block's `attn1`, `ff`, `attn2` (the order its `BasicTransformerBlock`
/// registers them), then `proj_out`. Other layers keep their relative order (the sort is stable).
fn sgm_order(path: &str) -> (u8, usize, usize, usize) {
    let parts: Vec<&str> = path.split('.').collect();
    let index = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0);
    let (section, block, layer, rest) = match parts.first() {
        Some(&"input_blocks") => (0, index(1), index(2), 3),
        Some(&"middle_block") => (1, 0, index(1), 2),
        Some(&"output_blocks") => (2, index(1), index(2), 3),
        _ => (3, 0, 0, 0),
    };
    let within = match parts.get(rest..).unwrap_or_default() {
        ["proj_out", ..] => usize::MAX,
        ["transformer_blocks", n, sub, ..] => {
            let sub = match *sub {
                "attn1" => 0,
                "ff" => 1,
                _ => 2,
            };
            1 + 3 * n.parse::<usize>().unwrap_or(0) + sub
        }
        _ => 0,
    };
    (section, block, layer, within)
}

/// SDXL's extra conditioning (diffusers' `added_cond_kwargs` for `addition_embed_type =
/// "text_time"`).
#[derive(Clone, Debug)]
pub struct AddedConditions {
    /// The pooled text embedding (B, P): SDXL's projected OpenCLIP-bigG pooled output, P = 1280.
    pub text_embeds: Tensor,
    /// The micro-conditioning ids (B, N), any numeric dtype: SDXL's original size (h, w), crop
    /// top-left (top, left) and target size (h, w), N = 6.
    pub time_ids: Tensor,
}

/// Sinusoidal timestep features (diffusers `Timesteps` / `get_timestep_embedding`), computed in
/// f32 as PyTorch does: frequencies `exp(−ln(10000)·i / (half − shift))`.
#[derive(Clone, Debug)]
pub struct Timesteps {
    num_channels: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
}

impl Timesteps {
    /// Features of width `num_channels`; SD uses `flip_sin_to_cos = true`, shift 0.
    pub fn new(num_channels: usize, flip_sin_to_cos: bool, downscale_freq_shift: f64) -> Self {
        Timesteps { num_channels, flip_sin_to_cos, downscale_freq_shift }
    }

    /// Timesteps (B,) of any numeric dtype → f32 features (B, num_channels).
    pub fn forward(&self, timesteps: &Tensor) -> Result<Tensor> {
        let t = timesteps.to_dtype(DType::F32)?;
        let t = match t.rank() {
            0 => t.reshape(1)?,
            1 => t,
            _ => candle_core::bail!("timesteps must be a scalar or (B,), got {:?}", timesteps.dims()),
        };
        let half = self.num_channels / 2;
        let denom = half as f32 - self.downscale_freq_shift as f32;
        let log_period = -(10000f64.ln() as f32);
        let freqs: Vec<f32> = (0..half).map(|i| ((log_period * i as f32) / denom).exp()).collect();
        let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
        let args = t.unsqueeze(1)?.broadcast_mul(&freqs)?;
        let (sin, cos) = (args.sin()?, args.cos()?);
        let emb = if self.flip_sin_to_cos { Tensor::cat(&[cos, sin], 1)? } else { Tensor::cat(&[sin, cos], 1)? };
        if self.num_channels % 2 == 1 {
            emb.pad_with_zeros(1, 0, 1)
        } else {
            Ok(emb)
        }
    }
}

/// `linear_2(silu(linear_1(t)))`: diffusers `TimestepEmbedding`.
#[derive(Clone, Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    /// Reads `linear_1` (in → dim) and `linear_2` (dim → dim) under `vb` (`time_embedding`).
    pub fn new(vb: WeightsView, in_channels: usize, time_embed_dim: usize) -> Result<Self> {
        Ok(TimestepEmbedding {
            linear_1: vb.pp("linear_1").linear(in_channels, time_embed_dim, true)?,
            linear_2: vb.pp("linear_2").linear(time_embed_dim, time_embed_dim, true)?,
        })
    }

    /// Applies the embedding MLP.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let h = silu(&self.linear_1.forward(x, ctx)?)?;
        self.linear_2.forward(&h, ctx)
    }
}

#[derive(Clone, Debug)]
enum DownBlock {
    CrossAttn(CrossAttnDownBlock2D),
    Plain(DownBlock2D),
}

#[derive(Clone, Debug)]
enum UpBlock {
    CrossAttn(CrossAttnUpBlock2D),
    Plain(UpBlock2D),
}

impl UpBlock {
    fn num_resnets(&self) -> usize {
        match self {
            UpBlock::CrossAttn(b) => b.num_resnets(),
            UpBlock::Plain(b) => b.num_resnets(),
        }
    }
}

/// The SD noise-prediction UNet (diffusers `UNet2DConditionModel`).
#[derive(Clone, Debug)]
pub struct UNet2DConditionModel {
    config: UNet2DConditionModelConfig,
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    /// `text_time`: `add_time_proj` and `add_embedding`.
    add_embedding: Option<(Timesteps, TimestepEmbedding)>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<UNetMidBlock2DCrossAttn>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    num_upsamplers: usize,
    cross_attention_dims: Vec<usize>,
}

impl UNet2DConditionModel {
    /// Builds the model from weights under diffusers keys (`conv_in.weight`, …). Missing or
    /// mis-shaped tensors are recorded in the store: call `Weights::check_complete` afterwards.
    /// An unsupported configuration is an error.
    pub fn new(vb: WeightsView, cfg: &UNet2DConditionModelConfig) -> Result<Self> {
        cfg.validate()?;
        let plan = cfg.plan()?;
        let ch = &cfg.block_out_channels;
        let conv_in =
            vb.pp("conv_in").conv2d(cfg.in_channels, ch[0], cfg.conv_in_kernel, 1, (cfg.conv_in_kernel - 1) / 2)?;
        let time_proj = Timesteps::new(ch[0], cfg.flip_sin_to_cos, cfg.freq_shift);
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], plan.time_embed_dim)?;
        let add_embedding = match plan.add_embedding {
            Some((dim, proj)) => Some((
                Timesteps::new(dim, cfg.flip_sin_to_cos, cfg.freq_shift),
                TimestepEmbedding::new(vb.pp("add_embedding"), proj, plan.time_embed_dim)?,
            )),
            None => None,
        };
        let mut down_blocks = Vec::with_capacity(plan.down.len());
        for (i, b) in plan.down.iter().enumerate() {
            let v = vb.pp("down_blocks").pp(i);
            down_blocks.push(match b.kind.as_str() {
                "CrossAttnDownBlock2D" => DownBlock::CrossAttn(CrossAttnDownBlock2D::new(v, &b.cfg)?),
                _ => DownBlock::Plain(DownBlock2D::new(v, &b.cfg)?),
            });
        }
        let mid_block = match &plan.mid {
            Some(m) => Some(UNetMidBlock2DCrossAttn::new(vb.pp("mid_block"), m)?),
            None => None,
        };
        let mut up_blocks = Vec::with_capacity(plan.up.len());
        for (i, b) in plan.up.iter().enumerate() {
            let v = vb.pp("up_blocks").pp(i);
            up_blocks.push(match b.kind.as_str() {
                "CrossAttnUpBlock2D" => UpBlock::CrossAttn(CrossAttnUpBlock2D::new(v, &b.cfg)?),
                _ => UpBlock::Plain(UpBlock2D::new(v, &b.cfg)?),
            });
        }
        let conv_norm_out = vb.pp("conv_norm_out").group_norm(plan.groups, ch[0], cfg.norm_eps)?;
        let conv_out =
            vb.pp("conv_out").conv2d(ch[0], cfg.out_channels, cfg.conv_out_kernel, 1, (cfg.conv_out_kernel - 1) / 2)?;
        let num_upsamplers = plan.up.iter().filter(|b| b.cfg.add_resample).count();
        let cross_attention_dims =
            plan.down.iter().filter_map(|b| b.cfg.cross_attention.as_ref().map(|c| c.cross_attention_dim)).collect();
        Ok(UNet2DConditionModel {
            config: cfg.clone(),
            conv_in,
            time_proj,
            time_embedding,
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            num_upsamplers,
            cross_attention_dims,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &UNet2DConditionModelConfig {
        &self.config
    }

    /// The layout sd-scripts names this UNet's LoRA modules by
    /// ([`UNet2DConditionModelConfig::kohya_layout`]: SGM for SDXL, diffusers otherwise).
    pub fn kohya_layout(&self) -> KohyaLayout {
        self.config.kohya_layout()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &candle_core::Device {
        self.conv_in.frozen().weight().device()
    }

    /// The dtype the weights were loaded in (the model computes in it).
    pub fn dtype(&self) -> DType {
        self.conv_in.frozen().weight().dtype()
    }

    /// Predicts noise for `sample` (B, in_channels, h, w) at `timesteps` (B,) or a scalar (any
    /// numeric dtype: sd-scripts passes integer timesteps, samplers pass floats) given
    /// `encoder_hidden_states` (B, L, cross_attention_dim) with any token count L (77, 154,
    /// 231, …). Any h, w work; sizes not divisible by 8 are handled as diffusers does.
    /// A model with an addition embedding (SDXL) refuses this call: use
    /// [`UNet2DConditionModel::forward_with`].
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        encoder_hidden_states: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        self.forward_with(sample, timesteps, encoder_hidden_states, None, ctx)
    }

    /// Whether the model takes [`AddedConditions`] (SDXL's `text_time` addition embedding).
    pub fn needs_added_conditions(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// [`UNet2DConditionModel::forward`] with SDXL's added conditions, which a `text_time` model
    /// requires and any other model refuses. The conditions' embedding (diffusers'
    /// `get_aug_embed`: `add_embedding(text_embeds ⧺ add_time_proj(time_ids))`) is added to the
    /// time embedding.
    pub fn forward_with(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedConditions>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (b, c, h, w) = match sample.dims() {
            &[b, c, h, w] => (b, c, h, w),
            d => candle_core::bail!("UNet: sample must be (B, C, H, W), got {d:?}"),
        };
        if c != self.config.in_channels {
            candle_core::bail!("UNet: sample has {c} channels, the model takes {}", self.config.in_channels)
        }
        match encoder_hidden_states.dims() {
            &[eb, _, d] if eb == b && self.cross_attention_dims.iter().all(|&x| x == d) => {}
            d => candle_core::bail!(
                "UNet: encoder_hidden_states must be ({b}, L, {}), got {d:?}",
                self.cross_attention_dims.first().copied().unwrap_or(0)
            ),
        }
        let factor = 1usize << self.num_upsamplers;
        let forward_upsample_size = h % factor != 0 || w % factor != 0;

        let sample = if self.config.center_input_sample { sample.affine(2.0, -1.0)? } else { sample.clone() };
        let t = timesteps.flatten_all()?;
        let t = match t.elem_count() {
            n if n == b => t,
            1 => t.broadcast_as(b)?.contiguous()?,
            n => candle_core::bail!("UNet: {n} timesteps for a batch of {b}"),
        };
        let t_emb = self.time_proj.forward(&t)?.to_dtype(sample.dtype())?;
        let emb = self.time_embedding.forward(&t_emb, ctx)?;
        let emb = match self.aug_embedding(b, added, emb.dtype(), ctx)? {
            Some(aug) => (emb + aug)?,
            None => emb,
        };
        let ehs = encoder_hidden_states;

        let mut h = self.conv_in.forward(&sample, ctx)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, states) = match block {
                DownBlock::CrossAttn(b) => b.forward(&h, &emb, ehs, ctx)?,
                DownBlock::Plain(b) => b.forward(&h, &emb, ctx)?,
            };
            h = out;
            skips.extend(states);
        }
        if let Some(mid) = &self.mid_block {
            h = mid.forward(&h, &emb, ehs, ctx)?;
        }
        let n_up = self.up_blocks.len();
        for (i, block) in self.up_blocks.iter().enumerate() {
            let n = block.num_resnets();
            let Some(split) = skips.len().checked_sub(n) else {
                candle_core::bail!("UNet: up block {i} needs {n} skip connections, {} left", skips.len())
            };
            let block_skips = skips.split_off(split);
            let upsample_size = match skips.last() {
                Some(s) if i + 1 < n_up && forward_upsample_size => Some((s.dim(2)?, s.dim(3)?)),
                _ => None,
            };
            h = match block {
                UpBlock::CrossAttn(b) => b.forward(&h, &block_skips, &emb, ehs, upsample_size, ctx)?,
                UpBlock::Plain(b) => b.forward(&h, &block_skips, &emb, upsample_size, ctx)?,
            };
        }
        let h = silu(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h, ctx)
    }

    /// diffusers' `get_aug_embed` for `text_time`: the ids' sinusoidal features (B, N·dim) after
    /// the text embedding (B, P), through `add_embedding`; `None` for a model without one.
    fn aug_embedding(
        &self,
        batch: usize,
        added: Option<&AddedConditions>,
        dtype: DType,
        ctx: &ForwardCtx,
    ) -> Result<Option<Tensor>> {
        let ((time_proj, add_embedding), added) = match (&self.add_embedding, added) {
            (None, None) => return Ok(None),
            (Some(e), Some(a)) => (e, a),
            (Some(_), None) => candle_core::bail!(
                "UNet: this model has a text_time addition embedding (SDXL) and needs added conditions \
                 (text_embeds, time_ids): call forward_with"
            ),
            (None, Some(_)) => {
                candle_core::bail!("UNet: added conditions given to a model without an addition embedding")
            }
        };
        let proj = self.config.projection_class_embeddings_input_dim.unwrap_or(0);
        let dim = self.config.addition_time_embed_dim.unwrap_or(0);
        let text_width = match added.text_embeds.dims() {
            &[tb, p] if tb == batch && p < proj => p,
            d => candle_core::bail!("UNet: text_embeds must be ({batch}, P) with P < {proj}, got {d:?}"),
        };
        let ids = (proj - text_width) / dim;
        match added.time_ids.dims() {
            &[tb, n] if tb == batch && text_width + n * dim == proj => {}
            d => candle_core::bail!(
                "UNet: time_ids must be ({batch}, {ids}) beside text_embeds of width {text_width} \
                 ({text_width} + ids × {dim} = projection_class_embeddings_input_dim {proj}), got {d:?}"
            ),
        }
        let n = added.time_ids.dim(1)?;
        let time_embeds = time_proj.forward(&added.time_ids.flatten_all()?)?.reshape((batch, n * dim))?;
        // diffusers concatenates (promoting to f32) and then casts to the time embedding's dtype;
        // casting each part first gives the same values.
        let add_embeds = Tensor::cat(&[added.text_embeds.to_dtype(dtype)?, time_embeds.to_dtype(dtype)?], 1)?;
        Ok(Some(add_embedding.forward(&add_embeds, ctx)?))
    }

    /// Every layer sd-scripts' `networks/lora.py` creates a LoRA module for, in its module
    /// order (down blocks, up blocks, mid block; within a block transformers, ResNets,
    /// resamplers): Linear/Conv2d children of `Transformer2DModel` (group `Attention`) and of
    /// `ResnetBlock2D`/`Downsample2D`/`Upsample2D` (group `ConvBlock`, used when conv_dim is
    /// set). SD1.5: 192 + 86 = 278.
    pub fn lora_targets(&self) -> Vec<LoraTarget> {
        let mut out = Vec::new();
        for block in &self.down_blocks {
            match block {
                DownBlock::CrossAttn(b) => b.lora_targets(&mut out),
                DownBlock::Plain(b) => b.lora_targets(&mut out),
            }
        }
        for block in &self.up_blocks {
            match block {
                UpBlock::CrossAttn(b) => b.lora_targets(&mut out),
                UpBlock::Plain(b) => b.lora_targets(&mut out),
            }
        }
        if let Some(mid) = &self.mid_block {
            mid.lora_targets(&mut out);
        }
        out
    }

    /// [`UNet2DConditionModel::lora_targets`] with kohya names in `layout`: for
    /// [`KohyaLayout::Sgm`] every target's `kohya_path` is its SGM path and the list is in the SGM
    /// UNet's block order (input blocks, middle block, output blocks), as sd-scripts creates SDXL's
    /// modules. `path` stays the diffusers path the layers look their modules up by.
    pub fn lora_targets_in(&self, layout: KohyaLayout) -> Vec<LoraTarget> {
        let targets = self.lora_targets();
        match layout {
            KohyaLayout::Diffusers => targets,
            KohyaLayout::Sgm => self.to_sgm(targets),
        }
    }

    /// Sets each target's `kohya_path` to its SGM path and sorts by SGM block order (stable, so
    /// the layers of one block keep their order).
    fn to_sgm(&self, mut targets: Vec<LoraTarget>) -> Vec<LoraTarget> {
        let Ok(plan) = self.config.plan() else { return targets };
        let names = SgmNames::new(&plan);
        for t in &mut targets {
            // Every layer of a built model is in the map; keep the diffusers name if not.
            t.kohya_path = names.map(&t.path);
        }
        targets.sort_by_key(|t| sgm_order(t.kohya_module_path()));
        targets
    }

    /// [`UNet2DConditionModel::named_targets`] for kohya names in `layout`. With
    /// [`KohyaLayout::Sgm`] there are none: LyCORIS matches its names (`conv_in`,
    /// `time_embedding.linear_1`, …) against the module paths of sd-scripts' SGM-layout SDXL
    /// UNet, where those layers are `input_blocks.0.0`, `time_embed.0`, `out.2` (and
    /// `add_embedding` is `label_emb.0.*`), so it adapts none of them.
    pub fn named_targets_in(&self, layout: KohyaLayout) -> Vec<LoraTarget> {
        match layout {
            KohyaLayout::Diffusers => self.named_targets(),
            KohyaLayout::Sgm => Vec::new(),
        }
    }

    /// The layers LyCORIS' preset `full` names directly (`conv_in`, `time_embedding.linear_1`,
    /// `time_embedding.linear_2`, `conv_out`), as [`TargetGroup::Named`] targets: sd-scripts'
    /// `networks.lora` never adapts them. (An SDXL `add_embedding` is not among the names.)
    pub fn named_targets(&self) -> Vec<LoraTarget> {
        vec![
            self.conv_in.lora_target(TargetGroup::Named),
            self.time_embedding.linear_1.lora_target(TargetGroup::Named),
            self.time_embedding.linear_2.lora_target(TargetGroup::Named),
            self.conv_out.lora_target(TargetGroup::Named),
        ]
    }
}
