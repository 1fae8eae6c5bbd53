//! A vectorised `exp` for softmax rows.
//!
//! libm's `expf` is called one element at a time (7% of an SD1.5 training step went to it);
//! this is Cephes' single-precision polynomial (≤ 2 ulp on the range softmax uses), written
//! so the compiler vectorises it, and compiled a second time for AVX2 + FMA, picked at run
//! time.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so `n·LN2_HI` is exact for the |n| ≤ 128 reached here.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: adding and subtracting it rounds to the nearest integer, vectorisably.
const ROUND_MAGIC: f32 = 12_582_912.0;

#[inline(always)]
pub(crate) fn exp_one(x: f32) -> f32 {
    // Below −87.3 the result is under f32's normal range; softmax weights that small are zero
    // for every purpose, and clamping keeps 2ⁿ's exponent field valid.
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n_int + 127) as u32) << 23)
}

#[inline(always)]
fn exp_sub_sum_generic(row: &mut [f32], shift: f32) -> f32 {
    // Eight partial sums so the sum vectorises too (the order differs from a serial sum by
    // rounding only).
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for chunk in &mut chunks {
        for (v, s) in chunk.iter_mut().zip(sums.iter_mut()) {
            *v = exp_one(*v - shift);
            *s += *v;
        }
    }
    let mut tail = 0f32;
    for v in chunks.into_remainder() {
        *v = exp_one(*v - shift);
        tail += *v;
    }
    sums.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sub_sum_avx2(row: &mut [f32], shift: f32) -> f32 {
    exp_sub_sum_generic(row, shift)
}

/// Replaces each `v` in `row` by `exp(v − shift)` and returns their sum.
pub(crate) fn exp_sub_sum(row: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for (checked just above).
        return unsafe { exp_sub_sum_avx2(row, shift) };
    }
    exp_sub_sum_generic(row, shift)
}

/// Runs `f` compiled for AVX2 + FMA when the CPU has them (the closure is inlined into a
/// function with those features enabled), else as built for the baseline target: elementwise
/// loops around [`exp_one`] run twice as wide that way.
#[inline(always)]
pub(crate) fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has the features `run` is compiled for (checked just above).
        return unsafe { run(f) };
    }
    f()
}

/// The largest element (−∞ for an empty row).
pub(crate) fn max(row: &[f32]) -> f32 {
    row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_within_two_ulp_on_the_softmax_range() {
        let xs: Vec<f32> = (0..200_001).map(|i| -87.0 + i as f32 * (87.0 + 10.0) / 200_000.0).collect();
        let mut ours = xs.clone();
        let sum = exp_sub_sum(&mut ours, 0.0);
        let mut worst = 0f64;
        for (&x, &e) in xs.iter().zip(&ours) {
            let exact = (x as f64).exp();
            worst = worst.max(((e as f64 - exact) / exact).abs());
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        let exact_sum: f64 = xs.iter().map(|&x| (x as f64).exp()).sum();
        assert!(((sum as f64 - exact_sum) / exact_sum).abs() < 1e-5);
    }

    #[test]
    fn underflows_to_tiny_and_handles_tails() {
        let mut row = vec![-1000.0, -88.0, 0.0, 1.0, -0.5];
        let sum = exp_sub_sum(&mut row, 1.0);
        assert!(row[0] < 1e-37 && row[1] < 1e-37);
        assert!((row[2] - (-1f32).exp()).abs() < 1e-7 && (row[3] - 1.0).abs() < 1e-7);
        assert!((sum - (row[2] + row[3] + row[4] + row[0] + row[1])).abs() < 1e-7);
        assert_eq!(max(&[1.0, 3.0, -2.0]), 3.0);
    }
}
