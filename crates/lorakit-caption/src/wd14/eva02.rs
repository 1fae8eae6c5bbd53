//! timm's `Eva` as wd-eva02-large-tagger-v3 uses it (`eva02_large_patch14_448` with
//! `img_size=448, ref_feat_shape=[32, 32]`), ported from timm `models/eva.py` (1.0.31), with
//! candle-transformers' `models/eva2.rs` as a structural guide: patch embedding, class token,
//! absolute position embedding, blocks of attention with axial RoPE ("cat" layout, interleaved
//! pairs) on the patch tokens and a SwiGLU MLP (with the `scale_mlp` sub-LayerNorm), then avg
//! pool of the patch tokens, fc_norm and head. The RoPE table is computed from the grid and
//! `ref_feat_shape` as timm does (the WD file holds no `rot_pos_embed`). Weight paths are the
//! checkpoint's keys: `patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.{i}.{norm1,
//! attn.{q_proj,k_proj,v_proj | qkv,q_bias,v_bias},attn.norm,attn.proj,norm2,mlp.{fc1_g,fc1_x |
//! fc1},mlp.norm,mlp.fc2}`, `norm` / `fc_norm`, `head`.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use lorakit_nn::infer::{self, InferLinear};
use lorakit_nn::norm::LayerNorm;
use lorakit_nn::FrozenConv2d;
use serde_json::Value;

use super::config;
use super::{infer_linear, layer_norm, split_linear, weight, Wd14Error};

/// timm's `LayerNorm` epsilon (the `Eva` default norm layer).
const LN_EPS: f64 = 1e-6;

/// What an EVA02 config states (timm's registered model args overridden by `model_args`).
#[derive(Debug, Clone, PartialEq)]
pub struct Eva02Config {
    /// Input side (pixels).
    pub img_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Token width.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP hidden width / embed_dim (`int(embed_dim · mlp_ratio)`).
    pub mlp_ratio: f64,
    /// Separate `q_proj`/`k_proj`/`v_proj` (false) or one `qkv` with `q_bias`/`v_bias` (true).
    pub qkv_fused: bool,
    /// Biases on q and v (never on k).
    pub qkv_bias: bool,
    /// SwiGLU MLP (EVA02) instead of a GELU MLP.
    pub swiglu_mlp: bool,
    /// LayerNorm inside the MLP before `fc2` (normformer's "scale_mlp").
    pub scale_mlp: bool,
    /// LayerNorm on the attention output before `proj`.
    pub scale_attn_inner: bool,
    /// A class token in front of the patches.
    pub class_token: bool,
    /// Axial RoPE on the patch tokens.
    pub use_rot_pos_emb: bool,
    /// The grid the RoPE coordinates are rescaled to (the pre-training grid).
    pub ref_feat_shape: Option<(usize, usize)>,
    /// RoPE inverse-frequency temperature.
    pub rope_temperature: f64,
    /// `avg` (mean of the patch tokens) or `token` (the class token).
    pub global_pool: Pool,
    /// LayerNorm after pooling (timm: on by default with `avg`); else `norm` before it.
    pub fc_norm: bool,
    /// Output classes.
    pub num_classes: usize,
}

pub use super::config::Pool;

