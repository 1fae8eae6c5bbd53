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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Tensor, D};
use lorakit_nn::activation::{gelu_tanh, silu};
use lorakit_nn::attention::attention_heads;
use lorakit_nn::checkpoint::{checkpoint, BlockFn};
use lorakit_nn::dit::{gated_residual, head_rms_norm, modulate, qk_norm_rope_attention, QkvStream};
use lorakit_nn::lora::{LoraKind, LoraTarget, TargetGroup};
use lorakit_nn::{Conv2d, ForwardCtx, LayerNorm, Linear};
use rand::Rng;

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

    /// SAI's SD3 Medium (`sd3_medium.safetensors`): 24 blocks, 192² positions.
    pub fn sd3_medium() -> Self {
        Self::released(24, 192, false, vec![])
    }

    /// SAI's SD3.5 Medium (MMDiT-X): 24 blocks, 384² positions, q/k norms, a second attention
    /// in blocks 0–12.
    pub fn sd35_medium() -> Self {
        Self::released(24, 384, true, (0..13).collect())
    }

    /// SAI's SD3.5 Large: 38 blocks, 192² positions, q/k norms.
    pub fn sd35_large() -> Self {
        Self::released(38, 192, true, vec![])
    }

    /// A released model's shape: width 64 per block (sd-scripts' and SAI's rule), heads of 64,
    /// MLP ratio 4, CLIP-L+G pooled (2048) and T5-XXL context (4096), 16 latent channels.
    fn released(depth: usize, pos_embed_max_size: usize, qk_norm: bool, x_self_attn_layers: Vec<usize>) -> Self {
        let hidden_size = SD3_HEAD_DIM * depth;
        MmditConfig {
            in_channels: 16,
            patch_size: 2,
            depth,
            hidden_size,
            num_heads: depth,
            mlp_hidden: 4 * hidden_size,
            pos_embed_max_size,
            pooled_dim: 2048,
            context_dim: 4096,
            qk_norm,
            x_self_attn_layers,
        }
    }

    /// [`MmditTransformer::lora_targets`] from the sizes alone (no weights): what a full-size
    /// model's LoRA will hold, for plans and name checks.
    pub fn lora_targets(&self) -> Vec<LoraTarget> {
        let (h, m) = (self.hidden_size, self.mlp_hidden);
        let mut out = Vec::new();
        for b in 0..self.depth {
            for side in ["context_block", "x_block"] {
                let p = format!("joint_blocks.{b}.{side}");
                let pre_only = side == "context_block" && b + 1 == self.depth;
                let attn2 = side == "x_block" && self.x_self_attn_layers.contains(&b);
                out.push(linear_target(format!("{p}.attn.qkv"), h, 3 * h, TargetGroup::Attention));
                if !pre_only {
                    out.push(linear_target(format!("{p}.attn.proj"), h, h, TargetGroup::Attention));
                }
                if attn2 {
                    out.push(linear_target(format!("{p}.attn2.qkv"), h, 3 * h, TargetGroup::Attention));
                    out.push(linear_target(format!("{p}.attn2.proj"), h, h, TargetGroup::Attention));
                }
                if !pre_only {
                    out.push(linear_target(format!("{p}.mlp.fc1"), h, m, TargetGroup::Attention));
                    out.push(linear_target(format!("{p}.mlp.fc2"), m, h, TargetGroup::Attention));
                }
                let mods = if pre_only {
                    2
                } else if attn2 {
                    9
                } else {
                    6
                };
                out.push(linear_target(format!("{p}.adaLN_modulation.1"), h, mods * h, TargetGroup::Attention));
            }
        }
        out
    }

    /// [`MmditTransformer::input_lora_targets`] from the sizes alone, flattened in `emb_dims`
    /// order (context_embedder, t_embedder, x_embedder, y_embedder, final adaLN, final linear).
    pub fn input_lora_targets(&self) -> Vec<LoraTarget> {
        let (h, p) = (self.hidden_size, self.patch_size);
        let named = |path: &str, i: usize, o: usize| linear_target(path.to_string(), i, o, TargetGroup::Named);
        vec![
            named("context_embedder", self.context_dim, h),
            named("t_embedder.mlp.0", TIME_EMBED_DIM, h),
            named("t_embedder.mlp.2", h, h),
            LoraTarget {
                kind: LoraKind::Conv { kernel: p, stride: p, padding: 0 },
                ..named("x_embedder.proj", self.in_channels, h)
            },
            named("y_embedder.mlp.0", self.pooled_dim, h),
            named("y_embedder.mlp.2", h, h),
            named("final_layer.adaLN_modulation.1", h, 2 * h),
            named("final_layer.linear", h, p * p * self.in_channels),
        ]
    }

    /// Every weight's SAI key and shape (the keys [`MmditTransformer::new`] reads).
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, p, d) = (self.hidden_size, self.patch_size, self.head_dim());
        let mut out = vec![
            ("pos_embed".to_string(), vec![1, self.pos_embed_max_size * self.pos_embed_max_size, h]),
            ("x_embedder.proj.weight".to_string(), vec![h, self.in_channels, p, p]),
            ("x_embedder.proj.bias".to_string(), vec![h]),
        ];
        let mut linear = |name: String, i: usize, o: usize| {
            out.push((format!("{name}.weight"), vec![o, i]));
            out.push((format!("{name}.bias"), vec![o]));
        };
        linear("t_embedder.mlp.0".into(), TIME_EMBED_DIM, h);
        linear("t_embedder.mlp.2".into(), h, h);
        linear("y_embedder.mlp.0".into(), self.pooled_dim, h);
        linear("y_embedder.mlp.2".into(), h, h);
        linear("context_embedder".into(), self.context_dim, h);
        for t in self.lora_targets() {
            linear(t.path, t.in_dim, t.out_dim);
        }
        linear("final_layer.linear".into(), h, p * p * self.in_channels);
        linear("final_layer.adaLN_modulation.1".into(), h, 2 * h);
        if self.qk_norm {
            for b in 0..self.depth {
                for side in ["context_block", "x_block"] {
                    let attn2 = side == "x_block" && self.x_self_attn_layers.contains(&b);
                    for a in std::iter::once("attn").chain(attn2.then_some("attn2")) {
                        for n in ["ln_q", "ln_k"] {
                            out.push((format!("joint_blocks.{b}.{side}.{a}.{n}.weight"), vec![d]));
                        }
                    }
                }
            }
        }
        out
    }
}

