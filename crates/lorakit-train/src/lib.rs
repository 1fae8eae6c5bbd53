//! The LoRA training run: a TOML config → dataset batches → latents and text conditioning →
//! noise, UNet with LoRA, loss, backward, optimizer → kohya-compatible LoRA files, resumable
//! state, sample images and logs.
//!
//! - [`config`] — the TOML config, defaults, `--set` overrides, validation.
//! - [`presets`] — commented starting configs (`lorakit config new`).
//! - [`data`] — dataset → images, captions, buckets, the batches of each epoch.
//! - [`latents`] — VAE encoding, in memory or cached on disk.
//! - [`model`] — the trait a model family implements to be trained ([`model::TrainableModel`]).
//! - [`objective`] — the training objective (DDPM, rectified flow) the family picks: noise
//!   levels, noisy input, target, preconditioning and loss weighting.
//! - [`trainer`] — the loop.
//! - [`mod@state`] — save and resume.
//! - [`metadata`] — `ss_*` and `modelspec.*` keys.
//! - [`samples`] and [`sample_prompts`] — preview images.
//! - [`tensorboard`] and [`run_log`] — logs.

pub mod block_weights;
pub mod cache_file;
pub mod config;
pub mod data;
pub mod error;
pub mod kohya_import;
pub mod latents;
pub mod loss;
pub mod metadata;
pub mod model;
pub mod noise;
pub mod objective;
pub mod param_groups;
pub mod plan;
pub mod presets;
pub mod run_log;
pub mod sample_prompts;
pub mod samples;
pub mod state;
pub mod tensorboard;
pub mod text_cache;
pub mod time;
pub mod trainer;

use std::sync::atomic::AtomicBool;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use trainer::{RunSummary, TrainEvent, Trainer};

/// Runs a whole training from a config: loads the dataset and the model, trains, saves.
pub fn train(config: TrainConfig, stop: &AtomicBool, events: &mut dyn FnMut(TrainEvent)) -> Result<RunSummary> {
    let (data, mut model) = load_inputs(&config, events)?;
    // Cached text-encoder outputs with no sample images to render: the encoders are needed
    // once, so cache first and drop them from memory before training (sd-scripts moves them
    // off the GPU instead).
    if config.caches_text_encoder_outputs() && config.samples.sample_prompts.is_none() {
        text_cache::check_cacheable(&config, &data)?;
        let mut report = |done, total| events(TrainEvent::Caching { done, total });
        let cache = text_cache::TextEncoderCache::build(&model, &data, &config, &mut report)?;
        model.release_text_encoders();
        events(TrainEvent::Note(format!(
            "text-encoder outputs cached for {} distinct captions ({} images' outputs reused from disk); the text encoders left memory",
            cache.len(),
            cache.reused
        )));
        let trainer = Trainer::new(config, &model, data)?.with_text_cache(cache);
        return trainer.run(stop, events);
    }
    let trainer = Trainer::new(config, &model, data)?;
    trainer.run(stop, events)
}

/// Loads the dataset and the model, sets the run up and makes every check the run makes before
/// training ([`Trainer::preflight`]), without training or writing anything: the plan
/// `lorakit train --dry-run` prints. A config the run would refuse is refused here with the
/// same message.
pub fn dry_run(config: TrainConfig, events: &mut dyn FnMut(TrainEvent)) -> Result<plan::RunPlan> {
    let (data, model) = load_inputs(&config, events)?;
    let mut trainer = Trainer::new(config, &model, data)?;
    // The same checks the run makes before training (Trainer::run starts with them).
    trainer.dry_run_plan()
}

fn load_inputs(
    config: &TrainConfig,
    events: &mut dyn FnMut(TrainEvent),
) -> Result<(data::TrainData, model::StableDiffusionModel)> {
    let model_path = config.model.pretrained_model_name_or_path.clone().ok_or_else(|| {
        TrainError::Other(
            "no base model: set model.pretrained_model_name_or_path to an SD 1.5, SD 2.x or SDXL checkpoint (.safetensors) or diffusers folder"
                .into(),
        )
    })?;
    if !model_path.exists() {
        return Err(TrainError::Other(format!(
            "model.pretrained_model_name_or_path = {}: no such file or folder",
            model_path.display()
        )));
    }
    let data = data::TrainData::load(config)?;
    for note in &data.notes {
        events(TrainEvent::Note(note.clone()));
    }
    let device = trainer::device_for(config)?;
    if device.is_cpu() && config.accelerate.mixed_precision == "bf16" {
        return Err(TrainError::Other(
            "accelerate.mixed_precision = \"bf16\" needs a GPU: candle has no bf16 matrix multiply on the CPU. \
             Use \"no\" (f32) on the CPU, or accelerate.device = \"cuda\""
                .into(),
        ));
    }
    let model = model::StableDiffusionModel::load_with(
        &model_path,
        trainer::model_dtype(config),
        &device,
        config.model.v_parameterization,
        model::WeightStorage { no_half_vae: config.accelerate.no_half_vae, fp8_base: config.accelerate.fp8_base },
    )?;
    model.check_family(config.model.model_family.as_deref(), &model_path)?;
    model.check_schedule(config.loss.zero_terminal_snr, &model_path)?;
    Ok((data, model))
}
