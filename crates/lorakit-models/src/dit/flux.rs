//! The Flux.1 transformer (BFL's `flux/model.py`, as sd-scripts' `library/flux_models.py` carries
//! it): 19 double-stream blocks (image and text tokens with their own weights, one joint
//! attention), 38 single-stream blocks (one fused `linear1` for q/k/v and the MLP), 3-axis rotary
//! position embedding, adaptive-LayerNorm modulation from the timestep, pooled CLIP vector and —
//! for guidance-distilled models (dev) — the guidance value.
//!
//! Weight paths mirror BFL's single-file keys (`double_blocks.0.img_attn.qkv.weight`), which is
//! also what kohya's LoRA names are built from (`lora_unet_double_blocks_0_img_attn_qkv`);
//! diffusers folders are renamed to this layout on load (`checkpoint::flux`).
//!
//! Everything trainable runs through `lorakit-nn` (frozen linears with LoRA hooks, LayerNorm with
//! its own backward, chunked attention); the modulation, gated residuals, q/k RMS norms with the
//! rotary embedding and tanh-GELU are `lorakit_nn::dit`'s ops (fused CPU kernels in f32, candle's
//! composed ops elsewhere).

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, D};
use lorakit_nn::activation::{gelu_tanh, silu};
use lorakit_nn::checkpoint::{checkpoint, checkpoint_offloaded, BlockFn};
use lorakit_nn::dit::{concat_gelu_tail, gated_residual, qk_norm_rope_attention, QkvStream};
use lorakit_nn::lora::{LoraTarget, TargetGroup};
use lorakit_nn::{ForwardCtx, LayerNorm, Linear};
use serde::Deserialize;

use crate::weights::WeightsView;

/// Width of the sinusoidal timestep / guidance embedding fed to `time_in` and `guidance_in`.
const TIME_EMBED_DIM: usize = 256;
/// Epsilon of every LayerNorm and of the q/k RMS norms.
const NORM_EPS: f64 = 1e-6;

/// Hyper-parameters of a Flux transformer (BFL's `FluxParams`).
#[derive(Clone, Debug, PartialEq)]
pub struct FluxConfig {
    /// Features per packed latent token (16 latent channels × 2×2 patch = 64).
    pub in_channels: usize,
    /// Width of the pooled text vector (CLIP-L: 768).
    pub vec_in_dim: usize,
    /// Width of the text tokens (T5-XXL: 4096).
    pub context_in_dim: usize,
    /// Transformer width.
    pub hidden_size: usize,
    /// MLP width / hidden width.
    pub mlp_ratio: f64,
    /// Attention heads.
    pub num_heads: usize,
    /// Double-stream blocks.
    pub depth: usize,
    /// Single-stream blocks.
    pub depth_single_blocks: usize,
    /// Rotary dimensions per position axis (index, y, x); they sum to the head width.
    pub axes_dim: Vec<usize>,
    /// Rotary base.
    pub theta: f64,
    /// Biases on the q/k/v projections.
    pub qkv_bias: bool,
    /// Guidance-distilled (dev): a `guidance_in` embedder adds the guidance value.
    pub guidance_embed: bool,
}

/// diffusers' `FluxTransformer2DModel` config.json (the keys that matter).
#[derive(Deserialize)]
struct DiffusersFluxConfig {
    #[serde(default = "default_patch")]
    patch_size: usize,
    in_channels: usize,
    num_layers: usize,
    num_single_layers: usize,
    attention_head_dim: usize,
    num_attention_heads: usize,
    joint_attention_dim: usize,
    pooled_projection_dim: usize,
    #[serde(default)]
    guidance_embeds: bool,
    #[serde(default = "default_axes")]
    axes_dims_rope: Vec<usize>,
}

fn default_patch() -> usize {
    1
}

fn default_axes() -> Vec<usize> {
    vec![16, 56, 56]
}

