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
pub mod flux_model;
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
pub mod schedule;
pub mod sd3_model;
pub mod state;
pub mod tensorboard;
pub mod text_cache;
pub mod time;
pub mod trainer;

use lorakit_models::checkpoint::LinearStorage;
use std::sync::atomic::AtomicBool;

pub use config::TrainConfig;
pub use error::{Result, TrainError};
pub use trainer::{RunSummary, TrainEvent, Trainer};

/// Runs a whole training from a config: loads the dataset and the model, trains, saves.
pub fn train(config: TrainConfig, stop: &AtomicBool, events: &mut dyn FnMut(TrainEvent)) -> Result<RunSummary> {
    train_with_requests(config, stop, None, events)
}

/// [`train`], looking in `requests` after every step for `save-now` / `sample-now` files
/// ([`Trainer::with_requests`]; `lorakit train --requests DIR`).
pub fn train_with_requests(
    config: TrainConfig,
    stop: &AtomicBool,
    requests: Option<std::path::PathBuf>,
    events: &mut dyn FnMut(TrainEvent),
) -> Result<RunSummary> {
    let (data, mut model) = load_inputs(&config, events)?;
    // Cached text-encoder outputs with no sample images to render: the encoders are needed
    // once, so cache first and drop them from memory before training (sd-scripts moves them
    // off the GPU instead).
    if config.caches_text_encoder_outputs() && config.samples.sample_prompts.is_none() {
        text_cache::check_cacheable(&config, &data, model.as_trainable())?;
        let mut report = |done, total| events(TrainEvent::Caching { done, total });
        let cache = text_cache::TextEncoderCache::build(model.as_trainable(), &data, &config, &mut report)?;
        let components = model.as_trainable().components();
        let trained = model::trained_components(&config, &components);
        let partial = model::trains_a_text_encoder(&components, &trained);
        model.release_text_encoders(&trained);
        events(TrainEvent::Note(format!(
            "text-encoder outputs cached for {} distinct captions ({} images' outputs reused from disk); {}",
            cache.len(),
            cache.reused,
            if partial {
                "the frozen text encoders left memory, the trained ones run at every step"
            } else {
                "the text encoders left memory"
            }
        )));
        let trainer = Trainer::new(config, model.as_trainable(), data)?.with_text_cache(cache);
        return requests_to(trainer, requests).run(stop, events);
    }
    let trainer = Trainer::new(config, model.as_trainable(), data)?;
    requests_to(trainer, requests).run(stop, events)
}

