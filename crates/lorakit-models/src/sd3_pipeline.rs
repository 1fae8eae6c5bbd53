//! SD3 / SD3.5 as one model: the MMDiT, the 16-channel VAE, CLIP-L, CLIP-G and T5-XXL, loaded
//! from the files users have ([`crate::checkpoint::sd3`]: SAI single files with or without the
//! text encoders inside, sd-scripts' `--clip_l --clip_g --t5xxl` files, diffusers folders),
//! with text encoding as sd-scripts' `Sd3TextEncodingStrategy` ([`crate::sd3_text`]), latents as
//! its `SDVAE.process_in` (`(z − shift)·scale`) and sampling as its `sd3_train_utils.do_sample`
//! (flow Euler over SAI's schedule with shift 3.0, CFG with the negative prompt in one batch).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lorakit_nn::lora::LoraTarget;
use lorakit_nn::ForwardCtx;
use rand::{rngs::StdRng, SeedableRng};

use crate::checkpoint::sd3::{
    load_sd3_text_encoder_weights, load_sd3_transformer, load_sd3_vae, Sd3Paths, Sd3TextEncoder, Sd3TextEncoderConfig,
};
use crate::checkpoint::LinearStorage;
use crate::dit::mmdit::{MmditInputs, MmditTransformer, PosCrop};
use crate::lora_inject::{ComponentTargets, UNET_PREFIX};
use crate::pipeline::{decode_latents_to_rgb, gaussian, GenerateRequest, LoraSets, RgbImage};
use crate::samplers::flow::{euler, sd3_schedule};
use crate::sd3_text::{
    clip_g_from_weights, clip_l_from_weights, t5_from_weights, Sd3Drops, Sd3TextEncoders, Sd3TextOptions,
    Sd3TextOutput, CLIP_G_LORA_PREFIX, CLIP_L_LORA_PREFIX, SD3_T5_MAX_LENGTH,
};
use crate::t5::T5_LORA_PREFIX;
use crate::vae::AutoencoderKL;
use crate::{Error, Result, Weights};

/// The sampler's shift: SAI's `ModelSamplingDiscreteFlow(shift=3.0)` for every SD3 model
/// (sd-scripts' `do_sample`, diffusers' scheduler config of every SD3 / SD3.5 repo).
pub const SD3_SAMPLING_SHIFT: f64 = 3.0;

/// How to load and run an SD3 model.
#[derive(Clone, Debug)]
pub struct Sd3Options {
    /// Compute dtype of the transformer and text encoders (the VAE runs in f32).
    pub dtype: DType,
    /// Transformer linear weights in fp8 (`fp8_base`).
    pub transformer_storage: LinearStorage,
    /// T5 linear weights in fp8 (`fp8_base` without `fp8_base_unet`).
    pub t5_storage: LinearStorage,
    /// T5 tokens per prompt (`t5xxl_max_token_length`; default 256).
    pub t5_max_length: Option<usize>,
    /// `apply_lg_attn_mask`.
    pub apply_lg_attn_mask: bool,
    /// `apply_t5_attn_mask`.
    pub apply_t5_attn_mask: bool,
    /// `enable_scaled_pos_embed`: the latent sizes (`round(√(w·h)) / 8` of each training
    /// resolution) to build scaled position tables for; `None`: the checkpoint's table.
    pub scaled_pos_embed_sizes: Option<Vec<usize>>,
    /// sd-scripts' `blocks_to_swap`: the last this many joint blocks stay in host memory and
    /// are copied to the device when they run ([`MmditTransformer::with_block_swap`]; at most
    /// depth − 2).
    pub blocks_to_swap: usize,
}

impl Default for Sd3Options {
    fn default() -> Self {
        Sd3Options {
            dtype: DType::F32,
            transformer_storage: LinearStorage::Compute,
            t5_storage: LinearStorage::Compute,
            t5_max_length: None,
            apply_lg_attn_mask: false,
            apply_t5_attn_mask: false,
            scaled_pos_embed_sizes: None,
            blocks_to_swap: 0,
        }
    }
}

/// What the transformer is conditioned on.
#[derive(Clone, Debug)]
pub struct Sd3Conditioning {
    /// CLIP-L + CLIP-G features padded to T5's width, then T5's tokens: (B, 77 + L, 4096).
    pub context: Tensor,
    /// CLIP-L's and CLIP-G's projected pooled vectors side by side (B, 2048).
    pub pooled: Tensor,
}

