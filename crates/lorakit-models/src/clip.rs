//! The CLIP text encoder of Stable Diffusion (HF transformers' `CLIPTextModel`), trainable
//! through LoRA.
//!
//! Structure and weight keys follow transformers: `text_model.embeddings.{token,position}_embedding`,
//! `text_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1, mlp.fc2,
//! layer_norm2}`, `text_model.final_layer_norm`. Every linear is a `lorakit_nn::Linear` named by
//! that key path, so a LoRA module attaches by path and its kohya name is
//! `lora_te_text_model_encoder_layers_0_self_attn_q_proj` (sd-scripts spec §2.2/§2.3).
//!
//! Attention is causal (CLIP's text transformer is autoregressive). `lorakit_nn::attention` has
//! no mask, so the attention here is composed from tracked ops — `softmax(q·kᵀ·s + M)·v` with
//! M = −∞ above the diagonal — and candle's autograd differentiates it. The score matrix is
//! (batch·heads, 77, 77), a few MB even for SD1.5 at batch 16, so the memory-efficient kernel
//! would buy nothing here. Scores and softmax run in f32 (f64 for f64 models), as transformers'
//! eager attention does (`softmax(…, dtype=float32)`).
//!
//! An optional key-padding mask ([`ClipTextModel::forward_with_mask`], sd-scripts' SD3
//! `--apply_lg_attn_mask`) adds −∞ on the padded keys of every query, on top of the causal
//! mask, as transformers' `CLIPTextTransformer` does with an `attention_mask` (4.5x:
//! `_prepare_4d_attention_mask` plus the causal mask, `finfo.min` each; 5.x: `create_causal_mask`
//! and-ing both). Padded *queries* still attend to the unpadded keys before them. The two
//! releases (and 5.x's eager and SDPA paths) disagree only on a query that sees no key at all,
//! which needs a row whose first token is masked: such masks are refused (a tokenizer's mask is
//! 1 on BOS). Unmasked passes and masks of all ones take the plain causal path unchanged.
//!
//! On top of the model: sd-scripts' SD1 text conditioning with `clip_skip` and its long-prompt
//! path (spec §6.1: 75-token chunks encoded separately and stitched back together), and its
//! weighted captions (spec §6.2: each position's output times its token's weight).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use lorakit_nn::activation::{gelu, quick_gelu, softmax_last_dim};
use lorakit_nn::checkpoint::{checkpoint, BlockFn};
use lorakit_nn::lora::{LoraTarget, TargetGroup};
use lorakit_nn::{ForwardCtx, LayerNorm, Linear};
use serde::{Deserialize, Serialize};

use crate::clip_tokenizer::{
    chunk_for_clip, chunk_weights_for_clip, sd_scripts_max_length, ClipTokenizer, CLIP_CHUNK_LEN,
};
use crate::token_ids::{read_token_ids, TokenIds};
use crate::weights::WeightsView;
use crate::Error;

/// The MLP activation (`hidden_act` in config.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    /// `x·sigmoid(1.702x)`: OpenAI CLIP ViT-L/14 (SD1, SDXL text encoder 1).
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP ViT-H / bigG (SD2, SDXL text encoder 2).
    Gelu,
    /// tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`).
    #[serde(alias = "gelu_pytorch_tanh")]
    GeluNew,
}

impl ClipActivation {
    fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            ClipActivation::QuickGelu => quick_gelu(x),
            ClipActivation::Gelu => gelu(x),
            ClipActivation::GeluNew => x.gelu(),
        }
    }
}

/// A CLIP text encoder's configuration, read from (and writable as) a transformers `config.json`
/// (field names as there; missing fields take transformers' `CLIPTextConfig` defaults, unknown
/// ones are ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Token embedding rows; ids at or above it are rejected.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads (must divide `hidden_size`).
    pub num_attention_heads: usize,
    /// Position embedding rows: the longest sequence one pass takes (77).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Start-of-text id (informational; the tokenizer adds it).
    pub bos_token_id: Option<u32>,
    /// End-of-text id: the pooled output is taken at its first occurrence (transformers' rule;
    /// when it is 2, legacy configs, at the largest id instead).
    pub eos_token_id: u32,
    /// Padding id (informational; SD1 pads with EOS).
    pub pad_token_id: Option<u32>,
    /// Projection width of the full CLIP model (not used by the text model itself).
    pub projection_dim: Option<usize>,
}

impl Default for ClipTextConfig {
    /// transformers' `CLIPTextConfig()` defaults.
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: Some(49406),
            eos_token_id: 49407,
            pad_token_id: Some(1),
            projection_dim: Some(512),
        }
    }
}

