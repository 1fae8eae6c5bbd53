//! Flux.1 as a [`TrainableModel`]: the transformer (`lora_unet_…`), CLIP-L (`lora_te1_…`) and
//! T5-XXL (`lora_te3_…`) as sd-scripts' `flux_train_network.py` trains them, on the rectified-flow
//! objective. The loop is the same as for the UNet families; what differs lives here and in
//! [`ObjectiveKind::Flow`].

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_models::dit::flux::FluxConfig;
use lorakit_models::flux_pipeline::{FluxConditioning, FluxOptions, FluxPaths, FluxPipeline};
use lorakit_models::pipeline::{GenerateRequest, RgbImage};
use lorakit_nn::lora::LoraSet;
use lorakit_nn::ForwardCtx;
use rand::rngs::StdRng;

use crate::error::{Result, TrainError};
use crate::model::{
    fingerprint_vae, sample_latents, sets_for_sampling, Component, Conditioning, FamilyInfo, OptIn, SizeCondition,
    TrainableModel,
};
use crate::objective::{FlowFamily, ObjectiveKind};

/// Float values the Flux transformer keeps per token and hidden feature for backward, per double
/// block (either stream) and per single block. Fitted to the step benchmark (BENCHMARKS.md, "One
/// Flux LoRA step": full width, 2 double + 4 single blocks, 1024 + 512 tokens, f32: 7.7 GB of
/// activations, i.e. 408 floats per token and feature over the six blocks), split between the
/// block kinds in the proportion counted from `dit::flux`'s graph (40 : 37). That graph is the
/// composed one every GPU runs; on the CPU in f32 `lorakit_nn::dit`'s fused ops keep about 40% of
/// it (3.1 GB in the same benchmark), so CPU estimates err high.
const DOUBLE_BLOCK_FLOATS_PER_FEATURE: f64 = 72.0;
/// See [`DOUBLE_BLOCK_FLOATS_PER_FEATURE`].
const SINGLE_BLOCK_FLOATS_PER_FEATURE: f64 = 66.0;
/// The SD 1.5 UNet's training activations in f32 per latent pixel (`plan.rs`' measured
/// constant), the unit of [`TrainableModel::activation_scale`].
pub(crate) const SD15_ACTIVATION_BYTES_PER_LATENT_PIXEL: f64 = 1.49e6;

/// CLIP-L's and T5-XXL's places in [`TrainableModel::components`] (after the transformer).
const CLIP_L: usize = 1;
/// See [`CLIP_L`].
const T5XXL: usize = 2;

/// A loaded Flux.1 model for training.
pub struct FluxModel {
    pipe: FluxPipeline,
    vae_fingerprint: String,
}

impl FluxModel {
    /// Loads the transformer from `paths.model` and the other parts from `paths` (or the
    /// folder), computing in `dtype`, with the transformer's (and T5's unless `fp8_base_unet`)
    /// linear weights in fp8 when `fp8_base` (sd-scripts' `--fp8_base`).
    pub fn load(paths: &FluxPaths, opts: &FluxOptions, device: &Device) -> Result<Self> {
        let pipe = FluxPipeline::load(paths, opts, device)?;
        let vae_fingerprint = fingerprint_vae(pipe.ae())?;
        Ok(FluxModel { pipe, vae_fingerprint })
    }

    /// The wrapped pipeline.
    pub fn pipeline(&self) -> &FluxPipeline {
        &self.pipe
    }

    /// Drops the text encoders `trained` (one flag per [`TrainableModel::components`] entry)
    /// does not mark once their outputs are cached: both, or T5-XXL alone while CLIP-L trains.
    pub fn release_text_encoders(&mut self, trained: &[bool]) {
        match (trained.get(CLIP_L).copied().unwrap_or(false), trained.get(T5XXL).copied().unwrap_or(false)) {
            (false, false) => self.pipe.release_text_encoders(),
            (true, false) => self.pipe.release_t5(),
            // T5-XXL trains: nothing was cached (check_cacheable refuses it).
            (_, true) => {}
        }
    }

    /// Whether this is a guidance-distilled (dev) model.
    pub fn is_dev(&self) -> bool {
        self.pipe.transformer().config().guidance_embed
    }
}