impl Eva02Config {
    /// Reads a timm hub `config.json` whose architecture is `eva02_{tiny,small,base,large}
    /// _patch14_{224,336,448}`.
    pub fn from_timm(config: &Value) -> std::result::Result<Self, Wd14Error> {
        let name = config::architecture_name(config)?;
        let unsupported = || {
            Wd14Error::Config(format!(
                "architecture `{name}` is not an EVA02 lorakit knows (eva02_<tiny|small|base|large>_patch14_<S>)"
            ))
        };
        let parts: Vec<&str> = name.split('_').collect();
        let ["eva02", size, patch, res] = parts[..] else { return Err(unsupported()) };
        // (embed_dim, depth, heads, qkv_fused, scale_mlp) as timm registers them.
        let (embed_dim, depth, heads, fused, scale_mlp) = match size {
            "tiny" => (192, 12, 3, true, false),
            "small" => (384, 12, 6, true, false),
            "base" => (768, 12, 12, false, true),
            "large" => (1024, 24, 16, false, true),
            _ => return Err(unsupported()),
        };
        let patch: usize = patch.strip_prefix("patch").and_then(|p| p.parse().ok()).ok_or_else(unsupported)?;
        let res: usize = res.parse().map_err(|_| unsupported())?;

        // Options of timm's `Eva` this port does not build: refuse them rather than mis-run.
        let off = |key: &str, ok: &dyn Fn(&Value) -> bool| -> std::result::Result<(), Wd14Error> {
            match config::model_arg(config, key) {
                Some(v) if !ok(v) => Err(Wd14Error::Config(format!("EVA02 model_args.{key} = {v} is not supported"))),
                _ => Ok(()),
            }
        };
        let falsy = |v: &Value| v == &Value::Bool(false) || v.as_u64() == Some(0);
        for key in [
            "num_reg_tokens",
            "no_embed_class",
            "qk_norm",
            "use_post_norm",
            "use_pre_transformer_norm",
            "dynamic_img_size",
            "dynamic_img_pad",
            "rope_rotate_half",
            "swiglu_align_to",
            "gated_attn",
        ] {
            off(key, &falsy)?;
        }
        off("init_values", &|_| false)?;
        off("rope_type", &|v| v.as_str() == Some("cat"))?;
        off("attn_type", &|v| v.as_str() == Some("eva"))?;
        off("rope_grid_indexing", &|v| v.as_str() == Some("ij"))?;
        off("rope_grid_offset", &|v| v.as_f64() == Some(0.0))?;
        off("use_abs_pos_emb", &|v| v.as_bool() == Some(true))?;

        let class_token = config::arg_bool(config, "class_token", true)?;
        let global_pool = Pool::from_timm(config, "avg", class_token, "EVA02")?;
        // timm: fc_norm defaults on with avg pooling; the final norm defaults to its opposite.
        let fc_norm = config::arg_bool(config, "use_fc_norm", global_pool == Pool::Avg)?;
        if config::arg_bool(config, "use_post_transformer_norm", !fc_norm)? == fc_norm {
            return Err(Wd14Error::Config("EVA02 with both (or neither) of norm and fc_norm is not supported".into()));
        }
        let ref_feat_shape = match config::model_arg(config, "ref_feat_shape") {
            None => Some((16, 16)),
            Some(v) => match v.as_u64() {
                Some(n) => Some((n as usize, n as usize)),
                None => match config::arg_usizes(config, "ref_feat_shape", &[])?[..] {
                    [h, w] => Some((h, w)),
                    _ => return Err(Wd14Error::Config(format!("model_args.ref_feat_shape = {v}: expected [H, W]"))),
                },
            },
        };
        Ok(Eva02Config {
            img_size: config::img_size(config, res)?,
            patch_size: config::arg_usize(config, "patch_size", patch)?,
            embed_dim: config::arg_usize(config, "embed_dim", embed_dim)?,
            depth: config::arg_usize(config, "depth", depth)?,
            num_heads: config::arg_usize(config, "num_heads", heads)?,
            mlp_ratio: config::arg_f64(config, "mlp_ratio", 4.0 * 2.0 / 3.0)?,
            qkv_fused: config::arg_bool(config, "qkv_fused", fused)?,
            qkv_bias: config::arg_bool(config, "qkv_bias", true)?,
            swiglu_mlp: config::arg_bool(config, "swiglu_mlp", true)?,
            scale_mlp: config::arg_bool(config, "scale_mlp", scale_mlp)?,
            scale_attn_inner: config::arg_bool(config, "scale_attn_inner", false)?,
            class_token,
            use_rot_pos_emb: config::arg_bool(config, "use_rot_pos_emb", true)?,
            ref_feat_shape,
            rope_temperature: config::arg_f64(config, "rope_temperature", 10000.0)?,
            global_pool,
            fc_norm,
            num_classes: config::num_classes(config)?,
        })
    }
}

