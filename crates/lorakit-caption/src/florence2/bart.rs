//! Florence-2's language model: BART (post-LayerNorm encoder–decoder, learned positions with
//! BART's offset of 2, optional √d embedding scale) with a KV cache, ported from transformers
//! 5.25 `modeling_bart.py`.
//!
//! Weight paths mirror the checkpoint: `model.language_model.{shared, encoder.{embed_positions,
//! layernorm_embedding, layers.{i}.{self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2,
//! final_layer_norm}}, decoder.{…, layers.{i}.{…, encoder_attn.*, encoder_attn_layer_norm}}}` and
//! `lm_head` (absent when tied to `shared`).

use candle_core::{Result as CResult, Tensor, D};
use lorakit_nn::norm::LayerNorm;
use lorakit_nn::FrozenLinear;
use serde_json::Value;

use super::{bool_or, usize_or, Florence2Error, Result, Weights};

/// BART's position-id offset (its embedding tables have two extra leading rows).
const POSITION_OFFSET: usize = 2;

/// What `text_config` states.
#[derive(Debug, Clone, PartialEq)]
pub struct BartConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub d_model: usize,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers.
    pub decoder_layers: usize,
    /// Encoder heads.
    pub encoder_attention_heads: usize,
    /// Decoder heads.
    pub decoder_attention_heads: usize,
    /// Encoder FFN width.
    pub encoder_ffn_dim: usize,
    /// Decoder FFN width.
    pub decoder_ffn_dim: usize,
    /// Longest sequence the position tables cover.
    pub max_position_embeddings: usize,
    /// Multiply token embeddings by √d_model.
    pub scale_embedding: bool,
}

impl BartConfig {
    /// Reads `text_config` (transformers' `BartConfig` defaults for absent keys).
    pub fn from_config(c: &Value) -> Result<Self> {
        let act = c.get("activation_function").and_then(Value::as_str).unwrap_or("gelu");
        if act != "gelu" {
            return Err(Florence2Error::Config(format!(
                "text_config.activation_function `{act}` is not supported (gelu)"
            )));
        }
        let cfg = BartConfig {
            vocab_size: usize_or(c, "vocab_size", Some(50265))?,
            d_model: usize_or(c, "d_model", Some(1024))?,
            encoder_layers: usize_or(c, "encoder_layers", Some(12))?,
            decoder_layers: usize_or(c, "decoder_layers", Some(12))?,
            encoder_attention_heads: usize_or(c, "encoder_attention_heads", Some(16))?,
            decoder_attention_heads: usize_or(c, "decoder_attention_heads", Some(16))?,
            encoder_ffn_dim: usize_or(c, "encoder_ffn_dim", Some(4096))?,
            decoder_ffn_dim: usize_or(c, "decoder_ffn_dim", Some(4096))?,
            max_position_embeddings: usize_or(c, "max_position_embeddings", Some(1024))?,
            scale_embedding: bool_or(c, "scale_embedding", false)?,
        };
        for heads in [cfg.encoder_attention_heads, cfg.decoder_attention_heads] {
            if heads == 0 || cfg.d_model % heads != 0 {
                return Err(Florence2Error::Config(format!(
                    "text_config.d_model {} is not divisible by {heads} attention heads",
                    cfg.d_model
                )));
            }
        }
        Ok(cfg)
    }
}

/// `BartAttention`: separate q/k/v/out projections, scale 1/√head_dim.
struct Attention {
    q: FrozenLinear,
    k: FrozenLinear,
    v: FrozenLinear,
    out: FrozenLinear,
    heads: usize,
}

impl Attention {
    fn load(w: &Weights, path: &str, d: usize, heads: usize) -> Result<Self> {
        Ok(Attention {
            q: w.linear(&format!("{path}.q_proj"), d, d, true)?,
            k: w.linear(&format!("{path}.k_proj"), d, d, true)?,
            v: w.linear(&format!("{path}.v_proj"), d, d, true)?,
            out: w.linear(&format!("{path}.out_proj"), d, d, true)?,
            heads,
        })
    }

    /// Keys and values (B, heads, L, hd) of `x` (B, L, d).
    fn kv(&self, x: &Tensor) -> CResult<(Tensor, Tensor)> {
        Ok((self.split(&self.k.forward(x)?)?, self.split(&self.v.forward(x)?)?))
    }

    fn split(&self, x: &Tensor) -> CResult<Tensor> {
        let (b, l, d) = x.dims3()?;
        x.reshape((b, l, self.heads, d / self.heads))?.transpose(1, 2)?.contiguous()
    }

