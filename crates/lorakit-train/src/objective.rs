//! The training objective: everything in a training step that depends on *what* the denoiser is
//! trained to predict rather than on the family's architecture — the per-sample noise levels
//! drawn from the step's RNG, the noisy input, the target, the timestep and guidance the
//! denoiser receives, the preconditioning of its output and the loss weighting.
//!
//! - **DDPM** (SD 1.x/2.x/XL, spec §7.1–§7.4): integer `t ~ U[min_timestep, max_timestep)`,
//!   `x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·(ε [+ γξ])` with offset / pyramid noise, target ε or v, SNR
//!   weightings, Huber thresholds from ᾱ_t.
//! - **Rectified flow** as sd-scripts trains Flux.1 (§7.5, `flux_train_utils`) and SD3 (§7.6,
//!   `sd3_train_utils`): `σ ∈ (0, 1]` from one of the timestep samplings,
//!   `x_σ = (1−σ)·x₀ + σ·ε`, target `ε − x₀` (Flux) or `x₀` (SD3, whose prediction is always
//!   preconditioned as `x_σ − σ·pred`), weighting from `weighting_scheme`, distilled guidance.
//!
//! A model family says which one it is trained with ([`ObjectiveKind`], from
//! [`crate::model::TrainableModel::objective`]); [`Objective::new`] joins that with the config's
//! options, refusing options the objective does not have. The loop then calls
//! [`Objective::noise`] before the denoiser and [`Objective::loss`] after it, and never asks which
//! objective it runs.
//!
//! **Why an enum, not a trait object:** the objectives are a closed set fixed by the families
//! lorakit trains, each entirely described by its family and config; an enum keeps each one's
//! draw order and option checks in one visible `match`, makes adding an objective a compile
//! error everywhere it must be handled, and needs no boxing. A family picks its objective by
//! returning an [`ObjectiveKind`]; it never implements one.
//!
//! Every deterministic step takes its random draws as arguments ([`FlowObjective::levels`],
//! [`FlowObjective::noised`]) so tests can feed the draws sd-scripts made and compare numbers
//! (tools/reference/flow_objective_fixture.py); [`Objective::noise`] makes the draws from the
//! step's seeded RNG.

use candle_core::{DType, Tensor};
use lorakit_models::schedule::{NoiseSchedule, Prediction};
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::config::{FlowSection, TrainConfig};
use crate::error::{Result, TrainError};
use crate::loss::{batch_loss, huber_thresholds_at, weighted_loss, HuberSchedule, LossOptions, LossType};
use crate::noise::{normal, sample_noise, NoiseOptions};

/// Training timesteps of every flow-matching model sd-scripts trains (its
/// `FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)`).
pub const FLOW_TRAIN_TIMESTEPS: usize = 1000;

/// What a model family is trained with; the family fixes this, the config only tunes it.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectiveKind {
    /// DDPM with the family's noise schedule and prediction type (SD 1.x/2.x/XL).
    Ddpm {
        /// The schedule before any zero-terminal-SNR rescale (the config may ask for one).
        schedule: NoiseSchedule,
        /// ε or v.
        prediction: Prediction,
    },
    /// Rectified flow as sd-scripts trains this family.
    Flow(FlowFamily),
}

/// The two ways sd-scripts trains a rectified-flow model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowFamily {
    /// `flux_train_network.py`: `timestep_sampling` picks σ, target `ε − x₀`,
    /// `model_prediction_type` preconditions, guidance vector for guidance-distilled models.
    Flux,
    /// `sd3_train_network.py`: σ = t/1000 with integer t from the weighting-scheme density,
    /// `training_shift` and min/max_timestep; target `x₀`, prediction always `x_σ − σ·pred`.
    Sd3,
}

/// sd-scripts' `--timestep_sampling` (Flux): how σ is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSampling {
    /// An index into the shifted FlowMatchEulerDiscrete table, drawn from the
    /// `weighting_scheme` density (`discrete_flow_shift` applies through the table).
    #[default]
    Sigma,
    /// σ ~ U(0, 1).
    Uniform,
    /// σ = sigmoid(sigmoid_scale · N(0, 1)).
    Sigmoid,
    /// The sigmoid draw shifted by `discrete_flow_shift`: `s·z / (1 + (s−1)·z)`.
    Shift,
    /// The sigmoid draw shifted by Flux's resolution-dependent μ (from the packed sequence length).
    FluxShift,
}

