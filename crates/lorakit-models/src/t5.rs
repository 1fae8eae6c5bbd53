//! The T5 encoder of Flux and SD3 (T5-XXL v1.1: HF transformers' `T5EncoderModel`), trainable
//! through LoRA.
//!
//! Weight keys follow transformers' state dict: `shared.weight` and/or `encoder.embed_tokens.weight`
//! (tied), `encoder.block.N.layer.0.SelfAttention.{q,k,v,o}`, block 0's
//! `…SelfAttention.relative_attention_bias`, `encoder.block.N.layer.0.layer_norm`,
//! `encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}` (`wi`, `wo` for the original T5's
//! `relu`), `encoder.block.N.layer.1.layer_norm`, `encoder.final_layer_norm`. Every linear is a
//! `lorakit_nn::Linear` named by that path, so sd-scripts' `train_t5xxl` module names fall out:
//! `lora_te3_encoder_block_0_layer_0_SelfAttention_q` (spec §13.1).
//!
//! What differs from a CLIP-style encoder, as transformers computes it:
//! - T5's layer norm is an RMS norm (no mean subtraction, no bias), its statistics in f32.
//! - Attention has no 1/√d scaling (T5 folds it into q's initialisation) and no position
//!   embedding; instead a learned bias per head and bidirectional relative-position bucket,
//!   computed once from block 0's table and added in every block.
//! - The padding mask (sd-scripts' `apply_t5_attn_mask`) is an additive bias of the dtype's
//!   most negative finite value on masked keys (finite, so a fully masked row stays finite).
//! - f16: T5 overflows f16 in its FFN output, so transformers keeps `wo` in f32
//!   (`_keep_in_fp32_modules = ["wo"]`) and its residual stream becomes f32 from the first FFN on.
//!   Here a model computing in f16 runs `wo` in f32 (an f16 `wo` is stored as f32, 4 GB instead
//!   of 2 GB for XXL; an fp8 one stays fp8 and is cast per use) with an f32 residual stream
//!   throughout; every other op runs in f16. bf16 and f32 run entirely in their dtype.
//!
//! Attention is composed from tracked ops (scores, bias, softmax, values): the relative bias is a
//! full (heads, L, L) matrix, which `lorakit_nn::attention` cannot take. T5 is frozen in most
//! runs (its outputs are usually cached); with `train_t5xxl` the score matrices are kept per block
//! for backward, which gradient checkpointing limits to one block.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, D};
use lorakit_nn::activation::softmax_last_dim;
use lorakit_nn::checkpoint::{checkpoint, BlockFn};
use lorakit_nn::lora::{LoraTarget, TargetGroup};
use lorakit_nn::{attach, ForwardCtx, Linear};
use serde::{Deserialize, Serialize};

use crate::t5_tokenizer::T5Tokens;
use crate::token_ids::{read_token_ids, TokenIds};
use crate::weights::WeightsView;
use crate::Error;

/// The kohya prefix of T5 LoRA modules in Flux and SD3 files (sd-scripts' `lora_te3`).
pub const T5_LORA_PREFIX: &str = "lora_te3";

/// The feed-forward block (`feed_forward_proj` in config.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum T5FeedForward {
    /// `"gated-gelu"`: `wo(gelu_new(wi_0(x)) · wi_1(x))`, T5 v1.1 (Flux, SD3, PixArt).
    GatedGelu,
    /// `"relu"`: `wo(relu(wi(x)))`, the original T5.
    Relu,
}

impl TryFrom<String> for T5FeedForward {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "gated-gelu" => Ok(T5FeedForward::GatedGelu),
            "relu" => Ok(T5FeedForward::Relu),
            other => Err(format!(
                "feed_forward_proj \"{other}\" is not supported: lorakit runs \"gated-gelu\" (T5 v1.1: Flux, SD3) \
                 and \"relu\" (the original T5)"
            )),
        }
    }
}

impl From<T5FeedForward> for String {
    fn from(f: T5FeedForward) -> String {
        match f {
            T5FeedForward::GatedGelu => "gated-gelu".into(),
            T5FeedForward::Relu => "relu".into(),
        }
    }
}

