//! The training loop: epochs of batches → latents and conditioning → noise and timesteps →
//! denoiser with LoRA → loss → backward → (accumulate) → clip → optimizer and scheduler →
//! logs, saves, samples. One loop for every model family ([`TrainableModel`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use lorakit_dataset::caption_process::{process_caption, CaptionMoment};
use lorakit_dataset::preprocess::{ColorAug, Crop};
use lorakit_dataset::steps::StepPlan;
use lorakit_lora::blocks::BlockLayout;
use lorakit_lora::safetensors_file::{write_lora, Precision};
use lorakit_models::lora_inject::{create_network, DitNetworkArgs, ModuleDims, NetworkSpec};
use lorakit_nn::lora::{apply_max_norm, LoraDropout, LoraSet};
use lorakit_nn::lr_scheduler::{warmup_steps_from, LrScheduler, SchedulerKind, SchedulerParams};
use lorakit_nn::optim::{
    clip_grad_norm, prodigy_lr_warnings, AdafactorSetup, Optimizer, OptimizerArgs, OptimizerKind, ParamGroup,
};
use lorakit_nn::ForwardCtx;
use rand::Rng;

use crate::block_weights::block_plan;
use crate::config::TrainConfig;
use crate::data::{rng_for, stream, Batch, TrainData};
use crate::error::{Result, TrainError};
use crate::latents::{alpha_masks, encode_batch, LatentCache, SampleAugment};
use crate::metadata::{RunMetadata, SaveProgress};
use crate::model::{SizeCondition, TrainableModel};
use crate::objective::{FlowFamily, Objective};
use crate::param_groups::{plan_groups, ComponentNetwork, GroupRates};
use crate::plan::{
    available_memory, check_memory, config_warnings, estimate_memory, planned_parameters, MemoryInputs, RunPlan,
};
use crate::run_log::RunLog;
use crate::samples::SampleRunner;
use crate::state::{
    check_network_settings, clean_stale_state_folders, load_network_tensors, load_state, network_settings, save_state,
    LoadedState, ProgressState, STATE_FORMAT,
};
use crate::tensorboard::TensorBoardWriter;
use crate::text_cache::TextEncoderCache;
use crate::time::{compact_timestamp, unix_seconds};

/// What the run reports as it goes (the CLI draws progress bars from these).
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// The plan is known.
    Planned {
        /// Optimizer steps in total.
        total_steps: u64,
        /// Epochs.
        epochs: u64,
        /// Batches per epoch.
        batches_per_epoch: u64,
        /// Trainable parameters.
        parameters: usize,
        /// Where the run continues from (0 for a fresh run).
        start_step: u64,
    },
    /// Latent caching progress.
    Caching {
        /// Images done.
        done: usize,
        /// Images in all.
        total: usize,
    },
    /// One optimizer step finished.
    Step {
        /// Steps done.
        step: u64,
        /// Total steps.
        total: u64,
        /// Current epoch (1-based).
        epoch: u64,
        /// This step's loss.
        loss: f64,
        /// Moving average loss.
        average_loss: f64,
        /// Learning rate of the first group.
        lr: f64,
    },
    /// A file was written.
    Saved(PathBuf),
    /// A sample image was written.
    Sampled(PathBuf),
    /// A note for the user.
    Note(String),
}

/// What a finished (or interrupted) run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The final LoRA file (None when interrupted).
    pub final_lora: Option<PathBuf>,
    /// Every LoRA file written.
    pub saved: Vec<PathBuf>,
    /// State folder written on interruption.
    pub interrupted_state: Option<PathBuf>,
    /// Optimizer steps done.
    pub steps: u64,
    /// Loss of every optimizer step, in order.
    pub losses: Vec<f64>,
    /// The run's log folder.
    pub log_dir: PathBuf,
}

/// What [`Trainer::preflight`] checked and the run goes on with: the resumed state (already
/// applied to the network and optimizer) and the sample prompts.
pub struct Preflight {
    /// The state `save.resume` names, validated and applied.
    resumed: Option<LoadedState>,
    /// The sample prompt file, read and checked.
    samples: Option<SampleRunner>,
}

/// Where a run starts ([`Trainer::run`]'s resume phase).
struct StartPosition {
    global_step: u64,
    /// The epoch (0-based) training continues in, and the batches of it already done.
    start_epoch: u64,
    skip_batches: u64,
    loss_window: Vec<f64>,
    epoch_losses: Vec<f64>,
    scaler: Option<LossScaler>,
}

/// fp16 dynamic loss scaling (as torch's GradScaler: start 2^16, halve on overflow, double
/// after 2000 clean steps).
#[derive(Debug, Clone, Copy)]
struct LossScaler {
    scale: f64,
    good_steps: u64,
}

impl LossScaler {
    fn update(&mut self, overflow: bool) {
        if overflow {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        } else {
            self.good_steps += 1;
            if self.good_steps >= 2000 {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        }
    }
}

/// The dtype the frozen model runs in.
pub fn model_dtype(config: &TrainConfig) -> DType {
    match config.accelerate.mixed_precision.as_str() {
        "fp16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    }
}

/// The dtype of the trained LoRA weights: f32 master weights unless `full_fp16` / `full_bf16`.
pub fn lora_dtype(config: &TrainConfig) -> DType {
    if config.accelerate.full_fp16 {
        DType::F16
    } else if config.accelerate.full_bf16 {
        DType::BF16
    } else {
        DType::F32
    }
}

/// The device the config asks for.
pub fn device_for(config: &TrainConfig) -> Result<Device> {
    match config.accelerate.device.as_str() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| {
            TrainError::Other(format!("accelerate.device = \"cuda\": {e} (build lorakit with `--features cuda`)"))
        }),
        "metal" => Device::new_metal(0).map_err(|e| {
            TrainError::Other(format!("accelerate.device = \"metal\": {e} (build lorakit with `--features metal`)"))
        }),
        other => Err(TrainError::Other(format!("unknown device {other:?}"))),
    }
}

fn save_precision(config: &TrainConfig) -> Precision {
    match config.save.save_precision.as_str() {
        "fp16" => Precision::F16,
        "bf16" => Precision::BF16,
        _ => Precision::F32,
    }
}

/// One training run, set up and ready to go.
pub struct Trainer<'m> {
    config: TrainConfig,
    model: &'m dyn TrainableModel,
    data: TrainData,
    /// LoRA sets per model component (None: that component is not trained).
    sets: Vec<Option<Arc<LoraSet>>>,
    /// The component index of each parameter of each optimizer group.
    group_components: Vec<Vec<usize>>,
    optimizer: Box<dyn Optimizer>,
    scheduler: LrScheduler,
    plan: StepPlan,
    warmup_steps: u64,
    metadata: RunMetadata,
    /// The training objective (DDPM or rectified flow, with the config's options).
    objective: Objective,
    /// Notices about the setup, shown when the run starts.
    setup_notes: Vec<String>,
    optimizer_kind: OptimizerKind,
    /// Text-encoder outputs cached before the trainer was built (the encoders then released).
    text_cache: Option<TextEncoderCache>,
    /// A folder looked at after every step for `save-now` / `sample-now` request files
    /// (`lorakit train --requests`, what `lorakit gui`'s Save now / Sample now write).
    requests: Option<PathBuf>,
}

/// The request files [`Trainer::with_requests`]' folder may hold.
pub const SAVE_NOW_REQUEST: &str = "save-now";
/// See [`SAVE_NOW_REQUEST`].
pub const SAMPLE_NOW_REQUEST: &str = "sample-now";