/// sd-scripts' `--model_prediction_type` (Flux): what the loss compares with the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelPredictionType {
    /// The prediction as is (a velocity, like the target `ε − x₀`).
    Raw,
    /// `pred + x_σ`.
    Additive,
    /// `x_σ − σ·pred` (an x₀ estimate) and the `weighting_scheme` loss weight.
    SigmaScaled,
}

/// sd-scripts' `--weighting_scheme` (SD3's, shared by Flux): the density of the timestep draw
/// (`logit_normal`, `mode`) or a loss weight (`sigma_sqrt`, `cosmap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightingScheme {
    /// Uniform draws, weight 1 (sd-scripts' default; `none` is the same).
    #[default]
    #[serde(alias = "none")]
    Uniform,
    /// Uniform draws, weight σ⁻².
    SigmaSqrt,
    /// u = sigmoid(N(logit_mean, logit_std)), weight 1.
    LogitNormal,
    /// u = 1 − v − mode_scale·(cos²(πv/2) − 1 + v) with v ~ U(0, 1), weight 1.
    Mode,
    /// Uniform draws, weight 2 / (π(1 − 2σ + 2σ²)).
    Cosmap,
}

impl WeightingScheme {
    /// sd-scripts' name.
    pub fn name(self) -> &'static str {
        match self {
            WeightingScheme::Uniform => "uniform",
            WeightingScheme::SigmaSqrt => "sigma_sqrt",
            WeightingScheme::LogitNormal => "logit_normal",
            WeightingScheme::Mode => "mode",
            WeightingScheme::Cosmap => "cosmap",
        }
    }

    /// Whether the draw behind u is a standard normal (else a uniform on [0, 1)).
    pub fn draws_normal(self) -> bool {
        self == WeightingScheme::LogitNormal
    }

    /// sd-scripts' `compute_density_for_timestep_sampling` for one draw: `draw` is a standard
    /// normal for `logit_normal` (torch.normal's `mean + std·z`), a uniform on [0, 1) otherwise.
    /// Computed in f32 as torch computes it, so the index `⌊u·1000⌋` lands where torch's does.
    pub fn density(self, draw: f32, logit_mean: f64, logit_std: f64, mode_scale: f64) -> f32 {
        match self {
            WeightingScheme::LogitNormal => sigmoid_f32(draw * logit_std as f32 + logit_mean as f32),
            WeightingScheme::Mode => {
                let u = draw;
                let c = (std::f32::consts::PI * u / 2.0).cos();
                1.0 - u - mode_scale as f32 * (c * c - 1.0 + u)
            }
            _ => draw,
        }
    }

    /// sd-scripts' `compute_loss_weighting_for_sd3` at σ.
    pub fn loss_weight(self, sigma: f32) -> f64 {
        let s = f64::from(sigma);
        match self {
            WeightingScheme::SigmaSqrt => s.powi(-2),
            WeightingScheme::Cosmap => 2.0 / (std::f64::consts::PI * (1.0 - 2.0 * s + 2.0 * s * s)),
            _ => 1.0,
        }
    }
}

fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The FlowMatchEulerDiscrete table sd-scripts trains Flux with (and diffusers'
/// `FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift)`): `s = N/N, …, 1/N`,
/// `σ = shift·s / (1 + (shift−1)·s)`, `timestep = σ·N`, in f32 as torch computes them.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMatchSchedule {
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
}

impl FlowMatchSchedule {
    /// The table for `num_train_timesteps` steps and `shift` (descending σ, σ₀ = 1).
    pub fn new(num_train_timesteps: usize, shift: f64) -> Self {
        let n = num_train_timesteps as f32;
        let shift_f = shift as f32;
        let shift_m1 = (shift - 1.0) as f32;
        let sigmas: Vec<f32> = (1..=num_train_timesteps)
            .rev()
            .map(|i| {
                let s = i as f32 / n;
                shift_f * s / (1.0 + shift_m1 * s)
            })
            .collect();
        let timesteps = sigmas.iter().map(|s| s * n).collect();
        FlowMatchSchedule { sigmas, timesteps }
    }

    /// σ of each table entry, descending.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// σ·N of each table entry.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }
}

/// The noise level of one sample under rectified flow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowLevel {
    /// σ: the noise fraction of the noisy input.
    pub sigma: f32,
    /// What the denoiser receives as its timestep (0..1000 scale): σ·1000 for Flux, the
    /// integer t for SD3.
    pub timestep: f32,
}

/// The per-sample noise levels of a noised batch.
#[derive(Debug, Clone, PartialEq)]
pub enum NoiseLevels {
    /// DDPM integer timesteps.
    Ddpm(Vec<u32>),
    /// Rectified-flow σ and timesteps.
    Flow(Vec<FlowLevel>),
}

