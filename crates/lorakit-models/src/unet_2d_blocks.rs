//! The UNet's resolution blocks and the VAE's encoder/decoder blocks (diffusers
//! `unets/unet_2d_blocks.py`).
//!
//! UNet blocks hold their ResNets and transformers in `Arc`s so that, with
//! `ForwardCtx::gradient_checkpointing`, each one runs through `lorakit_nn::checkpoint` (the
//! recompute closure owns a clone). VAE blocks are inference-only and run plainly.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use lorakit_nn::lora::LoraTarget;
use lorakit_nn::ForwardCtx;

use crate::resnet::{join, resnet_forward, Downsample2D, ParamShapes, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D};
use crate::transformer_2d::{
    transformer_forward, Attention, AttentionConfig, Transformer2DModel, Transformer2DModelConfig,
};
use crate::weights::WeightsView;

/// The cross-attention part of a block's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct CrossAttentionConfig {
    /// Heads per attention; the head width is the block's channels / heads.
    pub num_attention_heads: usize,
    /// [`crate::transformer_2d::BasicTransformerBlock`]s per transformer.
    pub transformer_layers_per_block: usize,
    /// Text context width.
    pub cross_attention_dim: usize,
    /// SD2-style linear `proj_in`/`proj_out`.
    pub use_linear_projection: bool,
    /// `attn1` attends to the context too.
    pub only_cross_attention: bool,
    /// Attention in f32.
    pub upcast_attention: bool,
}

impl CrossAttentionConfig {
    fn transformer(&self, channels: usize, groups: usize) -> Transformer2DModelConfig {
        Transformer2DModelConfig {
            num_attention_heads: self.num_attention_heads,
            attention_head_dim: channels / self.num_attention_heads.max(1),
            in_channels: channels,
            num_layers: self.transformer_layers_per_block,
            cross_attention_dim: Some(self.cross_attention_dim),
            norm_num_groups: groups,
            use_linear_projection: self.use_linear_projection,
            only_cross_attention: self.only_cross_attention,
            upcast_attention: self.upcast_attention,
        }
    }

    fn check(&self, channels: usize, path: &str) -> Result<()> {
        if self.num_attention_heads == 0 || channels % self.num_attention_heads != 0 {
            candle_core::bail!(
                "{path}: {channels} channels cannot be split into {} attention heads",
                self.num_attention_heads
            )
        }
        Ok(())
    }
}

/// What a UNet or VAE block is built from (the arguments of diffusers' `get_down_block` /
/// `get_up_block` / mid-block constructors that SD uses).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockConfig {
    /// ResNets in the block.
    pub num_layers: usize,
    /// Input channels (for up blocks: the channels of the deepest skip connection it consumes).
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Up blocks only: channels coming from the previous (deeper) up block.
    pub prev_output_channel: usize,
    /// Time-embedding width; `None` for the VAE.
    pub temb_channels: Option<usize>,
    /// GroupNorm epsilon of the ResNets.
    pub resnet_eps: f64,
    /// GroupNorm groups of the ResNets and transformers.
    pub resnet_groups: usize,
    /// ResNet (and VAE attention) output divisor.
    pub output_scale_factor: f64,
    /// Whether the block ends with a downsampler (down blocks) or upsampler (up blocks).
    pub add_resample: bool,
    /// Padding of the downsampler conv (UNet 1; VAE 0 with diffusers' asymmetric pad).
    pub downsample_padding: usize,
    /// Transformers after each ResNet; `None` for plain blocks.
    pub cross_attention: Option<CrossAttentionConfig>,
}

impl BlockConfig {
    fn resnet(&self, in_channels: usize, out_channels: usize) -> ResnetBlock2DConfig {
        ResnetBlock2DConfig {
            in_channels,
            out_channels,
            temb_channels: self.temb_channels,
            groups: self.resnet_groups,
            eps: self.resnet_eps,
            output_scale_factor: self.output_scale_factor,
        }
    }

    /// ResNet `i` of a down block.
    fn down_resnet(&self, i: usize) -> ResnetBlock2DConfig {
        self.resnet(if i == 0 { self.in_channels } else { self.out_channels }, self.out_channels)
    }

