//! SD3's text conditioning exactly as sd-scripts computes it (`library/strategy_sd3.py`:
//! `Sd3TokenizeStrategy`, `Sd3TextEncodingStrategy.encode_tokens`,
//! `drop_cached_text_encoder_outputs`, `concat_encodings`): CLIP-L, CLIP-G and T5-XXL.
//!
//! - Tokens: CLIP-L (`openai/clip-vit-large-patch14`) and CLIP-G (laion bigG, `pad_token_id`
//!   forced to 0) to 77 ids, CLIP-L padded with EOS, CLIP-G with id 0 (`!`); T5 to
//!   `t5xxl_max_token_length` (256) padded with `<pad>`. Attention masks: 1 on BOS, the text and
//!   EOS, 0 on padding. sd-scripts loads laion's tokenizer (pad token `<|endoftext|>`) and only
//!   then sets the pad id, so a `!` in the text stays an ordinary BPE character for CLIP-G — no
//!   splitting at `!` as diffusers' SD3 `tokenizer_2` does (see the differences below). (laion's
//!   own pad token is not `!`: diffusers' `convert_from_ckpt` loads that tokenizer with an
//!   explicit `pad_token="!"`.)
//! - CLIP-L and CLIP-G are both `CLIPTextModelWithProjection`s (sd-scripts gives CLIP-L an
//!   identity `text_projection` when its file has none: [`clip_l_from_weights`]). Each gives its
//!   penultimate hidden state (`hidden_states[-2]`, no final LayerNorm) and its projected EOS
//!   vector; `lg_out` = the two hidden states side by side (B, 77, 768 + 1280), `lg_pooled` =
//!   the two pooled vectors (B, 768 + 1280). T5 gives its `last_hidden_state` (B, L, 4096).
//! - Masks: `apply_lg_attn_mask` passes each CLIP's padding mask into the encoder,
//!   `apply_t5_attn_mask` T5's; the returned hidden states are never masked. The MMDiT itself
//!   never gets a mask in sd-scripts (its training step sets them to None, "TODO support
//!   attention mask"). sd-scripts passes the options only when caching outputs; its training
//!   step and its sampler call `encode_tokens` with both False (the method's defaults, not the
//!   strategy's), which [`Sd3TextEncoders::encode_tokens`] reproduces with explicit flags.
//!   With `apply_lg_attn_mask` each CLIP hides its padded keys from every query
//!   ([`ClipTextModelWithProjection::forward_with_mask`]); the padded positions of `lg_out` then
//!   change (they no longer see the padding before them), the text positions do not.
//! - Dropout (`clip_l_dropout_rate`, `clip_g_dropout_rate`, `t5_dropout_rate`): a dropped row's
//!   encoder output, pooled vector and attention mask are zeros; the encoder does not run on
//!   dropped rows. Draw order (Python `random.random()`, a draw only where the rate is > 0):
//!   for each row CLIP-L then CLIP-G, then for each row T5; a row drops when its draw is below
//!   the rate ([`Sd3DropoutRates::draw`]). sd-scripts also drops in its sampler (enable_dropout
//!   defaults to True there); whether to copy that is the caller's choice.
//! - Cached outputs get the same dropout at each step ([`Sd3TextOutput::drop_cached`]).
//! - `concat_encodings` ([`Sd3TextOutput::context_and_pooled`]): `lg_out` zero-padded on
//!   features to T5's width, then T5's states after it on the sequence axis → context
//!   (B, 77 + L, 4096); pooled = `lg_pooled`. Without T5 (no T5 file, outputs not cached)
//!   sd-scripts puts 77 rows of zeros in T5's place: (B, 154, 4096).
//! - Weighted captions: not supported for SD3 by sd-scripts (`Sd3TokenizeStrategy` has no
//!   `tokenize_with_weights`; `--weighted_captions` raises NotImplementedError), so none here.
//!
//! Where diffusers 0.42's `StableDiffusion3Pipeline.encode_prompt` differs from sd-scripts:
//! its `tokenizer_2` pads with `!` *and* splits the text at every `!` (id 0 instead of the BPE
//! of `!`), so CLIP-G's output differs for prompts containing `!`; it never passes attention
//! masks; and without T5 it uses `max_sequence_length` zero rows (256) instead of 77.
//! Everything else agrees exactly.
//!
//! LoRA: sd-scripts' `lora_sd3` names CLIP-L's modules [`CLIP_L_LORA_PREFIX`], CLIP-G's
//! [`CLIP_G_LORA_PREFIX`] and T5's [`T5_LORA_PREFIX`] (only with `train_t5xxl`); the CLIPs'
//! module paths are identical, so each encoder takes its own [`ForwardCtx`].

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use lorakit_nn::lora::LoraTarget;
use lorakit_nn::ForwardCtx;

