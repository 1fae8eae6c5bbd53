//! Activations with a recorded backward (candle's fused softmax records none).

use std::sync::Arc;

use candle_core::{Result, Tensor, D};

use crate::cpu;
use crate::custom_backward::attach_cpu;

/// Softmax over the last dimension, max-subtracted for stability, composed from tracked ops.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// GELU with the exact erf form (PyTorch's default, used by diffusers' GEGLU and the VAE).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// GELU with the tanh approximation (PyTorch's `approximate="tanh"`, Flux's MLPs): candle's
/// `gelu`, or on the CPU in f32 a fused kernel with its own backward (candle's is a dozen
/// full-size passes).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if !cpu::handles(x) {
        return x.gelu();
    }
    let xs = x.detach().contiguous()?;
    let y = cpu::with_f32(&xs, cpu::dit::gelu_tanh)?;
    attach_cpu(
        x,
        y,
        x.shape().clone(),
        Arc::new(move |g: &Tensor| {
            let dx = cpu::with_f32(&xs, |x| cpu::with_f32(g, |g| cpu::dit::gelu_tanh_backward(x, g)))??;
            Tensor::from_vec(dx, xs.shape(), xs.device())
        }),
    )
}

/// `x · sigmoid(1.702 x)`: OpenAI CLIP's activation.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    let s = ((x * -1.702)?.exp()? + 1.0)?.recip()?;
    x * s
}

/// `x · sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if !cpu::handles(x) {
        return x.silu();
    }
    let xs = x.detach().contiguous()?;
    let y = cpu::with_f32(&xs, cpu::activation::silu)?;
    attach_cpu(
        x,
        y,
        x.shape().clone(),
        Arc::new(move |g: &Tensor| {
            let dx = cpu::with_f32(&xs, |x| cpu::with_f32(g, |g| cpu::activation::silu_backward(x, g)))??;
            Tensor::from_vec(dx, xs.shape(), xs.device())
        }),
    )
}

/// GEGLU's gate: splits the last dimension in halves `(h, g)` and returns `h · gelu(g)`.
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if n % 2 != 0 {
        candle_core::bail!("GEGLU needs an even last dimension, got {n}")
    }
    if cpu::handles(x) {
        return geglu_cpu(x, n / 2);
    }
    let h = x.narrow(D::Minus1, 0, n / 2)?;
    let g = x.narrow(D::Minus1, n / 2, n / 2)?;
    h * gelu(&g)?
}

/// [`geglu`] through the fused f32 CPU kernels.
fn geglu_cpu(x: &Tensor, half: usize) -> Result<Tensor> {
    let xs = x.detach().contiguous()?;
    let mut out_shape = x.dims().to_vec();
    *out_shape.last_mut().expect("geglu input has a last dimension") = half;
    let y = cpu::with_f32(&xs, |x| cpu::activation::geglu(x, half))?;
    attach_cpu(
        x,
        y,
        out_shape.into(),
        Arc::new(move |g: &Tensor| {
            let dx = cpu::with_f32(&xs, |x| cpu::with_f32(g, |g| cpu::activation::geglu_backward(x, g, half)))??;
            Tensor::from_vec(dx, xs.shape(), xs.device())
        }),
    )
}