/// A T5 encoder's configuration, read from (and writable as) a transformers `config.json` (field
/// names as there; missing fields take transformers' `T5Config` defaults, decoder and other
/// fields are ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct T5Config {
    /// Embedding rows; ids at or above it are rejected (32128 for T5 v1.1: the tokenizer's
    /// 32,100 ids plus unused rows).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of one attention head (heads × d_kv need not equal d_model).
    pub d_kv: usize,
    /// Width of the feed-forward hidden layer.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative-position buckets (half per direction).
    pub relative_attention_num_buckets: usize,
    /// Distance from which all relative positions share the last bucket.
    pub relative_attention_max_distance: usize,
    /// RMS norm epsilon.
    pub layer_norm_epsilon: f64,
    /// Feed-forward kind.
    pub feed_forward_proj: T5FeedForward,
}

impl Default for T5Config {
    /// transformers' `T5Config()` defaults (t5-small).
    fn default() -> Self {
        T5Config {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: T5FeedForward::Relu,
        }
    }
}

impl T5Config {
    /// `google/t5-v1_1-xxl`'s encoder, as sd-scripts' `flux_utils.load_t5xxl` builds it (Flux's
    /// and SD3's text encoder: 4.76 B parameters).
    pub fn t5_v1_1_xxl() -> Self {
        T5Config {
            vocab_size: 32128,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: T5FeedForward::GatedGelu,
        }
    }

    /// Reads a transformers `config.json` (e.g. `text_encoder_2/config.json` of a diffusers Flux
    /// folder). Errors name the file.
    pub fn from_json_file(path: &Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let cfg: T5Config = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!("not a usable T5 config: {e}"),
        })?;
        cfg.validate().map_err(|e| Error::Checkpoint { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(cfg)
    }

    /// Width of all heads together (`inner_dim` in transformers).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Rejects configurations the model cannot be built from.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            candle_core::bail!("T5 config: {name} must be positive")
        }
        let max_exact = self.relative_attention_num_buckets / 4;
        if max_exact == 0 || self.relative_attention_max_distance <= max_exact {
            candle_core::bail!(
                "T5 config: relative_attention_num_buckets {} and relative_attention_max_distance {} leave no \
                 logarithmic buckets (need at least 4 buckets and a max distance above a quarter of them)",
                self.relative_attention_num_buckets,
                self.relative_attention_max_distance
            )
        }
        if !(self.layer_norm_epsilon >= 0.0 && self.layer_norm_epsilon.is_finite()) {
            candle_core::bail!(
                "T5 config: layer_norm_epsilon {} is not a small non-negative number",
                self.layer_norm_epsilon
            )
        }
        Ok(())
    }

    /// Every transformers key of a `T5EncoderModel` of this configuration and its shape
    /// (`shared.weight` and the tied `encoder.embed_tokens.weight` both listed, as
    /// `state_dict()` lists them).
    pub fn parameter_shapes(&self) -> crate::resnet::ParamShapes {
        let (d, inner, ff) = (self.d_model, self.inner_dim(), self.d_ff);
        let w = |k: String, shape: Vec<usize>| (format!("{k}.weight"), shape);
        let mut out = vec![w("shared".into(), vec![self.vocab_size, d])];
        out.push(w("encoder.embed_tokens".into(), vec![self.vocab_size, d]));
        for i in 0..self.num_layers {
            let a = format!("encoder.block.{i}.layer.0");
            for p in ["q", "k", "v"] {
                out.push(w(format!("{a}.SelfAttention.{p}"), vec![inner, d]));
            }
            out.push(w(format!("{a}.SelfAttention.o"), vec![d, inner]));
            if i == 0 {
                out.push(w(
                    format!("{a}.SelfAttention.relative_attention_bias"),
                    vec![self.relative_attention_num_buckets, self.num_heads],
                ));
            }
            out.push(w(format!("{a}.layer_norm"), vec![d]));
            let f = format!("encoder.block.{i}.layer.1");
            match self.feed_forward_proj {
                T5FeedForward::GatedGelu => {
                    out.push(w(format!("{f}.DenseReluDense.wi_0"), vec![ff, d]));
                    out.push(w(format!("{f}.DenseReluDense.wi_1"), vec![ff, d]));
                }
                T5FeedForward::Relu => out.push(w(format!("{f}.DenseReluDense.wi"), vec![ff, d])),
            }
            out.push(w(format!("{f}.DenseReluDense.wo"), vec![d, ff]));
            out.push(w(format!("{f}.layer_norm"), vec![d]));
        }
        out.push(w("encoder.final_layer_norm".into(), vec![d]));
        out
    }
}