use crate::checkpoint::{read_component, LinearStorage};
use crate::clip::{ClipTextConfig, ClipTextModelWithProjection};
use crate::clip_tokenizer::ClipTokenizer;
pub use crate::t5::T5_LORA_PREFIX;
use crate::t5::{T5Config, T5EncoderModel};
use crate::t5_tokenizer::T5Tokenizer;
use crate::{Error, Result, Weights};

/// kohya's prefix of CLIP-L's LoRA modules in SD3 files.
pub const CLIP_L_LORA_PREFIX: &str = "lora_te1";
/// kohya's prefix of CLIP-G's LoRA modules in SD3 files.
pub const CLIP_G_LORA_PREFIX: &str = "lora_te2";
/// Tokens per prompt for both CLIPs.
pub const CLIP_LENGTH: usize = 77;
/// sd-scripts' default `t5xxl_max_token_length` for SD3.
pub const SD3_T5_MAX_LENGTH: usize = 256;
/// Rows of zeros sd-scripts' `concat_encodings` puts in T5's place when there is no T5 output.
pub const NO_T5_LENGTH: usize = 77;

/// How prompts are encoded (sd-scripts' `--t5xxl_max_token_length`, `--apply_lg_attn_mask`,
/// `--apply_t5_attn_mask`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sd3TextOptions {
    /// T5 tokens per prompt (default 256).
    pub t5_max_length: usize,
    /// Pass the CLIPs' padding masks into CLIP-L and CLIP-G.
    pub apply_lg_attn_mask: bool,
    /// Pass T5's padding mask into T5.
    pub apply_t5_attn_mask: bool,
}

impl Default for Sd3TextOptions {
    fn default() -> Self {
        Sd3TextOptions { t5_max_length: SD3_T5_MAX_LENGTH, apply_lg_attn_mask: false, apply_t5_attn_mask: false }
    }
}

/// Per-encoder dropout rates (`--clip_l_dropout_rate`, `--clip_g_dropout_rate`,
/// `--t5_dropout_rate`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sd3DropoutRates {
    /// CLIP-L's rate.
    pub clip_l: f64,
    /// CLIP-G's rate.
    pub clip_g: f64,
    /// T5's rate.
    pub t5: f64,
}

impl Sd3DropoutRates {
    /// Refuses rates outside [0, 1].
    pub fn validate(&self) -> Result<()> {
        for (name, r) in
            [("clip_l_dropout_rate", self.clip_l), ("clip_g_dropout_rate", self.clip_g), ("t5_dropout_rate", self.t5)]
        {
            if !(0.0..=1.0).contains(&r) {
                return Err(Error::Invalid(format!("{name} must be between 0 and 1, got {r}")));
            }
        }
        Ok(())
    }

    /// The rows each encoder drops, drawn in sd-scripts' order from `uniform` (values in [0, 1),
    /// Python's `random.random()`): for each row a CLIP-L draw then a CLIP-G draw (only where
    /// `has_clip` and that rate is > 0), then for each row a T5 draw (only where `has_t5` and
    /// its rate is > 0). A row drops when its draw is below the rate.
    pub fn draw(&self, batch: usize, has_clip: bool, has_t5: bool, uniform: &mut dyn FnMut() -> f64) -> Sd3Drops {
        let mut drops = Sd3Drops::none(batch);
        let mut roll = |rate: f64| rate > 0.0 && uniform() < rate;
        if has_clip {
            for i in 0..batch {
                drops.clip_l[i] = roll(self.clip_l);
                drops.clip_g[i] = roll(self.clip_g);
            }
        }
        if has_t5 {
            for i in 0..batch {
                drops.t5[i] = roll(self.t5);
            }
        }
        drops
    }
}

/// Which rows of a batch each encoder drops (zeroes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sd3Drops {
    /// CLIP-L's rows.
    pub clip_l: Vec<bool>,
    /// CLIP-G's rows.
    pub clip_g: Vec<bool>,
    /// T5's rows.
    pub t5: Vec<bool>,
}

impl Sd3Drops {
    /// No row dropped.
    pub fn none(batch: usize) -> Self {
        Sd3Drops { clip_l: vec![false; batch], clip_g: vec![false; batch], t5: vec![false; batch] }
    }

    fn check(&self, batch: usize) -> Result<()> {
        if [&self.clip_l, &self.clip_g, &self.t5].iter().any(|v| v.len() != batch) {
            return Err(Error::Invalid(format!(
                "dropout rows for {}/{}/{} prompts (CLIP-L/CLIP-G/T5), the batch has {batch}",
                self.clip_l.len(),
                self.clip_g.len(),
                self.t5.len()
            )));
        }
        Ok(())
    }
}