/// A linear LoRA target at `path`.
fn linear_target(path: String, in_dim: usize, out_dim: usize, group: TargetGroup) -> LoraTarget {
    LoraTarget { path, kohya_path: None, kind: LoraKind::Linear, in_dim, out_dim, group }
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

/// How much larger than its latent size sd-scripts makes each scaled position grid
/// (`MMDiT.POS_EMBED_MAX_RATIO`).
const POS_EMBED_MAX_RATIO: f64 = 1.5;
/// `get_scaled_2d_sincos_pos_embed`'s `base_size`: the grid the released model was trained on
/// (in patches) spans 16 units of position.
const SCALED_POS_BASE_SIZE: f64 = 16.0;
/// The latent stride sd-scripts divides resolutions by for the scaled tables (the SD3 VAE's 8,
/// hard-coded in `sd3_train_network.py`).
const SCALED_POS_LATENT_STRIDE: usize = 8;

/// sd-scripts' `get_scaled_2d_sincos_pos_embed(dim, grid, sample_size=sample_size)`: a
/// `grid`×`grid` sinusoidal position table (grid², `dim`) whose central `sample_size`² patches
/// span the 16 position units of the model's training grid, f32. Computed as numpy does: the
/// grid coordinates in f32, the sines and cosines in f64. Each position is
/// `[sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)]` (x the column) with `ω_i = 10000^(−i/(dim/4))`.
pub fn scaled_sincos_pos_embed(dim: usize, grid: usize, sample_size: usize, device: &Device) -> Result<Tensor> {
    if dim % 4 != 0 || grid == 0 || sample_size == 0 {
        candle_core::bail!(
            "scaled position table: width {dim} must be a multiple of 4, grid {grid} and size {sample_size} positive"
        )
    }
    let g = grid as f64;
    let scale = SCALED_POS_BASE_SIZE * g / sample_size as f64;
    let shift = scale * (g - sample_size as f64) / (2.0 * g);
    // numpy: (arange(f32) / grid) * scale − shift, all in f32 (the Python floats are cast).
    let coords: Vec<f32> = (0..grid).map(|i| (i as f32 / grid as f32) * scale as f32 - shift as f32).collect();
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|i| 1.0 / 10_000f64.powf(i as f64 / quarter as f64)).collect();
    let encode = |pos: f32, out: &mut Vec<f32>| {
        let pos = pos as f64;
        out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
        out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
    };
    let mut data = Vec::with_capacity(grid * grid * dim);
    for &y in &coords {
        for &x in &coords {
            encode(x, &mut data);
            encode(y, &mut data);
        }
    }
    Tensor::from_vec(data, (grid * grid, dim), device)
}