/// The dtype norm statistics and softmax run in for activations of `dtype`.
fn stat_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// transformers' `T5Attention._relative_position_bucket` for a bidirectional encoder: half the
/// buckets per direction, exact buckets below a quarter, logarithmic ones up to `max_distance`.
/// The logarithm is taken in f32 with the same operation order as PyTorch, so the bucket
/// boundaries fall where transformers puts them.
pub fn relative_position_bucket(relative_position: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let offset = if relative_position > 0 { half } else { 0 };
    let n = relative_position.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        return offset + n;
    }
    let scale = (max_distance as f64 / max_exact as f64).ln() as f32;
    let large = ((n as f32 / max_exact as f32).ln() / scale * (half - max_exact) as f32) as usize;
    offset + (max_exact + large).min(half - 1)
}

/// T5's layer norm: `weight · x / sqrt(mean(x²) + eps)` over the last dimension, statistics in
/// f32 (f64 for f64 input), output in the weight's dtype (for f16/bf16 weights the normalised
/// value is rounded before the weight multiplies it, as transformers does). Its own backward
/// saves only the input and 1/rms.
#[derive(Clone, Debug)]
pub struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    /// A norm over `weight.elem_count()` features.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        T5LayerNorm { weight: weight.detach(), eps }
    }

    /// The scale weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Normalises `x` (…, d); gradients flow to `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let width = x.dims().last().copied().unwrap_or(0);
        if width != self.weight.elem_count() {
            candle_core::bail!(
                "T5 layer norm over {} features got input of shape {:?}",
                self.weight.elem_count(),
                x.dims()
            )
        }
        let (in_dtype, out_dtype) = (x.dtype(), self.weight.dtype());
        let stat = stat_dtype(in_dtype);
        let xs = x.detach().to_dtype(stat)?;
        let rstd = (xs.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        let xhat = xs.broadcast_mul(&rstd)?;
        let y = if matches!(out_dtype, DType::F16 | DType::BF16) {
            xhat.to_dtype(out_dtype)?.broadcast_mul(&self.weight)?
        } else {
            xhat.broadcast_mul(&self.weight.to_dtype(stat)?)?.to_dtype(out_dtype)?
        };
        if !x.track_op() {
            return Ok(y);
        }
        let gamma = self.weight.to_dtype(stat)?;
        attach(
            x,
            &y,
            Arc::new(move |g: &Tensor| {
                // y = γ·x·r, r = (mean(x²) + ε)^(-1/2):  dx = r·(u − x̂·r·mean(u·x)), u = γ·dy.
                let u = g.to_dtype(stat)?.broadcast_mul(&gamma)?;
                let m = (&u * &xs)?.mean_keepdim(D::Minus1)?;
                let xhat = xs.broadcast_mul(&rstd)?;
                u.sub(&xhat.broadcast_mul(&(m * &rstd)?)?)?.broadcast_mul(&rstd)?.to_dtype(in_dtype)
            }),
        )
    }
}

/// The additive attention bias of one forward pass: the relative-position bias every block adds,
/// and the padding mask when one was given. Both in the softmax dtype (f32; f64 for f64 models).
#[derive(Clone, Debug)]
pub struct T5AttentionBias {
    /// (1, heads, L, L): block 0's relative-position table gathered by bucket.
    pub position: Tensor,
    /// (B, 1, 1, L): 0 on kept keys, the dtype's most negative finite value on masked ones.
    pub mask: Option<Tensor>,
}