impl<'m> Trainer<'m> {
    /// Builds the network, optimizer, scheduler and metadata for `config` on `model`.
    pub fn new(mut config: TrainConfig, model: &'m dyn TrainableModel, data: TrainData) -> Result<Self> {
        if config.training.weighted_captions {
            // A weight sd-scripts cannot read stops its run at that caption; stop before starting.
            for image in &data.images {
                lorakit_dataset::prompt_weights::parse_prompt_attention(&image.caption)
                    .map_err(|e| TrainError::Other(format!("{}: {e}", image.path.display())))?;
            }
        }
        // Every bucket must be a whole number of the denoiser's cells (Flux: 16-pixel steps).
        let step = model.pixel_step().max(1);
        if let Some(image) = data.images.iter().find(|i| i.choice.bucket.0 % step != 0 || i.choice.bucket.1 % step != 0)
        {
            let (w, h) = image.choice.bucket;
            return Err(TrainError::Other(format!(
                "{}: bucket {w}×{h} is not a multiple of {step} pixels on each side, which this model needs; use a dataset.resolution and dataset.bucket_reso_steps that are multiples of {step}",
                image.path.display()
            )));
        }
        let device = model.device().clone();
        let components = model.components();
        let b = config.block_args();
        let has_block_args = [b.down_lr_weight, b.mid_lr_weight, b.up_lr_weight, b.block_dims, b.block_alphas]
            .into_iter()
            .chain([b.conv_block_dims, b.conv_block_alphas])
            .any(|a| a.is_some());
        match model.dit_network() {
            Some(FlowFamily::Flux) if has_block_args => return Err(TrainError::Other(
                "network.block_dims / block_alphas / *_lr_weight are U-Net block arguments; a Flux transformer's modules are chosen with network.train_blocks, the *_dim type ranks and train_double_block_indices / train_single_block_indices — remove them".into(),
            )),
            Some(FlowFamily::Sd3) if has_block_args => return Err(TrainError::Other(
                "network.block_dims / block_alphas / *_lr_weight are U-Net block arguments; an SD3 transformer's modules are chosen with the context_*_dim / x_*_dim type ranks, emb_dims and train_block_indices — remove them".into(),
            )),
            _ => {}
        }
        let layout = BlockLayout::detect(
            components
                .iter()
                .filter(|c| !c.is_text_encoder)
                .flat_map(|c| c.targets.iter().map(move |t| t.kohya_name(c.prefix)))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        );
        let n = &config.network;
        let kind = lorakit_models::lora_inject::NetworkKind::from_config(
            &n.network_module,
            n.algo.as_deref(),
            n.preset.as_deref(),
            lorakit_nn::lycoris::LokrOptions {
                factor: n.factor,
                decompose_both: n.decompose_both,
                full_matrix: n.full_matrix,
            },
        )
        .map_err(TrainError::Other)?;
        // LyCORIS' conv_alpha defaults to network_alpha (sd-scripts' LoCon: 1).
        let conv_alpha = n.conv_alpha.unwrap_or(if n.is_lycoris() { n.network_alpha } else { 1.0 });
        let blocks = block_plan(
            layout,
            &config.block_args(),
            config.network.network_dim,
            config.network.network_alpha,
            config.network.conv_dim,
            conv_alpha,
        )
        .map_err(TrainError::Other)?;
        let mut setup_notes = blocks.notes.clone();
        let spec = NetworkSpec {
            kind,
            rank: config.network.network_dim,
            alpha: config.network.network_alpha,
            conv_rank: config.network.conv_dim,
            conv_alpha,
            dropout: LoraDropout {
                neuron: config.network.network_dropout.unwrap_or(0.0),
                rank: config.network.rank_dropout.unwrap_or(0.0),
                module: config.network.module_dropout.unwrap_or(0.0),
            },
            block_ranks: None,
            dit: None,
            module_dims: module_dims_from_weights(&config)?,
        };
        // A DiT's module choice shapes its transformer's network; other families refuse it.
        let network_error = |e: String| TrainError::Other(format!("network.{e}"));
        let flux_args = config.flux_network_args().map_err(network_error)?;
        let sd3_args = config.network.sd3_args().map_err(network_error)?;
        let dit_args = match model.dit_network() {
            Some(FlowFamily::Flux) => Some(DitNetworkArgs::Flux(flux_args)),
            Some(FlowFamily::Sd3) => Some(DitNetworkArgs::Sd3(sd3_args)),
            None if !flux_args.is_default() || !sd3_args.is_default() || config.network.train_t5xxl => {
                return Err(TrainError::Other(format!(
                    "network.train_blocks / *_dim / in_dims / emb_dims / train_*block_indices / split_qkv / train_t5xxl are Flux and SD3 network arguments; this is a {} model — remove them",
                    model.info().base_model_version
                )))
            }
            None => None,
        };
        // The spec of each component, `None` when it is not trained. Block ranks shape the U-Net
        // only; text encoders always use network_dim.
        let component_specs: Vec<Option<NetworkSpec>> = components
            .iter()
            .zip(crate::model::trained_components(&config, &components))
            .map(|(c, trained)| match (trained, c.is_text_encoder) {
                (false, _) => None,
                (true, true) => Some(spec.clone()),
                (true, false) => {
                    Some(NetworkSpec { block_ranks: blocks.ranks.clone(), dit: dit_args.clone(), ..spec.clone() })
                }
            })
            .collect();
        let component_specs = match &spec.module_dims {
            Some(dims) => only_components_in_file(&components, component_specs, dims, &config)?,
            None => component_specs,
        };
        let trained = || components.iter().zip(&component_specs).filter_map(|(c, s)| s.as_ref().map(|s| (c, s)));
        // A rank above a layer's dimensions is refused by module name before any estimate.
        for (c, spec) in trained() {
            lorakit_models::lora_inject::check_ranks(&c.targets, c.prefix, spec)?;
        }
        // The memory estimate from shapes alone, checked before the network, its optimizer state
        // or any activation is allocated.
        let planned_trainable: usize = trained().map(|(c, spec)| planned_parameters(&c.targets, c.prefix, spec)).sum();
        if device.is_cpu() {
            // The optimizer is checked by name further down; the estimate takes AdamW until then.
            let optimizer = OptimizerKind::parse(&config.optimizer.optimizer_type).unwrap_or(OptimizerKind::AdamW);
            let memory = memory_estimate(&config, model, &data, planned_trainable, optimizer);
            check_memory(&memory, available_memory()).map_err(TrainError::Other)?;
        }
        let mut sets = Vec::new();
        for (i, (component, spec)) in components.iter().zip(&component_specs).enumerate() {
            let Some(spec) = spec else {
                sets.push(None);
                continue;
            };
            // Each component's modules get their own init stream so adding a component never
            // changes another's initial weights.
            let seed = rng_for(&[config.training.seed, 100 + i as u64]).random::<u64>();
            let set = create_network(&component.targets, component.prefix, spec, lora_dtype(&config), &device, seed)?;
            set.set_multiplier(config.network.network_multiplier);
            sets.push(Some(Arc::new(set)));
        }
        debug_assert_eq!(
            planned_trainable,
            sets.iter().flatten().flat_map(|s| s.trainable_vars()).map(|v| v.elem_count()).sum::<usize>(),
            "the memory check's parameter count is what create_network made"
        );
        let networks: Vec<ComponentNetwork> = sets
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref().map(|set| ComponentNetwork {
                    component: i,
                    is_text_encoder: components[i].is_text_encoder,
                    set,
                })
            })
            .collect();
        let n = &config.network;
        let planned = plan_groups(
            &networks,
            &GroupRates {
                text_encoder_lrs: config.text_encoder_lrs(),
                unet_lr: config.unet_lr(),
                text_encoder_plus_ratio: n.loraplus_text_encoder_lr_ratio.or(n.loraplus_lr_ratio),
                unet_plus_ratio: n.loraplus_unet_lr_ratio.or(n.loraplus_lr_ratio),
                block_lr_weights: blocks.lr_weights.clone().map(|w| (layout, w)),
            },
        );
        if planned.is_empty() {
            return Err(TrainError::Other(
                "nothing to train: the network has no trainable modules, or every learning rate is 0".into(),
            ));
        }
        let groups: Vec<ParamGroup> = planned.iter().map(|p| p.group.clone()).collect();
        let group_components: Vec<Vec<usize>> = planned.into_iter().map(|p| p.components).collect();

        if let Some(weights) = &config.network.network_weights {
            let tensors = candle_core::safetensors::load(weights, &device)
                .map_err(|e| TrainError::Other(format!("network.network_weights = {}: {e}", weights.display())))?;
            let live: Vec<Arc<LoraSet>> = sets.iter().flatten().cloned().collect();
            let tensors = crate::state::split_fused_parts(&live, tensors, weights)?;
            let missing = load_network_tensors(&live, &tensors, false, weights)?;
            if !missing.is_empty() {
                tracing::warn!("{} module tensors were not in {}; they start fresh", missing.len(), weights.display());
            }
        }

        let optimizer_kind = OptimizerKind::parse(&config.optimizer.optimizer_type)
            .map_err(|e| TrainError::Other(format!("optimizer.optimizer_type: {e}")))?;
        let mut args = OptimizerArgs::parse(&config.optimizer.optimizer_args)
            .map_err(|e| TrainError::Other(format!("optimizer.optimizer_args: {e}")))?;
        let mut groups = groups;
        if optimizer_kind == OptimizerKind::Adafactor {
            // sd-scripts' Adafactor rules: relative_step by default, one lr for every group, the
            // adafactor scheduler.
            let setup = AdafactorSetup::resolve(
                &args,
                config.optimizer.learning_rate,
                &config.optimizer.lr_scheduler,
                config.training.max_grad_norm,
            )
            .map_err(|e| TrainError::Other(format!("optimizer (Adafactor): {e}")))?;
            if let Some(lr) = setup.group_lr {
                for g in groups.iter_mut() {
                    g.lr = lr;
                }
            }
            config.optimizer.lr_scheduler = setup.lr_scheduler.clone();
            setup_notes.extend(setup.notices.iter().map(|n| {
                if n.is_warning() {
                    format!("warning: {n}")
                } else {
                    n.to_string()
                }
            }));
            args = setup.args;
        }
        let optimizer = optimizer_kind
            .build(groups, &args)
            .map_err(|e| TrainError::Other(format!("optimizer ({}): {e}", optimizer_kind.name())))?;
        if matches!(optimizer_kind, OptimizerKind::Prodigy | OptimizerKind::ProdigyPlusScheduleFree) {
            setup_notes.extend(prodigy_lr_warnings(optimizer.groups()).into_iter().map(|w| format!("warning: {w}")));
        }
        if optimizer.is_schedule_free() && config.optimizer.lr_scheduler != "constant" {
            setup_notes.push(format!(
                "optimizer.lr_scheduler = {:?} is ignored: {} schedules the learning rate itself (as in sd-scripts)",
                config.optimizer.lr_scheduler,
                optimizer_kind.name()
            ));
        }

        let plan = StepPlan::try_new(data.batches_per_epoch(), config.step_request())
            .map_err(|e| TrainError::Other(format!("training.{e}")))?;
        if plan.max_train_steps == 0 {
            return Err(TrainError::Dataset("the run has zero steps (no batches in an epoch)".into()));
        }
        let warmup_steps = warmup_steps_from(config.optimizer.lr_warmup_steps, plan.max_train_steps);
        setup_notes.extend(
            config_warnings(&config, plan.max_train_steps, warmup_steps).into_iter().map(|w| format!("warning: {w}")),
        );
        let kind = SchedulerKind::parse(&config.optimizer.lr_scheduler)
            .map_err(|e| TrainError::Other(format!("optimizer.lr_scheduler: {e}")))?;
        let scheduler = LrScheduler::new(
            kind,
            SchedulerParams {
                warmup_steps,
                total_steps: plan.max_train_steps,
                num_cycles: config.optimizer.lr_scheduler_num_cycles,
                power: config.optimizer.lr_scheduler_power,
                base_lr: config.optimizer.learning_rate,
                decay_steps: warmup_steps_from(config.optimizer.lr_decay_steps, plan.max_train_steps),
                timescale: config.optimizer.lr_scheduler_timescale,
                min_lr_ratio: config.optimizer.lr_scheduler_min_lr_ratio,
                args: lorakit_nn::optim::parse_optimizer_args(&config.optimizer.lr_scheduler_args)
                    .map_err(|e| TrainError::Other(format!("optimizer.lr_scheduler_args: {e}")))?,
            },
        )
        .map_err(|e| TrainError::Other(format!("optimizer.lr_scheduler: {e}")))?;

        let session_id = rng_for(&[unix_seconds().to_bits()]).random::<u32>();
        let metadata = RunMetadata::new(
            &config,
            &data,
            &model.info(),
            session_id,
            unix_seconds(),
            plan.max_train_steps,
            plan.epochs,
            warmup_steps,
            &OptimizerKind::description_as_named(&config.optimizer.optimizer_type, &optimizer.description()),
            spec.module_dims.as_deref(),
        );
        let (objective, objective_notes) = Objective::new(model.objective(), &config)?;
        setup_notes.extend(objective_notes);
        Ok(Trainer {
            config,
            model,
            data,
            sets,
            group_components,
            optimizer,
            scheduler,
            plan,
            warmup_steps,
            metadata,
            objective,
            setup_notes,
            optimizer_kind,
            text_cache: None,
            requests: None,
        })
    }

    /// Looks in `dir` after every step for a `save-now` file (save the LoRA — and the state
    /// with `save.save_state` — as a step save does) and a `sample-now` file (render the sample
    /// prompts), each removed when taken. How a running job is asked from outside (the GUI).
    pub fn with_requests(mut self, dir: PathBuf) -> Self {
        self.requests = Some(dir);
        self
    }

    /// Whether the request file `name` was there (it is removed: one request, one action).
    fn take_request(&self, name: &str) -> bool {
        let Some(dir) = &self.requests else { return false };
        std::fs::remove_file(dir.join(name)).is_ok()
    }

    /// Trains from text-encoder outputs cached before the trainer was built (see
    /// [`crate::train`]: the encoders can then leave memory first).
    pub fn with_text_cache(mut self, cache: TextEncoderCache) -> Self {
        self.text_cache = Some(cache);
        self
    }

    /// The planned length.
    pub fn plan(&self) -> StepPlan {
        self.plan
    }

    /// What the run will do: data, length, groups, LR curve, memory estimate and warnings
    /// (`lorakit train --dry-run`).
    pub fn run_plan(&self) -> RunPlan {
        let total = self.plan.max_train_steps;
        let mut points: Vec<u64> = vec![1, self.warmup_steps + 1, total / 4, total / 2, 3 * total / 4, total];
        points.retain(|s| *s >= 1 && *s <= total);
        points.sort_unstable();
        points.dedup();
        let schedule_free = self.optimizer.is_schedule_free();
        let lr_points =
            points.iter().map(|&s| (s, if schedule_free { 1.0 } else { self.scheduler.factor(s - 1) })).collect();
        let groups: Vec<(String, f64, usize)> = self
            .optimizer
            .groups()
            .iter()
            .map(|g| (g.name.clone(), g.lr, g.vars.iter().map(|v| v.elem_count()).sum()))
            .collect();
        let memory = memory_estimate(
            &self.config,
            self.model,
            &self.data,
            groups.iter().map(|g| g.2).sum(),
            self.optimizer_kind,
        );
        RunPlan {
            images: self.data.num_train_images(),
            reg_images: self.data.num_reg_images(),
            validation_images: self.data.num_validation_images(),
            batches_per_epoch: self.plan.batches_per_epoch,
            gradient_accumulation_steps: self.plan.gradient_accumulation_steps,
            steps: total,
            epochs: self.plan.epochs,
            warmup_steps: self.warmup_steps,
            optimizer: OptimizerKind::description_as_named(
                &self.config.optimizer.optimizer_type,
                &self.optimizer.description(),
            ),
            groups,
            lr_points,
            memory,
            notes: self.setup_notes.clone(),
        }
    }

    /// Warmup steps resolved from the config.
    pub fn warmup_steps(&self) -> u64 {
        self.warmup_steps
    }

    /// Creates the output folder and removes what interrupted saves left there and in its
    /// `sample` folder: hidden temporary state folders (a previous state left by a crash between
    /// renames is restored) and temporary LoRA/PNG files (`fs_atomic`'s, of exited processes).
    fn prepare_output_dir(&self, events: &mut dyn FnMut(TrainEvent)) -> Result<()> {
        let out = &self.config.folders.output_dir;
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
        for note in clean_stale_state_folders(out)? {
            events(TrainEvent::Note(note));
        }
        for dir in [out.clone(), out.join("sample")] {
            if !dir.is_dir() {
                continue;
            }
            let removed =
                lorakit_dataset::fs_atomic::clean_stale_temp_files(&dir).map_err(|e| TrainError::io(&dir, e))?;
            for path in removed {
                events(TrainEvent::Note(format!("removed {}, left by an interrupted write", path.display())));
            }
        }
        Ok(())
    }

    fn live_sets(&self) -> Vec<Arc<LoraSet>> {
        self.sets.iter().flatten().cloned().collect()
    }

    /// Sets for sampling: one per component (empty sets for untrained ones).
    fn sample_sets(&self) -> Result<Vec<Arc<LoraSet>>> {
        self.sets
            .iter()
            .map(|s| match s {
                Some(s) => Ok(s.clone()),
                None => Ok(Arc::new(LoraSet::new(0, self.model.device())?)),
            })
            .collect()
    }

    fn lora_path(&self, suffix: &str) -> PathBuf {
        self.config.folders.output_dir.join(format!("{}{suffix}.safetensors", self.config.folders.output_name))
    }

    fn state_dir(&self, suffix: &str) -> PathBuf {
        self.config.folders.output_dir.join(format!("{}{suffix}-state", self.config.folders.output_name))
    }

    /// Writes a LoRA file (atomically) with metadata for `progress`.
    /// Writes the LoRA file at the optimizer's evaluation point (schedule-free optimizers keep
    /// it apart from the training point, as sd-scripts' `optimizer.eval()` before saving).
    fn save_lora(&mut self, path: &Path, progress: SaveProgress) -> Result<()> {
        self.optimizer.set_train_mode(false)?;
        let live = self.live_sets();
        let refs: Vec<&LoraSet> = live.iter().map(|s| s.as_ref()).collect();
        let written = lorakit_models::lora_inject::state_dict(&refs).map_err(TrainError::from).and_then(|tensors| {
            write_lora(path, &tensors, &self.metadata.for_save(progress), save_precision(&self.config))
                .map_err(TrainError::from)
        });
        self.optimizer.set_train_mode(true)?;
        written.map(|_| ())
    }

    /// Renders sample images at the optimizer's evaluation point (see [`Trainer::save_lora`]).
    fn render_samples(&mut self, runner: &mut SampleRunner, tag: crate::samples::SampleTag) -> Result<Vec<PathBuf>> {
        self.optimizer.set_train_mode(false)?;
        let rendered = self.sample_sets().and_then(|sets| runner.run(self.model, &sets, tag));
        self.optimizer.set_train_mode(true)?;
        rendered
    }

    /// Every check the run makes before it trains, with nothing written: output names and
    /// folders, the resumed state (read, checked against the config and applied to the network
    /// and optimizer), the sample prompts, `clip_skip` against the text encoder, and every image
    /// decoded. `--dry-run` runs exactly this, so it refuses whatever the run would refuse, with
    /// the same message. [`Trainer::run`] calls it first.
    pub fn preflight(&mut self) -> Result<Preflight> {
        check_output_paths(&self.config)?;
        let resumed = match self.config.save.resume.clone() {
            Some(resume) => Some(self.load_resume(&resume)?),
            None => None,
        };
        let samples = match &self.config.samples.sample_prompts {
            Some(path) => Some(SampleRunner::new(&self.config, path, self.model)?),
            None => None,
        };
        // With outputs cached up front the encoders may be gone; caching already encoded with
        // this clip_skip.
        if let Some(skip) = self.config.model.clip_skip.filter(|_| self.text_cache.is_none()) {
            // The text encoder itself says which values it can take (its layer count).
            let ctxs: Vec<ForwardCtx> = self.model.components().iter().map(|_| ForwardCtx::default()).collect();
            self.model.encode_text(&[""], self.config.training.max_token_length, Some(skip), &ctxs).map_err(|e| {
                // The first line is the reason (candle may append a backtrace).
                let reason = e.to_string();
                TrainError::Other(format!("model.clip_skip = {skip}: {}", reason.lines().next().unwrap_or("")))
            })?;
        }
        if self.config.caches_text_encoder_outputs() {
            crate::text_cache::check_cacheable(&self.config, &self.data, self.model)?;
        }
        crate::latents::check_images_decode(&self.data)?;
        Ok(Preflight { resumed, samples })
    }

    /// Reads the state `save.resume` names, checks it against this run (network settings,
    /// progress against the plan, every tensor's name and shape) and applies it to the network
    /// and the optimizer.
    fn load_resume(&mut self, resume: &Path) -> Result<LoadedState> {
        let state = load_state(resume, self.model.device())?;
        let err = |message: String| TrainError::Resume { path: resume.to_path_buf(), message };
        let p = &state.progress;
        if !p.network_settings.is_empty() {
            check_network_settings(&p.network_settings, &network_settings(&self.config)).map_err(err)?;
        }
        if p.global_step >= self.plan.max_train_steps {
            return Err(err(format!(
                "the state is at step {} but the run has only {} steps: raise max_train_epochs/max_train_steps to train further",
                p.global_step, self.plan.max_train_steps
            )));
        }
        if p.epoch >= self.plan.epochs {
            return Err(err(format!(
                "the state continues in epoch {} but the run has only {} epochs: raise training.max_train_epochs to train further",
                p.epoch + 1,
                self.plan.epochs
            )));
        }
        load_network_tensors(&self.live_sets(), &state.network, true, resume)?;
        self.optimizer
            .load_state(&state.optimizer)
            .map_err(|e| err(format!("optimizer state: {e} (was it saved with another optimizer_type?)")))?;
        Ok(state)
    }

    /// Where the run starts: the resumed state's position, loss history and loss scale (with
    /// notes on what differs from the interrupted run), or the beginning.
    fn start_position(&self, resumed: Option<&LoadedState>, events: &mut dyn FnMut(TrainEvent)) -> StartPosition {
        let mut start = StartPosition {
            global_step: 0,
            start_epoch: 0,
            skip_batches: 0,
            loss_window: Vec::new(),
            epoch_losses: Vec::new(),
            scaler: (self.model.dtype() == DType::F16).then_some(LossScaler { scale: 65536.0, good_steps: 0 }),
        };
        let Some(state) = resumed else { return start };
        for note in self.resume_notes(state) {
            events(TrainEvent::Note(note));
        }
        let p = &state.progress;
        start.global_step = p.global_step;
        start.start_epoch = p.epoch;
        start.skip_batches = p.next_batch;
        start.loss_window = p.loss_window.clone();
        start.epoch_losses = p.epoch_losses.clone();
        if let (Some(s), Some((scale, good))) = (start.scaler.as_mut(), p.loss_scale) {
            s.scale = scale;
            s.good_steps = good;
        }
        start
    }

    /// What resuming from `state` means: where it continues, from which folder (the previous
    /// state when a save was interrupted between its renames), and whether the data order
    /// differs from the interrupted run's.
    fn resume_notes(&self, state: &LoadedState) -> Vec<String> {
        let config = &self.config;
        let p = &state.progress;
        let requested = config.save.resume.as_deref().unwrap_or(&state.dir);
        let mut notes = Vec::new();
        if state.dir != requested {
            notes.push(format!(
                "{} is missing (a save was interrupted between its renames): resuming from the previous state, {}",
                requested.display(),
                state.dir.display()
            ));
        }
        if p.seed != config.training.seed || p.batches_per_epoch != self.plan.batches_per_epoch {
            notes.push(format!(
                "the state was saved with seed {} and {} batches per epoch; this config has seed {} and {}: the data order differs from the interrupted run",
                p.seed, p.batches_per_epoch, config.training.seed, self.plan.batches_per_epoch
            ));
        }
        notes.push(format!(
            "resuming from {} at step {} (epoch {}, batch {})",
            requested.display(),
            p.global_step,
            p.epoch + 1,
            p.next_batch
        ));
        notes
    }

    /// `--dry-run`: [`Trainer::preflight`] (every check the run makes before training), then
    /// the plan, with what resuming would do among its notes.
    pub fn dry_run_plan(&mut self) -> Result<RunPlan> {
        let preflight = self.preflight()?;
        let mut plan = self.run_plan();
        if let Some(state) = &preflight.resumed {
            plan.notes.extend(self.resume_notes(state));
        }
        Ok(plan)
    }

    /// The setup notes and the plan (`Planned`), as the run starts at `start_step`.
    fn announce(&self, start_step: u64, events: &mut dyn FnMut(TrainEvent)) {
        let config = &self.config;
        for note in &self.setup_notes {
            events(TrainEvent::Note(note.clone()));
        }
        if config.loss.zero_terminal_snr && !config.model.v_parameterization {
            events(TrainEvent::Note(
                "loss.zero_terminal_snr without model.v_parameterization: an ε-prediction model cannot predict at the last timestep (sd-scripts warns the same)".into(),
            ));
        }
        let parameters: usize =
            self.optimizer.groups().iter().flat_map(|g| g.vars.iter()).map(|v| v.elem_count()).sum();
        events(TrainEvent::Planned {
            total_steps: self.plan.max_train_steps,
            epochs: self.plan.epochs,
            batches_per_epoch: self.plan.batches_per_epoch,
            parameters,
            start_step,
        });
    }

    /// The run's log folder `<logging_dir>/<prefix><timestamp>/`, with TensorBoard under the
    /// tracker name and the JSONL/CSV log.
    fn open_logs(&self) -> Result<(PathBuf, Option<TensorBoardWriter>, RunLog)> {
        let config = &self.config;
        let log_root = config.folders.logging_dir.clone().unwrap_or_else(|| config.folders.output_dir.join("logs"));
        let log_dir =
            log_root.join(format!("{}{}", config.logging.log_prefix.clone().unwrap_or_default(), compact_timestamp()));
        let tensorboard = if config.logging.log_with == "tensorboard" {
            let dir = log_dir.join(&config.logging.log_tracker_name);
            Some(TensorBoardWriter::create(&dir).map_err(|e| TrainError::io(&dir, e))?)
        } else {
            None
        };
        let run_log = RunLog::create(&log_dir, false).map_err(|e| TrainError::io(&log_dir, e))?;
        Ok((log_dir, tensorboard, run_log))
    }

    /// The latent cache (`training.cache_latents`), built or reused from disk.
    fn cache_latents(&self, events: &mut dyn FnMut(TrainEvent)) -> Result<Option<LatentCache>> {
        if !self.config.training.cache_latents {
            return Ok(None);
        }
        let mut report = |done, total| events(TrainEvent::Caching { done, total });
        let cache =
            LatentCache::build(self.model, &self.data, self.config.training.cache_latents_to_disk, &mut report)?;
        if cache.reused > 0 {
            events(TrainEvent::Note(format!("{} latents reused from the disk cache", cache.reused)));
        }
        Ok(Some(cache))
    }

    /// The text-encoder output cache (`training.cache_text_encoder_outputs`), built or reused
    /// from disk.
    fn cache_text_encoder_outputs(&mut self, events: &mut dyn FnMut(TrainEvent)) -> Result<Option<TextEncoderCache>> {
        if let Some(cache) = self.text_cache.take() {
            return Ok(Some(cache));
        }
        if !self.config.caches_text_encoder_outputs() {
            return Ok(None);
        }
        let mut report = |done, total| events(TrainEvent::Caching { done, total });
        let cache = TextEncoderCache::build(self.model, &self.data, &self.config, &mut report)?;
        events(TrainEvent::Note(format!(
            "text-encoder outputs cached for {} distinct captions ({} images' outputs reused from disk)",
            cache.len(),
            cache.reused
        )));
        Ok(Some(cache))
    }

    /// Runs training to the end, an error, or `stop` (Ctrl-C: saves a state and returns).
    /// Phases: [`Trainer::preflight`] (every check, nothing written) → output folder (stale
    /// temporary state folders cleaned) → resume position → logs → latent cache → samples
    /// before training → epochs (steps, saves, samples) → final save.
    pub fn run(mut self, stop: &AtomicBool, events: &mut dyn FnMut(TrainEvent)) -> Result<RunSummary> {
        let preflight = self.preflight()?;
        let config = self.config.clone();
        self.prepare_output_dir(events)?;

        let StartPosition { mut global_step, start_epoch, skip_batches, mut loss_window, mut epoch_losses, mut scaler } =
            self.start_position(preflight.resumed.as_ref(), events);
        self.announce(global_step, events);
        let (log_dir, mut tensorboard, mut run_log) = self.open_logs()?;
        let cache = Caches { latents: self.cache_latents(events)?, text: self.cache_text_encoder_outputs(events)? };

        let mut samples = preflight.samples;
        if let Some(s) = samples.as_mut() {
            if config.samples.sample_at_first && global_step == 0 {
                for path in self.render_samples(s, crate::samples::SampleTag::Step(0))? {
                    events(TrainEvent::Sampled(path));
                }
            }
        }

        let ga = config.training.gradient_accumulation_steps.max(1);
        let total_steps = self.plan.max_train_steps;
        let mut saved = Vec::new();
        let mut losses = Vec::new();
        let mut accumulated: Vec<Vec<Option<Tensor>>> = Vec::new();
        let mut micro_in_step = 0u64;
        let mut step_loss_sum = 0.0f64;

        let mut finished = false;
        for epoch in start_epoch..self.plan.epochs {
            let batches = self.data.epoch_batches(config.training.seed, epoch);
            let last_batch = batches.len() as u64 - 1;
            if epoch != start_epoch || skip_batches == 0 {
                epoch_losses.clear();
            }
            for (bi, batch) in batches.iter().enumerate() {
                let bi = bi as u64;
                if epoch == start_epoch && bi < skip_batches {
                    continue;
                }
                let loss =
                    self.micro_step(batch, &cache, epoch, global_step, micro_in_step, ga, scaler, &mut accumulated)?;
                if !loss.is_finite() {
                    return Err(TrainError::NonFinite(format!(
                        "the loss became {loss} at step {} (epoch {}). Training stopped; the files saved so far are intact. \
                         Likely causes: {}; a learning rate too high for this network (try lower optimizer.learning_rate or a warmup).",
                        global_step + 1,
                        epoch + 1,
                        if self.model.dtype() == DType::F16 {
                            "fp16 overflow (use accelerate.mixed_precision = \"bf16\" or \"no\")"
                        } else {
                            "a corrupt image or latent"
                        }
                    )));
                }
                // sd-scripts' moving-average window: one slot per batch of the epoch.
                if (bi as usize) < loss_window.len() {
                    loss_window[bi as usize] = loss;
                } else {
                    loss_window.push(loss);
                }
                epoch_losses.push(loss);
                step_loss_sum += loss;
                micro_in_step += 1;
                if micro_in_step < ga && bi != last_batch {
                    continue;
                }

                // Optimizer step.
                // Schedule-free optimizers get their base lrs (sd-scripts' dummy scheduler).
                let factor = if self.optimizer.is_schedule_free() { 1.0 } else { self.scheduler.factor(global_step) };
                let lrs: Vec<f64> = self.optimizer.groups().iter().map(|g| g.lr * factor).collect();
                let mut grads = std::mem::take(&mut accumulated);
                let mut overflow = false;
                if let Some(s) = scaler.as_mut() {
                    let inv = 1.0 / s.scale;
                    for group in grads.iter_mut() {
                        for g in group.iter_mut().flatten() {
                            *g = (&*g * inv)?;
                        }
                    }
                    overflow = !grads_finite(&grads)?;
                    s.update(overflow);
                }
                // The total gradient norm before clipping, measured only where clipping needs it.
                let mut grad_norm = None;
                if !overflow {
                    if config.training.max_grad_norm > 0.0 {
                        grad_norm = Some(clip_grad_norm(&mut grads, config.training.max_grad_norm)?);
                    }
                    self.optimizer.step(&grads, &lrs)?;
                } else {
                    events(TrainEvent::Note(format!(
                        "fp16 overflow at step {}: step skipped, loss scale lowered",
                        global_step + 1
                    )));
                }
                let max_norm = match config.network.scale_weight_norms {
                    Some(m) => {
                        let live = self.live_sets();
                        let refs: Vec<&LoraSet> = live.iter().map(|s| s.as_ref()).collect();
                        apply_max_norm(&refs, m)?
                    }
                    None => None,
                };
                global_step += 1;
                let step_loss = step_loss_sum / micro_in_step as f64;
                micro_in_step = 0;
                step_loss_sum = 0.0;
                losses.push(step_loss);
                let average = loss_window.iter().sum::<f64>() / loss_window.len() as f64;

                let mut scalars: Vec<(String, f64)> =
                    vec![("loss/current".into(), step_loss), ("loss/average".into(), average)];
                // Adafactor's relative step replaces the lr (sd-scripts logs its AdafactorSchedule);
                // Prodigy-style optimizers add `lr/d*lr/…`.
                let effective = self.optimizer.effective_lrs();
                let logged = match (&effective, self.optimizer_kind) {
                    (Some(e), OptimizerKind::Adafactor) => e.clone(),
                    _ => lrs.clone(),
                };
                for (g, lr) in self.optimizer.groups().iter().zip(&logged) {
                    scalars.push((format!("lr/{}", g.name), *lr));
                }
                // Not one of sd-scripts' names: lorakit's own, for the GUI's run view.
                if let Some(n) = grad_norm {
                    scalars.push(("norm/grad_norm".into(), n));
                }
                if let Some(m) = max_norm {
                    scalars.push(("max_norm/keys_scaled".into(), m.keys_scaled as f64));
                    scalars.push(("max_norm/max_key_norm".into(), m.max_norm));
                    scalars.push(("norm/avg_key_norm".into(), m.average_norm));
                }
                if let (Some(effective), false) = (effective, self.optimizer_kind == OptimizerKind::Adafactor) {
                    for (g, lr) in self.optimizer.groups().iter().zip(effective) {
                        scalars.push((format!("lr/d*lr/{}", g.name), lr));
                    }
                }
                // sd-scripts' step validation: after the optimizer steps that are multiples of N.
                if config.training.validate_every_n_steps.is_some_and(|n| global_step % n == 0) {
                    if let Some(validation) = self.validation_loss(&cache)? {
                        scalars.push(("loss/validation/step_average".into(), validation));
                        scalars.push(("loss/validation/step_divergence".into(), validation - average));
                        events(TrainEvent::Note(format!(
                            "validation loss after step {global_step}: {validation:.6} (training's moving average {average:.6})"
                        )));
                    }
                }
                self.log(&mut tensorboard, &mut run_log, global_step, epoch + 1, &scalars)?;
                events(TrainEvent::Step {
                    step: global_step,
                    total: total_steps,
                    epoch: epoch + 1,
                    loss: step_loss,
                    average_loss: average,
                    lr: lrs[0],
                });

                let (next_epoch, next_batch) = if bi == last_batch { (epoch + 1, 0) } else { (epoch, bi + 1) };

                let save_requested = self.take_request(SAVE_NOW_REQUEST);
                let sample_requested = self.take_request(SAMPLE_NOW_REQUEST);
                let save_due = crate::schedule::saves_after_step(&config, global_step, total_steps);
                if (save_requested && global_step < total_steps) || save_due {
                    let suffix = format!("-step{global_step:08}");
                    let path = self.lora_path(&suffix);
                    self.save_lora(&path, SaveProgress { steps: global_step, epoch })?;
                    events(TrainEvent::Saved(path.clone()));
                    saved.push(path);
                    if config.save.save_state {
                        let dir = self.state_dir(&suffix);
                        save_state(
                            &dir,
                            &self.live_sets(),
                            self.optimizer.as_ref(),
                            &self.progress_state(
                                global_step,
                                next_epoch,
                                next_batch,
                                &loss_window,
                                &epoch_losses,
                                scaler,
                            ),
                        )?;
                        events(TrainEvent::Saved(dir));
                    }
                }
                let sample_due = crate::schedule::samples_after_step(&config, global_step);
                if sample_requested && samples.is_none() {
                    events(TrainEvent::Note("sample-now: no samples.sample_prompts in this run's config".into()));
                }
                if sample_due || sample_requested {
                    if let Some(s) = samples.as_mut() {
                        for path in self.render_samples(s, crate::samples::SampleTag::Step(global_step))? {
                            events(TrainEvent::Sampled(path));
                        }
                    }
                }
                if stop.load(Ordering::SeqCst) && global_step < total_steps {
                    let dir = self.state_dir(&format!("-step{global_step:08}"));
                    save_state(
                        &dir,
                        &self.live_sets(),
                        self.optimizer.as_ref(),
                        &self.progress_state(global_step, next_epoch, next_batch, &loss_window, &epoch_losses, scaler),
                    )?;
                    events(TrainEvent::Saved(dir.clone()));
                    if let Some(tb) = tensorboard.as_mut() {
                        tb.flush().map_err(|e| TrainError::io(&log_dir, e))?;
                    }
                    return Ok(RunSummary {
                        final_lora: None,
                        saved,
                        interrupted_state: Some(dir),
                        steps: global_step,
                        losses,
                        log_dir,
                    });
                }
                if global_step >= total_steps {
                    finished = true;
                    break;
                }
            }

            // End of epoch.
            let epoch_avg = epoch_losses.iter().sum::<f64>() / epoch_losses.len().max(1) as f64;
            let mut epoch_values = vec![("loss/epoch_average", epoch_avg)];
            // sd-scripts' epoch validation: every epoch, or every N-th with validate_every_n_epochs.
            let mut validated = None;
            if config.training.validate_every_n_epochs.is_none_or(|n| (epoch + 1) % n == 0) {
                if let Some(validation) = self.validation_loss(&cache)? {
                    let average = loss_window.iter().sum::<f64>() / loss_window.len().max(1) as f64;
                    epoch_values.push(("loss/validation/epoch_average", validation));
                    epoch_values.push(("loss/validation/epoch_divergence", validation - average));
                    validated = Some((validation, average));
                }
            }
            // TensorBoard plots them against the epoch number, as sd-scripts does; the plain log keeps
            // its step axis (the values land in the JSONL; the CSV columns are fixed by step rows).
            if let Some(tb) = tensorboard.as_mut() {
                let values: Vec<(&str, f32)> = epoch_values.iter().map(|(k, v)| (*k, *v as f32)).collect();
                tb.add_scalars((epoch + 1) as i64, &values)
                    .map_err(|e| TrainError::Other(format!("TensorBoard log: {e}")))?;
            }
            run_log
                .log(global_step, epoch + 1, &epoch_values)
                .map_err(|e| TrainError::Other(format!("run log: {e}")))?;
            if let Some((validation, average)) = validated {
                events(TrainEvent::Note(format!(
                    "validation loss after epoch {}: {validation:.6} (training's moving average {average:.6})",
                    epoch + 1
                )));
            }
            let every = config.save.save_every_n_epochs;
            if crate::schedule::saves_after_epoch(&config, epoch + 1, self.plan.epochs) {
                let suffix = format!("-{:06}", epoch + 1);
                let path = self.lora_path(&suffix);
                self.save_lora(&path, SaveProgress { steps: global_step, epoch: epoch + 1 })?;
                events(TrainEvent::Saved(path.clone()));
                saved.push(path);
                if config.save.save_state {
                    let dir = self.state_dir(&suffix);
                    let p = self.progress_state(global_step, epoch + 1, 0, &loss_window, &[], scaler);
                    save_state(&dir, &self.live_sets(), self.optimizer.as_ref(), &p)?;
                    events(TrainEvent::Saved(dir));
                }
                let keep = config.save.save_last_n_epochs;
                if keep > 0 && epoch + 1 > every * keep {
                    let old_epoch = epoch + 1 - every * keep;
                    let old = self.lora_path(&format!("-{old_epoch:06}"));
                    if old.exists() {
                        let _ = std::fs::remove_file(&old);
                    }
                    let old_state = self.state_dir(&format!("-{old_epoch:06}"));
                    if old_state.is_dir() {
                        let _ = std::fs::remove_dir_all(&old_state);
                    }
                }
            }
            if crate::schedule::samples_after_epoch(&config, epoch + 1) {
                if let Some(s) = samples.as_mut() {
                    for path in self.render_samples(s, crate::samples::SampleTag::Epoch(epoch + 1))? {
                        events(TrainEvent::Sampled(path));
                    }
                }
            }
            if finished {
                break;
            }
        }

        // Final save.
        let final_path = self.lora_path("");
        self.save_lora(&final_path, SaveProgress { steps: global_step, epoch: self.plan.epochs })?;
        events(TrainEvent::Saved(final_path.clone()));
        saved.push(final_path.clone());
        if config.save.save_state_on_train_end {
            let dir = self.state_dir("");
            let p = self.progress_state(global_step, self.plan.epochs, 0, &loss_window, &[], scaler);
            save_state(&dir, &self.live_sets(), self.optimizer.as_ref(), &p)?;
            events(TrainEvent::Saved(dir));
        }
        if let Some(tb) = tensorboard.as_mut() {
            tb.flush().map_err(|e| TrainError::io(&log_dir, e))?;
        }
        Ok(RunSummary {
            final_lora: Some(final_path),
            saved,
            interrupted_state: None,
            steps: global_step,
            losses,
            log_dir,
        })
    }

    /// What a state saved now records: training continues at batch `next_batch` of epoch
    /// `next_epoch` (0-based).
    fn progress_state(
        &self,
        global_step: u64,
        next_epoch: u64,
        next_batch: u64,
        loss_window: &[f64],
        epoch_losses: &[f64],
        scaler: Option<LossScaler>,
    ) -> ProgressState {
        // sd-scripts' marker: the 1-based epoch the save happened in.
        let current_epoch = if next_batch == 0 { next_epoch } else { next_epoch + 1 };
        ProgressState {
            format: STATE_FORMAT,
            lorakit_version: env!("CARGO_PKG_VERSION").into(),
            global_step,
            epoch: next_epoch,
            next_batch,
            batches_per_epoch: self.plan.batches_per_epoch,
            seed: self.config.training.seed,
            loss_window: loss_window.to_vec(),
            epoch_losses: epoch_losses.to_vec(),
            loss_scale: scaler.map(|s| (s.scale, s.good_steps)),
            optimizer_scalars: serde_json::Value::Null,
            current_epoch,
            current_step: global_step,
            gradient_accumulation_steps: Some(self.plan.gradient_accumulation_steps),
            network_settings: network_settings(&self.config),
        }
    }

    fn log(
        &self,
        tensorboard: &mut Option<TensorBoardWriter>,
        run_log: &mut RunLog,
        step: u64,
        epoch: u64,
        scalars: &[(String, f64)],
    ) -> Result<()> {
        if let Some(tb) = tensorboard.as_mut() {
            let values: Vec<(&str, f32)> = scalars.iter().map(|(k, v)| (k.as_str(), *v as f32)).collect();
            tb.add_scalars(step as i64, &values).map_err(|e| TrainError::Other(format!("TensorBoard log: {e}")))?;
        }
        let values: Vec<(&str, f64)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        run_log.log(step, epoch, &values).map_err(|e| TrainError::Other(format!("run log: {e}")))?;
        Ok(())
    }

    /// One micro-batch: forward, loss, backward; gradients added to `accumulated`. Returns the
    /// batch's loss (before division by the accumulation steps).
    #[allow(clippy::too_many_arguments)]
    fn micro_step(
        &self,
        batch: &Batch,
        cache: &Caches,
        epoch: u64,
        global_step: u64,
        micro: u64,
        ga: u64,
        scaler: Option<LossScaler>,
        accumulated: &mut Vec<Vec<Option<Tensor>>>,
    ) -> Result<f64> {
        let config = &self.config;
        let device = self.model.device();
        // Every random draw of this micro-step comes from (seed, step, micro).
        let seed = config.training.seed;
        let augments: Vec<SampleAugment> = batch
            .samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let image = &self.data.images[s.image];
                let mut rng = rng_for(&[seed, stream::AUGMENT, global_step, micro, i as u64]);
                SampleAugment {
                    crop: if image.random_crop { Crop::Random(rng.random()) } else { Crop::Center },
                    color: if image.color_aug { ColorAug::draw(&mut rng) } else { None },
                }
            })
            .collect();
        let latents = match &cache.latents {
            Some(c) => c.batch(&batch.samples, device)?,
            None => encode_batch(self.model, &self.data, &batch.samples, &augments)?,
        };
        let (lh, lw) = (latents.dims()[2], latents.dims()[3]);
        let mask = alpha_masks(&self.data, &batch.samples, &augments, (lh, lw), device)?;

        // The objective draws the noise levels and noise, and builds input and target.
        let noised = self.objective.noise(&latents, &mut rng_for(&[seed, stream::NOISE, global_step, micro]))?;

        let ctxs: Vec<ForwardCtx> = self
            .sets
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Some(set) => {
                    set.reseed(rng_for(&[seed, stream::DROPOUT, global_step, micro, i as u64]).random());
                    ForwardCtx {
                        lora: Some(set.clone()),
                        train: true,
                        gradient_checkpointing: config.training.gradient_checkpointing,
                    }
                }
                None => ForwardCtx::default(),
            })
            .collect();
        let moment = CaptionMoment { epoch: epoch + 1, step: global_step, max_train_steps: self.plan.max_train_steps };
        let captions: Vec<String> = batch
            .samples
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let image = &self.data.images[s.image];
                let mut rng = rng_for(&[seed, stream::CAPTION, global_step, micro, k as u64]);
                process_caption(&image.caption, &image.caption_options, moment, &mut rng)
            })
            .collect();
        let captions: Vec<&str> = captions.iter().map(String::as_str).collect();
        let cond = self.conditioning(cache, batch, &captions, &ctxs)?;
        let sizes: Vec<SizeCondition> =
            batch.samples.iter().map(|s| self.data.images[s.image].size_condition(s.flip)).collect();
        let pred =
            self.predict(&noised, &cond, &sizes, &ctxs, &mut rng_for(&[seed, stream::MODEL, global_step, micro]))?;

        // sd-scripts' loss assembly (§7.2): preconditioning, element-wise loss, per-sample mean,
        // prior weight for regularisation images, the objective's weighting, batch mean.
        let weights: Vec<f64> = batch
            .samples
            .iter()
            .map(|s| if self.data.images[s.image].is_reg { config.dataset.prior_loss_weight } else { 1.0 })
            .collect();
        let loss = self.objective.loss(&pred, &noised, &weights, mask.as_ref())?;
        let loss_value = f64::from(loss.to_scalar::<f32>()?);
        if !loss_value.is_finite() {
            return Ok(loss_value);
        }
        let scale = scaler.map_or(1.0, |s| s.scale);
        let grads = (loss * (scale / ga as f64))?.backward()?;

        if accumulated.is_empty() {
            *accumulated = self.optimizer.groups().iter().map(|g| vec![None; g.vars.len()]).collect();
        }
        for (g, group) in self.optimizer.groups().iter().enumerate() {
            for (i, var) in group.vars.iter().enumerate() {
                let set = self.sets[self.group_components[g][i]].as_ref().expect("trained component has a set");
                if let Some(grad) = set.grad(&grads, var)? {
                    accumulated[g][i] = Some(match accumulated[g][i].take() {
                        Some(acc) => (acc + grad)?,
                        None => grad,
                    });
                }
            }
        }
        for set in self.sets.iter().flatten() {
            set.clear_side_grads();
        }
        Ok(loss_value)
    }
}

