//! Frozen linear layers on the CPU in f32: `x·Wᵀ + b` with the bias written first and the
//! product accumulated onto it (one pass fewer than matmul-then-add), output handed to the
//! graph without a copy.

use candle_core::{Result, Shape, Tensor};

use super::gemm::{all_threads, matmul, MatRef};
use super::with_f32;

/// `x·Wᵀ + b` for x (…, in), w (out, in), b (out): row-major data and its shape.
pub(crate) fn forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<(Vec<f32>, Shape)> {
    let _profile = crate::profile::scope("frozen linear forward");
    let (out_dim, in_dim) = w.dims2()?;
    let x_dims = x.dims();
    if x_dims.last() != Some(&in_dim) {
        candle_core::bail!("linear: input {x_dims:?} does not end in the weight's {in_dim} input features")
    }
    if bias.is_some_and(|b| b.dims() != [out_dim]) {
        candle_core::bail!("linear: bias does not have {out_dim} elements")
    }
    let rows = x.elem_count() / in_dim.max(1);
    let mut out = vec![0f32; rows * out_dim];
    if let Some(b) = bias {
        with_f32(b, |b| out.chunks_exact_mut(out_dim).for_each(|row| row.copy_from_slice(b)))?;
    }
    with_f32(x, |xs| {
        with_f32(w, |ws| {
            let (x, wt) = (MatRef::row_major(xs, rows, in_dim), MatRef::row_major(ws, out_dim, in_dim).t());
            matmul(&mut out, bias.is_some(), 1.0, x, wt, all_threads());
        })
    })??;
    let mut shape = x_dims.to_vec();
    *shape.last_mut().expect("checked non-empty above") = out_dim;
    Ok((out, Shape::from(shape)))
}

/// The input gradient `g·W` for g (…, out), w (out, in).
pub(crate) fn input_grad(g: &Tensor, w: &Tensor) -> Result<Tensor> {
    let _profile = crate::profile::scope("frozen linear backward");
    let (out_dim, in_dim) = w.dims2()?;
    if g.dims().last() != Some(&out_dim) {
        candle_core::bail!("linear backward: gradient {:?} does not end in {out_dim} features", g.dims())
    }
    let rows = g.elem_count() / out_dim.max(1);
    let mut dx = vec![0f32; rows * in_dim];
    with_f32(g, |gs| {
        with_f32(w, |ws| {
            matmul(
                &mut dx,
                false,
                1.0,
                MatRef::row_major(gs, rows, out_dim),
                MatRef::row_major(ws, out_dim, in_dim),
                all_threads(),
            );
        })
    })??;
    let mut shape = g.dims().to_vec();
    *shape.last_mut().expect("checked non-empty above") = in_dim;
    Tensor::from_vec(dx, shape, g.device())
}