impl ClipTextConfig {
    /// SD1.x's text encoder: OpenAI CLIP ViT-L/14's text tower (`openai/clip-vit-large-patch14`).
    pub fn sd15() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: Some(49406),
            eos_token_id: 49407,
            pad_token_id: Some(49407),
            projection_dim: Some(768),
        }
    }

    /// SD 2.x's text encoder: OpenCLIP ViT-H/14's text tower cut to the 23 layers SD 2 conditions
    /// on, exactly as `stabilityai/stable-diffusion-2-1/text_encoder/config.json` gives it (its
    /// token ids are transformers' placeholders; `eos_token_id = 2` selects the largest-id rule).
    pub fn sd2() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::Gelu,
            layer_norm_eps: 1e-5,
            bos_token_id: Some(0),
            eos_token_id: 2,
            pad_token_id: Some(1),
            projection_dim: Some(512),
        }
    }

    /// SDXL's first text encoder: OpenAI CLIP ViT-L/14's text tower, as
    /// `stabilityai/stable-diffusion-xl-base-1.0/text_encoder/config.json` and sd-scripts'
    /// `load_models_from_sdxl_checkpoint` give it (transformers' placeholder token ids; SDXL
    /// conditions on a hidden state, so the pooling rule is never used).
    pub fn sdxl_te1() -> Self {
        ClipTextConfig { bos_token_id: Some(0), eos_token_id: 2, pad_token_id: Some(1), ..Self::sd15() }
    }

    /// SDXL's second text encoder: OpenCLIP ViT-bigG/14's text tower with all 32 layers and its
    /// 1280 → 1280 `text_projection` (transformers' `CLIPTextModelWithProjection`), as
    /// `text_encoder_2/config.json` of the SDXL base folder and sd-scripts give it.
    pub fn sdxl_te2() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::Gelu,
            layer_norm_eps: 1e-5,
            bos_token_id: Some(0),
            eos_token_id: 2,
            pad_token_id: Some(1),
            projection_dim: Some(1280),
        }
    }

    /// Reads a transformers `config.json` (e.g. `text_encoder/config.json` of a diffusers
    /// folder).
    pub fn from_json_file(path: &Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let cfg: ClipTextConfig = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!("not a CLIP text config: {e}"),
        })?;
        cfg.validate().map_err(|e| Error::Checkpoint { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(cfg)
    }

    /// Every transformers key (and its shape) of a `CLIPTextModel` of this configuration
    /// (`position_ids` aside), plus `text_projection.weight` for a
    /// `CLIPTextModelWithProjection` when `projection` (needs `projection_dim`).
    pub fn parameter_shapes(&self, projection: bool) -> crate::resnet::ParamShapes {
        use crate::resnet::{push_linear, push_norm};
        let (d, i) = (self.hidden_size, self.intermediate_size);
        let mut out = vec![
            ("text_model.embeddings.token_embedding.weight".to_string(), vec![self.vocab_size, d]),
            ("text_model.embeddings.position_embedding.weight".to_string(), vec![self.max_position_embeddings, d]),
        ];
        push_norm(&mut out, "text_model.final_layer_norm", d);
        for l in 0..self.num_hidden_layers {
            let p = format!("text_model.encoder.layers.{l}");
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                push_linear(&mut out, &format!("{p}.self_attn.{proj}"), d, d, true);
            }
            push_norm(&mut out, &format!("{p}.layer_norm1"), d);
            push_norm(&mut out, &format!("{p}.layer_norm2"), d);
            push_linear(&mut out, &format!("{p}.mlp.fc1"), d, i, true);
            push_linear(&mut out, &format!("{p}.mlp.fc2"), i, d, true);
        }
        if let (true, Some(proj)) = (projection, self.projection_dim) {
            push_linear(&mut out, "text_projection", d, proj, false);
        }
        out
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Rejects configurations the model cannot be built from (zero sizes, heads that do not
    /// divide the width).
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            candle_core::bail!("CLIP text config: {name} must be positive")
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            candle_core::bail!(
                "CLIP text config: hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            )
        }
        Ok(())
    }
}

/// What one text-encoder pass returns (transformers' `BaseModelOutputWithPooling` with
/// `output_hidden_states=True`).
#[derive(Clone, Debug)]
pub struct ClipTextOutput {
    /// The last layer's output through `final_layer_norm`, (B, L, D).
    pub last_hidden_state: Tensor,
    /// The embeddings, then every layer's output (no final LayerNorm): `num_hidden_layers + 1`
    /// tensors of (B, L, D). SDXL conditions on one of these directly.
    pub hidden_states: Vec<Tensor>,
    /// `last_hidden_state` at each row's EOS position, (B, D).
    pub pooler_output: Tensor,
}

/// `self_attn`: causal multi-head self-attention.
#[derive(Debug)]
struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl ClipAttention {
    fn new(vb: WeightsView, cfg: &ClipTextConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(ClipAttention {
            q_proj: vb.pp("q_proj").linear(d, d, true)?,
            k_proj: vb.pp("k_proj").linear(d, d, true)?,
            v_proj: vb.pp("v_proj").linear(d, d, true)?,
            out_proj: vb.pp("out_proj").linear(d, d, true)?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let (h, hd) = (self.num_heads, self.head_dim);
        let heads = |t: Tensor| t.reshape((b, l, h, hd))?.transpose(1, 2)?.reshape((b * h, l, hd));
        let q = heads(self.q_proj.forward(x, ctx)?)?;
        let k = heads(self.k_proj.forward(x, ctx)?)?;
        let v = heads(self.v_proj.forward(x, ctx)?)?;
        let o = masked_attention(&q, &k, &v, mask, (hd as f64).powf(-0.5))?;
        let o = o.reshape((b, h, l, hd))?.transpose(1, 2)?.reshape((b, l, d))?;
        self.out_proj.forward(&o, ctx)
    }
}

/// `softmax(q·kᵀ·scale + mask)·v` on (N, L, d) tensors, all tracked ops; `mask` (L, L) or
/// (N, L, L) is additive in the statistics dtype (0 or −∞; every row keeps at least key 0).
fn masked_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(mask.dtype())?.broadcast_add(mask)?;
    softmax_last_dim(&scores)?.to_dtype(v.dtype())?.matmul(v)
}

/// The dtype softmax statistics are computed in for activations of `dtype`.
fn stat_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// sd-scripts' stitching of chunk outputs (spec §6.1): `h` (B·n, L, D), the n chunks of each
/// of B prompts in order, becomes (B, 1 + n·(L − 2) + 1, D): position 0 of chunk 0, positions
/// 1..L−1 of every chunk, then position L − 1 of the last chunk. With n = 1, `h` as is.
pub(crate) fn stitch_chunks(h: &Tensor, b: usize, n: usize) -> Result<Tensor> {
    let (rows, l, d) = h.dims3()?;
    if rows != b * n || l < 2 {
        candle_core::bail!("cannot stitch {rows} rows of {l} positions as {b} prompts of {n} chunks")
    }
    if n == 1 {
        return Ok(h.clone());
    }
    let h = h.reshape((b, n * l, d))?;
    let mut parts = Vec::with_capacity(n + 2);
    parts.push(h.narrow(1, 0, 1)?);
    for i in 0..n {
        parts.push(h.narrow(1, i * l + 1, l - 2)?);
    }
    parts.push(h.narrow(1, n * l - 1, 1)?);
    Tensor::cat(&parts, 1)
}

/// sd-scripts' `encode_tokens_with_weights` product (spec §6.2) on stitched states `h`
/// (B, 2 + n·(L − 2), D) — or (B, L, D) for one chunk — and chunk weights (B, n, L): one chunk,
/// every position by its weight; n chunks, positions 1..L−1 of chunk k by that chunk's weights
/// there, the stitched first and last positions unchanged. Computed in f32 (f64 for f64 states)
/// and rounded once to `h`'s dtype, as PyTorch promotes half states times f32 weights.
pub(crate) fn apply_chunk_weights(h: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let (b, n, l) = weights.dims3()?;
    let expected = if n == 1 { l } else { 2 + n * (l - 2) };
    if h.dims().len() != 3 || h.dim(0)? != b || h.dim(1)? != expected {
        candle_core::bail!(
            "token weights of shape {:?} do not fit hidden states of shape {:?}",
            weights.dims(),
            h.dims()
        )
    }
    let compute = stat_dtype(h.dtype());
    let w = weights.to_device(h.device())?.to_dtype(compute)?;
    let w = if n == 1 {
        w.reshape((b, l))?
    } else {
        let one = Tensor::ones((b, 1), compute, w.device())?;
        let mut parts = Vec::with_capacity(n + 2);
        parts.push(one.clone());
        for k in 0..n {
            parts.push(w.narrow(1, k, 1)?.squeeze(1)?.narrow(1, 1, l - 2)?);
        }
        parts.push(one);
        Tensor::cat(&parts, 1)?
    };
    h.to_dtype(compute)?.broadcast_mul(&w.unsqueeze(2)?)?.to_dtype(h.dtype())
}

/// The additive causal mask (L, L): 0 on and below the diagonal, −∞ above (query i sees keys
/// 0..=i). −∞ rather than transformers' `finfo.min`: exp gives exactly 0 either way, and the
/// diagonal keeps every row's max finite, so no NaN appears in forward or backward.
fn causal_mask(len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> =
        (0..len).flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(values, (len, len), device)?.to_dtype(stat_dtype(dtype))
}

/// `mlp`: fc1 → activation → fc2.
#[derive(Debug)]
struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
    act: ClipActivation,
}

