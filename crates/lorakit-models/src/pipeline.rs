//! Text-to-image with the UNet families (SD 1.x/2.x, SDXL): prompt → text conditioning
//! ([`TextEncoders`]: one CLIP, or SDXL's two encoders with a pooled vector and size
//! conditioning) → sampler over the UNet with classifier-free guidance → VAE decode → RGB
//! pixels. LoRAs are applied on the fly through per-component `LoraSet`s, so one loaded model
//! serves any number of LoRA files (the rows of an XY grid) without reloading or re-merging
//! weights.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_nn::lora::{LoraSet, LoraTarget};
use lorakit_nn::ForwardCtx;
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::checkpoint::{load_sd_checkpoint, ModelFamily, SdCheckpoint};
use crate::clip::{encode_emphasis_pair, ClipTextConfig, ClipTextModel};
use crate::clip_tokenizer::ClipTokenizer;
use crate::lora_inject::{ComponentTargets, TEXT_ENCODER_PREFIX, UNET_PREFIX};
use crate::samplers::{sample, SamplerConfig, SamplerKind};
use crate::schedule::{NoiseSchedule, Prediction};
use crate::sdxl_text::{SdxlTextEncoders, TE1_LORA_PREFIX, TE2_LORA_PREFIX};
use crate::unet_2d::{AddedConditions, UNet2DConditionModel, UNet2DConditionModelConfig};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::{Error, Result, Weights};

/// The text side of a UNet model: what turns prompts into the UNet's conditioning. The one
/// place the UNet families differ before the denoiser.
pub enum TextEncoders {
    /// SD 1.x/2.x: one CLIP text encoder (LoRA prefix `lora_te`).
    Clip {
        /// The encoder.
        encoder: ClipTextModel,
        /// Its tokenizer (vocabulary built into the binary; SD 2 pads with "!").
        tokenizer: ClipTokenizer,
    },
    /// SDXL: CLIP ViT-L and OpenCLIP ViT-bigG (`lora_te1`, `lora_te2`), context from both
    /// penultimate layers and a pooled vector from the second.
    Sdxl(SdxlTextEncoders),
    /// The encoders were dropped from memory after training cached their outputs
    /// ([`StableDiffusion::release_text_encoders`]); `sdxl` says which pair it was.
    Released {
        /// The released encoders were SDXL's two.
        sdxl: bool,
    },
}

/// A prompt's conditioning for one denoiser call: the cross-attention context and, for SDXL,
/// the pooled vector its size embedding starts from.
#[derive(Clone, Debug)]
pub struct PromptConditioning {
    /// `(B, L, D)`.
    pub context: Tensor,
    /// `(B, P)` (SDXL only).
    pub pooled: Option<Tensor>,
}

/// A loaded UNet model (SD 1.x, 2.x, SDXL): the networks, the tokenizers and the noise schedule.
pub struct StableDiffusion {
    /// The denoiser.
    pub unet: UNet2DConditionModel,
    /// The autoencoder.
    pub vae: AutoencoderKL,
    /// The text encoders with their tokenizers.
    pub text: TextEncoders,
    /// The DDPM training schedule the samplers derive their steps from (rescaled to zero
    /// terminal SNR when the checkpoint says it was trained so).
    pub schedule: NoiseSchedule,
    /// What the UNet predicts: what the model declares (see
    /// [`SdCheckpoint::declared_prediction`]), else ε; callers may override it (`--v-prediction`).
    pub prediction: Prediction,
    /// What the checkpoint itself says it predicts, and where it says so.
    pub declared_prediction: Option<(Prediction, String)>,
    /// The checkpoint declares a zero-terminal-SNR schedule (NoobAI-XL v-pred's `ztsnr` key).
    pub declared_zero_terminal_snr: bool,
    /// The family the checkpoint was detected as.
    pub family: ModelFamily,
    /// Where it was loaded from.
    pub source: PathBuf,
    /// The image side it was trained at, the default of `generate`: a diffusers folder's UNet
    /// `sample_size` × the VAE's factor (as diffusers' pipelines default), else the family's
    /// (512; 1024 for SDXL; an SD 2 file does not say whether it is a 512 or a 768 model).
    pub native_size: usize,
    unet_targets: Vec<LoraTarget>,
    text_encoder_targets: Vec<Vec<LoraTarget>>,
}

/// Builds one network from its weights, failing with every missing or mis-shaped tensor.
fn build<T>(weights: &Weights, f: impl FnOnce(&Weights) -> candle_core::Result<T>) -> Result<T> {
    let model = f(weights)?;
    weights.check_complete()?;
    Ok(model)
}

