//! Florence-2's DaViT vision tower (`Florence2VisionBackbone`) and multi-modal projector
//! (`Florence2MultiModalProjector`), ported from transformers 5.25 `modeling_florence2.py`.
//!
//! Weight paths mirror the checkpoint: `model.vision_tower.convs.{s}.{conv,norm}`,
//! `model.vision_tower.blocks.{s}.{i}.{spatial_block,channel_block}.{conv1,norm1,window_attn |
//! channel_attn.{qkv,proj},conv2,norm2,ffn.{fc1,fc2}}` and `model.multi_modal_projector.{
//! image_position_embed.{row,column}_embeddings, visual_temporal_embed.pos_idx_to_embed,
//! image_projection, image_proj_norm}`.

use candle_core::{Result as CResult, Tensor, D};
use lorakit_nn::norm::LayerNorm;
use lorakit_nn::{FrozenConv2d, FrozenLinear};
use serde_json::Value;

use super::{bool_or, usize_list, usize_or, Florence2Error, Result, Weights};

/// What `vision_config` states.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Patch-embedding kernel per stage.
    pub patch_size: Vec<usize>,
    /// Patch-embedding stride per stage.
    pub patch_stride: Vec<usize>,
    /// Patch-embedding padding per stage.
    pub patch_padding: Vec<usize>,
    /// LayerNorm before (true) or after (false) each patch-embedding conv.
    pub patch_prenorm: Vec<bool>,
    /// Width per stage.
    pub embed_dim: Vec<usize>,
    /// Window-attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Channel-attention groups per stage.
    pub num_groups: Vec<usize>,
    /// Spatial attention window side.
    pub window_size: usize,
    /// MLP hidden width / width.
    pub mlp_ratio: f64,
    /// Bias on the qkv projections.
    pub qkv_bias: bool,
    /// Text width the projector maps to.
    pub projection_dim: usize,
    /// Rows/columns of the learned 2-D position embedding.
    pub max_position_embeddings: usize,
    /// Length of the sinusoidal temporal table.
    pub max_temporal_embeddings: usize,
}