    /// ResNet `i` of an up block: its input is the previous output concatenated with a skip.
    fn up_resnet(&self, i: usize) -> ResnetBlock2DConfig {
        let skip = if i + 1 == self.num_layers { self.in_channels } else { self.out_channels };
        let from_below = if i == 0 { self.prev_output_channel } else { self.out_channels };
        self.resnet(from_below + skip, self.out_channels)
    }

    fn cross(&self, path: &str) -> Result<&CrossAttentionConfig> {
        match &self.cross_attention {
            Some(c) => {
                c.check(self.out_channels, path)?;
                Ok(c)
            }
            None => candle_core::bail!("{path}: a cross-attention block needs attention settings"),
        }
    }
}

fn resnets_targets(resnets: &[Arc<ResnetBlock2D>], out: &mut Vec<LoraTarget>) {
    for r in resnets {
        r.lora_targets(out);
    }
}

fn transformers_targets(attentions: &[Arc<Transformer2DModel>], out: &mut Vec<LoraTarget>) {
    for a in attentions {
        a.lora_targets(out);
    }
}

/// The shared down-block body: ResNets, optional transformers after each, optional
/// downsampler. Returns the output and the skip connections (one per ResNet plus one after the
/// downsampler).
fn down_forward(
    resnets: &[Arc<ResnetBlock2D>],
    attentions: &[Arc<Transformer2DModel>],
    downsampler: Option<&Downsample2D>,
    x: &Tensor,
    temb: &Tensor,
    context: Option<&Tensor>,
    ctx: &ForwardCtx,
) -> Result<(Tensor, Vec<Tensor>)> {
    let mut h = x.clone();
    let mut states = Vec::with_capacity(resnets.len() + 1);
    for (i, resnet) in resnets.iter().enumerate() {
        h = resnet_forward(resnet, &h, Some(temb), ctx)?;
        if let Some(attn) = attentions.get(i) {
            let context = context
                .ok_or_else(|| candle_core::Error::Msg("cross-attention block called without context".into()))?;
            h = transformer_forward(attn, &h, context, ctx)?;
        }
        states.push(h.clone());
    }
    if let Some(d) = downsampler {
        h = d.forward(&h, ctx)?;
        states.push(h.clone());
    }
    Ok((h, states))
}

/// The shared up-block body: for each ResNet, concatenate the last remaining skip connection,
/// run the ResNet and the optional transformer; then the optional upsampler.
#[allow(clippy::too_many_arguments)]
fn up_forward(
    resnets: &[Arc<ResnetBlock2D>],
    attentions: &[Arc<Transformer2DModel>],
    upsampler: Option<&Upsample2D>,
    x: &Tensor,
    skips: &[Tensor],
    temb: &Tensor,
    context: Option<&Tensor>,
    upsample_size: Option<(usize, usize)>,
    ctx: &ForwardCtx,
) -> Result<Tensor> {
    if skips.len() != resnets.len() {
        candle_core::bail!("up block with {} ResNets got {} skip connections", resnets.len(), skips.len())
    }
    let mut h = x.clone();
    for (i, resnet) in resnets.iter().enumerate() {
        let skip = &skips[skips.len() - 1 - i];
        h = Tensor::cat(&[&h, skip], 1)?;
        h = resnet_forward(resnet, &h, Some(temb), ctx)?;
        if let Some(attn) = attentions.get(i) {
            let context = context
                .ok_or_else(|| candle_core::Error::Msg("cross-attention block called without context".into()))?;
            h = transformer_forward(attn, &h, context, ctx)?;
        }
    }
    match upsampler {
        Some(u) => u.forward(&h, upsample_size, ctx),
        None => Ok(h),
    }
}

/// ResNets each followed by a transformer, then a stride-2 downsampler (SD's first three down
/// blocks).
#[derive(Clone, Debug)]
pub struct CrossAttnDownBlock2D {
    resnets: Vec<Arc<ResnetBlock2D>>,
    attentions: Vec<Arc<Transformer2DModel>>,
    downsampler: Option<Downsample2D>,
}

