//! The loss of one batch, assembled as sd-scripts assembles it (spec §7.2–§7.4): an element-wise
//! loss (l2, l1, huber, smooth_l1 with a per-sample threshold c(t)), its mean over everything but
//! the batch, the per-sample weight (prior_loss_weight for regularisation images), then the SNR
//! weightings in sd-scripts' order — min-SNR-γ, scale_v_pred_loss_like_noise_pred,
//! v_pred_like_loss, debiased estimation — and the mean over the batch.
//!
//! The SNR weightings are per-sample scalars that multiply the loss, so they are folded into one
//! factor per sample computed on the host in f64.

use candle_core::{DType, Result, Tensor};
use lorakit_models::schedule::{NoiseSchedule, Prediction};
use serde::{Deserialize, Serialize};

/// sd-scripts' `loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Squared error.
    #[default]
    L2,
    /// Absolute error.
    L1,
    /// Pseudo-Huber `2c·(√(d² + c²) − c)`.
    Huber,
    /// Pseudo-Huber without the `c` factor: `2·(√(d² + c²) − c)`.
    SmoothL1,
}

impl LossType {
    /// sd-scripts' name.
    pub fn name(self) -> &'static str {
        match self {
            LossType::L2 => "l2",
            LossType::L1 => "l1",
            LossType::Huber => "huber",
            LossType::SmoothL1 => "smooth_l1",
        }
    }
}

/// sd-scripts' `huber_schedule`: how the Huber threshold depends on the timestep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HuberSchedule {
    /// `c = huber_c · huber_scale`.
    Constant,
    /// `c = exp(−α·t)·huber_scale` with `α = −ln(huber_c)/N`.
    Exponential,
    /// `c = (1 − huber_c)/(1 + σ_t)² + huber_c`, `σ_t = √((1−ᾱ_t)/ᾱ_t)` (huber_scale not applied).
    #[default]
    Snr,
}

impl HuberSchedule {
    /// sd-scripts' name.
    pub fn name(self) -> &'static str {
        match self {
            HuberSchedule::Constant => "constant",
            HuberSchedule::Exponential => "exponential",
            HuberSchedule::Snr => "snr",
        }
    }
}

/// Every loss option of sd-scripts' LoRA training.
#[derive(Debug, Clone, PartialEq)]
pub struct LossOptions {
    /// Element-wise loss.
    pub loss_type: LossType,
    /// Huber threshold schedule (huber / smooth_l1 only).
    pub huber_schedule: HuberSchedule,
    /// Huber parameter.
    pub huber_c: f64,
    /// Huber multiplier (constant / exponential schedules).
    pub huber_scale: f64,
    /// Min-SNR-γ weighting.
    pub min_snr_gamma: Option<f64>,
    /// v-prediction loss scaled like ε-prediction loss.
    pub scale_v_pred_loss_like_noise_pred: bool,
    /// Adds `λ·loss/(s'/(s'+1))` (ε-prediction models only).
    pub v_pred_like_loss: Option<f64>,
    /// Debiased estimation weighting.
    pub debiased_estimation_loss: bool,
}

impl Default for LossOptions {
    fn default() -> Self {
        LossOptions {
            loss_type: LossType::L2,
            huber_schedule: HuberSchedule::Snr,
            huber_c: 0.1,
            huber_scale: 1.0,
            min_snr_gamma: None,
            scale_v_pred_loss_like_noise_pred: false,
            v_pred_like_loss: None,
            debiased_estimation_loss: false,
        }
    }
}

/// The Huber threshold c(t) of each sample (§7.3), or `None` for l2/l1.
pub fn huber_thresholds(opts: &LossOptions, timesteps: &[u32], schedule: &NoiseSchedule) -> Option<Vec<f64>> {
    if !matches!(opts.loss_type, LossType::Huber | LossType::SmoothL1) {
        return None;
    }
    let n = schedule.num_train_timesteps() as f64;
    Some(
        timesteps
            .iter()
            .map(|&t| match opts.huber_schedule {
                HuberSchedule::Constant => opts.huber_c * opts.huber_scale,
                HuberSchedule::Exponential => {
                    let alpha = -opts.huber_c.ln() / n;
                    (-alpha * f64::from(t)).exp() * opts.huber_scale
                }
                HuberSchedule::Snr => {
                    let a = f64::from(schedule.alpha_cumprod(t as usize));
                    let sigma = ((1.0 - a) / a).sqrt();
                    (1.0 - opts.huber_c) / (1.0 + sigma).powi(2) + opts.huber_c
                }
            })
            .collect(),
    )
}

