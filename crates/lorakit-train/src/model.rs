//! The seam between the training loop and a model family. The loop only needs: encode images to
//! latents, encode captions, predict from noisy latents, the training objective, the LoRA targets of
//! each component, and sampling for preview images. SD1.x/SD2.x implement it here; SDXL, SD3 and
//! Flux plug in by implementing the same trait, so there is one training loop for all of them.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_dataset::prompt_weights::parse_prompt_attention;
use lorakit_models::checkpoint::ModelFamily;
use lorakit_models::pipeline::{GenerateRequest, LoraSets, RgbImage, StableDiffusion, TextEncoders};
use lorakit_models::schedule::Prediction;
use lorakit_models::vae::AutoencoderKL;
use lorakit_nn::lora::{LoraSet, LoraTarget};
use lorakit_nn::ForwardCtx;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Result, TrainError};
use crate::objective::{FlowFamily, ObjectiveKind};

/// What a LoRA file for this model says about its base (sd-scripts' `ss_base_model_version`,
/// modelspec architecture and implementation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyInfo {
    /// `ss_base_model_version` (`sd_v1`, `sd_v2_v`, …).
    pub base_model_version: String,
    /// `modelspec.architecture` without the `/lora` suffix.
    pub architecture: String,
    /// `modelspec.implementation`.
    pub implementation: String,
    /// `ss_v2`.
    pub v2: bool,
    /// Resolution modelspec assumes when none is configured.
    pub default_resolution: (u32, u32),
}

/// One component that can carry LoRA modules (the denoiser, a text encoder).
#[derive(Debug, Clone)]
pub struct Component {
    /// kohya prefix of its modules (`lora_unet`, `lora_te`).
    pub prefix: &'static str,
    /// Whether it is a text encoder (trained with the text-encoder learning rate).
    pub is_text_encoder: bool,
    /// Its LoRA targets.
    pub targets: Vec<LoraTarget>,
    /// A switch that must be on for this component to be trained at all (Flux's T5-XXL:
    /// `network.train_t5xxl`); `None`: trained with its kind (denoiser / text encoders).
    pub opt_in: Option<OptIn>,
}

/// Which components a run trains, one flag per component: the denoiser unless
/// `network_train_text_encoder_only`, the text encoders unless `network_train_unet_only`, each
/// only with its opt-in switch on (Flux's T5-XXL: `network.train_t5xxl`).
pub fn trained_components(config: &crate::TrainConfig, components: &[Component]) -> Vec<bool> {
    components
        .iter()
        .map(|c| {
            let switched_on = match c.opt_in {
                Some(OptIn::TrainT5xxl) => config.network.train_t5xxl,
                None => true,
            };
            switched_on && if c.is_text_encoder { config.trains_text_encoder() } else { config.trains_unet() }
        })
        .collect()
}

/// Whether any text encoder among `components` is marked in `trained`.
pub fn trains_a_text_encoder(components: &[Component], trained: &[bool]) -> bool {
    components.iter().zip(trained).any(|(c, t)| c.is_text_encoder && *t)
}

/// The config switches a component can need (see [`Component::opt_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    /// `network.train_t5xxl` (sd-scripts' `train_t5xxl=True`).
    TrainT5xxl,
}

/// What the denoiser is conditioned on besides the noisy latents and the timesteps: the text
/// encoders' output for a batch of captions.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Per-token text context `(B, L, D)` the cross-attention reads.
    pub context: Tensor,
    /// A pooled text embedding `(B, P)` for families that use one (SDXL: TE2's projected EOS
    /// state); `None` for SD 1.x/2.x.
    pub pooled: Option<Tensor>,
    /// Which context tokens are real (1) or padding (0), `(B, L)`, for families that mask
    /// padding in the denoiser (Flux with `apply_t5_attn_mask`); `None` elsewhere.
    pub mask: Option<Tensor>,
}

