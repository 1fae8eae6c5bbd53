//! The spatial transformer of the SD UNet and the attention layer it shares with the VAE
//! (diffusers `transformers/transformer_2d.py`, `attention.py`, `attention_processor.py`).
//!
//! Attention runs through `lorakit_nn::attention::attention_heads` on the (B, L, heads·dim)
//! projections: it keeps no attention matrix for backward, and it records a backward pass
//! (candle's fused softmax / sdpa do not).

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use lorakit_nn::activation::geglu;
use lorakit_nn::attention::attention_heads;
use lorakit_nn::lora::{LoraTarget, TargetGroup};
use lorakit_nn::{Conv2d, ForwardCtx, GroupNorm, LayerNorm, Linear};

use crate::resnet::{expect_channels, join, push_conv, push_linear, push_norm, ParamShapes};
use crate::weights::WeightsView;

/// Hyper-parameters of an [`Attention`] layer (the subset of diffusers' `Attention` arguments
/// that SD's UNet and VAE use).
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Width of the queries (and of the output).
    pub query_dim: usize,
    /// Width of the context for cross-attention; `None`: self-attention (keys from the input).
    pub cross_attention_dim: Option<usize>,
    /// Number of heads.
    pub heads: usize,
    /// Width of one head.
    pub dim_head: usize,
    /// Whether `to_q`/`to_k`/`to_v` have biases (UNet: no; VAE: yes).
    pub bias: bool,
    /// Whether `to_out.0` has a bias.
    pub out_bias: bool,
    /// Compute the attention in f32 whatever the activation dtype (SD2's `upcast_attention`).
    pub upcast_attention: bool,
    /// A `group_norm` applied to the input first (the VAE's mid-block attention).
    pub norm_num_groups: Option<usize>,
    /// Epsilon of that group norm.
    pub eps: f64,
    /// Add the input to the output (the VAE's attention block).
    pub residual_connection: bool,
    /// The output is divided by this.
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    /// A UNet attention: no q/k/v biases, biased output projection, no norm, no residual.
    pub fn unet(
        query_dim: usize,
        cross_attention_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
        upcast: bool,
    ) -> Self {
        AttentionConfig {
            query_dim,
            cross_attention_dim,
            heads,
            dim_head,
            bias: false,
            out_bias: true,
            upcast_attention: upcast,
            norm_num_groups: None,
            eps: 1e-5,
            residual_connection: false,
            rescale_output_factor: 1.0,
        }
    }

    fn inner_dim(&self) -> usize {
        self.heads * self.dim_head
    }

    fn context_dim(&self) -> usize {
        self.cross_attention_dim.unwrap_or(self.query_dim)
    }
}

/// Multi-head scaled dot-product attention with `to_q`, `to_k`, `to_v`, `to_out.0` projections
/// (diffusers `Attention` with `AttnProcessor2_0`).
///
/// Takes (B, L, C) tokens, or (B, C, H, W) maps (flattened to H·W tokens and reshaped back), as
/// the VAE's attention block does.
#[derive(Clone, Debug)]
pub struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
    query_dim: usize,
    upcast: bool,
    residual_connection: bool,
    rescale_output_factor: f64,
}

impl Attention {
    /// Reads the layer at `vb` (e.g. `…transformer_blocks.0.attn2`).
    pub fn new(vb: WeightsView, cfg: &AttentionConfig) -> Result<Self> {
        if cfg.heads == 0 || cfg.dim_head == 0 {
            candle_core::bail!(
                "attention at {}: heads ({}) and head width ({}) must be positive",
                vb.path(),
                cfg.heads,
                cfg.dim_head
            )
        }
        let inner = cfg.inner_dim();
        let ctx_dim = cfg.context_dim();
        Ok(Attention {
            group_norm: match cfg.norm_num_groups {
                Some(g) => Some(vb.pp("group_norm").group_norm(g, cfg.query_dim, cfg.eps)?),
                None => None,
            },
            to_q: vb.pp("to_q").linear(cfg.query_dim, inner, cfg.bias)?,
            to_k: vb.pp("to_k").linear(ctx_dim, inner, cfg.bias)?,
            to_v: vb.pp("to_v").linear(ctx_dim, inner, cfg.bias)?,
            to_out: vb.pp("to_out").pp(0).linear(inner, cfg.query_dim, cfg.out_bias)?,
            heads: cfg.heads,
            dim_head: cfg.dim_head,
            query_dim: cfg.query_dim,
            upcast: cfg.upcast_attention,
            residual_connection: cfg.residual_connection,
            rescale_output_factor: cfg.rescale_output_factor,
        })
    }

