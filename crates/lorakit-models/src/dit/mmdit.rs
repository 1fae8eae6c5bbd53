//! SD3's MMDiT (SD3 Medium, SD3.5 Large, SD3.5 Medium's MMDiT-X) in SAI's single-file layout —
//! the key paths (`joint_blocks.N.{context,x}_block.attn.qkv`, …) sd-scripts' `lora_sd3.py`
//! names its LoRA modules after.
//!
//! A patch embedding with a learned position table cropped from the centre of a larger grid,
//! a conditioning vector from the timestep and the pooled text embedding, and joint blocks:
//! each has a context (text) side and an x (image) side, both adaptive-LayerNorm modulated from
//! the conditioning vector, attending jointly over text and image tokens; the last block's
//! context side stops after its attention projections ("pre_only"). SD3.5 adds RMS q/k norms
//! per head; SD3.5 Medium adds a second, image-only self-attention to the x side of its first
//! blocks, modulated by three more chunks of the same adaLN output.
//!
//! Checked against diffusers' `SD3Transformer2DModel` (and, where they agree, sd-scripts'
//! `sd3_models.MMDiT`) by `tools/reference/make_sd3_tiny.py`. sd-scripts' second attention
//! splits the features into the wrong number of heads (it passes the head count where its
//! `attention()` takes the head width); this follows SAI's `mmditx.py` and diffusers, the model
//! as published.

use candle_core::{DType, Device, Result, Tensor, D};
use lorakit_nn::activation::{gelu_tanh, silu};
use lorakit_nn::attention::attention_heads;
use lorakit_nn::dit::{gated_residual, head_rms_norm, modulate};
use lorakit_nn::lora::{LoraTarget, TargetGroup};
use lorakit_nn::{Conv2d, ForwardCtx, LayerNorm, Linear};

use crate::weights::WeightsView;

/// Epsilon of every LayerNorm and RMS norm (SAI's `eps=1e-6`).
const NORM_EPS: f64 = 1e-6;
/// Width of the sinusoidal timestep embedding (SAI's `frequency_embedding_size`).
const TIME_EMBED_DIM: usize = 256;
/// The head width of every released SD3 model (SAI derives hidden = 64·depth); only read from
/// the q/k norm weights when a model has them.
const SD3_HEAD_DIM: usize = 64;

/// The shape of an MMDiT, read from a checkpoint's tensor shapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmditConfig {
    /// Latent channels in (and out).
    pub in_channels: usize,
    /// Side of the square patches.
    pub patch_size: usize,
    /// Joint blocks.
    pub depth: usize,
    /// Token width.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Width of the MLPs' hidden layer.
    pub mlp_hidden: usize,
    /// Side of the position-embedding grid the image's table is cropped from.
    pub pos_embed_max_size: usize,
    /// Width of the pooled text embedding (CLIP-L + CLIP-G: 2048).
    pub pooled_dim: usize,
    /// Width of the text context (T5: 4096).
    pub context_dim: usize,
    /// RMS q/k norms per head (SD3.5).
    pub qk_norm: bool,
    /// Blocks whose x side has the second self-attention (SD3.5 Medium).
    pub x_self_attn_layers: Vec<usize>,
}