impl FluxConfig {
    /// FLUX.1-dev.
    pub fn dev() -> Self {
        FluxConfig {
            in_channels: 64,
            vec_in_dim: 768,
            context_in_dim: 4096,
            hidden_size: 3072,
            mlp_ratio: 4.0,
            num_heads: 24,
            depth: 19,
            depth_single_blocks: 38,
            axes_dim: vec![16, 56, 56],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    /// FLUX.1-schnell: dev without the guidance embedder.
    pub fn schnell() -> Self {
        FluxConfig { guidance_embed: false, ..Self::dev() }
    }

    /// The config of a diffusers `transformer/config.json`.
    pub fn from_diffusers_json(path: &std::path::Path) -> crate::Result<Self> {
        let bad = |message: String| crate::Error::Checkpoint { path: path.to_path_buf(), message };
        let text =
            std::fs::read_to_string(path).map_err(|e| crate::Error::Io { path: path.to_path_buf(), source: e })?;
        let c: DiffusersFluxConfig =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a Flux transformer config: {e}")))?;
        if c.patch_size != 1 {
            return Err(bad(format!(
                "patch_size {} is not supported (Flux.1 packs 2×2 latents itself and uses 1)",
                c.patch_size
            )));
        }
        let cfg = FluxConfig {
            in_channels: c.in_channels,
            vec_in_dim: c.pooled_projection_dim,
            context_in_dim: c.joint_attention_dim,
            hidden_size: c.num_attention_heads * c.attention_head_dim,
            mlp_ratio: 4.0,
            num_heads: c.num_attention_heads,
            depth: c.num_layers,
            depth_single_blocks: c.num_single_layers,
            axes_dim: c.axes_dims_rope,
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: c.guidance_embeds,
        };
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    /// The config implied by BFL-layout weight shapes (`shape_of(key)`), as sd-scripts infers
    /// block counts from the keys. The rotary axes are not stored in a checkpoint: Flux.1's
    /// (16, 56, 56) is used for its head width of 128, `axes_dim` must be given otherwise.
    pub fn from_bfl_shapes<'a>(
        keys: impl Iterator<Item = &'a str> + Clone,
        shape_of: impl Fn(&str) -> Option<Vec<usize>>,
        axes_dim: Option<Vec<usize>>,
    ) -> std::result::Result<Self, String> {
        let need = |key: &str| shape_of(key).ok_or_else(|| format!("missing `{key}`"));
        let count = |prefix: &str| {
            keys.clone()
                .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
                .max()
                .map_or(0, |m| m + 1)
        };
        let img_in = need("img_in.weight")?;
        let (hidden_size, in_channels) = (img_in[0], img_in[1]);
        let head_dim = need("double_blocks.0.img_attn.norm.query_norm.scale")?[0];
        if head_dim == 0 || hidden_size % head_dim != 0 {
            return Err(format!("q/k norm width {head_dim} does not divide the width {hidden_size}"));
        }
        let mlp_hidden = need("double_blocks.0.img_mlp.0.weight")?[0];
        let axes_dim = match axes_dim {
            Some(a) => a,
            None if head_dim == 128 => vec![16, 56, 56],
            None => {
                return Err(format!(
                    "head width {head_dim} is not Flux.1's 128: the rotary axes cannot be inferred (give a diffusers config.json)"
                ))
            }
        };
        let cfg = FluxConfig {
            in_channels,
            vec_in_dim: need("vector_in.in_layer.weight")?[1],
            context_in_dim: need("txt_in.weight")?[1],
            hidden_size,
            mlp_ratio: mlp_hidden as f64 / hidden_size as f64,
            num_heads: hidden_size / head_dim,
            depth: count("double_blocks."),
            depth_single_blocks: count("single_blocks."),
            axes_dim,
            theta: 10_000.0,
            qkv_bias: shape_of("double_blocks.0.img_attn.qkv.bias").is_some(),
            guidance_embed: shape_of("guidance_in.in_layer.bias").is_some(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }

    /// Width of the MLPs.
    pub fn mlp_hidden_dim(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Checks the sizes fit together.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_heads == 0 || self.hidden_size % self.num_heads != 0 {
            return Err(format!("width {} is not divisible by {} heads", self.hidden_size, self.num_heads));
        }
        if self.axes_dim.iter().sum::<usize>() != self.head_dim() || self.axes_dim.iter().any(|a| a % 2 != 0) {
            return Err(format!(
                "rotary axes {:?} must be even and sum to the head width {}",
                self.axes_dim,
                self.head_dim()
            ));
        }
        if self.in_channels == 0 || self.vec_in_dim == 0 || self.context_in_dim == 0 || self.depth == 0 {
            return Err("in_channels, vec_in_dim, context_in_dim and depth must be positive".into());
        }
        Ok(())
    }

    /// [`FluxTransformer::lora_targets`] from the sizes alone (no weights): what a full-size
    /// model's LoRA will hold, for plans and name checks.
    pub fn lora_targets(&self) -> Vec<LoraTarget> {
        let (h, m) = (self.hidden_size, self.mlp_hidden_dim());
        let target = |path: String, in_dim: usize, out_dim: usize| LoraTarget {
            path,
            kohya_path: None,
            kind: lorakit_nn::lora::LoraKind::Linear,
            in_dim,
            out_dim,
            group: TargetGroup::Attention,
        };
        let mut out = Vec::new();
        for b in 0..self.depth {
            for s in ["img", "txt"] {
                let p = format!("double_blocks.{b}.{s}");
                out.push(target(format!("{p}_mod.lin"), h, 6 * h));
                out.push(target(format!("{p}_attn.qkv"), h, 3 * h));
                out.push(target(format!("{p}_attn.proj"), h, h));
                out.push(target(format!("{p}_mlp.0"), h, m));
                out.push(target(format!("{p}_mlp.2"), m, h));
            }
        }
        for b in 0..self.depth_single_blocks {
            let p = format!("single_blocks.{b}");
            out.push(target(format!("{p}.linear1"), h, 3 * h + m));
            out.push(target(format!("{p}.linear2"), h + m, h));
            out.push(target(format!("{p}.modulation.lin"), h, 3 * h));
        }
        out
    }

    /// [`FluxTransformer::input_lora_targets`] from the sizes alone, flattened in sd-scripts'
    /// order (img_in, time_in, vector_in, guidance_in, txt_in).
    pub fn input_lora_targets(&self) -> Vec<LoraTarget> {
        let h = self.hidden_size;
        let target = |path: &str, in_dim: usize, out_dim: usize| LoraTarget {
            path: path.to_string(),
            kohya_path: None,
            kind: lorakit_nn::lora::LoraKind::Linear,
            in_dim,
            out_dim,
            group: TargetGroup::Named,
        };
        let mut out = vec![target("img_in", self.in_channels, h)];
        out.push(target("time_in.in_layer", TIME_EMBED_DIM, h));
        out.push(target("time_in.out_layer", h, h));
        out.push(target("vector_in.in_layer", self.vec_in_dim, h));
        out.push(target("vector_in.out_layer", h, h));
        if self.guidance_embed {
            out.push(target("guidance_in.in_layer", TIME_EMBED_DIM, h));
            out.push(target("guidance_in.out_layer", h, h));
        }
        out.push(target("txt_in", self.context_in_dim, h));
        out
    }

    /// Every weight's BFL key and shape.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, m, d) = (self.hidden_size, self.mlp_hidden_dim(), self.head_dim());
        let mut out = Vec::new();
        let mut linear = |name: String, i: usize, o: usize, bias: bool| {
            out.push((format!("{name}.weight"), vec![o, i]));
            if bias {
                out.push((format!("{name}.bias"), vec![o]));
            }
        };
        linear("img_in".into(), self.in_channels, h, true);
        for (name, i) in [("time_in", TIME_EMBED_DIM), ("vector_in", self.vec_in_dim)]
            .into_iter()
            .chain(self.guidance_embed.then_some(("guidance_in", TIME_EMBED_DIM)))
        {
            linear(format!("{name}.in_layer"), i, h, true);
            linear(format!("{name}.out_layer"), h, h, true);
        }
        linear("txt_in".into(), self.context_in_dim, h, true);
        for b in 0..self.depth {
            for s in ["img", "txt"] {
                let p = format!("double_blocks.{b}.{s}");
                linear(format!("{p}_mod.lin"), h, 6 * h, true);
                linear(format!("{p}_attn.qkv"), h, 3 * h, self.qkv_bias);
                linear(format!("{p}_attn.proj"), h, h, true);
                linear(format!("{p}_mlp.0"), h, m, true);
                linear(format!("{p}_mlp.2"), m, h, true);
            }
        }
        for b in 0..self.depth_single_blocks {
            let p = format!("single_blocks.{b}");
            linear(format!("{p}.linear1"), h, 3 * h + m, true);
            linear(format!("{p}.linear2"), h + m, h, true);
            linear(format!("{p}.modulation.lin"), h, 3 * h, true);
        }
        linear("final_layer.linear".into(), h, self.in_channels, true);
        linear("final_layer.adaLN_modulation.1".into(), h, 2 * h, true);
        for b in 0..self.depth {
            for s in ["img", "txt"] {
                for n in ["query_norm", "key_norm"] {
                    out.push((format!("double_blocks.{b}.{s}_attn.norm.{n}.scale"), vec![d]));
                }
            }
        }
        for b in 0..self.depth_single_blocks {
            for n in ["query_norm", "key_norm"] {
                out.push((format!("single_blocks.{b}.norm.{n}.scale"), vec![d]));
            }
        }
        out
    }
}

/// BFL's sinusoidal embedding of `t` (values in [0, 1]; scaled by 1000 here, as BFL's
/// `timestep_embedding` does): `[cos(1000·t·f), sin(1000·t·f)]` with `f_i = 10000^(−i/half)`.
/// Computed in f32, returned in `dtype`.
pub fn timestep_embedding(t: &Tensor, dim: usize, dtype: DType) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half).map(|i| (-(10_000f32).ln() * i as f32 / half as f32).exp()).collect::<Vec<_>>();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = (t.to_dtype(DType::F32)? * 1000.0)?.unsqueeze(1)?.broadcast_mul(&freqs)?;
    let mut emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
    if dim % 2 == 1 {
        emb = Tensor::cat(&[&emb, &emb.narrow(1, 0, 1)?.zeros_like()?], 1)?;
    }
    emb.to_dtype(dtype)
}

/// The rotary table of a token sequence: `cos` and `sin`, each (L, head_dim/2), f32, from
/// position ids (L, 3) — BFL's `EmbedND` (angles computed in f64 as BFL does, then rounded).
#[derive(Clone, Debug)]
pub struct Rope {
    /// cos of every (token, frequency) angle.
    pub cos: Tensor,
    /// sin of every (token, frequency) angle.
    pub sin: Tensor,
}

impl Rope {
    /// The table for `ids` (L, n_axes) with `axes_dim[i]` rotary dimensions on axis `i`, on the
    /// CPU (move it with [`Self::to_device`]).
    pub fn new(ids: &Tensor, axes_dim: &[usize], theta: f64) -> Result<Self> {
        let (len, n_axes) = ids.dims2()?;
        if n_axes != axes_dim.len() {
            candle_core::bail!("rotary ids have {n_axes} axes, the model {}", axes_dim.len())
        }
        let ids: Vec<Vec<f64>> = ids.to_dtype(DType::F64)?.to_vec2()?;
        let half: usize = axes_dim.iter().sum::<usize>() / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(len * half), Vec::with_capacity(len * half));
        for row in &ids {
            for (axis, &dim) in axes_dim.iter().enumerate() {
                for j in 0..dim / 2 {
                    let omega = 1.0 / theta.powf((2 * j) as f64 / dim as f64);
                    let angle = row[axis] * omega;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (len, half), &Device::Cpu)?,
            sin: Tensor::from_vec(sin, (len, half), &Device::Cpu)?,
        })
    }