/// The feed-forward block's linears.
#[derive(Debug)]
enum FeedForward {
    Gated { wi_0: Linear, wi_1: Linear, wo: Linear },
    Relu { wi: Linear, wo: Linear },
}

/// One encoder block: `x + SelfAttention(layer_norm(x))`, then `x + DenseReluDense(layer_norm(x))`.
#[derive(Debug)]
pub struct T5Block {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_norm: T5LayerNorm,
    ff: FeedForward,
    ff_norm: T5LayerNorm,
    num_heads: usize,
    d_kv: usize,
    /// Dtype of the residual stream and of `wo`'s input (f32 for f16 models, else the model's).
    residual: DType,
}

impl T5Block {
    fn new(vb: WeightsView, cfg: &T5Config, compute: DType) -> Result<Self> {
        let (d, inner, ff) = (cfg.d_model, cfg.inner_dim(), cfg.d_ff);
        let attn = vb.pp("layer").pp(0);
        let sa = attn.pp("SelfAttention");
        let dense = vb.pp("layer").pp(1);
        let drd = dense.pp("DenseReluDense");
        let norm = |v: WeightsView| -> Result<T5LayerNorm> {
            Ok(T5LayerNorm::new(v.get("weight", &[d])?.to_dtype(compute)?, cfg.layer_norm_epsilon))
        };
        // transformers' `_keep_in_fp32_modules = ["wo"]`: in f16 the FFN output overflows. A
        // stored f16 `wo` is kept as f32; fp8 storage stays fp8 (cast to f32 for each use).
        let wo = |v: WeightsView| -> Result<Linear> {
            let w = v.get("weight", &[d, ff])?;
            let w = if compute == DType::F16 && w.dtype() == DType::F16 { w.to_dtype(DType::F32)? } else { w };
            Linear::new(v.path(), w, None)
        };
        let ff = match cfg.feed_forward_proj {
            T5FeedForward::GatedGelu => FeedForward::Gated {
                wi_0: drd.pp("wi_0").linear(d, ff, false)?,
                wi_1: drd.pp("wi_1").linear(d, ff, false)?,
                wo: wo(drd.pp("wo"))?,
            },
            T5FeedForward::Relu => FeedForward::Relu { wi: drd.pp("wi").linear(d, ff, false)?, wo: wo(drd.pp("wo"))? },
        };
        Ok(T5Block {
            q: sa.pp("q").linear(d, inner, false)?,
            k: sa.pp("k").linear(d, inner, false)?,
            v: sa.pp("v").linear(d, inner, false)?,
            o: sa.pp("o").linear(inner, d, false)?,
            attn_norm: norm(attn.pp("layer_norm"))?,
            ff,
            ff_norm: norm(dense.pp("layer_norm"))?,
            num_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            residual: residual_dtype(compute),
        })
    }

    /// Applies the block to hidden states (B, L, d_model) with the pass's attention bias
    /// ([`T5EncoderModel::attention_bias`]); returns the residual stream (f32 for f16 models).
    pub fn forward(&self, x: &Tensor, bias: &T5AttentionBias, ctx: &ForwardCtx) -> Result<Tensor> {
        let x = x.to_dtype(self.residual)?;
        let h = self.attention(&self.attn_norm.forward(&x)?, bias, ctx)?;
        let x = (x + h.to_dtype(self.residual)?)?;
        let h = self.feed_forward(&self.ff_norm.forward(&x)?, ctx)?;
        x + h.to_dtype(self.residual)?
    }