impl TrainableModel for FluxModel {
    fn info(&self) -> FamilyInfo {
        FamilyInfo {
            base_model_version: "flux1".into(),
            architecture: if self.is_dev() { "flux-1-dev" } else { "flux-1-schnell" }.into(),
            implementation: "https://github.com/black-forest-labs/flux".into(),
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
        ObjectiveKind::Flow(FlowFamily::Flux)
    }

    fn components(&self) -> Vec<Component> {
        self.pipe
            .lora_components()
            .iter()
            .zip(FluxPipeline::lora_prefixes())
            .enumerate()
            .map(|(i, (c, prefix))| Component {
                prefix,
                is_text_encoder: i > 0,
                targets: c.targets.to_vec(),
                // sd-scripts trains T5-XXL only when asked (`train_t5xxl=True`).
                opt_in: (*prefix == lorakit_models::t5::T5_LORA_PREFIX).then_some(OptIn::TrainT5xxl),
            })
            .collect()
    }

    fn encode_images(&self, pixels: &Tensor, rng: &mut StdRng) -> Result<Tensor> {
        sample_latents(self.pipe.ae(), pixels, rng)
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
                "model.clip_skip = {n}: Flux conditions on CLIP-L's pooled output and T5's last layer; sd-scripts has no clip skip for Flux — remove model.clip_skip"
            )));
        }
        let ctx = |i: usize| ctxs.get(i).cloned().unwrap_or_default();
        let cond = self.pipe.encode_prompts(captions, &ctx(1), &ctx(2))?;
        Ok(Conditioning { context: cond.t5, pooled: Some(cond.pooled), mask: cond.mask })
    }

    fn denoise(
        &self,
        noisy: &Tensor,
        timesteps: &Tensor,
        guidance: Option<&Tensor>,
        cond: &Conditioning,
        _sizes: &[SizeCondition],
        ctxs: &[ForwardCtx],
        _rng: &mut StdRng,
    ) -> Result<Tensor> {
        let dtype = self.dtype();
        let b = noisy.dim(0)?;
        let pooled = cond
            .pooled
            .as_ref()
            .ok_or_else(|| TrainError::Other("internal: Flux conditioning without CLIP-L's pooled vector".into()))?;
        // With `apply_t5_attn_mask` the padding mask reaches the transformer's attention too.
        let flux_cond = FluxConditioning {
            t5: cond.context.to_dtype(dtype)?,
            pooled: pooled.to_dtype(dtype)?,
            mask: cond.mask.clone(),
        };
        // sd-scripts passes `timesteps / 1000` (σ); the guidance vector defaults to its 1.0.
        let sigmas = (timesteps.to_dtype(DType::F32)? / 1000.0)?;
        let guidance = match guidance {
            Some(g) => g.to_dtype(DType::F32)?,
            None => Tensor::ones(b, DType::F32, noisy.device())?,
        };
        let ctx = ctxs.first().cloned().unwrap_or_default();
        Ok(self.pipe.predict(&noisy.to_dtype(dtype)?, &sigmas, &flux_cond, &guidance, &ctx)?)
    }

    fn sample(&self, request: &GenerateRequest, sets: &[Arc<LoraSet>]) -> Result<RgbImage> {
        let sets = sets_for_sampling(sets, self.pipe.lora_components().len(), self.device())?;
        Ok(self.pipe.generate(request, Some(&sets), &mut |_, _| {})?)
    }

    fn vae_fingerprint(&self) -> String {
        self.vae_fingerprint.clone()
    }

    fn latent_factor(&self) -> u32 {
        self.pipe.ae().config().downsample_factor() as u32
    }

    fn parameter_counts(&self) -> (usize, usize) {
        let count = |shapes: &[(String, Vec<usize>)]| shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let transformer = self.pipe.transformer();
        let dit = device_parameters(transformer.config(), transformer.host_blocks());
        let ae: usize = count(&self.pipe.ae().config().parameter_shapes());
        let (clip, t5) = self.pipe.text_encoder_parameter_counts();
        (dit + ae + clip + t5, dit)
    }

    fn sample_defaults(&self) -> (u32, f64) {
        // sd-scripts' Flux sampler: 20 steps, no CFG (its `scale` 1.0).
        (20, 1.0)
    }

    fn pixel_step(&self) -> u32 {
        self.pipe.pixels_per_token() as u32
    }

    fn sample_guidance(&self) -> Option<f64> {
        self.is_dev().then_some(3.5)
    }

    fn dit_network(&self) -> Option<FlowFamily> {
        Some(FlowFamily::Flux)
    }

    fn text_encoder_parameter_count(&self) -> usize {
        let (clip, t5) = self.pipe.text_encoder_parameter_counts();
        clip + t5
    }

    /// T5-XXL's outputs are cached unless it trains; CLIP-L may train meanwhile (sd-scripts'
    /// partial caching: `is_partial` when CLIP-L trains).
    fn caches_text_with(&self, trained: &[bool]) -> bool {
        !trained.get(T5XXL).copied().unwrap_or(false)
    }

    /// CLIP-L's pooled vector recomputed (with its LoRA) over cached T5 outputs and mask, as
    /// sd-scripts' training step replaces the cached outputs of the encoders it trains.
    fn encode_text_over_cache(
        &self,
        cached: Conditioning,
        captions: &[&str],
        ctxs: &[ForwardCtx],
        trained: &[bool],
    ) -> Result<Conditioning> {
        if !trained.get(CLIP_L).copied().unwrap_or(false) {
            return Ok(cached);
        }
        let ctx = ctxs.get(CLIP_L).cloned().unwrap_or_default();
        let pooled = self.pipe.encode_pooled(captions, &ctx)?;
        Ok(Conditioning { pooled: Some(pooled), ..cached })
    }

    fn released_text_encoder_parameters(&self, trained: &[bool]) -> usize {
        let (clip, t5) = self.pipe.text_encoder_parameter_counts();
        let flag = |i: usize| trained.get(i).copied().unwrap_or(false);
        if flag(T5XXL) {
            0
        } else if flag(CLIP_L) {
            t5
        } else {
            clip + t5
        }
    }

    fn checkpointing_factor(&self) -> f64 {
        let transformer = self.pipe.transformer();
        // cpu_offload_checkpointing keeps the block inputs in host memory (not on a CPU run).
        let offloaded = transformer.offloads_checkpoints() && !transformer.device().is_cpu();
        flux_checkpointing_factor(transformer.config(), offloaded)
    }

    fn activation_scale(&self) -> f64 {
        flux_activation_scale(self.pipe.transformer().config(), self.pipe.t5_max_length())
    }
}