impl Trainer<'_> {
    /// The text conditioning of `batch` with `captions`: from the text-encoder cache when there
    /// is one (the trained encoders' outputs recomputed over it), else encoded now.
    fn conditioning(
        &self,
        cache: &Caches,
        batch: &Batch,
        captions: &[&str],
        ctxs: &[ForwardCtx],
    ) -> Result<crate::model::Conditioning> {
        let config = &self.config;
        let (max_tokens, clip_skip) = (config.training.max_token_length, config.model.clip_skip);
        Ok(if let Some(text) = &cache.text {
            let images: Vec<usize> = batch.samples.iter().map(|s| s.image).collect();
            let trained: Vec<bool> = self.sets.iter().map(Option::is_some).collect();
            let cached = text.batch(&self.data, &images, self.model.device())?;
            self.model.encode_text_over_cache(cached, captions, ctxs, &trained)?
        } else if config.training.weighted_captions {
            self.model.encode_text_weighted(captions, max_tokens, clip_skip, ctxs)?
        } else {
            self.model.encode_text(captions, max_tokens, clip_skip, ctxs)?
        })
    }

    /// The denoiser's prediction (f32) for a noised batch.
    fn predict(
        &self,
        noised: &crate::objective::NoisedBatch,
        cond: &crate::model::Conditioning,
        sizes: &[SizeCondition],
        ctxs: &[ForwardCtx],
        rng: &mut rand::rngs::StdRng,
    ) -> Result<Tensor> {
        let pred =
            self.model.denoise(&noised.noisy, &noised.timesteps, noised.guidance.as_ref(), cond, sizes, ctxs, rng)?;
        Ok(pred.to_dtype(DType::F32)?)
    }

    /// The validation loss now (sd-scripts' validation): the mean loss over the validation
    /// batches (at most `training.max_validation_steps`) at each of the objective's validation
    /// timesteps, computed as in training but never trained on — LoRA dropout off, no backward,
    /// captions without shuffling or dropout. Its noise is drawn from `dataset.validation_seed`
    /// (else the run seed) the same way every time, so the measurements compare across the run;
    /// nothing of training's random streams is touched, so resuming stays exact. `None` without
    /// validation images.
    fn validation_loss(&self, cache: &Caches) -> Result<Option<f64>> {
        let config = &self.config;
        let limit =
            config.training.max_validation_steps.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let batches = &self.data.validation[..self.data.validation.len().min(limit)];
        if batches.is_empty() {
            return Ok(None);
        }
        let seed = config.dataset.validation_seed.unwrap_or(config.training.seed);
        let device = self.model.device();
        let timesteps = self.objective.validation_timesteps();
        let ctxs: Vec<ForwardCtx> = self
            .sets
            .iter()
            .map(|s| ForwardCtx {
                lora: s.clone(),
                train: false,
                gradient_checkpointing: config.training.gradient_checkpointing,
            })
            .collect();
        let (mut sum, mut count) = (0.0, 0usize);
        for (b, batch) in batches.iter().enumerate() {
            let augments = vec![SampleAugment::NONE; batch.samples.len()];
            let latents = match &cache.latents {
                Some(c) => c.batch(&batch.samples, device)?,
                None => encode_batch(self.model, &self.data, &batch.samples, &augments)?,
            };
            let (lh, lw) = (latents.dims()[2], latents.dims()[3]);
            let mask = alpha_masks(&self.data, &batch.samples, &augments, (lh, lw), device)?;
            let captions: Vec<String> =
                batch.samples.iter().map(|s| crate::text_cache::fixed_caption(&self.data.images[s.image])).collect();
            let captions: Vec<&str> = captions.iter().map(String::as_str).collect();
            let cond = self.conditioning(cache, batch, &captions, &ctxs)?;
            let sizes: Vec<SizeCondition> =
                batch.samples.iter().map(|s| self.data.images[s.image].size_condition(s.flip)).collect();
            let weights = vec![1.0; batch.samples.len()];
            for (ti, &t) in timesteps.iter().enumerate() {
                let (b, ti) = (b as u64, ti as u64);
                let noised = self.objective.noise_at(&latents, t, &mut rng_for(&[seed, stream::VALIDATION, b, ti]))?;
                let model_rng = &mut rng_for(&[seed, stream::VALIDATION_MODEL, b, ti]);
                let pred = self.predict(&noised, &cond, &sizes, &ctxs, model_rng)?;
                let loss = self.objective.loss(&pred, &noised, &weights, mask.as_ref())?;
                sum += f64::from(loss.to_scalar::<f32>()?);
                count += 1;
            }
        }
        Ok(Some(sum / count as f64))
    }
}