    /// Attention of `x` (B, Lq, d) over cached keys/values; `causal_from` = Some(p) masks key j
    /// for query i when j > p + i (the queries sit at positions p, p+1, … of the keys).
    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, causal_from: Option<usize>) -> CResult<Tensor> {
        let (b, lq, d) = x.dims3()?;
        let hd = d / self.heads;
        let q = self.split(&self.q.forward(x)?)?;
        let mut scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let lk = k.dim(2)?;
        if let Some(p) = causal_from {
            if lq > 1 {
                let mask: Vec<f32> = (0..lq)
                    .flat_map(|i| (0..lk).map(move |j| if j > p + i { f32::NEG_INFINITY } else { 0.0 }))
                    .collect();
                let mask = Tensor::from_vec(mask, (1, 1, lq, lk), x.device())?;
                scores = scores.broadcast_add(&mask)?;
            }
        }
        let p = candle_core::Tensor::exp(&scores.broadcast_sub(&scores.max_keepdim(D::Minus1)?)?)?;
        let p = p.broadcast_div(&p.sum_keepdim(D::Minus1)?)?;
        let o = p.matmul(v)?.transpose(1, 2)?.reshape((b, lq, d))?;
        self.out.forward(&o)
    }
}

struct Ffn {
    fc1: FrozenLinear,
    fc2: FrozenLinear,
}