fn requests_to(trainer: Trainer<'_>, requests: Option<std::path::PathBuf>) -> Trainer<'_> {
    match requests {
        Some(dir) => trainer.with_requests(dir),
        None => trainer,
    }
}

/// Loads the dataset and the model, sets the run up and makes every check the run makes before
/// training ([`Trainer::preflight`]), without training or writing anything: the plan
/// `lorakit train --dry-run` prints. A config the run would refuse is refused here with the
/// same message.
pub fn dry_run(config: TrainConfig, events: &mut dyn FnMut(TrainEvent)) -> Result<plan::RunPlan> {
    let (data, model) = load_inputs(&config, events)?;
    let mut trainer = Trainer::new(config, model.as_trainable(), data)?;
    // The same checks the run makes before training (Trainer::run starts with them).
    trainer.dry_run_plan()
}

/// The model a run trains: one of the families' [`model::TrainableModel`]s.
pub enum LoadedModel {
    /// SD 1.x, SD 2.x or SDXL.
    StableDiffusion(Box<model::StableDiffusionModel>),
    /// Flux.1 dev or schnell.
    Flux(Box<flux_model::FluxModel>),
    /// SD3 Medium, SD3.5 Medium or SD3.5 Large.
    Sd3(Box<sd3_model::Sd3Model>),
}

impl LoadedModel {
    /// The model behind the training seam.
    pub fn as_trainable(&self) -> &dyn model::TrainableModel {
        match self {
            LoadedModel::StableDiffusion(m) => m.as_ref(),
            LoadedModel::Flux(m) => m.as_ref(),
            LoadedModel::Sd3(m) => m.as_ref(),
        }
    }

    /// Drops the text encoders `trained` (one flag per component) does not mark, once their
    /// outputs are cached.
    pub fn release_text_encoders(&mut self, trained: &[bool]) {
        match self {
            LoadedModel::StableDiffusion(m) => {
                if !model::trains_a_text_encoder(&model::TrainableModel::components(m.as_ref()), trained) {
                    m.release_text_encoders()
                }
            }
            LoadedModel::Flux(m) => m.release_text_encoders(trained),
            LoadedModel::Sd3(m) => m.release_text_encoders(trained),
        }
    }
}

fn load_inputs(config: &TrainConfig, events: &mut dyn FnMut(TrainEvent)) -> Result<(data::TrainData, LoadedModel)> {
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
    let family = lorakit_models::checkpoint::detect_family_at(&model_path)?;
    // Keys only another family reads would change nothing here: refused, not ignored.
    if let Some((key, reason)) = config.foreign_dit_keys(family.config_name()).into_iter().next() {
        return Err(TrainError::Other(format!(
            "{key} is for {reason}; {} is a {family} model — remove it",
            model_path.display()
        )));
    }
    if family == lorakit_models::checkpoint::ModelFamily::Flux {
        return Ok((data, LoadedModel::Flux(Box::new(load_flux(config, &model_path, &device)?))));
    }
    if family == lorakit_models::checkpoint::ModelFamily::Sd3 {
        let model = load_sd3(config, &data, &model_path, &device)?;
        return Ok((data, LoadedModel::Sd3(Box::new(model))));
    }
    let model = model::StableDiffusionModel::load_with_vae(
        &model_path,
        config.model.vae.as_deref(),
        trainer::model_dtype(config),
        &device,
        config.model.v_parameterization,
        model::WeightStorage { no_half_vae: config.accelerate.no_half_vae, fp8_base: config.accelerate.fp8_base },
    )?;
    model.check_family(config.model.model_family.as_deref(), &model_path)?;
    model.check_schedule(config.loss.zero_terminal_snr, &model_path)?;
    Ok((data, LoadedModel::StableDiffusion(Box::new(model))))
}

/// Refuses a config written for another family (`model.model_family` ≠ `family`) and the SD
/// switches a rectified-flow model has no use for; `what` names the model ("a Flux model").
fn check_flow_family(config: &TrainConfig, model_path: &std::path::Path, family: &str, what: &str) -> Result<()> {
    if let Some(stated) = config.model.model_family.as_deref().filter(|f| *f != family) {
        return Err(TrainError::Other(format!(
            "{}: {what}, but the config is for {stated} (model.model_family); use a checkpoint of that family or fix the config",
            model_path.display()
        )));
    }
    for (key, set) in [
        ("model.v2", config.model.v2),
        ("model.v_parameterization", config.model.v_parameterization),
        ("accelerate.no_half_vae", config.accelerate.no_half_vae),
    ] {
        if set {
            return Err(TrainError::Other(format!(
                "{key} does not apply to {what} (a rectified-flow model whose autoencoder always runs in f32); remove it"
            )));
        }
    }
    Ok(())
}

/// A Flux.1 model with the parts and storage the config names (sd-scripts' `--clip_l`,
/// `--t5xxl`, `--ae`, `--fp8_base`, `--fp8_base_unet`).
fn load_flux(
    config: &TrainConfig,
    model_path: &std::path::Path,
    device: &candle_core::Device,
) -> Result<flux_model::FluxModel> {
    check_flow_family(config, model_path, "flux", "a Flux model")?;
    if let Some(vae) = &config.model.vae {
        return Err(TrainError::Other(format!(
            "model.vae = {}: a Flux model's autoencoder is model.ae (BFL's ae.safetensors); model.vae is for SD 1.x, SD 2.x, SDXL and SD3 — use model.ae",
            vae.display()
        )));
    }
    let (transformer_storage, t5_storage) =
        LinearStorage::for_fp8_base(config.accelerate.fp8_base, config.accelerate.fp8_base_unet);
    let paths = lorakit_models::flux_pipeline::FluxPaths {
        model: model_path.to_path_buf(),
        clip_l: config.model.clip_l.clone(),
        t5xxl: config.model.t5xxl.clone(),
        ae: config.model.ae.clone(),
    };
    let opts = lorakit_models::flux_pipeline::FluxOptions {
        dtype: trainer::model_dtype(config),
        transformer_storage,
        t5_storage,
        t5_max_length: config.model.t5xxl_max_token_length,
        apply_t5_attn_mask: config.model.apply_t5_attn_mask,
        blocks_to_swap: config.accelerate.blocks_to_swap.unwrap_or(0),
        offload_checkpoints: config.accelerate.cpu_offload_checkpointing,
    };
    flux_model::FluxModel::load(&paths, &opts, device)
}

/// An SD3 / SD3.5 model with the parts, storage and options the config names (sd-scripts'
/// `--clip_l`, `--clip_g`, `--t5xxl`, `--fp8_base`, `--t5xxl_max_token_length`,
/// `--blocks_to_swap`, the mask, dropout and position-embedding options).
fn load_sd3(
    config: &TrainConfig,
    data: &data::TrainData,
    model_path: &std::path::Path,
    device: &candle_core::Device,
) -> Result<sd3_model::Sd3Model> {
    check_flow_family(config, model_path, "sd3", "an SD3 model")?;
    let m = &config.model;
    // sd-scripts builds the scaled tables from every dataset's resolution.
    let scaled_pos_embed_sizes = m.enable_scaled_pos_embed.then(|| {
        let resolutions: Vec<(usize, usize)> = data
            .datasets
            .iter()
            .map(|d| (d.spec.buckets.resolution.0 as usize, d.spec.buckets.resolution.1 as usize))
            .collect();
        lorakit_models::dit::mmdit::scaled_pos_embed_latent_sizes(&resolutions)
    });
    // fp8_base_unet is Flux-only (refused for SD3 by the key table), so T5 follows fp8_base.
    let (transformer_storage, t5_storage) =
        LinearStorage::for_fp8_base(config.accelerate.fp8_base, config.accelerate.fp8_base_unet);
    let paths = lorakit_models::checkpoint::sd3::Sd3Paths {
        model: model_path.to_path_buf(),
        clip_l: m.clip_l.clone(),
        clip_g: m.clip_g.clone(),
        t5xxl: m.t5xxl.clone(),
        vae: m.vae.clone(),
    };
    let opts = lorakit_models::sd3_pipeline::Sd3Options {
        dtype: trainer::model_dtype(config),
        transformer_storage,
        t5_storage,
        t5_max_length: m.t5xxl_max_token_length,
        apply_lg_attn_mask: m.apply_lg_attn_mask,
        apply_t5_attn_mask: m.apply_t5_attn_mask,
        scaled_pos_embed_sizes,
        blocks_to_swap: config.accelerate.blocks_to_swap.unwrap_or(0),
    };
    let train = sd3_model::Sd3TrainOptions {
        dropout: lorakit_models::sd3_text::Sd3DropoutRates {
            clip_l: m.clip_l_dropout_rate,
            clip_g: m.clip_g_dropout_rate,
            t5: m.t5_dropout_rate,
        },
        pos_emb_random_crop_rate: m.pos_emb_random_crop_rate,
    };
    sd3_model::Sd3Model::load(&paths, &opts, train, device)
}
