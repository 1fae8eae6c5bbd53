//! The elementwise and per-head ops of Flux's transformer blocks (BFL's `flux/modules/layers.py`):
//! adaptive-LayerNorm modulation, the gated residual, the q/k RMS norms with the rotary
//! embedding fused into joint attention, and tanh-GELU fused into the single blocks' concat.
//!
//! Each op has a composed version from candle's tracked ops — what CUDA and every dtype other
//! than f32 run, and what the f64 gradient checks verify — and, for f32 on the CPU, one of
//! `cpu::dit`'s kernels with its own backward (`tests/gradients.rs` checks they agree).
//! Composed, candle differentiates these op by op with full-size intermediates and pads every
//! `narrow` of a fused projection back to full width: about a third of a Flux LoRA step on the
//! CPU before these kernels.

use std::sync::Arc;

use candle_core::{DType, Result, Shape, Tensor, D};

use crate::attention::{attention_heads, attention_heads_key_bias};
use crate::cpu;
use crate::custom_backward::attach_n_cpu;

/// The values of a small tensor (norm scales, rotary tables) as f32.
fn f32_values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

/// A tensor of `shape` on `like`'s device from kernel output.
fn from_kernel(data: Vec<f32>, shape: impl Into<Shape>, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(data, shape, like.device())
}

/// `(B, L, W)` of `x` when `per_item` tensors are all `(B, 1, W)` and every tensor is f32 on the
/// CPU: the shapes the modulation kernels take (anything else is broadcast by candle).
fn modulation_dims(x: &Tensor, per_item: &[&Tensor]) -> Option<(usize, usize, usize)> {
    let (b, l, w) = x.dims3().ok()?;
    let fits = cpu::handles(x) && per_item.iter().all(|t| cpu::handles(t) && t.dims() == [b, 1, w]);
    (fits && b * l * w > 0).then_some((b, l, w))
}

/// `x·(1 + scale) + shift` (adaptive-LayerNorm modulation) with `shift`/`scale` (B, 1, W)
/// broadcast over the tokens of `x` (B, L, W). Gradients flow to all three.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let Some((_, l, w)) = modulation_dims(x, &[shift, scale]) else {
        return x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift);
    };
    let xs = x.detach().contiguous()?;
    let (shift_v, scale_v) = (f32_values(shift)?, f32_values(scale)?);
    let y = cpu::with_f32(&xs, |x| cpu::dit::modulate(x, &shift_v, &scale_v, w, l))?;
    let (param_shape, tracked) = (shift.shape().clone(), [x.track_op(), shift.track_op(), scale.track_op()]);
    attach_n_cpu(
        &[x, shift, scale],
        y,
        x.shape().clone(),
        Arc::new(move |_: &Tensor, g: &Tensor| {
            let (dx, dshift, dscale) =
                cpu::with_f32(&xs, |x| cpu::with_f32(g, |g| cpu::dit::modulate_backward(x, &scale_v, g, w, l)))??;
            Ok(vec![
                tracked[0].then(|| from_kernel(dx, xs.shape(), &xs)).transpose()?,
                tracked[1].then(|| from_kernel(dshift, param_shape.clone(), &xs)).transpose()?,
                tracked[2].then(|| from_kernel(dscale, param_shape.clone(), &xs)).transpose()?,
            ])
        }),
    )
}

/// `x + y·gate` (a gated residual update) with `gate` (B, 1, W) broadcast over the tokens of
/// `x` and `y` (B, L, W). Gradients flow to all three.
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let dims = modulation_dims(x, &[gate]).filter(|_| cpu::handles(y) && y.dims() == x.dims());
    let Some((_, l, w)) = dims else {
        return x + y.broadcast_mul(gate)?;
    };
    let (xs, ys) = (x.detach().contiguous()?, y.detach().contiguous()?);
    let gate_v = f32_values(gate)?;
    let out = cpu::with_f32(&xs, |x| cpu::with_f32(&ys, |y| cpu::dit::gated_residual(x, y, &gate_v, w, l)))??;
    let (gate_shape, tracked) = (gate.shape().clone(), [y.track_op(), gate.track_op()]);
    attach_n_cpu(
        &[x, y, gate],
        out,
        x.shape().clone(),
        Arc::new(move |_: &Tensor, g: &Tensor| {
            let (dy, dgate) =
                cpu::with_f32(&ys, |y| cpu::with_f32(g, |g| cpu::dit::gated_residual_backward(y, &gate_v, g, w, l)))??;
            Ok(vec![
                Some(g.clone()),
                tracked[0].then(|| from_kernel(dy, ys.shape(), &ys)).transpose()?,
                tracked[1].then(|| from_kernel(dgate, gate_shape.clone(), &ys)).transpose()?,
            ])
        }),
    )
}

