//! Flux (DiT) block ops on the CPU in f32: tanh-GELU, the q/k RMS norm with the rotary
//! embedding, adaptive-LayerNorm modulation and the gated residual, each one parallel pass
//! forward and one or two backward.
//!
//! candle differentiates the composed versions op by op: tanh-GELU's backward alone is a dozen
//! full-size passes (most single-threaded), the q/k norm and rotary embedding a dozen more on
//! reshaped and narrowed views, and each `narrow` of a fused projection pads its gradient back
//! to the projection's full width with zeros. These kernels read and write rows in place.

use rayon::prelude::*;

use super::exp::{exp_one, with_avx2};

/// Elements per parallel task (256 KiB of f32).
const TASK: usize = 1 << 16;

/// √(2/π).
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation.
const GELU_CUBIC: f32 = 0.044_715;

/// Rows per parallel task for rows of `width` elements.
fn rows_per_task(width: usize) -> usize {
    (TASK / width.max(1)).max(1)
}

/// tanh-GELU and its derivative at `x`:
/// `0.5·x·(1 + tanh(u))`, `u = √(2/π)·(x + 0.044715·x³)`.
#[inline(always)]
fn gelu_tanh_and_slope(x: f32) -> (f32, f32) {
    let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    // tanh(|u|) = (1 − e^(−2|u|)) / (1 + e^(−2|u|)): no overflow, branch-free.
    let e = exp_one(-2.0 * u.abs());
    let t = ((1.0 - e) / (1.0 + e)).copysign(u);
    let half_one_plus_t = 0.5 * (1.0 + t);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
    (x * half_one_plus_t, half_one_plus_t + 0.5 * x * (1.0 - t * t) * du)
}

/// tanh-GELU of every element.
pub(crate) fn gelu_tanh(x: &[f32]) -> Vec<f32> {
    let _profile = crate::profile::scope("tanh-GELU forward");
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(TASK).zip(x.par_chunks(TASK)).for_each(|(y, x)| {
        with_avx2(|| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = gelu_tanh_and_slope(x).0;
            }
        })
    });
    y
}

/// The input gradient of tanh-GELU: `g·gelu′(x)`.
pub(crate) fn gelu_tanh_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    let _profile = crate::profile::scope("tanh-GELU backward");
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(TASK).zip(x.par_chunks(TASK).zip(grad.par_chunks(TASK))).for_each(|(dx, (x, g))| {
        with_avx2(|| {
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                *dx = g * gelu_tanh_and_slope(x).1;
            }
        })
    });
    dx
}

/// Rows of `[a, gelu(x[start..])]`: `a` rows of `wa`, `x` rows of `wx`; rows of
/// `wa + wx − start` out.
pub(crate) fn concat_gelu_tail(a: &[f32], wa: usize, x: &[f32], wx: usize, start: usize) -> Vec<f32> {
    let _profile = crate::profile::scope("concat + tanh-GELU forward");
    let wo = wa + wx - start;
    let rows = x.len() / wx.max(1);
    let mut y = vec![0f32; rows * wo];
    let per = rows_per_task(wo);
    y.par_chunks_mut(per * wo).zip(a.par_chunks(per * wa).zip(x.par_chunks(per * wx))).for_each(|(y, (a, x))| {
        with_avx2(|| {
            for ((y_row, a_row), x_row) in y.chunks_exact_mut(wo).zip(a.chunks_exact(wa)).zip(x.chunks_exact(wx)) {
                let (ya, yg) = y_row.split_at_mut(wa);
                ya.copy_from_slice(a_row);
                for (y, &x) in yg.iter_mut().zip(&x_row[start..]) {
                    *y = gelu_tanh_and_slope(x).0;
                }
            }
        })
    });
    y
}