/// What was computed once before the epochs: latents and text-encoder outputs.
struct Caches {
    latents: Option<LatentCache>,
    text: Option<TextEncoderCache>,
}

/// `network.dim_from_weights`: the modules of `network.network_weights` with their ranks and
/// alphas, by kohya name (sd-scripts' `create_network_from_weights`; a missing alpha is the rank).
fn module_dims_from_weights(config: &TrainConfig) -> Result<Option<Arc<ModuleDims>>> {
    let n = &config.network;
    if !n.dim_from_weights {
        return Ok(None);
    }
    let Some(path) = &n.network_weights else {
        return Err(TrainError::Other(
            "network.dim_from_weights takes the network's shape from network.network_weights; set that file too".into(),
        ));
    };
    if n.is_lycoris() || n.split_qkv {
        return Err(TrainError::Other(
            "network.dim_from_weights reads LoRA / LoCon files; it does not apply to LyCORIS networks or split_qkv — remove it"
                .into(),
        ));
    }
    let err = |message: String| TrainError::Other(format!("network.network_weights = {}: {message}", path.display()));
    let file = lorakit_lora::safetensors_file::LoraFile::open(path).map_err(|e| err(e.to_string()))?;
    let set = lorakit_lora::keys::modules(&file).map_err(|e| err(e.to_string()))?;
    if set.scheme != lorakit_lora::keys::Scheme::Kohya || set.modules.is_empty() {
        return Err(err(
            "dim_from_weights needs a LoRA file with kohya module names (lora_unet_…); convert it with `lorakit convert --to kohya`"
                .into(),
        ));
    }
    Ok(Some(Arc::new(set.modules.iter().map(|m| (m.name.clone(), (m.rank, f64::from(m.alpha)))).collect())))
}