impl CrossAttnDownBlock2D {
    /// Reads the block at `vb` (e.g. `down_blocks.0`); `cfg.cross_attention` must be set.
    pub fn new(vb: WeightsView, cfg: &BlockConfig) -> Result<Self> {
        let cross = cfg.cross(vb.path())?;
        let tcfg = cross.transformer(cfg.out_channels, cfg.resnet_groups);
        let mut resnets = Vec::with_capacity(cfg.num_layers);
        let mut attentions = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            resnets.push(Arc::new(ResnetBlock2D::new(vb.pp("resnets").pp(i), &cfg.down_resnet(i))?));
            attentions.push(Arc::new(Transformer2DModel::new(vb.pp("attentions").pp(i), &tcfg)?));
        }
        let downsampler = if cfg.add_resample {
            Some(Downsample2D::new(
                vb.pp("downsamplers.0"),
                cfg.out_channels,
                cfg.out_channels,
                cfg.downsample_padding,
            )?)
        } else {
            None
        };
        Ok(CrossAttnDownBlock2D { resnets, attentions, downsampler })
    }

    /// The keys and shapes [`CrossAttnDownBlock2D::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, cfg: &BlockConfig, out: &mut ParamShapes) {
        if let Some(cross) = &cfg.cross_attention {
            let tcfg = cross.transformer(cfg.out_channels, cfg.resnet_groups);
            for i in 0..cfg.num_layers {
                Transformer2DModel::parameter_shapes(&join(prefix, &format!("attentions.{i}")), &tcfg, out);
            }
        }
        DownBlock2D::parameter_shapes(prefix, cfg, out);
    }

    /// Returns the block output and its skip connections.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        down_forward(&self.resnets, &self.attentions, self.downsampler.as_ref(), x, temb, Some(context), ctx)
    }

    /// sd-scripts' targets in module order: transformers, ResNets, downsampler.
    pub fn lora_targets(&self, out: &mut Vec<LoraTarget>) {
        transformers_targets(&self.attentions, out);
        resnets_targets(&self.resnets, out);
        if let Some(d) = &self.downsampler {
            d.lora_targets(out);
        }
    }
}

/// ResNets then an optional downsampler, no attention (SD's deepest down block).
#[derive(Clone, Debug)]
pub struct DownBlock2D {
    resnets: Vec<Arc<ResnetBlock2D>>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock2D {
    /// Reads the block at `vb` (e.g. `down_blocks.3`).
    pub fn new(vb: WeightsView, cfg: &BlockConfig) -> Result<Self> {
        let resnets = (0..cfg.num_layers)
            .map(|i| Ok(Arc::new(ResnetBlock2D::new(vb.pp("resnets").pp(i), &cfg.down_resnet(i))?)))
            .collect::<Result<Vec<_>>>()?;
        let downsampler = if cfg.add_resample {
            Some(Downsample2D::new(
                vb.pp("downsamplers.0"),
                cfg.out_channels,
                cfg.out_channels,
                cfg.downsample_padding,
            )?)
        } else {
            None
        };
        Ok(DownBlock2D { resnets, downsampler })
    }

    /// The keys and shapes [`DownBlock2D::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, cfg: &BlockConfig, out: &mut ParamShapes) {
        for i in 0..cfg.num_layers {
            ResnetBlock2D::parameter_shapes(&join(prefix, &format!("resnets.{i}")), &cfg.down_resnet(i), out);
        }
        if cfg.add_resample {
            Downsample2D::parameter_shapes(&join(prefix, "downsamplers.0"), cfg.out_channels, cfg.out_channels, out);
        }
    }

    /// Returns the block output and its skip connections.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, ctx: &ForwardCtx) -> Result<(Tensor, Vec<Tensor>)> {
        down_forward(&self.resnets, &[], self.downsampler.as_ref(), x, temb, None, ctx)
    }

    /// sd-scripts' targets in module order: ResNets, downsampler.
    pub fn lora_targets(&self, out: &mut Vec<LoraTarget>) {
        resnets_targets(&self.resnets, out);
        if let Some(d) = &self.downsampler {
            d.lora_targets(out);
        }
    }
}

/// The UNet's bottleneck: ResNet, then (transformer, ResNet) × num_layers.
#[derive(Clone, Debug)]
pub struct UNetMidBlock2DCrossAttn {
    resnets: Vec<Arc<ResnetBlock2D>>,
    attentions: Vec<Arc<Transformer2DModel>>,
}