/// The gradients of [`concat_gelu_tail`]: `da` (rows of `wa`) and `dx` (rows of `wx`, zero
/// before `start`).
pub(crate) fn concat_gelu_tail_backward(
    x: &[f32],
    wa: usize,
    wx: usize,
    start: usize,
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let _profile = crate::profile::scope("concat + tanh-GELU backward");
    let wo = wa + wx - start;
    let rows = x.len() / wx.max(1);
    let (mut da, mut dx) = (vec![0f32; rows * wa], vec![0f32; rows * wx]);
    let per = rows_per_task(wo);
    da.par_chunks_mut(per * wa)
        .zip(dx.par_chunks_mut(per * wx))
        .zip(x.par_chunks(per * wx).zip(grad.par_chunks(per * wo)))
        .for_each(|((da, dx), (x, g))| {
            with_avx2(|| {
                for (((da_row, dx_row), x_row), g_row) in
                    da.chunks_exact_mut(wa).zip(dx.chunks_exact_mut(wx)).zip(x.chunks_exact(wx)).zip(g.chunks_exact(wo))
                {
                    let (ga, gg) = g_row.split_at(wa);
                    da_row.copy_from_slice(ga);
                    for ((dx, &x), &g) in dx_row[start..].iter_mut().zip(&x_row[start..]).zip(gg) {
                        *dx = g * gelu_tanh_and_slope(x).1;
                    }
                }
            })
        });
    (da, dx)
}

/// Sizes of the q/k norm + rotary kernels: `heads` heads of `d` features (rows of
/// `heads·d`), rotary tables of `d/2` angles per position.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadRows {
    pub heads: usize,
    pub d: usize,
    pub eps: f32,
}

impl HeadRows {
    fn width(&self) -> usize {
        self.heads * self.d
    }
}

/// `1/√(mean(x²) + eps)` of one head.
#[inline(always)]
fn rrms(x: &[f32], eps: f32) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let ss: f32 = lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|v| v * v).sum::<f32>();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

/// One row's heads: RMS-normalised with `scale`, then each consecutive pair rotated by the
/// row's angles: `(n0, n1) → (n0·cos − n1·sin, n0·sin + n1·cos)`.
#[inline(always)]
fn norm_rope_row(x: &[f32], scale: &[f32], cos: &[f32], sin: &[f32], dims: HeadRows, out: &mut [f32]) {
    let d = dims.d;
    for (xh, oh) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let r = rrms(xh, dims.eps);
        for (j, (xp, op)) in xh.chunks_exact(2).zip(oh.chunks_exact_mut(2)).enumerate() {
            let n0 = xp[0] * r * scale[2 * j];
            let n1 = xp[1] * r * scale[2 * j + 1];
            op[0] = n0 * cos[j] - n1 * sin[j];
            op[1] = n0 * sin[j] + n1 * cos[j];
        }
    }
}

/// The input gradient of [`norm_rope_row`] for one row: the rotation transposed, then the
/// RMS norm's `dx = r·(γ·dn − x·r²·mean(γ·dn·x))`.
#[inline(always)]
fn norm_rope_row_backward(
    x: &[f32],
    grad: &[f32],
    scale: &[f32],
    cos: &[f32],
    sin: &[f32],
    dims: HeadRows,
    dx: &mut [f32],
) {
    let d = dims.d;
    for ((xh, gh), dh) in x.chunks_exact(d).zip(grad.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
        let r = rrms(xh, dims.eps);
        // dx ← γ·dn first, then the correction once the dot product is known.
        let mut dot = 0f32;
        for (j, (gp, dp)) in gh.chunks_exact(2).zip(dh.chunks_exact_mut(2)).enumerate() {
            let dn0 = gp[0] * cos[j] + gp[1] * sin[j];
            let dn1 = gp[1] * cos[j] - gp[0] * sin[j];
            dp[0] = dn0 * scale[2 * j];
            dp[1] = dn1 * scale[2 * j + 1];
            dot += dp[0] * xh[2 * j] + dp[1] * xh[2 * j + 1];
        }
        let c = r * r * dot / d as f32;
        for (dx, &x) in dh.iter_mut().zip(xh) {
            *dx = r * (*dx - x * c);
        }
    }
}

