//! Bounds-checked strided matrix views over f32 slices and one safe entry to the `gemm` crate
//! (the GEMM candle itself uses on the CPU, ~200 GFLOPS on two AVX2 cores — as fast as MKL
//! there; what our kernels save is everything around it).

use gemm::Parallelism;

/// A read-only matrix view: element (i, j) is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows × cols` matrix at the start of `data`.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// A `rows × cols` matrix whose rows are `row_stride` apart (a slice of wider rows).
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        MatRef { data, rows, cols, row_stride, col_stride: 1 }
    }

    /// The transpose (no copy).
    pub(crate) fn t(self) -> Self {
        MatRef { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// Element (i, j).
    pub(crate) fn get(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row_stride + j * self.col_stride]
    }

    /// Panics unless every element the strides reach lies in `data`: this check is what
    /// makes [`matmul`] sound.
    fn assert_in_bounds(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(
                last < self.data.len(),
                "matrix view {}×{} reaches past its {} elements",
                self.rows,
                self.cols,
                self.data.len()
            );
        }
    }
}

/// Work split over all rayon threads (for one big product), or none (inside a parallel loop).
pub(crate) fn all_threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst = scale · lhs · rhs`, or `dst += scale · lhs · rhs` when `accumulate`; `dst` is
/// row-major `lhs.rows × rhs.cols`.
pub(crate) fn matmul(dst: &mut [f32], accumulate: bool, scale: f32, lhs: MatRef, rhs: MatRef, par: Parallelism) {
    assert_eq!(lhs.cols, rhs.rows, "matmul: inner dimensions differ");
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    assert!(dst.len() >= m * n, "matmul: destination has {} elements, needs {}", dst.len(), m * n);
    lhs.assert_in_bounds();
    rhs.assert_in_bounds();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // A short-and-wide product of a row-major lhs with a column-major rhs (the gradient of a
    // LoRA down weight: 16 × C·9 from a 16 × H·W gradient and the transposed im2col rows) runs
    // at a tenth of the GEMM's speed in this orientation, and at full speed as the transposed
    // product `rhsᵀ·lhsᵀ` into a row-major buffer (measured on the SD1.5 step's shapes: 16×2880
    // from k = 4096, 18 → 131 GFLOPS; 256×1280, 139 → 175). The extra transpose is m·n copies,
    // which only pays off when each output takes many products (not attention's k = 40).
    if lhs.col_stride == 1 && rhs.row_stride == 1 && rhs.col_stride != 1 && m < n && k >= 128 {
        let mut transposed = vec![0f32; n * m];
        gemm_row_major(&mut transposed, false, scale, rhs.t(), lhs.t(), par);
        add_transposed(&mut dst[..m * n], accumulate, &transposed, m, n);
        return;
    }
    gemm_row_major(dst, accumulate, scale, lhs, rhs, par);
}

/// `dst (m×n) = src (n×m)ᵀ`, or `+=` when `accumulate`, in cache-sized tiles.
fn add_transposed(dst: &mut [f32], accumulate: bool, src: &[f32], m: usize, n: usize) {
    const TILE: usize = 32;
    for i0 in (0..m).step_by(TILE) {
        for j0 in (0..n).step_by(TILE) {
            for i in i0..(i0 + TILE).min(m) {
                let row = &mut dst[i * n..(i + 1) * n];
                for j in j0..(j0 + TILE).min(n) {
                    let v = src[j * m + i];
                    row[j] = if accumulate { row[j] + v } else { v };
                }
            }
        }
    }
}

/// The GEMM call itself, for views checked by [`matmul`].
fn gemm_row_major(dst: &mut [f32], accumulate: bool, scale: f32, lhs: MatRef, rhs: MatRef, par: Parallelism) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    debug_assert!(dst.len() >= m * n && lhs.cols == rhs.rows);
    // SAFETY: both operands' reachable elements are in bounds (asserted by `matmul`), dst holds
    // m·n elements, and dst is a unique borrow so it cannot alias the shared operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operand layout, both orientations (m < n with k ≥ 128 takes the transposed route for a
    /// row-major lhs and column-major rhs) and both write modes, against a naive product.
    #[test]
    fn matmul_matches_naive_for_every_layout() {
        for (m, n, k) in [(3, 70, 130), (70, 3, 130), (16, 40, 9), (5, 5, 1)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 53) % 13) as f32 - 6.0).collect();
            for (a_rm, b_rm, accumulate) in (0..8).map(|c| (c & 1 == 0, c & 2 == 0, c & 4 == 0)) {
                let lhs = if a_rm { MatRef::row_major(&a, m, k) } else { MatRef::row_major(&a, k, m).t() };
                let rhs = if b_rm { MatRef::row_major(&b, k, n) } else { MatRef::row_major(&b, n, k).t() };
                let start: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32).collect();
                let mut dst = start.clone();
                matmul(&mut dst, accumulate, 0.5, lhs, rhs, Parallelism::None);
                for i in 0..m {
                    for j in 0..n {
                        let dot: f32 = (0..k).map(|l| lhs.get(i, l) * rhs.get(l, j)).sum();
                        let want = 0.5 * dot + if accumulate { start[i * n + j] } else { 0.0 };
                        assert_eq!(
                            dst[i * n + j],
                            want,
                            "{m}×{n}×{k} a_rm={a_rm} b_rm={b_rm} acc={accumulate} at ({i},{j})"
                        );
                    }
                }
            }
        }
    }
}
