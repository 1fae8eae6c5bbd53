//! Text-to-image with SD1.x: prompt → CLIP conditioning → sampler over the UNet with
//! classifier-free guidance → VAE decode → RGB pixels. LoRAs are applied on the fly through
//! per-component `LoraSet`s, so one loaded model serves any number of LoRA files (the rows of an
//! XY grid) without reloading or re-merging weights.

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
use crate::unet_2d::{UNet2DConditionModel, UNet2DConditionModelConfig};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::{Error, Result, Weights};

/// A loaded SD1.x/2.x model: the three networks, the tokenizer and the noise schedule.
pub struct StableDiffusion {
    /// The denoiser.
    pub unet: UNet2DConditionModel,
    /// The autoencoder.
    pub vae: AutoencoderKL,
    /// The CLIP text encoder.
    pub text_encoder: ClipTextModel,
    /// The CLIP tokenizer (vocabulary built into the binary).
    pub tokenizer: ClipTokenizer,
    /// The DDPM training schedule the samplers derive their steps from.
    pub schedule: NoiseSchedule,
    /// What the UNet predicts: what the model declares (see
    /// [`SdCheckpoint::declared_prediction`]), else ε; callers may override it (`--v-prediction`).
    pub prediction: Prediction,
    /// What the checkpoint itself says it predicts, and where it says so.
    pub declared_prediction: Option<(Prediction, String)>,
    /// The family the checkpoint was detected as.
    pub family: ModelFamily,
    /// Where it was loaded from.
    pub source: PathBuf,
    unet_targets: Vec<LoraTarget>,
    text_encoder_targets: Vec<LoraTarget>,
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
        let checkpoint = load_sd_checkpoint(path, dtype, device)?;
        Self::from_checkpoint(checkpoint)
    }

    /// Builds the networks from loaded weights (configs from the folder's config.json files;
    /// for single files, SD 1.5's or SD 2.x's by the detected family).
    pub fn from_checkpoint(ckpt: SdCheckpoint) -> Result<Self> {
        let sd2 = ckpt.family == ModelFamily::Sd2;
        let unet_cfg = match ckpt.unet_config.clone() {
            Some(v) => from_config(v, &ckpt.path, "unet")?,
            None if sd2 => UNet2DConditionModelConfig::sd2(),
            None => UNet2DConditionModelConfig::sd15(),
        };
        let vae_cfg = match ckpt.vae_config.clone() {
            Some(v) => from_config(v, &ckpt.path, "vae")?,
            None => AutoencoderKLConfig::sd15(),
        };
        let te_cfg = match ckpt.text_encoder_config.clone() {
            Some(v) => from_config(v, &ckpt.path, "text_encoder")?,
            None if sd2 => ClipTextConfig::sd2(),
            None => ClipTextConfig::sd15(),
        };
        let unet = build(&ckpt.unet, |w| UNet2DConditionModel::new(w.view(""), &unet_cfg))?;
        let vae = build(&ckpt.vae, |w| AutoencoderKL::new(w.view(""), &vae_cfg))?;
        let text_encoder = build(&ckpt.text_encoder, |w| ClipTextModel::new(w.view(""), &te_cfg))?;
        // sd-scripts' targets, then the layers only LyCORIS' presets name (TargetGroup::Named).
        let unet_targets = [unet.lora_targets(), unet.named_targets()].concat();
        let text_encoder_targets = text_encoder.lora_targets();
        Ok(StableDiffusion {
            unet,
            vae,
            text_encoder,
            // SD2's tokenizer pads with "!" (id 0) and treats a literal "!" as that token.
            tokenizer: if sd2 { ClipTokenizer::new_sd2()? } else { ClipTokenizer::new()? },
            schedule: NoiseSchedule::sd_default(),
            prediction: ckpt.declared_prediction.as_ref().map_or(Prediction::Epsilon, |(p, _)| *p),
            declared_prediction: ckpt.declared_prediction,
            family: ckpt.family,
            source: ckpt.path,
            unet_targets,
            text_encoder_targets,
        })
    }

    /// The UNet's LoRA targets.
    pub fn unet_targets(&self) -> &[LoraTarget] {
        &self.unet_targets
    }

    /// The text encoder's LoRA targets.
    pub fn text_encoder_targets(&self) -> &[LoraTarget] {
        &self.text_encoder_targets
    }

    /// The components LoRA files are matched against, in the order [`LoraSets`] holds them.
    pub fn lora_components(&self) -> [ComponentTargets<'_>; 2] {
        [
            ComponentTargets { prefix: UNET_PREFIX, targets: &self.unet_targets },
            ComponentTargets { prefix: TEXT_ENCODER_PREFIX, targets: &self.text_encoder_targets },
        ]
    }

    /// A prompt and its negative as sampling conditions them, A1111 emphasis included
    /// (`(word:1.2)`, `(word)`, `[word]`, `\(` for a literal bracket): see
    /// [`crate::clip::encode_emphasis_pair`]. Returns (prompt, negative), each (1, 77·n, D).
    pub fn encode_prompt_pair(
        &self,
        prompt: &str,
        negative: &str,
        clip_skip: Option<usize>,
        ctx: &ForwardCtx,
    ) -> Result<(Tensor, Tensor)> {
        let parse = |text: &str| {
            lorakit_dataset::prompt_weights::parse_prompt_attention(text)
                .map_err(|e| Error::Invalid(format!("prompt {text:?}: {e}")))
        };
        encode_emphasis_pair(&self.text_encoder, &self.tokenizer, &parse(prompt)?, &parse(negative)?, clip_skip, ctx)
    }

    fn unet_device(&self) -> Device {
        self.unet.device().clone()
    }

    /// Generates one image. `lora` holds the UNet and text-encoder sets to apply (none: the
    /// base model); `on_step(i, n)` reports sampler progress.
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
        let (unet_ctx, te_ctx) = match lora {
            Some(sets) => (ForwardCtx::with_lora(sets.unet.clone()), ForwardCtx::with_lora(sets.text_encoder.clone())),
            None => (ForwardCtx::default(), ForwardCtx::default()),
        };
        let negative = request.negative.as_deref().unwrap_or("");
        let (text, uncond) = self.encode_prompt_pair(&request.prompt, negative, request.clip_skip, &te_ctx)?;
        let cond = Tensor::cat(&[uncond, text], 0)?.to_dtype(dtype)?;

        let (h, w) = (request.height / factor, request.width / factor);
        let mut rng = StdRng::seed_from_u64(request.seed);
        let channels = self.unet.config().in_channels;
        let init = gaussian(&[1, channels, h, w], &mut rng, &device)?.to_dtype(dtype)?;
        let cfg_scale = request.cfg_scale;
        let unet = &self.unet;
        let mut model = |x: &Tensor, t: f64| -> candle_core::Result<Tensor> {
            let x2 = Tensor::cat(&[x, x], 0)?;
            let ts = Tensor::new(&[t as f32, t as f32], x.device())?;
            let out = unet.forward(&x2, &ts, &cond, &unet_ctx)?;
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
        let scaled = (latents.to_dtype(DType::F32)? / self.vae.config().scaling_factor)?;
        let image = self.vae.decode(&scaled.to_dtype(self.vae.dtype())?)?;
        let image = ((image.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
        let (_, _, height, width) = image.dims4()?;
        let hwc = (image.squeeze(0)?.permute((1, 2, 0))? * 255.0)?.round()?.to_dtype(DType::U8)?;
        Ok(RgbImage { width, height, pixels: hwc.flatten_all()?.to_vec1::<u8>()? })
    }
}

/// Parses a diffusers `config.json` value into a config struct, naming the file on failure.
fn from_config<T: serde::de::DeserializeOwned>(value: serde_json::Value, path: &Path, component: &str) -> Result<T> {
    serde_json::from_value(value)
        .map_err(|e| Error::Invalid(format!("{}: {component}/config.json: {e}", path.display())))
}

/// Standard normal noise drawn on the CPU from `rng`, so a seed gives the same image on every
/// device.
fn gaussian(shape: &[usize], rng: &mut StdRng, device: &Device) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)
}

/// The LoRA sets applied to the UNet and the text encoder.
#[derive(Clone)]
pub struct LoraSets {
    /// Modules on UNet layers.
    pub unet: Arc<LoraSet>,
    /// Modules on text-encoder layers.
    pub text_encoder: Arc<LoraSet>,
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
    /// Classifier-free guidance scale.
    pub cfg_scale: f64,
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
        if !self.cfg_scale.is_finite() {
            return Err(Error::Invalid("cfg scale must be a finite number".into()));
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
