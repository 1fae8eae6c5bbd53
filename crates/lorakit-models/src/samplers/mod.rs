//! Inference samplers for sample images (spec §10), reproducing diffusers 0.32's schedulers as
//! `StableDiffusionPipeline` drives them with SD1.5's `scheduler_config.json` (`scaled_linear`,
//! `steps_offset` 1, `set_alpha_to_one` false, `clip_sample` false, each scheduler's default
//! `timestep_spacing`):
//!
//! | kind | diffusers scheduler | spacing | model input / init sigma |
//! |---|---|---|---|
//! | `euler` | `EulerDiscreteScheduler` | linspace (fractional t) | `x/√(σ²+1)`, σ_max |
//! | `euler_a` | `EulerAncestralDiscreteScheduler` | linspace (fractional t) | `x/√(σ²+1)`, σ_max |
//! | `ddim` | `DDIMScheduler`, η = 0 | leading + 1 | `x`, 1 |
//! | `dpmpp_2m` | `DPMSolverMultistepScheduler` (dpmsolver++, order 2, midpoint) | linspace (rounded) | `x`, 1 |
//! | `dpmpp_2m_karras` | same, `use_karras_sigmas` | Karras ρ = 7 | `x`, 1 |
//!
//! Scalar coefficients are computed in float32 in diffusers' order of operations (diffusers
//! holds them as 0-dim float32 tensors) and the latent is kept in float32 throughout, so runs
//! agree with diffusers to float32 rounding (checked by `tests/samplers.rs` against
//! `tools/reference/samplers_fixture.py`).
//!
//! Deliberate differences, all in cases where diffusers fails: DDIM at 1000 steps (diffusers
//! indexes ᾱ₁₀₀₀ and raises) clamps the first timestep to 999, which makes that step a no-op;
//! DPM++ 2M falls back to a first-order step where two consecutive sigmas coincide (≈1000
//! steps, where diffusers divides by zero and returns NaN).

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor};

use crate::schedule::{NoiseSchedule, Prediction};
use crate::{Error, Result};

pub mod flow;

/// Most inference steps a sampler accepts (sd-scripts clamps `--s` to 1…1000).
pub const MAX_STEPS: usize = 1000;

/// An inference sampler; parse one from a name with [`str::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// Euler (Karras et al. Algorithm 2 without churn), diffusers `EulerDiscreteScheduler`.
    Euler,
    /// Euler ancestral: Euler to σ_down plus fresh noise σ_up; the only stochastic sampler.
    EulerAncestral,
    /// DDIM with η = 0 (deterministic); sd-scripts' default sample sampler.
    Ddim,
    /// DPM-Solver++(2M), diffusers `DPMSolverMultistepScheduler` defaults.
    DpmPp2m,
    /// DPM-Solver++(2M) on Karras sigmas (ρ = 7).
    DpmPp2mKarras,
}

/// Accepted names (lower case), canonical names first, then sd-scripts' aliases.
const NAMES: &[(&str, SamplerKind)] = &[
    ("euler", SamplerKind::Euler),
    ("euler_a", SamplerKind::EulerAncestral),
    ("ddim", SamplerKind::Ddim),
    ("dpmpp_2m", SamplerKind::DpmPp2m),
    ("dpmpp_2m_karras", SamplerKind::DpmPp2mKarras),
    ("k_euler", SamplerKind::Euler),
    ("k_euler_a", SamplerKind::EulerAncestral),
    ("dpmsolver++", SamplerKind::DpmPp2m),
];

/// sd-scripts sampler names that lorakit does not implement (named in the error message).
const SD_SCRIPTS_ONLY: &[&str] =
    &["pndm", "lms", "k_lms", "heun", "dpm_2", "k_dpm_2", "dpm_2_a", "k_dpm_2_a", "dpmsolver", "dpmsingle"];

impl SamplerKind {
    /// Every sampler, in the order of the names in error messages.
    pub const ALL: [SamplerKind; 5] = [
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::Ddim,
        SamplerKind::DpmPp2m,
        SamplerKind::DpmPp2mKarras,
    ];