    /// The keys and shapes [`Attention::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, cfg: &AttentionConfig, out: &mut ParamShapes) {
        let inner = cfg.inner_dim();
        if cfg.norm_num_groups.is_some() {
            push_norm(out, &join(prefix, "group_norm"), cfg.query_dim);
        }
        push_linear(out, &join(prefix, "to_q"), cfg.query_dim, inner, cfg.bias);
        push_linear(out, &join(prefix, "to_k"), cfg.context_dim(), inner, cfg.bias);
        push_linear(out, &join(prefix, "to_v"), cfg.context_dim(), inner, cfg.bias);
        push_linear(out, &join(prefix, "to_out.0"), inner, cfg.query_dim, cfg.out_bias);
    }

    /// Attends from `x` to `context` (or to `x` itself when `None`). `x` is (B, L, C) or
    /// (B, C, H, W); `context` is (B, S, cross_attention_dim).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>, ctx: &ForwardCtx) -> Result<Tensor> {
        let spatial = match x.rank() {
            4 => Some(expect_channels(x, self.query_dim, "attention")?),
            3 => None,
            _ => candle_core::bail!("attention expects (B, L, C) or (B, C, H, W) input, got {:?}", x.dims()),
        };
        let tokens = match spatial {
            Some((b, c, h, w)) => {
                let normed = match &self.group_norm {
                    Some(gn) => gn.forward(x)?,
                    None => x.clone(),
                };
                normed.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?
            }
            None => match &self.group_norm {
                Some(gn) => gn.forward(&x.transpose(1, 2)?)?.transpose(1, 2)?.contiguous()?,
                None => x.clone(),
            },
        };
        let context = context.unwrap_or(&tokens);
        if context.rank() != 3 || context.dim(0)? != tokens.dim(0)? {
            candle_core::bail!("attention context {:?} does not fit input {:?}", context.dims(), tokens.dims())
        }
        let q = self.to_q.forward(&tokens, ctx)?;
        let k = self.to_k.forward(context, ctx)?;
        let v = self.to_v.forward(context, ctx)?;
        let dtype = q.dtype();
        let (q, k, v) = if self.upcast && dtype != DType::F32 && dtype != DType::F64 {
            (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?)
        } else {
            (q, k, v)
        };
        let scale = 1.0 / (self.dim_head as f64).sqrt();
        let o = attention_heads(&q, &k, &v, self.heads, scale)?.to_dtype(dtype)?;
        let mut y = self.to_out.forward(&o, ctx)?;
        if let Some((b, c, h, w)) = spatial {
            y = y.transpose(1, 2)?.reshape((b, c, h, w))?;
        }
        if self.residual_connection {
            y = (y + x)?;
        }
        if self.rescale_output_factor != 1.0 {
            y = (y / self.rescale_output_factor)?;
        }
        Ok(y)
    }

    /// The four projections as sd-scripts attention targets (to_q, to_k, to_v, to_out.0).
    pub fn lora_targets(&self, out: &mut Vec<LoraTarget>) {
        for l in [&self.to_q, &self.to_k, &self.to_v, &self.to_out] {
            out.push(l.lora_target(TargetGroup::Attention));
        }
    }
}