    /// The table moved to `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Rope { cos: self.cos.to_device(device)?, sin: self.sin.to_device(device)? })
    }

    /// Rotates each head's consecutive pairs of `x` (B, L, heads·head_dim):
    /// `(x0, x1) → (x0·cos − x1·sin, x0·sin + x1·cos)`, in f32, returned in `x`'s dtype.
    pub fn apply(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        lorakit_nn::dit::rope(x, &self.cos, &self.sin, heads)
    }
}

/// A LayerNorm without affine weights (BFL's `elementwise_affine=False`).
fn plain_layer_norm(width: usize, dtype: DType, device: &Device) -> Result<LayerNorm> {
    Ok(LayerNorm::new(Tensor::ones(width, dtype, device)?, None, NORM_EPS))
}

/// `(1 + scale)·x + shift` with `shift`/`scale` (B, 1, width).
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    lorakit_nn::dit::modulate(x, shift, scale)
}

/// `in_layer → SiLU → out_layer` (BFL's `MLPEmbedder`).
#[derive(Debug)]
struct MlpEmbedder {
    in_layer: Linear,
    out_layer: Linear,
}

impl MlpEmbedder {
    fn new(vb: WeightsView, in_dim: usize, hidden: usize) -> Result<Self> {
        Ok(MlpEmbedder {
            in_layer: vb.pp("in_layer").linear(in_dim, hidden, true)?,
            out_layer: vb.pp("out_layer").linear(hidden, hidden, true)?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.out_layer.forward(&silu(&self.in_layer.forward(x, ctx)?)?, ctx)
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(MlpEmbedder { in_layer: self.in_layer.to_device(device)?, out_layer: self.out_layer.to_device(device)? })
    }
}

/// `lin(SiLU(vec))` cut into `parts` (B, 1, width) pieces: shift, scale, gate (× 2 for double
/// blocks).
#[derive(Debug)]
struct Modulation {
    lin: Linear,
    parts: usize,
}

impl Modulation {
    fn new(vb: WeightsView, hidden: usize, parts: usize) -> Result<Self> {
        Ok(Modulation { lin: vb.pp("lin").linear(hidden, parts * hidden, true)?, parts })
    }

    fn forward(&self, vec: &Tensor, ctx: &ForwardCtx) -> Result<Vec<Tensor>> {
        let out = self.lin.forward(&silu(vec)?, ctx)?.unsqueeze(1)?;
        out.chunk(self.parts, D::Minus1)
    }
}

/// Joint attention over the streams' projections (each (B, L_i, ≥ 3·heads·d): q, k, v first),
/// their tokens joined in order: q and k RMS-normalised per head and rotated, then attention;
/// `key_bias` (B, ΣL) masks padded text tokens when present. Returns (B, ΣL, heads·d).
fn joint_attention(streams: &[QkvStream], rope: &Rope, heads: usize, key_bias: Option<&Tensor>) -> Result<Tensor> {
    qk_norm_rope_attention(streams, &rope.cos, &rope.sin, heads, NORM_EPS, key_bias)
}

/// One stream's attention and MLP weights in a double block.
#[derive(Debug)]
struct StreamWeights {
    modulation: Modulation,
    norm1: LayerNorm,
    qkv: Linear,
    query_norm: Tensor,
    key_norm: Tensor,
    proj: Linear,
    norm2: LayerNorm,
    mlp_in: Linear,
    mlp_out: Linear,
}

impl StreamWeights {
    fn new(vb: &WeightsView, stream: &str, cfg: &FluxConfig) -> Result<Self> {
        let (h, m, d) = (cfg.hidden_size, cfg.mlp_hidden_dim(), cfg.head_dim());
        let attn = vb.pp(format!("{stream}_attn"));
        let mlp = vb.pp(format!("{stream}_mlp"));
        // Norm scales stay in the compute dtype (fp8 storage only applies to linear weights).
        let query_norm = attn.pp("norm.query_norm").get("scale", &[d])?;
        let (dtype, device) = (query_norm.dtype(), query_norm.device().clone());
        Ok(StreamWeights {
            modulation: Modulation::new(vb.pp(format!("{stream}_mod")), h, 6)?,
            norm1: plain_layer_norm(h, dtype, &device)?,
            qkv: attn.pp("qkv").linear(h, 3 * h, cfg.qkv_bias)?,
            query_norm,
            key_norm: attn.pp("norm.key_norm").get("scale", &[d])?,
            proj: attn.pp("proj").linear(h, h, true)?,
            norm2: plain_layer_norm(h, dtype, &device)?,
            mlp_in: mlp.pp("0").linear(h, m, true)?,
            mlp_out: mlp.pp("2").linear(m, h, true)?,
        })
    }

    /// The q/k/v projection of the modulated `x` (B, L, 3·width), and the modulation for the
    /// rest of the block.
    fn qkv(&self, x: &Tensor, vec: &Tensor, ctx: &ForwardCtx) -> Result<(Tensor, Vec<Tensor>)> {
        let m = self.modulation.forward(vec, ctx)?;
        let x = modulate(&self.norm1.forward(x)?, &m[0], &m[1])?;
        Ok((self.qkv.forward(&x, ctx)?, m))
    }

    /// This stream's projection and q/k norm weights, for [`joint_attention`].
    fn stream<'a>(&'a self, qkv: &'a Tensor) -> QkvStream<'a> {
        QkvStream { qkv, q_scale: &self.query_norm, k_scale: &self.key_norm }
    }

    /// The residual updates after attention: `x + gate1·proj(attn)`, then the gated MLP.
    fn finish(&self, x: &Tensor, attn: &Tensor, m: &[Tensor], ctx: &ForwardCtx) -> Result<Tensor> {
        let x = gated_residual(x, &self.proj.forward(attn, ctx)?, &m[2])?;
        let h = modulate(&self.norm2.forward(&x)?, &m[3], &m[4])?;
        let h = self.mlp_out.forward(&gelu_tanh(&self.mlp_in.forward(&h, ctx)?)?, ctx)?;
        gated_residual(&x, &h, &m[5])
    }

    fn linears(&self) -> [&Linear; 5] {
        [&self.modulation.lin, &self.qkv, &self.proj, &self.mlp_in, &self.mlp_out]
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        let width = self.proj.frozen().weight().dim(0)?;
        let dtype = self.query_norm.dtype();
        Ok(StreamWeights {
            modulation: Modulation { lin: self.modulation.lin.to_device(device)?, parts: self.modulation.parts },
            norm1: plain_layer_norm(width, dtype, device)?,
            qkv: self.qkv.to_device(device)?,
            query_norm: self.query_norm.to_device(device)?,
            key_norm: self.key_norm.to_device(device)?,
            proj: self.proj.to_device(device)?,
            norm2: plain_layer_norm(width, dtype, device)?,
            mlp_in: self.mlp_in.to_device(device)?,
            mlp_out: self.mlp_out.to_device(device)?,
        })
    }
}

/// A double-stream block: image and text tokens keep their own weights and meet in one
/// attention over `[text, image]`.
#[derive(Debug)]
pub struct DoubleStreamBlock {
    img: StreamWeights,
    txt: StreamWeights,
    heads: usize,
}

impl DoubleStreamBlock {
    fn new(vb: WeightsView, cfg: &FluxConfig) -> Result<Self> {
        Ok(DoubleStreamBlock {
            img: StreamWeights::new(&vb, "img", cfg)?,
            txt: StreamWeights::new(&vb, "txt", cfg)?,
            heads: cfg.num_heads,
        })
    }

    /// The block with its weights copied to `device` (block swapping).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(DoubleStreamBlock { img: self.img.to_device(device)?, txt: self.txt.to_device(device)?, heads: self.heads })
    }

    /// `(img, txt)` after the block.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        rope: &Rope,
        key_bias: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> Result<(Tensor, Tensor)> {
        let (img_qkv, im) = self.img.qkv(img, vec, ctx)?;
        let (txt_qkv, tm) = self.txt.qkv(txt, vec, ctx)?;
        let streams = [self.txt.stream(&txt_qkv), self.img.stream(&img_qkv)];
        let attn = joint_attention(&streams, rope, self.heads, key_bias)?;
        let lt = txt.dim(1)?;
        let txt_attn = attn.narrow(1, 0, lt)?;
        let img_attn = attn.narrow(1, lt, img.dim(1)?)?;
        Ok((self.img.finish(img, &img_attn, &im, ctx)?, self.txt.finish(txt, &txt_attn, &tm, ctx)?))
    }
}

/// A single-stream block over the joined `[text, image]` sequence: `linear1` makes q, k, v and
/// the MLP input at once, `linear2` takes the attention output and the MLP activation together.
#[derive(Debug)]
pub struct SingleStreamBlock {
    modulation: Modulation,
    pre_norm: LayerNorm,
    linear1: Linear,
    linear2: Linear,
    query_norm: Tensor,
    key_norm: Tensor,
    hidden: usize,
    mlp_hidden: usize,
    heads: usize,
}

impl SingleStreamBlock {
    fn new(vb: WeightsView, cfg: &FluxConfig) -> Result<Self> {
        let (h, m, d) = (cfg.hidden_size, cfg.mlp_hidden_dim(), cfg.head_dim());
        let query_norm = vb.pp("norm.query_norm").get("scale", &[d])?;
        let (dtype, device) = (query_norm.dtype(), query_norm.device().clone());
        Ok(SingleStreamBlock {
            modulation: Modulation::new(vb.pp("modulation"), h, 3)?,
            pre_norm: plain_layer_norm(h, dtype, &device)?,
            linear1: vb.pp("linear1").linear(h, 3 * h + m, true)?,
            linear2: vb.pp("linear2").linear(h + m, h, true)?,
            query_norm,
            key_norm: vb.pp("norm.key_norm").get("scale", &[d])?,
            hidden: h,
            mlp_hidden: m,
            heads: cfg.num_heads,
        })
    }