impl StableDiffusion {
    /// Loads a single-file checkpoint or a diffusers folder.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with_vae(path, None, dtype, device)
    }

    /// [`StableDiffusion::load`] with the VAE taken from `vae` when given (sd-scripts' `--vae`;
    /// see [`SdCheckpoint::replace_vae`]).
    pub fn load_with_vae(path: &Path, vae: Option<&Path>, dtype: DType, device: &Device) -> Result<Self> {
        let mut checkpoint = load_sd_checkpoint(path, dtype, device)?;
        if let Some(vae) = vae {
            checkpoint.replace_vae(vae, device)?;
        }
        Self::from_checkpoint(checkpoint)
    }

    /// Builds the networks from loaded weights (configs from the folder's config.json files;
    /// for single files, the detected family's full-size configs).
    pub fn from_checkpoint(ckpt: SdCheckpoint) -> Result<Self> {
        let (sd2, sdxl) = (ckpt.family == ModelFamily::Sd2, ckpt.family == ModelFamily::Sdxl);
        let unet_cfg = match ckpt.unet_config.clone() {
            Some(v) => from_config(v, &ckpt.path, "unet")?,
            None if sdxl => UNet2DConditionModelConfig::sdxl(),
            None if sd2 => UNet2DConditionModelConfig::sd2(),
            None => UNet2DConditionModelConfig::sd15(),
        };
        let vae_cfg = match ckpt.vae_config.clone() {
            Some(v) => from_config(v, &ckpt.path, "vae")?,
            None if sdxl => AutoencoderKLConfig::sdxl(),
            None => AutoencoderKLConfig::sd15(),
        };
        let native_size = match (&ckpt.unet_config, unet_cfg.sample_size) {
            (Some(_), Some(latent)) => latent * vae_cfg.downsample_factor(),
            _ if sdxl => 1024,
            _ => 512,
        };
        let unet = build(&ckpt.unet, |w| UNet2DConditionModel::new(w.view(""), &unet_cfg))?;
        let vae = build(&ckpt.vae, |w| AutoencoderKL::new(w.view(""), &vae_cfg))?;
        // Each family's encoders with their LoRA targets, in lora_components order.
        let (text, text_encoder_targets) = if sdxl {
            if unet.config().addition_embed_type.as_deref() != Some("text_time") {
                return Err(Error::Invalid(format!(
                    "{}: SDXL text encoders with a U-Net that has no size/crop (text_time) embedding",
                    ckpt.path.display()
                )));
            }
            let te = SdxlTextEncoders::from_checkpoint(&ckpt)?;
            let targets = vec![te.te1_lora_targets(), te.te2_lora_targets()];
            (TextEncoders::Sdxl(te), targets)
        } else {
            let te_cfg = match ckpt.text_encoder_config.clone() {
                Some(v) => from_config(v, &ckpt.path, "text_encoder")?,
                None if sd2 => ClipTextConfig::sd2(),
                None => ClipTextConfig::sd15(),
            };
            let encoder = build(&ckpt.text_encoder, |w| ClipTextModel::new(w.view(""), &te_cfg))?;
            // SD2's tokenizer pads with "!" (id 0) and treats a literal "!" as that token.
            let tokenizer = if sd2 { ClipTokenizer::new_sd2()? } else { ClipTokenizer::new()? };
            let targets = vec![encoder.lora_targets()];
            (TextEncoders::Clip { encoder, tokenizer }, targets)
        };
        // sd-scripts' targets, then the layers only LyCORIS' presets name (TargetGroup::Named);
        // kohya names them in the layout sd-scripts' own U-Net uses for the family (SGM for SDXL).
        let layout = unet.kohya_layout();
        let unet_targets = [unet.lora_targets_in(layout), unet.named_targets_in(layout)].concat();
        let mut schedule = NoiseSchedule::sd_default();
        if ckpt.declared_zero_terminal_snr {
            schedule = schedule.with_zero_terminal_snr();
        }
        Ok(StableDiffusion {
            unet,
            vae,
            text,
            schedule,
            prediction: ckpt.declared_prediction.as_ref().map_or(Prediction::Epsilon, |(p, _)| *p),
            declared_prediction: ckpt.declared_prediction,
            declared_zero_terminal_snr: ckpt.declared_zero_terminal_snr,
            family: ckpt.family,
            source: ckpt.path,
            native_size,
            unet_targets,
            text_encoder_targets,
        })
    }

    /// The UNet's LoRA targets.
    pub fn unet_targets(&self) -> &[LoraTarget] {
        &self.unet_targets
    }

    /// The first (SD 1.x/2.x: the only) CLIP text encoder; `None` once released.
    pub fn clip_text_encoder(&self) -> Option<&ClipTextModel> {
        match &self.text {
            TextEncoders::Clip { encoder, .. } => Some(encoder),
            TextEncoders::Sdxl(te) => Some(&te.te1),
            TextEncoders::Released { .. } => None,
        }
    }

    /// Drops the text encoders from memory (training that cached their outputs and samples
    /// nothing needs them no more). Their LoRA targets stay known; encoding prompts is then an
    /// error.
    pub fn release_text_encoders(&mut self) {
        let sdxl = matches!(self.text, TextEncoders::Sdxl(_) | TextEncoders::Released { sdxl: true });
        self.text = TextEncoders::Released { sdxl };
    }

    /// The LoRA targets of each text encoder, in [`StableDiffusion::lora_components`] order.
    pub fn text_encoder_targets(&self) -> &[Vec<LoraTarget>] {
        &self.text_encoder_targets
    }

    /// The components LoRA files are matched against, in the order [`LoraSets`] holds them:
    /// the UNet, then each text encoder (`lora_te`, or SDXL's `lora_te1`, `lora_te2`).
    pub fn lora_components(&self) -> Vec<ComponentTargets<'_>> {
        let targets = std::iter::once(&self.unet_targets).chain(&self.text_encoder_targets);
        self.lora_prefixes().iter().zip(targets).map(|(p, t)| ComponentTargets { prefix: p, targets: t }).collect()
    }

    /// kohya's module-name prefix of each component, in [`StableDiffusion::lora_components`]
    /// order: `lora_unet`, then `lora_te` (SD 1.x/2.x) or `lora_te1`, `lora_te2` (SDXL).
    pub fn lora_prefixes(&self) -> &'static [&'static str] {
        match &self.text {
            TextEncoders::Clip { .. } | TextEncoders::Released { sdxl: false } => &[UNET_PREFIX, TEXT_ENCODER_PREFIX],
            TextEncoders::Sdxl(_) | TextEncoders::Released { sdxl: true } => {
                &[UNET_PREFIX, TE1_LORA_PREFIX, TE2_LORA_PREFIX]
            }
        }
    }

    /// A prompt and its negative as sd-scripts' sample images condition them, A1111 emphasis
    /// included (`(word:1.2)`, `(word)`, `[word]`, `\(` for a literal bracket): see
    /// [`crate::clip::encode_emphasis_pair`] (SD 1.x/2.x: weights, mean rescale) and
    /// [`SdxlTextEncoders::encode_emphasis_pair`] (SDXL: the training layout, weights, no rescale).
    /// `ctxs` are the text encoders' contexts in [`StableDiffusion::lora_components`] order
    /// (without the UNet's). Returns (prompt, negative), each with batch 1.
    pub fn encode_prompt_pair(
        &self,
        prompt: &str,
        negative: &str,
        clip_skip: Option<usize>,
        ctxs: &[ForwardCtx],
    ) -> Result<(PromptConditioning, PromptConditioning)> {
        let parse = |text: &str| {
            lorakit_dataset::prompt_weights::parse_prompt_attention(text)
                .map_err(|e| Error::Invalid(format!("prompt {text:?}: {e}")))
        };
        let ctx = |i: usize| ctxs.get(i).cloned().unwrap_or_default();
        match &self.text {
            TextEncoders::Clip { encoder, tokenizer } => {
                let (p, n) =
                    encode_emphasis_pair(encoder, tokenizer, &parse(prompt)?, &parse(negative)?, clip_skip, &ctx(0))?;
                Ok((PromptConditioning { context: p, pooled: None }, PromptConditioning { context: n, pooled: None }))
            }
            TextEncoders::Sdxl(te) => {
                if clip_skip.is_some_and(|s| s != 2) {
                    return Err(Error::Invalid(format!(
                        "clip skip {}: SDXL always conditions on the penultimate layer of both encoders (what A1111 calls clip skip 2); leave it unset",
                        clip_skip.unwrap_or(0)
                    )));
                }
                // sd-scripts' sampler encodes at the run's max_token_length; here the fewest
                // 75-token chunks (at most 3) that hold the longer prompt, so nothing short is
                // padded and nothing up to 225 tokens is cut.
                let tokens = |text: &str| -> Result<usize> {
                    Ok(parse(text)?.iter().map(|(t, _)| te.tokenizer1.encode(t).len()).sum())
                };
                let chunks = tokens(prompt)?.max(tokens(negative)?).div_ceil(75).clamp(1, 3);
                let max_token_length = (chunks > 1).then_some(chunks * 75);
                let (p, n) = te.encode_emphasis_pair(prompt, negative, max_token_length, [&ctx(0), &ctx(1)])?;
                Ok((
                    PromptConditioning { context: p.context, pooled: Some(p.pooled) },
                    PromptConditioning { context: n.context, pooled: Some(n.pooled) },
                ))
            }
            TextEncoders::Released { .. } => Err(released()),
        }
    }

    /// One UNet call: the context and, for SDXL, the pooled vector with each sample's size
    /// conditioning `time_ids` (B, 6) (original h, w, crop top, left, target h, w).
    pub fn denoise(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        cond: &PromptConditioning,
        time_ids: Option<&Tensor>,
        ctx: &ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let added = match (&cond.pooled, time_ids) {
            (Some(pooled), Some(ids)) => Some(AddedConditions { text_embeds: pooled.clone(), time_ids: ids.clone() }),
            (Some(_), None) => candle_core::bail!("SDXL's U-Net needs each sample's size conditioning (time_ids)"),
            (None, _) => None,
        };
        self.unet.forward_with(latents, timesteps, &cond.context, added.as_ref(), ctx)
    }

    fn unet_device(&self) -> Device {
        self.unet.device().clone()
    }

    /// Generates one image. `lora` holds one set per component (none: the base model);
    /// `on_step(i, n)` reports sampler progress.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        lora: Option<&LoraSets>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<RgbImage> {
        request.validate()?;
        let factor = self.latent_factor();
        if request.width % factor != 0 || request.height % factor != 0 {
            return Err(Error::Invalid(format!(
                "{}×{} is not usable with this model: width and height must be multiples of {factor} (its VAE's pixels per latent cell)",
                request.width, request.height
            )));
        }
        let device = self.unet_device();
        let dtype = self.unet.dtype();
        let ctxs: Vec<ForwardCtx> = match lora {
            Some(sets) => sets.sets.iter().map(|s| ForwardCtx::with_lora(s.clone())).collect(),
            None => Vec::new(),
        };
        let unet_ctx = ctxs.first().cloned().unwrap_or_default();
        let negative = request.negative.as_deref().unwrap_or("");
        let te_ctxs = if ctxs.is_empty() { &[][..] } else { &ctxs[1..] };
        let (text, uncond) = self.encode_prompt_pair(&request.prompt, negative, request.clip_skip, te_ctxs)?;
        let cond = PromptConditioning {
            context: Tensor::cat(&[uncond.context, text.context], 0)?.to_dtype(dtype)?,
            pooled: match (uncond.pooled, text.pooled) {
                (Some(u), Some(t)) => Some(Tensor::cat(&[u, t], 0)?.to_dtype(dtype)?),
                _ => None,
            },
        };
        // sd-scripts' sampler and diffusers' SDXL pipeline: original = target = the output
        // size, no crop.
        let (hh, ww) = (request.height as f32, request.width as f32);
        let time_ids = Tensor::from_vec(vec![hh, ww, 0.0, 0.0, hh, ww, hh, ww, 0.0, 0.0, hh, ww], (2, 6), &device)?
            .to_dtype(dtype)?;

        let (h, w) = (request.height / factor, request.width / factor);
        let mut rng = StdRng::seed_from_u64(request.seed);
        let channels = self.unet.config().in_channels;
        let init = gaussian(&[1, channels, h, w], &mut rng, &device)?.to_dtype(dtype)?;
        let cfg_scale = request.cfg_scale;
        let mut model = |x: &Tensor, t: f64| -> candle_core::Result<Tensor> {
            let x2 = Tensor::cat(&[x, x], 0)?;
            let ts = Tensor::new(&[t as f32, t as f32], x.device())?;
            let out = self.denoise(&x2, &ts, &cond, Some(&time_ids), &unet_ctx)?;
            let uncond = out.narrow(0, 0, 1)?;
            let text = out.narrow(0, 1, 1)?;
            &uncond + ((text - &uncond)? * cfg_scale)?
        };
        let mut noise = |shape: &candle_core::Shape| -> candle_core::Result<Tensor> {
            gaussian(shape.dims(), &mut rng, &device)?.to_dtype(dtype)
        };
        let sampler = SamplerConfig { kind: request.sampler, steps: request.steps, prediction: self.prediction };
        let latents = sample(&sampler, &self.schedule, &init, &mut model, &mut noise, on_step)?;
        self.decode_to_rgb(&latents)
    }

    /// Pixels per latent cell along each side, from the VAE's config (8 for SD 1.x/2.x/SDXL).
    pub fn latent_factor(&self) -> usize {
        self.vae.config().downsample_factor()
    }

    /// Decodes SD latents (scaled by the VAE's scaling factor) to 8-bit RGB.
    pub fn decode_to_rgb(&self, latents: &Tensor) -> Result<RgbImage> {
        decode_latents_to_rgb(&self.vae, latents)
    }
}