    fn attention(&self, h: &Tensor, bias: &T5AttentionBias, ctx: &ForwardCtx) -> Result<Tensor> {
        let (b, l, _) = h.dims3()?;
        let (nh, dk) = (self.num_heads, self.d_kv);
        let heads = |t: Tensor| t.reshape((b, l, nh, dk))?.transpose(1, 2)?.contiguous();
        let q = heads(self.q.forward(h, ctx)?)?;
        let k = heads(self.k.forward(h, ctx)?)?;
        let v = heads(self.v.forward(h, ctx)?)?;
        let stat = bias.position.dtype();
        // No 1/sqrt(d_kv): T5 folds it into q's initialisation.
        let mut scores = q.matmul(&k.t()?)?.to_dtype(stat)?.broadcast_add(&bias.position)?;
        if let Some(mask) = &bias.mask {
            scores = scores.broadcast_add(mask)?;
        }
        let p = softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let o = p.matmul(&v)?.transpose(1, 2)?.reshape((b, l, nh * dk))?;
        self.o.forward(&o, ctx)
    }

    fn feed_forward(&self, h: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let (hidden, wo) = match &self.ff {
            FeedForward::Gated { wi_0, wi_1, wo } => {
                // gelu_new (tanh approximation); candle's `gelu` is that one, with a backward.
                ((wi_0.forward(h, ctx)?.gelu()? * wi_1.forward(h, ctx)?)?, wo)
            }
            FeedForward::Relu { wi, wo } => (wi.forward(h, ctx)?.relu()?, wo),
        };
        // f16 models run `wo` in f32, as transformers casts its input to the f32 weight.
        wo.forward(&hidden.to_dtype(self.residual)?, ctx)
    }

    /// The block's LoRA targets in sd-scripts' creation order (`named_modules()` of `T5Attention`,
    /// then `T5DenseGatedActDense`): q, k, v, o, wi_0, wi_1, wo. sd-scripts does not search the
    /// original T5's `T5DenseActDense`, so a `relu` model's FFN has no targets.
    pub fn linears(&self) -> Vec<&Linear> {
        let mut out = vec![&self.q, &self.k, &self.v, &self.o];
        if let FeedForward::Gated { wi_0, wi_1, wo } = &self.ff {
            out.extend([wi_0, wi_1, wo]);
        }
        out
    }
}

/// The residual-stream dtype for a compute dtype (see the module docs on f16).
fn residual_dtype(compute: DType) -> DType {
    if compute == DType::F16 {
        DType::F32
    } else {
        compute
    }
}

/// The T5 encoder (`T5EncoderModel`); weights are plain tensors, LoRA modules come in through
/// the [`ForwardCtx`].
pub struct T5EncoderModel {
    config: T5Config,
    embed_tokens: Tensor,
    /// Block 0's (buckets, heads) table, shared by every block.
    relative_attention_bias: Tensor,
    blocks: Vec<Arc<T5Block>>,
    final_layer_norm: T5LayerNorm,
    dtype: DType,
}

impl std::fmt::Debug for T5EncoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5EncoderModel")
            .field("config", &self.config)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