/// BFL's RMSNorm over each head's features of `x` (B, L, heads·d) with weight `scale` (d),
/// composed: computed in f32 (f64 for f64 input), returned in `x`'s dtype.
pub fn head_rms_norm(x: &Tensor, scale: &Tensor, heads: usize, eps: f64) -> Result<Tensor> {
    let (b, l, width) = x.dims3()?;
    let stat = crate::stat_dtype(x.dtype());
    let xs = x.to_dtype(stat)?.reshape((b, l, heads, width / heads))?;
    let rrms = (xs.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let normed = xs.broadcast_mul(&rrms)?.broadcast_mul(&scale.to_dtype(stat)?)?;
    normed.reshape((b, l, width))?.to_dtype(x.dtype())
}

/// The rotary embedding, composed: rotates each head's consecutive pairs of `x`
/// (B, L, heads·head_dim) by the angles whose `cos`/`sin` are (L, head_dim/2):
/// `(x0, x1) → (x0·cos − x1·sin, x0·sin + x1·cos)`, in f32 (f64 for f64 input), returned in
/// `x`'s dtype.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, width) = x.dims3()?;
    let half = width / heads / 2;
    let stat = crate::stat_dtype(x.dtype());
    let xs = x.to_dtype(stat)?.reshape((b, l, heads, half, 2))?;
    let (x0, x1) = (xs.narrow(4, 0, 1)?, xs.narrow(4, 1, 1)?);
    let cos = cos.to_dtype(stat)?.reshape((1, l, 1, half, 1))?;
    let sin = sin.to_dtype(stat)?.reshape((1, l, 1, half, 1))?;
    let r0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let r1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::cat(&[r0, r1], 4)?.reshape((b, l, width))?.to_dtype(x.dtype())
}

/// One token stream's attention projection for [`qk_norm_rope_attention`]: `qkv`
/// (B, L, C) holds q, k and v in its first 3·W columns (W = heads·d; a single block's fused
/// projection has the MLP input after them), `q_scale`/`k_scale` (d) are the RMS norms'
/// weights (frozen: they get no gradient).
#[derive(Clone, Copy, Debug)]
pub struct QkvStream<'a> {
    pub qkv: &'a Tensor,
    pub q_scale: &'a Tensor,
    pub k_scale: &'a Tensor,
}