/// Decodes denoiser-space latents (batch 1) with `vae` to 8-bit RGB: every family's last step.
pub(crate) fn decode_latents_to_rgb(vae: &AutoencoderKL, latents: &Tensor) -> Result<RgbImage> {
    let z = vae.from_model_space(&latents.to_dtype(DType::F32)?)?;
    let image = vae.decode(&z.to_dtype(vae.dtype())?)?;
    let image = ((image.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    let (_, _, height, width) = image.dims4()?;
    let hwc = (image.squeeze(0)?.permute((1, 2, 0))? * 255.0)?.round()?.to_dtype(DType::U8)?;
    Ok(RgbImage { width, height, pixels: hwc.flatten_all()?.to_vec1::<u8>()? })
}

/// The error for encoding text after [`StableDiffusion::release_text_encoders`].
pub fn released() -> Error {
    Error::Invalid(
        "the text encoders were released from memory after their outputs were cached; prompts cannot be encoded any more"
            .into(),
    )
}

/// Parses a diffusers `config.json` value into a config struct, naming the file on failure.
fn from_config<T: serde::de::DeserializeOwned>(value: serde_json::Value, path: &Path, component: &str) -> Result<T> {
    serde_json::from_value(value)
        .map_err(|e| Error::Invalid(format!("{}: {component}/config.json: {e}", path.display())))
}

/// Standard normal noise drawn on the CPU from `rng`, so a seed gives the same image on every
/// device.
pub(crate) fn gaussian(shape: &[usize], rng: &mut StdRng, device: &Device) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)
}