enum Mlp {
    /// timm `SwiGLU`: `fc2(norm(silu(fc1_g x) · fc1_x x))`; timm `GluMlp` (SwiGLU packed in
    /// one `fc1`, gate first) is loaded as this with `fc1` split in its two halves.
    SwiGlu { fc1_g: InferLinear, fc1_x: InferLinear, norm: Option<LayerNorm>, fc2: InferLinear },
    /// timm `Mlp`: `fc2(norm(gelu(fc1 x)))`.
    Gelu { fc1: InferLinear, norm: Option<LayerNorm>, fc2: InferLinear },
}

struct Block {
    norm1: LayerNorm,
    /// The q, k and v projections (`q_proj`/`k_proj`/`v_proj`, or the rows of a fused `qkv`).
    qkv: [InferLinear; 3],
    attn_norm: Option<LayerNorm>,
    proj: InferLinear,
    norm2: LayerNorm,
    mlp: Mlp,
}

/// The EVA02 classifier: NCHW normalised BGR → logits.
pub struct Eva02 {
    config: Eva02Config,
    patch_embed: FrozenConv2d,
    cls_token: Option<Tensor>,
    pos_embed: Tensor,
    /// RoPE sin and cos over the patch tokens, (tokens, head_dim) each, interleaved pairs.
    rope: Option<(Tensor, Tensor)>,
    blocks: Vec<Block>,
    norm: Option<LayerNorm>,
    fc_norm: Option<LayerNorm>,
    head: InferLinear,
}
/// timm `RotaryEmbeddingCat` (`in_pixels=False`, "ij" grid, interleaved layout) for a
/// `grid × grid` map: per head dimension `d`, `d/4` inverse frequencies `temperature^(−k/(d/4))`
/// applied to the row and then the column coordinate, each coordinate `i / grid · ref`, every
/// angle repeated for its (even, odd) pair. Returns (sin, cos), each (grid², d), computed in f32
/// in timm's order of operations.
fn rope_tables(
    grid: (usize, usize),
    head_dim: usize,
    reference: Option<(usize, usize)>,
    temperature: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let bands = head_dim / 4;
    let temperature = temperature as f32;
    let freqs: Vec<f32> = (0..bands).map(|k| 1.0 / temperature.powf(k as f32 / bands as f32)).collect();
    let coord = |i: usize, len: usize, r: Option<usize>| match r {
        Some(r) => i as f32 / len as f32 * r as f32,
        None => i as f32,
    };
    let (gh, gw) = grid;
    let mut sin = Vec::with_capacity(gh * gw * head_dim);
    let mut cos = Vec::with_capacity(gh * gw * head_dim);
    for i in 0..gh {
        for j in 0..gw {
            let (y, x) = (coord(i, gh, reference.map(|r| r.0)), coord(j, gw, reference.map(|r| r.1)));
            for &pos in &[y, x] {
                for f in &freqs {
                    let a = pos * f;
                    sin.extend([a.sin(); 2]);
                    cos.extend([a.cos(); 2]);
                }
            }
        }
    }
    let n = gh * gw;
    let width = 4 * bands;
    Ok((Tensor::from_vec(sin, (n, width), device)?, Tensor::from_vec(cos, (n, width), device)?))
}

impl Mlp {
    /// `residual + mlp(x)`.
    fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let norm = |n: &Option<LayerNorm>, h: Tensor| match n {
            Some(n) => n.forward(&h),
            None => Ok(h),
        };
        match self {
            Mlp::SwiGlu { fc1_g, fc1_x, norm: n, fc2 } => {
                let h = infer::swiglu(&fc1_g.forward(x)?, &fc1_x.forward(x)?)?;
                fc2.forward_add(&norm(n, h)?, residual)
            }
            Mlp::Gelu { fc1, norm: n, fc2 } => {
                fc2.forward_add(&norm(n, lorakit_nn::activation::gelu(&fc1.forward(x)?)?)?, residual)
            }
        }
    }
}