impl ClipMlp {
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(x, ctx)?)?, ctx)
    }
}

/// One pre-LayerNorm transformer layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug)]
pub struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    mlp: ClipMlp,
    layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    fn new(vb: WeightsView, cfg: &ClipTextConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(ClipEncoderLayer {
            self_attn: ClipAttention::new(vb.pp("self_attn"), cfg)?,
            layer_norm1: vb.pp("layer_norm1").layer_norm(d, cfg.layer_norm_eps)?,
            mlp: ClipMlp {
                fc1: vb.pp("mlp").pp("fc1").linear(d, cfg.intermediate_size, true)?,
                fc2: vb.pp("mlp").pp("fc2").linear(cfg.intermediate_size, d, true)?,
                act: cfg.hidden_act,
            },
            layer_norm2: vb.pp("layer_norm2").layer_norm(d, cfg.layer_norm_eps)?,
        })
    }

    /// Applies the layer to hidden states (B, L, D) with the causal mask for L; exposed for
    /// gradient checks and layer-wise use (the model builds the mask once per pass instead).
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let (_, l, _) = x.dims3()?;
        self.forward_masked(x, &causal_mask(l, x.dtype(), x.device())?, ctx)
    }

    fn forward_masked(&self, x: &Tensor, mask: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let h = self.self_attn.forward(&self.layer_norm1.forward(x)?, mask, ctx)?;
        let x = (x + h)?;
        let h = self.mlp.forward(&self.layer_norm2.forward(&x)?, ctx)?;
        x + h
    }

    /// The layer's LoRA targets in transformers' module order (sd-scripts walks
    /// `named_modules()`): `k_proj, v_proj, q_proj, out_proj, fc1, fc2`.
    pub fn linears(&self) -> [&Linear; 6] {
        let a = &self.self_attn;
        [&a.k_proj, &a.v_proj, &a.q_proj, &a.out_proj, &self.mlp.fc1, &self.mlp.fc2]
    }
}

/// The CLIP text transformer (`CLIPTextModel`); weights are plain tensors, LoRA modules come in
/// through the [`ForwardCtx`].
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<Arc<ClipEncoderLayer>>,
    final_layer_norm: LayerNorm,
}