/// Flux's joint attention: each stream's q and k RMS-normalised per head, the streams' tokens
/// joined in order, q and k rotated by `cos`/`sin` (ΣL, d/2), then softmax attention with
/// scale 1/√d; `key_bias` (B, ΣL) is added to the scores when given (padded text). Returns
/// (B, ΣL, W); gradients flow to every stream's `qkv` (zero past its first 3·W columns).
///
/// On the CPU in f32 without a key bias this is one op: the norms and rotation run in a pass
/// over the projections that also lays q, k, v out for the attention kernel, and the backward
/// writes each projection's gradient directly. Otherwise it is composed from
/// [`head_rms_norm`], [`rope`] and [`attention_heads`] / [`attention_heads_key_bias`].
pub fn qk_norm_rope_attention(
    streams: &[QkvStream],
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    eps: f64,
    key_bias: Option<&Tensor>,
) -> Result<Tensor> {
    let Some(first) = streams.first() else { candle_core::bail!("attention: no token streams") };
    let d = first.q_scale.dims1()?;
    let width = heads * d;
    let b = first.qkv.dim(0)?;
    let mut total = 0;
    for s in streams {
        let (sb, l, c) = s.qkv.dims3()?;
        if sb != b || c < 3 * width || s.q_scale.dims1()? != d || s.k_scale.dims1()? != d {
            candle_core::bail!(
                "attention: projection {:?} with norm widths {:?}/{:?} does not fit {heads} heads of {d} (batch {b})",
                s.qkv.dims(),
                s.q_scale.dims(),
                s.k_scale.dims()
            )
        }
        total += l;
    }
    if d % 2 != 0 || cos.dims() != [total, d / 2] || sin.dims() != [total, d / 2] {
        candle_core::bail!(
            "attention: rotary tables {:?}/{:?} for {total} tokens and heads of {d}",
            cos.dims(),
            sin.dims()
        )
    }
    let scale = 1.0 / (d as f64).sqrt();
    if key_bias.is_none() && streams.len() <= 3 && streams.iter().all(|s| cpu::handles(s.qkv)) && total > 0 {
        return qk_norm_rope_attention_cpu(streams, cos, sin, cpu::dit::HeadRows { heads, d, eps: eps as f32 }, scale);
    }
    let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
    for s in streams {
        qs.push(head_rms_norm(&s.qkv.narrow(2, 0, width)?, s.q_scale, heads, eps)?);
        ks.push(head_rms_norm(&s.qkv.narrow(2, width, width)?, s.k_scale, heads, eps)?);
        vs.push(s.qkv.narrow(2, 2 * width, width)?);
    }
    let join = |parts: Vec<Tensor>| if parts.len() == 1 { Ok(parts[0].clone()) } else { Tensor::cat(&parts, 1) };
    let (q, k, v) = (join(qs)?, join(ks)?, join(vs)?);
    let (q, k) = (rope(&q, cos, sin, heads)?, rope(&k, cos, sin, heads)?);
    match key_bias {
        Some(bias) => attention_heads_key_bias(&q, &k, &v, heads, scale, bias),
        None => attention_heads(&q.contiguous()?, &k.contiguous()?, &v.contiguous()?, heads, scale),
    }
}

/// [`qk_norm_rope_attention`] through the f32 CPU kernels.
fn qk_norm_rope_attention_cpu(
    streams: &[QkvStream],
    cos: &Tensor,
    sin: &Tensor,
    rows: cpu::dit::HeadRows,
    scale: f64,
) -> Result<Tensor> {
    let (heads, d) = (rows.heads, rows.d);
    let (w, half) = (heads * d, d / 2);
    let b = streams[0].qkv.dim(0)?;
    let xs: Vec<Tensor> = streams.iter().map(|s| s.qkv.detach().contiguous()).collect::<Result<_>>()?;
    let sizes: Vec<(usize, usize)> = xs.iter().map(|x| Ok((x.dim(1)?, x.dim(2)?))).collect::<Result<_>>()?;
    let total: usize = sizes.iter().map(|&(l, _)| l).sum();
    let norm_scales: Vec<(Vec<f32>, Vec<f32>)> =
        streams.iter().map(|s| Ok((f32_values(s.q_scale)?, f32_values(s.k_scale)?))).collect::<Result<_>>()?;
    let (cos_v, sin_v) = (f32_values(cos)?, f32_values(sin)?);
    let (mut q, mut k, mut v) = (vec![0f32; b * total * w], vec![0f32; b * total * w], vec![0f32; b * total * w]);
    // Row ranges: stream `s` of item `i` is rows [i·total + offset_s, + L_s) of q, k, v.
    let offsets: Vec<usize> = sizes.iter().scan(0, |off, &(l, _)| Some(std::mem::replace(off, *off + l))).collect();
    for (s, x) in xs.iter().enumerate() {
        let ((l, cols), off) = (sizes[s], offsets[s]);
        let (qs, ks) = (&norm_scales[s].0, &norm_scales[s].1);
        let (cos_s, sin_s) = (&cos_v[off * half..(off + l) * half], &sin_v[off * half..(off + l) * half]);
        cpu::with_f32(x, |x| {
            for item in 0..b {
                let rows_out = (item * total + off) * w..(item * total + off + l) * w;
                cpu::dit::norm_rope_forward(
                    &x[item * l * cols..(item + 1) * l * cols],
                    cols,
                    l,
                    qs,
                    ks,
                    cos_s,
                    sin_s,
                    rows,
                    (&mut q[rows_out.clone()], &mut k[rows_out.clone()], &mut v[rows_out]),
                );
            }
        })?;
    }
    let dims = cpu::attention::Dims { batch: b, heads, lq: total, lk: total, d, dv: d };
    let (out, lse) = cpu::attention::forward(&q, &k, &v, dims, scale as f32);
    let inputs: Vec<&Tensor> = streams.iter().map(|s| s.qkv).collect();
    let tracked: Vec<bool> = inputs.iter().map(|t| t.track_op()).collect();
    attach_n_cpu(
        &inputs,
        out,
        (b, total, w).into(),
        Arc::new(move |out: &Tensor, g: &Tensor| {
            let (dq, dk, dv) = cpu::with_f32(out, |o| {
                cpu::with_f32(g, |g| cpu::attention::backward(&q, &k, &v, o, &lse, g, dims, scale as f32))
            })??;
            let mut grads = Vec::with_capacity(xs.len());
            for (s, x) in xs.iter().enumerate() {
                if !tracked[s] {
                    grads.push(None);
                    continue;
                }
                let ((l, cols), off) = (sizes[s], offsets[s]);
                let (cos_s, sin_s) = (&cos_v[off * half..(off + l) * half], &sin_v[off * half..(off + l) * half]);
                let dx = cpu::with_f32(x, |x| {
                    let mut dx = vec![0f32; x.len()];
                    for item in 0..b {
                        let rows_in = item * l * cols..(item + 1) * l * cols;
                        let rows_out = (item * total + off) * w..(item * total + off + l) * w;
                        cpu::dit::norm_rope_backward(
                            &x[rows_in.clone()],
                            cols,
                            l,
                            &norm_scales[s].0,
                            &norm_scales[s].1,
                            cos_s,
                            sin_s,
                            rows,
                            (&dq[rows_out.clone()], &dk[rows_out.clone()], &dv[rows_out]),
                            &mut dx[rows_in],
                        );
                    }
                    dx
                })?;
                grads.push(Some(from_kernel(dx, x.shape(), x)?));
            }
            Ok(grads)
        }),
    )
}