/// With `dim_from_weights`, the components the file has modules for (sd-scripts trains the text
/// encoders only when the file adapts them); a file module that matches no layer of this model
/// is refused by name.
fn only_components_in_file(
    components: &[crate::model::Component],
    specs: Vec<Option<NetworkSpec>>,
    dims: &ModuleDims,
    config: &TrainConfig,
) -> Result<Vec<Option<NetworkSpec>>> {
    let mut matched = std::collections::HashSet::new();
    let mut adapted = vec![false; components.len()];
    for (c, adapted) in components.iter().zip(adapted.iter_mut()) {
        for t in &c.targets {
            let name = t.kohya_name(c.prefix);
            if dims.contains_key(&name) {
                matched.insert(name);
                *adapted = true;
            }
        }
    }
    let mut unmatched: Vec<&String> = dims.keys().filter(|k| !matched.contains(*k)).collect();
    unmatched.sort();
    if let Some(first) = unmatched.first() {
        return Err(TrainError::Other(format!(
            "network.dim_from_weights: {} module(s) of {} match no layer of this model, e.g. {first} — is the file for another base model?",
            unmatched.len(),
            config.network.network_weights.as_deref().unwrap_or(Path::new("")).display()
        )));
    }
    Ok(specs.into_iter().zip(adapted).map(|(spec, adapted)| spec.filter(|_| adapted)).collect())
}

