//! Winograd F(2×2, 3×3) for the 3×3, stride-1, padding-1 convolutions of the large-resolution
//! blocks, forward and input gradient.
//!
//! Each 2×2 output tile is `Aᵀ[(G·g·Gᵀ) ⊙ (Bᵀ·d·B)]A` for the 4×4 input patch d and kernel g
//! (Lavin & Gray, 2015): 16 multiplies where the direct form takes 36, so the convolution is
//! 16 GEMMs of (out × in)·(in × tiles), 4/9 of im2col's products. On the SD1.5 step the 3×3
//! convs were half of all GEMM work. The transforms only add and halve, so f32 results stay
//! within a few ulps of the direct sum (tests compare with candle's conv). Small images are
//! left to im2col: below [`MIN_TILES`] tiles the per-call weight transform outweighs the saving.

use rayon::prelude::*;

use super::gemm::{all_threads, matmul, MatRef};

/// Fewest 2×2 tiles (a 16×16 image) for which the transform pays off: on the SD1.5 step the
/// 16×16 level (1280 channels) still gains ~0.2 s with it; at 8×8 the weight transform (as large
/// as 16/9 of the kernel, redone every call) costs more than the products it saves.
pub(crate) const MIN_TILES: usize = 64;

/// Tile elements: a 4×4 transformed patch.
const XI: usize = 16;

/// Tiles of an h×w output (= input) image.
fn tiles(h: usize, w: usize) -> (usize, usize) {
    (h.div_ceil(2), w.div_ceil(2))
}

/// Whether a convolution with this kernel, stride and padding over an h×w image runs here.
pub(crate) fn applies(kernel: usize, stride: usize, padding: usize, h: usize, w: usize) -> bool {
    let (th, tw) = tiles(h, w);
    kernel == 3 && stride == 1 && padding == 1 && th * tw >= MIN_TILES
}

/// `G·g·Gᵀ` for one 3×3 kernel g (row-major), G = [[1,0,0],[½,½,½],[½,−½,½],[0,0,1]].
fn transform_kernel(g: [f32; 9]) -> [f32; XI] {
    // Rows first: t (4×3) = G·g.
    let mut t = [0f32; 12];
    for j in 0..3 {
        let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
        t[j] = g0;
        t[3 + j] = 0.5 * (g0 + g1 + g2);
        t[6 + j] = 0.5 * (g0 - g1 + g2);
        t[9 + j] = g2;
    }
    // Then columns: u (4×4) = t·Gᵀ.
    let mut u = [0f32; XI];
    for i in 0..4 {
        let (t0, t1, t2) = (t[3 * i], t[3 * i + 1], t[3 * i + 2]);
        u[4 * i] = t0;
        u[4 * i + 1] = 0.5 * (t0 + t1 + t2);
        u[4 * i + 2] = 0.5 * (t0 - t1 + t2);
        u[4 * i + 3] = t2;
    }
    u
}

/// Transformed weights, laid out (rows, 16, cols) so that element ξ is the (rows × cols)
/// matrix starting at `ξ·cols` with row stride `16·cols`.
pub(crate) struct Weights {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl Weights {
    /// From a forward kernel w (out, in, 3, 3): rows = out, cols = in.
    pub(crate) fn forward(w: &[f32], out: usize, inp: usize) -> Self {
        let _profile = crate::profile::scope("winograd weight transform");
        let mut data = vec![0f32; out * XI * inp];
        data.par_chunks_mut(XI * inp).enumerate().for_each(|(o, dst)| {
            for c in 0..inp {
                let k = &w[(o * inp + c) * 9..(o * inp + c + 1) * 9];
                let u = transform_kernel(k.try_into().expect("a 3×3 kernel"));
                for (xi, &v) in u.iter().enumerate() {
                    dst[xi * inp + c] = v;
                }
            }
        });
        Weights { data, rows: out, cols: inp }
    }

    /// For the input gradient of a forward kernel w (out, in, 3, 3): the kernel rotated by
    /// 180° with in and out swapped, so rows = in, cols = out.
    pub(crate) fn input_grad(w: &[f32], out: usize, inp: usize) -> Self {
        let _profile = crate::profile::scope("winograd weight transform");
        let mut data = vec![0f32; inp * XI * out];
        data.par_chunks_mut(XI * out).enumerate().for_each(|(c, dst)| {
            for o in 0..out {
                let k = &w[(o * inp + c) * 9..(o * inp + c + 1) * 9];
                let mut rotated = [0f32; 9];
                for (i, r) in rotated.iter_mut().enumerate() {
                    *r = k[8 - i];
                }
                let u = transform_kernel(rotated);
                for (xi, &v) in u.iter().enumerate() {
                    dst[xi * out + o] = v;
                }
            }
        });
        Weights { data, rows: inp, cols: out }
    }