impl Eva02 {
    /// Builds the model from the checkpoint's tensors, checking every shape.
    pub fn load(t: &HashMap<String, Tensor>, config: &Eva02Config) -> std::result::Result<Self, Wd14Error> {
        let c = config;
        let d = c.embed_dim;
        if c.num_heads == 0 || d % c.num_heads != 0 {
            return Err(Wd14Error::Config(format!(
                "EVA02 embed_dim {d} is not divisible by num_heads {}",
                c.num_heads
            )));
        }
        if c.patch_size == 0 || c.img_size % c.patch_size != 0 {
            return Err(Wd14Error::Config(format!(
                "EVA02 img_size {} is not a multiple of patch_size {}",
                c.img_size, c.patch_size
            )));
        }
        let head_dim = d / c.num_heads;
        if c.use_rot_pos_emb && head_dim % 4 != 0 {
            return Err(Wd14Error::Config(format!("EVA02 head width {head_dim} is not a multiple of 4 (axial RoPE)")));
        }
        let grid = c.img_size / c.patch_size;
        let prefix = usize::from(c.class_token);
        let hidden = (d as f64 * c.mlp_ratio) as usize;
        let patch_embed = FrozenConv2d::new(
            weight(t, "patch_embed.proj.weight", &[d, 3, c.patch_size, c.patch_size])?,
            Some(weight(t, "patch_embed.proj.bias", &[d])?),
            c.patch_size,
            0,
        )?;
        let cls_token = if c.class_token { Some(weight(t, "cls_token", &[1, 1, d])?) } else { None };
        let pos_embed = weight(t, "pos_embed", &[1, grid * grid + prefix, d])?;
        let rope = if c.use_rot_pos_emb {
            Some(rope_tables((grid, grid), head_dim, c.ref_feat_shape, c.rope_temperature, pos_embed.device())?)
        } else {
            None
        };
        let blocks = (0..c.depth)
            .map(|i| {
                let p = format!("blocks.{i}");
                let qkv = if c.qkv_fused {
                    // timm: `F.linear(x, qkv.weight, cat(q_bias, zeros (k_bias buffer), v_bias))`.
                    let w = weight(t, &format!("{p}.attn.qkv.weight"), &[3 * d, d])?;
                    let bias = |name: &str| -> std::result::Result<Option<Tensor>, Wd14Error> {
                        Ok(if c.qkv_bias { Some(weight(t, &format!("{p}.attn.{name}"), &[d])?) } else { None })
                    };
                    [
                        InferLinear::new(w.narrow(0, 0, d)?, bias("q_bias")?)?,
                        InferLinear::new(w.narrow(0, d, d)?, None)?,
                        InferLinear::new(w.narrow(0, 2 * d, d)?, bias("v_bias")?)?,
                    ]
                } else {
                    [
                        infer_linear(t, &format!("{p}.attn.q_proj"), d, d, c.qkv_bias)?,
                        infer_linear(t, &format!("{p}.attn.k_proj"), d, d, false)?,
                        infer_linear(t, &format!("{p}.attn.v_proj"), d, d, c.qkv_bias)?,
                    ]
                };
                let attn_norm =
                    if c.scale_attn_inner { Some(layer_norm(t, &format!("{p}.attn.norm"), d, LN_EPS)?) } else { None };
                let mlp = if c.swiglu_mlp && c.scale_mlp {
                    Mlp::SwiGlu {
                        fc1_g: infer_linear(t, &format!("{p}.mlp.fc1_g"), d, hidden, true)?,
                        fc1_x: infer_linear(t, &format!("{p}.mlp.fc1_x"), d, hidden, true)?,
                        norm: Some(layer_norm(t, &format!("{p}.mlp.norm"), hidden, LN_EPS)?),
                        fc2: infer_linear(t, &format!("{p}.mlp.fc2"), hidden, d, true)?,
                    }
                } else if c.swiglu_mlp {
                    let [fc1_g, fc1_x]: [InferLinear; 2] =
                        split_linear(t, &format!("{p}.mlp.fc1"), d, hidden, 2, true)?
                            .try_into()
                            .expect("split_linear returns the 2 parts asked for");
                    Mlp::SwiGlu {
                        fc1_g,
                        fc1_x,
                        norm: None,
                        fc2: infer_linear(t, &format!("{p}.mlp.fc2"), hidden, d, true)?,
                    }
                } else {
                    Mlp::Gelu {
                        fc1: infer_linear(t, &format!("{p}.mlp.fc1"), d, hidden, true)?,
                        norm: if c.scale_mlp {
                            Some(layer_norm(t, &format!("{p}.mlp.norm"), hidden, LN_EPS)?)
                        } else {
                            None
                        },
                        fc2: infer_linear(t, &format!("{p}.mlp.fc2"), hidden, d, true)?,
                    }
                };
                Ok(Block {
                    norm1: layer_norm(t, &format!("{p}.norm1"), d, LN_EPS)?,
                    qkv,
                    attn_norm,
                    proj: infer_linear(t, &format!("{p}.attn.proj"), d, d, true)?,
                    norm2: layer_norm(t, &format!("{p}.norm2"), d, LN_EPS)?,
                    mlp,
                })
            })
            .collect::<std::result::Result<Vec<_>, Wd14Error>>()?;
        let (norm, fc_norm) = if c.fc_norm {
            (None, Some(layer_norm(t, "fc_norm", d, LN_EPS)?))
        } else {
            (Some(layer_norm(t, "norm", d, LN_EPS)?), None)
        };
        let head = infer_linear(t, "head", d, c.num_classes, true)?;
        Ok(Eva02 { config: c.clone(), patch_embed, cls_token, pos_embed, rope, blocks, norm, fc_norm, head })
    }