impl UNetMidBlock2DCrossAttn {
    /// Reads the block at `vb` (`mid_block`); `in_channels` = `out_channels` = the deepest
    /// width, `num_layers` counts the transformers (1 in SD).
    pub fn new(vb: WeightsView, cfg: &BlockConfig) -> Result<Self> {
        let cross = cfg.cross(vb.path())?;
        let tcfg = cross.transformer(cfg.out_channels, cfg.resnet_groups);
        let rcfg = cfg.resnet(cfg.in_channels, cfg.in_channels);
        let mut resnets = vec![Arc::new(ResnetBlock2D::new(vb.pp("resnets.0"), &rcfg)?)];
        let mut attentions = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            attentions.push(Arc::new(Transformer2DModel::new(vb.pp("attentions").pp(i), &tcfg)?));
            resnets.push(Arc::new(ResnetBlock2D::new(vb.pp("resnets").pp(i + 1), &rcfg)?));
        }
        Ok(UNetMidBlock2DCrossAttn { resnets, attentions })
    }

    /// The keys and shapes [`UNetMidBlock2DCrossAttn::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, cfg: &BlockConfig, out: &mut ParamShapes) {
        if let Some(cross) = &cfg.cross_attention {
            let tcfg = cross.transformer(cfg.out_channels, cfg.resnet_groups);
            for i in 0..cfg.num_layers {
                Transformer2DModel::parameter_shapes(&join(prefix, &format!("attentions.{i}")), &tcfg, out);
            }
        }
        let rcfg = cfg.resnet(cfg.in_channels, cfg.in_channels);
        for i in 0..=cfg.num_layers {
            ResnetBlock2D::parameter_shapes(&join(prefix, &format!("resnets.{i}")), &rcfg, out);
        }
    }

    /// Applies the block.
    pub fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let mut h = resnet_forward(&self.resnets[0], x, Some(temb), ctx)?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            h = transformer_forward(attn, &h, context, ctx)?;
            h = resnet_forward(resnet, &h, Some(temb), ctx)?;
        }
        Ok(h)
    }

    /// sd-scripts' targets in module order: transformers, ResNets.
    pub fn lora_targets(&self, out: &mut Vec<LoraTarget>) {
        transformers_targets(&self.attentions, out);
        resnets_targets(&self.resnets, out);
    }
}

/// ResNets over (previous output ⧺ skip connection), then an optional upsampler (SD's deepest
/// up block).
#[derive(Clone, Debug)]
pub struct UpBlock2D {
    resnets: Vec<Arc<ResnetBlock2D>>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock2D {
    /// Reads the block at `vb` (e.g. `up_blocks.0`).
    pub fn new(vb: WeightsView, cfg: &BlockConfig) -> Result<Self> {
        let resnets = (0..cfg.num_layers)
            .map(|i| Ok(Arc::new(ResnetBlock2D::new(vb.pp("resnets").pp(i), &cfg.up_resnet(i))?)))
            .collect::<Result<Vec<_>>>()?;
        let upsampler = if cfg.add_resample {
            Some(Upsample2D::new(vb.pp("upsamplers.0"), cfg.out_channels, cfg.out_channels)?)
        } else {
            None
        };
        Ok(UpBlock2D { resnets, upsampler })
    }

    /// The keys and shapes [`UpBlock2D::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, cfg: &BlockConfig, out: &mut ParamShapes) {
        for i in 0..cfg.num_layers {
            ResnetBlock2D::parameter_shapes(&join(prefix, &format!("resnets.{i}")), &cfg.up_resnet(i), out);
        }
        if cfg.add_resample {
            Upsample2D::parameter_shapes(&join(prefix, "upsamplers.0"), cfg.out_channels, cfg.out_channels, out);
        }
    }

    /// Number of skip connections the block consumes.
    pub fn num_resnets(&self) -> usize {
        self.resnets.len()
    }

