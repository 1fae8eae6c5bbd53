//! SD3 / SD3.5 as a [`TrainableModel`]: the MMDiT (`lora_unet_…`), CLIP-L (`lora_te1_…`),
//! CLIP-G (`lora_te2_…`) and T5-XXL (`lora_te3_…`) as sd-scripts' `sd3_train_network.py` trains
//! them, on the rectified-flow objective ([`FlowFamily::Sd3`]). The loop is the one every family
//! uses; what differs lives here and in the objective.
//!
//! The conditioning is sd-scripts' `concat_encodings`: context = CLIP-L ‖ CLIP-G features padded
//! to T5's width, then T5's tokens (B, 77 + L, 4096); pooled = CLIP-L ‖ CLIP-G pooled (B, 2048).
//! Per-encoder dropout (`clip_l_dropout_rate`, …) zeroes an encoder's part of both for a sample,
//! which is what sd-scripts' `encode_tokens` and `drop_cached_text_encoder_outputs` do to the
//! encoder outputs before `concat_encodings`; it is drawn at each step, whether or not the
//! outputs are cached.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_models::checkpoint::sd3::Sd3Paths;
use lorakit_models::dit::mmdit::{MmditConfig, PosCrop};
use lorakit_models::pipeline::{GenerateRequest, RgbImage};
use lorakit_models::sd3_pipeline::{Sd3Conditioning, Sd3Options, Sd3Pipeline};
use lorakit_models::sd3_text::{Sd3DropoutRates, CLIP_LENGTH};
use lorakit_nn::lora::LoraSet;
use lorakit_nn::ForwardCtx;
use rand::rngs::StdRng;
use rand::Rng;

use crate::error::{Result, TrainError};
use crate::flux_model::SD15_ACTIVATION_BYTES_PER_LATENT_PIXEL;
use crate::model::{
    fingerprint_vae, sample_latents, sets_for_sampling, Component, Conditioning, FamilyInfo, OptIn, SizeCondition,
    TrainableModel,
};
use crate::objective::{FlowFamily, ObjectiveKind};

/// Float values a joint block keeps per token and hidden feature for backward. Not measured for
/// SD3: a joint block is built like a Flux double block (two streams, each with attention
/// projections, a 4× MLP and adaLN modulation, attending jointly), so it takes the Flux double
/// block's fitted figure ([`crate::flux_model`]).
const JOINT_BLOCK_FLOATS_PER_FEATURE: f64 = 72.0;

/// The components' places in [`TrainableModel::components`] (after the transformer).
const CLIP_L: usize = 1;
/// See [`CLIP_L`].
const CLIP_G: usize = 2;
/// See [`CLIP_L`].
const T5XXL: usize = 3;

/// The SD3-only training options the model applies itself.
#[derive(Clone, Debug, Default)]
pub struct Sd3TrainOptions {
    /// `clip_l_dropout_rate`, `clip_g_dropout_rate`, `t5_dropout_rate`.
    pub dropout: Sd3DropoutRates,
    /// `pos_emb_random_crop_rate`.
    pub pos_emb_random_crop_rate: f64,
}

/// A loaded SD3 / SD3.5 model for training.
pub struct Sd3Model {
    pipe: Sd3Pipeline,
    train: Sd3TrainOptions,
    vae_fingerprint: String,
}

impl Sd3Model {
    /// Loads every part from `paths` (see [`Sd3Pipeline::load`]).
    pub fn load(paths: &Sd3Paths, opts: &Sd3Options, train: Sd3TrainOptions, device: &Device) -> Result<Self> {
        train.dropout.validate()?;
        if !(0.0..=1.0).contains(&train.pos_emb_random_crop_rate) {
            return Err(TrainError::Other(format!(
                "model.pos_emb_random_crop_rate = {}: a probability, 0 to 1",
                train.pos_emb_random_crop_rate
            )));
        }
        let pipe = Sd3Pipeline::load(paths, opts, device)?;
        let vae_fingerprint = fingerprint_vae(pipe.vae())?;
        Ok(Sd3Model { pipe, train, vae_fingerprint })
    }