/// `cat([a, gelu_tanh(x[…, start..])], −1)`: a single block's `linear2` input, the attention
/// output beside the activated MLP part of the fused projection `x`. Gradients flow to `a`
/// and `x` (zero in `x`'s first `start` columns).
pub fn concat_gelu_tail(a: &Tensor, x: &Tensor, start: usize) -> Result<Tensor> {
    let (wa, wx) = (a.dim(D::Minus1)?, x.dim(D::Minus1)?);
    if start > wx {
        candle_core::bail!("concat_gelu_tail: start {start} past the width {wx}")
    }
    let (lead_a, lead_x) = (&a.dims()[..a.rank() - 1], &x.dims()[..x.rank() - 1]);
    if lead_a != lead_x {
        candle_core::bail!("concat_gelu_tail: {:?} and {:?} differ before the last dimension", a.dims(), x.dims())
    }
    if !(cpu::handles(a) && cpu::handles(x)) || wa == 0 || wx == start || a.elem_count() == 0 {
        return Tensor::cat(&[a.clone(), x.narrow(D::Minus1, start, wx - start)?.gelu()?], D::Minus1);
    }
    let (a_c, xs) = (a.detach().contiguous()?, x.detach().contiguous()?);
    let y = cpu::with_f32(&a_c, |a| cpu::with_f32(&xs, |x| cpu::dit::concat_gelu_tail(a, wa, x, wx, start)))??;
    drop(a_c);
    let mut out_shape = x.dims().to_vec();
    *out_shape.last_mut().expect("rank checked above") = wa + wx - start;
    let (a_shape, tracked) = (a.shape().clone(), [a.track_op(), x.track_op()]);
    attach_n_cpu(
        &[a, x],
        y,
        out_shape.into(),
        Arc::new(move |_: &Tensor, g: &Tensor| {
            let (da, dx) = cpu::with_f32(&xs, |x| {
                cpu::with_f32(g, |g| cpu::dit::concat_gelu_tail_backward(x, wa, wx, start, g))
            })??;
            Ok(vec![
                tracked[0].then(|| from_kernel(da, a_shape.clone(), &xs)).transpose()?,
                tracked[1].then(|| from_kernel(dx, xs.shape(), &xs)).transpose()?,
            ])
        }),
    )
}