impl MmditConfig {
    /// The config of SAI-layout weights (`keys` with `shape_of`), as sd-scripts'
    /// `analyze_state_dict_state` reads it; an error names the missing or inconsistent key.
    pub fn from_sai_shapes<'a>(
        keys: impl Iterator<Item = &'a str> + Clone,
        shape_of: impl Fn(&str) -> Option<Vec<usize>>,
    ) -> std::result::Result<Self, String> {
        let need = |key: &str| shape_of(key).ok_or_else(|| format!("missing `{key}`"));
        let depth = keys
            .clone()
            .filter_map(|k| k.strip_prefix("joint_blocks.")?.split('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(0, |m| m + 1);
        let patch = need("x_embedder.proj.weight")?;
        let (hidden_size, in_channels, patch_size) = (patch[0], patch[1], patch[2]);
        let qk_norm = shape_of("joint_blocks.0.x_block.attn.ln_q.weight");
        let head_dim = qk_norm.as_ref().map_or(SD3_HEAD_DIM, |s| s[0]);
        if head_dim == 0 || hidden_size % head_dim != 0 {
            return Err(format!("head width {head_dim} does not divide the width {hidden_size}"));
        }
        let pos = need("pos_embed")?;
        let positions = pos[pos.len() - 2];
        let pos_embed_max_size = (positions as f64).sqrt().round() as usize;
        if pos_embed_max_size * pos_embed_max_size != positions {
            return Err(format!("pos_embed has {positions} positions, not a square grid"));
        }
        let mut x_self_attn_layers: Vec<usize> = keys
            .clone()
            .filter(|k| k.contains(".x_block.attn2.qkv.weight"))
            .filter_map(|k| k.strip_prefix("joint_blocks.")?.split('.').next()?.parse().ok())
            .collect();
        x_self_attn_layers.sort_unstable();
        let cfg = MmditConfig {
            in_channels,
            patch_size,
            depth,
            hidden_size,
            num_heads: hidden_size / head_dim,
            mlp_hidden: need("joint_blocks.0.x_block.mlp.fc1.weight")?[0],
            pos_embed_max_size,
            pooled_dim: need("y_embedder.mlp.0.weight")?[1],
            context_dim: need("context_embedder.weight")?[1],
            qk_norm: qk_norm.is_some(),
            x_self_attn_layers,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuses shapes no MMDiT has.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.depth == 0 || self.patch_size == 0 || self.hidden_size == 0 || self.num_heads == 0 {
            return Err(format!("an MMDiT needs blocks, patches and width: {self:?}"));
        }
        if let Some(&last) = self.x_self_attn_layers.last() {
            if last + 1 >= self.depth {
                return Err(format!("block {last} has a second attention, but the last block cannot"));
            }
        }
        Ok(())
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// SAI's model type as sd-scripts names it: `sd3m`, `sd35m` (second attention) or `sd35l`
    /// (q/k norms without it).
    pub fn model_type(&self) -> &'static str {
        match (self.qk_norm, self.x_self_attn_layers.is_empty()) {
            (_, false) => "sd35m",
            (true, true) => "sd35l",
            (false, true) => "sd3m",
        }
    }
}

/// SAI's sinusoidal embedding of timesteps `t` (0..1000, not scaled):
/// `[cos(t·f), sin(t·f)]` with `f_i = 10000^(−i/half)`; f32, returned in `dtype`.
pub fn timestep_embedding(t: &Tensor, dim: usize, dtype: DType) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half).map(|i| (-(10_000f32).ln() * i as f32 / half as f32).exp()).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], 1)?.to_dtype(dtype)
}

/// A LayerNorm without affine weights.
fn plain_layer_norm(width: usize, dtype: DType, device: &Device) -> Result<LayerNorm> {
    Ok(LayerNorm::new(Tensor::ones(width, dtype, device)?, None, NORM_EPS))
}

/// `Linear → SiLU → Linear` (SAI's `Embedder` and `TimestepEmbedding` MLPs).
#[derive(Clone, Debug)]
struct Embedder {
    fc1: Linear,
    fc2: Linear,
}

