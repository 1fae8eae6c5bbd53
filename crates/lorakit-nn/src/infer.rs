//! Inference-only building blocks for frozen transformer encoders (the WD14 taggers): no
//! autograd, and on the CPU in f32 kernels that do each step in as few passes as possible;
//! on other devices and dtypes the same functions compose candle ops.
//!
//! Measured on WD v3 ViT-B at 448² (784 tokens, 2 cores; BENCHMARKS.md "WD14 tagger"), the
//! training-path [`FrozenLinear`](crate::FrozenLinear) lost about a fifth of the GEMM's speed
//! around it: its weight (out, in) is a column-major right-hand side, wide products (qkv, fc1)
//! take its transposed-product route (made for LoRA's 16-row gradients) and a strided scalar
//! transpose-add afterwards, and each residual is a separate candle add. [`InferLinear`] keeps
//! its weight transposed once at load, (in, out) row-major, the layout the GEMM packs fastest,
//! and starts the output from the bias (plus the residual, for [`InferLinear::forward_add`]) so
//! that one accumulating GEMM finishes it.

use candle_core::{DType, Result, Tensor, D};
use rayon::prelude::*;

use crate::cpu;
use crate::cpu::gemm::{all_threads, matmul, MatRef};

/// Elements per parallel task of the elementwise kernels (256 KiB of f32).
const TASK: usize = 1 << 16;

/// How an [`InferLinear`] holds its parameters.
#[derive(Clone, Debug)]
enum Params {
    /// f32 on the CPU: the weight transposed, (in, out) row-major, and the bias.
    Cpu { weight_t: Vec<f32>, bias: Option<Vec<f32>> },
    /// Anywhere else: the weight (out, in) and bias as given.
    Tensors { weight: Tensor, bias: Option<Tensor> },
}

/// `y = x·Wᵀ + b` over frozen parameters, for inference only (no graph is recorded).
#[derive(Clone, Debug)]
pub struct InferLinear {
    in_dim: usize,
    out_dim: usize,
    params: Params,
}

impl InferLinear {
    /// Wraps a weight (out, in) and an optional bias (out). An f32 CPU weight is transposed
    /// here, once (the tensors passed in can be dropped afterwards).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        if let Some(b) = &bias {
            if b.dims() != [out_dim] {
                candle_core::bail!("linear bias shape {:?} does not match weight {:?}", b.dims(), weight.dims())
            }
        }
        let params = if cpu::handles(&weight) {
            let weight_t = cpu::with_f32(&weight, |w| transpose(w, out_dim, in_dim))?;
            let bias = bias.map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
            Params::Cpu { weight_t, bias }
        } else {
            Params::Tensors { weight: weight.detach(), bias: bias.map(|b| b.detach()) }
        };
        Ok(InferLinear { in_dim, out_dim, params })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.in_dim
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.out_dim
    }

    /// `x·Wᵀ + b` for x (…, in).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, None)
    }

    /// `residual + x·Wᵀ + b` for x (…, in) and residual (…, out): a transformer block's
    /// residual connection in the same pass.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.apply(x, Some(residual))
    }

    fn apply(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let dims = x.dims();
        if dims.last() != Some(&self.in_dim) {
            candle_core::bail!("linear: input {dims:?} does not end in the weight's {} input features", self.in_dim)
        }
        let mut out_shape = dims.to_vec();
        *out_shape.last_mut().expect("checked non-empty above") = self.out_dim;
        if let Some(r) = residual {
            if r.dims() != out_shape.as_slice() {
                candle_core::bail!("linear: residual {:?} does not match the output {out_shape:?}", r.dims())
            }
        }
        match &self.params {
            Params::Cpu { weight_t, bias } if cpu::handles(x) && residual.is_none_or(cpu::handles) => {
                let rows = x.elem_count() / self.in_dim.max(1);
                let n = self.out_dim;
                // The output starts as residual + bias (or bias, or zeros) and the GEMM adds onto it.
                let mut out = match residual {
                    Some(r) => cpu::with_f32(r, |r| r.to_vec())?,
                    None => Vec::new(),
                };
                let accumulate = residual.is_some() || bias.is_some();
                match (residual.is_some(), bias) {
                    (true, Some(b)) => {
                        out.par_chunks_mut(n).for_each(|row| row.iter_mut().zip(b).for_each(|(o, b)| *o += b))
                    }
                    (true, None) => {}
                    (false, Some(b)) => {
                        out.reserve_exact(rows * n);
                        (0..rows).for_each(|_| out.extend_from_slice(b));
                    }
                    (false, None) => out = vec![0f32; rows * n],
                }
                cpu::with_f32(x, |xs| {
                    let lhs = MatRef::row_major(xs, rows, self.in_dim);
                    let rhs = MatRef::row_major(weight_t, self.in_dim, n);
                    matmul(&mut out, accumulate, 1.0, lhs, rhs, all_threads());
                })?;
                Tensor::from_vec(out, out_shape, x.device())
            }
            Params::Cpu { weight_t, bias } => {
                // A CPU model given another dtype: candle's ops over the kept parameters.
                let w = Tensor::from_slice(weight_t, (self.in_dim, self.out_dim), x.device())?.to_dtype(x.dtype())?;
                let mut y = x.broadcast_matmul(&w)?;
                if let Some(b) = bias {
                    y = y.broadcast_add(&Tensor::from_slice(b, self.out_dim, x.device())?.to_dtype(x.dtype())?)?;
                }
                match residual {
                    Some(r) => r + y,
                    None => Ok(y),
                }
            }
            Params::Tensors { weight, bias } => {
                let mut y = x.broadcast_matmul(&weight.t()?)?;
                if let Some(b) = bias {
                    y = y.broadcast_add(b)?;
                }
                match residual {
                    Some(r) => r + y,
                    None => Ok(y),
                }
            }
        }
    }
}