/// One micro-batch noised for the denoiser, with what the loss needs afterwards.
#[derive(Debug, Clone)]
pub struct NoisedBatch {
    /// The denoiser's input.
    pub noisy: Tensor,
    /// The denoiser's timestep per sample (f32 `[B]`; see
    /// [`crate::model::TrainableModel::denoise`] for each objective's scale).
    pub timesteps: Tensor,
    /// The distilled-guidance value per sample (f32 `[B]`), for objectives that give one.
    pub guidance: Option<Tensor>,
    /// What the (preconditioned) prediction is compared with.
    pub target: Tensor,
    /// The per-sample levels drawn.
    pub levels: NoiseLevels,
}

/// The objective of one run: the family's kind with the config's options, checked.
#[derive(Debug, Clone)]
pub enum Objective {
    /// DDPM (ε / v).
    Ddpm(DdpmObjective),
    /// Rectified flow.
    Flow(FlowObjective),
}

impl Objective {
    /// The objective `kind` with `config`'s options. Options of the other objective (which
    /// sd-scripts would ignore silently) are refused, every key named; options that this
    /// objective's own choices leave without effect, and defaults that differ from sd-scripts',
    /// come back as notes for the run's start.
    pub fn new(kind: ObjectiveKind, config: &TrainConfig) -> Result<(Objective, Vec<String>)> {
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        let objective = match kind {
            ObjectiveKind::Ddpm { schedule, prediction } => {
                let defaults = FlowSection::default();
                for key in config.flow.differing_keys(&defaults) {
                    problems.push(format!(
                        "flow.{key}: an option of the rectified-flow objective (Flux, SD3); this model trains with DDPM — remove it"
                    ));
                }
                let schedule = if config.loss.zero_terminal_snr { schedule.with_zero_terminal_snr() } else { schedule };
                Objective::Ddpm(DdpmObjective {
                    schedule,
                    prediction,
                    loss: config.loss.loss_options(),
                    noise: config.loss.noise_options(),
                    min_timestep: config.training.min_timestep as u32,
                    max_timestep: config.training.max_timestep as u32,
                })
            }
            ObjectiveKind::Flow(family) => {
                let flow = FlowObjective::from_config(family, config, &mut problems, &mut notes);
                Objective::Flow(flow)
            }
        };
        if !problems.is_empty() {
            return Err(TrainError::Other(problems.join("\n")));
        }
        Ok((objective, notes))
    }

    /// Draws this micro-batch's noise levels and noise from `rng` and noises `latents`
    /// (`(B, C, H, W)`, f32).
    pub fn noise(&self, latents: &Tensor, rng: &mut StdRng) -> Result<NoisedBatch> {
        match self {
            Objective::Ddpm(d) => d.noise(latents, rng),
            Objective::Flow(f) => f.noise(latents, rng),
        }
    }

    /// The timesteps a validation loss is measured at, as sd-scripts picks them: the four inner
    /// points of `linspace(min_timestep, max_timestep, 6)` cast to integers (0..1000: 200, 400,
    /// 600, 800). Flux, which has no timestep range, uses 0..1000.
    pub fn validation_timesteps(&self) -> Vec<u32> {
        let (lo, hi) = match self {
            Objective::Ddpm(d) => (d.min_timestep, d.max_timestep),
            Objective::Flow(f) if f.family == FlowFamily::Sd3 => f.timestep_range,
            Objective::Flow(_) => (0, 1000),
        };
        // numpy computes lo + i·(hi − lo)/5 in f64 and truncates toward zero.
        (1..5).map(|i| (f64::from(lo) + f64::from(i) * (f64::from(hi) - f64::from(lo)) / 5.0) as u32).collect()
    }

    /// Noises `latents` at timestep `t` for every sample, the rest drawn from `rng` as in
    /// training (noise offsets and pyramid noise included): sd-scripts' validation sets
    /// min = max = t. Rectified flow: σ = t/1000 (sd-scripts' Flux validation keeps drawing σ
    /// from `timestep_sampling`; a fixed σ makes the measurements comparable).
    pub fn noise_at(&self, latents: &Tensor, t: u32, rng: &mut StdRng) -> Result<NoisedBatch> {
        match self {
            Objective::Ddpm(d) => d.noise_with(latents, vec![t; latents.dim(0)?], rng),
            Objective::Flow(f) => {
                let dims = latents.dims().to_vec();
                let noise = normal(&dims, rng, latents.device())?;
                let level = FlowLevel { sigma: t as f32 / 1000.0, timestep: t as f32 };
                f.noised(latents, &noise, vec![level; dims[0]], None)
            }
        }
    }