impl Embedder {
    fn new(vb: WeightsView, in_dim: usize, hidden: usize) -> Result<Self> {
        Ok(Embedder {
            fc1: vb.pp("mlp.0").linear(in_dim, hidden, true)?,
            fc2: vb.pp("mlp.2").linear(hidden, hidden, true)?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.fc2.forward(&silu(&self.fc1.forward(x, ctx)?)?, ctx)
    }
}

/// q/k/v projection (and output projection unless pre-only) with optional RMS q/k norms.
#[derive(Clone, Debug)]
struct Attention {
    qkv: Linear,
    proj: Option<Linear>,
    /// RMS norm weights of q and k (head width).
    norms: Option<(Tensor, Tensor)>,
    heads: usize,
}

impl Attention {
    fn new(vb: WeightsView, cfg: &MmditConfig, pre_only: bool) -> Result<Self> {
        let h = cfg.hidden_size;
        let norms = if cfg.qk_norm {
            Some((vb.pp("ln_q").get("weight", &[cfg.head_dim()])?, vb.pp("ln_k").get("weight", &[cfg.head_dim()])?))
        } else {
            None
        };
        Ok(Attention {
            qkv: vb.pp("qkv").linear(h, 3 * h, true)?,
            proj: if pre_only { None } else { Some(vb.pp("proj").linear(h, h, true)?) },
            norms,
            heads: cfg.num_heads,
        })
    }

    /// q, k (normed) and v of `x` (B, L, W) each.
    fn pre(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<[Tensor; 3]> {
        let qkv = self.qkv.forward(x, ctx)?;
        let w = qkv.dim(D::Minus1)? / 3;
        let (q, k, v) = (qkv.narrow(2, 0, w)?, qkv.narrow(2, w, w)?, qkv.narrow(2, 2 * w, w)?);
        let (q, k) = match &self.norms {
            Some((nq, nk)) => {
                (head_rms_norm(&q, nq, self.heads, NORM_EPS)?, head_rms_norm(&k, nk, self.heads, NORM_EPS)?)
            }
            None => (q, k),
        };
        Ok([q, k, v])
    }

    fn post(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        match &self.proj {
            Some(p) => p.forward(x, ctx),
            None => candle_core::bail!("internal: a pre-only attention has no output projection"),
        }
    }

    fn linears(&self) -> Vec<&Linear> {
        std::iter::once(&self.qkv).chain(self.proj.as_ref()).collect()
    }
}

/// `fc1 → tanh-GELU → fc2`.
#[derive(Clone, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.fc2.forward(&gelu_tanh(&self.fc1.forward(x, ctx)?)?, ctx)
    }
}

/// One side of a joint block (SAI's `DismantledBlock`, sd-scripts' `SingleDiTBlock`).
#[derive(Clone, Debug)]
struct DitSide {
    norm1: LayerNorm,
    attn: Attention,
    /// The x side's second self-attention (SD3.5 Medium).
    attn2: Option<Attention>,
    /// `None` when pre-only.
    mlp: Option<(LayerNorm, Mlp)>,
    modulation: Linear,
}

impl DitSide {
    fn new(vb: WeightsView, cfg: &MmditConfig, pre_only: bool, self_attn: bool, like: &Tensor) -> Result<Self> {
        let (h, dtype, device) = (cfg.hidden_size, like.dtype(), like.device().clone());
        let mods = match (pre_only, self_attn) {
            (true, _) => 2,
            (false, true) => 9,
            (false, false) => 6,
        };
        let mlp = if pre_only {
            None
        } else {
            let mlp = Mlp {
                fc1: vb.pp("mlp.fc1").linear(h, cfg.mlp_hidden, true)?,
                fc2: vb.pp("mlp.fc2").linear(cfg.mlp_hidden, h, true)?,
            };
            Some((plain_layer_norm(h, dtype, &device)?, mlp))
        };
        Ok(DitSide {
            norm1: plain_layer_norm(h, dtype, &device)?,
            attn: Attention::new(vb.pp("attn"), cfg, pre_only)?,
            attn2: if self_attn { Some(Attention::new(vb.pp("attn2"), cfg, false)?) } else { None },
            mlp,
            modulation: vb.pp("adaLN_modulation.1").linear(h, mods * h, true)?,
        })
    }

    /// The adaLN chunks for conditioning `c` (B, W), each (B, 1, W).
    fn modulation(&self, c: &Tensor, ctx: &ForwardCtx) -> Result<Vec<Tensor>> {
        let m = self.modulation.forward(&silu(c)?, ctx)?.unsqueeze(1)?;
        let parts = m.dim(D::Minus1)? / c.dim(D::Minus1)?;
        m.chunk(parts, D::Minus1)
    }

    /// The rest of the side after attention: the gated attention output, the second
    /// attention's when present, then the gated MLP.
    fn finish(
        &self,
        x: &Tensor,
        attn: &Tensor,
        attn2: Option<&Tensor>,
        m: &[Tensor],
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let mut x = gated_residual(x, &self.attn.post(attn, ctx)?, &m[2])?;
        if let (Some(a2), Some(out2)) = (&self.attn2, attn2) {
            x = gated_residual(&x, &a2.post(out2, ctx)?, &m[8])?;
        }
        let Some((norm2, mlp)) = &self.mlp else { return Ok(x) };
        let h = mlp.forward(&modulate(&norm2.forward(&x)?, &m[3], &m[4])?, ctx)?;
        gated_residual(&x, &h, &m[5])
    }

    fn linears(&self) -> Vec<&Linear> {
        let mut out = self.attn.linears();
        if let Some(a2) = &self.attn2 {
            out.extend(a2.linears());
        }
        if let Some((_, mlp)) = &self.mlp {
            out.extend([&mlp.fc1, &mlp.fc2]);
        }
        out.push(&self.modulation);
        out
    }
}

/// One joint block: text (`context_block`) and image (`x_block`) sides attending together.
#[derive(Clone, Debug)]
pub struct JointBlock {
    context: DitSide,
    x: DitSide,
    heads: usize,
}

impl JointBlock {
    fn new(vb: WeightsView, cfg: &MmditConfig, index: usize, like: &Tensor) -> Result<Self> {
        let pre_only = index + 1 == cfg.depth;
        Ok(JointBlock {
            context: DitSide::new(vb.pp("context_block"), cfg, pre_only, false, like)?,
            x: DitSide::new(vb.pp("x_block"), cfg, false, cfg.x_self_attn_layers.contains(&index), like)?,
            heads: cfg.num_heads,
        })
    }

