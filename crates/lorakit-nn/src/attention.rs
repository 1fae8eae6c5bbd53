//! Scaled dot-product attention that never keeps the full attention matrix for backward.
//!
//! The composed `softmax(q·kᵀ)·v` graph stores the (N, Lq, Lk) matrix and several temporaries of
//! that size per layer — 512 MB each for SD1.5's 64×64 self-attention at batch 1. Here the
//! forward walks query chunks and keeps only the output and one log-sum-exp per query row; the
//! backward recomputes each chunk's probabilities (the FlashAttention recipe, chunked over
//! queries only), so peak memory is one chunk of the matrix.

use std::sync::Arc;

use candle_core::{Result, Tensor, D};

use crate::cpu;
use crate::custom_backward::{attach3_cpu, attach_many};
use crate::stat_dtype;

/// Upper bound on the elements of one chunk's score matrix (128 MiB of f32).
const CHUNK_ELEMENTS: usize = 32 << 20;

/// `softmax(q·kᵀ·scale)·v` for q (N, Lq, D), k (N, Lk, D), v (N, Lk, Dv) → (N, Lq, Dv), where N
/// is batch × heads. Gradients flow to q, k and v.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (n, lq, d) = q.dims3()?;
    let (nk, lk, dk) = k.dims3()?;
    let (nv, lv, _) = v.dims3()?;
    if nk != n || nv != n || dk != d || lv != lk {
        candle_core::bail!("attention: q {:?}, k {:?}, v {:?} do not fit together", q.dims(), k.dims(), v.dims())
    }
    if cpu::handles(q) && cpu::handles(k) && cpu::handles(v) {
        return fused_cpu(q, k, v, 1, scale);
    }
    let (qd, kd, vd) = (q.detach().contiguous()?, k.detach().contiguous()?, v.detach().contiguous()?);
    let stat = stat_dtype(q.dtype());
    let chunk = (CHUNK_ELEMENTS / (n * lk).max(1)).clamp(1, lq);
    let mut outs = Vec::new();
    let mut lses = Vec::new();
    let mut start = 0;
    while start < lq {
        let len = chunk.min(lq - start);
        let q_c = qd.narrow(1, start, len)?;
        let scores = (q_c.matmul(&kd.t()?)? * scale)?.to_dtype(stat)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let p = scores.broadcast_sub(&max)?.exp()?;
        let sum = p.sum_keepdim(D::Minus1)?;
        let o = p.to_dtype(vd.dtype())?.matmul(&vd)?.broadcast_div(&sum.to_dtype(vd.dtype())?)?;
        outs.push(o);
        lses.push((max + sum.log()?)?);
        start += len;
    }
    let out = Tensor::cat(&outs, 1)?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(out);
    }
    let lse = Tensor::cat(&lses, 1)?;
    let saved_out = out.clone();
    attach_many(
        &[q, k, v],
        &out,
        Arc::new(move |g: &Tensor| attention_backward(&qd, &kd, &vd, &saved_out, &lse, g, scale, chunk)),
    )
}

/// Multi-head attention over projections laid out (B, L, heads·d), as attention layers produce
/// them: q (B, Lq, H·d), k (B, Lk, H·d), v (B, Lk, H·dv) → (B, Lq, H·dv). On the CPU in f32
/// the heads are read in place; elsewhere they are split into (B·H, L, d) for [`attention`].
pub fn attention_heads(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let HeadDims { b, lq, qw, lk, kw, vw } = head_dims(q, k, v, heads)?;
    if cpu::handles(q) && cpu::handles(k) && cpu::handles(v) {
        return fused_cpu(q, k, v, heads, scale);
    }
    let fold = |t: &Tensor, len: usize, width: usize| {
        t.reshape((b, len, heads, width / heads))?.transpose(1, 2)?.reshape((b * heads, len, width / heads))
    };
    let o = attention(&fold(q, lq, qw)?, &fold(k, lk, kw)?, &fold(v, lk, vw)?, scale)?;
    o.reshape((b, heads, lq, vw / heads))?.transpose(1, 2)?.reshape((b, lq, vw))
}

/// The sizes of multi-head projections q (B, Lq, H·d), k (B, Lk, H·d), v (B, Lk, H·dv).
struct HeadDims {
    b: usize,
    lq: usize,
    qw: usize,
    lk: usize,
    kw: usize,
    vw: usize,
}