/// `w` (rows × cols, row-major) transposed, in 32 × 32 tiles, row blocks in parallel.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut t = vec![0f32; rows * cols];
    if rows == 0 || cols == 0 {
        return t;
    }
    // Each task writes TILE rows of the transpose (TILE columns of w).
    t.par_chunks_mut(TILE * rows).enumerate().for_each(|(block, dst)| {
        let c0 = block * TILE;
        let width = dst.len() / rows;
        for r0 in (0..rows).step_by(TILE) {
            for c in 0..width {
                let dst_row = &mut dst[c * rows..(c + 1) * rows];
                for r in r0..(r0 + TILE).min(rows) {
                    dst_row[r] = w[r * cols + c0 + c];
                }
            }
        }
    });
    t
}

/// `silu(gate) · x` elementwise (SwiGLU's gating; both the same shape).
pub fn swiglu(gate: &Tensor, x: &Tensor) -> Result<Tensor> {
    if gate.dims() != x.dims() {
        candle_core::bail!("swiglu: gate {:?} and value {:?} differ in shape", gate.dims(), x.dims())
    }
    if !(cpu::handles(gate) && cpu::handles(x)) {
        return gate.silu()? * x;
    }
    let mut y = cpu::with_f32(gate, cpu::activation::silu)?;
    cpu::with_f32(x, |x| {
        y.par_chunks_mut(TASK).zip(x.par_chunks(TASK)).for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y *= x))
    })?;
    Tensor::from_vec(y, x.shape(), x.device())
}

