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

/// Mean and 1/σ of one row, accumulated in f64.
fn stats(row: &[f32], eps: f64) -> (f32, f32) {
    let n = row.len().max(1) as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
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
            let (mut sum_dxhat, mut sum_dxhat_xhat) = (0f64, 0f64);
            for (c, (x_run, g_run)) in x_row.chunks(layout.positions).zip(g_row.chunks(layout.positions)).enumerate() {
                let gamma = gamma[offset + c];
                let (mut s1, mut s2) = (0f32, 0f32);
                for (&x, &g) in x_run.iter().zip(g_run) {
                    let dxhat = g * gamma;
                    s1 += dxhat;
                    s2 += dxhat * (x - mean) * rstd;
                }
                sum_dxhat += s1 as f64;
                sum_dxhat_xhat += s2 as f64;
            }
            let n = layout.len.max(1) as f64;
            let (m1, m2) = ((sum_dxhat / n) as f32, (sum_dxhat_xhat / n) as f32);
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
