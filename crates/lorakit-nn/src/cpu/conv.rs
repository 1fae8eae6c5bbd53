//! CPU f32 convolution kernels for the frozen and LoCon convs: one GEMM per image over
//! im2col rows copied straight from NCHW, so the product is already NCHW.
//!
//! candle 0.11's CPU conv2d transposes the input to NHWC, re-flattens the kernel on every call
//! (a 59 MB scattered copy for SD1.5's largest), builds its im2col tiles with strided writes
//! and scatters the result back to NCHW, all single-threaded outside the GEMM. Here the kernel
//! (out, in, k, k) is used as it lies — it already is the (out, in·k·k) GEMM operand — each
//! im2col row is a run of contiguous copies, and the input gradient is `Wᵀ·g` folded back by
//! col2im, which handles stride and padding without building a flipped kernel or a
//! zero-dilated gradient.

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{all_threads, matmul, MatRef};
use super::with_f32;

/// Geometry of one square-kernel convolution (groups 1, dilation 1).
#[derive(Clone, Copy, Debug)]
struct Geometry {
    channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    fn new(channels: usize, height: usize, width: usize, kernel: usize, stride: usize, padding: usize) -> Result<Self> {
        if kernel == 0 || stride == 0 || height + 2 * padding < kernel || width + 2 * padding < kernel {
            candle_core::bail!(
                "conv2d: a {kernel}×{kernel} kernel with stride {stride} and padding {padding} does not fit a {height}×{width} input"
            )
        }
        Ok(Geometry { channels, height, width, kernel, stride, padding })
    }

    fn out_hw(&self) -> (usize, usize) {
        let out = |n: usize| (n + 2 * self.padding - self.kernel) / self.stride + 1;
        (out(self.height), out(self.width))
    }

    /// Rows of the im2col matrix: one per (channel, kernel row, kernel column).
    fn col_rows(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }

    /// A 1×1, stride-1, unpadded conv needs no im2col: the image is the matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// For output row `oh` and kernel row `kh`, the input row, if inside the image.
    fn input_row(&self, oh: usize, kh: usize) -> Option<usize> {
        (oh * self.stride + kh).checked_sub(self.padding).filter(|&i| i < self.height)
    }

    /// The range of output columns whose input column is inside the image, for kernel column `kw`.
    fn valid_out_cols(&self, kw: usize, out_w: usize) -> std::ops::Range<usize> {
        let first = self.padding.saturating_sub(kw).div_ceil(self.stride);
        let last = (self.width + self.padding).saturating_sub(kw).div_ceil(self.stride).min(out_w);
        first..last.max(first)
    }
}

/// Fills `col` (C·k·k, Ho·Wo) from one image `x` (C, H, W).
fn im2col(x: &[f32], g: &Geometry, col: &mut [f32]) {
    let (out_h, out_w) = g.out_hw();
    let plane = g.height * g.width;
    let k = g.kernel;
    col.par_chunks_mut(out_h * out_w).enumerate().for_each(|(row, dst)| {
        let (c, kh, kw) = (row / (k * k), (row / k) % k, row % k);
        let src = &x[c * plane..(c + 1) * plane];
        let valid = g.valid_out_cols(kw, out_w);
        for (oh, dst_row) in dst.chunks_exact_mut(out_w).enumerate() {
            let Some(ih) = g.input_row(oh, kh) else {
                dst_row.fill(0.0);
                continue;
            };
            let src_row = &src[ih * g.width..(ih + 1) * g.width];
            dst_row[..valid.start].fill(0.0);
            dst_row[valid.end..].fill(0.0);
            if g.stride == 1 {
                let first_in = valid.start + kw - g.padding;
                dst_row[valid.clone()].copy_from_slice(&src_row[first_in..first_in + valid.len()]);
            } else {
                for ow in valid.clone() {
                    dst_row[ow] = src_row[ow * g.stride + kw - g.padding];
                }
            }
        }
    });
}