impl Ffn {
    fn load(w: &Weights, path: &str, d: usize, hidden: usize) -> Result<Self> {
        Ok(Ffn {
            fc1: w.linear(&format!("{path}.fc1"), d, hidden, true)?,
            fc2: w.linear(&format!("{path}.fc2"), hidden, d, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        self.fc2.forward(&lorakit_nn::activation::gelu(&self.fc1.forward(x)?)?)
    }
}

struct EncoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    ffn: Ffn,
    final_layer_norm: LayerNorm,
}

struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: Attention,
    encoder_attn_layer_norm: LayerNorm,
    ffn: Ffn,
    final_layer_norm: LayerNorm,
}

/// The decoder's state across steps: self-attention keys/values so far and the cross-attention
/// keys/values of the encoder output (computed once), per layer.
#[derive(Clone)]
pub struct Cache {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<(Tensor, Tensor)>,
    len: usize,
}

impl Cache {
    /// Decoder positions already processed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no decoder position has been processed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the batch rows `rows` (in that order) — beam search reorders its beams this way.
    pub fn select(&self, rows: &Tensor) -> CResult<Cache> {
        let pick = |t: &Tensor| t.index_select(rows, 0);
        Ok(Cache {
            self_kv: self
                .self_kv
                .iter()
                .map(|kv| kv.as_ref().map(|(k, v)| Ok::<_, candle_core::Error>((pick(k)?, pick(v)?))).transpose())
                .collect::<CResult<_>>()?,
            cross_kv: self.cross_kv.iter().map(|(k, v)| Ok((pick(k)?, pick(v)?))).collect::<CResult<_>>()?,
            len: self.len,
        })
    }
}

/// BART with Florence-2's LM head.
pub struct Bart {
    config: BartConfig,
    shared: Tensor,
    embed_scale: f64,
    enc_positions: Tensor,
    enc_layernorm_embedding: LayerNorm,
    enc_layers: Vec<EncoderLayer>,
    dec_positions: Tensor,
    dec_layernorm_embedding: LayerNorm,
    dec_layers: Vec<DecoderLayer>,
    lm_head: Tensor,
}

impl Bart {
    /// Builds BART from the tensors under `prefix` (`model.language_model`); the LM head is
    /// `shared` when `tie`, else `{lm_head}.weight`.
    pub fn load(w: &Weights, prefix: &str, lm_head: &str, c: &BartConfig, tie: bool) -> Result<Self> {
        let d = c.d_model;
        let shared = w.get(&format!("{prefix}.shared.weight"), &[c.vocab_size, d])?;
        let positions = c.max_position_embeddings + POSITION_OFFSET;
        let attn = |p: &str, heads: usize| Attention::load(w, p, d, heads);
        let enc_layers = (0..c.encoder_layers)
            .map(|i| {
                let p = format!("{prefix}.encoder.layers.{i}");
                Ok(EncoderLayer {
                    self_attn: attn(&format!("{p}.self_attn"), c.encoder_attention_heads)?,
                    self_attn_layer_norm: w.layer_norm(&format!("{p}.self_attn_layer_norm"), d)?,
                    ffn: Ffn::load(w, &p, d, c.encoder_ffn_dim)?,
                    final_layer_norm: w.layer_norm(&format!("{p}.final_layer_norm"), d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let dec_layers = (0..c.decoder_layers)
            .map(|i| {
                let p = format!("{prefix}.decoder.layers.{i}");
                Ok(DecoderLayer {
                    self_attn: attn(&format!("{p}.self_attn"), c.decoder_attention_heads)?,
                    self_attn_layer_norm: w.layer_norm(&format!("{p}.self_attn_layer_norm"), d)?,
                    encoder_attn: attn(&format!("{p}.encoder_attn"), c.decoder_attention_heads)?,
                    encoder_attn_layer_norm: w.layer_norm(&format!("{p}.encoder_attn_layer_norm"), d)?,
                    ffn: Ffn::load(w, &p, d, c.decoder_ffn_dim)?,
                    final_layer_norm: w.layer_norm(&format!("{p}.final_layer_norm"), d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if tie { shared.clone() } else { w.get(&format!("{lm_head}.weight"), &[c.vocab_size, d])? };
        Ok(Bart {
            config: c.clone(),
            embed_scale: if c.scale_embedding { (d as f64).sqrt() } else { 1.0 },
            enc_positions: w.get(&format!("{prefix}.encoder.embed_positions.weight"), &[positions, d])?,
            enc_layernorm_embedding: w.layer_norm(&format!("{prefix}.encoder.layernorm_embedding"), d)?,
            enc_layers,
            dec_positions: w.get(&format!("{prefix}.decoder.embed_positions.weight"), &[positions, d])?,
            dec_layernorm_embedding: w.layer_norm(&format!("{prefix}.decoder.layernorm_embedding"), d)?,
            dec_layers,
            lm_head,
            shared,
        })
    }

    /// The config it was built from.
    pub fn config(&self) -> &BartConfig {
        &self.config
    }

    /// Scaled token embeddings (L, d) (`BartScaledWordEmbedding`).
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(Florence2Error::Tokenizer(format!(
                "token id {bad} is outside the model's vocabulary ({}): tokenizer.json does not belong to this model",
                self.config.vocab_size
            )));
        }
        let idx = Tensor::new(ids, self.shared.device())?;
        Ok((self.shared.index_select(&idx, 0)? * self.embed_scale)?)
    }

    fn positions(&self, table: &Tensor, start: usize, len: usize) -> CResult<Tensor> {
        if start + len > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence of {} tokens is longer than the model's {} positions",
                start + len,
                self.config.max_position_embeddings
            )
        }
        table.narrow(0, start + POSITION_OFFSET, len)
    }

    /// Encoder output (B, L, d) of input embeddings (B, L, d) (no padding mask: one sequence).
    pub fn encode(&self, embeds: &Tensor) -> CResult<Tensor> {
        let l = embeds.dim(1)?;
        let x = embeds.broadcast_add(&self.positions(&self.enc_positions, 0, l)?)?;
        let mut x = self.enc_layernorm_embedding.forward(&x)?;
        for layer in &self.enc_layers {
            let (k, v) = layer.self_attn.kv(&x)?;
            let a = layer.self_attn.attend(&x, &k, &v, None)?;
            x = layer.self_attn_layer_norm.forward(&(x + a)?)?;
            let f = layer.ffn.forward(&x)?;
            x = layer.final_layer_norm.forward(&(x + f)?)?;
        }
        Ok(x)
    }

    /// A fresh decoder cache for encoder output (B, L, d).
    pub fn new_cache(&self, encoder_out: &Tensor) -> CResult<Cache> {
        Ok(Cache {
            self_kv: vec![None; self.dec_layers.len()],
            cross_kv: self.dec_layers.iter().map(|l| l.encoder_attn.kv(encoder_out)).collect::<CResult<_>>()?,
            len: 0,
        })
    }

    /// Runs decoder tokens `ids` (B, T) after the cached positions and returns the logits
    /// (B, T, vocab), appending to the cache.
    pub fn decode(&self, ids: &Tensor, cache: &mut Cache) -> CResult<Tensor> {
        let (b, t) = ids.dims2()?;
        let d = self.config.d_model;
        let emb = (self.shared.index_select(&ids.flatten_all()?, 0)? * self.embed_scale)?.reshape((b, t, d))?;
        let x = emb.broadcast_add(&self.positions(&self.dec_positions, cache.len, t)?)?;
        let mut x = self.dec_layernorm_embedding.forward(&x)?;
        for (i, layer) in self.dec_layers.iter().enumerate() {
            let (k, v) = layer.self_attn.kv(&x)?;
            let (k, v) = match &cache.self_kv[i] {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                None => (k, v),
            };
            let a = layer.self_attn.attend(&x, &k, &v, Some(cache.len))?;
            cache.self_kv[i] = Some((k, v));
            x = layer.self_attn_layer_norm.forward(&(x + a)?)?;
            let (ck, cv) = &cache.cross_kv[i];
            let a = layer.encoder_attn.attend(&x, ck, cv, None)?;
            x = layer.encoder_attn_layer_norm.forward(&(x + a)?)?;
            let f = layer.ffn.forward(&x)?;
            x = layer.final_layer_norm.forward(&(x + f)?)?;
        }
        cache.len += t;
        x.broadcast_matmul(&self.lm_head.t()?)
    }
}