    /// The wrapped pipeline.
    pub fn pipeline(&self) -> &Sd3Pipeline {
        &self.pipe
    }

    /// Drops the text encoders `trained` (one flag per component) does not mark once their
    /// outputs are cached: all three, or T5-XXL alone while a CLIP trains.
    pub fn release_text_encoders(&mut self, trained: &[bool]) {
        let flag = |i: usize| trained.get(i).copied().unwrap_or(false);
        match (flag(CLIP_L) || flag(CLIP_G), flag(T5XXL)) {
            (false, false) => self.pipe.release_text_encoders(),
            (true, false) => self.pipe.release_t5(),
            // T5-XXL trains: nothing was cached (check_cacheable refuses it).
            (_, true) => {}
        }
    }

    /// The widths of CLIP-L's features and pooled vector (the start of each part of the
    /// context and the pooled vector; CLIP-G's follow).
    fn clip_l_widths(&self) -> (usize, usize) {
        let text = self.pipe.text_encoders();
        let l = text.clip_l().map(|m| m.config().hidden_size);
        let pooled = text.clip_l().map(|m| m.text_projection().frozen().out_features());
        (l.unwrap_or(0), pooled.unwrap_or(0))
    }

    /// Zeroes each sample's dropped encoders' parts of `cond` (see the module docs).
    fn drop_text(&self, cond: &Conditioning, rng: &mut StdRng) -> Result<Conditioning> {
        let b = cond.context.dim(0)?;
        let drops = self.train.dropout.draw(b, true, true, &mut || rng.random::<f64>());
        if drops.clip_l.iter().chain(&drops.clip_g).chain(&drops.t5).all(|d| !d) {
            return Ok(cond.clone());
        }
        let pooled = cond
            .pooled
            .as_ref()
            .ok_or_else(|| TrainError::Other("internal: SD3 conditioning without pooled".into()))?;
        let (l_width, l_pooled) = self.clip_l_widths();
        let (_, len, width) = cond.context.dims3()?;
        let pooled_width = pooled.dim(1)?;
        // Per-sample keep masks over (sequence, feature) and pooled features.
        let mut context_keep = vec![1f32; b * len * width];
        let mut pooled_keep = vec![1f32; b * pooled_width];
        let clip_rows = CLIP_LENGTH.min(len);
        for i in 0..b {
            let mut zero = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
                for r in rows {
                    let start = (i * len + r) * width;
                    context_keep[start + cols.start..start + cols.end].iter_mut().for_each(|v| *v = 0.0);
                }
            };
            if drops.clip_l[i] {
                zero(0..clip_rows, 0..l_width.min(width));
            }
            if drops.clip_g[i] {
                // CLIP-G's features follow CLIP-L's up to their combined width; the padding
                // beyond is zeros already.
                zero(0..clip_rows, l_width.min(width)..width);
            }
            if drops.t5[i] {
                zero(clip_rows..len, 0..width);
            }
            let row = &mut pooled_keep[i * pooled_width..(i + 1) * pooled_width];
            if drops.clip_l[i] {
                row[..l_pooled.min(pooled_width)].iter_mut().for_each(|v| *v = 0.0);
            }
            if drops.clip_g[i] {
                row[l_pooled.min(pooled_width)..].iter_mut().for_each(|v| *v = 0.0);
            }
        }
        let device = cond.context.device();
        let context_keep = Tensor::from_vec(context_keep, (b, len, width), device)?.to_dtype(cond.context.dtype())?;
        let pooled_keep = Tensor::from_vec(pooled_keep, (b, pooled_width), device)?.to_dtype(pooled.dtype())?;
        Ok(Conditioning {
            context: (&cond.context * context_keep)?,
            pooled: Some((pooled * pooled_keep)?),
            mask: cond.mask.clone(),
        })
    }
}