/// `net.2(geglu(net.0.proj(x)))`: diffusers `FeedForward` with the GEGLU activation (SD's).
#[derive(Clone, Debug)]
pub struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    /// Reads `net.0.proj` (dim → 2·inner) and `net.2` (inner → dim_out) under `vb` (`…ff`).
    pub fn new(vb: WeightsView, dim: usize, inner_dim: usize, dim_out: usize) -> Result<Self> {
        Ok(FeedForward {
            proj: vb.pp("net.0.proj").linear(dim, inner_dim * 2, true)?,
            out: vb.pp("net.2").linear(inner_dim, dim_out, true)?,
        })
    }

    /// The keys and shapes [`FeedForward::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, dim: usize, inner_dim: usize, dim_out: usize, out: &mut ParamShapes) {
        push_linear(out, &join(prefix, "net.0.proj"), dim, inner_dim * 2, true);
        push_linear(out, &join(prefix, "net.2"), inner_dim, dim_out, true);
    }

    /// Applies the feed-forward to (…, dim).
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let h = geglu(&self.proj.forward(x, ctx)?)?;
        self.out.forward(&h, ctx)
    }

    /// `net.0.proj` and `net.2` as sd-scripts attention targets.
    pub fn lora_targets(&self, out: &mut Vec<LoraTarget>) {
        out.push(self.proj.lora_target(TargetGroup::Attention));
        out.push(self.out.lora_target(TargetGroup::Attention));
    }
}

/// Hyper-parameters of a [`BasicTransformerBlock`].
#[derive(Clone, Debug, PartialEq)]
pub struct BasicTransformerBlockConfig {
    /// Token width.
    pub dim: usize,
    /// Heads of both attentions.
    pub num_attention_heads: usize,
    /// Width of one head.
    pub attention_head_dim: usize,
    /// Context width of `attn2`; `None`: no cross-attention.
    pub cross_attention_dim: Option<usize>,
    /// `attn1` attends to the context too (diffusers' `only_cross_attention`).
    pub only_cross_attention: bool,
    /// Attention computed in f32.
    pub upcast_attention: bool,
    /// LayerNorm epsilon (1e-5 in SD).
    pub norm_eps: f64,
}

/// Self-attention, cross-attention and GEGLU feed-forward, each pre-normed and residual
/// (diffusers `BasicTransformerBlock`, `norm_type="layer_norm"`).
#[derive(Clone, Debug)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: Option<LayerNorm>,
    attn2: Option<Attention>,
    norm3: LayerNorm,
    ff: FeedForward,
    only_cross_attention: bool,
}

impl BasicTransformerBlock {
    fn attn_configs(cfg: &BasicTransformerBlockConfig) -> (AttentionConfig, Option<AttentionConfig>) {
        let attn1_ctx = if cfg.only_cross_attention { cfg.cross_attention_dim } else { None };
        let (h, d, up) = (cfg.num_attention_heads, cfg.attention_head_dim, cfg.upcast_attention);
        let attn1 = AttentionConfig::unet(cfg.dim, attn1_ctx, h, d, up);
        let attn2 = cfg.cross_attention_dim.map(|c| AttentionConfig::unet(cfg.dim, Some(c), h, d, up));
        (attn1, attn2)
    }

    /// Reads the block at `vb` (e.g. `…attentions.0.transformer_blocks.0`).
    pub fn new(vb: WeightsView, cfg: &BasicTransformerBlockConfig) -> Result<Self> {
        let (a1, a2) = Self::attn_configs(cfg);
        let (norm2, attn2) = match a2 {
            Some(a2) => {
                (Some(vb.pp("norm2").layer_norm(cfg.dim, cfg.norm_eps)?), Some(Attention::new(vb.pp("attn2"), &a2)?))
            }
            None => (None, None),
        };
        Ok(BasicTransformerBlock {
            norm1: vb.pp("norm1").layer_norm(cfg.dim, cfg.norm_eps)?,
            attn1: Attention::new(vb.pp("attn1"), &a1)?,
            norm2,
            attn2,
            norm3: vb.pp("norm3").layer_norm(cfg.dim, cfg.norm_eps)?,
            ff: FeedForward::new(vb.pp("ff"), cfg.dim, cfg.dim * 4, cfg.dim)?,
            only_cross_attention: cfg.only_cross_attention,
        })
    }

