//! Samplers for rectified-flow models (Flux, SD3): the model predicts the velocity
//! `ε − x₀` at noise level σ ∈ [0, 1] and the Euler step moves `x ← x + (σ_next − σ)·v` from σ = 1
//! (pure noise) to 0.
//!
//! Flux's schedule is BFL's `get_schedule` (sd-scripts' `flux_train_utils.get_schedule`): `steps`
//! equal intervals of [0, 1], shifted towards high noise by `σ' = e^μ / (e^μ + 1/σ − 1)` with
//! μ linear in the packed image's token count (0.5 at 256 tokens, 1.15 at 4096) — diffusers'
//! `FlowMatchEulerDiscreteScheduler` with `use_dynamic_shifting` gives the same σs.
//!
//! SD3's is SAI's `ModelSamplingDiscreteFlow` with a fixed shift (3.0 for every SD3 model):
//! `steps` timesteps evenly from the shifted σ of t = 1000 down to that of t = 1, each shifted
//! again, then 0 (sd-scripts' `get_all_sigmas`; diffusers' `FlowMatchEulerDiscreteScheduler` with
//! `shift` gives the same σs).

use candle_core::{Result, Tensor};

/// μ of Flux's resolution-dependent shift for `image_seq_len` packed tokens: the line through
/// (256, `base_shift`) and (4096, `max_shift`).
pub fn flux_mu(image_seq_len: usize, base_shift: f64, max_shift: f64) -> f64 {
    let m = (max_shift - base_shift) / (4096.0 - 256.0);
    m * image_seq_len as f64 + (base_shift - m * 256.0)
}

/// `e^μ / (e^μ + (1/σ − 1))` (BFL's `time_shift` with exponent 1); σ = 0 stays 0.
pub fn time_shift(mu: f64, sigma: f64) -> f64 {
    if sigma <= 0.0 {
        return 0.0;
    }
    mu.exp() / (mu.exp() + (1.0 / sigma - 1.0))
}

/// The `steps + 1` noise levels from 1 to 0 of BFL's `get_schedule` (computed in f32 as
/// PyTorch's `linspace` and `time_shift` do), shifted for `image_seq_len` tokens when `shift`.
pub fn flux_schedule(steps: usize, image_seq_len: usize, shift: bool) -> Vec<f64> {
    // PyTorch computes e^μ in double (math.exp), then every tensor op in float32.
    let e_mu = flux_mu(image_seq_len, 0.5, 1.15).exp() as f32;
    let points = steps + 1;
    let halfway = points / 2;
    (0..points)
        .map(|i| {
            // torch.linspace(1, 0, n + 1) in float32: start + i·step for the first half, end − (n−i)·step after.
            let step = -1.0f32 / steps as f32;
            let t = if i < halfway { 1.0 + i as f32 * step } else { -((steps - i) as f32) * step };
            let t = if shift && t > 0.0 { e_mu / (e_mu + (1.0 / t - 1.0)) } else { t };
            f64::from(t)
        })
        .collect()
}

/// SAI's σ for timestep `t` ∈ [0, 1000] with `shift` (`ModelSamplingDiscreteFlow.sigma`), in f32
/// as PyTorch computes it.
fn sd3_sigma(t: f32, shift: f32) -> f32 {
    let t = t / 1000.0;
    if shift == 1.0 {
        t
    } else {
        shift * t / (1.0 + (shift - 1.0) * t)
    }
}

/// The `steps + 1` noise levels from 1 to 0 of SD3's sampler with `shift` (sd-scripts'
/// `get_all_sigmas`; computed in f32 as PyTorch's `linspace` does).
pub fn sd3_schedule(steps: usize, shift: f64) -> Vec<f64> {
    let shift = shift as f32;
    let start = sd3_sigma(1000.0, shift) * 1000.0;
    let end = sd3_sigma(1.0, shift) * 1000.0;
    let mut sigmas: Vec<f64> = if steps == 1 {
        vec![f64::from(sd3_sigma(start, shift))]
    } else {
        let step = (end - start) / (steps - 1) as f32;
        let halfway = steps / 2;
        (0..steps)
            .map(|i| {
                // PyTorch's vectorised CPU linspace fuses the multiply-add (one rounding).
                let t = if i < halfway {
                    step.mul_add(i as f32, start)
                } else {
                    (-step).mul_add((steps - 1 - i) as f32, end)
                };
                f64::from(sd3_sigma(t, shift))
            })
            .collect()
    };
    sigmas.push(0.0);
    sigmas
}

/// Euler over `sigmas` (descending to 0): `x ← x + (σ_next − σ)·velocity(x, σ)`, reporting
/// `on_step(i, n)` after each step.
pub fn euler(
    sigmas: &[f64],
    init: &Tensor,
    velocity: &mut dyn FnMut(&Tensor, f64) -> Result<Tensor>,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    let mut x = init.clone();
    let n = sigmas.len().saturating_sub(1);
    for (i, pair) in sigmas.windows(2).enumerate() {
        let v = velocity(&x, pair[0])?;
        x = (x + (v * (pair[1] - pair[0]))?)?;
        on_step(i + 1, n);
    }
    Ok(x)
}