    /// The canonical name (what [`FromStr`] accepts and [`fmt::Display`] prints).
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler_a",
            SamplerKind::Ddim => "ddim",
            SamplerKind::DpmPp2m => "dpmpp_2m",
            SamplerKind::DpmPp2mKarras => "dpmpp_2m_karras",
        }
    }

    /// Whether the sampler draws fresh noise each step (only then is `noise` called).
    pub fn is_ancestral(self) -> bool {
        self == SamplerKind::EulerAncestral
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = Error;

    /// Case-insensitive; accepts the canonical names and sd-scripts' `k_euler`, `k_euler_a`
    /// and `dpmsolver++`. The error lists the valid names.
    fn from_str(s: &str) -> Result<Self> {
        let key = s.trim().to_ascii_lowercase();
        if let Some(&(_, kind)) = NAMES.iter().find(|(name, _)| *name == key) {
            return Ok(kind);
        }
        let valid = "euler, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras (or sd-scripts' k_euler, k_euler_a, dpmsolver++)";
        if SD_SCRIPTS_ONLY.contains(&key.as_str()) {
            Err(Error::Invalid(format!("sampler '{s}' (an sd-scripts sampler) is not implemented; use one of {valid}")))
        } else {
            Err(Error::Invalid(format!("unknown sampler '{s}'; expected one of {valid}")))
        }
    }
}

/// What to run: sampler, number of inference steps (1…1000) and what the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SamplerConfig {
    /// The sampler.
    pub kind: SamplerKind,
    /// Number of inference steps, i.e. model calls (1…[`MAX_STEPS`]).
    pub steps: usize,
    /// ε- or v-prediction; must match how the model was trained.
    pub prediction: Prediction,
}

impl SamplerConfig {
    /// A validated config (see [`validate`](Self::validate)).
    pub fn new(kind: SamplerKind, steps: usize, prediction: Prediction) -> Result<Self> {
        let cfg = Self { kind, steps, prediction };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks `1 ≤ steps ≤ 1000`, so a bad request fails before any model is loaded.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(Error::Invalid(format!(
                "sampler {}: steps must be between 1 and {MAX_STEPS}, got {}",
                self.kind, self.steps
            )));
        }
        Ok(())
    }
}

/// The timesteps the model is called with, in order, as diffusers' `scheduler.timesteps`
/// (fractional for Euler/Euler a, integers otherwise). Errors as [`SamplerConfig::validate`],
/// or when `steps` exceeds the schedule's training timesteps.
pub fn timesteps(cfg: &SamplerConfig, schedule: &NoiseSchedule) -> Result<Vec<f64>> {
    Ok(plan(cfg, schedule)?.timesteps())
}

/// The factor diffusers' `init_noise_sigma` applies to unit-variance initial noise: σ_max for
/// Euler/Euler a, 1 for DDIM and DPM++.
pub fn init_noise_sigma(cfg: &SamplerConfig, schedule: &NoiseSchedule) -> Result<f64> {
    Ok(match plan(cfg, schedule)? {
        Plan::K { init_sigma, .. } => f64::from(init_sigma),
        Plan::Ddim { .. } | Plan::Dpm { .. } => 1.0,
    })
}