    fn element(&self, xi: usize) -> MatRef<'_> {
        MatRef::strided(&self.data[xi * self.cols..], self.rows, self.cols, XI * self.cols)
    }
}

/// `Bᵀ·d·B` of every 4×4 input patch (zero outside the image) of one image (C, h, w), written
/// over all of `v`, laid out (C, 16, tiles).
pub(crate) fn transform_input(image: &[f32], channels: usize, h: usize, w: usize, v: &mut [f32]) {
    let _profile = crate::profile::scope("winograd input transform");
    let (th, tw) = tiles(h, w);
    let t = th * tw;
    assert_eq!(v.len(), channels * XI * t, "winograd: transformed input buffer has the wrong size");
    assert_eq!(image.len(), channels * h * w, "winograd: image has the wrong size");
    v.par_chunks_mut(XI * t).zip(image.par_chunks(h * w)).for_each(|(dst, plane)| {
        let at = |y: isize, x: isize| -> f32 {
            if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                plane[y as usize * w + x as usize]
            } else {
                0.0
            }
        };
        for ty in 0..th {
            for tx in 0..tw {
                let (y0, x0) = (2 * ty as isize - 1, 2 * tx as isize - 1);
                let mut d = [0f32; XI];
                let interior = y0 >= 0 && x0 >= 0 && (y0 + 4) as usize <= h && (x0 + 4) as usize <= w;
                for i in 0..4 {
                    for j in 0..4 {
                        d[4 * i + j] = if interior {
                            plane[(y0 as usize + i) * w + x0 as usize + j]
                        } else {
                            at(y0 + i as isize, x0 + j as isize)
                        };
                    }
                }
                // Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],[0,1,0,−1]], on rows then columns.
                let mut r = [0f32; XI];
                for j in 0..4 {
                    let (d0, d1, d2, d3) = (d[j], d[4 + j], d[8 + j], d[12 + j]);
                    r[j] = d0 - d2;
                    r[4 + j] = d1 + d2;
                    r[8 + j] = d2 - d1;
                    r[12 + j] = d1 - d3;
                }
                let tile = ty * tw + tx;
                for i in 0..4 {
                    let (r0, r1, r2, r3) = (r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]);
                    dst[(4 * i) * t + tile] = r0 - r2;
                    dst[(4 * i + 1) * t + tile] = r1 + r2;
                    dst[(4 * i + 2) * t + tile] = r2 - r1;
                    dst[(4 * i + 3) * t + tile] = r1 - r3;
                }
            }
        }
    });
}

/// The products of one image: `m[ξ] (+)= U[ξ]·V[ξ]` for every tile element, m laid out
/// (16, rows, tiles).
pub(crate) fn multiply(m: &mut [f32], accumulate: bool, u: &Weights, v: &[f32], tiles: usize) {
    let _profile = crate::profile::scope("winograd products");
    assert_eq!(v.len(), u.cols * XI * tiles, "winograd: transformed input does not fit the weights");
    assert_eq!(m.len(), XI * u.rows * tiles, "winograd: product buffer has the wrong size");
    for (xi, m_xi) in m.chunks_exact_mut(u.rows * tiles).enumerate() {
        let v_xi = MatRef::strided(&v[xi * tiles..], u.cols, tiles, XI * tiles);
        matmul(m_xi, accumulate, 1.0, u.element(xi), v_xi, all_threads());
    }
}

/// `Aᵀ·M·A` of every tile into the output image (rows, h, w), A ᵀ = [[1,1,1,0],[0,1,−1,−1]];
/// added to `out` when `accumulate`.
pub(crate) fn transform_output(m: &[f32], rows: usize, out: &mut [f32], h: usize, w: usize, accumulate: bool) {
    let _profile = crate::profile::scope("winograd output transform");
    let (th, tw) = tiles(h, w);
    let t = th * tw;
    out.par_chunks_mut(h * w).enumerate().for_each(|(o, plane)| {
        let base = o * t;
        for ty in 0..th {
            for tx in 0..tw {
                let tile = ty * tw + tx;
                let mut s = [0f32; XI];
                for (xi, v) in s.iter_mut().enumerate() {
                    *v = m[xi * rows * t + base + tile];
                }
                // Rows: r (2×4) = Aᵀ·M, then columns: y (2×2) = r·A.
                let mut r = [0f32; 8];
                for j in 0..4 {
                    let (m0, m1, m2, m3) = (s[j], s[4 + j], s[8 + j], s[12 + j]);
                    r[j] = m0 + m1 + m2;
                    r[4 + j] = m1 - m2 - m3;
                }
                for i in 0..2 {
                    let y = 2 * ty + i;
                    if y >= h {
                        continue;
                    }
                    let (r0, r1, r2, r3) = (r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]);
                    for (j, value) in [r0 + r1 + r2, r1 - r2 - r3].into_iter().enumerate() {
                        let x = 2 * tx + j;
                        if x < w {
                            let dst = &mut plane[y * w + x];
                            *dst = if accumulate { *dst + value } else { value };
                        }
                    }
                }
            }
        }
    });
}