    /// The block with its weights copied to `device` (block swapping).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(SingleStreamBlock {
            modulation: Modulation { lin: self.modulation.lin.to_device(device)?, parts: self.modulation.parts },
            pre_norm: plain_layer_norm(self.hidden, self.query_norm.dtype(), device)?,
            linear1: self.linear1.to_device(device)?,
            linear2: self.linear2.to_device(device)?,
            query_norm: self.query_norm.to_device(device)?,
            key_norm: self.key_norm.to_device(device)?,
            hidden: self.hidden,
            mlp_hidden: self.mlp_hidden,
            heads: self.heads,
        })
    }

    /// `x` after the block.
    pub fn forward(
        &self,
        x: &Tensor,
        vec: &Tensor,
        rope: &Rope,
        key_bias: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let m = self.modulation.forward(vec, ctx)?;
        let xm = modulate(&self.pre_norm.forward(x)?, &m[0], &m[1])?;
        // q, k, v and the MLP input side by side (B, L, 3·hidden + mlp_hidden).
        let fused = self.linear1.forward(&xm, ctx)?;
        let stream = QkvStream { qkv: &fused, q_scale: &self.query_norm, k_scale: &self.key_norm };
        let attn = joint_attention(&[stream], rope, self.heads, key_bias)?;
        let out = self.linear2.forward(&concat_gelu_tail(&attn, &fused, 3 * self.hidden)?, ctx)?;
        gated_residual(x, &out, &m[2])
    }
}