impl VisionConfig {
    /// Reads `vision_config` (transformers' `Florence2VisionConfig` defaults for absent keys).
    pub fn from_config(c: &Value) -> Result<Self> {
        let list_or = |key: &str, default: &[usize]| -> Result<Vec<usize>> {
            if c.get(key).is_some() {
                usize_list(c, key)
            } else {
                Ok(default.to_vec())
            }
        };
        let patch_prenorm = match c.get("patch_prenorm") {
            None => vec![false, true, true, true],
            Some(v) => v.as_array().and_then(|a| a.iter().map(Value::as_bool).collect::<Option<Vec<_>>>()).ok_or_else(
                || Florence2Error::Config("vision_config.patch_prenorm must be a list of booleans".into()),
            )?,
        };
        let act = c.get("activation_function").and_then(Value::as_str).unwrap_or("gelu");
        if act != "gelu" {
            return Err(Florence2Error::Config(format!(
                "vision_config.activation_function `{act}` is not supported (gelu)"
            )));
        }
        let cfg = VisionConfig {
            in_channels: usize_or(c, "in_channels", Some(3))?,
            depths: list_or("depths", &[1, 1, 9, 1])?,
            patch_size: list_or("patch_size", &[7, 3, 3, 3])?,
            patch_stride: list_or("patch_stride", &[4, 2, 2, 2])?,
            patch_padding: list_or("patch_padding", &[3, 1, 1, 1])?,
            patch_prenorm,
            embed_dim: list_or("embed_dim", &[128, 256, 512, 1024])?,
            num_heads: list_or("num_heads", &[4, 8, 16, 32])?,
            num_groups: list_or("num_groups", &[4, 8, 16, 32])?,
            window_size: usize_or(c, "window_size", Some(12))?,
            mlp_ratio: c.get("mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0),
            qkv_bias: bool_or(c, "qkv_bias", true)?,
            projection_dim: usize_or(c, "projection_dim", Some(1024))?,
            max_position_embeddings: usize_or(c, "max_position_embeddings", Some(50))?,
            max_temporal_embeddings: usize_or(c, "max_temporal_embeddings", Some(100))?,
        };
        let n = cfg.embed_dim.len();
        let lens = [
            cfg.depths.len(),
            cfg.patch_size.len(),
            cfg.patch_stride.len(),
            cfg.patch_padding.len(),
            cfg.patch_prenorm.len(),
            cfg.num_heads.len(),
            cfg.num_groups.len(),
        ];
        if n == 0 || lens.iter().any(|&l| l != n) {
            return Err(Florence2Error::Config(format!(
                "vision_config lists have different lengths (embed_dim {n}, depths/patch_*/num_heads/num_groups {lens:?})"
            )));
        }
        for s in 0..n {
            let d = cfg.embed_dim[s];
            if cfg.num_heads[s] == 0
                || d % cfg.num_heads[s] != 0
                || cfg.num_groups[s] == 0
                || d % cfg.num_groups[s] != 0
            {
                return Err(Florence2Error::Config(format!(
                    "vision stage {s}: embed_dim {d} is not divisible by num_heads {} and num_groups {}",
                    cfg.num_heads[s], cfg.num_groups[s]
                )));
            }
        }
        if cfg.window_size == 0 {
            return Err(Florence2Error::Config("vision_config.window_size must be at least 1".into()));
        }
        Ok(cfg)
    }
}

/// A depthwise 3×3 convolution (padding 1) with bias: nine shifted multiply-adds, which beat a
/// grouped convolution with one channel per group on the CPU.
struct DepthwiseConv {
    /// (C, 1, 3, 3).
    weight: Tensor,
    /// (1, C, 1, 1).
    bias: Tensor,
}

impl DepthwiseConv {
    fn load(w: &Weights, path: &str, dim: usize) -> Result<Self> {
        Ok(DepthwiseConv {
            weight: w.get(&format!("{path}.weight"), &[dim, 1, 3, 3])?,
            bias: w.get(&format!("{path}.bias"), &[dim])?.reshape((1, dim, 1, 1))?,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        let mut out = self.bias.broadcast_as(x.shape())?.contiguous()?;
        for i in 0..3 {
            for j in 0..3 {
                let tap = self.weight.narrow(2, i, 1)?.narrow(3, j, 1)?.reshape((1, c, 1, 1))?;
                let shifted = padded.narrow(2, i, h)?.narrow(3, j, w)?;
                out = (out + shifted.broadcast_mul(&tap)?)?;
            }
        }
        Ok(out)
    }
}

struct Mlp {
    fc1: FrozenLinear,
    fc2: FrozenLinear,
}

impl Mlp {
    fn load(w: &Weights, path: &str, dim: usize, ratio: f64) -> Result<Self> {
        let hidden = (dim as f64 * ratio) as usize;
        Ok(Mlp {
            fc1: w.linear(&format!("{path}.fc1"), dim, hidden, true)?,
            fc2: w.linear(&format!("{path}.fc2"), hidden, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        self.fc2.forward(&lorakit_nn::activation::gelu(&self.fc1.forward(x)?)?)
    }
}

/// Which attention a half-block runs.
enum Mixer {
    /// Multi-head attention inside non-overlapping windows (zero-padded to whole windows; the
    /// padding takes part as keys, as in transformers).
    Window { heads: usize, window: usize },
    /// Attention between the channels of each group, over all positions.
    Channel { groups: usize },
}

/// `spatial_block` or `channel_block`: conv position encoding + attention, conv + FFN.
struct HalfBlock {
    conv1: DepthwiseConv,
    norm1: LayerNorm,
    qkv: FrozenLinear,
    proj: FrozenLinear,
    conv2: DepthwiseConv,
    norm2: LayerNorm,
    ffn: Mlp,
    mixer: Mixer,
}

impl HalfBlock {
    fn load(w: &Weights, path: &str, attn: &str, c: &VisionConfig, stage: usize, mixer: Mixer) -> Result<Self> {
        let d = c.embed_dim[stage];
        Ok(HalfBlock {
            conv1: DepthwiseConv::load(w, &format!("{path}.conv1"), d)?,
            norm1: w.layer_norm(&format!("{path}.norm1"), d)?,
            qkv: w.linear(&format!("{path}.{attn}.qkv"), d, 3 * d, c.qkv_bias)?,
            proj: w.linear(&format!("{path}.{attn}.proj"), d, d, true)?,
            conv2: DepthwiseConv::load(w, &format!("{path}.conv2"), d)?,
            norm2: w.layer_norm(&format!("{path}.norm2"), d)?,
            ffn: Mlp::load(w, &format!("{path}.ffn"), d, c.mlp_ratio)?,
            mixer,
        })
    }

    /// (B, C, H, W) → (B, C, H, W).
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let x = (self.conv1.forward(x)? + x)?;
        let tokens = x.flatten_from(2)?.transpose(1, 2)?.contiguous()?; // (B, HW, C)
        let y = self.norm1.forward(&tokens)?;
        let y = match self.mixer {
            Mixer::Window { heads, window } => self.window_attention(&y, b, h, w, heads, window)?,
            Mixer::Channel { groups } => self.channel_attention(&y, groups)?,
        };
        let tokens = (tokens + y)?;
        let x = tokens.transpose(1, 2)?.reshape((b, c, h, w))?;
        let x = (self.conv2.forward(&x)? + &x)?;
        let tokens = x.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let tokens = (&tokens + self.ffn.forward(&self.norm2.forward(&tokens)?)?)?;
        tokens.transpose(1, 2)?.reshape((b, c, h, w))
    }

    fn window_attention(&self, y: &Tensor, b: usize, h: usize, w: usize, heads: usize, ws: usize) -> CResult<Tensor> {
        let c = y.dim(D::Minus1)?;
        let pad_b = (ws - h % ws) % ws;
        let pad_r = (ws - w % ws) % ws;
        let y = y.reshape((b, h, w, c))?.pad_with_zeros(1, 0, pad_b)?.pad_with_zeros(2, 0, pad_r)?;
        let (hp, wp) = (h + pad_b, w + pad_r);
        let (nh, nw) = (hp / ws, wp / ws);
        let windows = y.reshape((b, nh, ws, nw, ws, c))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?.reshape((
            b * nh * nw,
            ws * ws,
            c,
        ))?;
        let qkv = self.qkv.forward(&windows)?;
        let q = qkv.narrow(D::Minus1, 0, c)?.contiguous()?;
        let k = qkv.narrow(D::Minus1, c, c)?.contiguous()?;
        let v = qkv.narrow(D::Minus1, 2 * c, c)?.contiguous()?;
        let scale = 1.0 / ((c / heads) as f64).sqrt();
        let a = lorakit_nn::attention::attention_heads(&q, &k, &v, heads, scale)?;
        let a = self.proj.forward(&a)?;
        a.reshape((b, nh, nw, ws, ws, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .contiguous()?
            .reshape((b, hp, wp, c))?
            .narrow(1, 0, h)?
            .narrow(2, 0, w)?
            .contiguous()?
            .reshape((b, h * w, c))
    }

    fn channel_attention(&self, y: &Tensor, groups: usize) -> CResult<Tensor> {
        let (b, n, c) = y.dims3()?;
        let cg = c / groups;
        let qkv = self.qkv.forward(y)?;
        // (B, N, C) → (B·G, C/G, N): the "tokens" are the channels of a group.
        let split = |i: usize| -> CResult<Tensor> {
            qkv.narrow(D::Minus1, i * c, c)?
                .reshape((b, n, groups, cg))?
                .permute((0, 2, 3, 1))?
                .contiguous()?
                .reshape((b * groups, cg, n))
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scale = 1.0 / (n as f64).sqrt();
        let a = lorakit_nn::attention::attention(&q, &k, &v, scale)?; // (B·G, C/G, N)
        let a = a.reshape((b, groups, cg, n))?.permute((0, 3, 1, 2))?.contiguous()?.reshape((b, n, c))?;
        self.proj.forward(&a)
    }
}

/// `Florence2VisionConvEmbed`: a strided conv with a LayerNorm before or after it.
struct ConvEmbed {
    conv: FrozenConv2d,
    norm: LayerNorm,
    pre_norm: bool,
}

impl ConvEmbed {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let channels_last_norm = |x: &Tensor| -> CResult<Tensor> {
            self.norm.forward(&x.permute((0, 2, 3, 1))?.contiguous()?)?.permute((0, 3, 1, 2))?.contiguous()
        };
        if self.pre_norm {
            self.conv.forward(&channels_last_norm(x)?)
        } else {
            channels_last_norm(&self.conv.forward(x)?)
        }
    }
}

/// The DaViT backbone: pixels (B, 3, S, S) → last-stage features (B, C, h, w).
pub struct DaVit {
    convs: Vec<ConvEmbed>,
    blocks: Vec<Vec<(HalfBlock, HalfBlock)>>,
}

impl DaVit {
    /// Builds the backbone from the tensors under `prefix` (`model.vision_tower`).
    pub fn load(w: &Weights, prefix: &str, c: &VisionConfig) -> Result<Self> {
        let mut convs = Vec::new();
        let mut blocks = Vec::new();
        for s in 0..c.embed_dim.len() {
            let inp = if s == 0 { c.in_channels } else { c.embed_dim[s - 1] };
            let out = c.embed_dim[s];
            let k = c.patch_size[s];
            let p = format!("{prefix}.convs.{s}");
            let norm_dim = if c.patch_prenorm[s] { inp } else { out };
            convs.push(ConvEmbed {
                conv: FrozenConv2d::new(
                    w.get(&format!("{p}.conv.weight"), &[out, inp, k, k])?,
                    Some(w.get(&format!("{p}.conv.bias"), &[out])?),
                    c.patch_stride[s],
                    c.patch_padding[s],
                )
                .map_err(|e| Florence2Error::Config(format!("vision stage {s} patch embedding: {e}")))?,
                norm: w.layer_norm(&format!("{p}.norm"), norm_dim)?,
                pre_norm: c.patch_prenorm[s],
            });
            let stage = (0..c.depths[s])
                .map(|i| {
                    let b = format!("{prefix}.blocks.{s}.{i}");
                    let window = Mixer::Window { heads: c.num_heads[s], window: c.window_size };
                    let channel = Mixer::Channel { groups: c.num_groups[s] };
                    Ok((
                        HalfBlock::load(w, &format!("{b}.spatial_block"), "window_attn", c, s, window)?,
                        HalfBlock::load(w, &format!("{b}.channel_block"), "channel_attn", c, s, channel)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            blocks.push(stage);
        }
        Ok(DaVit { convs, blocks })
    }

    /// Last-stage features (B, C, h, w) of pixels (B, 3, S, S).
    pub fn forward(&self, pixels: &Tensor) -> CResult<Tensor> {
        let mut x = pixels.clone();
        for (conv, stage) in self.convs.iter().zip(&self.blocks) {
            x = conv.forward(&x)?;
            for (spatial, channel) in stage {
                x = spatial.forward(&x)?;
                x = channel.forward(&x)?;
            }
        }
        Ok(x)
    }
}

/// `Florence2MultiModalProjector`: adds the learned 2-D position and the (first) temporal
/// embedding, puts the mean token in front of the patch tokens, projects to the text width and
/// normalises.
pub struct Projector {
    row: Tensor,
    column: Tensor,
    temporal0: Tensor,
    projection: FrozenLinear,
    norm: LayerNorm,
}

/// Row 0 of transformers' sinusoidal temporal table (sines at even, cosines at odd channels):
/// a single image is frame 0, so only this row is ever used.
fn temporal_row0(dim: usize) -> Vec<f32> {
    (0..dim).map(|i| if i % 2 == 0 { 0.0 } else { 1.0 }).collect()
}

impl Projector {
    /// Builds the projector from the tensors under `prefix` (`model.multi_modal_projector`).
    pub fn load(w: &Weights, prefix: &str, c: &VisionConfig) -> Result<Self> {
        let d = *c.embed_dim.last().expect("checked non-empty");
        let m = c.max_position_embeddings;
        let device = w.get(&format!("{prefix}.image_proj_norm.weight"), &[c.projection_dim])?.device().clone();
        let key = format!("{prefix}.visual_temporal_embed.pos_idx_to_embed");
        // Saved as a buffer by transformers; computed when a checkpoint leaves it out.
        let temporal0 = if w.contains(&key) {
            w.get(&key, &[c.max_temporal_embeddings, d])?.narrow(0, 0, 1)?.reshape(d)?
        } else {
            Tensor::from_vec(temporal_row0(d), d, &device)?
        };
        Ok(Projector {
            row: w.get(&format!("{prefix}.image_position_embed.row_embeddings.weight"), &[m, d / 2])?,
            column: w.get(&format!("{prefix}.image_position_embed.column_embeddings.weight"), &[m, d - d / 2])?,
            temporal0,
            projection: w.linear(&format!("{prefix}.image_projection"), d, c.projection_dim, false)?,
            norm: w.layer_norm(&format!("{prefix}.image_proj_norm"), c.projection_dim)?,
        })
    }

    /// Image tokens (B, 1 + h·w, projection_dim) of features (B, C, h, w).
    pub fn forward(&self, features: &Tensor) -> CResult<Tensor> {
        let (_, c, h, w) = features.dims4()?;
        let m = self.row.dim(0)?;
        if h > m || w > m {
            candle_core::bail!("the feature map is {h}×{w}, the position embedding covers {m}×{m}")
        }
        // pos[y, x] = [column_embeddings[x], row_embeddings[y]] (channels last).
        let cw = self.column.dim(1)?;
        let col = self.column.narrow(0, 0, w)?.reshape((1, w, cw))?.broadcast_as((h, w, cw))?;
        let rw = self.row.dim(1)?;
        let row = self.row.narrow(0, 0, h)?.reshape((h, 1, rw))?.broadcast_as((h, w, rw))?;
        let pos = Tensor::cat(&[&col, &row], 2)?.reshape((1, h * w, c))?;
        let tokens = features.flatten_from(2)?.transpose(1, 2)?.broadcast_add(&pos)?;
        let tokens = tokens.broadcast_add(&self.temporal0.reshape((1, 1, c))?)?;
        let mean = tokens.mean_keepdim(1)?;
        let all = Tensor::cat(&[&mean, &tokens], 1)?.contiguous()?;
        self.norm.forward(&self.projection.forward(&all)?)
    }
}