    /// `(context, x)` after the block; the context is `None` after the last (pre-only) block.
    pub fn forward(
        &self,
        context: &Tensor,
        x: &Tensor,
        c: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<(Option<Tensor>, Tensor)> {
        let cm = self.context.modulation(c, ctx)?;
        let xm = self.x.modulation(c, ctx)?;
        let [cq, ck, cv] =
            self.context.attn.pre(&modulate(&self.context.norm1.forward(context)?, &cm[0], &cm[1])?, ctx)?;
        let x_norm = self.x.norm1.forward(x)?;
        let [xq, xk, xv] = self.x.attn.pre(&modulate(&x_norm, &xm[0], &xm[1])?, ctx)?;
        let l_ctx = context.dim(1)?;
        let l_x = x.dim(1)?;
        let scale = 1.0 / ((cq.dim(2)? / self.heads) as f64).sqrt();
        let joined = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 1)?.contiguous();
        let attn = attention_heads(&joined(&cq, &xq)?, &joined(&ck, &xk)?, &joined(&cv, &xv)?, self.heads, scale)?;
        let (ctx_attn, x_attn) = (attn.narrow(1, 0, l_ctx)?, attn.narrow(1, l_ctx, l_x)?);
        let attn2 = match &self.x.attn2 {
            Some(a2) => {
                let [q2, k2, v2] = a2.pre(&modulate(&x_norm, &xm[6], &xm[7])?, ctx)?;
                Some(attention_heads(&q2.contiguous()?, &k2.contiguous()?, &v2.contiguous()?, self.heads, scale)?)
            }
            None => None,
        };
        let x = self.x.finish(x, &x_attn, attn2.as_ref(), &xm, ctx)?;
        let context = match self.context.mlp {
            Some(_) => Some(self.context.finish(context, &ctx_attn, None, &cm, ctx)?),
            None => None,
        };
        Ok((context, x))
    }
}

/// The inputs of one prediction.
pub struct MmditInputs<'a> {
    /// Latents (B, C, H, W), H and W multiples of the patch size.
    pub x: &'a Tensor,
    /// Timesteps (B) on the 0..1000 scale.
    pub timesteps: &'a Tensor,
    /// Pooled text embedding (B, pooled_dim).
    pub pooled: &'a Tensor,
    /// Text context (B, L, context_dim).
    pub context: &'a Tensor,
}

/// The SD3 / SD3.5 transformer.
#[derive(Clone, Debug)]
pub struct MmditTransformer {
    cfg: MmditConfig,
    x_embedder: Conv2d,
    pos_embed: Tensor,
    t_embedder: Embedder,
    y_embedder: Embedder,
    context_embedder: Linear,
    blocks: Vec<JointBlock>,
    final_norm: LayerNorm,
    final_modulation: Linear,
    final_linear: Linear,
    dtype: DType,
}