/// The inputs of one transformer call.
pub struct FluxInputs<'a> {
    /// Packed latents (B, L_img, in_channels).
    pub img: &'a Tensor,
    /// Image token positions (L_img, 3): `(0, row, column)` of each 2×2 patch.
    pub img_ids: &'a Tensor,
    /// Text tokens (B, L_txt, context_in_dim).
    pub txt: &'a Tensor,
    /// Text token positions (L_txt, 3): zeros.
    pub txt_ids: &'a Tensor,
    /// Timesteps σ in [0, 1] (B) — sd-scripts passes `timesteps / 1000`.
    pub timesteps: &'a Tensor,
    /// Pooled text vector (B, vec_in_dim).
    pub y: &'a Tensor,
    /// Guidance value per sample (B); required by guidance-distilled models, ignored otherwise.
    pub guidance: Option<&'a Tensor>,
    /// 1 for real text tokens, 0 for padding (B, L_txt) — sd-scripts' `apply_t5_attn_mask`.
    pub txt_mask: Option<&'a Tensor>,
}

/// The Flux transformer.
#[derive(Debug)]
pub struct FluxTransformer {
    cfg: FluxConfig,
    img_in: Linear,
    time_in: MlpEmbedder,
    vector_in: MlpEmbedder,
    guidance_in: Option<MlpEmbedder>,
    txt_in: Linear,
    double_blocks: Vec<Arc<DoubleStreamBlock>>,
    single_blocks: Vec<Arc<SingleStreamBlock>>,
    final_norm: LayerNorm,
    final_linear: Linear,
    final_modulation: Linear,
    /// How many of the last double / single blocks stay in host memory (block swapping).
    host_blocks: (usize, usize),
    /// Checkpointed blocks keep their saved inputs in host memory (`cpu_offload_checkpointing`).
    offload_checkpoints: bool,
    device: Device,
    dtype: DType,
}