impl Conditioning {
    /// Conditioning without a pooled vector or mask (SD 1.x/2.x).
    pub fn context_only(context: Tensor) -> Conditioning {
        Conditioning { context, pooled: None, mask: None }
    }

    /// Rows `i` of the batch (for caches that keep one caption per entry).
    pub fn row(&self, i: usize) -> Result<Conditioning> {
        Ok(Conditioning {
            context: self.context.narrow(0, i, 1)?,
            pooled: self.pooled.as_ref().map(|p| p.narrow(0, i, 1)).transpose()?,
            mask: self.mask.as_ref().map(|m| m.narrow(0, i, 1)).transpose()?,
        })
    }

    /// Every tensor moved to `device`.
    pub fn to_device(&self, device: &Device) -> Result<Conditioning> {
        Ok(Conditioning {
            context: self.context.to_device(device)?,
            pooled: self.pooled.as_ref().map(|p| p.to_device(device)).transpose()?,
            mask: self.mask.as_ref().map(|m| m.to_device(device)).transpose()?,
        })
    }

    /// Stacks single-row conditionings into one batch (the inverse of [`Conditioning::row`]).
    pub fn cat(rows: &[Conditioning]) -> Result<Conditioning> {
        let contexts: Vec<&Tensor> = rows.iter().map(|r| &r.context).collect();
        let pooled: Option<Vec<&Tensor>> = rows.iter().map(|r| r.pooled.as_ref()).collect();
        let masks: Option<Vec<&Tensor>> = rows.iter().map(|r| r.mask.as_ref()).collect();
        let cat = |parts: Option<Vec<&Tensor>>| -> Result<Option<Tensor>> {
            Ok(match parts {
                Some(p) if !p.is_empty() => Some(Tensor::cat(&p, 0)?),
                _ => None,
            })
        };
        Ok(Conditioning { context: Tensor::cat(&contexts, 0)?, pooled: cat(pooled)?, mask: cat(masks)? })
    }
}

/// SDXL's size and crop micro-conditioning of one sample (sd-scripts' `original_sizes_hw`,
/// `crop_top_lefts`, `target_sizes_hw`); families without it ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeCondition {
    /// The image's size before resizing, `(height, width)`.
    pub original_hw: (u32, u32),
    /// sd-scripts' crop top-left `(top, left)` (from `get_crop_ltrb`, mirrored when flipped).
    pub crop_top_left: (u32, u32),
    /// The trained size (the bucket), `(height, width)`.
    pub target_hw: (u32, u32),
}

impl SizeCondition {
    /// Generation at `(height, width)`: the original and target sizes are the output size, no
    /// crop (what sd-scripts' sampler and diffusers' SDXL pipeline pass by default).
    pub fn for_generation(height: u32, width: u32) -> SizeCondition {
        SizeCondition { original_hw: (height, width), crop_top_left: (0, 0), target_hw: (height, width) }
    }

    /// The six values in SDXL's order: original h, w, crop top, left, target h, w.
    pub fn time_ids(&self) -> [f32; 6] {
        let (a, b) = self.original_hw;
        let (c, d) = self.crop_top_left;
        let (e, f) = self.target_hw;
        [a, b, c, d, e, f].map(|v| v as f32)
    }
}