impl MmditTransformer {
    /// Builds the transformer from SAI-layout weights (`vb` at the model's root).
    pub fn new(vb: WeightsView, cfg: &MmditConfig) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let (h, p) = (cfg.hidden_size, cfg.patch_size);
        let positions = cfg.pos_embed_max_size * cfg.pos_embed_max_size;
        // The compute dtype and device, from a tensor that is never stored in fp8.
        let pos_embed = vb.get("pos_embed", &[1, positions, h])?;
        let (dtype, device) = (pos_embed.dtype(), pos_embed.device().clone());
        Ok(MmditTransformer {
            x_embedder: vb.pp("x_embedder.proj").conv2d(cfg.in_channels, h, p, p, 0)?,
            t_embedder: Embedder::new(vb.pp("t_embedder"), TIME_EMBED_DIM, h)?,
            y_embedder: Embedder::new(vb.pp("y_embedder"), cfg.pooled_dim, h)?,
            context_embedder: vb.pp("context_embedder").linear(cfg.context_dim, h, true)?,
            blocks: (0..cfg.depth)
                .map(|i| JointBlock::new(vb.pp("joint_blocks").pp(i), cfg, i, &pos_embed))
                .collect::<Result<_>>()?,
            final_norm: plain_layer_norm(h, dtype, &device)?,
            final_modulation: vb.pp("final_layer.adaLN_modulation.1").linear(h, 2 * h, true)?,
            final_linear: vb.pp("final_layer.linear").linear(h, p * p * cfg.in_channels, true)?,
            pos_embed,
            cfg: cfg.clone(),
            dtype,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MmditConfig {
        &self.cfg
    }

    /// The position table of an `h`×`w`-patch image: the centre crop of the learned grid
    /// (SAI's `cropped_pos_embed` without random cropping), (h·w, W).
    pub fn cropped_pos_embed(&self, h: usize, w: usize) -> Result<Tensor> {
        let max = self.cfg.pos_embed_max_size;
        if h > max || w > max {
            candle_core::bail!(
                "the latent is {h}×{w} patches; this model's position table covers {max}×{max} ({} px at most per side)",
                max * self.cfg.patch_size * 8
            )
        }
        let (top, left) = ((max - h) / 2, (max - w) / 2);
        let grid = self.pos_embed.reshape((max, max, self.cfg.hidden_size))?;
        grid.narrow(0, top, h)?.narrow(1, left, w)?.reshape((h * w, self.cfg.hidden_size))
    }

    /// The conditioning vector `t_embedder(t) + y_embedder(pooled)` (B, W).
    pub fn conditioning(&self, timesteps: &Tensor, pooled: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let t = self.t_embedder.forward(&timestep_embedding(timesteps, TIME_EMBED_DIM, self.dtype)?, ctx)?;
        t + self.y_embedder.forward(&pooled.to_dtype(self.dtype)?, ctx)?
    }

    /// The prediction for latents (B, C, H, W), same shape.
    pub fn forward(&self, inputs: &MmditInputs, ctx: &ForwardCtx) -> Result<Tensor> {
        self.forward_observed(inputs, ctx, &mut |_, _, _| {})
    }

    /// [`Self::forward`], handing each joint block's outputs `(index, context, x)` to `observe`
    /// (the context is `None` after the last block) — for checking a model block by block.
    pub fn forward_observed(
        &self,
        inputs: &MmditInputs,
        ctx: &ForwardCtx,
        observe: &mut dyn FnMut(usize, Option<&Tensor>, &Tensor),
    ) -> Result<Tensor> {
        let (b, c, height, width) = inputs.x.dims4()?;
        let p = self.cfg.patch_size;
        if c != self.cfg.in_channels || height % p != 0 || width % p != 0 {
            candle_core::bail!(
                "MMDiT: latents {:?} do not fit the model ({} channels, sides multiples of {p})",
                inputs.x.dims(),
                self.cfg.in_channels
            )
        }
        let (h, w) = (height / p, width / p);
        let patches = self.x_embedder.forward(&inputs.x.to_dtype(self.dtype)?, ctx)?;
        let mut x = patches.flatten_from(2)?.transpose(1, 2)?.broadcast_add(&self.cropped_pos_embed(h, w)?)?;
        let cond = self.conditioning(inputs.timesteps, inputs.pooled, ctx)?;
        let mut context = Some(self.context_embedder.forward(&inputs.context.to_dtype(self.dtype)?, ctx)?);
        for (i, block) in self.blocks.iter().enumerate() {
            let Some(text) = context.as_ref() else { candle_core::bail!("internal: a block after the pre-only one") };
            let (next, xs) = block.forward(text, &x, &cond, ctx)?;
            observe(i, next.as_ref(), &xs);
            context = next;
            x = xs;
        }
        let m = self.final_modulation.forward(&silu(&cond)?, ctx)?.unsqueeze(1)?.chunk(2, D::Minus1)?;
        let x = self.final_linear.forward(&modulate(&self.final_norm.forward(&x)?, &m[0], &m[1])?, ctx)?;
        // (B, h·w, p·p·C) → (B, C, h·p, w·p), SAI's unpatchify.
        x.reshape((b, h, w, p, p, c))?.permute((0, 5, 1, 3, 2, 4))?.reshape((b, c, height, width))
    }

    /// Every linear of the joint blocks, in sd-scripts' `lora_sd3.py` order per side (q/k/v,
    /// output projection, second attention, MLP, modulation), the LoRA targets of its default
    /// network.
    pub fn lora_targets(&self) -> Vec<LoraTarget> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.context, &b.x])
            .flat_map(|side| side.linears())
            .map(|l| l.lora_target(TargetGroup::Attention))
            .collect()
    }
}
