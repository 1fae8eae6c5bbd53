//! Linear and Conv2d layers over frozen weights whose backward computes only the input gradient.
//!
//! candle's own backward would also compute (and store) a gradient for every frozen weight,
//! which a LoRA run throws away; for convs it would also take the slow `conv_transpose2d`
//! path. Here the forward runs off the graph and the backward is one matmul or one ordinary
//! convolution with the flipped, transposed kernel (measured ~2× faster than candle's).

use std::sync::Arc;

use candle_core::{DType, Result, Tensor, D};

use crate::cpu::{self, conv as cpu_conv};
use crate::custom_backward::{attach, attach2_cpu, attach_cpu, Backward2Fn, BackwardFn};

/// `y = x·Wᵀ + b` with frozen `W` (out, in) and optional `b` (out); `x` is (…, in).
#[derive(Clone, Debug)]
pub struct FrozenLinear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl FrozenLinear {
    /// Wraps a weight of shape (out, in) and an optional bias of shape (out).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, _) = weight.dims2()?;
        if let Some(b) = &bias {
            if b.dims() != [out_dim] {
                candle_core::bail!("linear bias shape {:?} does not match weight {:?}", b.dims(), weight.dims())
            }
        }
        Ok(FrozenLinear { weight: weight.detach(), bias: bias.map(|b| b.detach()) })
    }

    /// The weight, (out, in).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Applies the layer; gradients flow to `x` only. A weight stored in another dtype (fp8
    /// base weights) is cast to `x`'s dtype for each use and never kept cast.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.clone();
        let backward: BackwardFn = Arc::new(move |g: &Tensor| {
            let w = as_compute(&w, g.dtype())?;
            if cpu::handles(g) && cpu::handles(&w) {
                return cpu::linear::input_grad(g, &w);
            }
            g.broadcast_matmul(&w)
        });
        let w = as_compute(&self.weight, x.dtype())?;
        if cpu::handles(x) && cpu::handles(&w) {
            let bias = self.bias.as_ref().map(|b| b.to_dtype(DType::F32)).transpose()?;
            let (data, shape) = cpu::linear::forward(&x.detach(), &w, bias.as_ref())?;
            return attach_cpu(x, data, shape, backward);
        }
        let y = linear_untracked(&x.detach(), &w, self.bias.as_ref())?;
        if !x.track_op() {
            return Ok(y);
        }
        attach(x, &y, backward)
    }
}

/// `w` in `dtype`: itself when it already is, else a cast copy (frozen weights stored in fp8).
fn as_compute(w: &Tensor, dtype: DType) -> Result<Tensor> {
    if w.dtype() == dtype {
        Ok(w.clone())
    } else {
        w.to_dtype(dtype)
    }
}

/// `x·Wᵀ + b` for any leading shape, without recording a graph for `W`.
fn linear_untracked(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.broadcast_matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// 2-D convolution (NCHW, square kernel, symmetric padding, groups 1) with a frozen kernel
/// (out, in, k, k) and optional bias (out).
#[derive(Clone, Debug)]
pub struct FrozenConv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl FrozenConv2d {
    /// Wraps a kernel (out, in, k, k) with `stride` and `padding`.
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize, padding: usize) -> Result<Self> {
        let (out_c, _, kh, kw) = weight.dims4()?;
        if kh != kw {
            candle_core::bail!("conv kernel {kh}×{kw}: only square kernels are supported")
        }
        if stride == 0 {
            candle_core::bail!("conv stride must be at least 1")
        }
        if padding + 1 > kh {
            candle_core::bail!("conv padding {padding} with a {kh}×{kh} kernel is not supported (at most {})", kh - 1)
        }
        if let Some(b) = &bias {
            if b.dims() != [out_c] {
                candle_core::bail!("conv bias shape {:?} does not match kernel {:?}", b.dims(), weight.dims())
            }
        }
        let weight = weight.detach();
        Ok(FrozenConv2d { weight, bias: bias.map(|b| b.detach()), stride, padding })
    }

    /// The kernel, (out, in, k, k).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Kernel size.
    pub fn kernel_size(&self) -> usize {
        self.weight.dims()[2]
    }

    /// Stride.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Padding on every side.
    pub fn padding(&self) -> usize {
        self.padding
    }

    /// Applies the convolution; gradients flow to `x` only.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (k, p, s) = (self.kernel_size(), self.padding, self.stride);
        let weight = self.weight.clone();
        let backward: BackwardFn =
            Arc::new(move |g: &Tensor| input_grad(g, &as_compute(&weight, g.dtype())?, k, s, p, (h, w)));
        if cpu::handles(x) {
            let bias = self.bias.as_ref().map(|b| b.to_dtype(DType::F32)).transpose()?;
            let weight = as_compute(&self.weight, DType::F32)?;
            let (data, shape) = cpu_conv::conv2d(&x.detach(), &weight, bias.as_ref(), s, p)?;
            return attach_cpu(x, data, shape, backward);
        }
        let y = conv2d_untracked(
            &x.detach(),
            &as_compute(&self.weight, x.dtype())?,
            self.bias.as_ref(),
            self.stride,
            self.padding,
        )?;
        if !x.track_op() {
            return Ok(y);
        }
        attach(x, &y, backward)
    }
}