impl TrainableModel for Sd3Model {
    fn info(&self) -> FamilyInfo {
        // sd-scripts' names: `ss_base_model_version` is the MMDiT's `model_type` ("medium",
        // "5-large", "5-medium"), the architecture "stable-diffusion-3-" + it.
        let version = match self.pipe.transformer().config().model_type() {
            "sd35l" => "5-large",
            "sd35m" => "5-medium",
            _ => "medium",
        };
        FamilyInfo {
            base_model_version: version.into(),
            architecture: format!("stable-diffusion-3-{version}"),
            implementation: "https://github.com/Stability-AI/generative-models".into(),
            v2: false,
            default_resolution: (1024, 1024),
        }
    }

    fn device(&self) -> &Device {
        self.pipe.transformer().device()
    }

    fn dtype(&self) -> DType {
        self.pipe.transformer().dtype()
    }

    fn objective(&self) -> ObjectiveKind {
        ObjectiveKind::Flow(FlowFamily::Sd3)
    }

    fn components(&self) -> Vec<Component> {
        self.pipe
            .lora_components()
            .iter()
            .zip(Sd3Pipeline::lora_prefixes())
            .enumerate()
            .map(|(i, (c, prefix))| Component {
                prefix,
                is_text_encoder: i > 0,
                targets: c.targets.to_vec(),
                // sd-scripts trains T5-XXL only when asked (`train_t5xxl=True`).
                opt_in: (i == T5XXL).then_some(OptIn::TrainT5xxl),
            })
            .collect()
    }

    fn encode_images(&self, pixels: &Tensor, rng: &mut StdRng) -> Result<Tensor> {
        // Noise drawn on the host, as for every family: the same latents on any device.
        sample_latents(self.pipe.vae(), pixels, rng)
    }

    fn encode_text(
        &self,
        captions: &[&str],
        _max_token_length: usize,
        clip_skip: Option<usize>,
        ctxs: &[ForwardCtx],
    ) -> Result<Conditioning> {
        if let Some(n) = clip_skip {
            return Err(TrainError::Other(format!(
                "model.clip_skip = {n}: SD3 conditions on both CLIPs' penultimate layers and T5's last; sd-scripts has no clip skip for SD3 — remove model.clip_skip"
            )));
        }
        let ctx = |i: usize| ctxs.get(i).cloned().unwrap_or_default();
        let (l, g, t) = (ctx(CLIP_L), ctx(CLIP_G), ctx(T5XXL));
        let out = self.pipe.encode_text(captions, [&l, &g, &t], None)?;
        let Sd3Conditioning { context, pooled } = self.pipe.conditioning(&out)?;
        Ok(Conditioning { context, pooled: Some(pooled), mask: None })
    }

    fn denoise(
        &self,
        noisy: &Tensor,
        timesteps: &Tensor,
        _guidance: Option<&Tensor>,
        cond: &Conditioning,
        _sizes: &[SizeCondition],
        ctxs: &[ForwardCtx],
        rng: &mut StdRng,
    ) -> Result<Tensor> {
        let cond = self.drop_text(cond, rng)?;
        let pos_crop = PosCrop::draw(self.train.pos_emb_random_crop_rate, rng);
        let pooled = cond
            .pooled
            .ok_or_else(|| TrainError::Other("internal: SD3 conditioning without the pooled vector".into()))?;
        let ctx = ctxs.first().cloned().unwrap_or_default();
        let cond = Sd3Conditioning { context: cond.context, pooled };
        // sd-scripts passes the integer timesteps (0..1000) to the MMDiT as they are.
        Ok(self.pipe.predict(noisy, timesteps, &cond, pos_crop, &ctx)?)
    }

    fn sample(&self, request: &GenerateRequest, sets: &[Arc<LoraSet>]) -> Result<RgbImage> {
        let sets = sets_for_sampling(sets, self.pipe.lora_components().len(), self.device())?;
        Ok(self.pipe.generate(request, Some(&sets), &mut |_, _| {})?)
    }

