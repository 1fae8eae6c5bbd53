//! What a run will do before it does it: `lorakit train --dry-run`'s plan (steps, param groups,
//! learning-rate curve, memory estimate) and the warnings for settings that are allowed but
//! probably not meant (spec §7.10's "W" checks plus the guide's rules of thumb).

use std::fmt;

use candle_core::DType;
pub use lorakit_models::lora_inject::planned_parameters;
use lorakit_nn::optim::OptimizerKind;

use crate::config::TrainConfig;

/// The plan of a run, as printed by `--dry-run`.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub images: u64,
    pub reg_images: u64,
    /// Images the validation loss is measured on (`dataset.validation_split`).
    pub validation_images: usize,
    pub batches_per_epoch: u64,
    pub gradient_accumulation_steps: u64,
    pub steps: u64,
    pub epochs: u64,
    pub warmup_steps: u64,
    /// `ss_optimizer` text.
    pub optimizer: String,
    /// (name, base lr, trainable parameters) per optimizer group.
    pub groups: Vec<(String, f64, usize)>,
    /// Scheduler factor at a few points: (step 1-based, factor).
    pub lr_points: Vec<(u64, f64)>,
    pub memory: MemoryEstimate,
    /// Setup notices and warnings (`warning: …`), as a run prints them at its start.
    pub notes: Vec<String>,
}

/// A rough peak-memory estimate of the training step (bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// Frozen model weights in their compute dtype (text encoder, denoiser, VAE).
    pub weights: f64,
    /// LoRA master weights, gradients (and accumulation buffers) and optimizer state.
    pub network: f64,
    /// Activations kept for backward at the largest batch.
    pub activations: f64,
}

impl MemoryEstimate {
    pub fn total(&self) -> f64 {
        self.weights + self.network + self.activations
    }
}

/// Bytes of optimizer state per trainable parameter (moments; 8-bit ones as 1 byte plus block
/// scales; Adafactor's factored second moment counted as ~nothing).
pub fn optimizer_state_bytes(kind: OptimizerKind) -> f64 {
    match kind {
        OptimizerKind::AdamW | OptimizerKind::AdamWScheduleFree => 8.0,
        OptimizerKind::AdamW8bit | OptimizerKind::AdEMAMix8bit => 2.1,
        OptimizerKind::Lion | OptimizerKind::SgdNesterov => 4.0,
        OptimizerKind::Lion8bit | OptimizerKind::SgdNesterov8bit => 1.05,
        OptimizerKind::Prodigy => 16.0,
        OptimizerKind::ProdigyPlusScheduleFree => 12.0,
        OptimizerKind::Adafactor => 0.5,
        OptimizerKind::AdEMAMix => 12.0,
    }
}

/// Activation bytes per latent pixel per image for an SD1.5-sized UNet in f32 without
/// gradient checkpointing: the whole training run (BENCHMARKS.md, "Whole training run": 11.6 GB
/// peak at 512², batch 1, of which 4.3 GB weights → 7.3 GB) less the 1.2 GB the single-copy
/// attach op saved on the UNet step benchmark (11.1 → 9.9 GB): 6.1 GB / 4096 latent pixels.
/// Other denoisers scale it by their structure (`TrainableModel::activation_scale`).
const SD15_ACTIVATION_BYTES_PER_LATENT_PIXEL: f64 = 1.49e6;
/// Gradient checkpointing as measured on the UNet step benchmark (BENCHMARKS.md, "One SD1.5 LoRA
/// training step"): peak 5.3 GB against 9.9 GB with 3.35 GB of weights → 1.95 / 6.55 GB of
/// activations.
pub const CHECKPOINTING_FACTOR: f64 = 0.30;

/// Inputs of [`estimate_memory`].
#[derive(Debug, Clone, Copy)]
pub struct MemoryInputs {
    /// Frozen parameters (all components).
    pub frozen_parameters: usize,
    /// The denoiser's activations relative to SD 1.5's UNet at the same latent size.
    pub activation_scale: f64,
    pub model_dtype: DType,
    /// Linear/conv weights of the denoiser and text encoder stored in fp8.
    pub fp8_base: bool,
    /// Dtype of the trained LoRA weights and their gradients.
    pub lora_dtype: DType,
    pub trainable_parameters: usize,
    pub optimizer: OptimizerKind,
    pub gradient_accumulation_steps: u64,
    /// Largest batch in latent pixels (batch size × latent H × latent W).
    pub max_batch_latent_pixels: u64,
    pub gradient_checkpointing: bool,
    /// The share of the activations gradient checkpointing keeps
    /// (`TrainableModel::checkpointing_factor`; the UNets' measured [`CHECKPOINTING_FACTOR`]).
    pub checkpointing_factor: f64,
}

