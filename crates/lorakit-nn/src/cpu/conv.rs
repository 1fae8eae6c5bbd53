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
use super::winograd;
use super::with_f32;

/// Geometry of one square-kernel convolution (groups 1, dilation 1).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    pub(crate) fn new(
        channels: usize,
        height: usize,
        width: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        if kernel == 0 || stride == 0 || height + 2 * padding < kernel || width + 2 * padding < kernel {
            candle_core::bail!(
                "conv2d: a {kernel}×{kernel} kernel with stride {stride} and padding {padding} does not fit a {height}×{width} input"
            )
        }
        Ok(Geometry { channels, height, width, kernel, stride, padding })
    }

    /// Output height and width.
    pub(crate) fn out_hw(&self) -> (usize, usize) {
        let out = |n: usize| (n + 2 * self.padding - self.kernel) / self.stride + 1;
        (out(self.height), out(self.width))
    }

    /// Rows of the im2col matrix: one per (channel, kernel row, kernel column).
    pub(crate) fn col_rows(&self) -> usize {
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
    let _profile = crate::profile::scope("conv im2col");
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
    let _profile = crate::profile::scope("conv col2im");
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

/// The im2col matrix of one image (or the image itself for a pointwise conv), handed to `f`.
/// The buffer is reused between calls on a thread: it is fully overwritten each time, and
/// allocating and zero-filling it anew (up to 141 MB per SD1.5 conv) cost more than its copy.
fn with_columns<R>(image: &[f32], g: &Geometry, f: impl FnOnce(&[f32]) -> R) -> R {
    if g.is_pointwise() {
        return f(image);
    }
    with_scratch(Slot::First, g.col_rows() * g.out_hw().0 * g.out_hw().1, |col| {
        im2col(image, g, col);
        f(col)
    })
}

/// Buffers up to this size are kept for reuse; a larger one (a VAE at high resolution) is
/// freed after use rather than held for the rest of the process.
const SCRATCH_KEPT_BYTES: usize = 256 << 20;

/// The two reusable buffers of a thread: an op may hold one of each at once (the Winograd
/// input transform and its products).
#[derive(Clone, Copy)]
enum Slot {
    First,
    Second,
}

thread_local! {
    static SCRATCH: [std::cell::RefCell<Vec<f32>>; 2] =
        const { [std::cell::RefCell::new(Vec::new()), std::cell::RefCell::new(Vec::new())] };
}

/// Runs `f` on a buffer of `len` elements whose contents are unspecified (the caller
/// overwrites it): the thread's kept buffer in `slot` when free and small enough, else a new one.
fn with_scratch<R>(slot: Slot, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    if len * std::mem::size_of::<f32>() > SCRATCH_KEPT_BYTES {
        return f(&mut vec![0f32; len]);
    }
    SCRATCH.with(|cells| match cells[slot as usize].try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0f32; len]),
    })
}

/// One weight applied to a conv's im2col matrix: `out_b (+)= weight · cols(x_b)` for every
/// image b, with weight (rows, C·k·k) and out (B, rows, Ho·Wo) row-major.
pub(crate) struct ForwardTerm<'a> {
    pub weight: &'a [f32],
    pub out: &'a mut [f32],
    /// Add to `out` (holding a bias, say) instead of overwriting it.
    pub accumulate: bool,
}

/// The output rows of a weight of `weight_len` elements over `k` im2col rows, when it divides
/// evenly and its (batch, rows, n) output or gradient buffer has `buffer_len` elements.
fn term_rows(weight_len: usize, buffer_len: usize, k: usize, batch: usize, n: usize) -> Option<usize> {
    let rows = weight_len / k.max(1);
    (rows * k == weight_len && buffer_len == batch * rows * n).then_some(rows)
}

/// Applies every term's weight to the im2col matrix of each image of x (B, C, H, W), built
/// once per image and shared: a frozen conv and its LoCon down conv read the same columns.
pub(crate) fn apply_weights(x: &[f32], batch: usize, g: &Geometry, terms: &mut [ForwardTerm]) -> Result<()> {
    let (out_h, out_w) = g.out_hw();
    let (n, k, image_len) = (out_h * out_w, g.col_rows(), g.channels * g.height * g.width);
    if x.len() != batch * image_len {
        candle_core::bail!("conv2d: input has {} elements, not {batch} images of {image_len}", x.len())
    }
    for term in terms.iter() {
        if term_rows(term.weight.len(), term.out.len(), k, batch, n).is_none() {
            candle_core::bail!(
                "conv2d: a weight of {} elements and an output of {} do not fit {k} im2col rows and {batch}×{n} positions",
                term.weight.len(),
                term.out.len()
            )
        }
    }
    if winograd::applies(g.kernel, g.stride, g.padding, g.height, g.width) {
        let tiles = winograd::tile_count(g.height, g.width);
        let weights: Vec<winograd::Weights> = terms
            .iter()
            .map(|term| winograd::Weights::forward(term.weight, term.weight.len() / k, g.channels))
            .collect();
        for (b, image) in x.chunks_exact(image_len).enumerate() {
            with_scratch(Slot::First, 16 * g.channels * tiles, |v| {
                winograd::transform_input(image, g.channels, g.height, g.width, v);
                for (term, u) in terms.iter_mut().zip(&weights) {
                    let rows = term.weight.len() / k;
                    with_scratch(Slot::Second, 16 * rows * tiles, |m| {
                        winograd::multiply(m, false, u, v, tiles);
                        let dst = &mut term.out[b * rows * n..(b + 1) * rows * n];
                        winograd::transform_output(m, rows, dst, g.height, g.width, term.accumulate);
                    });
                }
            });
        }
        return Ok(());
    }
    for (b, image) in x.chunks_exact(image_len).enumerate() {
        with_columns(image, g, |cols| {
            for term in terms.iter_mut() {
                let rows = term.weight.len() / k.max(1);
                let dst = &mut term.out[b * rows * n..(b + 1) * rows * n];
                let (w, cols) = (MatRef::row_major(term.weight, rows, k), MatRef::row_major(cols, k, n));
                matmul(dst, term.accumulate, 1.0, w, cols, all_threads());
            }
        });
    }
    Ok(())
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
    let _profile = crate::profile::scope("frozen conv forward");
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
    let mut out = vec![0f32; b * o * out_h * out_w];
    if let Some(bias) = bias {
        fill_bias(&mut out, bias, out_h * out_w);
    }
    apply_weights(x, b, &g, &mut [ForwardTerm { weight: w, out: &mut out, accumulate: bias.is_some() }])?;
    Ok((out, Shape::from((b, o, out_h, out_w))))
}