/// Adds the columns `col` (C·k·k, Ho·Wo) back into an image gradient `dx` (C, H, W), which it
/// overwrites.
fn col2im(col: &[f32], g: &Geometry, dx: &mut [f32]) {
    let (out_h, out_w) = g.out_hw();
    let k = g.kernel;
    let rows_per_channel = k * k * out_h * out_w;
    dx.par_chunks_mut(g.height * g.width).enumerate().for_each(|(c, plane)| {
        plane.fill(0.0);
        let channel_cols = &col[c * rows_per_channel..(c + 1) * rows_per_channel];
        for (r, src) in channel_cols.chunks_exact(out_h * out_w).enumerate() {
            let (kh, kw) = (r / k, r % k);
            let valid = g.valid_out_cols(kw, out_w);
            for (oh, src_row) in src.chunks_exact(out_w).enumerate() {
                let Some(ih) = g.input_row(oh, kh) else { continue };
                let dst_row = &mut plane[ih * g.width..(ih + 1) * g.width];
                if g.stride == 1 {
                    let first_in = valid.start + kw - g.padding;
                    for (d, s) in dst_row[first_in..first_in + valid.len()].iter_mut().zip(&src_row[valid.clone()]) {
                        *d += s;
                    }
                } else {
                    for ow in valid.clone() {
                        dst_row[ow * g.stride + kw - g.padding] += src_row[ow];
                    }
                }
            }
        }
    });
}

/// Forward convolution `x (B, C, H, W) ⊛ w (O, C, k, k) [+ b (O)]`, row-major output.
fn forward(
    x: &[f32],
    x_dims: &[usize],
    w: &[f32],
    w_dims: &[usize],
    bias: Option<&[f32]>,
    stride: usize,
    padding: usize,
) -> Result<(Vec<f32>, Shape)> {
    let (&[b, c, h, wd], &[o, kc, k, kw]) = (x_dims, w_dims) else {
        candle_core::bail!("conv2d: input {x_dims:?} and kernel {w_dims:?} must both be 4-D")
    };
    if kc != c || kw != k {
        candle_core::bail!("conv2d: input {x_dims:?} does not fit kernel {w_dims:?} (channels or kernel shape)")
    }
    if bias.is_some_and(|b| b.len() != o) {
        candle_core::bail!("conv2d: bias does not have {o} elements")
    }
    let g = Geometry::new(c, h, wd, k, stride, padding)?;
    let (out_h, out_w) = g.out_hw();
    let n = out_h * out_w;
    let mut out = vec![0f32; b * o * n];
    let mut col = if g.is_pointwise() { Vec::new() } else { vec![0f32; g.col_rows() * n] };
    for (img, dst) in x.chunks_exact(c * h * wd).zip(out.chunks_exact_mut(o * n)) {
        if let Some(bias) = bias {
            for (row, &v) in dst.chunks_exact_mut(n).zip(bias) {
                row.fill(v);
            }
        }
        let rhs = if g.is_pointwise() {
            img
        } else {
            im2col(img, &g, &mut col);
            &col
        };
        let (w, rhs) = (MatRef::row_major(w, o, g.col_rows()), MatRef::row_major(rhs, g.col_rows(), n));
        matmul(dst, bias.is_some(), 1.0, w, rhs, all_threads());
    }
    Ok((out, Shape::from((b, o, out_h, out_w))))
}

/// Input gradient of a convolution: `dx = col2im(Wᵀ · g)` for g (B, O, Ho, Wo), w (O, C, k, k).
fn input_grad(
    grad: &[f32],
    g_dims: &[usize],
    w: &[f32],
    w_dims: &[usize],
    stride: usize,
    padding: usize,
    input_hw: (usize, usize),
) -> Result<(Vec<f32>, Shape)> {
    let (&[b, o, gh, gw], &[ko, c, k, _]) = (g_dims, w_dims) else {
        candle_core::bail!("conv input gradient: gradient {g_dims:?} and kernel {w_dims:?} must both be 4-D")
    };
    if ko != o {
        candle_core::bail!("conv input gradient: gradient {g_dims:?} does not fit kernel {w_dims:?}")
    }
    let (h, wd) = input_hw;
    let g = Geometry::new(c, h, wd, k, stride, padding)?;
    if g.out_hw() != (gh, gw) {
        candle_core::bail!("conv input gradient: gradient {gh}×{gw} does not fit input {h}×{wd}")
    }
    let n = gh * gw;
    let rows = g.col_rows();
    let mut dx = vec![0f32; b * c * h * wd];
    let mut col = if g.is_pointwise() { Vec::new() } else { vec![0f32; rows * n] };
    for (gi, dxi) in grad.chunks_exact(o * n).zip(dx.chunks_exact_mut(c * h * wd)) {
        let (wt, gi) = (MatRef::row_major(w, o, rows).t(), MatRef::row_major(gi, o, n));
        if g.is_pointwise() {
            matmul(dxi, false, 1.0, wt, gi, all_threads());
        } else {
            matmul(&mut col, false, 1.0, wt, gi, all_threads());
            col2im(&col, &g, dxi);
        }
    }
    Ok((dx, Shape::from((b, c, h, wd))))
}