    /// The batch loss of the denoiser's `pred` (f32) for `batch`: preconditioning, element-wise
    /// loss, `mask`, per-sample `sample_weights` (prior loss weight) and the objective's weighting.
    pub fn loss(
        &self,
        pred: &Tensor,
        batch: &NoisedBatch,
        sample_weights: &[f64],
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        match (self, &batch.levels) {
            (Objective::Ddpm(d), NoiseLevels::Ddpm(t)) => {
                Ok(batch_loss(pred, &batch.target, t, sample_weights, &d.loss, &d.schedule, d.prediction, mask)?)
            }
            (Objective::Flow(f), NoiseLevels::Flow(levels)) => f.loss(pred, batch, levels, sample_weights, mask),
            _ => Err(TrainError::Other("internal: a batch noised by another objective".into())),
        }
    }
}

/// DDPM as sd-scripts trains SD 1.x/2.x/XL.
#[derive(Debug, Clone)]
pub struct DdpmObjective {
    /// The training schedule (zero-terminal-SNR rescaled when asked).
    pub schedule: NoiseSchedule,
    /// ε or v.
    pub prediction: Prediction,
    /// Loss type, Huber and SNR options.
    pub loss: LossOptions,
    /// Offset, pyramid and input-perturbation noise.
    pub noise: NoiseOptions,
    /// Smallest timestep drawn.
    pub min_timestep: u32,
    /// One past the largest.
    pub max_timestep: u32,
}

impl DdpmObjective {
    fn noise(&self, latents: &Tensor, rng: &mut StdRng) -> Result<NoisedBatch> {
        let b = latents.dim(0)?;
        // Draw order (timesteps, then the noise) is part of the resume contract: keep it.
        let timesteps: Vec<u32> = (0..b).map(|_| rng.random_range(self.min_timestep..self.max_timestep)).collect();
        self.noise_with(latents, timesteps, rng)
    }

    /// [`DdpmObjective::noise`] at the given per-sample timesteps.
    fn noise_with(&self, latents: &Tensor, timesteps: Vec<u32>, rng: &mut StdRng) -> Result<NoisedBatch> {
        let device = latents.device();
        let b = timesteps.len();
        let (noise, input_noise) = sample_noise(latents, &self.noise, rng)?;
        let t_int = Tensor::from_vec(timesteps.clone(), b, device)?;
        let t_float = Tensor::from_vec(timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(), b, device)?;
        let noisy = self.schedule.add_noise(latents, &input_noise, &t_int)?;
        let target = self.schedule.target(self.prediction, latents, &noise, &t_int)?;
        Ok(NoisedBatch { noisy, timesteps: t_float, guidance: None, target, levels: NoiseLevels::Ddpm(timesteps) })
    }
}

/// Rectified flow as sd-scripts trains Flux.1 or SD3.
#[derive(Debug, Clone)]
pub struct FlowObjective {
    /// Which of sd-scripts' two flow trainers this follows.
    pub family: FlowFamily,
    /// How σ is drawn (Flux).
    pub timestep_sampling: TimestepSampling,
    /// Scale of the normal draw under the sigmoid samplings.
    pub sigmoid_scale: f64,
    /// The table's and `shift` sampling's shift (Flux).
    pub discrete_flow_shift: f64,
    /// Preconditioning of the prediction (SD3: always `SigmaScaled`).
    pub model_prediction_type: ModelPredictionType,
    /// Draw density / loss weight.
    pub weighting_scheme: WeightingScheme,
    /// `logit_normal` mean.
    pub logit_mean: f64,
    /// `logit_normal` standard deviation.
    pub logit_std: f64,
    /// `mode` scale.
    pub mode_scale: f64,
    /// The distilled-guidance value (Flux; `None` for SD3).
    pub guidance_scale: Option<f64>,
    /// SD3's shift of the u draw.
    pub training_shift: f64,
    /// SD3's t range `[min, max]` (u·(max−min)+min, truncated).
    pub timestep_range: (u32, u32),
    /// Input-perturbation γ and whether it is drawn U(0, γ) per batch (Flux).
    pub ip_noise_gamma: Option<(f64, bool)>,
    /// Loss type and Huber threshold options (the SNR weightings are DDPM-only).
    pub loss: LossOptions,
    /// The FlowMatchEulerDiscrete table (shift = `discrete_flow_shift`).
    pub table: FlowMatchSchedule,
}

