//! timm's `VisionTransformer` as the WD v3 ViT taggers use it (`vit_base_patch16_224` /
//! `vit_large_patch16_224` at 448² with `class_token=False, global_pool="avg", fc_norm=False,
//! act_layer="gelu_tanh"`), ported from timm `models/vision_transformer.py` (1.0.31).
//! Weight paths are the checkpoint's keys: `patch_embed.proj`, `pos_embed`, `blocks.{i}.{norm1,
//! attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`, `fc_norm`, `head`.

use std::collections::HashMap;

use candle_core::{Result, Tensor};
use lorakit_nn::infer::InferLinear;
use lorakit_nn::norm::LayerNorm;
use lorakit_nn::FrozenConv2d;
use serde_json::Value;

use super::config::{self, Activation};
use super::{infer_linear, layer_norm, split_linear, weight, Wd14Error};

/// timm's ViT LayerNorm epsilon (`partial(nn.LayerNorm, eps=1e-6)`).
const LN_EPS: f64 = 1e-6;

/// What a ViT config states (timm's registered model args overridden by `model_args`).
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
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
    /// MLP hidden width / embed_dim.
    pub mlp_ratio: f64,
    /// Bias on the qkv projection.
    pub qkv_bias: bool,
    /// A class token in front of the patches (false for WD).
    pub class_token: bool,
    /// `avg` (mean of the patch tokens, WD) or `token` (the class token).
    pub global_pool: Pool,
    /// LayerNorm after pooling instead of before it (timm: on by default with `avg`).
    pub fc_norm: bool,
    /// MLP activation.
    pub act: Activation,
    /// Output classes.
    pub num_classes: usize,
}

pub use super::config::Pool;

impl VitConfig {
    /// Reads a timm hub `config.json` whose architecture is `vit_{tiny,small,base,large,huge}
    /// _patch{P}_{S}`.
    pub fn from_timm(config: &Value) -> std::result::Result<Self, Wd14Error> {
        let name = config::architecture_name(config)?;
        let unsupported =
            || Wd14Error::Config(format!("architecture `{name}` is not a ViT lorakit knows (vit_<size>_patch<P>_<S>)"));
        let parts: Vec<&str> = name.split('_').collect();
        let [_, size, patch, res] = parts[..] else { return Err(unsupported()) };
        let (embed_dim, depth, num_heads) = match size {
            "tiny" => (192, 12, 3),
            "small" => (384, 12, 6),
            "base" => (768, 12, 12),
            "large" => (1024, 24, 16),
            "huge" => (1280, 32, 16),
            _ => return Err(unsupported()),
        };
        let patch: usize = patch.strip_prefix("patch").and_then(|p| p.parse().ok()).ok_or_else(unsupported)?;
        let res: usize = res.parse().map_err(|_| unsupported())?;
        let class_token = config::arg_bool(config, "class_token", true)?;
        let global_pool = Pool::from_timm(config, "token", class_token, "ViT")?;
        // timm: `use_fc_norm = global_pool in ('avg', 'avgmax', 'max') if fc_norm is None`.
        let fc_norm = match config::model_arg(config, "fc_norm") {
            None => global_pool == Pool::Avg,
            Some(_) => config::arg_bool(config, "fc_norm", false)?,
        };
        for unsupported_arg in
            ["init_values", "reg_tokens", "no_embed_class", "pre_norm", "qk_norm", "dynamic_img_size"]
        {
            if let Some(v) = config::model_arg(config, unsupported_arg) {
                if v != &Value::Bool(false) && v != &Value::from(0) {
                    return Err(Wd14Error::Config(format!("ViT model_args.{unsupported_arg} = {v} is not supported")));
                }
            }
        }
        Ok(VitConfig {
            img_size: config::img_size(config, res)?,
            patch_size: config::arg_usize(config, "patch_size", patch)?,
            embed_dim: config::arg_usize(config, "embed_dim", embed_dim)?,
            depth: config::arg_usize(config, "depth", depth)?,
            num_heads: config::arg_usize(config, "num_heads", num_heads)?,
            mlp_ratio: config::arg_f64(config, "mlp_ratio", 4.0)?,
            qkv_bias: config::arg_bool(config, "qkv_bias", true)?,
            class_token,
            global_pool,
            fc_norm,
            act: Activation::from_timm(config, Activation::Gelu)?,
            num_classes: config::num_classes(config)?,
        })
    }
}