/// The run's memory estimate ([`estimate_memory`]) with `trainable` LoRA parameters.
fn memory_estimate(
    config: &TrainConfig,
    model: &dyn TrainableModel,
    data: &TrainData,
    trainable: usize,
    optimizer: OptimizerKind,
) -> crate::plan::MemoryEstimate {
    let factor = model.latent_factor().max(1);
    let max_batch_latent_pixels = data
        .epoch_batches(config.training.seed, 0)
        .iter()
        .map(|b| b.samples.len() as u64 * u64::from(b.bucket.0 / factor) * u64::from(b.bucket.1 / factor))
        .max()
        .unwrap_or(0);
    let (mut frozen_parameters, _) = model.parameter_counts();
    // Cached text-encoder outputs with no samples to draw: the frozen encoders leave memory
    // first (all of them, or with partial caching those that do not train).
    if config.caches_text_encoder_outputs() && config.samples.sample_prompts.is_none() {
        let trained = crate::model::trained_components(config, &model.components());
        frozen_parameters = frozen_parameters.saturating_sub(model.released_text_encoder_parameters(&trained));
    }
    estimate_memory(&MemoryInputs {
        frozen_parameters,
        activation_scale: model.activation_scale(),
        model_dtype: model.dtype(),
        fp8_base: config.accelerate.fp8_base,
        lora_dtype: lora_dtype(config),
        trainable_parameters: trainable,
        optimizer,
        gradient_accumulation_steps: config.training.gradient_accumulation_steps.max(1),
        max_batch_latent_pixels,
        gradient_checkpointing: config.training.gradient_checkpointing,
        checkpointing_factor: model.checkpointing_factor(),
    })
}