/// `Sd3TokenizeStrategy.tokenize`'s six tensors, all `u32`.
#[derive(Clone, Debug)]
pub struct Sd3Tokens {
    /// CLIP-L ids (B, 77), EOS-padded.
    pub l_ids: Tensor,
    /// CLIP-G ids (B, 77), padded with 0.
    pub g_ids: Tensor,
    /// T5 ids (B, t5_max_length), padded with 0.
    pub t5_ids: Tensor,
    /// CLIP-L mask (B, 77): 1 on real tokens.
    pub l_attn_mask: Tensor,
    /// CLIP-G mask (B, 77).
    pub g_attn_mask: Tensor,
    /// T5 mask (B, t5_max_length).
    pub t5_attn_mask: Tensor,
}

/// `encode_tokens`' six outputs; a part is `None` where its encoder was not given (its output
/// then comes from a cache, as in sd-scripts' partial caching).
#[derive(Clone, Debug)]
pub struct Sd3TextOutput {
    /// CLIP-L's and CLIP-G's penultimate hidden states side by side: (B, 77, Dl + Dg).
    pub lg_out: Option<Tensor>,
    /// T5's last hidden state (B, L, Dt).
    pub t5_out: Option<Tensor>,
    /// CLIP-L's and CLIP-G's projected pooled vectors side by side: (B, Pl + Pg).
    pub lg_pooled: Option<Tensor>,
    /// CLIP-L's attention mask (B, 77), zero on dropped rows.
    pub l_attn_mask: Option<Tensor>,
    /// CLIP-G's attention mask (B, 77), zero on dropped rows.
    pub g_attn_mask: Option<Tensor>,
    /// T5's attention mask (B, L), zero on dropped rows.
    pub t5_attn_mask: Option<Tensor>,
    /// CLIP-L's share of `lg_out`'s features (its hidden size, 768 for SD3): where
    /// [`Self::drop_cached`] splits CLIP-L from CLIP-G (sd-scripts' constant 768). Set by the
    /// encoders (kept after [`Sd3TextEncoders::release_clips`]); 0 when they never held the
    /// CLIPs — set it when filling `lg_out` from a cache.
    pub l_width: usize,
    /// CLIP-L's share of `lg_pooled` (its projection width, 768 for SD3); as `l_width`.
    pub l_pooled_width: usize,
}

impl Sd3TextOutput {
    /// Rows in the batch.
    pub fn batch(&self) -> Result<usize> {
        let any = [&self.lg_out, &self.t5_out, &self.lg_pooled].into_iter().flatten().next();
        let t = any.ok_or_else(|| Error::Invalid("SD3 text output holds neither CLIP nor T5 outputs".into()))?;
        Ok(t.dim(0)?)
    }

    /// sd-scripts' `drop_cached_text_encoder_outputs` with the rows drawn beforehand
    /// ([`Sd3DropoutRates::draw`] with `has_clip = lg_out.is_some()`, `has_t5 =
    /// t5_out.is_some()`): CLIP-L's features of `lg_out` (the first [`Self::l_width`]) and of
    /// `lg_pooled` and its mask are zeroed on its dropped rows, CLIP-G's (the rest) likewise,
    /// T5's output and mask on T5's.
    pub fn drop_cached(&self, drops: &Sd3Drops) -> Result<Sd3TextOutput> {
        drops.check(self.batch()?)?;
        let zero_masks = |m: &Option<Tensor>, rows: &[bool]| -> Result<Option<Tensor>> {
            m.as_ref().map(|m| zero_rows(m, rows)).transpose()
        };
        let split = |t: &Option<Tensor>, width: usize| -> Result<Option<Tensor>> {
            let Some(t) = t else { return Ok(None) };
            let last = t.rank() - 1;
            let d = t.dim(last)?;
            if width == 0 || width > d {
                return Err(Error::Invalid(format!(
                    "SD3 text output: CLIP-L's width {width} does not split the {d} CLIP features (set l_width / \
                     l_pooled_width to CLIP-L's hidden size / projection width, 768 for SD3)"
                )));
            }
            let l = zero_rows(&t.narrow(last, 0, width)?, &drops.clip_l)?;
            let g = zero_rows(&t.narrow(last, width, d - width)?, &drops.clip_g)?;
            Ok(Some(Tensor::cat(&[&l, &g], last)?))
        };
        Ok(Sd3TextOutput {
            lg_out: split(&self.lg_out, self.l_width)?,
            lg_pooled: split(&self.lg_pooled, self.l_pooled_width)?,
            t5_out: self.t5_out.as_ref().map(|t| zero_rows(t, &drops.t5)).transpose()?,
            l_attn_mask: zero_masks(&self.l_attn_mask, &drops.clip_l)?,
            g_attn_mask: zero_masks(&self.g_attn_mask, &drops.clip_g)?,
            t5_attn_mask: zero_masks(&self.t5_attn_mask, &drops.t5)?,
            l_width: self.l_width,
            l_pooled_width: self.l_pooled_width,
        })
    }

