//! Activations with a recorded backward (candle's fused softmax records none).

use candle_core::{Result, Tensor, D};

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

/// `x · sigmoid(1.702 x)`: OpenAI CLIP's activation.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    let s = ((x * -1.702)?.exp()? + 1.0)?.recip()?;
    x * s
}

/// `x · sigmoid(x)`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

/// GEGLU's gate: splits the last dimension in halves `(h, g)` and returns `h · gelu(g)`.
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if n % 2 != 0 {
        candle_core::bail!("GEGLU needs an even last dimension, got {n}")
    }
    let h = x.narrow(D::Minus1, 0, n / 2)?;
    let g = x.narrow(D::Minus1, n / 2, n / 2)?;
    h * gelu(&g)?
}