    fn vae_fingerprint(&self) -> String {
        self.vae_fingerprint.clone()
    }

    fn latent_factor(&self) -> u32 {
        self.pipe.vae().config().downsample_factor() as u32
    }

    fn parameter_counts(&self) -> (usize, usize) {
        let count = |shapes: &[(String, Vec<usize>)]| shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let transformer = self.pipe.transformer();
        let dit = sd3_device_parameters(transformer.config(), transformer.host_blocks());
        let vae: usize = count(&self.pipe.vae().config().parameter_shapes());
        let text: usize = self.pipe.text_encoder_parameter_counts().iter().sum();
        (dit + vae + text, dit)
    }

    fn sample_defaults(&self) -> (u32, f64) {
        // sd-scripts' SD3 sampler: 30 steps, CFG 7.5 (`sample_image_inference`).
        (30, 7.5)
    }

    fn pixel_step(&self) -> u32 {
        self.pipe.pixel_step() as u32
    }

    fn dit_network(&self) -> Option<FlowFamily> {
        Some(FlowFamily::Sd3)
    }

    fn text_encoder_parameter_count(&self) -> usize {
        self.pipe.text_encoder_parameter_counts().iter().sum()
    }

    /// T5-XXL's outputs are cached unless it trains; the CLIPs may train meanwhile (sd-scripts'
    /// partial caching).
    fn caches_text_with(&self, trained: &[bool]) -> bool {
        !trained.get(T5XXL).copied().unwrap_or(false)
    }

    /// The CLIPs' part of the context and the pooled vector recomputed (with their LoRA) over
    /// cached T5 outputs, as sd-scripts' training step replaces the cached outputs of the
    /// encoders it trains.
    fn encode_text_over_cache(
        &self,
        cached: Conditioning,
        captions: &[&str],
        ctxs: &[ForwardCtx],
        trained: &[bool],
    ) -> Result<Conditioning> {
        let flag = |i: usize| trained.get(i).copied().unwrap_or(false);
        if !flag(CLIP_L) && !flag(CLIP_G) {
            return Ok(cached);
        }
        let ctx = |i: usize| ctxs.get(i).cloned().unwrap_or_default();
        let (l, g, t) = (ctx(CLIP_L), ctx(CLIP_G), ForwardCtx::default());
        let tokens = self.pipe.text_encoders().tokenize(captions)?;
        let opts = self.pipe.text_encoders().options();
        // T5 was released after caching (only the CLIPs run).
        let mut out =
            self.pipe.text_encoders().encode_tokens(&tokens, [&l, &g, &t], opts.apply_lg_attn_mask, false, None)?;
        // T5's rows come from the cache: the context after the CLIPs' 77 rows.
        let (_, len, _) = cached.context.dims3()?;
        out.t5_out = Some(cached.context.narrow(1, CLIP_LENGTH, len - CLIP_LENGTH)?);
        let Sd3Conditioning { context, pooled } = self.pipe.conditioning(&out)?;
        Ok(Conditioning { context, pooled: Some(pooled), mask: cached.mask })
    }

    fn released_text_encoder_parameters(&self, trained: &[bool]) -> usize {
        let [l, g, t5] = self.pipe.text_encoder_parameter_counts();
        let flag = |i: usize| trained.get(i).copied().unwrap_or(false);
        if flag(T5XXL) {
            0
        } else if flag(CLIP_L) || flag(CLIP_G) {
            t5
        } else {
            l + g + t5
        }
    }

    fn checkpointing_factor(&self) -> f64 {
        sd3_checkpointing_factor(self.pipe.transformer().config())
    }

    fn activation_scale(&self) -> f64 {
        sd3_activation_scale(self.pipe.transformer().config(), self.pipe.text_encoders().options().t5_max_length)
    }
}

