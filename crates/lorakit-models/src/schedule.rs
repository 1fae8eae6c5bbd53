//! The DDPM noise schedule of Stable Diffusion 1.x/2.x/XL (spec §7.1): scaled-linear betas,
//! ᾱ_t, the SNR table for loss weighting (§7.4), Lin et al.'s zero-terminal-SNR rescale, the
//! k-diffusion sigmas the samplers walk, and the training-side `add_noise` / `velocity`.
//!
//! Every table is computed the way torch computes it in diffusers (float32 element-wise math,
//! `cumprod` accumulated in float64 as torch's CPU kernel does), so the values agree with
//! diffusers' `DDPMScheduler` to float32 rounding and the samplers built on them reproduce
//! diffusers' timesteps exactly (including `torch.linspace`'s fused multiply-add, see
//! [`torch_linspace_f32`]).

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Number of training timesteps of every Stable Diffusion UNet.
pub const SD_TRAIN_TIMESTEPS: usize = 1000;
/// `beta_start` of SD1.x/2.x/XL (`scaled_linear`).
pub const SD_BETA_START: f64 = 0.00085;
/// `beta_end` of SD1.x/2.x/XL (`scaled_linear`).
pub const SD_BETA_END: f64 = 0.012;

/// What the UNet predicts; decides the training target and how samplers recover x₀.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Prediction {
    /// ε-prediction: the model predicts the added noise (SD1.x, SD2-base, SDXL).
    #[default]
    Epsilon,
    /// v-prediction, `v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀` (SD2 768-v; sd-scripts `--v_parameterization`).
    VPrediction,
}

/// A discrete DDPM schedule of `N` training timesteps (`t = 0..N`, t = 0 the least noisy).
///
/// Cheap to clone (three tables of N floats). Build it with [`NoiseSchedule::sd_default`] (or
/// `Default`), optionally followed by [`NoiseSchedule::with_zero_terminal_snr`].
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    /// sd-scripts' `all_snr`: always from the schedule *before* any zero-terminal-SNR rescale.
    snr: Vec<f32>,
    zero_terminal_snr: bool,
}

impl Default for NoiseSchedule {
    fn default() -> Self {
        Self::sd_default()
    }
}

impl NoiseSchedule {
    /// The Stable Diffusion schedule: 1000 steps, `scaled_linear` from 0.00085 to 0.012.
    pub fn sd_default() -> Self {
        Self::from_betas(scaled_linear_betas(SD_TRAIN_TIMESTEPS, SD_BETA_START, SD_BETA_END))
    }

    /// A `scaled_linear` schedule: `betas = linspace(√beta_start, √beta_end, N)²` in float32,
    /// as diffusers builds it. Errors on `N < 2` or betas outside (0, 1).
    pub fn scaled_linear(num_train_timesteps: usize, beta_start: f64, beta_end: f64) -> Result<Self> {
        if num_train_timesteps < 2 {
            return Err(Error::Invalid(format!(
                "noise schedule: need at least 2 training timesteps, got {num_train_timesteps}"
            )));
        }
        let ok = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
        if !ok(beta_start) || !ok(beta_end) {
            return Err(Error::Invalid(format!(
                "noise schedule: beta_start and beta_end must lie in (0, 1), got {beta_start} and {beta_end}"
            )));
        }
        Ok(Self::from_betas(scaled_linear_betas(num_train_timesteps, beta_start, beta_end)))
    }

    fn from_betas(betas: Vec<f32>) -> Self {
        let alphas_cumprod = cumprod_alphas(&betas);
        // sd-scripts prepare_scheduler_for_custom_training: (√ᾱ / √(1−ᾱ))² in float32.
        let snr = alphas_cumprod
            .iter()
            .map(|&a| {
                let r = a.sqrt() / (1.0 - a).sqrt();
                r * r
            })
            .collect();
        Self { betas, alphas_cumprod, snr, zero_terminal_snr: false }
    }

    /// Rescales the betas so that ᾱ at the last timestep is exactly 0 while √ᾱ₀ is unchanged
    /// (Lin et al. 2023; diffusers/sd-scripts `rescale_zero_terminal_snr`, `--zero_terminal_snr`).
    ///
    /// As in sd-scripts, [`snr`](Self::snr) keeps the table of the original schedule (the
    /// rescaled one would be 0 at the last step and break min-SNR weighting). Applying it twice
    /// is a no-op.
    pub fn with_zero_terminal_snr(mut self) -> Self {
        if self.zero_terminal_snr {
            return self;
        }
        let betas = rescale_zero_terminal_snr(&self.betas);
        self.alphas_cumprod = cumprod_alphas(&betas);
        self.betas = betas;
        self.zero_terminal_snr = true;
        self
    }