    /// The keys and shapes [`BasicTransformerBlock::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, cfg: &BasicTransformerBlockConfig, out: &mut ParamShapes) {
        let (a1, a2) = Self::attn_configs(cfg);
        push_norm(out, &join(prefix, "norm1"), cfg.dim);
        Attention::parameter_shapes(&join(prefix, "attn1"), &a1, out);
        if let Some(a2) = a2 {
            push_norm(out, &join(prefix, "norm2"), cfg.dim);
            Attention::parameter_shapes(&join(prefix, "attn2"), &a2, out);
        }
        push_norm(out, &join(prefix, "norm3"), cfg.dim);
        FeedForward::parameter_shapes(&join(prefix, "ff"), cfg.dim, cfg.dim * 4, cfg.dim, out);
    }

    /// Applies the block to tokens (B, L, dim) with the text context (B, S, cross_attention_dim).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>, ctx: &ForwardCtx) -> Result<Tensor> {
        let n = self.norm1.forward(x)?;
        let a = self.attn1.forward(&n, if self.only_cross_attention { context } else { None }, ctx)?;
        let mut x = (a + x)?;
        if let (Some(norm2), Some(attn2)) = (&self.norm2, &self.attn2) {
            let a = attn2.forward(&norm2.forward(&x)?, context, ctx)?;
            x = (a + x)?;
        }
        let f = self.ff.forward(&self.norm3.forward(&x)?, ctx)?;
        f + x
    }

    /// attn1, attn2 and ff projections as sd-scripts attention targets.
    pub fn lora_targets(&self, out: &mut Vec<LoraTarget>) {
        self.attn1.lora_targets(out);
        if let Some(a) = &self.attn2 {
            a.lora_targets(out);
        }
        self.ff.lora_targets(out);
    }
}

/// Hyper-parameters of a [`Transformer2DModel`] (diffusers' config names).
#[derive(Clone, Debug, PartialEq)]
pub struct Transformer2DModelConfig {
    /// Heads per attention.
    pub num_attention_heads: usize,
    /// Width of one head; the token width is heads × head width.
    pub attention_head_dim: usize,
    /// Channels of the feature map (in and out).
    pub in_channels: usize,
    /// Number of [`BasicTransformerBlock`]s.
    pub num_layers: usize,
    /// Text context width.
    pub cross_attention_dim: Option<usize>,
    /// Groups of the input GroupNorm (eps 1e-6).
    pub norm_num_groups: usize,
    /// `proj_in`/`proj_out` are linears (SD2) instead of 1×1 convs (SD1).
    pub use_linear_projection: bool,
    /// See [`BasicTransformerBlockConfig::only_cross_attention`].
    pub only_cross_attention: bool,
    /// See [`BasicTransformerBlockConfig::upcast_attention`].
    pub upcast_attention: bool,
}

impl Transformer2DModelConfig {
    fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    fn block(&self) -> BasicTransformerBlockConfig {
        BasicTransformerBlockConfig {
            dim: self.inner_dim(),
            num_attention_heads: self.num_attention_heads,
            attention_head_dim: self.attention_head_dim,
            cross_attention_dim: self.cross_attention_dim,
            only_cross_attention: self.only_cross_attention,
            upcast_attention: self.upcast_attention,
            norm_eps: 1e-5,
        }
    }
}

/// A projection that is a 1×1 conv (SD1) or a linear (SD2); both are LoRA targets.
#[derive(Clone, Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(vb: WeightsView, linear: bool, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(if linear {
            Projection::Linear(vb.linear(in_dim, out_dim, true)?)
        } else {
            Projection::Conv(vb.conv2d(in_dim, out_dim, 1, 1, 0)?)
        })
    }

    fn shapes(prefix: &str, linear: bool, in_dim: usize, out_dim: usize, out: &mut ParamShapes) {
        if linear {
            push_linear(out, prefix, in_dim, out_dim, true)
        } else {
            push_conv(out, prefix, in_dim, out_dim, 1)
        }
    }

    fn target(&self) -> LoraTarget {
        match self {
            Projection::Conv(c) => c.lora_target(TargetGroup::Attention),
            Projection::Linear(l) => l.lora_target(TargetGroup::Attention),
        }
    }
}

