//! LoRA branches as one op on the CPU in f32: linear `scale·(x·downᵀ)·upᵀ` and LoCon
//! `scale·up ⊛ (down ⊛ x)`, each alone or fused onto its frozen layer's output.
//!
//! Composed from candle ops a branch is four graph nodes (five with its add onto the frozen
//! output) whose backward broadcasts and sums the factors over the batch, scales the full-size
//! gradient in a separate pass and zero-fills every gradient before adding to it. Here the
//! backward is a few GEMMs from the saved rank-sized `h = down(x)`.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};

use super::conv::{apply_weights, fill_bias, input_grad_sum, kernel_grad, ForwardTerm, Geometry, GradTerm};
use super::gemm::{all_threads, matmul, MatRef};
use super::with_f32;
use crate::custom_backward::attach3_cpu;

/// `scale·(x·downᵀ)·upᵀ` for x (…, in), down (r, in), up (out, r); gradients reach x, down
/// and up where tracked.
pub(crate) fn linear_branch(x: &Tensor, down: &Tensor, up: &Tensor, scale: f32) -> Result<Tensor> {
    linear_with_optional_frozen(x, None, down, up, scale)
}

/// A frozen linear layer and its one LoRA module as a single op:
/// `y = x·Wᵀ + b + scale·(x·downᵀ)·upᵀ`, all three accumulated into one buffer; the backward
/// writes `dx = g·W + gh·down` into one buffer too.
pub(crate) fn linear_with_branch(
    x: &Tensor,
    frozen: &crate::frozen::FrozenLinear,
    down: &Tensor,
    up: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    linear_with_optional_frozen(x, Some(frozen), down, up, scale)
}

/// The linear branch, on top of the frozen layer's output when there is one.
fn linear_with_optional_frozen(
    x: &Tensor,
    frozen: Option<&crate::frozen::FrozenLinear>,
    down: &Tensor,
    up: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    let _profile = crate::profile::scope("linear + LoRA forward");
    let (rank, in_dim) = down.dims2()?;
    let (out_dim, up_rank) = up.dims2()?;
    let w = frozen.map(|f| f.weight().to_dtype(DType::F32)).transpose()?;
    let w_fits = w.as_ref().is_none_or(|w| w.dims() == [out_dim, in_dim]);
    if up_rank != rank || !w_fits || x.dims().last() != Some(&in_dim) {
        candle_core::bail!(
            "LoRA: input {:?}, weight {:?}, down {:?} and up {:?} do not fit together",
            x.dims(),
            w.as_ref().map(|w| w.dims()),
            down.dims(),
            up.dims()
        )
    }
    let bias = frozen.and_then(|f| f.bias()).map(|b| b.to_dtype(DType::F32)).transpose()?;
    let rows = x.elem_count() / in_dim.max(1);
    let (xs, ds, us) = (x.detach().contiguous()?, down.detach().contiguous()?, up.detach().contiguous()?);
    // y starts as the bias rows (if any), gets x·Wᵀ (if frozen) and then the branch.
    let mut y = vec![0f32; rows * out_dim];
    let mut accumulate = false;
    if let Some(b) = &bias {
        with_f32(b, |b| y.chunks_exact_mut(out_dim).for_each(|row| row.copy_from_slice(b)))?;
        accumulate = true;
    }
    if let Some(w) = &w {
        with_f32(&xs, |xv| {
            with_f32(w, |wv| {
                let (xm, wt) = (MatRef::row_major(xv, rows, in_dim), MatRef::row_major(wv, out_dim, in_dim).t());
                matmul(&mut y, accumulate, 1.0, xm, wt, all_threads());
            })
        })??;
        accumulate = true;
    }
    let mut h = vec![0f32; rows * rank];
    with_f32(&xs, |xv| {
        with_f32(&ds, |dv| {
            let (xm, dt) = (MatRef::row_major(xv, rows, in_dim), MatRef::row_major(dv, rank, in_dim).t());
            matmul(&mut h, false, 1.0, xm, dt, all_threads());
        })
    })??;
    with_f32(&us, |uv| {
        let (hm, ut) = (MatRef::row_major(&h, rows, rank), MatRef::row_major(uv, out_dim, rank).t());
        matmul(&mut y, accumulate, scale, hm, ut, all_threads());
    })?;
    let mut shape = x.dims().to_vec();
    *shape.last_mut().expect("checked above") = out_dim;
    let tracked = [x.track_op(), down.track_op(), up.track_op()];
    let device = x.device().clone();
    attach3_cpu(
        [x, down, up],
        y,
        shape.into(),
        Arc::new(move |_, g: &Tensor| {
            let _profile = crate::profile::scope("linear + LoRA backward");
            let h = MatRef::row_major(&h, rows, rank);
            let (gh, du) = with_f32(g, |gv| {
                with_f32(&us, |uv| {
                    let (g, u) = (MatRef::row_major(gv, rows, out_dim), MatRef::row_major(uv, out_dim, rank));
                    // gh = scale·g·up (rows × r): the gradient reaching h.
                    let mut gh = vec![0f32; rows * rank];
                    matmul(&mut gh, false, scale, g, u, all_threads());
                    let du = tracked[2].then(|| {
                        let mut du = vec![0f32; out_dim * rank];
                        matmul(&mut du, false, scale, g.t(), h, all_threads());
                        du
                    });
                    (gh, du)
                })
            })??;
            let gh_m = MatRef::row_major(&gh, rows, rank);
            let dx = if tracked[0] {
                // dx = g·W (frozen) + gh·down, in one buffer.
                let mut dx = vec![0f32; rows * in_dim];
                if let Some(w) = &w {
                    with_f32(g, |gv| {
                        with_f32(w, |wv| {
                            let (g, wm) =
                                (MatRef::row_major(gv, rows, out_dim), MatRef::row_major(wv, out_dim, in_dim));
                            matmul(&mut dx, false, 1.0, g, wm, all_threads());
                        })
                    })??;
                }
                with_f32(&ds, |dv| {
                    matmul(&mut dx, w.is_some(), 1.0, gh_m, MatRef::row_major(dv, rank, in_dim), all_threads());
                })?;
                Some(Tensor::from_vec(dx, xs.shape(), &device)?)
            } else {
                None
            };
            let dd = if tracked[1] {
                let mut dd = vec![0f32; rank * in_dim];
                with_f32(&xs, |xv| {
                    matmul(&mut dd, false, 1.0, gh_m.t(), MatRef::row_major(xv, rows, in_dim), all_threads());
                })?;
                Some(Tensor::from_vec(dd, (rank, in_dim), &device)?)
            } else {
                None
            };
            let du = du.map(|v| Tensor::from_vec(v, (out_dim, rank), &device)).transpose()?;
            Ok([dx, dd, du])
        }),
    )
}