/// The share of the activations gradient checkpointing keeps
/// ([`TrainableModel::checkpointing_factor`]): each joint block's input plus two blocks' worth at
/// the peak, as for Flux ([`crate::flux_model::flux_checkpointing_factor`]).
pub fn sd3_checkpointing_factor(cfg: &MmditConfig) -> f64 {
    let depth = cfg.depth as f64;
    ((depth + 2.0 * JOINT_BLOCK_FLOATS_PER_FEATURE) / (JOINT_BLOCK_FLOATS_PER_FEATURE * depth)).min(1.0)
}

/// The MMDiT's training activations relative to SD 1.5's UNet per latent pixel
/// ([`TrainableModel::activation_scale`]) with `t5_tokens` T5 tokens (plus CLIP's 77): image
/// tokens are one per 2×2 latent pixels, text tokens are counted against a 128×128 latent
/// (1024 px, SD3's training size).
pub fn sd3_activation_scale(cfg: &MmditConfig, t5_tokens: usize) -> f64 {
    let floats_per_token = cfg.hidden_size as f64 * JOINT_BLOCK_FLOATS_PER_FEATURE * cfg.depth as f64;
    let patch_area = (cfg.patch_size * cfg.patch_size) as f64;
    let tokens_per_latent_pixel = 1.0 / patch_area + (CLIP_LENGTH + t5_tokens) as f64 / (128.0 * 128.0);
    floats_per_token * 4.0 * tokens_per_latent_pixel / SD15_ACTIVATION_BYTES_PER_LATENT_PIXEL
}

/// The MMDiT's parameters on the compute device when its last `host_blocks` joint blocks live in
/// host memory (`blocks_to_swap`): the rest, plus the largest swapped block while it runs (as
/// [`crate::flux_model::device_parameters`] for Flux). Blocks differ in size: SD3.5 Medium's
/// first ones have a second attention, the last one's context side is pre-only.
pub fn sd3_device_parameters(cfg: &MmditConfig, host_blocks: usize) -> usize {
    let shapes = cfg.parameter_shapes();
    let size = |(_, s): &(String, Vec<usize>)| s.iter().product::<usize>();
    let total: usize = shapes.iter().map(size).sum();
    let swapped: Vec<usize> = (cfg.depth.saturating_sub(host_blocks)..cfg.depth)
        .map(|i| {
            let prefix = format!("joint_blocks.{i}.");
            shapes.iter().filter(|(k, _)| k.starts_with(&prefix)).map(size).sum()
        })
        .collect();
    total - swapped.iter().sum::<usize>() + swapped.iter().copied().max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swapped_blocks_leave_the_device_but_the_largest_one_streams_in() {
        let cfg = MmditConfig::sd35_large();
        let count = |shapes: &[(String, Vec<usize>)]| shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let total: usize = count(&cfg.parameter_shapes());
        assert_eq!(sd3_device_parameters(&cfg, 0), total);
        let block = |cfg: &MmditConfig, i: usize| -> usize {
            let prefix = format!("joint_blocks.{i}.");
            cfg.parameter_shapes()
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, s)| s.iter().product::<usize>())
                .sum()
        };
        // SD3.5 Large's blocks are alike but for the last (pre-only): 10 swapped take 9 full
        // blocks and the last one off the device, and one full block streams back in.
        assert!(block(&cfg, 37) < block(&cfg, 36) && block(&cfg, 0) == block(&cfg, 36));
        assert_eq!(sd3_device_parameters(&cfg, 10), total - 8 * block(&cfg, 0) - block(&cfg, 37));
        assert_eq!(sd3_device_parameters(&cfg, 1), total);
        // SD3.5 Medium: blocks 0–12 carry a second attention; with 22 swapped (sd-scripts' most),
        // blocks 2–23 leave and one with the second attention streams in.
        let medium = MmditConfig::sd35_medium();
        let all: usize = count(&medium.parameter_shapes());
        assert!(block(&medium, 12) > block(&medium, 13));
        let away: usize = (2..24).map(|i| block(&medium, i)).sum();
        assert_eq!(sd3_device_parameters(&medium, 22), all - away + block(&medium, 2));
    }
}