/// A model the training loop can train a LoRA on.
pub trait TrainableModel {
    /// The family's metadata.
    fn info(&self) -> FamilyInfo;
    /// Device the model runs on.
    fn device(&self) -> &Device;
    /// Dtype of the frozen weights and activations.
    fn dtype(&self) -> DType;
    /// The training objective of the family: DDPM with its noise schedule and prediction type
    /// (the UNet families), or rectified flow as sd-scripts trains Flux / SD3. The trainer joins
    /// it with the config's options ([`crate::objective::Objective::new`]); the loop never asks
    /// which family it trains.
    fn objective(&self) -> ObjectiveKind;
    /// The components, in the order their LoRA sets are passed around.
    fn components(&self) -> Vec<Component>;
    /// Pixels `(B, 3, H, W)` in [-1, 1] → latents as the denoiser sees them (sampled from the
    /// VAE posterior with `rng`, scaled).
    fn encode_images(&self, pixels: &Tensor, rng: &mut StdRng) -> Result<Tensor>;
    /// Captions → conditioning. `ctxs[i]` is the forward context of component `i` (LoRA and
    /// training mode for trained text encoders).
    fn encode_text(
        &self,
        captions: &[&str],
        max_token_length: usize,
        clip_skip: Option<usize>,
        ctxs: &[ForwardCtx],
    ) -> Result<Conditioning>;
    /// [`Self::encode_text`] for captions with A1111 attention weights (`training.weighted_captions`,
    /// sd-scripts' `--weighted_captions`, spec §6.2). Families that do not support them say so.
    fn encode_text_weighted(
        &self,
        captions: &[&str],
        max_token_length: usize,
        clip_skip: Option<usize>,
        ctxs: &[ForwardCtx],
    ) -> Result<Conditioning> {
        let _ = (captions, max_token_length, clip_skip, ctxs);
        Err(TrainError::Other(format!(
            "training.weighted_captions: not supported for {} models; turn it off",
            self.info().base_model_version
        )))
    }
    /// The denoiser's prediction for `noisy` at `timesteps` (f32, `[B]`), with one
    /// [`SizeCondition`] per sample.
    ///
    /// `timesteps` are on the 0..1000 scale of sd-scripts' `timesteps`: DDPM's integer t as
    /// f32; for Flux σ·1000 — the implementation divides by 1000 before the transformer (as
    /// sd-scripts' `call_dit` passes `timesteps / 1000`; Flux's timestep embedding multiplies
    /// by 1000 again); for SD3 the integer t the MMDiT takes as is. `guidance` is the
    /// distilled-guidance value per sample (f32 `[B]`, `flow.guidance_scale`) the flow
    /// objective gives Flux; a model without a guidance embedding (schnell, every UNet) ignores
    /// it, as sd-scripts does. `rng` (the micro-step's own stream) draws the randomness of the
    /// family's own training options — SD3's per-encoder text dropout and position-table crop;
    /// the others ignore it.
    #[allow(clippy::too_many_arguments)]
    fn denoise(
        &self,
        noisy: &Tensor,
        timesteps: &Tensor,
        guidance: Option<&Tensor>,
        cond: &Conditioning,
        sizes: &[SizeCondition],
        ctxs: &[ForwardCtx],
        rng: &mut StdRng,
    ) -> Result<Tensor>;
    /// One preview image with the LoRA sets applied (one per component).
    fn sample(&self, request: &GenerateRequest, sets: &[Arc<LoraSet>]) -> Result<RgbImage>;
    /// Identifies the VAE weights (latent caches are reused only for the same VAE).
    fn vae_fingerprint(&self) -> String;
    /// Pixels per latent cell along each side (from the VAE's config).
    fn latent_factor(&self) -> u32;
    /// Frozen parameters of every component together, and of the denoiser alone (for the
    /// memory estimate).
    fn parameter_counts(&self) -> (usize, usize);
    /// Frozen parameters of the text encoders (they leave memory when their outputs are cached
    /// and no sample needs them).
    fn text_encoder_parameter_count(&self) -> usize;
    /// Whether the text conditioning can be cached while the components `trained` marks (one
    /// flag per [`Self::components`] entry, see [`trained_components`]) train: the frozen
    /// encoders' outputs come from the cache and [`Self::encode_text_over_cache`] recomputes the
    /// trained ones each step (sd-scripts' partial caching, `is_partial`). By default only when
    /// no text encoder trains (SD's encoders all feed one context).
    fn caches_text_with(&self, trained: &[bool]) -> bool {
        !trains_a_text_encoder(&self.components(), trained)
    }
    /// A cached batch's conditioning with the outputs of the trained text encoders recomputed
    /// for `captions` under `ctxs` (see [`Self::caches_text_with`]); by default the cache as is.
    fn encode_text_over_cache(
        &self,
        cached: Conditioning,
        captions: &[&str],
        ctxs: &[ForwardCtx],
        trained: &[bool],
    ) -> Result<Conditioning> {
        let _ = (captions, ctxs, trained);
        Ok(cached)
    }
    /// Frozen text-encoder parameters that leave memory once the outputs are cached while
    /// `trained` train (and no sample needs the encoders): every encoder's when none trains.
    fn released_text_encoder_parameters(&self, trained: &[bool]) -> usize {
        if trains_a_text_encoder(&self.components(), trained) {
            0
        } else {
            self.text_encoder_parameter_count()
        }
    }
    /// The share of the denoiser's activations gradient checkpointing keeps (block inputs plus
    /// one block's recomputation); the UNets' measured 0.30 by default.
    fn checkpointing_factor(&self) -> f64 {
        crate::plan::CHECKPOINTING_FACTOR
    }
    /// The denoiser's training activations relative to SD 1.5's UNet at the same latent size
    /// (for the memory estimate).
    fn activation_scale(&self) -> f64;
    /// sd-scripts' sample-image defaults of the family: (steps, CFG scale). SD 1.x/2.x/SDXL:
    /// 30 steps at CFG 7.5.
    fn sample_defaults(&self) -> (u32, f64) {
        (30, 7.5)
    }
    /// Image sides must be multiples of this many pixels: the latent factor, and for Flux twice
    /// that (its 2×2 latent packing).
    fn pixel_step(&self) -> u32 {
        self.latent_factor()
    }
    /// The default embedded guidance of sample images for guidance-distilled models
    /// (Flux.1-dev: sd-scripts' 3.5, a prompt's `--g` overrides it); `None`: the model has no
    /// guidance input and `--g` is ignored with a warning.
    fn sample_guidance(&self) -> Option<f64> {
        None
    }
    /// Which family's DiT network arguments (`network.train_blocks`, type dims, … for Flux;
    /// `context_*_dim`, `emb_dims`, … for SD3) shape this model's denoiser network; `None`
    /// (U-Nets) refuses them.
    fn dit_network(&self) -> Option<FlowFamily> {
        None
    }
}