/// The LoCon branch `scale·up ⊛ (down ⊛ x)` for x (B, C, H, W), down (r, C, k, k) with
/// `stride`/`padding`, up (out, r, 1, 1): the down conv through our conv kernels, the 1×1 up
/// as one GEMM per image, and a backward that reuses the saved rank-sized `h`.
pub(crate) fn conv_branch(
    x: &Tensor,
    down: &Tensor,
    up: &Tensor,
    stride: usize,
    padding: usize,
    scale: f32,
) -> Result<Tensor> {
    conv_with_optional_frozen(x, None, down, up, stride, padding, scale)
}

/// A frozen conv and its one LoCon module (same stride and padding) as a single op:
/// `y = W ⊛ x + b + scale·up ⊛ (down ⊛ x)`, the branch accumulated onto the frozen output;
/// `dx` sums both input gradients in one buffer.
pub(crate) fn conv_with_branch(
    x: &Tensor,
    frozen: &crate::frozen::FrozenConv2d,
    down: &Tensor,
    up: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    conv_with_optional_frozen(x, Some(frozen), down, up, frozen.stride(), frozen.padding(), scale)
}

fn conv_with_optional_frozen(
    x: &Tensor,
    frozen: Option<&crate::frozen::FrozenConv2d>,
    down: &Tensor,
    up: &Tensor,
    stride: usize,
    padding: usize,
    scale: f32,
) -> Result<Tensor> {
    let _profile = crate::profile::scope("conv + LoCon forward");
    let (out_dim, rank, uk, uk2) = up.dims4()?;
    let (down_rank, down_in, kernel, kernel_w) = down.dims4()?;
    let (batch, channels, in_h, in_w) = x.dims4()?;
    let frozen_weight = frozen.map(|f| f.weight().to_dtype(DType::F32)).transpose()?;
    let frozen_fits = frozen_weight.as_ref().is_none_or(|w| w.dims() == [out_dim, channels, kernel, kernel]);
    if down_rank != rank || (uk, uk2) != (1, 1) || kernel != kernel_w || down_in != channels || !frozen_fits {
        candle_core::bail!(
            "LoCon: input {:?}, frozen kernel {:?}, down {:?} and up {:?} do not fit together",
            x.dims(),
            frozen_weight.as_ref().map(|w| w.dims()),
            down.dims(),
            up.dims()
        )
    }
    let geometry = Geometry::new(channels, in_h, in_w, kernel, stride, padding)?;
    let (oh, ow) = geometry.out_hw();
    let n = oh * ow;
    let bias = frozen.and_then(|f| f.bias()).map(|b| b.to_dtype(DType::F32)).transpose()?;
    let (xs, ds, us) = (x.detach().contiguous()?, down.detach().contiguous()?, up.detach().contiguous()?);
    // h = down ⊛ x and the frozen output (bias first) from one im2col per image; then the
    // branch scale·up·h is accumulated onto the frozen output.
    let mut h = vec![0f32; batch * rank * n];
    let mut y = vec![0f32; batch * out_dim * n];
    if let Some(b) = &bias {
        with_f32(b, |b| fill_bias(&mut y, b, n))?;
    }
    with_f32(&xs, |xv| {
        with_f32(&ds, |dv| {
            let down_term = ForwardTerm { weight: dv, out: &mut h, accumulate: false };
            match &frozen_weight {
                Some(w) => with_f32(w, |wv| {
                    let frozen_term = ForwardTerm { weight: wv, out: &mut y, accumulate: bias.is_some() };
                    apply_weights(xv, batch, &geometry, &mut [down_term, frozen_term])
                })?,
                None => apply_weights(xv, batch, &geometry, &mut [down_term]),
            }
        })?
    })??;
    with_f32(&us, |u| {
        let u = MatRef::row_major(u, out_dim, rank);
        for (y_b, h_b) in y.chunks_exact_mut(out_dim * n).zip(h.chunks_exact(rank * n)) {
            matmul(y_b, frozen.is_some(), scale, u, MatRef::row_major(h_b, rank, n), all_threads());
        }
    })?;
    let tracked = [x.track_op(), down.track_op(), up.track_op()];
    let device = x.device().clone();
    attach3_cpu(
        [x, down, up],
        y,
        (batch, out_dim, oh, ow).into(),
        Arc::new(move |_, g: &Tensor| {
            let _profile = crate::profile::scope("conv + LoCon backward");
            let g = g.contiguous()?;
            // gh = scale·upᵀ·g (the gradient reaching h) and dup = scale·Σ_b g_b·h_bᵀ.
            let (gh, du) = with_f32(&g, |g| {
                with_f32(&us, |u| {
                    let u = MatRef::row_major(u, out_dim, rank);
                    let mut gh = vec![0f32; batch * rank * n];
                    let mut du = vec![0f32; out_dim * rank];
                    for (i, ((gh_b, g_b), h_b)) in gh
                        .chunks_exact_mut(rank * n)
                        .zip(g.chunks_exact(out_dim * n))
                        .zip(h.chunks_exact(rank * n))
                        .enumerate()
                    {
                        let g_b = MatRef::row_major(g_b, out_dim, n);
                        matmul(gh_b, false, scale, u.t(), g_b, all_threads());
                        if tracked[2] {
                            matmul(&mut du, i > 0, scale, g_b, MatRef::row_major(h_b, rank, n).t(), all_threads());
                        }
                    }
                    (gh, du)
                })
            })??;
            // dx = col2im(Wᵀ·g + downᵀ·gh): both terms summed before one fold.
            let dx = if tracked[0] {
                let dx = with_f32(&ds, |dv| {
                    let branch = GradTerm { weight: dv, grad: &gh };
                    match &frozen_weight {
                        Some(w) => with_f32(w, |wv| {
                            with_f32(&g, |gv| {
                                input_grad_sum(&[GradTerm { weight: wv, grad: gv }, branch], batch, &geometry)
                            })
                        })??,
                        None => input_grad_sum(&[branch], batch, &geometry),
                    }
                })??;
                Some(Tensor::from_vec(dx, (batch, channels, in_h, in_w), &device)?)
            } else {
                None
            };
            let dd = if tracked[1] {
                let (dd, shape) = with_f32(&xs, |xv| {
                    kernel_grad(xv, xs.dims(), &gh, &[batch, rank, oh, ow], kernel, stride, padding)
                })??;
                Some(Tensor::from_vec(dd, shape, &device)?)
            } else {
                None
            };
            let du = if tracked[2] { Some(Tensor::from_vec(du, (out_dim, rank, 1, 1), &device)?) } else { None };
            Ok([dx, dd, du])
        }),
    )
}