/// The longest file name the run writes, less the output name: `.<name>-step00000001-state.tmp-<pid>`.
const LONGEST_NAME_SUFFIX: usize = ".-step00000001-state.tmp-4294967295".len();

/// Checks that the run can write its files: `folders.output_name` makes valid file names, and
/// `folders.output_dir` (and `folders.logging_dir`) exist as writable folders or can be
/// created. Nothing is created: the nearest existing folder is probed with a hidden folder
/// made and removed at once.
pub fn check_output_paths(config: &TrainConfig) -> Result<()> {
    let name = &config.folders.output_name;
    let bad = |why: String| {
        TrainError::Other(format!(
            "folders.output_name = {name:?}: {why}; use letters, digits, spaces, '-', '_' or '.'"
        ))
    };
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(bad(format!(
            "it contains the control character {:?}, which {} file name",
            c,
            if c == '\0' { "no" } else { "is not allowed in a portable" }
        )));
    }
    if cfg!(windows) {
        if let Some(c) = name.chars().find(|c| "<>:\"|?*".contains(*c)) {
            return Err(bad(format!("{c:?} is not allowed in a Windows file name")));
        }
        // `<name>.safetensors` is the final file: Windows reserves device names before any dot.
        let stem = name.split('.').next().unwrap_or("").trim_end().to_ascii_uppercase();
        let numbered = |p: &str| stem.strip_prefix(p).is_some_and(|d| d.len() == 1 && d.as_bytes()[0].is_ascii_digit());
        if ["CON", "PRN", "AUX", "NUL"].contains(&stem.as_str()) || numbered("COM") || numbered("LPT") {
            return Err(bad(format!("{stem} is a device name Windows reserves")));
        }
    }
    if name.len() + LONGEST_NAME_SUFFIX > 255 {
        return Err(bad(format!(
            "{} bytes long; with the run's suffixes (e.g. -step00000001-state) file names must stay under 255 bytes",
            name.len()
        )));
    }
    check_writable_dir(&config.folders.output_dir, "folders.output_dir")?;
    if let Some(logs) = &config.folders.logging_dir {
        check_writable_dir(logs, "folders.logging_dir")?;
    }
    Ok(())
}