    /// Whether [`with_zero_terminal_snr`](Self::with_zero_terminal_snr) was applied.
    pub fn is_zero_terminal_snr(&self) -> bool {
        self.zero_terminal_snr
    }

    /// Number of training timesteps `N` (1000 for SD).
    pub fn num_train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// β_t for t = 0..N.
    pub fn betas(&self) -> &[f32] {
        &self.betas
    }

    /// ᾱ_t = ∏_{s≤t} (1 − β_s) for t = 0..N (exactly 0 at the last step with zero terminal SNR).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// sd-scripts' SNR table `ᾱ_t / (1 − ᾱ_t)` for min-SNR / debiased weighting, always from
    /// the schedule before any zero-terminal-SNR rescale (spec §7.1 caveat).
    pub fn snr_table(&self) -> &[f32] {
        &self.snr
    }

    fn at(table: &[f32], t: usize) -> f32 {
        // Tables are never empty (N ≥ 2), so `last` always exists.
        table.get(t).or(table.last()).copied().unwrap_or(0.0)
    }

    /// ᾱ_t (t past the end reads the last entry).
    pub fn alpha_cumprod(&self, t: usize) -> f32 {
        Self::at(&self.alphas_cumprod, t)
    }

    /// √ᾱ_t, the signal coefficient of x_t (t past the end reads the last entry).
    pub fn sqrt_alpha_prod(&self, t: usize) -> f32 {
        self.alpha_cumprod(t).sqrt()
    }

    /// √(1 − ᾱ_t), the noise coefficient of x_t (t past the end reads the last entry).
    pub fn sqrt_one_minus(&self, t: usize) -> f32 {
        (1.0 - self.alpha_cumprod(t)).sqrt()
    }

    /// sd-scripts' SNR(t) for loss weighting; see [`snr_table`](Self::snr_table).
    pub fn snr(&self, t: usize) -> f32 {
        Self::at(&self.snr, t)
    }

    /// ᾱ_t as diffusers' k-diffusion schedulers (Euler, Euler a, DPM-Solver) hold it: with zero
    /// terminal SNR the last entry is 2⁻²⁴ instead of 0, so the largest sigma stays finite (4096).
    pub fn sampler_alphas_cumprod(&self) -> Vec<f32> {
        let mut acp = self.alphas_cumprod.clone();
        if self.zero_terminal_snr {
            if let Some(last) = acp.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        acp
    }

    /// k-diffusion sigmas σ_t = √((1 − ᾱ_t)/ᾱ_t) for t = 0..N (increasing with t; the noisy
    /// latent is `x₀ + σ·ε` in that parameterisation), in float32 as diffusers computes them,
    /// from [`sampler_alphas_cumprod`](Self::sampler_alphas_cumprod).
    pub fn sigmas(&self) -> Vec<f32> {
        self.sampler_alphas_cumprod().iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
    }

    /// Forward process for training: `x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·noise` with one timestep per
    /// sample (diffusers `DDPMScheduler.add_noise`).
    ///
    /// `x0` and `noise` share a shape `[B, …]`; `timesteps` is an integer tensor (u8/u32/i64) of
    /// shape `[B]` with values below N. The coefficients are read on the host (one small copy
    /// of `timesteps`) in float32 and cast to `x0`'s dtype.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, timesteps: &Tensor) -> candle_core::Result<Tensor> {
        let (a, s) = self.coefficients(x0, noise, timesteps, "add_noise")?;
        x0.broadcast_mul(&a)?.add(&noise.broadcast_mul(&s)?)
    }

    /// The v-prediction target `v = √ᾱ_t·noise − √(1−ᾱ_t)·x₀` (diffusers `get_velocity`); same
    /// arguments as [`add_noise`](Self::add_noise).
    pub fn velocity(&self, x0: &Tensor, noise: &Tensor, timesteps: &Tensor) -> candle_core::Result<Tensor> {
        let (a, s) = self.coefficients(x0, noise, timesteps, "velocity")?;
        noise.broadcast_mul(&a)?.sub(&x0.broadcast_mul(&s)?)
    }

    /// The training target for `prediction`: the noise itself, or [`velocity`](Self::velocity).
    pub fn target(
        &self,
        prediction: Prediction,
        x0: &Tensor,
        noise: &Tensor,
        timesteps: &Tensor,
    ) -> candle_core::Result<Tensor> {
        match prediction {
            Prediction::Epsilon => Ok(noise.clone()),
            Prediction::VPrediction => self.velocity(x0, noise, timesteps),
        }
    }