/// The UNet's spatial transformer: GroupNorm, `proj_in`, transformer blocks over the H·W tokens,
/// `proj_out`, plus the input (diffusers `Transformer2DModel`, continuous input).
#[derive(Clone, Debug)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
    in_channels: usize,
    inner_dim: usize,
}

impl Transformer2DModel {
    /// Reads the model at `vb` (e.g. `down_blocks.0.attentions.0`).
    pub fn new(vb: WeightsView, cfg: &Transformer2DModelConfig) -> Result<Self> {
        let (c, inner, lin) = (cfg.in_channels, cfg.inner_dim(), cfg.use_linear_projection);
        let block_cfg = cfg.block();
        let blocks = (0..cfg.num_layers)
            .map(|i| BasicTransformerBlock::new(vb.pp("transformer_blocks").pp(i), &block_cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer2DModel {
            norm: vb.pp("norm").group_norm(cfg.norm_num_groups, c, 1e-6)?,
            proj_in: Projection::new(vb.pp("proj_in"), lin, c, inner)?,
            transformer_blocks: blocks,
            proj_out: Projection::new(vb.pp("proj_out"), lin, inner, c)?,
            in_channels: c,
            inner_dim: inner,
        })
    }

    /// The keys and shapes [`Transformer2DModel::new`] reads under `prefix`.
    pub fn parameter_shapes(prefix: &str, cfg: &Transformer2DModelConfig, out: &mut ParamShapes) {
        let (c, inner, lin) = (cfg.in_channels, cfg.inner_dim(), cfg.use_linear_projection);
        push_norm(out, &join(prefix, "norm"), c);
        Projection::shapes(&join(prefix, "proj_in"), lin, c, inner, out);
        for i in 0..cfg.num_layers {
            BasicTransformerBlock::parameter_shapes(
                &join(prefix, &format!("transformer_blocks.{i}")),
                &cfg.block(),
                out,
            );
        }
        Projection::shapes(&join(prefix, "proj_out"), lin, inner, c, out);
    }

    /// Applies the transformer to a feature map (B, C, H, W) with the text context
    /// (B, S, cross_attention_dim); returns (B, C, H, W).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>, ctx: &ForwardCtx) -> Result<Tensor> {
        let (b, _, h, w) = expect_channels(x, self.in_channels, "Transformer2DModel")?;
        let inner = self.inner_dim;
        let normed = self.norm.forward(x)?;
        let to_tokens = |t: &Tensor, ch: usize| t.permute((0, 2, 3, 1))?.reshape((b, h * w, ch));
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed, ctx)?, inner)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed, self.in_channels)?, ctx)?,
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(&tokens, context, ctx)?;
        }
        let to_map = |t: &Tensor, ch: usize| t.reshape((b, h, w, ch))?.permute((0, 3, 1, 2))?.contiguous();
        let y = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(&tokens, inner)?, ctx)?,
            Projection::Linear(lin) => to_map(&lin.forward(&tokens, ctx)?, self.in_channels)?,
        };
        y + x
    }

    /// proj_in, every block's linears, proj_out: sd-scripts' `Transformer2DModel` targets.
    pub fn lora_targets(&self, out: &mut Vec<LoraTarget>) {
        out.push(self.proj_in.target());
        for block in &self.transformer_blocks {
            block.lora_targets(out);
        }
        out.push(self.proj_out.target());
    }
}

/// Runs a transformer, through block-level gradient checkpointing when the context asks for it.
pub fn transformer_forward(
    model: &Arc<Transformer2DModel>,
    x: &Tensor,
    context: &Tensor,
    ctx: &ForwardCtx,
) -> Result<Tensor> {
    if !ctx.gradient_checkpointing {
        return model.forward(x, Some(context), ctx);
    }
    let m = Arc::clone(model);
    lorakit_nn::checkpoint::checkpoint(
        &[x, context],
        ctx,
        Arc::new(move |xs: &[Tensor], ctx: &ForwardCtx| m.forward(&xs[0], Some(&xs[1]), ctx)),
    )
}
