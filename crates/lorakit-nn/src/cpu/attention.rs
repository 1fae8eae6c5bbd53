//! Fused f32 CPU attention, forward and backward, one (head, query block) at a time.
//!
//! The composed chunked version (`crate::attention`) makes six full passes over every score
//! block (scale, max, subtract, exp, sum, divide), most of them single-threaded, and allocates
//! each. Here a rayon task owns a block: one GEMM writes the scaled scores into a reused
//! buffer, one pass per row takes max, exp and sum, one GEMM applies the values. The backward
//! runs one task per head (dK and dV sum over that head's query blocks), recomputing each
//! block's probabilities from the saved log-sum-exp as FlashAttention does.

use rayon::prelude::*;

use super::exp::{exp_sub_sum, max};
use super::gemm::{matmul, MatRef};
use gemm::Parallelism;

/// Query rows per block: 128 rows × 4096 keys is a 2 MiB score buffer per thread.
const BLOCK_ROWS: usize = 128;

/// Sizes of one attention call: `heads` independent (Lq, D)·(Lk, D)ᵀ·(Lk, Dv) problems.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub heads: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub dv: usize,
}

/// Forward: returns the output (heads, Lq, Dv) and the log-sum-exp of every score row
/// (heads, Lq), from contiguous q (heads, Lq, D), k (heads, Lk, D), v (heads, Lk, Dv).
pub(crate) fn forward(q: &[f32], k: &[f32], v: &[f32], dims: Dims, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let Dims { heads, lq, lk, d, dv } = dims;
    let mut out = vec![0f32; heads * lq * dv];
    let mut lse = vec![0f32; heads * lq];
    let blocks_per_head = lq.div_ceil(BLOCK_ROWS);
    // Each task writes its own rows of `out` and `lse`: split both into per-block pieces.
    let mut tasks: Vec<(usize, usize, &mut [f32], &mut [f32])> = Vec::with_capacity(heads * blocks_per_head);
    for (h, (out_h, lse_h)) in out.chunks_mut(lq * dv).zip(lse.chunks_mut(lq)).enumerate() {
        for (b, (out_b, lse_b)) in out_h.chunks_mut(BLOCK_ROWS * dv).zip(lse_h.chunks_mut(BLOCK_ROWS)).enumerate() {
            tasks.push((h, b * BLOCK_ROWS, out_b, lse_b));
        }
    }
    tasks.into_par_iter().for_each_init(
        || vec![0f32; BLOCK_ROWS * lk],
        |scores, (h, start, out_b, lse_b)| {
            let rows = lse_b.len();
            let q_b = MatRef::row_major(&q[(h * lq + start) * d..], rows, d);
            let k_h = MatRef::row_major(&k[h * lk * d..], lk, d);
            let v_h = MatRef::row_major(&v[h * lk * dv..], lk, dv);
            let scores = &mut scores[..rows * lk];
            matmul(scores, false, scale, q_b, k_h.t(), Parallelism::None);
            let mut inv_sums = [0f32; BLOCK_ROWS];
            for ((row, lse), inv) in scores.chunks_exact_mut(lk).zip(lse_b.iter_mut()).zip(inv_sums.iter_mut()) {
                let m = max(row);
                let sum = exp_sub_sum(row, m);
                *lse = m + sum.ln();
                *inv = 1.0 / sum;
            }
            matmul(out_b, false, 1.0, MatRef::row_major(scores, rows, lk), v_h, Parallelism::None);
            for (o_row, inv) in out_b.chunks_exact_mut(dv).zip(inv_sums) {
                o_row.iter_mut().for_each(|o| *o *= inv);
            }
        },
    );
    (out, lse)
}

/// Backward: (dq, dk, dv) from the forward's inputs, output, log-sum-exp and the output
/// gradient `grad` (heads, Lq, Dv). With P = exp(S − lse): dV = Pᵀ·dO,
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
    let Dims { heads, lq, lk, d, dv } = dims;
    let mut dq = vec![0f32; heads * lq * d];
    let mut dk = vec![0f32; heads * lk * d];
    let mut dvs = vec![0f32; heads * lk * dv];
    let per_head = dq.chunks_mut(lq * d).zip(dk.chunks_mut(lk * d)).zip(dvs.chunks_mut(lk * dv)).enumerate();
    per_head.collect::<Vec<_>>().into_par_iter().for_each_init(
        || (vec![0f32; BLOCK_ROWS * lk], vec![0f32; BLOCK_ROWS * lk]),
        |(probs, dprobs), (h, ((dq_h, dk_h), dv_h))| {
            let k_h = MatRef::row_major(&k[h * lk * d..], lk, d);
            let v_h = MatRef::row_major(&v[h * lk * dv..], lk, dv);
            let mut start = 0;
            while start < lq {
                let rows = BLOCK_ROWS.min(lq - start);
                let q_b = MatRef::row_major(&q[(h * lq + start) * d..], rows, d);
                let grad_rows = &grad[(h * lq + start) * dv..(h * lq + start + rows) * dv];
                let out_rows = &out[(h * lq + start) * dv..(h * lq + start + rows) * dv];
                let do_b = MatRef::row_major(grad_rows, rows, dv);
                let (p, dp) = (&mut probs[..rows * lk], &mut dprobs[..rows * lk]);
                matmul(p, false, scale, q_b, k_h.t(), Parallelism::None);
                for (i, row) in p.chunks_exact_mut(lk).enumerate() {
                    exp_sub_sum(row, lse[h * lq + start + i]);
                }
                matmul(dv_h, start > 0, 1.0, MatRef::row_major(p, rows, lk).t(), do_b, Parallelism::None);
                matmul(dp, false, 1.0, do_b, v_h.t(), Parallelism::None);
                for (i, (ds_row, p_row)) in dp.chunks_exact_mut(lk).zip(p.chunks_exact(lk)).enumerate() {
                    let (g_row, o_row) = (&grad_rows[i * dv..(i + 1) * dv], &out_rows[i * dv..(i + 1) * dv]);
                    let row_dot: f32 = g_row.iter().zip(o_row).map(|(g, o)| g * o).sum();
                    for (ds, &pv) in ds_row.iter_mut().zip(p_row) {
                        *ds = pv * (*ds - row_dot);
                    }
                }
                let ds = MatRef::row_major(dp, rows, lk);
                matmul(&mut dq_h[start * d..(start + rows) * d], false, scale, ds, k_h, Parallelism::None);
                matmul(dk_h, start > 0, scale, ds.t(), q_b, Parallelism::None);
                start += rows;
            }
        },
    );
    (dq, dk, dvs)
}