impl FlowObjective {
    fn from_config(
        family: FlowFamily,
        config: &TrainConfig,
        problems: &mut Vec<String>,
        notes: &mut Vec<String>,
    ) -> FlowObjective {
        let f = &config.flow;
        let l = &config.loss;
        let t = &config.training;
        let name = match family {
            FlowFamily::Flux => "Flux",
            FlowFamily::Sd3 => "SD3",
        };
        fn refuse(problems: &mut Vec<String>, set: bool, key: &str, why: &str) {
            if set {
                problems.push(format!("{key}: {why} — remove it"));
            }
        }
        let ddpm_only =
            "a DDPM option; this model trains with rectified flow (sd-scripts' flow trainers ignore it silently)";
        refuse(problems, l.min_snr_gamma.is_some(), "loss.min_snr_gamma", ddpm_only);
        refuse(problems, l.scale_v_pred_loss_like_noise_pred, "loss.scale_v_pred_loss_like_noise_pred", ddpm_only);
        refuse(problems, l.v_pred_like_loss.is_some(), "loss.v_pred_like_loss", ddpm_only);
        refuse(problems, l.debiased_estimation_loss, "loss.debiased_estimation_loss", ddpm_only);
        refuse(problems, l.zero_terminal_snr, "loss.zero_terminal_snr", ddpm_only);
        refuse(problems, config.model.v_parameterization, "model.v_parameterization", ddpm_only);
        let no_flow_noise =
            "offset and pyramid noise are DDPM options; sd-scripts' flow trainers draw plain noise and ignore it";
        refuse(problems, l.noise_offset.is_some(), "loss.noise_offset", no_flow_noise);
        refuse(problems, l.noise_offset_random_strength, "loss.noise_offset_random_strength", no_flow_noise);
        refuse(problems, l.adaptive_noise_scale.is_some(), "loss.adaptive_noise_scale", no_flow_noise);
        refuse(problems, l.multires_noise_iterations.is_some(), "loss.multires_noise_iterations", no_flow_noise);
        refuse(
            problems,
            l.multires_noise_discount != NoiseOptions::default().multires_noise_discount,
            "loss.multires_noise_discount",
            no_flow_noise,
        );
        if matches!(l.loss_type, LossType::Huber | LossType::SmoothL1) && l.huber_schedule == HuberSchedule::Snr {
            problems.push(format!(
                "loss.huber_schedule = \"snr\": it needs a DDPM noise schedule (sd-scripts raises NotImplementedError for {name}); use \"exponential\" or \"constant\""
            ));
        }
        let d = FlowSection::default();
        let prediction = match family {
            FlowFamily::Flux => {
                let (lo, hi) = (t.min_timestep, t.max_timestep);
                let defaults = crate::config::TrainingSection::default();
                if lo != defaults.min_timestep || hi != defaults.max_timestep {
                    problems.push(format!(
                        "training.min_timestep = {lo} / max_timestep = {hi}: sd-scripts' Flux training ignores them (σ comes from flow.timestep_sampling) — remove them"
                    ));
                }
                refuse(
                    problems,
                    f.training_shift != d.training_shift,
                    "flow.training_shift",
                    "an SD3 option; Flux shifts with flow.discrete_flow_shift",
                );
                let prediction = f.model_prediction_type.unwrap_or(ModelPredictionType::Raw);
                if f.model_prediction_type.is_none() {
                    notes.push(format!(
                        "Flux objective: flow.model_prediction_type = \"raw\" and flow.guidance_scale = {} (lorakit's defaults, as sd-scripts' Flux guide trains; sd-scripts' own defaults are \"sigma_scaled\" and 3.5 — set them in [flow] to repeat an sd-scripts run that left them unset)",
                        f.guidance_scale
                    ));
                }
                if prediction == ModelPredictionType::SigmaScaled {
                    notes.push(
                        "warning: flow.model_prediction_type = \"sigma_scaled\" (sd-scripts' default) compares the x₀ estimate x_σ − σ·pred with the velocity target ε − x₀, as sd-scripts does; sd-scripts' Flux guide trains with \"raw\", lorakit's default".into(),
                    );
                }
                prediction
            }
            FlowFamily::Sd3 => {
                let flux_only = "a Flux option; SD3 draws t from flow.weighting_scheme, shifted by flow.training_shift";
                refuse(problems, f.timestep_sampling != d.timestep_sampling, "flow.timestep_sampling", flux_only);
                refuse(problems, f.sigmoid_scale != d.sigmoid_scale, "flow.sigmoid_scale", flux_only);
                refuse(problems, f.discrete_flow_shift != d.discrete_flow_shift, "flow.discrete_flow_shift", flux_only);
                refuse(
                    problems,
                    f.guidance_scale != d.guidance_scale,
                    "flow.guidance_scale",
                    "SD3 has no distilled guidance",
                );
                refuse(
                    problems,
                    l.ip_noise_gamma.is_some(),
                    "loss.ip_noise_gamma",
                    "sd-scripts' SD3 training draws no input-perturbation noise",
                );
                refuse(
                    problems,
                    f.model_prediction_type.is_some_and(|p| p != ModelPredictionType::SigmaScaled),
                    "flow.model_prediction_type",
                    "SD3 always trains the preconditioned x_σ − σ·pred against x₀ (sigma_scaled)",
                );
                ModelPredictionType::SigmaScaled
            }
        };
        if family == FlowFamily::Flux {
            notes.extend(ignored_flow_options(f, prediction));
        }
        FlowObjective {
            family,
            timestep_sampling: f.timestep_sampling,
            sigmoid_scale: f.sigmoid_scale,
            discrete_flow_shift: f.discrete_flow_shift,
            model_prediction_type: prediction,
            weighting_scheme: f.weighting_scheme,
            logit_mean: f.logit_mean,
            logit_std: f.logit_std,
            mode_scale: f.mode_scale,
            guidance_scale: (family == FlowFamily::Flux).then_some(f.guidance_scale),
            training_shift: f.training_shift,
            timestep_range: (t.min_timestep as u32, t.max_timestep as u32),
            ip_noise_gamma: l.ip_noise_gamma.filter(|g| *g != 0.0).map(|g| (g, l.ip_noise_gamma_random_strength)),
            loss: l.loss_options(),
            table: FlowMatchSchedule::new(FLOW_TRAIN_TIMESTEPS, f.discrete_flow_shift),
        }
    }