/// sd-scripts' `resolution_area_to_latent_size` for `latent_sizes` (latent pixels, any order,
/// duplicates dropped): `(largest area in patches, patched size)` sorted by size — an image of
/// `h·w` patches takes the first size whose area bound it does not exceed. Bounds lie halfway
/// (in area) between neighbouring sizes; the last is `⌊(1.5·size)²⌋`.
pub fn resolution_area_to_latent_size(latent_sizes: &[usize], patch_size: usize) -> Vec<(usize, usize)> {
    let mut sizes = latent_sizes.to_vec();
    sizes.sort_unstable();
    sizes.dedup();
    // Latent sizes in one patch step share a patched size; sd-scripts keeps the repeats.
    let patched: Vec<usize> = sizes.iter().map(|s| s / patch_size).collect();
    (0..patched.len())
        .map(|i| {
            let bound = match patched.get(i + 1) {
                Some(next) => (patched[i] * patched[i] + next * next) / 2,
                None => (patched[i] as f64 * POS_EMBED_MAX_RATIO).powi(2) as usize,
            };
            (bound, patched[i])
        })
        .collect()
}

/// The latent sizes sd-scripts' `load_target_model` prepares scaled tables for, from the
/// datasets' `(width, height)` resolutions: `round(√(w·h)) // 8`, duplicates dropped.
pub fn scaled_pos_embed_latent_sizes(resolutions: &[(usize, usize)]) -> Vec<usize> {
    let mut sizes: Vec<usize> = resolutions
        .iter()
        .map(|&(w, h)| ((w as f64 * h as f64).sqrt().round() as usize) / SCALED_POS_LATENT_STRIDE)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Where an image's position table is cut from the grid.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum PosCrop {
    /// The centre, `((N − h) // 2, (N − w) // 2)` (sd-scripts without random cropping).
    #[default]
    Centre,
    /// sd-scripts' random crop, from two draws in [0, 1): top `⌊u_top·(N − h + 1)⌋`, left
    /// likewise — resolved once the table side N is known (scaled tables differ per size).
    Random { u_top: f64, u_left: f64 },
    /// A given top-left corner (an error when the image does not fit there).
    At { top: usize, left: usize },
}

impl PosCrop {
    /// sd-scripts' `pos_emb_random_crop_rate` draw: once per forward call for the whole batch,
    /// a random crop with probability `rate`, else the centre. A rate of 0 draws nothing (as
    /// sd-scripts). sd-scripts draws this in every forward, sampling included.
    pub fn draw(rate: f64, rng: &mut impl Rng) -> Self {
        if rate == 0.0 || rng.random::<f64>() >= rate {
            return PosCrop::Centre;
        }
        PosCrop::Random { u_top: rng.random(), u_left: rng.random() }
    }