    /// sd-scripts' `concat_encodings`: (context (B, 77 + L, Dt), pooled (B, Pl + Pg)), the
    /// width Dt read from `t5_out`. Without a T5 output use [`Self::context_and_pooled_for`].
    pub fn context_and_pooled(&self) -> Result<(Tensor, Tensor)> {
        let t5 = self.t5_out.as_ref().ok_or_else(|| {
            Error::Invalid(
                "SD3 text output has no T5 part: give the context width (the MMDiT's context_embedder input) to \
                 context_and_pooled_for, which fills T5's place with zeros as sd-scripts does"
                    .into(),
            )
        })?;
        self.context_and_pooled_for(t5.dim(2)?)
    }

    /// [`Self::context_and_pooled`] for a model whose context is `context_dim` wide (the
    /// MMDiT's `context_embedder` input, 4096): a T5 output must have that width; without one,
    /// [`NO_T5_LENGTH`] rows of zeros take its place, as in sd-scripts.
    pub fn context_and_pooled_for(&self, context_dim: usize) -> Result<(Tensor, Tensor)> {
        let (lg, pooled) = match (&self.lg_out, &self.lg_pooled) {
            (Some(lg), Some(p)) => (lg, p),
            _ => {
                return Err(Error::Invalid(
                    "SD3 text output has no CLIP part (lg_out / lg_pooled): encode with CLIP-L and CLIP-G or load \
                     their cached outputs"
                        .into(),
                ))
            }
        };
        let (b, l, d) = lg.dims3()?;
        if d > context_dim {
            return Err(Error::Invalid(format!(
                "the CLIP features ({d} = CLIP-L + CLIP-G) are wider than the context ({context_dim}): these text \
                 encoders do not fit together"
            )));
        }
        let t5 = match &self.t5_out {
            Some(t5) => {
                let (tb, _, td) = t5.dims3()?;
                if tb != b || td != context_dim {
                    return Err(Error::Invalid(format!(
                        "T5 output of shape {:?} does not fit CLIP output {:?} and context width {context_dim}",
                        t5.dims(),
                        lg.dims()
                    )));
                }
                t5.clone()
            }
            None => Tensor::zeros((b, NO_T5_LENGTH, context_dim), lg.dtype(), lg.device())?,
        };
        let dtype = if t5.dtype() == lg.dtype() { lg.dtype() } else { DType::F32 };
        let lg = if d < context_dim {
            let pad = Tensor::zeros((b, l, context_dim - d), lg.dtype(), lg.device())?;
            Tensor::cat(&[lg, &pad], 2)?
        } else {
            lg.clone()
        };
        let context = Tensor::cat(&[&lg.to_dtype(dtype)?, &t5.to_dtype(dtype)?], 1)?;
        Ok((context, pooled.clone()))
    }
}

/// Rows of `x` (dim 0) where `rows` is true replaced by exact zeros; differentiable in the
/// others.
fn zero_rows(x: &Tensor, rows: &[bool]) -> Result<Tensor> {
    if !rows.iter().any(|&r| r) {
        return Ok(x.clone());
    }
    let kept_rows: Vec<u32> = (0..rows.len()).filter(|&i| !rows[i]).map(|i| i as u32).collect();
    let sub = if kept_rows.is_empty() {
        None
    } else {
        // index_select reads contiguous storage only (`x` may be a narrowed view).
        Some(x.contiguous()?.index_select(&Tensor::new(kept_rows.as_slice(), x.device())?, 0)?)
    };
    scatter_rows(sub.as_ref(), &kept_from_drops(rows), x.dims(), x.dtype(), x.device())
}

/// For each row of the batch, its position among the kept rows (`None` where dropped).
fn kept_from_drops(drops: &[bool]) -> Vec<Option<usize>> {
    let mut next = 0;
    drops
        .iter()
        .map(|&d| {
            (!d).then(|| {
                next += 1;
                next - 1
            })
        })
        .collect()
}

/// The full batch (shape `full`) from the kept rows' values `sub` (rows in order), zeros in
/// the dropped rows: sd-scripts' `zeros(...)` then `out[non_drop_indices] = nd_out`.
fn scatter_rows(
    sub: Option<&Tensor>,
    position: &[Option<usize>],
    full: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let mut zero_shape = full.to_vec();
    zero_shape[0] = 1;
    let zero = Tensor::zeros(zero_shape, dtype, device)?;
    let (table, n) = match sub {
        Some(s) => (Tensor::cat(&[&s.to_dtype(dtype)?, &zero], 0)?, s.dim(0)?),
        None => (zero, 0),
    };
    let index: Vec<u32> = position.iter().map(|p| p.unwrap_or(n) as u32).collect();
    Ok(table.index_select(&Tensor::new(index.as_slice(), device)?, 0)?)
}