    /// Whether the draw behind each sample's level is a standard normal (else a uniform on [0, 1)).
    pub fn draws_normal(&self) -> bool {
        match (self.family, self.timestep_sampling) {
            (FlowFamily::Flux, TimestepSampling::Uniform) => false,
            (FlowFamily::Flux, TimestepSampling::Sigma) | (FlowFamily::Sd3, _) => self.weighting_scheme.draws_normal(),
            (FlowFamily::Flux, _) => true,
        }
    }

    /// The noise levels for one draw per sample (see [`FlowObjective::draws_normal`]) on latents
    /// of height `h` and width `w` — sd-scripts' `get_noisy_model_input_and_timesteps` of
    /// flux_train_utils / sd3_train_utils, in f32 as torch computes them. Under bf16/fp16
    /// sd-scripts also rounds the timesteps it hands the model (and, in `sigma` sampling, the σ
    /// it noises with) to the weight dtype; lorakit keeps both in f32 and lets the model cast its
    /// inputs, which only removes that rounding.
    pub fn levels(&self, draws: &[f32], h: usize, w: usize) -> Vec<FlowLevel> {
        let n = FLOW_TRAIN_TIMESTEPS as f32;
        let density = |d: f32| self.weighting_scheme.density(d, self.logit_mean, self.logit_std, self.mode_scale);
        let from_sigma = |sigma: f32| FlowLevel { sigma, timestep: sigma * n };
        let scale = self.sigmoid_scale as f32;
        draws
            .iter()
            .map(|&d| match (self.family, self.timestep_sampling) {
                (FlowFamily::Sd3, _) => {
                    let u = density(d);
                    let s = self.training_shift as f32;
                    let u = u * s / (1.0 + (self.training_shift - 1.0) as f32 * u);
                    let (lo, hi) = self.timestep_range;
                    let t = (u * (hi - lo) as f32 + lo as f32).floor();
                    FlowLevel { sigma: t / 1000.0, timestep: t }
                }
                (FlowFamily::Flux, TimestepSampling::Uniform) => from_sigma(d),
                (FlowFamily::Flux, TimestepSampling::Sigmoid) => from_sigma(sigmoid_f32(scale * d)),
                (FlowFamily::Flux, TimestepSampling::Shift) => {
                    let z = sigmoid_f32(d * scale);
                    let shift = self.discrete_flow_shift;
                    from_sigma(z * shift as f32 / (1.0 + (shift - 1.0) as f32 * z))
                }
                (FlowFamily::Flux, TimestepSampling::FluxShift) => {
                    let z = sigmoid_f32(d * scale);
                    // get_lin_function(y1=0.5, y2=1.15) at the packed sequence length, in f64.
                    let m = (1.15 - 0.5) / (4096.0 - 256.0);
                    let mu = m * ((h / 2) * (w / 2)) as f64 + (0.5 - m * 256.0);
                    let e = mu.exp() as f32;
                    // time_shift(mu, 1, z) = e^μ / (e^μ + (1/z − 1)); torch divides a scalar
                    // by a tensor as reciprocal × scalar.
                    let denom = e + (1.0 / z - 1.0);
                    from_sigma((1.0 / denom) * e)
                }
                (FlowFamily::Flux, TimestepSampling::Sigma) => {
                    let u = density(d);
                    // A u of exactly 1 (sigmoid saturating) would index past the table, which
                    // sd-scripts does not guard; the last entry is the nearest level.
                    let i = ((u * n) as i64).clamp(0, FLOW_TRAIN_TIMESTEPS as i64 - 1) as usize;
                    FlowLevel { sigma: self.table.sigmas()[i], timestep: self.table.timesteps()[i] }
                }
            })
            .collect()
    }