impl FluxTransformer {
    /// Builds the transformer from BFL-layout weights (`vb` at the model's root).
    pub fn new(vb: WeightsView, cfg: &FluxConfig) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let h = cfg.hidden_size;
        let img_in = vb.pp("img_in").linear(cfg.in_channels, h, true)?;
        // Biases stay in the compute dtype (fp8 storage only applies to linear weights).
        let bias = vb.pp("img_in").get("bias", &[h])?;
        let (dtype, device) = (bias.dtype(), bias.device().clone());
        Ok(FluxTransformer {
            time_in: MlpEmbedder::new(vb.pp("time_in"), TIME_EMBED_DIM, h)?,
            vector_in: MlpEmbedder::new(vb.pp("vector_in"), cfg.vec_in_dim, h)?,
            guidance_in: if cfg.guidance_embed {
                Some(MlpEmbedder::new(vb.pp("guidance_in"), TIME_EMBED_DIM, h)?)
            } else {
                None
            },
            txt_in: vb.pp("txt_in").linear(cfg.context_in_dim, h, true)?,
            double_blocks: (0..cfg.depth)
                .map(|i| DoubleStreamBlock::new(vb.pp("double_blocks").pp(i), cfg).map(Arc::new))
                .collect::<Result<_>>()?,
            single_blocks: (0..cfg.depth_single_blocks)
                .map(|i| SingleStreamBlock::new(vb.pp("single_blocks").pp(i), cfg).map(Arc::new))
                .collect::<Result<_>>()?,
            final_norm: plain_layer_norm(h, dtype, &device)?,
            final_linear: vb.pp("final_layer.linear").linear(h, cfg.in_channels, true)?,
            final_modulation: vb.pp("final_layer.adaLN_modulation.1").linear(h, 2 * h, true)?,
            img_in,
            cfg: cfg.clone(),
            host_blocks: (0, 0),
            offload_checkpoints: false,
            device,
            dtype,
        })
    }

    /// The model for `device`, with sd-scripts' `blocks_to_swap`: the last N/2 double blocks and
    /// (N − N/2)·2 single blocks stay where the weights were loaded (host memory) and are copied
    /// to `device` each time they run — with gradient checkpointing, in the forward pass and again
    /// in the backward recomputation; a LoRA trains on the compute device, so nothing is copied
    /// back. Everything else moves to `device` now. Refused when more blocks are asked for than
    /// the model has.
    pub fn with_block_swap(self, blocks_to_swap: usize, device: &Device) -> Result<Self> {
        let double = blocks_to_swap / 2;
        let single = (blocks_to_swap - double) * 2;
        if double > self.cfg.depth || single > self.cfg.depth_single_blocks {
            candle_core::bail!(
                "blocks_to_swap = {blocks_to_swap} asks for {double} double and {single} single blocks in host memory; this model has {} and {}",
                self.cfg.depth,
                self.cfg.depth_single_blocks
            )
        }
        let resident_double = self.cfg.depth - double;
        let resident_single = self.cfg.depth_single_blocks - single;
        let h = self.cfg.hidden_size;
        Ok(FluxTransformer {
            img_in: self.img_in.to_device(device)?,
            time_in: self.time_in.to_device(device)?,
            vector_in: self.vector_in.to_device(device)?,
            guidance_in: self.guidance_in.as_ref().map(|g| g.to_device(device)).transpose()?,
            txt_in: self.txt_in.to_device(device)?,
            double_blocks: self
                .double_blocks
                .iter()
                .enumerate()
                .map(|(i, b)| if i < resident_double { b.to_device(device).map(Arc::new) } else { Ok(b.clone()) })
                .collect::<Result<_>>()?,
            single_blocks: self
                .single_blocks
                .iter()
                .enumerate()
                .map(|(i, b)| if i < resident_single { b.to_device(device).map(Arc::new) } else { Ok(b.clone()) })
                .collect::<Result<_>>()?,
            final_norm: plain_layer_norm(h, self.dtype, device)?,
            final_linear: self.final_linear.to_device(device)?,
            final_modulation: self.final_modulation.to_device(device)?,
            host_blocks: (double, single),
            offload_checkpoints: self.offload_checkpoints,
            cfg: self.cfg,
            device: device.clone(),
            dtype: self.dtype,
        })
    }

    /// How many of the last double and single blocks live in host memory.
    pub fn host_blocks(&self) -> (usize, usize) {
        self.host_blocks
    }

    /// The model with sd-scripts' `cpu_offload_checkpointing` on or off: under gradient
    /// checkpointing each block's output goes to host memory and its input comes back to the
    /// device for the block and for its recomputation, so between blocks the backward graph holds
    /// host copies only ([`lorakit_nn::checkpoint::checkpoint_offloaded`]). Nothing changes on a
    /// CPU device.
    pub fn with_checkpoint_offload(mut self, offload: bool) -> Self {
        self.offload_checkpoints = offload;
        self
    }

    /// Whether checkpointed block inputs are kept in host memory.
    pub fn offloads_checkpoints(&self) -> bool {
        self.offload_checkpoints
    }

    /// One block through gradient checkpointing, its saved inputs offloaded when asked.
    fn run_block(&self, inputs: &[&Tensor], ctx: &ForwardCtx, block: BlockFn) -> Result<Tensor> {
        if self.offload_checkpoints {
            checkpoint_offloaded(inputs, ctx, block, &self.device)
        } else {
            checkpoint(inputs, ctx, block)
        }
    }

    /// The configuration.
    pub fn config(&self) -> &FluxConfig {
        &self.cfg
    }

    /// Device of the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The conditioning vector: `time_in(t) [+ guidance_in(g)] + vector_in(y)`.
    pub fn modulation_vector(
        &self,
        timesteps: &Tensor,
        guidance: Option<&Tensor>,
        y: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let mut vec = self.time_in.forward(&timestep_embedding(timesteps, TIME_EMBED_DIM, self.dtype)?, ctx)?;
        if let Some(embedder) = &self.guidance_in {
            let Some(g) = guidance else {
                candle_core::bail!("this Flux model is guidance-distilled (dev): it needs a guidance value")
            };
            vec = (vec + embedder.forward(&timestep_embedding(g, TIME_EMBED_DIM, self.dtype)?, ctx)?)?;
        }
        vec + self.vector_in.forward(&y.to_dtype(self.dtype)?, ctx)?
    }

    /// The velocity prediction for packed latents (B, L_img, in_channels).
    pub fn forward(&self, inputs: &FluxInputs, ctx: &ForwardCtx) -> Result<Tensor> {
        let (b, l_img, c) = inputs.img.dims3()?;
        let (bt, l_txt, ct) = inputs.txt.dims3()?;
        if c != self.cfg.in_channels || ct != self.cfg.context_in_dim || bt != b {
            candle_core::bail!(
                "Flux: latents {:?} and text {:?} do not fit the model (in_channels {}, text width {})",
                inputs.img.dims(),
                inputs.txt.dims(),
                self.cfg.in_channels,
                self.cfg.context_in_dim
            )
        }
        let img = self.img_in.forward(&inputs.img.to_dtype(self.dtype)?, ctx)?;
        let vec = self.modulation_vector(inputs.timesteps, inputs.guidance, inputs.y, ctx)?;
        let txt = self.txt_in.forward(&inputs.txt.to_dtype(self.dtype)?, ctx)?;
        let ids = Tensor::cat(&[inputs.txt_ids, inputs.img_ids], 0)?;
        let rope = Rope::new(&ids, &self.cfg.axes_dim, self.cfg.theta)?.to_device(&self.device)?;
        let key_bias = match inputs.txt_mask {
            Some(mask) => Some(text_key_bias(mask, l_img)?),
            None => None,
        };

        let (mut img, mut txt) = (img, txt);
        let resident_double = self.cfg.depth - self.host_blocks.0;
        let resident_single = self.cfg.depth_single_blocks - self.host_blocks.1;
        for (i, block) in self.double_blocks.iter().enumerate() {
            let (block, rope, bias) = (block.clone(), rope.clone(), key_bias.clone());
            let stream_to = (i >= resident_double).then(|| self.device.clone());
            let f: BlockFn = Arc::new(move |xs: &[Tensor], ctx: &ForwardCtx| {
                // A swapped block's weights come to the device for this call only.
                let streamed = stream_to.as_ref().map(|d| block.to_device(d)).transpose()?;
                let block = streamed.as_ref().unwrap_or(&block);
                let (img, txt) = block.forward(&xs[0], &xs[1], &xs[2], &rope, bias.as_ref(), ctx)?;
                Tensor::cat(&[txt, img], 1)
            });
            let joined = self.run_block(&[&img, &txt, &vec], ctx, f)?;
            txt = joined.narrow(1, 0, l_txt)?;
            img = joined.narrow(1, l_txt, l_img)?;
        }
        let mut x = Tensor::cat(&[txt, img], 1)?;
        for (i, block) in self.single_blocks.iter().enumerate() {
            let (block, rope, bias) = (block.clone(), rope.clone(), key_bias.clone());
            let stream_to = (i >= resident_single).then(|| self.device.clone());
            let f: BlockFn = Arc::new(move |xs: &[Tensor], ctx: &ForwardCtx| {
                let streamed = stream_to.as_ref().map(|d| block.to_device(d)).transpose()?;
                let block = streamed.as_ref().unwrap_or(&block);
                block.forward(&xs[0], &xs[1], &rope, bias.as_ref(), ctx)
            });
            x = self.run_block(&[&x, &vec], ctx, f)?;
        }
        // Offloaded blocks hand their output over in host memory.
        let img = x.to_device(&self.device)?.narrow(1, l_txt, l_img)?;
        let m = self.final_modulation.forward(&silu(&vec)?, ctx)?.unsqueeze(1)?.chunk(2, D::Minus1)?;
        let img = modulate(&self.final_norm.forward(&img)?, &m[0], &m[1])?;
        self.final_linear.forward(&img, ctx)
    }

    /// The LoRA targets of sd-scripts' `networks/lora_flux.py` by default (`train_blocks = all`):
    /// every linear of the double blocks (`img_mod.lin`, `img_attn.qkv`, `img_attn.proj`,
    /// `img_mlp.0`, `img_mlp.2` and the `txt_` ones) and of the single blocks (`linear1`,
    /// `linear2`, `modulation.lin`) — 304 for Flux.1.
    pub fn lora_targets(&self) -> Vec<LoraTarget> {
        let mut out = Vec::new();
        for block in &self.double_blocks {
            for stream in [&block.img, &block.txt] {
                out.extend(stream.linears().iter().map(|l| l.lora_target(TargetGroup::Attention)));
            }
        }
        for block in &self.single_blocks {
            for l in [&block.linear1, &block.linear2, &block.modulation.lin] {
                out.push(l.lora_target(TargetGroup::Attention));
            }
        }
        out
    }

    /// The input layers sd-scripts adapts with `in_dims` (`img_in`, `time_in`, `vector_in`,
    /// `guidance_in`, `txt_in`, in that order; each embedder has two linears).
    pub fn input_lora_targets(&self) -> [Vec<LoraTarget>; 5] {
        let named = |l: &Linear| l.lora_target(TargetGroup::Named);
        let embedder = |e: &MlpEmbedder| vec![named(&e.in_layer), named(&e.out_layer)];
        [
            vec![named(&self.img_in)],
            embedder(&self.time_in),
            embedder(&self.vector_in),
            self.guidance_in.as_ref().map(embedder).unwrap_or_default(),
            vec![named(&self.txt_in)],
        ]
    }
}