/// A loaded SD3 / SD3.5 model.
pub struct Sd3Pipeline {
    transformer: MmditTransformer,
    vae: AutoencoderKL,
    text: Sd3TextEncoders,
    source: PathBuf,
    transformer_targets: Vec<LoraTarget>,
    clip_l_targets: Vec<LoraTarget>,
    clip_g_targets: Vec<LoraTarget>,
    t5_targets: Vec<LoraTarget>,
    /// Parameters of CLIP-L, CLIP-G and T5 (kept after they are released).
    text_parameters: [usize; 3],
}

/// Builds a network from a store, then checks the store was complete and fully used.
fn build<T>(weights: &Weights, f: impl FnOnce(&Weights) -> Result<T>) -> Result<T> {
    let model = f(weights)?;
    weights.check_complete()?;
    Ok(model)
}

fn count(shapes: &[(String, Vec<usize>)]) -> usize {
    shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum()
}

impl Sd3Pipeline {
    /// Loads every part; a missing part is an error naming sd-scripts' flag for it.
    pub fn load(paths: &Sd3Paths, opts: &Sd3Options, device: &Device) -> Result<Self> {
        // With block swapping the transformer is built in host memory, then all but the swapped
        // blocks move to the device.
        let load_device = if opts.blocks_to_swap > 0 { &Device::Cpu } else { device };
        let (config, weights) = load_sd3_transformer(&paths.model, opts.dtype, opts.transformer_storage, load_device)?;
        let transformer = build(&weights, |w| Ok(MmditTransformer::new(w.view(""), &config)?))?;
        drop(weights);
        let transformer = if opts.blocks_to_swap > 0 {
            transformer
                .with_block_swap(opts.blocks_to_swap, device)
                .map_err(|e| Error::Invalid(format!("{}: {e}", paths.model.display())))?
        } else {
            transformer
        };
        let transformer = match &opts.scaled_pos_embed_sizes {
            Some(sizes) => transformer.with_scaled_pos_embed(sizes)?,
            None => transformer,
        };

        let (vae_config, vae_weights, scaling) = load_sd3_vae(paths, device)?;
        let mut vae_config = vae_config;
        vae_config.scaling_factor = scaling.scale;
        vae_config.shift_factor = Some(scaling.shift);
        let vae = build(&vae_weights, |w| Ok(AutoencoderKL::new(w.view(""), &vae_config)?))?;
        drop(vae_weights);

        let load = |which: Sd3TextEncoder, storage: LinearStorage| {
            load_sd3_text_encoder_weights(paths, which, opts.dtype, storage, device)
        };
        let (l_cfg, mut l_weights) = load(Sd3TextEncoder::ClipL, LinearStorage::Compute)?;
        let (g_cfg, g_weights) = load(Sd3TextEncoder::ClipG, LinearStorage::Compute)?;
        let (t_cfg, t_weights) = load(Sd3TextEncoder::T5xxl, opts.t5_storage)?;
        let (Sd3TextEncoderConfig::Clip(l_cfg), Sd3TextEncoderConfig::Clip(g_cfg), Sd3TextEncoderConfig::T5(t_cfg)) =
            (l_cfg, g_cfg, t_cfg)
        else {
            return Err(Error::Invalid("internal: SD3 text encoder configs of the wrong kind".into()));
        };
        let clip_l = clip_l_from_weights(&mut l_weights, &l_cfg)?;
        l_weights.check_complete()?;
        let clip_g = build(&g_weights, |w| clip_g_from_weights(w, &g_cfg))?;
        let t5 = build(&t_weights, |w| t5_from_weights(w, &t_cfg))?;
        let text_parameters = [
            count(&l_cfg.parameter_shapes(true)),
            count(&g_cfg.parameter_shapes(true)),
            count(&t_cfg.parameter_shapes()),
        ];
        let text_opts = Sd3TextOptions {
            t5_max_length: opts.t5_max_length.unwrap_or(SD3_T5_MAX_LENGTH),
            apply_lg_attn_mask: opts.apply_lg_attn_mask,
            apply_t5_attn_mask: opts.apply_t5_attn_mask,
        };
        let text = Sd3TextEncoders::new(Some(clip_l), Some(clip_g), Some(t5), text_opts)?;
        let (l_pooled, g_pooled) = (
            text.clip_l().map_or(0, |m| m.text_projection().frozen().out_features()),
            text.clip_g().map_or(0, |m| m.text_projection().frozen().out_features()),
        );
        let t5_width = text.t5().map_or(0, |t| t.config().d_model);
        let cfg = transformer.config();
        if l_pooled + g_pooled != cfg.pooled_dim || t5_width != cfg.context_dim {
            return Err(Error::Invalid(format!(
                "{}: the text encoders do not fit the transformer (CLIP-L + CLIP-G pooled {} + {} vs the MMDiT's {}, T5 width {} vs its context width {})",
                paths.model.display(),
                l_pooled,
                g_pooled,
                cfg.pooled_dim,
                t5_width,
                cfg.context_dim
            )));
        }
        Ok(Sd3Pipeline {
            // sd-scripts' block targets, then the embedders only `emb_dims` adapts (Named).
            transformer_targets: [transformer.lora_targets(), transformer.input_lora_targets().concat()].concat(),
            clip_l_targets: text.clip_l_lora_targets(),
            clip_g_targets: text.clip_g_lora_targets(),
            t5_targets: text.t5_lora_targets(),
            text_parameters,
            transformer,
            vae,
            text,
            source: paths.model.clone(),
        })
    }