/// Both tensors in f32 when they are half-precision CPU tensors (candle has no CPU bf16/f16
/// conv, nor do our CPU kernels); unchanged otherwise.
fn f32_on_cpu(x: &Tensor, w: &Tensor) -> Result<(Tensor, Tensor)> {
    if matches!(x.dtype(), DType::BF16 | DType::F16) && x.device().is_cpu() {
        Ok((x.to_dtype(DType::F32)?, w.to_dtype(DType::F32)?))
    } else {
        Ok((x.clone(), w.clone()))
    }
}

/// `conv2d(x, w) + b` without a graph for `w`.
fn conv2d_untracked(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    let (xc, wc) = f32_on_cpu(x, w)?;
    if cpu::handles(&xc) {
        let bias = b.map(|b| b.to_dtype(DType::F32)).transpose()?;
        let (data, shape) = cpu_conv::conv2d(&xc, &wc, bias.as_ref(), stride, padding)?;
        return Tensor::from_vec(data, shape, x.device())?.to_dtype(x.dtype());
    }
    let y = xc.conv2d(&wc, padding, stride, 1, 1)?.to_dtype(x.dtype())?;
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}

/// The input gradient of a convolution with kernel `w` (out, in, k, k), `stride` and `padding`
/// over an input of spatial size `input_hw`, from the output gradient `g`.
fn input_grad(
    g: &Tensor,
    w: &Tensor,
    k: usize,
    stride: usize,
    padding: usize,
    input_hw: (usize, usize),
) -> Result<Tensor> {
    let (gc, wc) = f32_on_cpu(g, w)?;
    if cpu::handles(&gc) {
        return cpu_conv::conv2d_input_grad(&gc, &wc, stride, padding, input_hw)?.to_dtype(g.dtype());
    }
    // Elsewhere: a convolution with the kernel flipped in H and W and in/out swapped. Built per
    // backward call and dropped right after: keeping it would double the conv weights' memory
    // (2.4 GB for SD1.5 in f32) for ~1% speed.
    let flipped = flip_hw(w)?.transpose(0, 1)?.contiguous()?;
    conv2d_input_grad(g, &flipped, k, stride, padding, input_hw)
}

/// The input gradient of a convolution with kernel size `k`, `stride` and `padding` over an
/// input of spatial size `input_hw`, as a stride-1 convolution of the (zero-dilated) output
/// gradient with the flipped, transposed kernel `w_flip_t`.
pub(crate) fn conv2d_input_grad(
    g: &Tensor,
    w_flip_t: &Tensor,
    k: usize,
    stride: usize,
    padding: usize,
    input_hw: (usize, usize),
) -> Result<Tensor> {
    let g = if stride > 1 { dilate_hw(g, stride)? } else { g.clone() };
    let (_, _, gh, gw) = g.dims4()?;
    // The stride-1 full correlation yields gh + k - 1 - 2p rows; rows of the input that the
    // strided forward never reached (when (H + 2p - k) % stride != 0) get zero gradient.
    let full_pad = k - 1 - padding;
    let (extra_h, extra_w) = (input_hw.0 + padding * 2 + 1 - k - gh, input_hw.1 + padding * 2 + 1 - k - gw);
    let g =
        if extra_h > 0 || extra_w > 0 { g.pad_with_zeros(2, 0, extra_h)?.pad_with_zeros(3, 0, extra_w)? } else { g };
    let dx = conv2d_untracked(&g, w_flip_t, None, 1, full_pad)?;
    debug_assert_eq!(dx.dims()[2..], [input_hw.0, input_hw.1]);
    Ok(dx)
}