/// The additive key bias of a `[text, image]` sequence: 0 for real text tokens and every image
/// token, −∞ (as a boolean SDPA mask) for padded text.
fn text_key_bias(mask: &Tensor, l_img: usize) -> Result<Tensor> {
    let (b, _) = mask.dims2()?;
    let mask = mask.to_dtype(DType::F32)?;
    let bias = ((mask - 1.0)? * 1e9)?; // 0 where kept, −1e9 where padded
    let img = Tensor::zeros((b, l_img), DType::F32, bias.device())?;
    Tensor::cat(&[bias, img], 1)
}

/// Packs latents (B, C, H, W) into 2×2 patch tokens (B, H/2·W/2, 4C), sd-scripts'
/// `pack_latents` (channel-major within a patch).
pub fn pack_latents(latents: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = latents.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!(
            "Flux packs 2×2 latent patches: latent size {h}×{w} must be even (image sides multiples of 16)"
        )
    }
    latents.reshape((b, c, h / 2, 2, w / 2, 2))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b, (h / 2) * (w / 2), c * 4))
}

/// The inverse of [`pack_latents`] for a latent size `h`×`w`.
pub fn unpack_latents(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c4) = x.dims3()?;
    let c = c4 / 4;
    x.reshape((b, h / 2, w / 2, c, 2, 2))?.permute((0, 3, 1, 4, 2, 5))?.reshape((b, c, h, w))
}

/// The position ids of packed `h`×`w` latents: `(0, row, column)` per token, (h/2·w/2, 3).
pub fn image_ids(h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let mut ids = Vec::with_capacity((h / 2) * (w / 2) * 3);
    for y in 0..h / 2 {
        for x in 0..w / 2 {
            ids.extend([0f32, y as f32, x as f32]);
        }
    }
    Tensor::from_vec(ids, ((h / 2) * (w / 2), 3), device)
}