    /// Per-sample `(√ᾱ_t, √(1−ᾱ_t))` as `[B, 1, 1, …]` tensors in `x0`'s dtype and device.
    fn coefficients(
        &self,
        x0: &Tensor,
        noise: &Tensor,
        timesteps: &Tensor,
        what: &str,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if x0.dims() != noise.dims() {
            candle_core::bail!("{what}: x0 {:?} and noise {:?} must have the same shape", x0.dims(), noise.dims());
        }
        let b = match x0.dims().first() {
            Some(&b) => b,
            None => candle_core::bail!("{what}: x0 must have a batch dimension, got a scalar"),
        };
        if timesteps.dims() != [b] {
            candle_core::bail!("{what}: timesteps must have shape [{b}] (one per sample), got {:?}", timesteps.dims());
        }
        if !matches!(timesteps.dtype(), DType::U8 | DType::U32 | DType::I64) {
            candle_core::bail!("{what}: timesteps must be an integer tensor (u8/u32/i64), got {:?}", timesteps.dtype());
        }
        let n = self.num_train_timesteps();
        let ts = timesteps.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        let mut a = Vec::with_capacity(b);
        let mut s = Vec::with_capacity(b);
        for &t in &ts {
            let idx = usize::try_from(t).ok().filter(|&i| i < n);
            let Some(idx) = idx else {
                candle_core::bail!("{what}: timestep {t} outside 0..{n}");
            };
            a.push(self.sqrt_alpha_prod(idx));
            s.push(self.sqrt_one_minus(idx));
        }
        let mut shape = vec![1usize; x0.rank()];
        shape[0] = b;
        let dev = x0.device();
        let a = Tensor::from_vec(a, shape.as_slice(), dev)?.to_dtype(x0.dtype())?;
        let s = Tensor::from_vec(s, shape.as_slice(), dev)?.to_dtype(x0.dtype())?;
        Ok((a, s))
    }
}

/// `torch.linspace(start, end, n, dtype=float32)` as torch's CPU kernel computes it: the step
/// is taken in float32, the second half is counted back from `end` (both ends exact), and
/// `start + step·i` is one fused multiply-add (torch's x86-64 kernels are built with FMA
/// contraction; this reproduces torch 2.6 bit for bit).
pub(crate) fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let start = start as f32;
    let end = end as f32;
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((n - i - 1) as f32, end) })
        .collect()
}

fn scaled_linear_betas(n: usize, beta_start: f64, beta_end: f64) -> Vec<f32> {
    torch_linspace_f32(beta_start.sqrt(), beta_end.sqrt(), n).into_iter().map(|b| b * b).collect()
}

/// `torch.cumprod(1 - betas)`: float32 factors, float64 running product (torch's CPU kernel
/// accumulates in `acc_type<float> = double`), each output rounded to float32.
fn cumprod_alphas(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= f64::from(1.0f32 - b);
            acc as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr`, step for step in float32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let acp = cumprod_alphas(betas);
    let mut sqrt: Vec<f32> = acp.iter().map(|a| a.sqrt()).collect();
    let s0 = sqrt.first().copied().unwrap_or(1.0);
    let st = sqrt.last().copied().unwrap_or(0.0);
    let scale = s0 / (s0 - st);
    for v in &mut sqrt {
        *v -= st;
        *v *= scale;
    }
    let bar: Vec<f32> = sqrt.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    if let Some(&first) = bar.first() {
        out.push(1.0 - first);
    }
    for w in bar.windows(2) {
        out.push(1.0 - w[1] / w[0]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_schedule_ends() {
        let s = NoiseSchedule::sd_default();
        assert_eq!(s.num_train_timesteps(), 1000);
        assert!((s.betas()[0] - 0.00085).abs() < 1e-9);
        assert!((s.betas()[999] - 0.012).abs() < 1e-8);
        let z = s.clone().with_zero_terminal_snr();
        assert_eq!(z.alphas_cumprod()[999], 0.0);
        assert!((z.alphas_cumprod()[0] - s.alphas_cumprod()[0]).abs() < 1e-6);
        assert_eq!(z.snr_table(), s.snr_table());
        assert!((z.sigmas()[999] - 4096.0).abs() < 1e-3);
        assert_eq!(z.clone().with_zero_terminal_snr(), z);
    }

    #[test]
    fn bad_schedule_is_an_error() {
        assert!(NoiseSchedule::scaled_linear(1, 0.1, 0.2).is_err());
        assert!(NoiseSchedule::scaled_linear(10, 0.0, 0.2).is_err());
        assert!(NoiseSchedule::scaled_linear(10, 0.1, f64::NAN).is_err());
    }
}