/// sd-scripts' CLIP-L configuration (`sd3_utils.load_clip_l`): ViT-L/14's text tower with a
/// 768 → 768 projection and transformers' placeholder token ids.
pub fn clip_l_config() -> ClipTextConfig {
    ClipTextConfig::sdxl_te1()
}

/// sd-scripts' CLIP-G configuration (`sd3_utils.load_clip_g`): bigG/14's 32 layers with its
/// 1280 → 1280 projection.
pub fn clip_g_config() -> ClipTextConfig {
    ClipTextConfig::sdxl_te2()
}

/// Builds CLIP-L from its store's root (`text_model.*`, `text_projection.weight`). A store
/// without `text_projection.weight` (CLIP-L files often have none) gets an identity
/// projection, as sd-scripts adds one. Fails with every missing, mis-shaped or unused tensor.
pub fn clip_l_from_weights(weights: &mut Weights, cfg: &ClipTextConfig) -> Result<ClipTextModelWithProjection> {
    if !weights.contains("text_projection.weight") {
        let proj = cfg.projection_dim.unwrap_or(cfg.hidden_size);
        if proj != cfg.hidden_size {
            return Err(Error::Invalid(format!(
                "{}: CLIP-L has no text_projection.weight and its projection_dim {proj} is not its hidden size {}, \
                 so no identity projection can stand in",
                weights.source(),
                cfg.hidden_size
            )));
        }
        let (dtype, device) = weights
            .tensor("text_model.final_layer_norm.weight")
            .map_or((DType::F32, Device::Cpu), |t| (t.dtype(), t.device().clone()));
        let eye = Tensor::eye(proj, dtype, &device)?;
        weights.insert("text_projection.weight", eye);
    }
    clip_from_weights(weights, cfg)
}

/// Builds CLIP-G from its store's root (`text_model.*`, `text_projection.weight`). Fails with
/// every missing, mis-shaped or unused tensor.
pub fn clip_g_from_weights(weights: &Weights, cfg: &ClipTextConfig) -> Result<ClipTextModelWithProjection> {
    clip_from_weights(weights, cfg)
}

fn clip_from_weights(weights: &Weights, cfg: &ClipTextConfig) -> Result<ClipTextModelWithProjection> {
    let model = ClipTextModelWithProjection::new(weights.view(""), cfg)?;
    weights.check_complete()?;
    Ok(model)
}

/// Builds T5 from its store's root (`shared.*` / `encoder.*`). Fails with every missing,
/// mis-shaped or unused tensor.
pub fn t5_from_weights(weights: &Weights, cfg: &T5Config) -> Result<T5EncoderModel> {
    let model = T5EncoderModel::new(weights.view(""), cfg)?;
    weights.check_complete()?;
    Ok(model)
}

/// A `config.json` beside or inside `path` (a component folder), else `fallback`.
fn config_in<T>(path: &Path, read: impl Fn(&Path) -> Result<T>, fallback: impl FnOnce() -> T) -> Result<T> {
    let json = path.join("config.json");
    if path.is_dir() && json.is_file() {
        read(&json)
    } else {
        Ok(fallback())
    }
}

/// Loads CLIP-L from a file (`--clip_l`) or a diffusers `text_encoder/` folder (its
/// `config.json`, else [`clip_l_config`]).
pub fn load_clip_l(path: &Path, dtype: DType, device: &Device) -> Result<ClipTextModelWithProjection> {
    let cfg = config_in(path, ClipTextConfig::from_json_file, clip_l_config)?;
    let tensors = read_component(path, "model", dtype, LinearStorage::Compute, device)?;
    clip_l_from_weights(&mut Weights::new(tensors, path.display().to_string()), &cfg)
}

/// Loads CLIP-G from a file (`--clip_g`) or a diffusers `text_encoder_2/` folder (its
/// `config.json`, else [`clip_g_config`]).
pub fn load_clip_g(path: &Path, dtype: DType, device: &Device) -> Result<ClipTextModelWithProjection> {
    let cfg = config_in(path, ClipTextConfig::from_json_file, clip_g_config)?;
    let tensors = read_component(path, "model", dtype, LinearStorage::Compute, device)?;
    clip_g_from_weights(&Weights::new(tensors, path.display().to_string()), &cfg)
}

/// Loads T5 from a file (`--t5xxl`) or a diffusers `text_encoder_3/` folder (its
/// `config.json`, else T5 v1.1 XXL), linears stored as `storage` says (`fp8_base`).
pub fn load_t5(path: &Path, dtype: DType, storage: LinearStorage, device: &Device) -> Result<T5EncoderModel> {
    let cfg = config_in(path, T5Config::from_json_file, T5Config::t5_v1_1_xxl)?;
    let tensors = read_component(path, "model", dtype, storage, device)?;
    t5_from_weights(&Weights::new(tensors, path.display().to_string()), &cfg)
}