/// Kernel gradient of a convolution: `dW = Σ_b g_b · im2col(x_b)ᵀ` for x (B, C, H, W),
/// g (B, O, Ho, Wo) → (O, C, k, k).
fn kernel_grad(
    x: &[f32],
    x_dims: &[usize],
    grad: &[f32],
    g_dims: &[usize],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<(Vec<f32>, Shape)> {
    let (&[b, c, h, wd], &[gb, o, gh, gw]) = (x_dims, g_dims) else {
        candle_core::bail!("conv kernel gradient: input {x_dims:?} and gradient {g_dims:?} must both be 4-D")
    };
    if gb != b {
        candle_core::bail!("conv kernel gradient: input batch {b} but gradient batch {gb}")
    }
    let g = Geometry::new(c, h, wd, kernel, stride, padding)?;
    if g.out_hw() != (gh, gw) {
        candle_core::bail!("conv kernel gradient: gradient {gh}×{gw} does not fit input {h}×{wd}")
    }
    let n = gh * gw;
    let rows = g.col_rows();
    let mut dw = vec![0f32; o * rows];
    let mut col = if g.is_pointwise() { Vec::new() } else { vec![0f32; rows * n] };
    for (i, (xi, gi)) in x.chunks_exact(c * h * wd).zip(grad.chunks_exact(o * n)).enumerate() {
        let cols = if g.is_pointwise() {
            xi
        } else {
            im2col(xi, &g, &mut col);
            &col
        };
        // dW (O, C·k·k) += g (O, n) · colsᵀ (n, C·k·k).
        let (gi, cols_t) = (MatRef::row_major(gi, o, n), MatRef::row_major(cols, rows, n).t());
        matmul(&mut dw, i > 0, 1.0, gi, cols_t, all_threads());
    }
    Ok((dw, Shape::from((o, c, kernel, kernel))))
}

/// `conv2d(x, w) + b` on the CPU in f32, as row-major data and its shape; no graph is recorded.
pub(crate) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<(Vec<f32>, Shape)> {
    with_f32(x, |xs| {
        with_f32(w, |ws| match bias {
            Some(b) => with_f32(b, |bs| forward(xs, x.dims(), ws, w.dims(), Some(bs), stride, padding))?,
            None => forward(xs, x.dims(), ws, w.dims(), None, stride, padding),
        })?
    })?
}

/// The input gradient of `conv2d(x, w)` for x of spatial size `input_hw`, from the output
/// gradient `grad`.
pub(crate) fn conv2d_input_grad(
    grad: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    input_hw: (usize, usize),
) -> Result<Tensor> {
    let (dx, shape) =
        with_f32(grad, |gs| with_f32(w, |ws| input_grad(gs, grad.dims(), ws, w.dims(), stride, padding, input_hw)))???;
    Tensor::from_vec(dx, shape, grad.device())
}

/// The kernel gradient of `conv2d(x, w)` for a square kernel of size `kernel`.
pub(crate) fn conv2d_kernel_grad(
    x: &Tensor,
    grad: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (dw, shape) =
        with_f32(x, |xs| with_f32(grad, |gs| kernel_grad(xs, x.dims(), gs, grad.dims(), kernel, stride, padding)))???;
    Tensor::from_vec(dw, shape, x.device())
}