    /// Logits (N, classes) of a batch (N, 3, S, S), S = `img_size`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (n, _, h, w) = x.dims4()?;
        if h != c.img_size || w != c.img_size {
            candle_core::bail!("EVA02 input is {h}×{w}, the model takes {}×{}", c.img_size, c.img_size)
        }
        let d = c.embed_dim;
        let heads = c.num_heads;
        let hd = d / heads;
        let x = x.to_dtype(DType::F32)?;
        // (N, D, g, g) → (N, g·g, D), row-major over the grid like timm's flatten(2).transpose(1, 2).
        let mut x = self.patch_embed.forward(&x)?.flatten_from(2)?.transpose(1, 2)?;
        if let Some(cls) = &self.cls_token {
            x = Tensor::cat(&[&cls.broadcast_as((n, 1, d))?, &x], 1)?;
        }
        x = x.broadcast_add(&self.pos_embed)?.contiguous()?;
        let prefix = usize::from(c.class_token);
        let scale = 1.0 / (hd as f64).sqrt();
        // RoPE on every head of the (N, L, heads·hd) projections, the class token left as is.
        let rope = |t: Tensor| -> Result<Tensor> {
            match &self.rope {
                Some((sin, cos)) => infer::rope_interleaved(&t, heads, prefix, sin, cos),
                None => Ok(t),
            }
        };
        for b in &self.blocks {
            let y = b.norm1.forward(&x)?;
            let [q, k, v] = &b.qkv;
            let (q, k, v) = (rope(q.forward(&y)?)?, rope(k.forward(&y)?)?, v.forward(&y)?);
            let mut a = lorakit_nn::attention::attention_heads(&q, &k, &v, heads, scale)?;
            if let Some(norm) = &b.attn_norm {
                a = norm.forward(&a)?;
            }
            x = b.proj.forward_add(&a, &x)?;
            x = b.mlp.forward_add(&b.norm2.forward(&x)?, &x)?;
        }
        if let Some(norm) = &self.norm {
            x = norm.forward(&x)?;
        }
        let pooled = c.global_pool.apply(&x, prefix)?;
        let pooled = match &self.fc_norm {
            Some(norm) => norm.forward(&pooled)?,
            None => pooled,
        };
        self.head.forward(&pooled)
    }
}