    /// The top-left corner of an `h`×`w` crop of an `n`×`n` grid (`h`, `w` ≤ `n`).
    fn corner(self, n: usize, h: usize, w: usize) -> Result<(usize, usize)> {
        if h > n || w > n {
            candle_core::bail!("{h}×{w} patches do not fit the {n}×{n} position grid")
        }
        let pick = |u: f64, len: usize| ((u * (n - len + 1) as f64) as usize).min(n - len);
        match self {
            PosCrop::Centre => Ok(((n - h) / 2, (n - w) / 2)),
            PosCrop::Random { u_top, u_left } => Ok((pick(u_top, h), pick(u_left, w))),
            PosCrop::At { top, left } if top + h <= n && left + w <= n => Ok((top, left)),
            PosCrop::At { top, left } => {
                candle_core::bail!("position crop at ({top}, {left}) of {h}×{w} patches leaves the {n}×{n} grid")
            }
        }
    }
}

/// sd-scripts' scaled position tables (`enable_scaled_pos_embed`): one per patched size, grown
/// by [`MmditTransformer::pos_embed`] when an image is too tall or wide for its table.
#[derive(Debug)]
struct ScaledPosEmbed {
    /// `(largest area, patched size)`, sorted ([`resolution_area_to_latent_size`]).
    area_to_size: Vec<(usize, usize)>,
    /// Patched size → its (grid², W) f32 table.
    tables: HashMap<usize, Tensor>,
}

/// An `h`×`w` crop of the square (n², W) table `table` at `crop`, (h·w, W).
fn crop_grid(table: &Tensor, h: usize, w: usize, crop: PosCrop) -> Result<Tensor> {
    let (positions, width) = table.dims2()?;
    let n = (positions as f64).sqrt().round() as usize;
    let (top, left) = crop.corner(n, h, w)?;
    table.reshape((n, n, width))?.narrow(0, top, h)?.narrow(1, left, w)?.reshape((h * w, width))
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

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Embedder { fc1: self.fc1.to_device(device)?, fc2: self.fc2.to_device(device)? })
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

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Attention {
            qkv: self.qkv.to_device(device)?,
            proj: self.proj.as_ref().map(|p| p.to_device(device)).transpose()?,
            norms: match &self.norms {
                Some((q, k)) => Some((q.to_device(device)?, k.to_device(device)?)),
                None => None,
            },
            heads: self.heads,
        })
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

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Mlp { fc1: self.fc1.to_device(device)?, fc2: self.fc2.to_device(device)? })
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

    /// The side with its weights copied to `device`; its affine-free norms (of `width` features
    /// in `dtype`) are made there.
    fn to_device(&self, device: &Device, width: usize, dtype: DType) -> Result<Self> {
        Ok(DitSide {
            norm1: plain_layer_norm(width, dtype, device)?,
            attn: self.attn.to_device(device)?,
            attn2: self.attn2.as_ref().map(|a| a.to_device(device)).transpose()?,
            mlp: match &self.mlp {
                Some((_, mlp)) => Some((plain_layer_norm(width, dtype, device)?, mlp.to_device(device)?)),
                None => None,
            },
            modulation: self.modulation.to_device(device)?,
        })
    }
}

/// One joint block: text (`context_block`) and image (`x_block`) sides attending together.
#[derive(Clone, Debug)]
pub struct JointBlock {
    context: DitSide,
    x: DitSide,
    heads: usize,
    /// Token width and compute dtype (the norms are rebuilt from them on a device move).
    width: usize,
    dtype: DType,
}

impl JointBlock {
    fn new(vb: WeightsView, cfg: &MmditConfig, index: usize, like: &Tensor) -> Result<Self> {
        let pre_only = index + 1 == cfg.depth;
        Ok(JointBlock {
            context: DitSide::new(vb.pp("context_block"), cfg, pre_only, false, like)?,
            x: DitSide::new(vb.pp("x_block"), cfg, false, cfg.x_self_attn_layers.contains(&index), like)?,
            heads: cfg.num_heads,
            width: cfg.hidden_size,
            dtype: like.dtype(),
        })
    }