struct Block {
    norm1: LayerNorm,
    /// `attn.qkv` split into its q, k and v rows.
    qkv: [InferLinear; 3],
    proj: InferLinear,
    norm2: LayerNorm,
    fc1: InferLinear,
    fc2: InferLinear,
}

/// The ViT classifier: NCHW normalised BGR → logits.
pub struct Vit {
    config: VitConfig,
    patch_embed: FrozenConv2d,
    cls_token: Option<Tensor>,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: Option<LayerNorm>,
    fc_norm: Option<LayerNorm>,
    head: InferLinear,
}
impl Vit {
    /// Builds the model from the checkpoint's tensors, checking every shape.
    pub fn load(t: &HashMap<String, Tensor>, config: &VitConfig) -> std::result::Result<Self, Wd14Error> {
        let c = config;
        let d = c.embed_dim;
        if c.num_heads == 0 || d % c.num_heads != 0 {
            return Err(Wd14Error::Config(format!("ViT embed_dim {d} is not divisible by num_heads {}", c.num_heads)));
        }
        if c.patch_size == 0 || c.img_size % c.patch_size != 0 {
            return Err(Wd14Error::Config(format!(
                "ViT img_size {} is not a multiple of patch_size {}",
                c.img_size, c.patch_size
            )));
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
        let blocks = (0..c.depth)
            .map(|i| {
                let p = format!("blocks.{i}");
                let [q, k, v]: [InferLinear; 3] = split_linear(t, &format!("{p}.attn.qkv"), d, d, 3, c.qkv_bias)?
                    .try_into()
                    .expect("split_linear returns the 3 parts asked for");
                Ok(Block {
                    norm1: layer_norm(t, &format!("{p}.norm1"), d, LN_EPS)?,
                    qkv: [q, k, v],
                    proj: infer_linear(t, &format!("{p}.attn.proj"), d, d, true)?,
                    norm2: layer_norm(t, &format!("{p}.norm2"), d, LN_EPS)?,
                    fc1: infer_linear(t, &format!("{p}.mlp.fc1"), d, hidden, true)?,
                    fc2: infer_linear(t, &format!("{p}.mlp.fc2"), hidden, d, true)?,
                })
            })
            .collect::<std::result::Result<Vec<_>, Wd14Error>>()?;
        let (norm, fc_norm) = if c.fc_norm {
            (None, Some(layer_norm(t, "fc_norm", d, LN_EPS)?))
        } else {
            (Some(layer_norm(t, "norm", d, LN_EPS)?), None)
        };
        let head = infer_linear(t, "head", d, c.num_classes, true)?;
        Ok(Vit { config: c.clone(), patch_embed, cls_token, pos_embed, blocks, norm, fc_norm, head })
    }

    /// Logits (N, classes) of a batch (N, 3, S, S).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (n, _, h, w) = x.dims4()?;
        if h != c.img_size || w != c.img_size {
            candle_core::bail!("ViT input is {h}×{w}, the model takes {}×{}", c.img_size, c.img_size)
        }
        let d = c.embed_dim;
        // (N, D, g, g) → (N, g·g, D), row-major over the grid like timm's flatten(2).transpose(1, 2).
        let mut x = self.patch_embed.forward(x)?.flatten_from(2)?.transpose(1, 2)?;
        if let Some(cls) = &self.cls_token {
            x = Tensor::cat(&[&cls.broadcast_as((n, 1, d))?, &x], 1)?;
        }
        x = x.broadcast_add(&self.pos_embed)?.contiguous()?;
        let heads = c.num_heads;
        let scale = 1.0 / ((d / heads) as f64).sqrt();
        for b in &self.blocks {
            let y = b.norm1.forward(&x)?;
            let [q, k, v] = &b.qkv;
            let (q, k, v) = (q.forward(&y)?, k.forward(&y)?, v.forward(&y)?);
            let a = lorakit_nn::attention::attention_heads(&q, &k, &v, heads, scale)?;
            x = b.proj.forward_add(&a, &x)?;
            let y = b.fc1.forward(&b.norm2.forward(&x)?)?;
            x = b.fc2.forward_add(&c.act.forward(&y)?, &x)?;
        }
        if let Some(norm) = &self.norm {
            x = norm.forward(&x)?;
        }
        let prefix = usize::from(c.class_token);
        let pooled = c.global_pool.apply(&x, prefix)?;
        let pooled = match &self.fc_norm {
            Some(norm) => norm.forward(&pooled)?,
            None => pooled,
        };
        self.head.forward(&pooled)
    }
}