/// One stream's q, k and v out of its projection `x` (rows of `cols`, q, k, v in the first
/// `3·width` columns): q and k RMS-normalised and rotated, v copied, into the rows of `q`, `k`,
/// `v` (rows of `width`). `cos`/`sin` hold `d/2` angles for each of the stream's rows, in the
/// order of `x`'s rows within one batch item; `x` has `rows_per_item` rows per item.
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_rope_forward(
    x: &[f32],
    cols: usize,
    rows_per_item: usize,
    q_scale: &[f32],
    k_scale: &[f32],
    cos: &[f32],
    sin: &[f32],
    dims: HeadRows,
    (q, k, v): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let _profile = crate::profile::scope("q/k RMS norm + rotary forward");
    let (w, half) = (dims.width(), dims.d / 2);
    q.par_chunks_mut(w).zip(k.par_chunks_mut(w)).zip(v.par_chunks_mut(w)).zip(x.par_chunks(cols)).enumerate().for_each(
        |(row, (((q, k), v), x))| {
            let pos = row % rows_per_item;
            let (cos, sin) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
            norm_rope_row(&x[..w], q_scale, cos, sin, dims, q);
            norm_rope_row(&x[w..2 * w], k_scale, cos, sin, dims, k);
            v.copy_from_slice(&x[2 * w..3 * w]);
        },
    );
}

/// Writes the gradient of one stream's projection into `dx` (rows of `cols`; columns past
/// `3·width` are left as they are, zero for a fresh buffer) from the gradients of its q, k, v
/// rows, as [`norm_rope_forward`] laid them out.
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_rope_backward(
    x: &[f32],
    cols: usize,
    rows_per_item: usize,
    q_scale: &[f32],
    k_scale: &[f32],
    cos: &[f32],
    sin: &[f32],
    dims: HeadRows,
    (dq, dk, dv): (&[f32], &[f32], &[f32]),
    dx: &mut [f32],
) {
    let _profile = crate::profile::scope("q/k RMS norm + rotary backward");
    let (w, half) = (dims.width(), dims.d / 2);
    dx.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .zip(dq.par_chunks(w).zip(dk.par_chunks(w)).zip(dv.par_chunks(w)))
        .enumerate()
        .for_each(|(row, ((dx, x), ((dq, dk), dv)))| {
            let pos = row % rows_per_item;
            let (cos, sin) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
            let (dxq, rest) = dx.split_at_mut(w);
            let (dxk, rest) = rest.split_at_mut(w);
            norm_rope_row_backward(&x[..w], dq, q_scale, cos, sin, dims, dxq);
            norm_rope_row_backward(&x[w..2 * w], dk, k_scale, cos, sin, dims, dxk);
            rest[..w].copy_from_slice(dv);
        });
}

/// `y = x·(1 + scale) + shift` over rows of `w`, with one `shift`/`scale` row per batch item
/// of `rows_per_item` rows.
pub(crate) fn modulate(x: &[f32], shift: &[f32], scale: &[f32], w: usize, rows_per_item: usize) -> Vec<f32> {
    let _profile = crate::profile::scope("modulate forward");
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(w).zip(x.par_chunks(w)).enumerate().for_each(|(row, (y, x))| {
        let item = row / rows_per_item;
        let (shift, scale) = (&shift[item * w..(item + 1) * w], &scale[item * w..(item + 1) * w]);
        for (((y, &x), &sh), &sc) in y.iter_mut().zip(x).zip(shift).zip(scale) {
            *y = x * (1.0 + sc) + sh;
        }
    });
    y
}

/// Per batch item, `Σ_rows f(a, b)` column by column over rows of `w` (`rows_per_item` rows per
/// item), summed in f32 per task of rows and the tasks' sums added.
fn column_sums(a: &[f32], b: &[f32], w: usize, rows_per_item: usize, f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let items = a.len() / (w * rows_per_item).max(1);
    let per = rows_per_task(w).min(rows_per_item).max(1);
    let mut out = vec![0f32; items * w];
    for item in 0..items {
        let span = item * rows_per_item * w..(item + 1) * rows_per_item * w;
        let partials: Vec<Vec<f32>> = a[span.clone()]
            .par_chunks(per * w)
            .zip(b[span].par_chunks(per * w))
            .map(|(a, b)| {
                let mut acc = vec![0f32; w];
                for (a_row, b_row) in a.chunks_exact(w).zip(b.chunks_exact(w)) {
                    for ((s, &a), &b) in acc.iter_mut().zip(a_row).zip(b_row) {
                        *s += f(a, b);
                    }
                }
                acc
            })
            .collect();
        let dst = &mut out[item * w..(item + 1) * w];
        for p in partials {
            for (d, v) in dst.iter_mut().zip(p) {
                *d += v;
            }
        }
    }
    out
}