/// [`HeadDims`] of q, k, v, or an error when they do not fit together with `heads` heads.
fn head_dims(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<HeadDims> {
    let ((b, lq, qw), (bk, lk, kw), (bv, lv, vw)) = (q.dims3()?, k.dims3()?, v.dims3()?);
    if heads == 0 || qw % heads != 0 || vw % heads != 0 || kw != qw || bk != b || bv != b || lv != lk {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit together with {heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    Ok(HeadDims { b, lq, qw, lk, kw, vw })
}

/// Attention through the fused f32 CPU kernels, q (B, Lq, H·d), k (B, Lk, H·d), v (B, Lk, H·dv).
fn fused_cpu(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (qd, kd, vd) = (q.detach().contiguous()?, k.detach().contiguous()?, v.detach().contiguous()?);
    let (batch, lq, qw) = qd.dims3()?;
    let (lk, vw) = (kd.dim(1)?, vd.dim(2)?);
    let (d, dv) = (qw / heads, vw / heads);
    let dims = cpu::attention::Dims { batch, heads, lq, lk, d, dv };
    let scale = scale as f32;
    let (out, lse) = cpu::with_f32(&qd, |q| {
        cpu::with_f32(&kd, |k| cpu::with_f32(&vd, |v| cpu::attention::forward(q, k, v, dims, scale)))
    })???;
    attach3_cpu(
        [q, k, v],
        out,
        (batch, lq, vw).into(),
        Arc::new(move |saved_out: &Tensor, g: &Tensor| {
            let device = g.device().clone();
            let (dq, dk, dv_grad) = cpu::with_f32(&qd, |q| {
                cpu::with_f32(&kd, |k| {
                    cpu::with_f32(&vd, |v| {
                        cpu::with_f32(saved_out, |o| {
                            cpu::with_f32(g, |g| cpu::attention::backward(q, k, v, o, &lse, g, dims, scale))
                        })
                    })
                })
            })?????;
            Ok([
                Some(Tensor::from_vec(dq, (batch, lq, qw), &device)?),
                Some(Tensor::from_vec(dk, (batch, lk, qw), &device)?),
                Some(Tensor::from_vec(dv_grad, (batch, lk, vw), &device)?),
            ])
        }),
    )
}

/// Gradients of q, k, v from the saved output and per-row log-sum-exp, one query chunk at a
/// time: with P = exp(S − lse), dV = Pᵀ·dO, dS = P ∘ (dO·vᵀ − rowsum(dO ∘ O)), dQ = dS·k·scale,
/// dK = dSᵀ·q·scale.
#[allow(clippy::too_many_arguments)]
fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    grad_out: &Tensor,
    scale: f64,
    chunk: usize,
) -> Result<Vec<Tensor>> {
    let lq = q.dim(1)?;
    let dtype = q.dtype();
    let stat = stat_dtype(dtype);
    let grad_out = grad_out.contiguous()?;
    let row_dot = (&grad_out * out)?.to_dtype(stat)?.sum_keepdim(D::Minus1)?;
    let mut dq_parts = Vec::new();
    let mut dk = k.zeros_like()?;
    let mut dv = v.zeros_like()?;
    let mut start = 0;
    while start < lq {
        let len = chunk.min(lq - start);
        let q_c = q.narrow(1, start, len)?;
        let do_c = grad_out.narrow(1, start, len)?;
        let scores = (q_c.matmul(&k.t()?)? * scale)?.to_dtype(stat)?;
        let p = scores.broadcast_sub(&lse.narrow(1, start, len)?)?.exp()?;
        dv = (dv + p.to_dtype(dtype)?.t()?.matmul(&do_c)?)?;
        let dp = do_c.matmul(&v.t()?)?.to_dtype(stat)?;
        let ds = (p * dp.broadcast_sub(&row_dot.narrow(1, start, len)?)?)?.to_dtype(dtype)?;
        dq_parts.push((ds.matmul(k)? * scale)?);
        dk = (dk + (ds.t()?.matmul(&q_c)? * scale)?)?;
        start += len;
    }
    Ok(vec![Tensor::cat(&dq_parts, 1)?, dk, dv])
}

/// The plain composed attention (full matrix, candle's own backward); the reference the chunked
/// version is tested against.
pub fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    crate::activation::softmax_last_dim(&scores)?.matmul(v)
}

/// [`attention_heads`] with an additive bias on the keys: `key_bias` (B, Lk) is added to every
/// query's scores of that sample (0 keeps a key, a large negative value masks it), as
/// `scaled_dot_product_attention` does with a padding mask. Composed from tracked ops (it keeps
/// the attention matrix for backward); used only where a mask is asked for.
pub fn attention_heads_key_bias(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    key_bias: &Tensor,
) -> Result<Tensor> {
    let HeadDims { b, lq, qw, lk, kw, vw } = head_dims(q, k, v, heads)?;
    if key_bias.dims() != [b, lk] {
        candle_core::bail!("attention: key bias {:?} does not fit keys {:?}", key_bias.dims(), k.dims())
    }
    let stat = stat_dtype(q.dtype());
    let split = |t: &Tensor, len: usize, width: usize| t.reshape((b, len, heads, width / heads))?.transpose(1, 2);
    let (qh, kh, vh) = (split(q, lq, qw)?, split(k, lk, kw)?, split(v, lk, vw)?);
    let scores = (qh.contiguous()?.matmul(&kh.contiguous()?.t()?)? * scale)?.to_dtype(stat)?;
    let bias = key_bias.to_dtype(stat)?.reshape((b, 1, 1, lk))?;
    let p = crate::activation::softmax_last_dim(&scores.broadcast_add(&bias)?)?.to_dtype(v.dtype())?;
    p.matmul(&vh.contiguous()?)?.transpose(1, 2)?.reshape((b, lq, vw))
}
