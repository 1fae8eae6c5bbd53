//! LayerNorm and GroupNorm on the CPU in f32: one pass for the statistics and one for the
//! output forward, two passes backward, per row in parallel (the composed versions take ten
//! candle ops each way). A row is what is normalised together: the last dimension for
//! LayerNorm, one group's channels × positions for GroupNorm.

use rayon::prelude::*;

/// How affine parameters map onto a row: element `i` of row `r` uses parameter
/// `(r % groups_per_item) · channels_per_group + i / positions`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowLayout {
    /// Elements per row.
    pub len: usize,
    /// Consecutive elements sharing one parameter (spatial positions; 1 for LayerNorm).
    pub positions: usize,
    /// Rows per batch item (groups; 1 for LayerNorm).
    pub groups_per_item: usize,
}

impl RowLayout {
    fn param_offset(&self, row: usize) -> usize {
        (row % self.groups_per_item) * (self.len / self.positions)
    }
}

/// `Σ f(xᵢ)` in f64, computed so that it vectorises: 16 f32 lanes over blocks of 256
/// elements (each lane adds 16 values), the block sums added in f64. A plain f64 fold is a
/// serial dependency chain, four cycles per element, and was most of a norm's time.
fn sum_f64(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    const LANES: usize = 16;
    let mut total = 0f64;
    for block in values.chunks(256) {
        let mut lanes = [0f32; LANES];
        let mut chunks = block.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += f(v);
            }
        }
        let rest: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
        total += (lanes.iter().sum::<f32>() + rest) as f64;
    }
    total
}

/// `Σ f(xᵢ, gᵢ)` over two equal-length slices, vectorised as [`sum_f64`].
fn sum2_f64(xs: &[f32], gs: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    const LANES: usize = 16;
    let mut total = 0f64;
    for (xb, gb) in xs.chunks(256).zip(gs.chunks(256)) {
        let mut lanes = [0f32; LANES];
        let (mut xc, mut gc) = (xb.chunks_exact(LANES), gb.chunks_exact(LANES));
        for (x, g) in (&mut xc).zip(&mut gc) {
            for ((lane, &x), &g) in lanes.iter_mut().zip(x).zip(g) {
                *lane += f(x, g);
            }
        }
        let rest: f32 = xc.remainder().iter().zip(gc.remainder()).map(|(&x, &g)| f(x, g)).sum();
        total += (lanes.iter().sum::<f32>() + rest) as f64;
    }
    total
}

/// Mean and 1/σ of one row (two passes, sums in f64).
fn stats(row: &[f32], eps: f64) -> (f32, f32) {
    let n = row.len().max(1) as f64;
    let mean = sum_f64(row, |v| v) / n;
    let mean32 = mean as f32;
    // Σ(x − mean32)² with the rounding of the f32 mean corrected: Σ(x − μ)² = Σ(x − m)² − n(μ − m)².
    let shifted = sum_f64(row, |v| (v - mean32) * (v - mean32));
    let var = (shifted / n - (mean - mean32 as f64).powi(2)).max(0.0);
    (mean32, (1.0 / (var + eps).sqrt()) as f32)
}

/// Normalises every row of `x` and applies `gamma`/`beta`; returns the output and each row's
/// (mean, 1/σ).
pub(crate) fn forward(
    x: &[f32],
    layout: RowLayout,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f64,
) -> (Vec<f32>, Vec<(f32, f32)>) {
    let _profile = crate::profile::scope("norm forward");
    let mut y = vec![0f32; x.len()];
    let row_stats: Vec<(f32, f32)> = y
        .par_chunks_mut(layout.len)
        .zip(x.par_chunks(layout.len))
        .enumerate()
        .map(|(r, (y_row, x_row))| {
            let (mean, rstd) = stats(x_row, eps);
            let offset = layout.param_offset(r);
            if layout.positions == 1 {
                // LayerNorm: a γ (and β) per element.
                let gamma = &gamma[offset..offset + layout.len];
                for ((y, &x), (i, &gm)) in y_row.iter_mut().zip(x_row).zip(gamma.iter().enumerate()) {
                    *y = (x - mean) * rstd * gm + beta.map_or(0.0, |b| b[offset + i]);
                }
                return (mean, rstd);
            }
            for (c, (y_run, x_run)) in
                y_row.chunks_mut(layout.positions).zip(x_row.chunks(layout.positions)).enumerate()
            {
                let scale = gamma[offset + c] * rstd;
                let shift = beta.map_or(0.0, |b| b[offset + c]) - mean * scale;
                for (y, &x) in y_run.iter_mut().zip(x_run) {
                    *y = x * scale + shift;
                }
            }
            (mean, rstd)
        })
        .collect();
    (y, row_stats)
}

