//! A linear LoRA branch `scale·(x·downᵀ)·upᵀ` as one op on the CPU in f32.
//!
//! Composed from candle ops it is four graph nodes whose backward broadcasts and sums the
//! factors over the batch, scales the full-size gradient in a separate pass and zero-fills
//! every gradient before adding to it. Here the backward is four small GEMMs from the saved
//! rank-sized `h = x·downᵀ`.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::gemm::{all_threads, matmul, MatRef};
use super::with_f32;
use crate::custom_backward::attach3_cpu;

/// `scale·(x·downᵀ)·upᵀ` for x (…, in), down (r, in), up (out, r); gradients reach x, down
/// and up where tracked.
pub(crate) fn linear_branch(x: &Tensor, down: &Tensor, up: &Tensor, scale: f32) -> Result<Tensor> {
    let (rank, in_dim) = down.dims2()?;
    let (out_dim, up_rank) = up.dims2()?;
    if up_rank != rank || x.dims().last() != Some(&in_dim) {
        candle_core::bail!(
            "LoRA: input {:?}, down {:?} and up {:?} do not fit together",
            x.dims(),
            down.dims(),
            up.dims()
        )
    }
    let rows = x.elem_count() / in_dim.max(1);
    let (xs, ds, us) = (x.detach().contiguous()?, down.detach().contiguous()?, up.detach().contiguous()?);
    let mut h = vec![0f32; rows * rank];
    with_f32(&xs, |x| {
        with_f32(&ds, |d| {
            matmul(
                &mut h,
                false,
                1.0,
                MatRef::row_major(x, rows, in_dim),
                MatRef::row_major(d, rank, in_dim).t(),
                all_threads(),
            )
        })
    })??;
    let mut y = vec![0f32; rows * out_dim];
    with_f32(&us, |u| {
        matmul(
            &mut y,
            false,
            scale,
            MatRef::row_major(&h, rows, rank),
            MatRef::row_major(u, out_dim, rank).t(),
            all_threads(),
        )
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
            let h = MatRef::row_major(&h, rows, rank);
            let (dx, dd, du) = with_f32(g, |g| {
                with_f32(&xs, |x| {
                    with_f32(&ds, |d| {
                        with_f32(&us, |u| {
                            let g = MatRef::row_major(g, rows, out_dim);
                            // gh = scale·g·up (rows × r): the gradient reaching h.
                            let mut gh = vec![0f32; rows * rank];
                            matmul(&mut gh, false, scale, g, MatRef::row_major(u, out_dim, rank), all_threads());
                            let gh_m = MatRef::row_major(&gh, rows, rank);
                            let dx = tracked[0].then(|| {
                                let mut dx = vec![0f32; rows * in_dim];
                                matmul(&mut dx, false, 1.0, gh_m, MatRef::row_major(d, rank, in_dim), all_threads());
                                dx
                            });
                            let dd = tracked[1].then(|| {
                                let mut dd = vec![0f32; rank * in_dim];
                                matmul(
                                    &mut dd,
                                    false,
                                    1.0,
                                    gh_m.t(),
                                    MatRef::row_major(x, rows, in_dim),
                                    all_threads(),
                                );
                                dd
                            });
                            let du = tracked[2].then(|| {
                                let mut du = vec![0f32; out_dim * rank];
                                matmul(&mut du, false, scale, g.t(), h, all_threads());
                                du
                            });
                            (dx, dd, du)
                        })
                    })
                })
            })????;
            Ok([
                dx.map(|v| Tensor::from_vec(v, xs.shape(), &device)).transpose()?,
                dd.map(|v| Tensor::from_vec(v, (rank, in_dim), &device)).transpose()?,
                du.map(|v| Tensor::from_vec(v, (out_dim, rank), &device)).transpose()?,
            ])
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
    let (out_dim, rank, uk, uk2) = up.dims4()?;
    if down.dims4()?.0 != rank || (uk, uk2) != (1, 1) {
        candle_core::bail!("LoCon: down {:?} and up {:?} do not fit together", down.dims(), up.dims())
    }
    let (xs, ds, us) = (x.detach().contiguous()?, down.detach().contiguous()?, up.detach().contiguous()?);
    let (h, h_shape) = super::conv::conv2d(&xs, &ds, None, stride, padding)?;
    let (batch, _, oh, ow) = h_shape.dims4()?;
    let n = oh * ow;
    let mut y = vec![0f32; batch * out_dim * n];
    with_f32(&us, |u| {
        let u = MatRef::row_major(u, out_dim, rank);
        for (y_b, h_b) in y.chunks_exact_mut(out_dim * n).zip(h.chunks_exact(rank * n)) {
            matmul(y_b, false, scale, u, MatRef::row_major(h_b, rank, n), all_threads());
        }
    })?;
    let tracked = [x.track_op(), down.track_op(), up.track_op()];
    let device = x.device().clone();
    let kernel = ds.dims()[2];
    attach3_cpu(
        [x, down, up],
        y,
        (batch, out_dim, oh, ow).into(),
        Arc::new(move |_, g: &Tensor| {
            let (gh, du) = with_f32(g, |g| {
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
            let gh = Tensor::from_vec(gh, (batch, rank, oh, ow), &device)?;
            let (_, _, in_h, in_w) = xs.dims4()?;
            let dx = if tracked[0] {
                Some(super::conv::conv2d_input_grad(&gh, &ds, stride, padding, (in_h, in_w))?)
            } else {
                None
            };
            let dd = if tracked[1] {
                Some(super::conv::conv2d_kernel_grad(&xs, &gh, kernel, stride, padding)?)
            } else {
                None
            };
            let du = if tracked[2] { Some(Tensor::from_vec(du, (out_dim, rank, 1, 1), &device)?) } else { None };
            Ok([dx, dd, du])
        }),
    )
}