    /// Applies the block; `skips` are the block's skip connections in the order the down path
    /// produced them (the last one is consumed first).
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        upsample_size: Option<(usize, usize)>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        up_forward(&self.resnets, &[], self.upsampler.as_ref(), x, skips, temb, None, upsample_size, ctx)
    }

    /// sd-scripts' targets in module order: ResNets, upsampler.
    pub fn lora_targets(&self, out: &mut Vec<LoraTarget>) {
        resnets_targets(&self.resnets, out);
        if let Some(u) = &self.upsampler {
            u.lora_targets(out);
        }
    }
}

/// [`UpBlock2D`] with a transformer after each ResNet.
#[derive(Clone, Debug)]
pub struct CrossAttnUpBlock2D {
    resnets: Vec<Arc<ResnetBlock2D>>,
    attentions: Vec<Arc<Transformer2DModel>>,
    upsampler: Option<Upsample2D>,
}

impl CrossAttnUpBlock2D {
    /// Reads the block at `vb` (e.g. `up_blocks.1`); `cfg.cross_attention` must be set.
    pub fn new(vb: WeightsView, cfg: &BlockConfig) -> Result<Self> {
        let cross = cfg.cross(vb.path())?;
        let tcfg = cross.transformer(cfg.out_channels, cfg.resnet_groups);
        let mut resnets = Vec::with_capacity(cfg.num_layers);
        let mut attentions = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            resnets.push(Arc::new(ResnetBlock2D::new(vb.pp("resnets").pp(i), &cfg.up_resnet(i))?));
            attentions.push(Arc::new(Transformer2DModel::new(vb.pp("attentions").pp(i), &tcfg)?));
        }
        let upsampler = if cfg.add_resample {
            Some(Upsample2D::new(vb.pp("upsamplers.0"), cfg.out_channels, cfg.out_channels)?)
        } else {
            None
        };
        Ok(CrossAttnUpBlock2D { resnets, attentions, upsampler })
    }

    /// The keys and shapes [`CrossAttnUpBlock2D::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, cfg: &BlockConfig, out: &mut ParamShapes) {
        if let Some(cross) = &cfg.cross_attention {
            let tcfg = cross.transformer(cfg.out_channels, cfg.resnet_groups);
            for i in 0..cfg.num_layers {
                Transformer2DModel::parameter_shapes(&join(prefix, &format!("attentions.{i}")), &tcfg, out);
            }
        }
        UpBlock2D::parameter_shapes(prefix, cfg, out);
    }

    /// Number of skip connections the block consumes.
    pub fn num_resnets(&self) -> usize {
        self.resnets.len()
    }

    /// Applies the block (see [`UpBlock2D::forward`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        up_forward(
            &self.resnets,
            &self.attentions,
            self.upsampler.as_ref(),
            x,
            skips,
            temb,
            Some(context),
            upsample_size,
            ctx,
        )
    }

    /// sd-scripts' targets in module order: transformers, ResNets, upsampler.
    pub fn lora_targets(&self, out: &mut Vec<LoraTarget>) {
        transformers_targets(&self.attentions, out);
        resnets_targets(&self.resnets, out);
        if let Some(u) = &self.upsampler {
            u.lora_targets(out);
        }
    }
}

/// VAE encoder block: ResNets (no time embedding) and an optional downsampler with diffusers'
/// asymmetric padding.
#[derive(Clone, Debug)]
pub struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    /// Reads the block at `vb` (e.g. `encoder.down_blocks.0`).
    pub fn new(vb: WeightsView, cfg: &BlockConfig) -> Result<Self> {
        let resnets = (0..cfg.num_layers)
            .map(|i| ResnetBlock2D::new(vb.pp("resnets").pp(i), &cfg.down_resnet(i)))
            .collect::<Result<Vec<_>>>()?;
        let downsampler = if cfg.add_resample {
            Some(Downsample2D::new(
                vb.pp("downsamplers.0"),
                cfg.out_channels,
                cfg.out_channels,
                cfg.downsample_padding,
            )?)
        } else {
            None
        };
        Ok(DownEncoderBlock2D { resnets, downsampler })
    }

    /// The keys and shapes [`DownEncoderBlock2D::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, cfg: &BlockConfig, out: &mut ParamShapes) {
        DownBlock2D::parameter_shapes(prefix, cfg, out)
    }

    /// Applies the block.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None, ctx)?;
        }
        match &self.downsampler {
            Some(d) => d.forward(&h, ctx),
            None => Ok(h),
        }
    }
}