/// The UNet families — SD 1.x/2.x (one CLIP text encoder) and SDXL (two text encoders, pooled
/// vector, size conditioning): UNet2DConditionModel, AutoencoderKL and the family's
/// [`TextEncoders`], which carries every difference between them before the denoiser.
pub struct StableDiffusionModel {
    sd: StableDiffusion,
    vae_fingerprint: String,
}

/// How the frozen model is held in memory (sd-scripts' `--no_half_vae`, `--fp8_base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WeightStorage {
    /// Keep the VAE in f32 when the model computes in f16/bf16.
    pub no_half_vae: bool,
    /// Store the U-Net's and text encoder's linear and conv weights in f8 (e4m3); each layer
    /// casts its weight to the compute dtype when it runs. Norms, biases, embeddings and the
    /// first conv stay in the compute dtype.
    pub fp8_base: bool,
}

impl StableDiffusionModel {
    /// Loads a checkpoint in `dtype` on `device`; `v_parameterization` switches the target.
    pub fn load(path: &Path, dtype: DType, device: &Device, v_parameterization: bool) -> Result<Self> {
        Self::load_with(path, dtype, device, v_parameterization, WeightStorage::default())
    }

    /// [`StableDiffusionModel::load`] with the weights stored as `storage` asks.
    pub fn load_with(
        path: &Path,
        dtype: DType,
        device: &Device,
        v_parameterization: bool,
        storage: WeightStorage,
    ) -> Result<Self> {
        Self::load_with_vae(path, None, dtype, device, v_parameterization, storage)
    }