/// The input gradient: with x̂ = (x − μ)/σ and dx̂ = g·γ,
/// `dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) / σ` per row.
pub(crate) fn backward(
    x: &[f32],
    grad: &[f32],
    layout: RowLayout,
    gamma: &[f32],
    row_stats: &[(f32, f32)],
) -> Vec<f32> {
    let _profile = crate::profile::scope("norm backward");
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(layout.len).zip(x.par_chunks(layout.len).zip(grad.par_chunks(layout.len))).enumerate().for_each(
        |(r, (dx_row, (x_row, g_row)))| {
            let (mean, rstd) = row_stats[r];
            let offset = layout.param_offset(r);
            // Σ dx̂ and Σ dx̂·x̂ with dx̂ = g·γ: per run of positions sharing one γ (GroupNorm),
            // or per element (LayerNorm, where every position has its own γ).
            let (sum_dxhat, sum_dxhat_xhat) = if layout.positions == 1 {
                let gamma = &gamma[offset..offset + layout.len];
                let dxhat: f64 = sum2_f64(g_row, gamma, |g, gm| g * gm);
                let centred: Vec<f32> = x_row.iter().zip(gamma).map(|(&x, &gm)| (x - mean) * gm).collect();
                (dxhat, rstd as f64 * sum2_f64(g_row, &centred, |g, c| g * c))
            } else {
                let (mut s1, mut s2) = (0f64, 0f64);
                for (c, (x_run, g_run)) in
                    x_row.chunks(layout.positions).zip(g_row.chunks(layout.positions)).enumerate()
                {
                    let gamma = gamma[offset + c] as f64;
                    s1 += gamma * sum_f64(g_run, |g| g);
                    s2 += gamma * rstd as f64 * sum2_f64(x_run, g_run, |x, g| g * (x - mean));
                }
                (s1, s2)
            };
            let n = layout.len.max(1) as f64;
            let (m1, m2) = ((sum_dxhat / n) as f32, (sum_dxhat_xhat / n) as f32);
            if layout.positions == 1 {
                let gamma = &gamma[offset..offset + layout.len];
                for ((dx, &x), (&g, &gm)) in dx_row.iter_mut().zip(x_row).zip(g_row.iter().zip(gamma)) {
                    *dx = (g * gm - m1 - (x - mean) * rstd * m2) * rstd;
                }
                return;
            }
            for (c, ((dx_run, x_run), g_run)) in dx_row
                .chunks_mut(layout.positions)
                .zip(x_row.chunks(layout.positions))
                .zip(g_row.chunks(layout.positions))
                .enumerate()
            {
                let gamma = gamma[offset + c];
                for ((dx, &x), &g) in dx_run.iter_mut().zip(x_run).zip(g_run) {
                    let xhat = (x - mean) * rstd;
                    *dx = (g * gamma - m1 - xhat * m2) * rstd;
                }
            }
        },
    );
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised sums keep f64-grade statistics: a row far from zero (mean 1000, σ 0.01,
    /// the case where a one-pass f32 variance fails) with a length that is not a multiple of
    /// the 16 lanes or the 256-element blocks.
    #[test]
    fn statistics_match_f64_for_offset_rows() {
        let row: Vec<f32> = (0..1000).map(|i| 1000.0 + 0.01 * (((i * 7919) % 200) as f32 / 100.0 - 1.0)).collect();
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let (m, rstd) = stats(&row, 1e-12);
        assert!((m as f64 - mean).abs() < 1e-4, "mean {m} vs {mean}");
        let want = 1.0 / (var + 1e-12).sqrt();
        assert!(((rstd as f64 - want) / want).abs() < 1e-4, "1/σ {rstd} vs {want}");
        let sum = sum2_f64(&row, &row, |a, b| a - b + 1.0);
        assert_eq!(sum, n);
    }
}
