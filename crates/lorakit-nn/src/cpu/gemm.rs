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
    // SAFETY: both operands' reachable elements are in bounds (asserted above), dst holds m·n
    // elements, and dst is a unique borrow so it cannot alias the shared operands.
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