    /// [`StableDiffusionModel::load_with`] with the VAE read from `vae` when given (`model.vae`,
    /// sd-scripts' `--vae`).
    pub fn load_with_vae(
        path: &Path,
        vae: Option<&Path>,
        dtype: DType,
        device: &Device,
        v_parameterization: bool,
        storage: WeightStorage,
    ) -> Result<Self> {
        let mut ckpt = lorakit_models::checkpoint::load_sd_checkpoint(path, dtype, device)?;
        if let Some(vae) = vae {
            ckpt.replace_vae(vae, device)?;
        }
        if storage.no_half_vae {
            ckpt.vae.cast_where(DType::F32, |_, _| true)?;
        }
        if storage.fp8_base {
            let fp8 = |name: &str, t: &Tensor| {
                name.ends_with(".weight")
                    && matches!(t.rank(), 2 | 4)
                    && !name.contains("embedding")
                    && !name.starts_with("conv_in.")
            };
            ckpt.unet.cast_where(DType::F8E4M3, fp8)?;
            ckpt.text_encoder.cast_where(DType::F8E4M3, fp8)?;
            if let Some(te2) = ckpt.text_encoder_2.as_mut() {
                te2.cast_where(DType::F8E4M3, fp8)?;
            }
        }
        let mut sd = StableDiffusion::from_checkpoint(ckpt)?;
        match sd.family {
            ModelFamily::Sd1 | ModelFamily::Sd2 | ModelFamily::Sdxl => {}
            other => {
                return Err(TrainError::Other(format!(
                    "{}: a {other} checkpoint; training supports SD 1.x, SD 2.x and SDXL so far",
                    path.display()
                )))
            }
        }
        // An ε-target on a v-prediction model trains a LoRA that ruins every image, and a model
        // that declares v-prediction means it (SD 2.x 768-v folders). "epsilon" is only
        // diffusers' default value, written into folders converted from v-prediction files by
        // older tools too, so there the config wins, with a warning.
        match &sd.declared_prediction {
            Some((Prediction::VPrediction, source)) if !v_parameterization => {
                return Err(TrainError::Other(format!(
                    "{}: a v-prediction model ({source}), but model.v_parameterization = false; set model.v_parameterization = true",
                    path.display()
                )));
            }
            Some((Prediction::Epsilon, source)) if v_parameterization => tracing::warn!(
                "{}: the model declares epsilon-prediction ({source}); training with v-prediction as model.v_parameterization asks",
                path.display()
            ),
            None if sd.family == ModelFamily::Sd2 && !v_parameterization => tracing::warn!(
                "{}: an SD 2.x model that does not say what it predicts; training with epsilon-prediction — for a 768-v model set model.v_parameterization = true",
                path.display()
            ),
            _ => {}
        }
        sd.prediction = if v_parameterization { Prediction::VPrediction } else { Prediction::Epsilon };
        let vae_fingerprint = fingerprint_vae(&sd.vae)?;
        Ok(StableDiffusionModel { sd, vae_fingerprint })
    }