/// The gradients of [`modulate`]: `dx = g·(1 + scale)`, `dshift = Σ g`, `dscale = Σ g·x` over
/// each item's rows.
pub(crate) fn modulate_backward(
    x: &[f32],
    scale: &[f32],
    grad: &[f32],
    w: usize,
    rows_per_item: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let _profile = crate::profile::scope("modulate backward");
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(w).zip(grad.par_chunks(w)).enumerate().for_each(|(row, (dx, g))| {
        let scale = &scale[(row / rows_per_item) * w..(row / rows_per_item + 1) * w];
        for ((dx, &g), &sc) in dx.iter_mut().zip(g).zip(scale) {
            *dx = g * (1.0 + sc);
        }
    });
    let dshift = column_sums(grad, grad, w, rows_per_item, |g, _| g);
    let dscale = column_sums(grad, x, w, rows_per_item, |g, x| g * x);
    (dx, dshift, dscale)
}

/// `x + y·gate` over rows of `w`, one `gate` row per item of `rows_per_item` rows.
pub(crate) fn gated_residual(x: &[f32], y: &[f32], gate: &[f32], w: usize, rows_per_item: usize) -> Vec<f32> {
    let _profile = crate::profile::scope("gated residual forward");
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(w).zip(x.par_chunks(w).zip(y.par_chunks(w))).enumerate().for_each(|(row, (o, (x, y)))| {
        let gate = &gate[(row / rows_per_item) * w..(row / rows_per_item + 1) * w];
        for (((o, &x), &y), &gt) in o.iter_mut().zip(x).zip(y).zip(gate) {
            *o = x + y * gt;
        }
    });
    out
}

/// The gradients of [`gated_residual`] other than `dx = g`: `dy = g·gate` and `dgate = Σ g·y`.
pub(crate) fn gated_residual_backward(
    y: &[f32],
    gate: &[f32],
    grad: &[f32],
    w: usize,
    rows_per_item: usize,
) -> (Vec<f32>, Vec<f32>) {
    let _profile = crate::profile::scope("gated residual backward");
    let mut dy = vec![0f32; y.len()];
    dy.par_chunks_mut(w).zip(grad.par_chunks(w)).enumerate().for_each(|(row, (dy, g))| {
        let gate = &gate[(row / rows_per_item) * w..(row / rows_per_item + 1) * w];
        for ((dy, &g), &gt) in dy.iter_mut().zip(g).zip(gate) {
            *dy = g * gt;
        }
    });
    (dy, column_sums(grad, y, w, rows_per_item, |g, y| g * y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_tanh_matches_the_f64_formula_and_its_derivative() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.006;
            let xf = x as f64;
            let u = (2.0 / std::f64::consts::PI).sqrt() * (xf + 0.044715 * xf.powi(3));
            let t = u.tanh();
            let want = 0.5 * xf * (1.0 + t);
            let du = (2.0 / std::f64::consts::PI).sqrt() * (1.0 + 3.0 * 0.044715 * xf * xf);
            let want_slope = 0.5 * (1.0 + t) + 0.5 * xf * (1.0 - t * t) * du;
            let (y, s) = gelu_tanh_and_slope(x);
            assert!((y as f64 - want).abs() < 2e-6 * (1.0 + want.abs()), "gelu({x}) = {y}, want {want}");
            assert!((s as f64 - want_slope).abs() < 2e-6 * (1.0 + want_slope.abs()), "gelu'({x}) = {s}");
        }
        // Tails: no NaN or overflow.
        for x in [-1e4f32, -100.0, 100.0, 1e4] {
            let (y, s) = gelu_tanh_and_slope(x);
            assert!(y.is_finite() && s.is_finite(), "{x}: {y} {s}");
        }
    }
}