    /// The transformer.
    pub fn transformer(&self) -> &MmditTransformer {
        &self.transformer
    }

    /// The VAE.
    pub fn vae(&self) -> &AutoencoderKL {
        &self.vae
    }

    /// The text encoders.
    pub fn text_encoders(&self) -> &Sd3TextEncoders {
        &self.text
    }

    /// The model file or folder.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Image pixels per latent cell side times the patch: sizes must be multiples of this.
    pub fn pixel_step(&self) -> usize {
        self.vae.config().downsample_factor() * self.transformer.config().patch_size
    }

    /// The components LoRA files are matched against, in [`LoraSets`] order: the transformer
    /// (`lora_unet`), CLIP-L (`lora_te1`), CLIP-G (`lora_te2`), T5-XXL (`lora_te3`).
    pub fn lora_components(&self) -> Vec<ComponentTargets<'_>> {
        let targets = [&self.transformer_targets, &self.clip_l_targets, &self.clip_g_targets, &self.t5_targets];
        Self::lora_prefixes().iter().zip(targets).map(|(p, t)| ComponentTargets { prefix: p, targets: t }).collect()
    }

    /// kohya's module-name prefix of each component, in [`Self::lora_components`] order.
    pub fn lora_prefixes() -> &'static [&'static str] {
        &[UNET_PREFIX, CLIP_L_LORA_PREFIX, CLIP_G_LORA_PREFIX, T5_LORA_PREFIX]
    }

    /// Parameters of CLIP-L, CLIP-G and T5 (known after the encoders are released).
    pub fn text_encoder_parameter_counts(&self) -> [usize; 3] {
        self.text_parameters
    }

    /// Drops T5 (its outputs were cached); CLIP encoding goes on.
    pub fn release_t5(&mut self) {
        self.text.release_t5();
    }

    /// Drops every text encoder (their outputs were cached).
    pub fn release_text_encoders(&mut self) {
        self.text.release_t5();
        self.text.release_clips();
    }

    /// sd-scripts' `encode_tokens` for `prompts` with the options' masks; `ctxs` carry CLIP-L's,
    /// CLIP-G's and T5's LoRA; `drops` the per-encoder dropout of each row.
    pub fn encode_text<S: AsRef<str>>(
        &self,
        prompts: &[S],
        ctxs: [&ForwardCtx; 3],
        drops: Option<&Sd3Drops>,
    ) -> Result<Sd3TextOutput> {
        self.text.encode(prompts, ctxs, drops)
    }

    /// `concat_encodings` of an encoder output: the transformer's context and pooled inputs.
    pub fn conditioning(&self, out: &Sd3TextOutput) -> Result<Sd3Conditioning> {
        let (context, pooled) = out.context_and_pooled_for(self.transformer.config().context_dim)?;
        Ok(Sd3Conditioning { context, pooled })
    }

    /// Images in [-1, 1] (B, 3, H, W) → the transformer's latent space (B, 16, H/8, W/8):
    /// a posterior sample (or its mean without `rng`), `(z − shift)·scale`.
    pub fn encode_images(&self, pixels: &Tensor, rng: Option<&mut StdRng>) -> Result<Tensor> {
        Ok(self.vae.encode_to_model_space(pixels, rng)?)
    }

    /// The transformer's output for latents (B, 16, h, w) at `timesteps` (B, 0..1000) — the
    /// velocity `ε − x₀` a flow model predicts — with the position table cut as `pos_crop`.
    pub fn predict(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        cond: &Sd3Conditioning,
        pos_crop: PosCrop,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let dtype = self.transformer.dtype();
        let (x, pooled, context) =
            (latents.to_dtype(dtype)?, cond.pooled.to_dtype(dtype)?, cond.context.to_dtype(dtype)?);
        let timesteps = timesteps.to_dtype(DType::F32)?;
        let mut inputs = MmditInputs::new(&x, &timesteps, &pooled, &context);
        inputs.pos_crop = pos_crop;
        self.transformer.forward(&inputs, ctx)
    }

    /// Generates one image as sd-scripts' `do_sample`: `request.steps` Euler steps over SAI's
    /// schedule with shift 3.0 from pure noise, CFG with the negative prompt (empty when none)
    /// at `request.cfg_scale`. `lora` holds one set per [`Self::lora_components`].
    pub fn generate(
        &self,
        request: &GenerateRequest,
        lora: Option<&LoraSets>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<RgbImage> {
        request.validate()?;
        let step = self.pixel_step();
        if request.width % step != 0 || request.height % step != 0 {
            return Err(Error::Invalid(format!(
                "{}×{} is not usable with SD3: width and height must be multiples of {step} (8-pixel latent cells in 2×2 patches)",
                request.width, request.height
            )));
        }
        let factor = self.vae.config().downsample_factor();
        let (h, w) = (request.height / factor, request.width / factor);
        let channels = self.transformer.config().in_channels;
        let mut rng = StdRng::seed_from_u64(request.seed);
        let init = gaussian(&[1, channels, h, w], &mut rng, self.transformer.device())?;
        let negative = request.negative.as_deref().unwrap_or("");
        let latents =
            self.sample_latents(&init, &request.prompt, negative, request.steps, request.cfg_scale, lora, on_step)?;
        self.decode_to_rgb(&latents)
    }

    /// The sampling loop of [`Self::generate`] from the starting latents `init` (B = 1, pure
    /// noise: σ starts at 1): returns the final latents in the transformer's space.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_latents(
        &self,
        init: &Tensor,
        prompt: &str,
        negative: &str,
        steps: usize,
        cfg_scale: f64,
        lora: Option<&LoraSets>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let ctx =
            |i: usize| lora.and_then(|l| l.sets.get(i)).map(|s| ForwardCtx::with_lora(s.clone())).unwrap_or_default();
        let (dit_ctx, l_ctx, g_ctx, t5_ctx) = (ctx(0), ctx(1), ctx(2), ctx(3));
        let out = self.encode_text(&[prompt, negative], [&l_ctx, &g_ctx, &t5_ctx], None)?;
        let cond = self.conditioning(&out)?;
        let device = self.transformer.device().clone();
        let sigmas = sd3_schedule(steps, SD3_SAMPLING_SHIFT);
        let mut velocity = |x: &Tensor, sigma: f64| -> candle_core::Result<Tensor> {
            let t = Tensor::full((sigma * 1000.0) as f32, 2, &device)?;
            let v = self.predict(&Tensor::cat(&[x, x], 0)?, &t, &cond, PosCrop::Centre, &dit_ctx)?;
            let v = v.to_dtype(DType::F32)?;
            let (pos, neg) = (v.narrow(0, 0, 1)?, v.narrow(0, 1, 1)?);
            // CFG on the denoised estimates x − σ·v is CFG on the velocities.
            &neg + ((pos - &neg)? * cfg_scale)?
        };
        Ok(euler(&sigmas, &init.to_dtype(DType::F32)?, &mut velocity, on_step)?)
    }

    /// Decodes transformer-space latents (B = 1) to 8-bit RGB.
    pub fn decode_to_rgb(&self, latents: &Tensor) -> Result<RgbImage> {
        decode_latents_to_rgb(&self.vae, latents)
    }
}