impl std::fmt::Debug for ClipTextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTextModel").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ClipTextModel {
    /// Builds the model from the tensors under `text_model.` of `vb` (the root of a
    /// transformers/diffusers text-encoder store). The view's path prefixes every layer path,
    /// and LoRA names are made from those paths, so pass the store's root. Missing or
    /// mis-shaped tensors are recorded in the store (see `Weights::check_complete`), not
    /// reported here.
    pub fn new(vb: WeightsView, cfg: &ClipTextConfig) -> Result<Self> {
        cfg.validate()?;
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let d = cfg.hidden_size;
        let token_embedding = emb.pp("token_embedding").get("weight", &[cfg.vocab_size, d])?;
        let position_embedding = emb.pp("position_embedding").get("weight", &[cfg.max_position_embeddings, d])?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::new(tm.pp("encoder").pp("layers").pp(i), cfg).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = tm.pp("final_layer_norm").layer_norm(d, cfg.layer_norm_eps)?;
        Ok(ClipTextModel { config: cfg.clone(), token_embedding, position_embedding, layers, final_layer_norm })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The device the weights live on (outputs are produced there).
    pub fn device(&self) -> &Device {
        self.token_embedding.device()
    }

    /// The weights' dtype (outputs have it).
    pub fn dtype(&self) -> DType {
        self.token_embedding.dtype()
    }

    /// The encoder layers, in order.
    pub fn layers(&self) -> &[Arc<ClipEncoderLayer>] {
        &self.layers
    }

    /// `text_model.final_layer_norm`.
    pub fn final_layer_norm(&self) -> &LayerNorm {
        &self.final_layer_norm
    }

    /// Token plus position embeddings for `input_ids` (B, L): the encoder's input and
    /// `hidden_states[0]`.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let ids = self.read_ids(input_ids)?;
        self.embed_ids(&ids)
    }

    /// Runs the model: every hidden state, the final one through `final_layer_norm`, and the
    /// pooled EOS vector (transformers' rule: first position equal to `eos_token_id`, position
    /// 0 when a row has none; largest id when `eos_token_id` is 2).
    pub fn forward(&self, input_ids: &Tensor, ctx: &ForwardCtx) -> Result<ClipTextOutput> {
        self.forward_with_mask(input_ids, None, ctx)
    }

    /// [`Self::forward`] with transformers' `attention_mask` (B, L) of 1 (token) / 0 (padding),
    /// any dtype: padded keys are hidden from every query besides the causal mask (see the
    /// module docs). Refuses a mask of another shape, values other than 0 and 1, and rows whose
    /// first token is masked (no query there would see any key; transformers' releases disagree
    /// on what such a row gives). Pooling ignores the mask, as in transformers.
    pub fn forward_with_mask(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> Result<ClipTextOutput> {
        let ids = self.read_ids(input_ids)?;
        let mask = self.attention_mask(&ids, attention_mask)?;
        let hidden_states = self.run_masked(&ids, self.layers.len(), &mask, ctx)?;
        let last = hidden_states.last().expect("embeddings are always present");
        let last_hidden_state = self.final_layer_norm.forward(last)?;
        let positions: Vec<u32> = (0..ids.batch)
            .map(|b| (b * ids.len + self.pooled_position(&ids.ids[b * ids.len..(b + 1) * ids.len])) as u32)
            .collect();
        let index = Tensor::from_vec(positions, ids.batch, self.device())?;
        let d = self.config.hidden_size;
        let pooler_output = last_hidden_state.reshape((ids.batch * ids.len, d))?.index_select(&index, 0)?;
        Ok(ClipTextOutput { last_hidden_state, hidden_states, pooler_output })
    }

    /// sd-scripts' SD1/SD2 conditioning for `input_ids` (B, L): `clip_skip` None or 1 →
    /// `last_hidden_state`; k ≥ 2 → `final_layer_norm(hidden_states[-k])`. The last k − 1
    /// layers are not run (their output is unused, and so their LoRA modules get no gradient,
    /// as in sd-scripts).
    pub fn encode_hidden(&self, input_ids: &Tensor, clip_skip: Option<usize>, ctx: &ForwardCtx) -> Result<Tensor> {
        let skip = clip_skip.unwrap_or(1);
        let n = self.layers.len();
        if skip == 0 || skip > n + 1 {
            candle_core::bail!("clip_skip must be between 1 and {} for this {n}-layer text encoder, got {skip}", n + 1)
        }
        let ids = self.read_ids(input_ids)?;
        let hidden = self.run(&ids, n + 1 - skip, ctx)?;
        self.final_layer_norm.forward(hidden.last().expect("embeddings are always present"))
    }

    /// The embeddings and the outputs of the first `n_layers` layers for `input_ids` (B, L),
    /// none through `final_layer_norm`: `hidden_states[..=n_layers]` of a full pass, without
    /// running the layers after (so their LoRA modules see no gradient). SDXL conditions on
    /// one of these directly.
    pub fn hidden_states(&self, input_ids: &Tensor, n_layers: usize, ctx: &ForwardCtx) -> Result<Vec<Tensor>> {
        let n = self.layers.len();
        if n_layers > n {
            candle_core::bail!("asked for {n_layers} layers of a {n}-layer text encoder")
        }
        let ids = self.read_ids(input_ids)?;
        self.run(&ids, n_layers, ctx)
    }

    /// sd-scripts' long-prompt encoding (spec §6.1, `SdTextEncodingStrategy.encode_tokens`):
    /// `chunks` (B, n, L) are encoded as B·n separate sequences (with `clip_skip` as in
    /// [`Self::encode_hidden`]) and stitched into (B, 1 + n·(L − 2) + 1, D): position 0 of
    /// chunk 0, positions 1..L−1 of every chunk, then position L − 1 of the last chunk —
    /// 77, 152, 227 positions for 1, 2, 3 chunks of 77. With n = 1 this is `encode_hidden`.
    ///
    /// sd-scripts' SD2 branch would also rewrite a chunk's first position, but its test
    /// compares an id with the EOS token's *string* and never fires, so this stitching is what
    /// sd-scripts computes for SD2 too.
    pub fn encode_chunked(&self, chunks: &Tensor, clip_skip: Option<usize>, ctx: &ForwardCtx) -> Result<Tensor> {
        let (b, n, l) = match chunks.dims() {
            &[b, n, l] => (b, n, l),
            dims => candle_core::bail!("chunked token ids must be (batch, chunks, length), got shape {dims:?}"),
        };
        if b == 0 || n == 0 || l < 2 {
            candle_core::bail!("chunked token ids of shape {:?} hold no chunk of at least 2 tokens", chunks.dims())
        }
        let h = self.encode_hidden(&chunks.reshape((b * n, l))?, clip_skip, ctx)?;
        stitch_chunks(&h, b, n)
    }

    /// sd-scripts' `SdTextEncodingStrategy.encode_tokens_with_weights` (spec §6.2):
    /// [`Self::encode_chunked`] of `chunks` (B, n, L), each output position multiplied by its
    /// token's weight from `weights` (B, n, L) (rows of `chunk_weights_for_clip`). One chunk:
    /// all L positions by their weights; n chunks: positions 1..L−1 of chunk k by that
    /// chunk's weights there, the stitched BOS and last position unchanged. No mean
    /// renormalisation (A1111 and sd-scripts' sampling pipeline rescale; training does not).
    /// The product is taken in f32 (f64 for f64 models) and rounded once to the model's dtype,
    /// as PyTorch promotes fp16 states times f32 weights. It stays in the autograd graph, so
    /// text-encoder LoRA modules get the weighted gradient.
    pub fn encode_chunked_weighted(
        &self,
        chunks: &Tensor,
        weights: &Tensor,
        clip_skip: Option<usize>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        if weights.dims() != chunks.dims() {
            candle_core::bail!(
                "token weights of shape {:?} do not match the chunked token ids of shape {:?}",
                weights.dims(),
                chunks.dims()
            )
        }
        let h = self.encode_chunked(chunks, clip_skip, ctx)?;
        apply_chunk_weights(&h, weights)
    }

    /// Every linear sd-scripts gives a LoRA in this encoder (children of `CLIPAttention` and
    /// `CLIPMLP`, group Attention): per layer `k_proj, v_proj, q_proj, out_proj, fc1, fc2`, in
    /// sd-scripts' creation order. SD1.5: 72 targets.
    pub fn lora_targets(&self) -> Vec<LoraTarget> {
        self.layers.iter().flat_map(|l| l.linears().map(|lin| lin.lora_target(TargetGroup::Attention))).collect()
    }

    /// Embeddings then the first `n_layers` layers; returns every hidden state.
    fn run(&self, ids: &TokenIds, n_layers: usize, ctx: &ForwardCtx) -> Result<Vec<Tensor>> {
        self.run_masked(ids, n_layers, &self.attention_mask(ids, None)?, ctx)
    }

    /// The additive attention mask of a pass: the causal (L, L) one without padding (or when
    /// nothing is padded), else causal plus −∞ on each row's padded keys, (B·heads, L, L).
    fn attention_mask(&self, ids: &TokenIds, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l) = (ids.batch, ids.len);
        let (dtype, device) = (self.dtype(), self.device());
        let Some(mask) = attention_mask else { return causal_mask(l, dtype, device) };
        if mask.dims() != [b, l] {
            candle_core::bail!(
                "CLIP text encoder: attention mask of shape {:?} does not fit token ids of shape ({b}, {l})",
                mask.dims()
            )
        }
        let keep: Vec<f64> = mask.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        if let Some(i) = keep.iter().position(|&m| m != 0.0 && m != 1.0) {
            candle_core::bail!(
                "CLIP text encoder: attention mask value {} (sequence {}, position {}) is neither 0 nor 1",
                keep[i],
                i / l,
                i % l
            )
        }
        if let Some(row) = (0..b).find(|&r| keep[r * l] == 0.0) {
            candle_core::bail!(
                "CLIP text encoder: attention mask row {row} masks its first token, so its first query would see no \
                 key at all (a tokenizer's mask keeps BOS); encode such rows without them instead"
            )
        }
        if keep.iter().all(|&m| m == 1.0) {
            return causal_mask(l, dtype, device);
        }
        let h = self.config.num_attention_heads;
        let mut values = Vec::with_capacity(b * h * l * l);
        for r in 0..b {
            let row = &keep[r * l..(r + 1) * l];
            let one: Vec<f32> = (0..l)
                .flat_map(|i| (0..l).map(move |j| if j > i || row[j] == 0.0 { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            for _ in 0..h {
                values.extend_from_slice(&one);
            }
        }
        Tensor::from_vec(values, (b * h, l, l), device)?.to_dtype(stat_dtype(dtype))
    }

    /// [`Self::run`] with the mask from [`Self::attention_mask`].
    fn run_masked(&self, ids: &TokenIds, n_layers: usize, mask: &Tensor, ctx: &ForwardCtx) -> Result<Vec<Tensor>> {
        let mut h = self.embed_ids(ids)?;
        let mut hidden = Vec::with_capacity(n_layers + 1);
        hidden.push(h.clone());
        for layer in &self.layers[..n_layers] {
            h = if ctx.gradient_checkpointing {
                let (layer, mask) = (Arc::clone(layer), mask.clone());
                let block: BlockFn =
                    Arc::new(move |xs: &[Tensor], ctx: &ForwardCtx| layer.forward_masked(&xs[0], &mask, ctx));
                checkpoint(&[&h], ctx, block)?
            } else {
                layer.forward_masked(&h, mask, ctx)?
            };
            hidden.push(h.clone());
        }
        Ok(hidden)
    }

    fn embed_ids(&self, ids: &TokenIds) -> Result<Tensor> {
        let d = self.config.hidden_size;
        let index = Tensor::from_slice(&ids.ids, ids.ids.len(), self.device())?;
        let tokens = self.token_embedding.index_select(&index, 0)?.reshape((ids.batch, ids.len, d))?;
        tokens.broadcast_add(&self.position_embedding.narrow(0, 0, ids.len)?.unsqueeze(0)?)
    }

    /// The row's pooled position (see [`Self::forward`]).
    fn pooled_position(&self, row: &[u32]) -> usize {
        let eos = self.config.eos_token_id;
        if eos == 2 {
            // torch's argmax: the first maximum.
            let max = row.iter().copied().max().unwrap_or(0);
            row.iter().position(|&t| t == max).unwrap_or(0)
        } else {
            row.iter().position(|&t| t == eos).unwrap_or(0)
        }
    }

    /// Reads (B, L) ids of an integer dtype to the host and checks them against the vocabulary
    /// and the position table.
    fn read_ids(&self, input_ids: &Tensor) -> Result<TokenIds> {
        read_token_ids(
            input_ids,
            self.config.vocab_size,
            Some(self.config.max_position_embeddings),
            "CLIP text encoder",
        )
    }
}

/// What [`ClipTextModelWithProjection`] returns: the text model's pass and the projected
/// pooled vector (transformers' `CLIPTextModelOutput`, hidden states included).
#[derive(Clone, Debug)]
pub struct ClipTextProjectionOutput {
    /// The text model's outputs; `pooler_output` is taken at the position the pass was asked
    /// to pool at (see [`ClipTextModelWithProjection::forward_pooled_at_eos`]).
    pub text: ClipTextOutput,
    /// `text_projection(pooler_output)`, (B, projection_dim).
    pub text_embeds: Tensor,
}

/// transformers' `CLIPTextModelWithProjection`: the CLIP text transformer plus the bias-free
/// `text_projection` linear (`projection_dim × hidden_size`) applied to the pooled vector —
/// SDXL's second text encoder (OpenCLIP ViT-bigG). Weight keys: `text_model.*` as
/// [`ClipTextModel`], and `text_projection.weight`.
pub struct ClipTextModelWithProjection {
    text_model: ClipTextModel,
    text_projection: Linear,
}

impl std::fmt::Debug for ClipTextModelWithProjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTextModelWithProjection").field("config", self.config()).finish_non_exhaustive()
    }
}

