//! Flux.1 as one model: the transformer, the 16-channel autoencoder, CLIP-L (pooled vector) and
//! T5-XXL (token states), loaded from the files users have (spec §13.2: a BFL single file with
//! sd-scripts' `--clip_l`, `--t5xxl`, `--ae` files, or a diffusers folder), with text encoding
//! as sd-scripts' `FluxTextEncodingStrategy`, latents as its `flux_utils` (scale and shift,
//! 2×2 packing) and sampling as its `sample_image_inference` (flow Euler with the shifted
//! schedule, embedded guidance, optional true CFG with a negative prompt).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_nn::lora::LoraTarget;
use lorakit_nn::ForwardCtx;
use rand::{rngs::StdRng, SeedableRng};

use crate::checkpoint::flux::{load_flux_ae, load_flux_transformer};
use crate::checkpoint::{read_component, LinearStorage};
use crate::clip::{ClipTextConfig, ClipTextModel};
use crate::clip_tokenizer::ClipTokenizer;
use crate::dit::flux::{image_ids, pack_latents, unpack_latents, FluxInputs, FluxTransformer};
use crate::lora_inject::{ComponentTargets, UNET_PREFIX};
use crate::pipeline::{decode_latents_to_rgb, gaussian, released, GenerateRequest, LoraSets, RgbImage};
use crate::samplers::flow::{euler, flux_schedule};
use crate::t5::{T5Config, T5EncoderModel, T5_LORA_PREFIX};
use crate::t5_tokenizer::{T5Tokenizer, T5_MAX_LENGTH_DEV, T5_MAX_LENGTH_SCHNELL};
use crate::vae::AutoencoderKL;
use crate::{Error, Result, Weights};

/// kohya's prefix of CLIP-L's LoRA modules in Flux files.
pub const CLIP_L_LORA_PREFIX: &str = "lora_te1";
/// CLIP-L's context length (sd-scripts tokenises it to 77 with padding).
const CLIP_MAX_LENGTH: usize = 77;

/// Where a Flux model's parts are.
#[derive(Clone, Debug, Default)]
pub struct FluxPaths {
    /// The transformer: a BFL single file, or a diffusers folder (which may hold every part).
    pub model: PathBuf,
    /// CLIP-L (`--clip_l`, HF `CLIPTextModel` keys); default: the folder's `text_encoder/`.
    pub clip_l: Option<PathBuf>,
    /// T5-XXL (`--t5xxl`, HF `T5EncoderModel` keys); default: the folder's `text_encoder_2/`.
    pub t5xxl: Option<PathBuf>,
    /// The autoencoder (`--ae`, BFL `ae.safetensors`); default: the folder's `vae/`.
    pub ae: Option<PathBuf>,
}

/// How to load and run a Flux model.
#[derive(Clone, Debug)]
pub struct FluxOptions {
    /// Compute dtype of every part (the autoencoder stays f32 unless this is f32 anyway).
    pub dtype: DType,
    /// Transformer linear weights in fp8 (`fp8_base`).
    pub transformer_storage: LinearStorage,
    /// T5 linear weights in fp8 (`fp8_base` without `fp8_base_unet`).
    pub t5_storage: LinearStorage,
    /// T5 tokens per prompt (`t5xxl_max_token_length`; default 512 for dev, 256 for schnell).
    pub t5_max_length: Option<usize>,
    /// Pass T5's padding mask to T5 and the transformer (`apply_t5_attn_mask`).
    pub apply_t5_attn_mask: bool,
    /// sd-scripts' `blocks_to_swap`: this many blocks (N/2 double, (N − N/2)·2 single) stay in
    /// host memory and are copied to the device when they run.
    pub blocks_to_swap: usize,
    /// sd-scripts' `cpu_offload_checkpointing`: with gradient checkpointing, the block inputs
    /// kept for backward live in host memory ([`FluxTransformer::with_checkpoint_offload`]).
    pub offload_checkpoints: bool,
}

impl Default for FluxOptions {
    fn default() -> Self {
        FluxOptions {
            dtype: DType::F32,
            transformer_storage: LinearStorage::Compute,
            t5_storage: LinearStorage::Compute,
            t5_max_length: None,
            apply_t5_attn_mask: false,
            blocks_to_swap: 0,
            offload_checkpoints: false,
        }
    }
}