/// The LoRA sets applied to each component, in [`StableDiffusion::lora_components`] order
/// (the UNet first, then each text encoder).
#[derive(Clone)]
pub struct LoraSets {
    /// One set per component.
    pub sets: Vec<Arc<LoraSet>>,
}

/// One text-to-image request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// What to draw.
    pub prompt: String,
    /// What to steer away from (the unconditional prompt of CFG); empty when `None`.
    pub negative: Option<String>,
    /// Sampler steps.
    pub steps: usize,
    /// Classifier-free guidance scale (Flux: 1 means none, as in sd-scripts).
    pub cfg_scale: f64,
    /// The embedded guidance of guidance-distilled models (Flux.1-dev; sd-scripts' `--g`,
    /// default 3.5); other models ignore it.
    pub guidance: f64,
    /// Seed of the initial noise (and of ancestral samplers' noise).
    pub seed: u64,
    /// Image width in pixels (multiple of 8).
    pub width: usize,
    /// Image height in pixels (multiple of 8).
    pub height: usize,
    /// The sampler.
    pub sampler: SamplerKind,
    /// CLIP skip (None or 1: last layer; 2: penultimate, as most anime models expect).
    pub clip_skip: Option<usize>,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        GenerateRequest {
            prompt: String::new(),
            negative: None,
            steps: 25,
            cfg_scale: 7.0,
            guidance: 3.5,
            seed: 0,
            width: 512,
            height: 512,
            sampler: SamplerKind::Euler,
            clip_skip: None,
        }
    }
}

impl GenerateRequest {
    /// Rejects sizes the UNet cannot take and meaningless step counts.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [("width", self.width), ("height", self.height)] {
            // The model's own cell size is checked when it generates (8 for SD's VAEs).
            if v == 0 || v % 8 != 0 || v > 4096 {
                return Err(Error::Invalid(format!(
                    "{what} {v} is not usable: it must be a multiple of 8 between 8 and 4096 (the VAE works on 8×8 pixel cells)"
                )));
            }
        }
        if self.steps == 0 || self.steps > 1000 {
            return Err(Error::Invalid(format!("steps {} must be between 1 and 1000", self.steps)));
        }
        if !self.cfg_scale.is_finite() || !self.guidance.is_finite() {
            return Err(Error::Invalid("cfg scale and guidance must be finite numbers".into()));
        }
        if self.clip_skip == Some(0) {
            return Err(Error::Invalid("clip skip counts from 1 (1 = last layer)".into()));
        }
        Ok(())
    }
}

/// An 8-bit RGB image, rows top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width × height × 3` bytes.
    pub pixels: Vec<u8>,
}
