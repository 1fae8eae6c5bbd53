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
use lorakit_models::sd3_text::{Sd3DropoutRates, Sd3TextOutput, CLIP_LENGTH};
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
    /// The CLIPs' widths, read at load (the encoders may be released once their outputs are
    /// cached): CLIP-L's features and pooled vector, and CLIP-L + CLIP-G's features.
    clip_widths: ClipWidths,
}

/// Where the CLIPs' parts lie in the context and the pooled vector.
#[derive(Clone, Copy, Debug)]
struct ClipWidths {
    l: usize,
    l_pooled: usize,
    lg: usize,
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
        let text = pipe.text_encoders();
        let hidden =
            |m: Option<&lorakit_models::clip::ClipTextModelWithProjection>| m.map_or(0, |m| m.config().hidden_size);
        let clip_widths = ClipWidths {
            l: hidden(text.clip_l()),
            l_pooled: text.clip_l().map_or(0, |m| m.text_projection().frozen().out_features()),
            lg: hidden(text.clip_l()) + hidden(text.clip_g()),
        };
        Ok(Sd3Model { pipe, train, vae_fingerprint, clip_widths })
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

    /// Zeroes each sample's dropped encoders' parts of `cond` (see the module docs): the
    /// conditioning is taken apart into the encoder outputs it was made of and goes through
    /// [`Sd3TextOutput::drop_cached`], sd-scripts' dropout of cached outputs.
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
        let (_, len, width) = cond.context.dims3()?;
        let w = self.clip_widths;
        // Context = [CLIP-L ‖ CLIP-G padded with zeros to T5's width ; T5] (concat_encodings).
        let out = Sd3TextOutput {
            lg_out: Some(cond.context.narrow(1, 0, CLIP_LENGTH)?.narrow(2, 0, w.lg)?),
            t5_out: Some(cond.context.narrow(1, CLIP_LENGTH, len - CLIP_LENGTH)?),
            lg_pooled: Some(pooled.clone()),
            l_attn_mask: None,
            g_attn_mask: None,
            t5_attn_mask: None,
            l_width: w.l,
            l_pooled_width: w.l_pooled,
        };
        let (context, pooled) = out.drop_cached(&drops)?.context_and_pooled_for(width)?;
        Ok(Conditioning { context, pooled: Some(pooled), mask: cond.mask.clone() })
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

    /// Per-encoder dropout zeroes exactly the dropped encoder's part of the context and the
    /// pooled vector — also after the encoders were released (cached outputs), when only the
    /// widths read at load say where the parts lie.
    #[test]
    fn dropout_zeroes_each_encoders_part_after_the_encoders_are_released() {
        use rand::SeedableRng;
        let model_dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/sd3_tiny/pipeline");
        let train = |l: f64, g: f64, t5: f64| Sd3TrainOptions {
            dropout: Sd3DropoutRates { clip_l: l, clip_g: g, t5 },
            pos_emb_random_crop_rate: 0.0,
        };
        let paths = Sd3Paths { model: model_dir, ..Default::default() };
        // The tiny pipeline: CLIP-L and CLIP-G 32 wide with 32-wide projections, T5 64 wide.
        for (rates, l_kept, g_kept, t5_kept) in
            [((1.0, 0.0, 0.0), 0.0, 1.0, 1.0), ((0.0, 1.0, 0.0), 1.0, 0.0, 1.0), ((0.0, 0.0, 1.0), 1.0, 1.0, 0.0)]
        {
            let mut model =
                Sd3Model::load(&paths, &Sd3Options::default(), train(rates.0, rates.1, rates.2), &Device::Cpu).unwrap();
            model.release_text_encoders(&[true, false, false, false]);
            assert!(model.pipeline().text_encoders().clip_l().is_none());
            let cond = Conditioning {
                context: Tensor::ones((1, CLIP_LENGTH + 16, 64), DType::F32, &Device::Cpu).unwrap(),
                pooled: Some(Tensor::ones((1, 64), DType::F32, &Device::Cpu).unwrap()),
                mask: None,
            };
            let out = model.drop_text(&cond, &mut StdRng::seed_from_u64(0)).unwrap();
            let c = out.context.squeeze(0).unwrap();
            let mean = |t: Tensor| t.mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
            assert_eq!(mean(c.narrow(0, 0, CLIP_LENGTH).unwrap().narrow(1, 0, 32).unwrap()), l_kept, "{rates:?}");
            assert_eq!(mean(c.narrow(0, 0, CLIP_LENGTH).unwrap().narrow(1, 32, 32).unwrap()), g_kept, "{rates:?}");
            assert_eq!(mean(c.narrow(0, CLIP_LENGTH, 16).unwrap()), t5_kept, "{rates:?}");
            let p = out.pooled.unwrap().squeeze(0).unwrap();
            assert_eq!(mean(p.narrow(0, 0, 32).unwrap()), l_kept, "{rates:?}");
            assert_eq!(mean(p.narrow(0, 32, 32).unwrap()), g_kept, "{rates:?}");
        }
    }

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