/// Text conditioning for the transformer.
#[derive(Clone, Debug)]
pub struct FluxConditioning {
    /// T5 token states (B, L, 4096).
    pub t5: Tensor,
    /// CLIP-L pooled vector (B, 768).
    pub pooled: Tensor,
    /// T5 padding mask (B, L), when `apply_t5_attn_mask`.
    pub mask: Option<Tensor>,
}

impl FluxConditioning {
    /// Rows `[a; b]` stacked (for CFG and batches).
    pub fn cat(parts: &[&FluxConditioning]) -> candle_core::Result<Self> {
        let t5: Vec<&Tensor> = parts.iter().map(|p| &p.t5).collect();
        let pooled: Vec<&Tensor> = parts.iter().map(|p| &p.pooled).collect();
        let mask = if parts.iter().all(|p| p.mask.is_some()) {
            let masks: Vec<&Tensor> = parts.iter().filter_map(|p| p.mask.as_ref()).collect();
            Some(Tensor::cat(&masks, 0)?)
        } else {
            None
        };
        Ok(FluxConditioning { t5: Tensor::cat(&t5, 0)?, pooled: Tensor::cat(&pooled, 0)?, mask })
    }
}

/// A loaded Flux.1 model.
pub struct FluxPipeline {
    transformer: FluxTransformer,
    ae: AutoencoderKL,
    /// `None` once released (outputs cached).
    clip: Option<ClipTextModel>,
    /// `None` once released (outputs cached).
    t5: Option<T5EncoderModel>,
    clip_tokenizer: ClipTokenizer,
    t5_tokenizer: T5Tokenizer,
    t5_max_length: usize,
    apply_t5_attn_mask: bool,
    source: PathBuf,
    transformer_targets: Vec<LoraTarget>,
    clip_targets: Vec<LoraTarget>,
    t5_targets: Vec<LoraTarget>,
    text_parameters: (usize, usize),
}

/// Builds a network from a store, then checks the store was complete and fully used.
fn build<T>(weights: &Weights, f: impl FnOnce(&Weights) -> candle_core::Result<T>) -> Result<T> {
    let model = f(weights)?;
    weights.check_complete()?;
    Ok(model)
}

/// `dir/sub` when the model is a folder that has it.
fn folder_part(model: &Path, sub: &str) -> Option<PathBuf> {
    let dir = model.join(sub);
    (model.is_dir() && dir.is_dir()).then_some(dir)
}