/// Writes the bias of each channel into every position of an NCHW buffer.
pub(crate) fn fill_bias(out: &mut [f32], bias: &[f32], positions: usize) {
    for (plane, &v) in out.chunks_exact_mut(positions).zip(bias.iter().cycle()) {
        plane.fill(v);
    }
}

/// One weight's share of a conv input gradient: `weight (rows, C·k·k)ᵀ · grad_b` with grad
/// (B, rows, Ho·Wo).
pub(crate) struct GradTerm<'a> {
    pub weight: &'a [f32],
    pub grad: &'a [f32],
}

/// Input gradient (B, C, H, W) of convs sharing an input: `dx_b = col2im(Σ_i W_iᵀ·g_ib)`, the
/// terms summed in the column buffer so there is one fold and one dx for all of them.
pub(crate) fn input_grad_sum(terms: &[GradTerm], batch: usize, g: &Geometry) -> Result<Vec<f32>> {
    let (out_h, out_w) = g.out_hw();
    let (n, k, image_len) = (out_h * out_w, g.col_rows(), g.channels * g.height * g.width);
    for term in terms {
        if term_rows(term.weight.len(), term.grad.len(), k, batch, n).is_none() {
            candle_core::bail!(
                "conv input gradient: a weight of {} elements and a gradient of {} do not fit {k} im2col rows and {batch}×{n} positions",
                term.weight.len(),
                term.grad.len()
            )
        }
    }
    let mut dx = vec![0f32; batch * image_len];
    if winograd::applies(g.kernel, g.stride, g.padding, g.height, g.width) {
        // Stride 1, padding 1: dx is the 3×3 convolution of g with the rotated, transposed
        // kernel, the terms summed in the transformed domain before one output transform.
        let tiles = winograd::tile_count(g.height, g.width);
        let weights: Vec<winograd::Weights> = terms
            .iter()
            .map(|term| winograd::Weights::input_grad(term.weight, term.weight.len() / k, g.channels))
            .collect();
        for (b, dx_b) in dx.chunks_exact_mut(image_len).enumerate() {
            with_scratch(Slot::Second, 16 * g.channels * tiles, |m| {
                for (i, (term, u)) in terms.iter().zip(&weights).enumerate() {
                    let rows = term.weight.len() / k;
                    let grad = &term.grad[b * rows * n..(b + 1) * rows * n];
                    with_scratch(Slot::First, 16 * rows * tiles, |v| {
                        winograd::transform_input(grad, rows, g.height, g.width, v);
                        winograd::multiply(m, i > 0, u, v, tiles);
                    });
                }
                winograd::transform_output(m, g.channels, dx_b, g.height, g.width, false);
            });
        }
        return Ok(dx);
    }
    for (b, dx_b) in dx.chunks_exact_mut(image_len).enumerate() {
        let sum_into = |cols: &mut [f32]| {
            for (i, term) in terms.iter().enumerate() {
                let rows = term.weight.len() / k.max(1);
                let wt = MatRef::row_major(term.weight, rows, k).t();
                let grad = MatRef::row_major(&term.grad[b * rows * n..(b + 1) * rows * n], rows, n);
                matmul(cols, i > 0, 1.0, wt, grad, all_threads());
            }
        };
        if g.is_pointwise() {
            sum_into(dx_b);
        } else {
            with_scratch(Slot::First, k * n, |cols| {
                sum_into(cols);
                col2im(cols, g, dx_b);
            });
        }
    }
    Ok(dx)
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
    let _profile = crate::profile::scope("frozen conv backward");
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
    let dx = input_grad_sum(&[GradTerm { weight: w, grad }], b, &g)?;
    Ok((dx, Shape::from((b, c, h, wd))))
}

/// Kernel gradient of a convolution: `dW = Σ_b g_b · im2col(x_b)ᵀ` for x (B, C, H, W),
/// g (B, O, Ho, Wo) → (O, C, k, k).
pub(crate) fn kernel_grad(
    x: &[f32],
    x_dims: &[usize],
    grad: &[f32],
    g_dims: &[usize],
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<(Vec<f32>, Shape)> {
    let _profile = crate::profile::scope("conv kernel gradient");
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
    for (i, (xi, gi)) in x.chunks_exact(c * h * wd).zip(grad.chunks_exact(o * n)).enumerate() {
        with_columns(xi, &g, |cols| {
            // dW (O, C·k·k) += g (O, n) · colsᵀ (n, C·k·k).
            let (gi, cols_t) = (MatRef::row_major(gi, o, n), MatRef::row_major(cols, rows, n).t());
            matmul(&mut dw, i > 0, 1.0, gi, cols_t, all_threads());
        });
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