    /// The levels of `b` samples on latents of height `h` and width `w`, drawn from `rng`.
    pub fn draw_levels(&self, b: usize, h: usize, w: usize, rng: &mut StdRng) -> Vec<FlowLevel> {
        let normal_draws = self.draws_normal();
        let draws: Vec<f32> =
            (0..b).map(|_| if normal_draws { StandardNormal.sample(rng) } else { rng.random::<f32>() }).collect();
        self.levels(&draws, h, w)
    }

    /// The noised batch for `latents` with noise `noise` at `levels`; `ip` is input perturbation
    /// `(ξ, γ)`: the input is noised with `ε + γξ`, the target keeps ε.
    pub fn noised(
        &self,
        latents: &Tensor,
        noise: &Tensor,
        levels: Vec<FlowLevel>,
        ip: Option<(&Tensor, f32)>,
    ) -> Result<NoisedBatch> {
        let device = latents.device();
        let b = latents.dim(0)?;
        let per_sample = |v: Vec<f32>| -> Result<Tensor> {
            let mut shape = vec![1usize; latents.rank()];
            shape[0] = b;
            Ok(Tensor::from_vec(v, shape, device)?)
        };
        let sigma = per_sample(levels.iter().map(|l| l.sigma).collect())?;
        let keep = per_sample(levels.iter().map(|l| 1.0 - l.sigma).collect())?;
        let input_noise = match ip {
            Some((xi, gamma)) => (noise + (xi * f64::from(gamma))?)?,
            None => noise.clone(),
        };
        let noisy = (latents.broadcast_mul(&keep)? + input_noise.broadcast_mul(&sigma)?)?;
        let target = match self.family {
            FlowFamily::Flux => (noise - latents)?,
            FlowFamily::Sd3 => latents.clone(),
        };
        let timesteps = Tensor::from_vec(levels.iter().map(|l| l.timestep).collect::<Vec<_>>(), b, device)?;
        let guidance = match self.guidance_scale {
            Some(g) => Some(Tensor::full(g as f32, b, device)?),
            None => None,
        };
        Ok(NoisedBatch { noisy, timesteps, guidance, target, levels: NoiseLevels::Flow(levels) })
    }

    /// Draws in sd-scripts' order — noise ε, one level draw per sample, then ξ and the random
    /// γ strength for input perturbation — and noises `latents`.
    fn noise(&self, latents: &Tensor, rng: &mut StdRng) -> Result<NoisedBatch> {
        let device = latents.device();
        let dims = latents.dims().to_vec();
        let (b, h, w) = (dims[0], dims[dims.len() - 2], dims[dims.len() - 1]);
        let noise = normal(&dims, rng, device)?;
        let levels = self.draw_levels(b, h, w, rng);
        let xi = match self.ip_noise_gamma {
            Some((gamma, random)) => {
                let xi = normal(&dims, rng, device)?;
                let gamma = if random { rng.random::<f32>() * gamma as f32 } else { gamma as f32 };
                Some((xi, gamma))
            }
            None => None,
        };
        self.noised(latents, &noise, levels, xi.as_ref().map(|(x, g)| (x, *g)))
    }