impl ClipTextModelWithProjection {
    /// Builds the model from the root of a `CLIPTextModelWithProjection` store (`text_model.*`,
    /// `text_projection.weight`); `cfg.projection_dim` is the projection's width (`None`:
    /// `hidden_size`). Problems are recorded in the store, as [`ClipTextModel::new`].
    pub fn new(vb: WeightsView, cfg: &ClipTextConfig) -> Result<Self> {
        let text_model = ClipTextModel::new(vb.clone(), cfg)?;
        let proj = cfg.projection_dim.unwrap_or(cfg.hidden_size);
        let text_projection = vb.pp("text_projection").linear(cfg.hidden_size, proj, false)?;
        Ok(ClipTextModelWithProjection { text_model, text_projection })
    }

    /// The text transformer.
    pub fn text_model(&self) -> &ClipTextModel {
        &self.text_model
    }

    /// `text_projection` (no bias).
    pub fn text_projection(&self) -> &Linear {
        &self.text_projection
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ClipTextConfig {
        self.text_model.config()
    }

    /// transformers' forward: [`ClipTextModel::forward`] (pooled by the config's EOS rule) and
    /// the projected pooled vector.
    pub fn forward(&self, input_ids: &Tensor, ctx: &ForwardCtx) -> Result<ClipTextProjectionOutput> {
        self.forward_with_mask(input_ids, None, ctx)
    }

    /// [`Self::forward`] with an `attention_mask` (B, L) as [`ClipTextModel::forward_with_mask`]
    /// takes it (sd-scripts' SD3 `apply_lg_attn_mask`).
    pub fn forward_with_mask(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> Result<ClipTextProjectionOutput> {
        let text = self.text_model.forward_with_mask(input_ids, attention_mask, ctx)?;
        let text_embeds = self.text_projection.forward(&text.pooler_output, ctx)?;
        Ok(ClipTextProjectionOutput { text, text_embeds })
    }

    /// sd-scripts' SDXL pass (`pool_workaround`): like [`Self::forward`], but each row is pooled
    /// at its first `eos_id` (position 0 when it has none) — not by the config's rule, which for
    /// SDXL's `eos_token_id = 2` placeholder would take the largest id — then projected.
    pub fn forward_pooled_at_eos(
        &self,
        input_ids: &Tensor,
        eos_id: u32,
        ctx: &ForwardCtx,
    ) -> Result<ClipTextProjectionOutput> {
        let tm = &self.text_model;
        let ids = tm.read_ids(input_ids)?;
        let hidden_states = tm.run(&ids, tm.layers.len(), ctx)?;
        let last = hidden_states.last().expect("embeddings are always present");
        let last_hidden_state = tm.final_layer_norm.forward(last)?;
        let positions: Vec<u32> = (0..ids.batch)
            .map(|b| {
                let row = &ids.ids[b * ids.len..(b + 1) * ids.len];
                (b * ids.len + row.iter().position(|&t| t == eos_id).unwrap_or(0)) as u32
            })
            .collect();
        let index = Tensor::from_vec(positions, ids.batch, tm.device())?;
        let d = tm.config.hidden_size;
        let pooler_output = last_hidden_state.reshape((ids.batch * ids.len, d))?.index_select(&index, 0)?;
        let text_embeds = self.text_projection.forward(&pooler_output, ctx)?;
        Ok(ClipTextProjectionOutput {
            text: ClipTextOutput { last_hidden_state, hidden_states, pooler_output },
            text_embeds,
        })
    }

    /// The text transformer's LoRA targets ([`ClipTextModel::lora_targets`]); sd-scripts gives
    /// `text_projection` none (it searches `CLIPAttention`/`CLIPMLP` children only).
    pub fn lora_targets(&self) -> Vec<LoraTarget> {
        self.text_model.lora_targets()
    }
}

/// Tokenises, chunks and encodes prompts as sd-scripts does for SD1 (spec §6.1): each prompt is
/// padded/truncated to 77, 152 or 227 ids (`max_token_length` None or 75, 150, 225) with the
/// tokenizer's pad id, cut into 77-id chunks, and encoded with [`ClipTextModel::encode_chunked`]
/// → (B, 77 | 152 | 227, D). A truncated prompt is logged as a warning naming the dropped
/// token count, because the model never sees those words.
pub fn encode_prompts(
    model: &ClipTextModel,
    tokenizer: &ClipTokenizer,
    prompts: &[&str],
    max_token_length: Option<usize>,
    clip_skip: Option<usize>,
    ctx: &ForwardCtx,
) -> crate::Result<Tensor> {
    let layout = PromptLayout::new("encode_prompts", prompts.len(), tokenizer, max_token_length)?;
    let mut flat = Vec::new();
    let mut n_chunks = 0;
    for prompt in prompts {
        let (ids, dropped) = tokenizer.encode_padded(prompt, layout.max_length, layout.pad);
        layout.warn_truncated(tokenizer, dropped, prompt);
        let chunks = layout.chunk(&ids);
        n_chunks = chunks.len();
        flat.extend(chunks.iter().flatten().copied());
    }
    let ids = Tensor::from_vec(flat, (prompts.len(), n_chunks, CLIP_CHUNK_LEN), model.device())?;
    Ok(model.encode_chunked(&ids, clip_skip, ctx)?)
}

/// [`encode_prompts`] for captions with attention weights (sd-scripts' `--weighted_captions`,
/// spec §6.2): each prompt is its (text, weight) pieces from
/// `lorakit_dataset::prompt_weights::parse_prompt_attention`, tokenised with
/// [`ClipTokenizer::encode_weighted_padded`], chunked with the same rows for ids and weights,
/// and encoded with [`ClipTextModel::encode_chunked_weighted`]. A prompt of one piece of
/// weight 1.0 gives exactly what [`encode_prompts`] gives.
pub fn encode_weighted_prompts<S: AsRef<str>>(
    model: &ClipTextModel,
    tokenizer: &ClipTokenizer,
    prompts: &[Vec<(S, f64)>],
    max_token_length: Option<usize>,
    clip_skip: Option<usize>,
    ctx: &ForwardCtx,
) -> crate::Result<Tensor> {
    let layout = PromptLayout::new("encode_weighted_prompts", prompts.len(), tokenizer, max_token_length)?;
    let (mut flat_ids, mut flat_weights) = (Vec::new(), Vec::new());
    let mut n_chunks = 0;
    for pieces in prompts {
        let (ids, weights, dropped) = tokenizer.encode_weighted_padded(pieces, layout.max_length, layout.pad);
        if dropped > 0 {
            let text: String = pieces.iter().map(|(t, _)| t.as_ref()).collect();
            layout.warn_truncated(tokenizer, dropped, &text);
        }
        let chunks = layout.chunk(&ids);
        n_chunks = chunks.len();
        flat_ids.extend(chunks.iter().flatten().copied());
        flat_weights.extend(chunk_weights_for_clip(&weights).iter().flatten().copied());
    }
    let shape = (prompts.len(), n_chunks, CLIP_CHUNK_LEN);
    let ids = Tensor::from_vec(flat_ids, shape, model.device())?;
    let weights = Tensor::from_vec(flat_weights, shape, model.device())?;
    Ok(model.encode_chunked_weighted(&ids, &weights, clip_skip, ctx)?)
}

/// The most 75-token chunks a prompt gets at sampling time (sd-scripts' sample images and
/// A1111: 225 tokens).
const EMPHASIS_MAX_CHUNKS: usize = 3;

/// A prompt and its negative encoded as sd-scripts' sample images and A1111 do
/// (`lpw_stable_diffusion.get_weighted_text_embeddings` with `max_embeddings_multiples = 3`,
/// `no_boseos_middle = False`). Each is its (text, weight) pieces from
/// `lorakit_dataset::prompt_weights::parse_prompt_attention`; every piece is tokenised on its
/// own and truncated to 225 tokens in all (with a warning). Both get the chunk count of the
/// longer, are padded with EOS, and every 75-token chunk is encoded with its own BOS and EOS
/// and kept whole, so the result is (1, 77·n, D) — not training's stitched 2 + 75·n. Each
/// position is then multiplied by its token's weight (BOS, EOS and padding: 1.0) and the whole
/// rescaled to the unweighted mean, so emphasis shifts attention without changing the overall
/// magnitude. Returns (prompt, negative).
pub fn encode_emphasis_pair<S: AsRef<str>>(
    model: &ClipTextModel,
    tokenizer: &ClipTokenizer,
    prompt: &[(S, f64)],
    negative: &[(S, f64)],
    clip_skip: Option<usize>,
    ctx: &ForwardCtx,
) -> crate::Result<(Tensor, Tensor)> {
    let max_tokens = EMPHASIS_MAX_CHUNKS * (CLIP_CHUNK_LEN - 2);
    let tokens = |pieces: &[(S, f64)]| {
        let (mut ids, mut weights) = (Vec::new(), Vec::new());
        for (text, weight) in pieces {
            ids.extend(tokenizer.encode(text.as_ref()));
            weights.resize(ids.len(), *weight as f32);
        }
        if ids.len() > max_tokens {
            let text: String = pieces.iter().map(|(t, _)| t.as_ref()).collect();
            warn_truncated(tokenizer, ids.len() - max_tokens, max_tokens, &text);
            ids.truncate(max_tokens);
            weights.truncate(max_tokens);
        }
        (ids, weights)
    };
    let (prompt, negative) = (tokens(prompt), tokens(negative));
    let longest = prompt.0.len().max(negative.0.len());
    let chunks = if longest == 0 { 1 } else { ((longest - 1) / (CLIP_CHUNK_LEN - 2) + 1).min(EMPHASIS_MAX_CHUNKS) };
    let encode = |(ids, weights): &(Vec<u32>, Vec<f32>)| -> crate::Result<Tensor> {
        let (ids, weights) = emphasis_rows(ids, weights, chunks, tokenizer.pad_id());
        let ids = Tensor::from_vec(ids, (chunks, CLIP_CHUNK_LEN), model.device())?;
        let hidden = model.encode_hidden(&ids, clip_skip, ctx)?;
        let d = hidden.dim(2)?;
        let hidden = hidden.reshape((1, chunks * CLIP_CHUNK_LEN, d))?;
        let compute = stat_dtype(hidden.dtype());
        let h = hidden.to_dtype(compute)?;
        let w = Tensor::from_vec(weights, (1, chunks * CLIP_CHUNK_LEN, 1), model.device())?.to_dtype(compute)?;
        let before = h.mean_all()?;
        let weighted = h.broadcast_mul(&w)?;
        let after = weighted.mean_all()?;
        Ok(weighted.broadcast_mul(&(before / after)?)?.to_dtype(hidden.dtype())?)
    };
    Ok((encode(&prompt)?, encode(&negative)?))
}

/// The (n, 77) chunk ids and n·77 position weights of one prompt for [`encode_emphasis_pair`]
/// (lpw's `pad_tokens_and_weights` and its chunk loop): BOS, the tokens, EOS up to n·75 + 2;
/// chunk i is ids[75i .. 75i + 77] with BOS first and EOS last — for a tokenizer whose pad is
/// not EOS (SD 2) a last position that is a text token becomes EOS and a chunk of BOS then pad
/// gets EOS second, as there.
fn emphasis_rows(tokens: &[u32], weights: &[f32], chunks: usize, pad: u32) -> (Vec<u32>, Vec<f32>) {
    let (bos, eos, text_len) = (ClipTokenizer::BOS, ClipTokenizer::EOS, CLIP_CHUNK_LEN - 2);
    let mut full = Vec::with_capacity(chunks * text_len + 2);
    full.push(bos);
    full.extend_from_slice(tokens);
    full.resize(chunks * text_len + 2, eos);
    let mut ids = Vec::with_capacity(chunks * CLIP_CHUNK_LEN);
    let mut w = Vec::with_capacity(chunks * CLIP_CHUNK_LEN);
    for i in 0..chunks {
        let mut chunk = full[i * text_len..i * text_len + CLIP_CHUNK_LEN].to_vec();
        chunk[0] = bos;
        if pad == eos {
            chunk[CLIP_CHUNK_LEN - 1] = eos;
        } else {
            if chunk[CLIP_CHUNK_LEN - 1] != eos && chunk[CLIP_CHUNK_LEN - 1] != pad {
                chunk[CLIP_CHUNK_LEN - 1] = eos;
            }
            if chunk[1] == pad {
                chunk[1] = eos;
            }
        }
        ids.extend(chunk);
        if !weights.is_empty() {
            let start = (i * text_len).min(weights.len());
            let end = ((i + 1) * text_len).min(weights.len());
            w.push(1.0);
            w.extend_from_slice(&weights[start..end]);
            w.push(1.0);
        }
    }
    w.resize(chunks * CLIP_CHUNK_LEN, 1.0);
    (ids, w)
}

/// What sd-scripts' SD tokenize strategy fixes per run: padded length and pad id.
pub(crate) struct PromptLayout {
    pub(crate) max_length: usize,
    pad: u32,
}

impl PromptLayout {
    pub(crate) fn new(
        caller: &str,
        n_prompts: usize,
        tokenizer: &ClipTokenizer,
        max_token_length: Option<usize>,
    ) -> crate::Result<Self> {
        if n_prompts == 0 {
            return Err(Error::Invalid(format!("{caller}: no prompts given")));
        }
        let max_length = sd_scripts_max_length(max_token_length.filter(|&n| n != 75))?;
        Ok(PromptLayout { max_length, pad: tokenizer.pad_id() })
    }

    pub(crate) fn chunk(&self, ids: &[u32]) -> Vec<[u32; CLIP_CHUNK_LEN]> {
        chunk_for_clip(ids, self.pad != ClipTokenizer::EOS, self.pad)
    }

    pub(crate) fn warn_truncated(&self, tokenizer: &ClipTokenizer, dropped: usize, prompt: &str) {
        warn_truncated(tokenizer, dropped, self.max_length - 2, prompt);
    }
}

/// Logs a prompt that lost `dropped` tokens beyond `max_tokens`, because the model never sees
/// those words (nothing when none were dropped).
fn warn_truncated(tokenizer: &ClipTokenizer, dropped: usize, max_tokens: usize, prompt: &str) {
    if let Some(message) = truncation_message(tokenizer, dropped, max_tokens, prompt) {
        tracing::warn!(dropped, max_tokens, "{message}");
    }
}

/// Characters of the cut-off text quoted in the truncation warning.
const TRUNCATION_EXCERPT_CHARS: usize = 40;

/// The truncation warning: the token counts and a short excerpt of the part that was cut (its
/// first words, shortened with `…`; control characters escaped) — not the whole prompt, which
/// can be hundreds of words in every line of a training log.
fn truncation_message(tokenizer: &ClipTokenizer, dropped: usize, max_tokens: usize, prompt: &str) -> Option<String> {
    if dropped == 0 {
        return None;
    }
    let ids = tokenizer.encode(prompt);
    let cut = tokenizer.decode(&ids[ids.len().saturating_sub(dropped)..]);
    let cut = cut.trim();
    let mut excerpt: String = cut.chars().take(TRUNCATION_EXCERPT_CHARS).collect();
    if cut.chars().count() > TRUNCATION_EXCERPT_CHARS {
        excerpt.push('…');
    }
    Some(format!(
        "prompt truncated: {dropped} token(s) beyond the {max_tokens} tokens the text encoder takes were dropped, \
         from \"{}\"",
        lorakit_dataset::caption::escape_controls(&excerpt)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_warning_quotes_a_short_excerpt_of_the_cut_part() {
        let tokenizer = ClipTokenizer::new().unwrap();
        let words: Vec<String> = (0..120).map(|i| format!("tag{i}")).collect();
        let prompt = format!("beginning of the prompt, {}, \x1b[2J final words", words.join(", "));
        let (_, dropped) = tokenizer.encode_padded(&prompt, 77, ClipTokenizer::EOS);
        assert!(dropped > 100);
        let message = truncation_message(&tokenizer, dropped, 75, &prompt).unwrap();
        assert!(message.contains(&format!("{dropped} token(s)")), "{message}");
        assert!(!message.contains("beginning") && !message.contains("final words"), "the whole prompt: {message}");
        assert!(message.ends_with("…\"") && message.chars().count() < 200, "{message}");
        // The excerpt starts where the cut starts: the first dropped token.
        let ids = tokenizer.encode(&prompt);
        let first_cut = tokenizer.decode(&ids[ids.len() - dropped..][..1]);
        assert!(message.contains(&format!("from \"{}", first_cut.trim())), "{first_cut:?}: {message}");
        // A short cut with a control character: quoted whole, escaped.
        let tail = "x ".repeat(80) + "\x1b[31mred";
        let (_, dropped) = tokenizer.encode_padded(&tail, 77, ClipTokenizer::EOS);
        let message = truncation_message(&tokenizer, dropped, 75, &tail).unwrap();
        assert!(!message.contains('\x1b'), "{message}");
        assert_eq!(truncation_message(&tokenizer, 0, 75, "short"), None);
    }
}