/// Whether folder `dir` (config key `key`) exists and is writable or can be created.
fn check_writable_dir(dir: &Path, key: &str) -> Result<()> {
    let bad = |why: String| TrainError::Other(format!("{key} = {}: {why}", dir.display()));
    let mut existing = dir;
    loop {
        match std::fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err(bad(if existing == dir {
                    "it is a file, not a folder; choose a folder".into()
                } else {
                    format!(
                        "{} is a file, so the folder cannot be created there; choose another folder",
                        existing.display()
                    )
                }))
            }
            // Missing, or under a file (ENOTDIR): look at the folder above.
            Err(e) if e.kind() != std::io::ErrorKind::PermissionDenied => match existing.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
                _ => {
                    existing = Path::new(".");
                    break;
                }
            },
            Err(e) => return Err(bad(format!("cannot read {}: {e}", existing.display()))),
        }
    }
    let probe = existing.join(format!(".lorakit-write-check-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(bad(format!(
            "cannot {} in {}: {e}; choose a folder you can write to",
            if existing == dir { "write" } else { "create the folder" },
            existing.display()
        ))),
    }
}

/// Whether every gradient is finite.
fn grads_finite(grads: &[Vec<Option<Tensor>>]) -> Result<bool> {
    for g in grads.iter().flatten().flatten() {
        let s = g.to_dtype(DType::F32)?.abs()?.max_all()?.to_scalar::<f32>()?;
        if !s.is_finite() {
            return Ok(false);
        }
    }
    Ok(true)
}
