//! SiLU and GEGLU in one pass forward and one pass backward, in parallel.
//!
//! candle's backward of `silu` is nine full-size ops and of `gelu_erf` thirteen, each one
//! allocation and one (mostly single-threaded) pass, and GEGLU's `narrow` halves add a
//! zero-padded concatenation per half: about 2 s of an SD1.5 step on two cores. These
//! kernels save only the activation's input.

use rayon::prelude::*;

use super::exp::{exp_one, with_avx2};

/// Elements per parallel task (256 KiB of f32).
const TASK: usize = 1 << 16;

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_one(-x))
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5·10⁻⁷, ≤ 5·10⁻⁷ in f32), branch-free so it
/// vectorises.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_one(-a * a);
    y.copysign(x)
}

/// GELU (erf form) and its derivative at `z`.
#[inline(always)]
fn gelu_and_slope(z: f32) -> (f32, f32) {
    let cdf = 0.5 * (1.0 + erf(z * FRAC_1_SQRT_2));
    (z * cdf, cdf + z * INV_SQRT_2PI * exp_one(-0.5 * z * z))
}

/// `x·σ(x)`.
pub(crate) fn silu(x: &[f32]) -> Vec<f32> {
    let _profile = crate::profile::scope("SiLU forward");
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(TASK).zip(x.par_chunks(TASK)).for_each(|(y, x)| {
        with_avx2(|| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * sigmoid(x);
            }
        })
    });
    y
}

/// The input gradient of SiLU: `g·σ(x)·(1 + x·(1 − σ(x)))`.
pub(crate) fn silu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    let _profile = crate::profile::scope("SiLU backward");
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(TASK).zip(x.par_chunks(TASK).zip(grad.par_chunks(TASK))).for_each(|(dx, (x, g))| {
        with_avx2(|| {
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                let s = sigmoid(x);
                *dx = g * s * (1.0 + x * (1.0 - s));
            }
        })
    });
    dx
}

/// Rows per parallel task for rows of `width` elements.
fn rows_per_task(width: usize) -> usize {
    (TASK / width.max(1)).max(1)
}

/// GEGLU over rows of `2·half` elements: `h · gelu(gate)` with h the first half of each row
/// and gate the second; rows of `half` elements out.
pub(crate) fn geglu(x: &[f32], half: usize) -> Vec<f32> {
    let _profile = crate::profile::scope("GEGLU forward");
    let rows = x.len() / (2 * half);
    let mut y = vec![0f32; rows * half];
    let per = rows_per_task(2 * half);
    y.par_chunks_mut(per * half).zip(x.par_chunks(per * 2 * half)).for_each(|(y, x)| {
        with_avx2(|| {
            for (y_row, x_row) in y.chunks_exact_mut(half).zip(x.chunks_exact(2 * half)) {
                let (h, gate) = x_row.split_at(half);
                for ((y, &h), &z) in y_row.iter_mut().zip(h).zip(gate) {
                    *y = h * gelu_and_slope(z).0;
                }
            }
        })
    });
    y
}

/// The input gradient of [`geglu`]: rows of `2·half` elements, `g·gelu(gate)` for the first
/// half and `g·h·gelu′(gate)` for the second.
pub(crate) fn geglu_backward(x: &[f32], grad: &[f32], half: usize) -> Vec<f32> {
    let _profile = crate::profile::scope("GEGLU backward");
    let mut dx = vec![0f32; x.len()];
    let per = rows_per_task(2 * half);
    dx.par_chunks_mut(per * 2 * half).zip(x.par_chunks(per * 2 * half).zip(grad.par_chunks(per * half))).for_each(
        |(dx, (x, g))| {
            with_avx2(|| {
                for ((dx_row, x_row), g_row) in
                    dx.chunks_exact_mut(2 * half).zip(x.chunks_exact(2 * half)).zip(g.chunks_exact(half))
                {
                    let (h, gate) = x_row.split_at(half);
                    let (dh, dgate) = dx_row.split_at_mut(half);
                    for i in 0..half {
                        let (gelu, slope) = gelu_and_slope(gate[i]);
                        dh[i] = g_row[i] * gelu;
                        dgate[i] = g_row[i] * h[i] * slope;
                    }
                }
            })
        },
    );
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_within_half_a_millionth() {
        // Reference values of erf (Abramowitz & Stegun table 7.1 and symmetry).
        for (x, e) in [
            (0.0f32, 0.0f64),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265_0),
            (-1.5, -0.966_105_146_5),
            (4.0, 0.999_999_984_6),
        ] {
            assert!((erf(x) as f64 - e).abs() < 5e-7, "erf({x}) = {}", erf(x));
        }
    }
}