/// The estimate printed before training ("this run needs about N GB"): weights by dtype, the
/// network with its optimizer, and activations scaled from the measured SD1.5 step.
pub fn estimate_memory(m: &MemoryInputs) -> MemoryEstimate {
    let dtype_bytes = m.model_dtype.size_in_bytes() as f64;
    // fp8: nearly all of the denoiser and text encoder is linear/conv weights (1 byte each).
    let weights = m.frozen_parameters as f64 * if m.fp8_base { 1.0 } else { dtype_bytes };
    let lora = m.lora_dtype.size_in_bytes() as f64;
    let per_param =
        lora + lora + optimizer_state_bytes(m.optimizer) + if m.gradient_accumulation_steps > 1 { lora } else { 0.0 };
    let network = m.trainable_parameters as f64 * per_param;
    let mut activations =
        SD15_ACTIVATION_BYTES_PER_LATENT_PIXEL * m.max_batch_latent_pixels as f64 * m.activation_scale * dtype_bytes
            / 4.0;
    if m.gradient_checkpointing {
        activations *= m.checkpointing_factor;
    }
    MemoryEstimate { weights, network, activations }
}

/// Bytes the system can still give a run: Linux's `MemAvailable` plus free swap from
/// `/proc/meminfo` (`None` elsewhere, or when it cannot be read).
pub fn available_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse::<f64>().ok().map(|k| k * 1024.0)
    };
    Some(kib("MemAvailable:")? + kib("SwapFree:").unwrap_or(0.0))
}

/// Refuses a run whose estimate does not fit: what it still has to allocate once the model is
/// loaded (the network with its gradients and optimizer state, and the activations) against
/// `available` bytes (see [`available_memory`]; `None`: not checked). The message names the
/// keys that shrink each part.
pub fn check_memory(estimate: &MemoryEstimate, available: Option<f64>) -> Result<(), String> {
    let Some(available) = available else { return Ok(()) };
    let needed = estimate.network + estimate.activations;
    if needed <= available {
        return Ok(());
    }
    Err(format!(
        "this run needs about {} more memory than its loaded model (LoRA + gradients + optimizer state {},          activations {}), but only {} is available: lower network.network_dim / network.conv_dim (LoRA) or          training.train_batch_size / dataset.resolution (activations), or set training.gradient_checkpointing = true",
        gb(needed),
        gb(estimate.network),
        gb(estimate.activations),
        gb(available)
    ))
}

/// Settings that are allowed but usually a mistake; each names the keys.
pub fn config_warnings(c: &TrainConfig, steps: u64, warmup_steps: u64) -> Vec<String> {
    let mut w = Vec::new();
    let n = &c.network;
    if n.network_alpha > n.network_dim as f64 {
        w.push(format!(
            "network.network_alpha = {} is larger than network_dim = {}: the LoRA's output is scaled up by {:.2}, which \
             usually needs a much lower learning rate (alpha = rank/2 … rank is common)",
            n.network_alpha,
            n.network_dim,
            n.network_alpha / n.network_dim as f64
        ));
    }
    if let (Some(conv), Some(alpha)) = (n.conv_dim, n.conv_alpha) {
        // conv_dim = 0 means no k×k modules: their alpha does nothing.
        if conv > 0 && alpha > conv as f64 {
            w.push(format!("network.conv_alpha = {alpha} is larger than conv_dim = {conv}"));
        }
    }
    if c.trains_text_encoder() && c.trains_unet() && c.text_encoder_lr() > c.unet_lr() {
        w.push(format!(
            "the text encoder learns faster than the UNet (text_encoder_lr {} > unet_lr {}): it overfits quickly; \
             25–50% of the UNet's rate is usual",
            c.text_encoder_lr(),
            c.unet_lr()
        ));
    }
    if let Ok(kind) = OptimizerKind::parse(&c.optimizer.optimizer_type) {
        let lr = c.optimizer.learning_rate.max(c.unet_lr()).max(c.text_encoder_lr());
        if kind.is_8bit() && lr > 1e-3 {
            w.push(format!(
                "optimizer.optimizer_type = {:?} with a learning rate of {lr}: 8-bit moments lose precision at high \
                 rates; use ≤ 1e-3 or the 32-bit optimizer",
                c.optimizer.optimizer_type
            ));
        }
    }
    if steps > 0 && warmup_steps * 2 > steps {
        w.push(format!(
            "optimizer.lr_warmup_steps: {warmup_steps} of the run's {steps} steps are warmup — more than half the run \
             at a reduced learning rate"
        ));
    }
    w
}