impl FluxPipeline {
    /// Loads every part; a missing part is an error naming sd-scripts' flag for it.
    pub fn load(paths: &FluxPaths, opts: &FluxOptions, device: &Device) -> Result<Self> {
        // Checked before any weight is read: T5's attention bias grows with the length's square.
        if let Some(n) = opts.t5_max_length.filter(|&n| n == 0 || n > T5_MAX_LENGTH_DEV) {
            return Err(Error::Invalid(format!(
                "t5xxl_max_token_length {n}: use 1 to {T5_MAX_LENGTH_DEV} (Flux.1 was trained with at most {T5_MAX_LENGTH_DEV} T5 tokens)"
            )));
        }
        let missing = |what: &str, flag: &str| {
            Error::Invalid(format!(
                "{}: a Flux single file holds only the transformer; give the {what} file too ({flag}, as sd-scripts' --{flag})",
                paths.model.display()
            ))
        };
        let clip_path = paths
            .clip_l
            .clone()
            .or_else(|| folder_part(&paths.model, "text_encoder"))
            .ok_or_else(|| missing("CLIP-L", "clip_l"))?;
        let t5_path = paths
            .t5xxl
            .clone()
            .or_else(|| folder_part(&paths.model, "text_encoder_2"))
            .ok_or_else(|| missing("T5-XXL", "t5xxl"))?;
        let ae_path = paths
            .ae
            .clone()
            .or_else(|| folder_part(&paths.model, "vae"))
            .ok_or_else(|| missing("autoencoder", "ae"))?;

        // With block swapping the transformer is built in host memory, then all but the swapped
        // blocks move to the device.
        let load_device = if opts.blocks_to_swap > 0 { &Device::Cpu } else { device };
        let loaded = load_flux_transformer(&paths.model, opts.dtype, opts.transformer_storage, load_device, None)?;
        let transformer = build(&loaded.weights, |w| FluxTransformer::new(w.view(""), &loaded.config))?;
        drop(loaded);
        let transformer = if opts.blocks_to_swap > 0 {
            transformer.with_block_swap(opts.blocks_to_swap, device)?
        } else {
            transformer
        }
        .with_checkpoint_offload(opts.offload_checkpoints);

        // The autoencoder runs in f32 (Flux's overflows in f16, as SDXL's does).
        let ae_weights = load_flux_ae(&ae_path, DType::F32, device)?;
        let ae = build(&ae_weights.weights, |w| AutoencoderKL::new(w.view(""), &ae_weights.config))?;

        let clip_cfg = match clip_path.join("config.json") {
            json if json.is_file() => ClipTextConfig::from_json_file(&json)?,
            _ => ClipTextConfig::sd15(),
        };
        let clip_tensors = read_component(&clip_path, "model", opts.dtype, LinearStorage::Compute, device)?;
        let clip_weights = Weights::new(clip_tensors, clip_path.display().to_string());
        let clip = build(&clip_weights, |w| ClipTextModel::new(w.view(""), &clip_cfg))?;

        let t5_cfg = match t5_path.join("config.json") {
            json if json.is_file() => T5Config::from_json_file(&json)?,
            _ => T5Config::t5_v1_1_xxl(),
        };
        let t5_tensors = read_component(&t5_path, "model", opts.dtype, opts.t5_storage, device)?;
        let t5_weights = Weights::new(t5_tensors, t5_path.display().to_string());
        let t5 = build(&t5_weights, |w| T5EncoderModel::new(w.view(""), &t5_cfg))?;

        if clip.config().hidden_size != transformer.config().vec_in_dim
            || t5.config().d_model != transformer.config().context_in_dim
        {
            return Err(Error::Invalid(format!(
                "{}: the text encoders do not fit the transformer (CLIP width {} vs vec_in_dim {}, T5 width {} vs context_in_dim {})",
                paths.model.display(),
                clip.config().hidden_size,
                transformer.config().vec_in_dim,
                t5.config().d_model,
                transformer.config().context_in_dim
            )));
        }
        let count = |shapes: Vec<(String, Vec<usize>)>| shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let text_parameters = (count(clip.config().parameter_shapes(false)), count(t5.config().parameter_shapes()));
        let default_length =
            if transformer.config().guidance_embed { T5_MAX_LENGTH_DEV } else { T5_MAX_LENGTH_SCHNELL };
        Ok(FluxPipeline {
            // sd-scripts' block targets, then the input layers only `in_dims` adapts (Named).
            transformer_targets: [transformer.lora_targets(), transformer.input_lora_targets().concat()].concat(),
            clip_targets: clip.lora_targets(),
            t5_targets: t5.lora_targets(),
            text_parameters,
            transformer,
            ae,
            clip: Some(clip),
            t5: Some(t5),
            clip_tokenizer: ClipTokenizer::new()?,
            t5_tokenizer: T5Tokenizer::new()?,
            t5_max_length: opts.t5_max_length.unwrap_or(default_length),
            apply_t5_attn_mask: opts.apply_t5_attn_mask,
            source: paths.model.clone(),
        })
    }

    /// The transformer.
    pub fn transformer(&self) -> &FluxTransformer {
        &self.transformer
    }

    /// CLIP-L; `None` once released.
    pub fn clip_l(&self) -> Option<&ClipTextModel> {
        self.clip.as_ref()
    }

    /// T5-XXL; `None` once released.
    pub fn t5(&self) -> Option<&T5EncoderModel> {
        self.t5.as_ref()
    }

    /// The autoencoder.
    pub fn ae(&self) -> &AutoencoderKL {
        &self.ae
    }

    /// The transformer file or folder.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// T5 tokens per prompt.
    pub fn t5_max_length(&self) -> usize {
        self.t5_max_length
    }

    /// Whether T5's padding mask is applied.
    pub fn apply_t5_attn_mask(&self) -> bool {
        self.apply_t5_attn_mask
    }