    /// Refuses a checkpoint of another family than the config is for (`model.model_family`,
    /// which `--from-kohya` sets from the GUI's checkboxes and `v2`), naming both.
    pub fn check_family(&self, expected: Option<&str>, path: &Path) -> Result<()> {
        let name = |family: &str| match family {
            "sd2" => "SD 2.x",
            "sdxl" => "SDXL",
            "flux" => "Flux.1",
            _ => "SD 1.x",
        };
        let actual = match self.sd.family {
            ModelFamily::Sd2 => "sd2",
            ModelFamily::Sdxl => "sdxl",
            _ => "sd1",
        };
        match expected {
            Some(expected) if expected != actual => Err(TrainError::Other(format!(
                "{}: an {} checkpoint, but the config is for {} (model.model_family = {expected:?}{}); use a checkpoint of that family or fix the config",
                path.display(),
                name(actual),
                name(expected),
                if expected == "sd2" { ", from v2 = true" } else { "" }
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses training a model that declares a zero-terminal-SNR schedule (NoobAI-XL v-pred's
    /// `ztsnr` key) with the ordinary one: its LoRA would learn the wrong noise levels.
    pub fn check_schedule(&self, zero_terminal_snr: bool, path: &Path) -> Result<()> {
        if self.sd.declared_zero_terminal_snr && !zero_terminal_snr {
            return Err(TrainError::Other(format!(
                "{}: a zero-terminal-SNR model (it has a `ztsnr` key, as NoobAI-XL v-pred does), but loss.zero_terminal_snr = false; set loss.zero_terminal_snr = true (with model.v_parameterization = true)",
                path.display()
            )));
        }
        Ok(())
    }

    /// Drops the text encoders from memory once their outputs are cached (see
    /// [`StableDiffusion::release_text_encoders`]).
    pub fn release_text_encoders(&mut self) {
        self.sd.release_text_encoders();
    }

    /// The wrapped pipeline.
    pub fn pipeline(&self) -> &StableDiffusion {
        &self.sd
    }
}

impl StableDiffusionModel {
    /// Training's conditioning of `captions` through the family's text encoders; with
    /// `weighted`, each caption's (text, weight) pieces (`--weighted_captions`).
    fn encode_captions(
        &self,
        captions: &[&str],
        weighted: Option<&[Vec<(String, f64)>]>,
        max_token_length: usize,
        clip_skip: Option<usize>,
        ctxs: &[ForwardCtx],
    ) -> Result<Conditioning> {
        use lorakit_models::clip::{encode_prompts, encode_weighted_prompts};
        let ctx = |i: usize| ctxs.get(i).cloned().unwrap_or_default();
        let max = Some(max_token_length);
        match &self.sd.text {
            TextEncoders::Clip { encoder, tokenizer } => {
                let context = match weighted {
                    Some(p) => encode_weighted_prompts(encoder, tokenizer, p, max, clip_skip, &ctx(1))?,
                    None => encode_prompts(encoder, tokenizer, captions, max, clip_skip, &ctx(1))?,
                };
                Ok(Conditioning::context_only(context))
            }
            TextEncoders::Sdxl(te) => {
                refuse_sdxl_clip_skip(clip_skip)?;
                let ctxs = [&ctx(1), &ctx(2)];
                let c = match weighted {
                    Some(p) => te.encode_weighted(p, max, ctxs)?,
                    None => te.encode(captions, max, ctxs)?,
                };
                Ok(Conditioning { context: c.context, pooled: Some(c.pooled), mask: None })
            }
            TextEncoders::Released { .. } => Err(lorakit_models::pipeline::released().into()),
        }
    }
}

/// SDXL conditions on the penultimate layer of both encoders, always: sd-scripts ignores
/// `clip_skip` for SDXL (with a warning), so a value here would mean nothing.
fn refuse_sdxl_clip_skip(clip_skip: Option<usize>) -> Result<()> {
    match clip_skip {
        None => Ok(()),
        Some(n) => Err(TrainError::Other(format!(
            "model.clip_skip = {n}: SDXL always conditions on the penultimate layer of both text encoders (what A1111 and Pony's guides call clip skip 2) and sd-scripts ignores clip_skip for SDXL; remove model.clip_skip"
        ))),
    }
}

/// A short hash of a VAE's response to a fixed image: cheap, and different for any other VAE
/// (latent caches are reused only with the same one).
pub(crate) fn fingerprint_vae(vae: &AutoencoderKL) -> Result<String> {
    use sha2::{Digest, Sha256};
    let probe = Tensor::ones((1, 3, 8, 8), DType::F32, vae.device())?.to_dtype(vae.dtype())?;
    let dist = vae.encode(&probe)?;
    let values: Vec<f32> = dist.mean().to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    h.update(format!("{:?}", vae.dtype()).as_bytes());
    Ok(h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// Training latents of `pixels` in the denoiser's space (f32): a posterior sample whose noise is
/// drawn on the CPU from `rng`, so a seed gives the same latents on every device.
pub(crate) fn sample_latents(vae: &AutoencoderKL, pixels: &Tensor, rng: &mut StdRng) -> Result<Tensor> {
    let dist = vae.encode(&pixels.to_dtype(vae.dtype())?)?;
    let shape = dist.mean().dims().to_vec();
    let n: usize = shape.iter().product();
    let noise: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    let noise =
        Tensor::from_vec(noise, shape.as_slice(), &Device::Cpu)?.to_device(vae.device())?.to_dtype(vae.dtype())?;
    let latents = dist.sample_with_noise(&noise)?;
    Ok(vae.to_model_space(&latents.to_dtype(DType::F32)?)?)
}

/// One LoRA set per component for sampling: the trained ones, empty sets for the rest.
pub(crate) fn sets_for_sampling(sets: &[Arc<LoraSet>], components: usize, device: &Device) -> Result<LoraSets> {
    let sets = (0..components)
        .map(|i| match sets.get(i) {
            Some(s) => Ok(s.clone()),
            None => Ok(Arc::new(LoraSet::new(0, device)?)),
        })
        .collect::<Result<_>>()?;
    Ok(LoraSets { sets })
}

impl TrainableModel for StableDiffusionModel {
    fn info(&self) -> FamilyInfo {
        let v = self.sd.prediction == Prediction::VPrediction;
        if self.sd.family == ModelFamily::Sdxl {
            // sd-scripts writes the same base version for v-prediction SDXL models; modelspec
            // says "v" in prediction_type.
            return FamilyInfo {
                base_model_version: "sdxl_base_v1-0".into(),
                architecture: "stable-diffusion-xl-v1-base".into(),
                implementation: "https://github.com/Stability-AI/generative-models".into(),
                v2: false,
                default_resolution: (1024, 1024),
            };
        }
        let v2 = self.sd.family == ModelFamily::Sd2;
        let (base, arch, res) = match (v2, v) {
            (false, false) => ("sd_v1", "stable-diffusion-v1", (512, 512)),
            (false, true) => ("sd_v1_v", "stable-diffusion-v1", (512, 512)),
            (true, false) => ("sd_v2", "stable-diffusion-v2-512", (512, 512)),
            (true, true) => ("sd_v2_v", "stable-diffusion-v2-768-v", (768, 768)),
        };
        FamilyInfo {
            base_model_version: base.into(),
            architecture: arch.into(),
            implementation: "diffusers".into(),
            v2,
            default_resolution: res,
        }
    }

    fn device(&self) -> &Device {
        self.sd.unet.device()
    }

    fn dtype(&self) -> DType {
        self.sd.unet.dtype()
    }

    fn objective(&self) -> ObjectiveKind {
        ObjectiveKind::Ddpm { schedule: self.sd.schedule.clone(), prediction: self.sd.prediction }
    }

    fn components(&self) -> Vec<Component> {
        let prefixes = self.sd.lora_prefixes();
        self.sd
            .lora_components()
            .iter()
            .zip(prefixes)
            .enumerate()
            .map(|(i, (c, prefix))| Component {
                prefix,
                is_text_encoder: i > 0,
                targets: c.targets.to_vec(),
                opt_in: None,
            })
            .collect()
    }

    fn encode_images(&self, pixels: &Tensor, rng: &mut StdRng) -> Result<Tensor> {
        sample_latents(&self.sd.vae, pixels, rng)
    }

    fn encode_text(
        &self,
        captions: &[&str],
        max_token_length: usize,
        clip_skip: Option<usize>,
        ctxs: &[ForwardCtx],
    ) -> Result<Conditioning> {
        self.encode_captions(captions, None, max_token_length, clip_skip, ctxs)
    }

    fn encode_text_weighted(
        &self,
        captions: &[&str],
        max_token_length: usize,
        clip_skip: Option<usize>,
        ctxs: &[ForwardCtx],
    ) -> Result<Conditioning> {
        let prompts = captions
            .iter()
            .map(|c| {
                parse_prompt_attention(c).map_err(|e| TrainError::Other(format!("training.weighted_captions: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        self.encode_captions(captions, Some(&prompts), max_token_length, clip_skip, ctxs)
    }

    fn denoise(
        &self,
        noisy: &Tensor,
        timesteps: &Tensor,
        _guidance: Option<&Tensor>,
        cond: &Conditioning,
        sizes: &[SizeCondition],
        ctxs: &[ForwardCtx],
        _rng: &mut StdRng,
    ) -> Result<Tensor> {
        let ctx = ctxs.first().cloned().unwrap_or_default();
        let dtype = self.dtype();
        let b = noisy.dim(0)?;
        let time_ids = match &cond.pooled {
            Some(_) => {
                if sizes.len() != b {
                    return Err(TrainError::Other(format!(
                        "internal: {} size conditions for a batch of {b}",
                        sizes.len()
                    )));
                }
                let ids: Vec<f32> = sizes.iter().flat_map(|s| s.time_ids()).collect();
                Some(Tensor::from_vec(ids, (b, 6), noisy.device())?.to_dtype(dtype)?)
            }
            None => None,
        };
        let cond = lorakit_models::pipeline::PromptConditioning {
            context: cond.context.to_dtype(dtype)?,
            pooled: cond.pooled.as_ref().map(|p| p.to_dtype(dtype)).transpose()?,
        };
        Ok(self.sd.denoise(&noisy.to_dtype(dtype)?, timesteps, &cond, time_ids.as_ref(), &ctx)?)
    }

    fn sample(&self, request: &GenerateRequest, sets: &[Arc<LoraSet>]) -> Result<RgbImage> {
        let sets = sets_for_sampling(sets, self.sd.lora_components().len(), self.device())?;
        Ok(self.sd.generate(request, Some(&sets), &mut |_, _| {})?)
    }

    fn text_encoder_parameter_count(&self) -> usize {
        let clip_params = |c: &lorakit_models::clip::ClipTextConfig, projection: bool| -> usize {
            c.parameter_shapes(projection).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
        };
        match &self.sd.text {
            TextEncoders::Clip { encoder, .. } => clip_params(encoder.config(), false),
            TextEncoders::Sdxl(te) => clip_params(te.te1.config(), false) + clip_params(te.te2.config(), true),
            TextEncoders::Released { .. } => 0,
        }
    }

    fn parameter_counts(&self) -> (usize, usize) {
        let unet: usize =
            self.sd.unet.config().parameter_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let clip_params = |c: &lorakit_models::clip::ClipTextConfig, projection: bool| -> usize {
            c.parameter_shapes(projection).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
        };
        let clip = match &self.sd.text {
            TextEncoders::Clip { encoder, .. } => clip_params(encoder.config(), false),
            TextEncoders::Sdxl(te) => clip_params(te.te1.config(), false) + clip_params(te.te2.config(), true),
            TextEncoders::Released { .. } => 0,
        };
        // The SD autoencoder has 83,653,863 parameters at 512 channels; other widths scale ~quadratically.
        let width = self.sd.vae.config().block_out_channels.last().copied().unwrap_or(512) as f64;
        let vae = (83_653_863.0 * (width / 512.0).powi(2)) as usize;
        (unet + clip + vae, unet)
    }

    fn vae_fingerprint(&self) -> String {
        self.vae_fingerprint.clone()
    }

    fn activation_scale(&self) -> f64 {
        self.sd.unet.config().activation_scale()
    }

    fn latent_factor(&self) -> u32 {
        self.sd.latent_factor() as u32
    }
}
