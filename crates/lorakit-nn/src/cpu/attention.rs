//! Fused f32 CPU attention, forward and backward, one (head, query block) at a time.
//!
//! The composed chunked version (`crate::attention`) makes six full passes over every score
//! block (scale, max, subtract, exp, sum, divide), most of them single-threaded, and allocates
//! each. Here a rayon task owns a block: one GEMM writes the scaled scores into a reused
//! buffer, one pass per row takes max, exp and sum, one GEMM applies the values. The backward
//! runs one task per head (dK and dV sum over that head's query blocks), recomputing each
//! block's probabilities from the saved log-sum-exp as FlashAttention does.
//!
//! Heads are read in place from (B, L, H·d) projections (rows `H·d` apart), so the model needs
//! no split/merge copies of q, k, v and the output, nor their graph nodes.

use rayon::prelude::*;

use super::exp::{exp_sub_sum, max};
use super::gemm::{matmul, MatRef};
use gemm::Parallelism;

/// Query rows per block: 128 rows × 4096 keys is a 2 MiB score buffer per thread.
const BLOCK_ROWS: usize = 128;

/// Sizes of one attention call over q (B, Lq, H·d), k (B, Lk, H·d), v (B, Lk, H·dv), all
/// contiguous; the output is (B, Lq, H·dv).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub dv: usize,
}

impl Dims {
    /// Head `h` of batch item `b` of a (B, len, H·width) tensor, from row `start`, `rows` rows.
    fn head<'a>(
        &self,
        t: &'a [f32],
        b: usize,
        h: usize,
        (len, width): (usize, usize),
        start: usize,
        rows: usize,
    ) -> MatRef<'a> {
        let row_stride = self.heads * width;
        MatRef::strided(&t[(b * len + start) * row_stride + h * width..], rows, width, row_stride)
    }

    /// Adds (or writes) a (rows × width) block into head `h` of item `b` of a (B, L, H·width)
    /// tensor from row `start`.
    #[allow(clippy::too_many_arguments)]
    fn scatter(&self, dst: &mut [f32], block: &[f32], b: usize, h: usize, len: usize, width: usize, start: usize) {
        let row_stride = self.heads * width;
        for (i, row) in block.chunks_exact(width).enumerate() {
            let at = (b * len + start + i) * row_stride + h * width;
            dst[at..at + width].copy_from_slice(row);
        }
    }

    fn units(&self) -> usize {
        self.batch * self.heads
    }
}

/// Forward: returns the output (B, Lq, H·dv) and the log-sum-exp of every score row
/// (B·H, Lq).
pub(crate) fn forward(q: &[f32], k: &[f32], v: &[f32], dims: Dims, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let _profile = crate::profile::scope("attention forward");
    let Dims { lq, lk, d, dv, .. } = dims;
    let blocks_per_head = lq.div_ceil(BLOCK_ROWS);
    let tasks: Vec<(usize, usize)> =
        (0..dims.units()).flat_map(|u| (0..blocks_per_head).map(move |blk| (u, blk * BLOCK_ROWS))).collect();
    let results: Vec<(usize, usize, Vec<f32>, Vec<f32>)> = tasks
        .into_par_iter()
        .map_init(
            || vec![0f32; BLOCK_ROWS * lk],
            |scores, (unit, start)| {
                let (b, h) = (unit / dims.heads, unit % dims.heads);
                let rows = BLOCK_ROWS.min(lq - start);
                let q_b = dims.head(q, b, h, (lq, d), start, rows);
                let k_h = dims.head(k, b, h, (lk, d), 0, lk);
                let v_h = dims.head(v, b, h, (lk, dv), 0, lk);
                let scores = &mut scores[..rows * lk];
                matmul(scores, false, scale, q_b, k_h.t(), Parallelism::None);
                let mut lse = vec![0f32; rows];
                let mut inv_sums = vec![0f32; rows];
                for ((row, lse), inv) in scores.chunks_exact_mut(lk).zip(lse.iter_mut()).zip(inv_sums.iter_mut()) {
                    let m = max(row);
                    let sum = exp_sub_sum(row, m);
                    *lse = m + sum.ln();
                    *inv = 1.0 / sum;
                }
                let mut out = vec![0f32; rows * dv];
                matmul(&mut out, false, 1.0, MatRef::row_major(scores, rows, lk), v_h, Parallelism::None);
                for (o_row, inv) in out.chunks_exact_mut(dv).zip(inv_sums) {
                    o_row.iter_mut().for_each(|o| *o *= inv);
                }
                (unit, start, out, lse)
            },
        )
        .collect();
    let mut out = vec![0f32; dims.batch * lq * dims.heads * dv];
    let mut lse = vec![0f32; dims.units() * lq];
    for (unit, start, block, block_lse) in results {
        dims.scatter(&mut out, &block, unit / dims.heads, unit % dims.heads, lq, dv, start);
        lse[unit * lq + start..unit * lq + start + block_lse.len()].copy_from_slice(&block_lse);
    }
    (out, lse)
}