    /// Pixels per packed token along each side: the autoencoder's factor × the 2×2 packing.
    pub fn pixels_per_token(&self) -> usize {
        self.ae.config().downsample_factor() * 2
    }

    /// The components LoRA files are matched against, in [`LoraSets`] order: the transformer
    /// (`lora_unet`), CLIP-L (`lora_te1`), T5-XXL (`lora_te3`).
    pub fn lora_components(&self) -> Vec<ComponentTargets<'_>> {
        let targets = [&self.transformer_targets, &self.clip_targets, &self.t5_targets];
        Self::lora_prefixes().iter().zip(targets).map(|(p, t)| ComponentTargets { prefix: p, targets: t }).collect()
    }

    /// kohya's module-name prefix of each component, in [`Self::lora_components`] order.
    pub fn lora_prefixes() -> &'static [&'static str] {
        &[UNET_PREFIX, CLIP_L_LORA_PREFIX, T5_LORA_PREFIX]
    }

    /// Parameters of CLIP-L and of T5 (known after the encoders are released).
    pub fn text_encoder_parameter_counts(&self) -> (usize, usize) {
        self.text_parameters
    }

    /// Drops both text encoders (their outputs were cached); encoding prompts is then an error.
    pub fn release_text_encoders(&mut self) {
        self.clip = None;
        self.t5 = None;
    }

    /// Drops T5-XXL alone (its outputs were cached while CLIP-L trains, sd-scripts' partial
    /// caching): [`Self::encode_pooled`] still works, [`Self::encode_prompts`] does not.
    pub fn release_t5(&mut self) {
        self.t5 = None;
    }

    /// CLIP-L's pooled output for `prompts` (77 EOS-padded tokens), as in
    /// [`Self::encode_prompts`].
    pub fn encode_pooled<S: AsRef<str>>(&self, prompts: &[S], clip_ctx: &ForwardCtx) -> Result<Tensor> {
        let clip = self.clip.as_ref().ok_or_else(released)?;
        let mut clip_ids = Vec::with_capacity(prompts.len() * CLIP_MAX_LENGTH);
        for p in prompts {
            let (ids, _) = self.clip_tokenizer.encode_padded(p.as_ref(), CLIP_MAX_LENGTH, ClipTokenizer::EOS);
            clip_ids.extend(ids);
        }
        let clip_ids = Tensor::from_vec(clip_ids, (prompts.len(), CLIP_MAX_LENGTH), self.transformer.device())?;
        Ok(clip.forward(&clip_ids, clip_ctx)?.pooler_output)
    }

    /// Encodes prompts as sd-scripts' `FluxTextEncodingStrategy`: CLIP-L's pooled output of the
    /// 77-token prompt (EOS-padded), T5's last hidden state of the `t5_max_length`-token prompt,
    /// and — with `apply_t5_attn_mask` — T5's padding mask (used by T5 and the transformer).
    /// `clip_ctx` / `t5_ctx` carry the encoders' LoRA when trained or applied.
    pub fn encode_prompts<S: AsRef<str>>(
        &self,
        prompts: &[S],
        clip_ctx: &ForwardCtx,
        t5_ctx: &ForwardCtx,
    ) -> Result<FluxConditioning> {
        let t5_model = self.t5.as_ref().ok_or_else(released)?;
        let device = self.transformer.device();
        let pooled = self.encode_pooled(prompts, clip_ctx)?;
        let tokens = self.t5_tokenizer.tokenize(prompts, self.t5_max_length)?;
        let t5 = t5_model.encode(&tokens, self.apply_t5_attn_mask, t5_ctx)?;
        let mask = if self.apply_t5_attn_mask { Some(tokens.mask_tensor(device)?.to_dtype(DType::F32)?) } else { None };
        Ok(FluxConditioning { t5, pooled, mask })
    }

    /// Images in [-1, 1] (B, 3, H, W) → the transformer's latent space (B, 16, H/8, W/8):
    /// a posterior sample (or its mean without `rng`), `scale·(z − shift)`.
    pub fn encode_images(&self, pixels: &Tensor, rng: Option<&mut StdRng>) -> Result<Tensor> {
        Ok(self.ae.encode_to_model_space(pixels, rng)?)
    }

    /// The velocity for latents (B, 16, h, w) at noise levels `sigmas` (B, in [0, 1]) with the
    /// guidance value per sample (ignored by schnell); returns (B, 16, h, w).
    pub fn predict(
        &self,
        latents: &Tensor,
        sigmas: &Tensor,
        cond: &FluxConditioning,
        guidance: &Tensor,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = latents.dims4()?;
        let device = self.transformer.device();
        let img = pack_latents(latents)?;
        let img_ids = image_ids(h, w, device)?;
        let txt_ids = Tensor::zeros((cond.t5.dim(1)?, 3), DType::F32, device)?;
        let out = self.transformer.forward(
            &FluxInputs {
                img: &img,
                img_ids: &img_ids,
                txt: &cond.t5,
                txt_ids: &txt_ids,
                timesteps: sigmas,
                y: &cond.pooled,
                guidance: Some(guidance),
                txt_mask: cond.mask.as_ref(),
            },
            ctx,
        )?;
        unpack_latents(&out, h, w)
    }

    /// Generates one image as sd-scripts' sampler: `steps` flow-Euler steps over the shifted
    /// schedule, `request.guidance` as the embedded guidance, and true CFG with the negative
    /// prompt only when `cfg_scale` ≠ 1. `lora` holds one set per [`Self::lora_components`].
    pub fn generate(
        &self,
        request: &GenerateRequest,
        lora: Option<&LoraSets>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<RgbImage> {
        request.validate()?;
        let step = self.pixels_per_token();
        if request.width % step != 0 || request.height % step != 0 {
            return Err(Error::Invalid(format!(
                "{}×{} is not usable with Flux: width and height must be multiples of {step} (8-pixel latent cells packed 2×2)",
                request.width, request.height
            )));
        }
        let ctx =
            |i: usize| lora.and_then(|l| l.sets.get(i)).map(|s| ForwardCtx::with_lora(s.clone())).unwrap_or_default();
        let (dit_ctx, clip_ctx, t5_ctx) = (ctx(0), ctx(1), ctx(2));
        let cond = self.encode_prompts(&[request.prompt.as_str()], &clip_ctx, &t5_ctx)?;
        let cfg = (request.cfg_scale - 1.0).abs() > f64::EPSILON;
        let cond = if cfg {
            let negative = request.negative.as_deref().unwrap_or("");
            let neg = self.encode_prompts(&[negative], &clip_ctx, &t5_ctx)?;
            FluxConditioning::cat(&[&neg, &cond])?
        } else {
            cond
        };
        let dtype = self.transformer.dtype();
        let device = self.transformer.device().clone();
        let factor = self.ae.config().downsample_factor();
        let (h, w) = (request.height / factor, request.width / factor);
        let channels = self.transformer.config().in_channels / 4;
        // sd-scripts draws the noise already packed: (1, tokens, 64).
        let mut rng = StdRng::seed_from_u64(request.seed);
        let packed = gaussian(&[1, (h / 2) * (w / 2), channels * 4], &mut rng, &device)?;
        let init = unpack_latents(&packed, h, w)?.to_dtype(dtype)?;
        let sigmas = flux_schedule(request.steps, (h / 2) * (w / 2), true);
        let rows = if cfg { 2 } else { 1 };
        let guidance = Tensor::full(request.guidance as f32, rows, &device)?;
        let cfg_scale = request.cfg_scale;
        let mut velocity = |x: &Tensor, sigma: f64| -> candle_core::Result<Tensor> {
            let t = Tensor::full(sigma as f32, rows, &device)?;
            let input = if cfg { Tensor::cat(&[x, x], 0)? } else { x.clone() };
            let v = self.predict(&input, &t, &cond, &guidance, &dit_ctx)?;
            if !cfg {
                return Ok(v);
            }
            let (neg, pos) = (v.narrow(0, 0, 1)?, v.narrow(0, 1, 1)?);
            &neg + ((pos - &neg)? * cfg_scale)?
        };
        let latents = euler(&sigmas, &init, &mut velocity, on_step)?;
        self.decode_to_rgb(&latents)
    }

    /// Decodes transformer-space latents (B = 1) to 8-bit RGB.
    pub fn decode_to_rgb(&self, latents: &Tensor) -> Result<RgbImage> {
        decode_latents_to_rgb(&self.ae, latents)
    }
}