/// The Huber threshold c(t) of each sample for objectives without an ᾱ table (rectified flow),
/// or `None` for l2/l1. `timesteps` are on the 0..`num_train_timesteps` scale sd-scripts hands
/// `get_huber_threshold_if_needed` (σ·1000 for Flux, the integer t for SD3). The `snr` schedule
/// needs ᾱ_t: sd-scripts raises NotImplementedError there, and so does this (the objective
/// refuses it before training starts).
pub fn huber_thresholds_at(
    opts: &LossOptions,
    timesteps: &[f32],
    num_train_timesteps: f64,
) -> std::result::Result<Option<Vec<f64>>, String> {
    if !matches!(opts.loss_type, LossType::Huber | LossType::SmoothL1) {
        return Ok(None);
    }
    let alpha = -opts.huber_c.ln() / num_train_timesteps;
    timesteps
        .iter()
        .map(|&t| match opts.huber_schedule {
            HuberSchedule::Constant => Ok(opts.huber_c * opts.huber_scale),
            HuberSchedule::Exponential => Ok((-alpha * f64::from(t)).exp() * opts.huber_scale),
            HuberSchedule::Snr => Err("loss.huber_schedule = \"snr\" needs a DDPM noise schedule".to_string()),
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(Some)
}

/// The element-wise loss between `pred` and `target` (both `[B, …]`), in f32.
pub fn elementwise_loss(
    pred: &Tensor,
    target: &Tensor,
    loss_type: LossType,
    huber_c: Option<&[f64]>,
) -> Result<Tensor> {
    let diff = (pred.to_dtype(DType::F32)? - target.to_dtype(DType::F32)?)?;
    match loss_type {
        LossType::L2 => diff.sqr(),
        LossType::L1 => diff.abs(),
        LossType::Huber | LossType::SmoothL1 => {
            let c = huber_c.ok_or_else(|| candle_core::Error::Msg("huber loss needs thresholds".into()))?;
            let mut shape = vec![1usize; diff.rank()];
            shape[0] = c.len();
            let c = Tensor::from_vec(c.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape, diff.device())?;
            // √(d² + c²) − c
            let core = diff.sqr()?.broadcast_add(&c.sqr()?)?.sqrt()?.broadcast_sub(&c)?;
            if loss_type == LossType::Huber {
                core.broadcast_mul(&c)? * 2.0
            } else {
                core * 2.0
            }
        }
    }
}

/// The product of the SNR weightings for a sample at timestep `t` (§7.4), applied in sd-scripts'
/// order (all of them multiply the loss, so the order does not change the value).
pub fn snr_factor(opts: &LossOptions, t: u32, schedule: &NoiseSchedule, prediction: Prediction) -> f64 {
    let s = f64::from(schedule.snr(t as usize));
    let v = prediction == Prediction::VPrediction;
    let capped = s.min(1000.0);
    let mut factor = 1.0;
    if let Some(gamma) = opts.min_snr_gamma {
        factor *= if v { s.min(gamma) / (s + 1.0) } else { s.min(gamma) / s };
    }
    if opts.scale_v_pred_loss_like_noise_pred {
        factor *= capped / (capped + 1.0);
    }
    if let Some(lambda) = opts.v_pred_like_loss {
        factor *= 1.0 + lambda / (capped / (capped + 1.0));
    }
    if opts.debiased_estimation_loss {
        factor *= if v { 1.0 / (capped + 1.0) } else { 1.0 / capped.sqrt() };
    }
    factor
}

/// The batch loss (a scalar): element-wise loss → × `mask` (alpha mask, `(B, 1, h, w)`, not
/// renormalised, as sd-scripts) → mean per sample → × `sample_weights` → × SNR factors → mean
/// over the batch.
#[allow(clippy::too_many_arguments)]
pub fn batch_loss(
    pred: &Tensor,
    target: &Tensor,
    timesteps: &[u32],
    sample_weights: &[f64],
    opts: &LossOptions,
    schedule: &NoiseSchedule,
    prediction: Prediction,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let c = huber_thresholds(opts, timesteps, schedule);
    let factors: Vec<f64> =
        timesteps.iter().zip(sample_weights).map(|(&t, &w)| w * snr_factor(opts, t, schedule, prediction)).collect();
    weighted_loss(pred, target, opts.loss_type, c.as_deref(), &factors, mask)
}

/// The loss assembly every objective shares (spec §7.2): element-wise loss (thresholds `huber_c`
/// per sample for huber / smooth_l1) → × `mask` → mean per sample → × `factors` (one per sample:
/// prior weight times the objective's weighting, rounded to f32) → mean over the batch.
pub fn weighted_loss(
    pred: &Tensor,
    target: &Tensor,
    loss_type: LossType,
    huber_c: Option<&[f64]>,
    factors: &[f64],
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let per_element = elementwise_loss(pred, target, loss_type, huber_c)?;
    let per_element = match mask {
        Some(m) => per_element.broadcast_mul(&m.to_dtype(per_element.dtype())?)?,
        None => per_element,
    };
    let per_sample = per_element.flatten_from(1)?.mean(1)?;
    let weights: Vec<f32> = factors.iter().map(|&f| f as f32).collect();
    let weights = Tensor::from_vec(weights, factors.len(), per_sample.device())?;
    (per_sample * weights)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_l2_is_the_mean_squared_error() {
        let s = NoiseSchedule::sd_default();
        let dev = candle_core::Device::Cpu;
        let p = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap();
        let t = Tensor::new(&[[0f32, 0.0], [0.0, 0.0]], &dev).unwrap();
        let l =
            batch_loss(&p, &t, &[10, 20], &[1.0, 1.0], &LossOptions::default(), &s, Prediction::Epsilon, None).unwrap();
        assert!((l.to_scalar::<f32>().unwrap() - 7.5).abs() < 1e-6);
        let w =
            batch_loss(&p, &t, &[10, 20], &[1.0, 0.5], &LossOptions::default(), &s, Prediction::Epsilon, None).unwrap();
        assert!((w.to_scalar::<f32>().unwrap() - (2.5 + 12.5 * 0.5) / 2.0).abs() < 1e-6);
        // A mask zeroes elements without renormalising: sample 0 keeps only its first element.
        let mask = Tensor::new(&[[1f32, 0.0], [1.0, 1.0]], &dev).unwrap();
        let m =
            batch_loss(&p, &t, &[10, 20], &[1.0, 1.0], &LossOptions::default(), &s, Prediction::Epsilon, Some(&mask))
                .unwrap();
        assert!((m.to_scalar::<f32>().unwrap() - (0.5 + 12.5) / 2.0).abs() < 1e-6);
    }
}