/// One head's (unit index, dq, dk, dv), each (L, width) row-major.
type HeadGrads = (usize, Vec<f32>, Vec<f32>, Vec<f32>);

/// Backward: (dq, dk, dv), laid out as q, k, v, from the forward's inputs, output, log-sum-exp
/// and the output gradient `grad`. With P = exp(S − lse): dV = Pᵀ·dO,
/// dS = P ∘ (dO·Vᵀ − rowsum(dO ∘ O)), dQ = scale·dS·K, dK = scale·dSᵀ·Q.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    grad: &[f32],
    dims: Dims,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let _profile = crate::profile::scope("attention backward");
    let Dims { lq, lk, d, dv, heads, .. } = dims;
    let per_unit: Vec<HeadGrads> = (0..dims.units())
        .into_par_iter()
        .map_init(
            || (vec![0f32; BLOCK_ROWS * lk], vec![0f32; BLOCK_ROWS * lk]),
            |(probs, dprobs), unit| {
                let (b, h) = (unit / heads, unit % heads);
                let k_h = dims.head(k, b, h, (lk, d), 0, lk);
                let v_h = dims.head(v, b, h, (lk, dv), 0, lk);
                let (mut dq, mut dk, mut dv_h) = (vec![0f32; lq * d], vec![0f32; lk * d], vec![0f32; lk * dv]);
                let mut start = 0;
                while start < lq {
                    let rows = BLOCK_ROWS.min(lq - start);
                    let q_b = dims.head(q, b, h, (lq, d), start, rows);
                    let do_b = dims.head(grad, b, h, (lq, dv), start, rows);
                    let o_b = dims.head(out, b, h, (lq, dv), start, rows);
                    let (p, dp) = (&mut probs[..rows * lk], &mut dprobs[..rows * lk]);
                    matmul(p, false, scale, q_b, k_h.t(), Parallelism::None);
                    for (i, row) in p.chunks_exact_mut(lk).enumerate() {
                        exp_sub_sum(row, lse[unit * lq + start + i]);
                    }
                    matmul(&mut dv_h, start > 0, 1.0, MatRef::row_major(p, rows, lk).t(), do_b, Parallelism::None);
                    matmul(dp, false, 1.0, do_b, v_h.t(), Parallelism::None);
                    for (i, (ds_row, p_row)) in dp.chunks_exact_mut(lk).zip(p.chunks_exact(lk)).enumerate() {
                        let row_dot: f32 = (0..dv).map(|j| do_b.get(i, j) * o_b.get(i, j)).sum();
                        for (ds, &pv) in ds_row.iter_mut().zip(p_row) {
                            *ds = pv * (*ds - row_dot);
                        }
                    }
                    let ds = MatRef::row_major(dp, rows, lk);
                    matmul(&mut dq[start * d..(start + rows) * d], false, scale, ds, k_h, Parallelism::None);
                    matmul(&mut dk, start > 0, scale, ds.t(), q_b, Parallelism::None);
                    start += rows;
                }
                (unit, dq, dk, dv_h)
            },
        )
        .collect();
    let mut dq = vec![0f32; q.len()];
    let mut dk = vec![0f32; k.len()];
    let mut dvs = vec![0f32; v.len()];
    for (unit, dq_u, dk_u, dv_u) in per_unit {
        let (b, h) = (unit / heads, unit % heads);
        dims.scatter(&mut dq, &dq_u, b, h, lq, d, 0);
        dims.scatter(&mut dk, &dk_u, b, h, lk, d, 0);
        dims.scatter(&mut dvs, &dv_u, b, h, lk, dv, 0);
    }
    (dq, dk, dvs)
}