/// SD3's three text encoders and their tokenizers.
pub struct Sd3TextEncoders {
    clip_l: Option<ClipTextModelWithProjection>,
    clip_g: Option<ClipTextModelWithProjection>,
    t5: Option<T5EncoderModel>,
    opts: Sd3TextOptions,
    clip_tokenizer: ClipTokenizer,
    t5_tokenizer: T5Tokenizer,
    l_width: usize,
    l_pooled_width: usize,
}

impl std::fmt::Debug for Sd3TextEncoders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sd3TextEncoders")
            .field("clip_l", &self.clip_l)
            .field("clip_g", &self.clip_g)
            .field("t5", &self.t5)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Sd3TextEncoders {
    /// Pairs built encoders with SD3's tokenizers. CLIP-L and CLIP-G come together or not at
    /// all (sd-scripts encodes both or neither); T5 may be absent (its outputs then come from
    /// a cache, or zeros take their place in [`Sd3TextOutput::context_and_pooled_for`]).
    /// Refuses encoders of fewer than two layers, vocabularies smaller than the tokenizers',
    /// CLIP features wider than T5's (the context could not hold them) and a T5 length of 0.
    pub fn new(
        clip_l: Option<ClipTextModelWithProjection>,
        clip_g: Option<ClipTextModelWithProjection>,
        t5: Option<T5EncoderModel>,
        opts: Sd3TextOptions,
    ) -> Result<Self> {
        let clip_tokenizer = ClipTokenizer::new()?;
        let t5_tokenizer = T5Tokenizer::new()?;
        if clip_l.is_some() != clip_g.is_some() {
            return Err(Error::Invalid(
                "SD3 encodes prompts with CLIP-L and CLIP-G together: give both or neither".into(),
            ));
        }
        if clip_l.is_none() && t5.is_none() {
            return Err(Error::Invalid("SD3 text encoders: none given (CLIP-L + CLIP-G and/or T5 needed)".into()));
        }
        if opts.t5_max_length == 0 {
            return Err(Error::Invalid("t5xxl_max_token_length must be at least 1".into()));
        }
        let mut widths = (0, 0, 0);
        for (name, m) in [("CLIP-L", &clip_l), ("CLIP-G", &clip_g)] {
            if let Some(m) = m {
                let cfg = m.config();
                if m.text_model().layers().len() < 2 {
                    return Err(Error::Invalid(format!(
                        "SD3 {name} needs at least 2 layers (SD3 conditions on the penultimate one), got {}",
                        m.text_model().layers().len()
                    )));
                }
                if cfg.vocab_size < clip_tokenizer.vocab_size() || cfg.max_position_embeddings < CLIP_LENGTH {
                    return Err(Error::Invalid(format!(
                        "SD3 {name}: vocabulary {} / positions {} are smaller than CLIP's tokenizer needs ({} / {CLIP_LENGTH}): \
                         is this a CLIP text encoder?",
                        cfg.vocab_size,
                        cfg.max_position_embeddings,
                        clip_tokenizer.vocab_size()
                    )));
                }
            }
        }
        if let (Some(l), Some(g)) = (&clip_l, &clip_g) {
            widths = (l.config().hidden_size, g.config().hidden_size, l.text_projection().frozen().out_features());
        }
        if let Some(t) = &t5 {
            if t.config().vocab_size < t5_tokenizer.vocab_size() {
                return Err(Error::Invalid(format!(
                    "SD3 T5: vocabulary {} is smaller than T5's tokenizer needs ({}): is this a T5 v1.1 encoder?",
                    t.config().vocab_size,
                    t5_tokenizer.vocab_size()
                )));
            }
            if clip_l.is_some() && widths.0 + widths.1 > t.config().d_model {
                return Err(Error::Invalid(format!(
                    "SD3 text encoders do not fit: CLIP-L ({}) + CLIP-G ({}) features are wider than T5's {} (SD3: 768 + \
                     1280 ≤ 4096)",
                    widths.0,
                    widths.1,
                    t.config().d_model
                )));
            }
        }
        Ok(Sd3TextEncoders {
            clip_l,
            clip_g,
            t5,
            opts,
            clip_tokenizer,
            t5_tokenizer,
            l_width: widths.0,
            l_pooled_width: widths.2,
        })
    }

    /// CLIP-L, if held.
    pub fn clip_l(&self) -> Option<&ClipTextModelWithProjection> {
        self.clip_l.as_ref()
    }

    /// CLIP-G, if held.
    pub fn clip_g(&self) -> Option<&ClipTextModelWithProjection> {
        self.clip_g.as_ref()
    }

    /// T5, if held.
    pub fn t5(&self) -> Option<&T5EncoderModel> {
        self.t5.as_ref()
    }

    /// The options.
    pub fn options(&self) -> &Sd3TextOptions {
        &self.opts
    }

    /// Drops T5 (its outputs were cached); CLIP encoding goes on.
    pub fn release_t5(&mut self) {
        self.t5 = None;
    }

    /// Drops CLIP-L and CLIP-G (their outputs were cached).
    pub fn release_clips(&mut self) {
        self.clip_l = None;
        self.clip_g = None;
    }

    /// CLIP-L's LoRA targets (kohya prefix [`CLIP_L_LORA_PREFIX`]); empty when not held.
    pub fn clip_l_lora_targets(&self) -> Vec<LoraTarget> {
        self.clip_l.as_ref().map(|m| m.lora_targets()).unwrap_or_default()
    }

    /// CLIP-G's LoRA targets (kohya prefix [`CLIP_G_LORA_PREFIX`]); empty when not held.
    pub fn clip_g_lora_targets(&self) -> Vec<LoraTarget> {
        self.clip_g.as_ref().map(|m| m.lora_targets()).unwrap_or_default()
    }

    /// T5's LoRA targets (kohya prefix [`T5_LORA_PREFIX`], trained only with `train_t5xxl`);
    /// empty when not held.
    pub fn t5_lora_targets(&self) -> Vec<LoraTarget> {
        self.t5.as_ref().map(|m| m.lora_targets()).unwrap_or_default()
    }

    fn device(&self) -> &Device {
        match (&self.clip_l, &self.t5) {
            (Some(l), _) => l.text_model().device(),
            (None, Some(t)) => t.device(),
            (None, None) => unreachable!("new() refuses an empty set"),
        }
    }

    /// `Sd3TokenizeStrategy.tokenize`: see the module docs. Truncated prompts are logged.
    pub fn tokenize<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Sd3Tokens> {
        let b = prompts.len();
        let (mut l, mut g, mut mask) = (Vec::with_capacity(b * 77), Vec::with_capacity(b * 77), Vec::new());
        for p in prompts {
            let text = p.as_ref();
            let n = self.clip_tokenizer.encode(text).len();
            let (ids_l, dropped) = self.clip_tokenizer.encode_padded(text, CLIP_LENGTH, ClipTokenizer::EOS);
            let (ids_g, _) = self.clip_tokenizer.encode_padded(text, CLIP_LENGTH, ClipTokenizer::PAD_SD2);
            if dropped > 0 {
                tracing::warn!(dropped, "SD3 CLIP prompt truncated: {dropped} token(s) beyond 77 were dropped");
            }
            let real = (n + 2).min(CLIP_LENGTH);
            mask.extend((0..CLIP_LENGTH).map(|i| u32::from(i < real)));
            l.extend(ids_l);
            g.extend(ids_g);
        }
        let t5 = self.t5_tokenizer.tokenize(prompts, self.opts.t5_max_length)?;
        let device = self.device();
        let clip_mask = Tensor::from_vec(mask, (b, CLIP_LENGTH), device)?;
        Ok(Sd3Tokens {
            l_ids: Tensor::from_vec(l, (b, CLIP_LENGTH), device)?,
            g_ids: Tensor::from_vec(g, (b, CLIP_LENGTH), device)?,
            t5_ids: t5.ids_tensor(device)?,
            l_attn_mask: clip_mask.clone(),
            g_attn_mask: clip_mask,
            t5_attn_mask: t5.mask_tensor(device)?,
        })
    }

    /// sd-scripts' `encode_tokens` with explicit mask flags (its training step and sampler pass
    /// False for both; caching passes the options) and optional dropped rows. `ctxs` carry
    /// CLIP-L's, CLIP-G's and T5's LoRA modules.
    pub fn encode_tokens(
        &self,
        tokens: &Sd3Tokens,
        ctxs: [&ForwardCtx; 3],
        apply_lg_attn_mask: bool,
        apply_t5_attn_mask: bool,
        drops: Option<&Sd3Drops>,
    ) -> Result<Sd3TextOutput> {
        let (b, l) = tokens.l_ids.dims2()?;
        let t5_len = tokens.t5_ids.dim(1)?;
        for (name, t, len) in [
            ("CLIP-G ids", &tokens.g_ids, l),
            ("CLIP-L mask", &tokens.l_attn_mask, l),
            ("CLIP-G mask", &tokens.g_attn_mask, l),
            ("T5 ids", &tokens.t5_ids, t5_len),
            ("T5 mask", &tokens.t5_attn_mask, t5_len),
        ] {
            if t.dims() != [b, len] {
                return Err(Error::Invalid(format!(
                    "SD3 tokens: {name} of shape {:?}, expected ({b}, {len})",
                    t.dims()
                )));
            }
        }
        let none = Sd3Drops::none(b);
        let drops = drops.unwrap_or(&none);
        drops.check(b)?;

        let mut out = Sd3TextOutput {
            lg_out: None,
            t5_out: None,
            lg_pooled: None,
            l_attn_mask: None,
            g_attn_mask: None,
            t5_attn_mask: None,
            l_width: self.l_width,
            l_pooled_width: self.l_pooled_width,
        };
        if let (Some(cl), Some(cg)) = (&self.clip_l, &self.clip_g) {
            let apply = apply_lg_attn_mask;
            let (l_out, l_pooled, l_mask) =
                clip_pass(cl, &tokens.l_ids, &tokens.l_attn_mask, apply, &drops.clip_l, ctxs[0])?;
            let (g_out, g_pooled, g_mask) =
                clip_pass(cg, &tokens.g_ids, &tokens.g_attn_mask, apply, &drops.clip_g, ctxs[1])?;
            let dtype = l_out.dtype();
            out.lg_out = Some(Tensor::cat(&[&l_out, &g_out.to_dtype(dtype)?], 2)?);
            out.lg_pooled = Some(Tensor::cat(&[&l_pooled, &g_pooled.to_dtype(dtype)?], 1)?);
            out.l_attn_mask = Some(l_mask);
            out.g_attn_mask = Some(g_mask);
        }
        if let Some(t5) = &self.t5 {
            let kept = kept_from_drops(&drops.t5);
            let kept_rows: Vec<u32> = (0..b).filter(|&i| kept[i].is_some()).map(|i| i as u32).collect();
            let d = t5.config().d_model;
            let sub = if kept_rows.is_empty() {
                None
            } else {
                let ids = select_rows(&tokens.t5_ids.to_device(t5.device())?, &kept_rows, b)?;
                let mask = if apply_t5_attn_mask {
                    Some(select_rows(&tokens.t5_attn_mask.to_device(t5.device())?, &kept_rows, b)?)
                } else {
                    None
                };
                Some(t5.forward(&ids, mask.as_ref(), ctxs[2])?)
            };
            let dtype = sub.as_ref().map_or(t5.dtype(), Tensor::dtype);
            out.t5_out = Some(scatter_rows(sub.as_ref(), &kept, &[b, t5_len, d], dtype, t5.device())?);
            out.t5_attn_mask = Some(zero_rows(&tokens.t5_attn_mask, &drops.t5)?);
        }
        Ok(out)
    }

    /// Tokenises and encodes `prompts` with the options' masks (what sd-scripts' output caching
    /// computes) and optional dropped rows (draw them with [`Sd3DropoutRates::draw`]).
    pub fn encode<S: AsRef<str>>(
        &self,
        prompts: &[S],
        ctxs: [&ForwardCtx; 3],
        drops: Option<&Sd3Drops>,
    ) -> Result<Sd3TextOutput> {
        let tokens = self.tokenize(prompts)?;
        self.encode_tokens(&tokens, ctxs, self.opts.apply_lg_attn_mask, self.opts.apply_t5_attn_mask, drops)
    }
}