/// Runs the sampler from `init_noise` (unit-variance Gaussian; the sampler scales it by
/// `init_noise_sigma` itself) and returns the denoised latent in float32.
///
/// `model(x_in, t)` returns the model output (ε or v, per `cfg.prediction`) for the scaled model
/// input `x_in` (in `init_noise`'s dtype — the model's compute dtype, so an f16 model gets f16
/// input while the sampler's own arithmetic stays float32 — with `init_noise`'s shape) at timestep `t` (f64; fractional for
/// Euler/Euler a exactly as diffusers passes it). CFG is done by the caller inside `model`; its
/// output may be any float dtype and is used in float32. `noise(shape)` supplies fresh N(0,1)
/// noise for ancestral steps (Euler a only, and not on the last step, whose noise scale is 0);
/// tests inject fixed noise. `on_step(done, total)` is called after each step with the number
/// of steps done.
///
/// Invalid configs (see [`SamplerConfig::validate`]) fail before the first model call with a
/// message naming the problem.
pub fn sample(
    cfg: &SamplerConfig,
    schedule: &NoiseSchedule,
    init_noise: &Tensor,
    model: &mut dyn FnMut(&Tensor, f64) -> candle_core::Result<Tensor>,
    noise: &mut dyn FnMut(&candle_core::Shape) -> candle_core::Result<Tensor>,
    on_step: &mut dyn FnMut(usize, usize),
) -> candle_core::Result<Tensor> {
    let plan = plan(cfg, schedule).map_err(candle_core::Error::msg)?;
    let x = init_noise.to_dtype(DType::F32)?;
    let mut run = Run { model, dims: x.dims().to_vec(), model_dtype: init_noise.dtype(), prediction: cfg.prediction };
    match plan {
        Plan::K { timesteps, sigmas, init_sigma } => {
            if cfg.kind.is_ancestral() {
                run.euler_ancestral(x, &timesteps, &sigmas, init_sigma, noise, on_step)
            } else {
                run.euler(x, &timesteps, &sigmas, init_sigma, on_step)
            }
        }
        Plan::Ddim { timesteps, step_ratio, .. } => {
            run.ddim(x, &timesteps, step_ratio, schedule.alphas_cumprod(), on_step)
        }
        Plan::Dpm { timesteps, sigmas } => run.dpmpp_2m(x, &timesteps, &sigmas, on_step),
    }
}

/// Timesteps and sigmas of one run, as diffusers' `set_timesteps` computes them.
enum Plan {
    /// Euler / Euler a: float32 timesteps, `n + 1` sigmas ending in 0, the initial noise scale.
    K { timesteps: Vec<f32>, sigmas: Vec<f32>, init_sigma: f32 },
    /// DDIM: integer timesteps (the first is `N` at `N` steps: clamped to `last` on use) and
    /// the step stride.
    Ddim { timesteps: Vec<usize>, step_ratio: usize, last: usize },
    /// DPM-Solver++: integer timesteps and `n + 1` sigmas ending in 0.
    Dpm { timesteps: Vec<usize>, sigmas: Vec<f32> },
}

impl Plan {
    fn timesteps(&self) -> Vec<f64> {
        match self {
            Plan::K { timesteps, .. } => timesteps.iter().map(|&t| f64::from(t)).collect(),
            Plan::Ddim { timesteps, last, .. } => timesteps.iter().map(|&t| t.min(*last) as f64).collect(),
            Plan::Dpm { timesteps, .. } => timesteps.iter().map(|&t| t as f64).collect(),
        }
    }
}

fn plan(cfg: &SamplerConfig, schedule: &NoiseSchedule) -> Result<Plan> {
    cfg.validate()?;
    let n_train = schedule.num_train_timesteps();
    let n = cfg.steps;
    if n > n_train {
        return Err(Error::Invalid(format!(
            "sampler {}: {n} steps exceed the schedule's {n_train} training timesteps",
            cfg.kind
        )));
    }
    let last = (n_train - 1) as f64;
    Ok(match cfg.kind {
        SamplerKind::Euler | SamplerKind::EulerAncestral => {
            // np.linspace(0, N-1, n, dtype=float32)[::-1]: computed in float64, then rounded.
            let timesteps: Vec<f32> = np_linspace(0.0, last, n).iter().rev().map(|&t| t as f32).collect();
            let table: Vec<f64> = schedule.sigmas().iter().map(|&s| f64::from(s)).collect();
            let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| np_interp(f64::from(t), &table) as f32).collect();
            sigmas.push(0.0);
            let init_sigma = sigmas.iter().copied().fold(0.0f32, f32::max);
            Plan::K { timesteps, sigmas, init_sigma }
        }
        SamplerKind::Ddim => {
            // "leading" spacing plus steps_offset 1.
            let step_ratio = n_train / n;
            let timesteps = (0..n).rev().map(|i| i * step_ratio + 1).collect();
            Plan::Ddim { timesteps, step_ratio, last: n_train - 1 }
        }
        SamplerKind::DpmPp2m => {
            // np.linspace(0, N-1, n+1).round()[::-1][:-1]; sigmas interpolated at integer t.
            let timesteps: Vec<usize> =
                np_linspace(0.0, last, n + 1).iter().skip(1).rev().map(|&t| t.round_ties_even() as usize).collect();
            let table = schedule.sigmas();
            let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| table.get(t).copied().unwrap_or(0.0)).collect();
            sigmas.push(0.0);
            Plan::Dpm { timesteps, sigmas }
        }
        SamplerKind::DpmPp2mKarras => {
            let table = schedule.sigmas();
            let log_sigmas: Vec<f32> = table.iter().map(|s| s.ln()).collect();
            let sigma_min = f64::from(table.first().copied().unwrap_or(0.0));
            let sigma_max = f64::from(table.last().copied().unwrap_or(0.0));
            let rho = 7.0f64;
            let min_inv_rho = sigma_min.powf(1.0 / rho);
            let max_inv_rho = sigma_max.powf(1.0 / rho);
            let karras: Vec<f64> = np_linspace(0.0, 1.0, n)
                .iter()
                .map(|&ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
                .collect();
            let timesteps =
                karras.iter().map(|&s| sigma_to_t(s, &log_sigmas).round_ties_even().max(0.0) as usize).collect();
            let mut sigmas: Vec<f32> = karras.iter().map(|&s| s as f32).collect();
            sigmas.push(0.0);
            Plan::Dpm { timesteps, sigmas }
        }
    })
}