/// Tiles of an h×w image.
pub(crate) fn tile_count(h: usize, w: usize) -> usize {
    let (th, tw) = tiles(h, w);
    th * tw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0) - 1.0).collect()
    }

    /// Direct 3×3, stride-1, padding-1 correlation in f64: x (C, h, w), k (O, C, 3, 3).
    fn direct(x: &[f32], k: &[f32], (c, o, h, w): (usize, usize, usize, usize)) -> Vec<f64> {
        let mut y = vec![0f64; o * h * w];
        for oo in 0..o {
            for yy in 0..h {
                for xx in 0..w {
                    let mut s = 0f64;
                    for cc in 0..c {
                        for i in 0..3 {
                            for j in 0..3 {
                                let (iy, ix) = (yy as isize + i as isize - 1, xx as isize + j as isize - 1);
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    s += x[(cc * h + iy as usize) * w + ix as usize] as f64
                                        * k[((oo * c + cc) * 3 + i) * 3 + j] as f64;
                                }
                            }
                        }
                    }
                    y[(oo * h + yy) * w + xx] = s;
                }
            }
        }
        y
    }

    fn assert_close(ours: &[f32], want: &[f64], what: &str) {
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
        for (i, (&a, &b)) in ours.iter().zip(want).enumerate() {
            assert!((a as f64 - b).abs() <= 1e-5 * scale, "{what}: element {i}: {a} vs {b}");
        }
    }

    #[test]
    fn forward_and_input_gradient_match_direct_convolution() {
        // Odd sizes leave partial tiles on the right and bottom edges.
        for (c, o, h, w) in [(3, 2, 33, 31), (2, 3, 32, 32)] {
            assert!(applies(3, 1, 1, h, w));
            let (x, k) = (values(c * h * w, 1), values(o * c * 9, 2));
            let t = tile_count(h, w);
            let mut m = vec![0f32; XI * o * t];
            let mut v = vec![f32::NAN; c * XI * t];
            transform_input(&x, c, h, w, &mut v);
            multiply(&mut m, false, &Weights::forward(&k, o, c), &v, t);
            let mut y = vec![1f32; o * h * w];
            transform_output(&m, o, &mut y, h, w, true);
            let want: Vec<f64> = direct(&x, &k, (c, o, h, w)).into_iter().map(|v| v + 1.0).collect();
            assert_close(&y, &want, "forward (accumulated onto ones)");

            // dx of Σ y·g is the correlation of g with the rotated kernel, in and out swapped.
            let g = values(o * h * w, 3);
            let mut m = vec![0f32; XI * c * t];
            let mut v = vec![f32::NAN; o * XI * t];
            transform_input(&g, o, h, w, &mut v);
            multiply(&mut m, false, &Weights::input_grad(&k, o, c), &v, t);
            let mut dx = vec![0f32; c * h * w];
            transform_output(&m, c, &mut dx, h, w, false);
            let mut rotated = vec![0f32; c * o * 9];
            for oo in 0..o {
                for cc in 0..c {
                    for i in 0..9 {
                        rotated[(cc * o + oo) * 9 + i] = k[(oo * c + cc) * 9 + 8 - i];
                    }
                }
            }
            assert_close(&dx, &direct(&g, &rotated, (o, c, h, w)), "input gradient");
        }
    }

    #[test]
    fn only_large_stride_one_three_by_three_convs_apply() {
        assert!(applies(3, 1, 1, 16, 16));
        assert!(!applies(3, 1, 1, 8, 8), "16 tiles: im2col is cheaper");
        assert!(!applies(3, 2, 1, 64, 64));
        assert!(!applies(1, 1, 0, 64, 64));
        assert!(!applies(3, 1, 0, 64, 64));
    }
}