/// VAE decoder block: ResNets (no skips, no time embedding) and an optional upsampler.
#[derive(Clone, Debug)]
pub struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    /// Reads the block at `vb` (e.g. `decoder.up_blocks.0`).
    pub fn new(vb: WeightsView, cfg: &BlockConfig) -> Result<Self> {
        let resnets = (0..cfg.num_layers)
            .map(|i| ResnetBlock2D::new(vb.pp("resnets").pp(i), &cfg.down_resnet(i)))
            .collect::<Result<Vec<_>>>()?;
        let upsampler = if cfg.add_resample {
            Some(Upsample2D::new(vb.pp("upsamplers.0"), cfg.out_channels, cfg.out_channels)?)
        } else {
            None
        };
        Ok(UpDecoderBlock2D { resnets, upsampler })
    }

    /// The keys and shapes [`UpDecoderBlock2D::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, cfg: &BlockConfig, out: &mut ParamShapes) {
        for i in 0..cfg.num_layers {
            ResnetBlock2D::parameter_shapes(&join(prefix, &format!("resnets.{i}")), &cfg.down_resnet(i), out);
        }
        if cfg.add_resample {
            Upsample2D::parameter_shapes(&join(prefix, "upsamplers.0"), cfg.out_channels, cfg.out_channels, out);
        }
    }

    /// Applies the block.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None, ctx)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(&h, None, ctx),
            None => Ok(h),
        }
    }
}

/// The VAE's bottleneck: ResNet, then (single-head self-attention with residual, ResNet) ×
/// num_layers (diffusers `UNetMidBlock2D`).
#[derive(Clone, Debug)]
pub struct UNetMidBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
}

impl UNetMidBlock2D {
    fn attention_config(cfg: &BlockConfig) -> AttentionConfig {
        let c = cfg.in_channels;
        AttentionConfig {
            query_dim: c,
            cross_attention_dim: None,
            heads: 1,
            dim_head: c,
            bias: true,
            out_bias: true,
            upcast_attention: true,
            norm_num_groups: Some(cfg.resnet_groups),
            eps: cfg.resnet_eps,
            residual_connection: true,
            rescale_output_factor: cfg.output_scale_factor,
        }
    }

    /// Reads the block at `vb` (e.g. `encoder.mid_block`); `add_attention` false leaves the
    /// attentions out (diffusers' `mid_block_add_attention`). The attention has one head of
    /// width `in_channels`, as in SD's VAE.
    pub fn new(vb: WeightsView, cfg: &BlockConfig, add_attention: bool) -> Result<Self> {
        let rcfg = cfg.resnet(cfg.in_channels, cfg.in_channels);
        let acfg = Self::attention_config(cfg);
        let mut resnets = vec![ResnetBlock2D::new(vb.pp("resnets.0"), &rcfg)?];
        let mut attentions = Vec::new();
        for i in 0..cfg.num_layers {
            if add_attention {
                attentions.push(Attention::new(vb.pp("attentions").pp(i), &acfg)?);
            }
            resnets.push(ResnetBlock2D::new(vb.pp("resnets").pp(i + 1), &rcfg)?);
        }
        Ok(UNetMidBlock2D { resnets, attentions })
    }

    /// The keys and shapes [`UNetMidBlock2D::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, cfg: &BlockConfig, add_attention: bool, out: &mut ParamShapes) {
        if add_attention {
            for i in 0..cfg.num_layers {
                Attention::parameter_shapes(
                    &join(prefix, &format!("attentions.{i}")),
                    &Self::attention_config(cfg),
                    out,
                );
            }
        }
        let rcfg = cfg.resnet(cfg.in_channels, cfg.in_channels);
        for i in 0..=cfg.num_layers {
            ResnetBlock2D::parameter_shapes(&join(prefix, &format!("resnets.{i}")), &rcfg, out);
        }
    }

    /// Applies the block.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, None, ctx)?;
        for (i, resnet) in self.resnets[1..].iter().enumerate() {
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, None, ctx)?;
            }
            h = resnet.forward(&h, None, ctx)?;
        }
        Ok(h)
    }
}