/// Rotary position embedding with interleaved pairs (timm's `RotaryEmbeddingCat` / EVA02
/// layout: `x·cos + rot(x)·sin`, `rot([x0, x1, x2, x3]) = [−x1, x0, −x3, x2]`) applied to every
/// head of `x` (B, L, H·d) in place of a split into heads: tokens `prefix..L` take the rows of
/// `sin`/`cos` (L − prefix, d) in order; the first `prefix` tokens (a class token) are kept.
pub fn rope_interleaved(x: &Tensor, heads: usize, prefix: usize, sin: &Tensor, cos: &Tensor) -> Result<Tensor> {
    let (b, len, width) = x.dims3()?;
    if heads == 0 || width % heads != 0 || prefix > len {
        candle_core::bail!("rope: input {:?} does not split into {heads} heads after {prefix} tokens", x.dims())
    }
    let d = width / heads;
    if d % 2 != 0 || sin.dims() != [len - prefix, d] || cos.dims() != [len - prefix, d] {
        candle_core::bail!(
            "rope: tables sin {:?} / cos {:?} do not fit {} tokens of head width {d}",
            sin.dims(),
            cos.dims(),
            len - prefix
        )
    }
    if !(cpu::handles(x) && cpu::handles(sin) && cpu::handles(cos)) {
        let h = x.reshape((b, len, heads, d))?;
        let rest = h.narrow(1, prefix, len - prefix)?;
        let pairs = rest.reshape((b, len - prefix, heads, d / 2, 2))?;
        let (even, odd) = (pairs.narrow(D::Minus1, 0, 1)?, pairs.narrow(D::Minus1, 1, 1)?);
        let rot = Tensor::cat(&[&odd.neg()?, &even], D::Minus1)?.reshape((b, len - prefix, heads, d))?;
        let (sin, cos) = (sin.unsqueeze(1)?, cos.unsqueeze(1)?);
        let rest = rest.broadcast_mul(&cos)?.add(&rot.broadcast_mul(&sin)?)?;
        let out = if prefix == 0 { rest } else { Tensor::cat(&[&h.narrow(1, 0, prefix)?, &rest], 1)? };
        return out.reshape((b, len, width));
    }
    let mut y = cpu::with_f32(x, |x| x.to_vec())?;
    cpu::with_f32(sin, |sin| {
        cpu::with_f32(cos, |cos| {
            y.par_chunks_mut(width).enumerate().for_each(|(row, y_row)| {
                let token = row % len;
                if token < prefix {
                    return;
                }
                let t = token - prefix;
                let (s, c) = (&sin[t * d..(t + 1) * d], &cos[t * d..(t + 1) * d]);
                for head in y_row.chunks_exact_mut(d) {
                    for ((p, s), c) in head.chunks_exact_mut(2).zip(s.chunks_exact(2)).zip(c.chunks_exact(2)) {
                        let (x0, x1) = (p[0], p[1]);
                        // The same products and sum, in the same order, as the composed version.
                        p[0] = x0 * c[0] + (-x1) * s[0];
                        p[1] = x1 * c[1] + x0 * s[1];
                    }
                }
            })
        })
    })??;
    Tensor::from_vec(y, x.shape(), x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tensor(shape: &[usize], seed: usize) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (((i * 7919 + seed * 104_729) % 1999) as f32 / 999.5) - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The CPU path (transposed weight, bias and residual folded into the GEMM) against
    /// candle's `x·Wᵀ + b (+ r)`, for shapes on both sides of the GEMM's wide-product switch,
    /// with and without bias; and the f64 fallback.
    #[test]
    fn linear_matches_candle() {
        for (rows, inp, out) in [(5, 7, 3), (33, 130, 300), (300, 130, 33), (1, 64, 257)] {
            let x = tensor(&[1, rows, inp], 1);
            let w = tensor(&[out, inp], 2);
            let b = tensor(&[out], 3);
            let r = tensor(&[1, rows, out], 4);
            for bias in [None, Some(b.clone())] {
                let lin = InferLinear::new(w.clone(), bias.clone()).unwrap();
                let mut want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
                if let Some(b) = &bias {
                    want = want.broadcast_add(b).unwrap();
                }
                assert!(max_diff(&lin.forward(&x).unwrap(), &want) < 1e-5, "{rows}×{inp}→{out}");
                let with_r = (&want + &r).unwrap();
                assert!(max_diff(&lin.forward_add(&x, &r).unwrap(), &with_r) < 1e-5, "{rows}×{inp}→{out} + r");
                let x64 = x.to_dtype(DType::F64).unwrap();
                let y64 = lin.forward(&x64).unwrap();
                assert_eq!(y64.dtype(), DType::F64);
                let mut want64 = x64.broadcast_matmul(&w.to_dtype(DType::F64).unwrap().t().unwrap()).unwrap();
                if let Some(b) = &bias {
                    want64 = want64.broadcast_add(&b.to_dtype(DType::F64).unwrap()).unwrap();
                }
                let d64 = (&y64 - &want64).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                assert!(d64.to_scalar::<f64>().unwrap() < 1e-9, "{rows}×{inp}→{out} in f64");
            }
        }
        let lin = InferLinear::new(tensor(&[4, 3], 0), None).unwrap();
        assert!(lin.forward(&tensor(&[2, 4], 0)).is_err());
        assert!(lin.forward_add(&tensor(&[2, 3], 0), &tensor(&[2, 3], 0)).is_err());
    }

    #[test]
    fn transpose_matches_naive() {
        for (r, c) in [(1, 1), (3, 70), (70, 3), (65, 33)] {
            let w: Vec<f32> = (0..r * c).map(|i| i as f32).collect();
            let t = transpose(&w, r, c);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(t[j * r + i], w[i * c + j]);
                }
            }
        }
    }

    #[test]
    fn swiglu_matches_candle() {
        let (g, x) = (tensor(&[3, 70_000], 5), tensor(&[3, 70_000], 6));
        let want = (g.silu().unwrap() * &x).unwrap();
        assert!(max_diff(&swiglu(&g, &x).unwrap(), &want) < 1e-6);
        assert!(swiglu(&g, &tensor(&[3, 5], 0)).is_err());
    }

    /// The CPU kernel against the composed fallback (run on f64, the path other devices take),
    /// with and without a class token in front.
    #[test]
    fn rope_matches_composed() {
        for prefix in [0, 1] {
            let (b, len, heads, d) = (2, 5 + prefix, 3, 8);
            let x = tensor(&[b, len, heads * d], 7);
            let (sin, cos) = (tensor(&[len - prefix, d], 8), tensor(&[len - prefix, d], 9));
            let got = rope_interleaved(&x, heads, prefix, &sin, &cos).unwrap();
            let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let want = rope_interleaved(&f64s(&x), heads, prefix, &f64s(&sin), &f64s(&cos)).unwrap();
            assert!(max_diff(&got, &want) < 1e-6, "prefix {prefix}");
            if prefix == 1 {
                assert_eq!(max_diff(&got.narrow(1, 0, 1).unwrap(), &x.narrow(1, 0, 1).unwrap()), 0.0);
            }
            // One pair by hand: token `prefix`, head 1, pair 0.
            let xv = x.to_vec3::<f32>().unwrap();
            let (s, c) = (sin.to_vec2::<f32>().unwrap(), cos.to_vec2::<f32>().unwrap());
            let gv = got.to_vec3::<f32>().unwrap();
            let (x0, x1) = (xv[0][prefix][d], xv[0][prefix][d + 1]);
            assert!((gv[0][prefix][d] - (x0 * c[0][0] - x1 * s[0][0])).abs() < 1e-6);
            assert!((gv[0][prefix][d + 1] - (x1 * c[0][1] + x0 * s[0][1])).abs() < 1e-6);
        }
        assert!(rope_interleaved(&tensor(&[1, 4, 6], 0), 4, 0, &tensor(&[4, 2], 0), &tensor(&[4, 2], 0)).is_err());
    }
}