/// Reverses the last two dimensions of a 4-D tensor.
pub(crate) fn flip_hw(t: &Tensor) -> Result<Tensor> {
    let (_, _, kh, kw) = t.dims4()?;
    let rev = |n: usize| Tensor::new((0..n as u32).rev().collect::<Vec<u32>>().as_slice(), t.device());
    t.index_select(&rev(kh)?, 2)?.index_select(&rev(kw)?, 3)
}

/// Inserts `stride - 1` zeros between neighbouring elements along H and W:
/// (B, C, H, W) → (B, C, s(H-1)+1, s(W-1)+1).
fn dilate_hw(g: &Tensor, stride: usize) -> Result<Tensor> {
    let (b, c, h, w) = g.dims4()?;
    let zeros = g.zeros_like()?;
    let mut parts = vec![g.unsqueeze(D::Minus1)?];
    parts.extend(std::iter::repeat_n(zeros.unsqueeze(D::Minus1)?, stride - 1));
    let wide = Tensor::cat(&parts, 4)?.reshape((b, c, h, w * stride))?;
    let zeros = wide.zeros_like()?;
    let mut parts = vec![wide.unsqueeze(3)?];
    parts.extend(std::iter::repeat_n(zeros.unsqueeze(3)?, stride - 1));
    let tall = Tensor::cat(&parts, 3)?.reshape((b, c, h * stride, w * stride))?;
    tall.narrow(2, 0, stride * (h - 1) + 1)?.narrow(3, 0, stride * (w - 1) + 1)
}

/// `conv2d(x, w)` for a trainable kernel `w` (a LoCon `down`): forward off the graph, backward
/// with the input gradient as one ordinary convolution (as for frozen kernels; candle's own
/// backward takes the slow `conv_transpose2d` path) and the kernel gradient as candle computes it.
/// Each gradient only when its input is tracked.
pub fn conv2d_trainable(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (x_tracked, w_tracked) = (x.track_op(), w.track_op());
    let (_, _, h, wd) = x.dims4()?;
    let k = w.dims()[2];
    let (xs, ws) = (x.detach(), w.detach());
    let backward: Backward2Fn = Arc::new({
        let (xs, ws) = (xs.clone(), ws.clone());
        move |g: &Tensor| {
            let dx = if x_tracked { Some(input_grad(g, &ws, k, stride, padding, (h, wd))?) } else { None };
            let dw = if w_tracked && cpu::handles(&xs) && g.dtype() == xs.dtype() {
                Some(cpu_conv::conv2d_kernel_grad(&xs, g, k, stride, padding)?)
            } else if w_tracked {
                // candle's Conv2D backward: the kernel gradient is a convolution of the input with
                // the output gradient, batch and channels swapped, stride and dilation exchanged.
                let gk = conv2d_dilated(&xs.transpose(0, 1)?, &g.transpose(0, 1)?, padding, stride)?.transpose(0, 1)?;
                let (_, _, gk0, gk1) = gk.dims4()?;
                Some(if gk0 != k || gk1 != k { gk.narrow(2, 0, k)?.narrow(3, 0, k)? } else { gk })
            } else {
                None
            };
            Ok((dx, dw))
        }
    });
    if cpu::handles(x) && cpu::handles(w) {
        let (data, shape) = cpu_conv::conv2d(&xs, &ws, None, stride, padding)?;
        return attach2_cpu(x, w, data, shape, backward);
    }
    let y = conv2d_untracked(&xs, &ws, None, stride, padding)?;
    crate::custom_backward::attach2(x, w, &y, backward)
}

/// `x.conv2d(w, padding, stride = 1, dilation)` computed in f32 on the CPU for half types.
fn conv2d_dilated(x: &Tensor, w: &Tensor, padding: usize, dilation: usize) -> Result<Tensor> {
    let (xc, wc) = if matches!(x.dtype(), DType::BF16 | DType::F16) && x.device().is_cpu() {
        (x.to_dtype(DType::F32)?, w.to_dtype(DType::F32)?)
    } else {
        (x.contiguous()?, w.contiguous()?)
    };
    xc.conv2d(&wc, padding, 1, dilation, 1)?.to_dtype(x.dtype())
}