/// The Flux transformer's training activations relative to SD 1.5's UNet per latent pixel
/// ([`TrainableModel::activation_scale`]) with `t5_tokens` text tokens: image tokens are one per
/// 2×2 latent pixels, text tokens are counted against a 64×64 latent (512 px), the size Flux
/// LoRAs are most often trained at.
pub fn flux_activation_scale(cfg: &FluxConfig, t5_tokens: usize) -> f64 {
    let floats_per_token = cfg.hidden_size as f64
        * (DOUBLE_BLOCK_FLOATS_PER_FEATURE * cfg.depth as f64
            + SINGLE_BLOCK_FLOATS_PER_FEATURE * cfg.depth_single_blocks as f64);
    let tokens_per_latent_pixel = 0.25 + t5_tokens as f64 / (64.0 * 64.0);
    floats_per_token * 4.0 * tokens_per_latent_pixel / SD15_ACTIVATION_BYTES_PER_LATENT_PIXEL
}

/// The share of the activations gradient checkpointing keeps
/// ([`TrainableModel::checkpointing_factor`]): each block's input (`hidden` floats a token per
/// stream) plus two blocks' worth at the peak (a block's forward while the recomputed one's
/// gradients are alive) — the step benchmark's checkpointed run kept 0.35 of the plain run's
/// activations at 6 blocks, as this gives. With the block inputs `offloaded` to host memory
/// (`cpu_offload_checkpointing`), only the two blocks' worth stays on the device.
pub fn flux_checkpointing_factor(cfg: &FluxConfig, offloaded: bool) -> f64 {
    let (double, single) = (cfg.depth as f64, cfg.depth_single_blocks as f64);
    let total = DOUBLE_BLOCK_FLOATS_PER_FEATURE * double + SINGLE_BLOCK_FLOATS_PER_FEATURE * single;
    let inputs = if offloaded { 0.0 } else { double + single };
    let kept = inputs + 2.0 * DOUBLE_BLOCK_FLOATS_PER_FEATURE.max(SINGLE_BLOCK_FLOATS_PER_FEATURE);
    (kept / total).min(1.0)
}

/// The transformer's parameters on the compute device when the last `host_blocks` (double,
/// single) blocks live in host memory: the rest, plus the largest swapped block while it runs.
pub fn device_parameters(cfg: &FluxConfig, host_blocks: (usize, usize)) -> usize {
    let shapes = cfg.parameter_shapes();
    let block_size = |prefix: &str| -> usize {
        shapes.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, s)| s.iter().product::<usize>()).sum()
    };
    let total: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    let (double, single) = host_blocks;
    let double_size = block_size("double_blocks.0.");
    let single_size = block_size("single_blocks.0.");
    let swapped = double * double_size + single * single_size;
    let streaming = match (double, single) {
        (0, 0) => 0,
        (0, _) => single_size,
        (_, 0) => double_size,
        _ => double_size.max(single_size),
    };
    total - swapped + streaming
}