    /// The block with its weights copied to `device` (block swapping).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(JointBlock {
            context: self.context.to_device(device, self.width, self.dtype)?,
            x: self.x.to_device(device, self.width, self.dtype)?,
            heads: self.heads,
            width: self.width,
            dtype: self.dtype,
        })
    }

    /// Whether this is the last block, whose context side stops after attention.
    fn pre_only(&self) -> bool {
        self.context.mlp.is_none()
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
        let context_in = modulate(&self.context.norm1.forward(context)?, &cm[0], &cm[1])?;
        let x_norm = self.x.norm1.forward(x)?;
        let x_in = modulate(&x_norm, &xm[0], &xm[1])?;
        let l_ctx = context.dim(1)?;
        let l_x = x.dim(1)?;
        let scale = 1.0 / ((self.width / self.heads) as f64).sqrt();
        let attn = match (&self.context.attn.norms, &self.x.attn.norms) {
            // SD3.5's q/k norms on the CPU in f32: norms and joint attention in lorakit-nn's one
            // op (Flux's, with the identity rotation, exact: x·1 − y·0), which keeps no composed
            // norm intermediates and no joined q/k/v copies (a 2-block SD3.5 Large LoRA step at
            // 1024 px: peak 6.1 → 4.9 GB, BENCHMARKS.md).
            (Some((cnq, cnk)), Some((xnq, xnk))) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                let c_qkv = self.context.attn.qkv.forward(&context_in, ctx)?;
                let x_qkv = self.x.attn.qkv.forward(&x_in, ctx)?;
                let half = self.width / self.heads / 2;
                let cos = Tensor::ones((l_ctx + l_x, half), DType::F32, x.device())?;
                let sin = cos.zeros_like()?;
                let streams = [
                    QkvStream { qkv: &c_qkv, q_scale: cnq, k_scale: cnk },
                    QkvStream { qkv: &x_qkv, q_scale: xnq, k_scale: xnk },
                ];
                qk_norm_rope_attention(&streams, &cos, &sin, self.heads, NORM_EPS, None)?
            }
            _ => {
                let [cq, ck, cv] = self.context.attn.pre(&context_in, ctx)?;
                let [xq, xk, xv] = self.x.attn.pre(&x_in, ctx)?;
                let joined = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 1)?.contiguous();
                attention_heads(&joined(&cq, &xq)?, &joined(&ck, &xk)?, &joined(&cv, &xv)?, self.heads, scale)?
            }
        };
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
    /// Where the position table is cut ([`PosCrop::draw`] for `pos_emb_random_crop_rate`).
    pub pos_crop: PosCrop,
}

impl<'a> MmditInputs<'a> {
    /// Inputs with the centred position table.
    pub fn new(x: &'a Tensor, timesteps: &'a Tensor, pooled: &'a Tensor, context: &'a Tensor) -> Self {
        MmditInputs { x, timesteps, pooled, context, pos_crop: PosCrop::Centre }
    }
}