impl T5EncoderModel {
    /// Builds the model from the root of a `T5EncoderModel` state dict (`shared.*`, `encoder.*`),
    /// computing in the dtype of `encoder.final_layer_norm.weight` (f32, f16, bf16 or f64); see
    /// [`Self::new_in`].
    pub fn new(vb: WeightsView, cfg: &T5Config) -> Result<Self> {
        // Peeked, not read: `new_in` reads it (a missing key is recorded once, there).
        let key = vb.pp("encoder").pp("final_layer_norm").key("weight");
        let dtype = vb.weights().tensor(&key).map_or(DType::F32, Tensor::dtype);
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            candle_core::bail!(
                "T5: encoder.final_layer_norm.weight is {dtype:?}; the encoder computes in the dtype of its norms, \
                 which must be f32, f16, bf16 or f64 (load the weights as one of these, or choose the compute dtype \
                 with T5EncoderModel::new_in)"
            )
        }
        Self::new_in(vb, cfg, dtype)
    }

    /// Builds the model computing in `dtype` (f32, f16, bf16 or f64) whatever the weights are
    /// stored in: norms, the embedding and the position-bias table are cast to it once; linears
    /// stay as stored and are cast for each use (fp8 storage: sd-scripts' `fp8_base` for T5).
    /// The embedding is read from `encoder.embed_tokens.weight`, or `shared.weight` when the
    /// file has only that one (files differ; both are the same tied tensor). Missing or
    /// mis-shaped tensors are recorded in the store (see `Weights::check_complete`), not
    /// reported here.
    pub fn new_in(vb: WeightsView, cfg: &T5Config, dtype: DType) -> Result<Self> {
        cfg.validate()?;
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            candle_core::bail!("T5: cannot compute in {dtype:?}; choose f32, f16, bf16 or f64")
        }
        let d = cfg.d_model;
        let encoder = vb.pp("encoder");
        let final_norm_weight = encoder.pp("final_layer_norm").get("weight", &[d])?.to_dtype(dtype)?;
        let embed_shape = [cfg.vocab_size, d];
        let (embed_key, other_key) = if encoder.contains("embed_tokens.weight") || !vb.contains("shared.weight") {
            (encoder.pp("embed_tokens"), vb.pp("shared"))
        } else {
            (vb.pp("shared"), encoder.pp("embed_tokens"))
        };
        let embed_tokens = embed_key.get("weight", &embed_shape)?;
        if other_key.contains("weight") {
            // The tied copy: read (so it is not reported unused) and shape-checked.
            other_key.get("weight", &embed_shape)?;
        }
        // Rows are cast after the lookup (an f32 table serves any compute dtype); 8-bit tables
        // are cast once, as index_select does not take every storage dtype.
        let embed_tokens = if matches!(embed_tokens.dtype(), DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            embed_tokens
        } else {
            embed_tokens.to_dtype(dtype)?
        };
        let relative_attention_bias = encoder
            .pp("block")
            .pp(0)
            .pp("layer")
            .pp(0)
            .pp("SelfAttention")
            .pp("relative_attention_bias")
            .get("weight", &[cfg.relative_attention_num_buckets, cfg.num_heads])?
            .to_dtype(dtype)?;
        let blocks = (0..cfg.num_layers)
            .map(|i| T5Block::new(encoder.pp("block").pp(i), cfg, dtype).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = T5LayerNorm::new(final_norm_weight, cfg.layer_norm_epsilon);
        Ok(T5EncoderModel {
            config: cfg.clone(),
            embed_tokens,
            relative_attention_bias,
            blocks,
            final_layer_norm,
            dtype,
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// The device the weights live on (outputs are produced there).
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// The compute dtype (outputs have it).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The encoder blocks, in order.
    pub fn blocks(&self) -> &[Arc<T5Block>] {
        &self.blocks
    }

    /// `encoder.final_layer_norm`.
    pub fn final_layer_norm(&self) -> &T5LayerNorm {
        &self.final_layer_norm
    }

    /// The token embeddings of `input_ids` (B, L), in the residual dtype (f32 for f16 models).
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let ids = self.read_ids(input_ids)?;
        self.embed_ids(&ids)
    }

    /// transformers' `last_hidden_state` (B, L, d_model) for `input_ids` (B, L) of an integer
    /// dtype and an optional `attention_mask` (B, L) of 1 (keep) / 0 (padding), any dtype.
    /// sd-scripts passes the mask only with `apply_t5_attn_mask`; without it padding tokens are
    /// attended to like any other.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, ctx: &ForwardCtx) -> Result<Tensor> {
        let ids = self.read_ids(input_ids)?;
        let bias = self.attention_bias(ids.len, attention_mask)?;
        if let Some(mask) = &bias.mask {
            if mask.dim(0)? != ids.batch {
                candle_core::bail!(
                    "T5: attention mask of shape {:?} does not fit token ids of shape {:?}",
                    attention_mask.map(|m| m.dims().to_vec()).unwrap_or_default(),
                    input_ids.dims()
                )
            }
        }
        let mut h = self.embed_ids(&ids)?;
        for block in &self.blocks {
            h = if ctx.gradient_checkpointing {
                let (block, bias) = (Arc::clone(block), bias.clone());
                let f: BlockFn = Arc::new(move |xs: &[Tensor], ctx: &ForwardCtx| block.forward(&xs[0], &bias, ctx));
                checkpoint(&[&h], ctx, f)?
            } else {
                block.forward(&h, &bias, ctx)?
            };
        }
        self.final_layer_norm.forward(&h)
    }

    /// Encodes tokenised prompts as sd-scripts' `FluxTextEncodingStrategy` does: the tokens'
    /// attention mask is applied only when `apply_attn_mask` (`apply_t5_attn_mask`).
    pub fn encode(&self, tokens: &T5Tokens, apply_attn_mask: bool, ctx: &ForwardCtx) -> Result<Tensor> {
        let ids = tokens.ids_tensor(self.device())?;
        let mask = if apply_attn_mask { Some(tokens.mask_tensor(self.device())?) } else { None };
        self.forward(&ids, mask.as_ref(), ctx)
    }

    /// The attention bias of a pass over `len` tokens: relative-position bias (1, heads, len,
    /// len) and, from `attention_mask` (B, len), the padding bias (B, 1, 1, len).
    pub fn attention_bias(&self, len: usize, attention_mask: Option<&Tensor>) -> Result<T5AttentionBias> {
        let stat = stat_dtype(self.dtype);
        let (nb, md) = (self.config.relative_attention_num_buckets, self.config.relative_attention_max_distance);
        // Bucket of every relative position −(len−1)..=len−1, then of every (query, key) pair.
        let by_offset: Vec<u32> = (0..2 * len.max(1) - 1)
            .map(|i| relative_position_bucket(i as i64 - (len as i64 - 1), nb, md) as u32)
            .collect();
        let by_offset = &by_offset;
        let buckets: Vec<u32> = (0..len).flat_map(|q| (0..len).map(move |k| by_offset[k + len - 1 - q])).collect();
        let index = Tensor::from_vec(buckets, len * len, self.device())?;
        let heads = self.config.num_heads;
        let position = self
            .relative_attention_bias
            .index_select(&index, 0)?
            .reshape((len, len, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_dtype(stat)?
            .contiguous()?;
        let mask = match attention_mask {
            None => None,
            Some(m) => {
                let (b, l) = match m.dims() {
                    &[b, l] => (b, l),
                    dims => candle_core::bail!("T5: attention mask must be (batch, length), got shape {dims:?}"),
                };
                if l != len {
                    candle_core::bail!("T5: attention mask of shape {:?} does not fit {len} tokens", m.dims())
                }
                let min = if stat == DType::F64 { f64::MIN } else { f64::from(f32::MIN) };
                // transformers: (1 − mask) · finfo.min.
                let keep = m.to_device(self.device())?.to_dtype(stat)?;
                Some(keep.affine(-min, min)?.reshape((b, 1, 1, len))?)
            }
        };
        Ok(T5AttentionBias { position, mask })
    }

    /// Every linear sd-scripts gives a LoRA with `train_t5xxl=True` (children of `T5Attention`
    /// and `T5DenseGatedActDense`, group Attention), in its creation order; name them with
    /// [`T5_LORA_PREFIX`]. T5-XXL: 168 targets.
    pub fn lora_targets(&self) -> Vec<LoraTarget> {
        self.blocks
            .iter()
            .flat_map(|b| b.linears().into_iter().map(|l| l.lora_target(TargetGroup::Attention)))
            .collect()
    }

    fn embed_ids(&self, ids: &TokenIds) -> Result<Tensor> {
        let index = Tensor::from_slice(&ids.ids, ids.ids.len(), self.device())?;
        self.embed_tokens
            .index_select(&index, 0)?
            .reshape((ids.batch, ids.len, self.config.d_model))?
            .to_dtype(residual_dtype(self.dtype))
    }

    /// Reads (B, L) ids of an integer dtype to the host and checks them against the vocabulary
    /// (T5's relative positions set no length limit).
    fn read_ids(&self, input_ids: &Tensor) -> Result<TokenIds> {
        read_token_ids(input_ids, self.config.vocab_size, None, "T5 encoder")
    }
}