/// `ids` itself when every row is kept, else the kept rows.
fn select_rows(ids: &Tensor, kept_rows: &[u32], batch: usize) -> Result<Tensor> {
    if kept_rows.len() == batch {
        return Ok(ids.clone());
    }
    Ok(ids.index_select(&Tensor::new(kept_rows, ids.device())?, 0)?)
}

/// One CLIP over the rows not dropped (with their padding mask when `apply_mask`):
/// (penultimate hidden state (B, 77, D), projected pooled vector (B, P), mask with dropped rows
/// zeroed), zeros in the dropped rows.
fn clip_pass(
    model: &ClipTextModelWithProjection,
    ids: &Tensor,
    mask: &Tensor,
    apply_mask: bool,
    drops: &[bool],
    ctx: &ForwardCtx,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, l) = ids.dims2()?;
    let kept = kept_from_drops(drops);
    let kept_rows: Vec<u32> = (0..b).filter(|&i| kept[i].is_some()).map(|i| i as u32).collect();
    let device = model.text_model().device();
    let (h, p) = if kept_rows.is_empty() {
        (None, None)
    } else {
        let kept_mask = if apply_mask { Some(select_rows(&mask.to_device(device)?, &kept_rows, b)?) } else { None };
        let out =
            model.forward_with_mask(&select_rows(&ids.to_device(device)?, &kept_rows, b)?, kept_mask.as_ref(), ctx)?;
        let states = &out.text.hidden_states;
        (Some(states[states.len() - 2].clone()), Some(out.text_embeds))
    };
    let dtype = h.as_ref().map_or(model.text_model().dtype(), Tensor::dtype);
    let d = model.config().hidden_size;
    let proj = model.text_projection().frozen().out_features();
    Ok((
        scatter_rows(h.as_ref(), &kept, &[b, l, d], dtype, device)?,
        scatter_rows(p.as_ref(), &kept, &[b, proj], dtype, device)?,
        zero_rows(mask, drops)?,
    ))
}