fn gb(bytes: f64) -> String {
    if bytes >= 1e9 {
        format!("{:.1} GB", bytes / 1e9)
    } else {
        format!("{:.0} MB", (bytes / 1e6).ceil())
    }
}

/// What a CUDA context and the allocator's slack take on a card before training does (measured
/// as ~0.5–1 GB on PyTorch; the conservative end).
const CARD_OVERHEAD_BYTES: f64 = 1.0e9;

/// Whether a run needing `bytes` fits 8, 12, 16 and 24 GB cards (GiB, as cards are sold), e.g.
/// `8 GB no · 12 GB no · 16 GB yes · 24 GB yes`.
pub fn card_fit(bytes: f64) -> String {
    [8.0, 12.0, 16.0, 24.0]
        .iter()
        .map(|gib: &f64| {
            let fits = bytes + CARD_OVERHEAD_BYTES <= gib * (1u64 << 30) as f64;
            format!("{gib} GB {}", if fits { "yes" } else { "no" })
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

impl fmt::Display for RunPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "data: {} training images{}{}, {} batches per epoch, gradient accumulation {}",
            self.images,
            if self.reg_images > 0 { format!(" + {} regularisation", self.reg_images) } else { String::new() },
            if self.validation_images > 0 {
                format!(" (validation loss on {} images)", self.validation_images)
            } else {
                String::new()
            },
            self.batches_per_epoch,
            self.gradient_accumulation_steps
        )?;
        writeln!(f, "length: {} steps in {} epochs, {} warmup steps", self.steps, self.epochs, self.warmup_steps)?;
        writeln!(f, "optimizer: {}", self.optimizer)?;
        for (name, lr, params) in &self.groups {
            writeln!(f, "  group {name:<20} base lr {lr:<10e} {params} parameters")?;
        }
        let curve: Vec<String> = self.lr_points.iter().map(|(s, x)| format!("step {s}: ×{x:.4}")).collect();
        writeln!(f, "lr schedule: {}", curve.join(", "))?;
        let m = &self.memory;
        writeln!(
            f,
            "memory: this run needs about {} (model weights {}, LoRA + optimizer {}, activations {})",
            gb(m.total()),
            gb(m.weights),
            gb(m.network),
            gb(m.activations)
        )?;
        writeln!(f, "graphics cards: {}", card_fit(m.total()))?;
        for note in &self.notes {
            if note.starts_with("warning: ") {
                writeln!(f, "{note}")?;
            } else {
                writeln!(f, "note: {note}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15(dtype: DType, optimizer: OptimizerKind, ga: u64, checkpointing: bool) -> MemoryEstimate {
        estimate_memory(&MemoryInputs {
            frozen_parameters: 1_066_235_307,
            activation_scale: 1.0,
            model_dtype: dtype,
            fp8_base: false,
            lora_dtype: DType::F32,
            trainable_parameters: 12_000_000,
            optimizer,
            gradient_accumulation_steps: ga,
            max_batch_latent_pixels: 64 * 64,
            gradient_checkpointing: checkpointing,
            checkpointing_factor: CHECKPOINTING_FACTOR,
        })
    }

    #[test]
    fn memory_estimate_follows_dtype_optimizer_accumulation_and_checkpointing() {
        let base = sd15(DType::F32, OptimizerKind::AdamW, 1, false);
        // The calibration point: SD1.5 f32 at 512², batch 1: 11.6 GB measured, −1.2 GB since.
        assert!((base.total() / 1e9 - 10.4).abs() < 0.5, "{base:?}");
        let half = sd15(DType::F16, OptimizerKind::AdamW, 1, false);
        assert!((half.weights * 2.0 - base.weights).abs() < 1.0 && half.activations < base.activations);
        assert!(sd15(DType::F32, OptimizerKind::AdamW8bit, 1, false).network < base.network);
        assert!(sd15(DType::F32, OptimizerKind::AdamW, 4, false).network > base.network);
        assert!(sd15(DType::F32, OptimizerKind::AdamW, 1, true).activations < base.activations / 2.0);
    }

    #[test]
    fn a_run_that_does_not_fit_the_available_memory_is_refused_naming_the_keys() {
        let estimate = MemoryEstimate { weights: 4e9, network: 3e9, activations: 6e9 };
        // The loaded weights are not counted again.
        assert!(check_memory(&estimate, Some(9.5e9)).is_ok());
        assert!(check_memory(&estimate, None).is_ok());
        let err = check_memory(&estimate, Some(8e9)).unwrap_err();
        for part in
            ["9.0 GB", "3.0 GB", "6.0 GB", "8.0 GB", "network_dim", "train_batch_size", "gradient_checkpointing"]
        {
            assert!(err.contains(part), "{part}: {err}");
        }
        let available = available_memory();
        if cfg!(target_os = "linux") {
            assert!(available.is_some_and(|b| b > 1e6), "{available:?}");
        }
    }

    #[test]
    fn planned_parameters_count_lora_locon_and_lycoris_shapes() {
        use lorakit_models::lora_inject::{NetworkKind, NetworkSpec};
        use lorakit_nn::lora::{LoraKind, LoraTarget, TargetGroup};
        let linear = LoraTarget {
            path: "a.to_q".into(),
            kohya_path: None,
            kind: LoraKind::Linear,
            in_dim: 320,
            out_dim: 640,
            group: TargetGroup::Attention,
        };
        let conv = LoraTarget {
            path: "b.conv1".into(),
            kohya_path: None,
            kind: LoraKind::Conv { kernel: 3, stride: 1, padding: 1 },
            in_dim: 64,
            out_dim: 32,
            group: TargetGroup::ConvBlock,
        };
        let targets = [linear, conv];
        let lora = NetworkSpec { rank: 4, conv_rank: None, ..NetworkSpec::default() };
        assert_eq!(planned_parameters(&targets, "lora_unet", &lora), 4 * (320 + 640));
        let locon = NetworkSpec { rank: 4, conv_rank: Some(2), ..NetworkSpec::default() };
        assert_eq!(planned_parameters(&targets, "lora_unet", &locon), 4 * (320 + 640) + 2 * (64 * 9 + 32));
        let loha = NetworkSpec {
            kind: NetworkKind::from_config(
                "lycoris.kohya",
                Some("loha"),
                None,
                lorakit_nn::lycoris::LokrOptions { factor: -1, decompose_both: false, full_matrix: false },
            )
            .unwrap(),
            rank: 4,
            conv_rank: Some(2),
            ..NetworkSpec::default()
        };
        // Two low-rank pairs per module; a conv's pairs are (out × r) and (r × in·k·k).
        assert_eq!(planned_parameters(&targets, "lora_unet", &loha), 2 * 4 * (320 + 640) + 2 * 2 * (64 * 9 + 32));
    }

    #[test]
    fn suspicious_settings_are_warned_with_their_keys() {
        let mut c = TrainConfig::default();
        assert!(config_warnings(&c, 100, 10).is_empty(), "{:?}", config_warnings(&c, 100, 10));
        c.network.network_dim = 8;
        c.network.network_alpha = 16.0;
        c.optimizer.text_encoder_lr = Some(crate::config::TextEncoderLr::All(1e-3));
        c.optimizer.unet_lr = Some(1e-4);
        let w = config_warnings(&c, 100, 60).join("\n");
        assert!(w.contains("network_alpha") && w.contains("text_encoder_lr") && w.contains("lr_warmup_steps"), "{w}");
        let mut c = TrainConfig::default();
        c.optimizer.optimizer_type = "AdamW8bit".into();
        c.optimizer.learning_rate = 5e-3;
        assert!(config_warnings(&c, 100, 0).join("").contains("8-bit"));
        let mut c = TrainConfig::default();
        (c.network.conv_dim, c.network.conv_alpha) = (Some(2), Some(4.0));
        assert!(config_warnings(&c, 100, 0).join("").contains("conv_alpha"));
        c.network.conv_dim = Some(0);
        assert!(config_warnings(&c, 100, 0).is_empty(), "no conv modules, no conv alpha warning");
    }
}