/// `np.linspace(start, stop, num)` in float64, bit for bit: `i·step + start` with the last
/// element set to `stop`; a single element is `start`.
fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(l) = y.last_mut() {
        *l = stop;
    }
    y
}

/// `np.interp(x, arange(len(fp)), fp)`: linear interpolation on the integer grid.
fn np_interp(x: f64, fp: &[f64]) -> f64 {
    let (Some(&first), Some(&last)) = (fp.first(), fp.last()) else {
        return 0.0;
    };
    let top = (fp.len() - 1) as f64;
    if x.is_nan() || x <= 0.0 {
        return if x.is_nan() { x } else { first };
    }
    if x >= top {
        return last;
    }
    let j = x.floor() as usize;
    let (lo, hi) = (fp[j], fp[j + 1]);
    if x == j as f64 {
        return lo;
    }
    let slope = hi - lo;
    slope * (x - j as f64) + lo
}

/// diffusers' `_sigma_to_t`: fractional timestep whose log-sigma interpolates `log_sigmas`
/// (float32 table, increasing with t) at `ln σ`, clipped to the table.
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    let log_sigma = sigma.max(1e-10).ln();
    // Index of the last entry ≤ log σ (0 when there is none), at most n − 2.
    let low_idx = log_sigmas.iter().rposition(|&l| log_sigma - f64::from(l) >= 0.0).unwrap_or(0).min(n - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    // numpy: (f32 − f64) is float64, (f32 − f32) stays float32.
    let w = ((f64::from(low) - log_sigma) / f64::from(low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// `x · c` with a float32 scalar.
fn mul(x: &Tensor, c: f32) -> candle_core::Result<Tensor> {
    x.affine(f64::from(c), 0.0)
}

/// `x / c` with a float32 scalar, as a true division (not a multiplication by a rounded
/// reciprocal): the Euler steps cancel large terms, so every rounding that differs from
/// diffusers' is amplified.
fn div(x: &Tensor, c: f32) -> candle_core::Result<Tensor> {
    x.broadcast_div(&Tensor::new(c, x.device())?.to_dtype(x.dtype())?)
}

/// DPM-Solver's `_sigma_to_alpha_sigma_t` in float32: VP (α_t, σ_t) of a k-diffusion sigma.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// The model and what every step needs to call it.
struct Run<'a> {
    model: &'a mut dyn FnMut(&Tensor, f64) -> candle_core::Result<Tensor>,
    dims: Vec<usize>,
    /// The dtype the model computes in (`init_noise`'s): its input is cast to it, as diffusers
    /// feeds an f16 UNet f16 latents while the scheduler works in float32.
    model_dtype: DType,
    prediction: Prediction,
}

impl Run<'_> {
    fn call(&mut self, x_in: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let out = (self.model)(&x_in.to_dtype(self.model_dtype)?, t)?;
        if out.dims() != self.dims.as_slice() {
            candle_core::bail!(
                "sampler: the model returned shape {:?} for a latent of shape {:?}",
                out.dims(),
                self.dims
            );
        }
        out.to_dtype(DType::F32)
    }

    /// x₀ estimate of the k-diffusion samplers (`x = x₀ + σ·ε`).
    fn k_denoised(&self, x: &Tensor, out: &Tensor, sigma: f32) -> candle_core::Result<Tensor> {
        match self.prediction {
            Prediction::Epsilon => x.sub(&mul(out, sigma)?),
            Prediction::VPrediction => {
                let c = (sigma * sigma + 1.0).sqrt();
                mul(out, -sigma / c)?.add(&div(x, sigma * sigma + 1.0)?)
            }
        }
    }

    fn euler(
        &mut self,
        mut x: Tensor,
        timesteps: &[f32],
        sigmas: &[f32],
        init_sigma: f32,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> candle_core::Result<Tensor> {
        let n = timesteps.len();
        x = mul(&x, init_sigma)?;
        for (i, &t) in timesteps.iter().enumerate() {
            let (sigma, next) = (sigmas[i], sigmas[i + 1]);
            let x_in = div(&x, (sigma * sigma + 1.0).sqrt())?;
            let out = self.call(&x_in, f64::from(t))?;
            let x0 = self.k_denoised(&x, &out, sigma)?;
            let derivative = div(&x.sub(&x0)?, sigma)?;
            x = x.add(&mul(&derivative, next - sigma)?)?;
            on_step(i + 1, n);
        }
        Ok(x)
    }

    fn euler_ancestral(
        &mut self,
        mut x: Tensor,
        timesteps: &[f32],
        sigmas: &[f32],
        init_sigma: f32,
        noise: &mut dyn FnMut(&candle_core::Shape) -> candle_core::Result<Tensor>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> candle_core::Result<Tensor> {
        let n = timesteps.len();
        x = mul(&x, init_sigma)?;
        for (i, &t) in timesteps.iter().enumerate() {
            let (from, to) = (sigmas[i], sigmas[i + 1]);
            let x_in = div(&x, (from * from + 1.0).sqrt())?;
            let out = self.call(&x_in, f64::from(t))?;
            let x0 = self.k_denoised(&x, &out, from)?;
            let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
            let down = (to * to - up * up).max(0.0).sqrt();
            let derivative = div(&x.sub(&x0)?, from)?;
            x = x.add(&mul(&derivative, down - from)?)?;
            if up > 0.0 {
                let z = noise(x.shape())?;
                if z.dims() != x.dims() {
                    candle_core::bail!("sampler euler_a: noise has shape {:?}, the latent {:?}", z.dims(), x.dims());
                }
                x = x.add(&mul(&z.to_dtype(DType::F32)?, up)?)?;
            }
            on_step(i + 1, n);
        }
        Ok(x)
    }

    fn ddim(
        &mut self,
        mut x: Tensor,
        timesteps: &[usize],
        step_ratio: usize,
        alphas_cumprod: &[f32],
        on_step: &mut dyn FnMut(usize, usize),
    ) -> candle_core::Result<Tensor> {
        let n = timesteps.len();
        let top = alphas_cumprod.len().saturating_sub(1);
        let acp = |t: usize| alphas_cumprod.get(t.min(top)).copied().unwrap_or(1.0);
        // set_alpha_to_one = false: the step past t = 0 lands on ᾱ₀.
        let final_acp = acp(0);
        for (i, &t) in timesteps.iter().enumerate() {
            let tc = t.min(top);
            let a_t = acp(tc);
            let a_prev = t.checked_sub(step_ratio).map_or(final_acp, acp);
            let out = self.call(&x, tc as f64)?;
            let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
            let (x0, eps) = match self.prediction {
                Prediction::Epsilon => (div(&x.sub(&mul(&out, sb)?)?, sa)?, out),
                Prediction::VPrediction => (mul(&x, sa)?.sub(&mul(&out, sb)?)?, mul(&out, sa)?.add(&mul(&x, sb)?)?),
            };
            // η = 0: no variance term, (1 − ᾱ_prev − 0)^½ · ε̂.
            x = mul(&x0, a_prev.sqrt())?.add(&mul(&eps, (1.0 - a_prev).sqrt())?)?;
            on_step(i + 1, n);
        }
        Ok(x)
    }

    fn dpmpp_2m(
        &mut self,
        mut x: Tensor,
        timesteps: &[usize],
        sigmas: &[f32],
        on_step: &mut dyn FnMut(usize, usize),
    ) -> candle_core::Result<Tensor> {
        let n = timesteps.len();
        let lambda = |a: f32, s: f32| a.ln() - s.ln();
        let mut prev_m: Option<Tensor> = None;
        for (i, &t) in timesteps.iter().enumerate() {
            let out = self.call(&x, t as f64)?;
            let (alpha_s0, sigma_s0) = alpha_sigma(sigmas[i]);
            let m0 = match self.prediction {
                Prediction::Epsilon => div(&x.sub(&mul(&out, sigma_s0)?)?, alpha_s0)?,
                Prediction::VPrediction => mul(&x, alpha_s0)?.sub(&mul(&out, sigma_s0)?)?,
            };
            let (alpha_t, sigma_t) = alpha_sigma(sigmas[i + 1]);
            let lambda_s0 = lambda(alpha_s0, sigma_s0);
            let h = lambda(alpha_t, sigma_t) - lambda_s0;
            let coef = alpha_t * ((-h).exp() - 1.0);
            let base = mul(&x, sigma_t / sigma_s0)?.sub(&mul(&m0, coef)?)?;
            // First order on the first step and (lower_order_final, final sigma 0) the last.
            let second = match (&prev_m, i > 0 && i + 1 < n) {
                (Some(m1), true) => {
                    let (alpha_s1, sigma_s1) = alpha_sigma(sigmas[i - 1]);
                    let h_0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
                    // Coinciding sigmas (h or h_0 = 0) make diffusers' D1 0/0; stay first order.
                    (h != 0.0 && h_0 != 0.0).then(|| (h_0 / h, m1))
                }
                _ => None,
            };
            x = match second {
                Some((r0, m1)) => {
                    let d1 = mul(&m0.sub(m1)?, 1.0 / r0)?;
                    base.sub(&mul(&d1, 0.5 * coef)?)?
                }
                None => base,
            };
            prev_m = Some(m0);
            on_step(i + 1, n);
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy_shape() {
        assert_eq!(np_linspace(0.0, 999.0, 1), vec![0.0]);
        assert_eq!(np_linspace(0.0, 999.0, 2), vec![0.0, 999.0]);
        assert_eq!(np_linspace(0.0, 1.0, 5), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn every_sampler_feeds_the_model_its_own_dtype_and_returns_f32() {
        // An f16 model (training's mixed_precision = "fp16" samples) gets f16 input from every
        // sampler; the sampler's latent stays f32.
        let schedule = NoiseSchedule::sd_default();
        for dtype in [DType::F16, DType::F32] {
            for kind in SamplerKind::ALL {
                let init = Tensor::ones((1, 4, 2, 2), dtype, &candle_core::Device::Cpu).unwrap();
                let mut seen = Vec::new();
                let mut model = |x: &Tensor, _t: f64| {
                    seen.push(x.dtype());
                    // A model in `dtype` fails on any other input dtype, as the UNet's matmuls do.
                    if x.dtype() != dtype {
                        candle_core::bail!("dtype mismatch: {:?} input for a {dtype:?} model", x.dtype());
                    }
                    x * 0.1
                };
                let mut noise = |shape: &candle_core::Shape| Tensor::zeros(shape, dtype, &candle_core::Device::Cpu);
                let cfg = SamplerConfig::new(kind, 3, Prediction::Epsilon).unwrap();
                let out = sample(&cfg, &schedule, &init, &mut model, &mut noise, &mut |_, _| {})
                    .unwrap_or_else(|e| panic!("{kind} with a {dtype:?} model: {e}"));
                assert_eq!(out.dtype(), DType::F32, "{kind}");
                assert_eq!(seen, vec![dtype; 3], "{kind}");
            }
        }
    }

    #[test]
    fn interp_ends_and_grid_points() {
        let fp = [1.0, 2.0, 4.0];
        assert_eq!(np_interp(-1.0, &fp), 1.0);
        assert_eq!(np_interp(1.0, &fp), 2.0);
        assert_eq!(np_interp(1.5, &fp), 3.0);
        assert_eq!(np_interp(7.0, &fp), 4.0);
    }
}