/// The SD3 / SD3.5 transformer.
#[derive(Clone, Debug)]
pub struct MmditTransformer {
    cfg: MmditConfig,
    x_embedder: Conv2d,
    pos_embed: Tensor,
    /// Scaled position tables instead of `pos_embed` (shared by clones: sd-scripts' one model
    /// grows its tables as images arrive).
    scaled_pos_embed: Option<Arc<Mutex<ScaledPosEmbed>>>,
    t_embedder: Embedder,
    y_embedder: Embedder,
    context_embedder: Linear,
    /// Shared with clones and with the checkpointed block closures.
    blocks: Vec<Arc<JointBlock>>,
    final_norm: LayerNorm,
    final_modulation: Linear,
    final_linear: Linear,
    /// How many of the last joint blocks stay in host memory (block swapping).
    host_blocks: usize,
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
                .map(|i| JointBlock::new(vb.pp("joint_blocks").pp(i), cfg, i, &pos_embed).map(Arc::new))
                .collect::<Result<_>>()?,
            final_norm: plain_layer_norm(h, dtype, &device)?,
            final_modulation: vb.pp("final_layer.adaLN_modulation.1").linear(h, 2 * h, true)?,
            final_linear: vb.pp("final_layer.linear").linear(h, p * p * cfg.in_channels, true)?,
            pos_embed,
            scaled_pos_embed: None,
            cfg: cfg.clone(),
            host_blocks: 0,
            dtype,
        })
    }

    /// The model for `device`, with sd-scripts' `blocks_to_swap` (`MMDiT.enable_block_swap`):
    /// the last `blocks_to_swap` joint blocks stay where the weights were loaded (host memory)
    /// and are copied to `device` each time they run — with gradient checkpointing, in the
    /// forward pass and again in the backward recomputation; a LoRA trains on the compute
    /// device, so nothing is copied back. Everything else moves to `device` now. As in
    /// sd-scripts, at most depth − 2 blocks may be swapped.
    pub fn with_block_swap(self, blocks_to_swap: usize, device: &Device) -> Result<Self> {
        let depth = self.cfg.depth;
        let max = depth.saturating_sub(2);
        if blocks_to_swap > max {
            candle_core::bail!(
                "blocks_to_swap = {blocks_to_swap}: this MMDiT has {depth} joint blocks, and sd-scripts swaps at most depth − 2 — \"Cannot swap more than {max} blocks. Requested: {blocks_to_swap} blocks.\"; lower accelerate.blocks_to_swap (--blocks-to-swap) to {max} or less"
            )
        }
        let resident = depth - blocks_to_swap;
        let h = self.cfg.hidden_size;
        let conv = self.x_embedder.frozen();
        let x_embedder = Conv2d::new(
            self.x_embedder.path(),
            conv.weight().to_device(device)?,
            conv.bias().map(|b| b.to_device(device)).transpose()?,
            conv.stride(),
            conv.padding(),
        )?;
        let scaled_pos_embed = match &self.scaled_pos_embed {
            Some(state) => {
                let state = state.lock().unwrap_or_else(|e| e.into_inner());
                let tables = state.tables.iter().map(|(&k, t)| Ok((k, t.to_device(device)?))).collect::<Result<_>>()?;
                Some(Arc::new(Mutex::new(ScaledPosEmbed { area_to_size: state.area_to_size.clone(), tables })))
            }
            None => None,
        };
        Ok(MmditTransformer {
            x_embedder,
            pos_embed: self.pos_embed.to_device(device)?,
            scaled_pos_embed,
            t_embedder: self.t_embedder.to_device(device)?,
            y_embedder: self.y_embedder.to_device(device)?,
            context_embedder: self.context_embedder.to_device(device)?,
            blocks: self
                .blocks
                .iter()
                .enumerate()
                .map(|(i, b)| if i < resident { b.to_device(device).map(Arc::new) } else { Ok(b.clone()) })
                .collect::<Result<_>>()?,
            final_norm: plain_layer_norm(h, self.dtype, device)?,
            final_modulation: self.final_modulation.to_device(device)?,
            final_linear: self.final_linear.to_device(device)?,
            host_blocks: blocks_to_swap,
            cfg: self.cfg,
            dtype: self.dtype,
        })
    }

    /// How many of the last joint blocks live in host memory ([`Self::with_block_swap`]).
    pub fn host_blocks(&self) -> usize {
        self.host_blocks
    }

    /// sd-scripts' `enable_scaled_pos_embed` (`--enable_scaled_pos_embed`, meant for SD3.5
    /// Medium): position tables computed per image size instead of cut from the learned grid.
    /// `latent_sizes` (latent pixels; [`scaled_pos_embed_latent_sizes`] makes them from the
    /// datasets' resolutions as sd-scripts' trainer does) each get a sinusoidal table 1.5× their
    /// patched size ([`scaled_sincos_pos_embed`]); an image takes the table its patch area
    /// selects ([`resolution_area_to_latent_size`]). sd-scripts' model keeps these for sampling
    /// too, so sample images see the same tables.
    pub fn with_scaled_pos_embed(mut self, latent_sizes: &[usize]) -> Result<Self> {
        let p = self.cfg.patch_size;
        if latent_sizes.is_empty() || latent_sizes.iter().any(|&s| s < p) {
            candle_core::bail!(
                "scaled position embeddings need the datasets' latent sizes, each at least the patch size {p} (got {latent_sizes:?})"
            )
        }
        let area_to_size = resolution_area_to_latent_size(latent_sizes, p);
        let mut tables = HashMap::new();
        for &(_, size) in &area_to_size {
            let grid = (size as f64 * POS_EMBED_MAX_RATIO) as usize;
            tables.insert(size, scaled_sincos_pos_embed(self.cfg.hidden_size, grid, size, self.pos_embed.device())?);
        }
        self.scaled_pos_embed = Some(Arc::new(Mutex::new(ScaledPosEmbed { area_to_size, tables })));
        Ok(self)
    }

    /// The scaled tables' `(largest area, patched size)` list, as it stands (it grows when an
    /// image needed a larger table); `None` without scaled position embeddings.
    pub fn scaled_pos_embed_sizes(&self) -> Option<Vec<(usize, usize)>> {
        let state = self.scaled_pos_embed.as_ref()?;
        Some(state.lock().unwrap_or_else(|p| p.into_inner()).area_to_size.clone())
    }

    /// The configuration.
    pub fn config(&self) -> &MmditConfig {
        &self.cfg
    }

    /// The compute dtype (of the position table, never stored in fp8).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.pos_embed.device()
    }

    /// The position table of an `h`×`w`-patch image: the centre crop of the learned grid
    /// (SAI's `cropped_pos_embed` without random cropping), (h·w, W).
    pub fn cropped_pos_embed(&self, h: usize, w: usize) -> Result<Tensor> {
        self.learned_pos_embed(h, w, PosCrop::Centre)
    }

    /// An `h`×`w` crop of the learned grid at `crop`; an image larger than the grid is refused.
    fn learned_pos_embed(&self, h: usize, w: usize, crop: PosCrop) -> Result<Tensor> {
        let max = self.cfg.pos_embed_max_size;
        if h > max || w > max {
            candle_core::bail!(
                "the latent is {h}×{w} patches; this model's position table covers {max}×{max} ({} px at most per side)",
                max * self.cfg.patch_size * 8
            )
        }
        crop_grid(&self.pos_embed.reshape((max * max, self.cfg.hidden_size))?, h, w, crop)
    }

    /// The position table of an `h`×`w`-patch image (h·w, W) in the model's dtype: cut at
    /// `crop` from the learned grid, or, with [`Self::with_scaled_pos_embed`], from the scaled
    /// table sd-scripts' `cropped_scaled_pos_embed` picks: the first whose area bound `h·w` does
    /// not exceed (else the largest); when `h` or `w` exceeds that table's side, a new table of
    /// size max(h, w) is made and kept, its area bound (its grid²) joining the list — so later
    /// images may pick it, as in sd-scripts.
    ///
    /// sd-scripts computes the patched size as `(H + 1) // p`; [`Self::forward`] takes only
    /// sides that are multiples of p, where that is `H / p` (odd sides fail in sd-scripts too,
    /// the patch embedding giving ⌊H / p⌋ tokens).
    pub fn pos_embed(&self, h: usize, w: usize, crop: PosCrop) -> Result<Tensor> {
        let Some(state) = &self.scaled_pos_embed else { return self.learned_pos_embed(h, w, crop) };
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        let area = h * w;
        let last = state.area_to_size.last().map(|&(_, s)| s);
        let Some(mut size) = state.area_to_size.iter().find(|&&(a, _)| area <= a).map(|&(_, s)| s).or(last) else {
            candle_core::bail!("internal: no scaled position table")
        };
        let table_side = |size: usize| (size as f64 * POS_EMBED_MAX_RATIO) as usize;
        if h > table_side(size) || w > table_side(size) {
            size = h.max(w);
            let grid = table_side(size);
            tracing::warn!("adding a {grid}×{grid} scaled position table for a {h}×{w}-patch image (too tall or wide)");
            let table = scaled_sincos_pos_embed(self.cfg.hidden_size, grid, size, self.pos_embed.device())?;
            state.tables.insert(size, table);
            state.area_to_size.push((grid * grid, size));
            state.area_to_size.sort_unstable();
        }
        let Some(table) = state.tables.get(&size) else { candle_core::bail!("internal: no scaled table for {size}") };
        crop_grid(table, h, w, crop)?.to_dtype(self.dtype)
    }

    /// The conditioning vector `t_embedder(t) + y_embedder(pooled)` (B, W).
    pub fn conditioning(&self, timesteps: &Tensor, pooled: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let t = self.t_embedder.forward(&timestep_embedding(timesteps, TIME_EMBED_DIM, self.dtype)?, ctx)?;
        t + self.y_embedder.forward(&pooled.to_dtype(self.dtype)?, ctx)?
    }

    /// The prediction for latents (B, C, H, W), same shape. Each joint block runs through
    /// gradient checkpointing when `ctx` asks for it (sd-scripts' `JointBlock.forward`).
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
        let mut x =
            patches.flatten_from(2)?.transpose(1, 2)?.broadcast_add(&self.pos_embed(h, w, inputs.pos_crop)?)?;
        let cond = self.conditioning(inputs.timesteps, inputs.pooled, ctx)?;
        let mut context = Some(self.context_embedder.forward(&inputs.context.to_dtype(self.dtype)?, ctx)?);
        let resident = self.cfg.depth - self.host_blocks;
        for (i, block) in self.blocks.iter().enumerate() {
            let Some(text) = context.as_ref() else { candle_core::bail!("internal: a block after the pre-only one") };
            let (l_ctx, l_x, pre_only) = (text.dim(1)?, x.dim(1)?, block.pre_only());
            let block = block.clone();
            let stream_to = (i >= resident).then(|| self.device().clone());
            // One tensor out for gradient checkpointing: [context, x] along the tokens, or x alone
            // after the pre-only block.
            let f: BlockFn = Arc::new(move |xs: &[Tensor], ctx: &ForwardCtx| {
                // A swapped block's weights come to the device for this call only (and again for
                // the backward recomputation, which calls this closure once more).
                let streamed = stream_to.as_ref().map(|d| block.to_device(d)).transpose()?;
                let block = streamed.as_ref().unwrap_or(&block);
                match block.forward(&xs[0], &xs[1], &xs[2], ctx)? {
                    (Some(context), x) => Tensor::cat(&[context, x], 1),
                    (None, x) => Ok(x),
                }
            });
            let out = checkpoint(&[text, &x, &cond], ctx, f)?;
            let (next, xs) =
                if pre_only { (None, out) } else { (Some(out.narrow(1, 0, l_ctx)?), out.narrow(1, l_ctx, l_x)?) };
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

    /// The layers sd-scripts adapts with `emb_dims`, in its order: `context_embedder`,
    /// `t_embedder.mlp.0/2`, `x_embedder.proj` (the p×p stride-p patch conv: a LoCon module,
    /// down p×p stride p, up 1×1, as sd-scripts' `LoRAModule` makes for a Conv2d),
    /// `y_embedder.mlp.0/2`, `final_layer.adaLN_modulation.1`, `final_layer.linear`.
    pub fn input_lora_targets(&self) -> [Vec<LoraTarget>; 6] {
        let named = |l: &Linear| l.lora_target(TargetGroup::Named);
        let embedder = |e: &Embedder| vec![named(&e.fc1), named(&e.fc2)];
        [
            vec![named(&self.context_embedder)],
            embedder(&self.t_embedder),
            vec![self.x_embedder.lora_target(TargetGroup::Named)],
            embedder(&self.y_embedder),
            vec![named(&self.final_modulation)],
            vec![named(&self.final_linear)],
        ]
    }
}