    /// The prediction the loss compares (sd-scripts' `apply_model_prediction_type`; SD3 always
    /// `x_σ − σ·pred`) and each sample's weighting (`None` where sd-scripts applies none).
    pub fn precondition(&self, pred: &Tensor, batch: &NoisedBatch) -> Result<(Tensor, Option<Vec<f64>>)> {
        let NoiseLevels::Flow(levels) = &batch.levels else {
            return Err(TrainError::Other("internal: a batch noised by another objective".into()));
        };
        let noisy = batch.noisy.to_dtype(DType::F32)?;
        Ok(match self.model_prediction_type {
            ModelPredictionType::Raw => (pred.clone(), None),
            ModelPredictionType::Additive => ((pred + noisy)?, None),
            ModelPredictionType::SigmaScaled => {
                let mut shape = vec![1usize; pred.rank()];
                shape[0] = levels.len();
                let neg = Tensor::from_vec(levels.iter().map(|l| -l.sigma).collect::<Vec<_>>(), shape, pred.device())?;
                let weights = levels.iter().map(|l| self.weighting_scheme.loss_weight(l.sigma)).collect();
                ((pred.broadcast_mul(&neg)? + noisy)?, Some(weights))
            }
        })
    }

    fn loss(
        &self,
        pred: &Tensor,
        batch: &NoisedBatch,
        levels: &[FlowLevel],
        sample_weights: &[f64],
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (pred, weighting) = self.precondition(pred, batch)?;
        let timesteps: Vec<f32> = levels.iter().map(|l| l.timestep).collect();
        let c = huber_thresholds_at(&self.loss, &timesteps, FLOW_TRAIN_TIMESTEPS as f64)
            .map_err(|e| TrainError::Other(format!("internal: {e}")))?;
        let factors: Vec<f64> =
            sample_weights.iter().enumerate().map(|(i, w)| w * weighting.as_ref().map_or(1.0, |v| v[i])).collect();
        Ok(weighted_loss(&pred, &batch.target, self.loss.loss_type, c.as_deref(), &factors, mask)?)
    }
}

/// Warnings for Flux options that the chosen sampling and prediction type leave without
/// effect (sd-scripts ignores them silently; they are legal, so the run goes on).
fn ignored_flow_options(f: &FlowSection, prediction: ModelPredictionType) -> Vec<String> {
    let d = FlowSection::default();
    let sampling = f.timestep_sampling;
    let uses_density = sampling == TimestepSampling::Sigma;
    let uses_weight = prediction == ModelPredictionType::SigmaScaled;
    let sampling_name = serde_plain_name(&sampling);
    let mut ignored = Vec::new();
    if f.sigmoid_scale != d.sigmoid_scale
        && !matches!(sampling, TimestepSampling::Sigmoid | TimestepSampling::Shift | TimestepSampling::FluxShift)
    {
        ignored.push("flow.sigmoid_scale");
    }
    if f.discrete_flow_shift != d.discrete_flow_shift
        && !matches!(sampling, TimestepSampling::Sigma | TimestepSampling::Shift)
    {
        ignored.push("flow.discrete_flow_shift");
    }
    if f.weighting_scheme != d.weighting_scheme && !uses_density && !uses_weight {
        ignored.push("flow.weighting_scheme");
    }
    let density_used = |scheme: WeightingScheme| uses_density && f.weighting_scheme == scheme;
    if (f.logit_mean != d.logit_mean || f.logit_std != d.logit_std) && !density_used(WeightingScheme::LogitNormal) {
        ignored.push("flow.logit_mean / flow.logit_std");
    }
    if f.mode_scale != d.mode_scale && !density_used(WeightingScheme::Mode) {
        ignored.push("flow.mode_scale");
    }
    if ignored.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "warning: {} {} no effect with flow.timestep_sampling = \"{sampling_name}\" and flow.model_prediction_type = \"{}\" (sd-scripts ignores {} too)",
        ignored.join(", "),
        if ignored.len() == 1 { "has" } else { "have" },
        serde_plain_name(&prediction),
        if ignored.len() == 1 { "it" } else { "them" }
    )]
}

/// A unit enum's serde name (`"flux_shift"`).
fn serde_plain_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_one_table_is_linear_and_shift_bends_it_toward_noise() {
        let flat = FlowMatchSchedule::new(1000, 1.0);
        assert_eq!(flat.sigmas()[0], 1.0);
        assert_eq!(flat.sigmas()[999], 0.001);
        assert_eq!(flat.timesteps()[500], 500.0);
        let shifted = FlowMatchSchedule::new(1000, 3.0);
        // σ = 3s / (1 + 2s) at s = 0.5 is 0.75.
        assert!((shifted.sigmas()[500] - 0.75).abs() < 1e-7);
    }

    #[test]
    fn mode_density_keeps_the_ends() {
        let m = WeightingScheme::Mode;
        assert!((m.density(0.5, 0.0, 1.0, 1.29) - (0.5 - 1.29 * (0.5 - 1.0 + 0.5))).abs() < 1e-6);
        assert!((m.density(1.0 - 1e-7, 0.0, 1.0, 1.29)).abs() < 1e-5);
    }
}
