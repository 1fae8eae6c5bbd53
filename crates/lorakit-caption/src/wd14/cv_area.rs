//! OpenCV's `cv::resize(src, (w, h), interpolation = INTER_AREA)` for 8-bit images when
//! shrinking, bit for bit (OpenCV 4.10 `modules/imgproc/src/resize.cpp`, unchanged in 5.x).
//!
//! OpenCV takes one of two paths, both reproduced here:
//! - `resizeAreaFast_` when both factors are integers: the k×k block sum in integers, then
//!   `(Σ + 2) >> 2` for 2×2 with 1, 3 or 4 channels, `saturate_cast(Σ · (1/k²)f)` otherwise;
//! - `resizeArea_<uchar, float>` otherwise: per-axis tables of (source, destination, weight)
//!   built in f64 and stored as f32 (`computeResizeAreaTab`), a horizontal pass per source row
//!   into an f32 buffer (`buf += S·α`, taps in table order), a vertical accumulation
//!   (`sum += β·buf`, rows in table order) and `saturate_cast<uchar>` (round half to even).
//!
//! Every f32 operation is rounded separately (OpenCV's baseline x86-64 build has no fused
//! multiply-add here, and Rust never contracts), so the same sequence gives the same bytes;
//! a float64 area mean differs from it by up to ~1e-4 and rounds the other way near .5.

/// One weight of an axis table: destination element `di` gets `alpha ×` source element `si`
/// (both already multiplied by the channel count on the x axis).
#[derive(Debug, Clone, Copy)]
struct Tap {
    si: usize,
    di: usize,
    alpha: f32,
}

/// `computeResizeAreaTab(ssize, dsize, cn, scale)`: the taps of every destination index, in
/// OpenCV's order (the partial left pixel, the whole ones, the partial right one).
fn area_tab(ssize: usize, dsize: usize, cn: usize, scale: f64) -> Vec<Tap> {
    let mut tab = Vec::with_capacity(ssize * 2);
    for dx in 0..dsize {
        let fsx1 = dx as f64 * scale;
        let fsx2 = fsx1 + scale;
        let cell_width = scale.min(ssize as f64 - fsx1);
        let mut sx1 = fsx1.ceil() as i64;
        let mut sx2 = fsx2.floor() as i64;
        sx2 = sx2.min(ssize as i64 - 1);
        sx1 = sx1.min(sx2);
        let di = dx * cn;
        if sx1 as f64 - fsx1 > 1e-3 {
            tab.push(Tap { si: (sx1 - 1) as usize * cn, di, alpha: ((sx1 as f64 - fsx1) / cell_width) as f32 });
        }
        for sx in sx1..sx2 {
            tab.push(Tap { si: sx as usize * cn, di, alpha: (1.0 / cell_width) as f32 });
        }
        if fsx2 - sx2 as f64 > 1e-3 {
            let alpha = ((fsx2 - sx2 as f64).min(1.0).min(cell_width) / cell_width) as f32;
            tab.push(Tap { si: sx2 as usize * cn, di, alpha });
        }
    }
    tab
}

/// `saturate_cast<uchar>(float)`: `cvRound` (half to even) clamped to 0..=255.
fn saturate_u8(v: f32) -> u8 {
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

/// Resizes an interleaved 8-bit image (`width × height × channels`, row-major, no padding) to
/// `to_width × to_height` as `cv2.resize(src, (to_width, to_height), interpolation=cv2.INTER_AREA)`.
///
/// Only shrinking (or equal sizes) on both axes: OpenCV's INTER_AREA enlarges with a bilinear
/// variant that is not reproduced here (kohya enlarges with PIL's Lanczos instead).
///
/// # Panics
/// If `src` is not `width·height·channels` long, a size is 0, or an axis would be enlarged.
pub fn resize(src: &[u8], width: usize, height: usize, channels: usize, to_width: usize, to_height: usize) -> Vec<u8> {
    assert_eq!(src.len(), width * height * channels, "cv_area::resize: buffer size");
    assert!(to_width > 0 && to_height > 0 && channels > 0, "cv_area::resize: empty size");
    assert!(to_width <= width && to_height <= height, "cv_area::resize: INTER_AREA here only shrinks");
    // cv::resize passes inv_scale = dsize/ssize; hal::resize inverts it back, so the scale is
    // 1/(d/s), which can differ from s/d in the last bit.
    let scale_x = 1.0 / (to_width as f64 / width as f64);
    let scale_y = 1.0 / (to_height as f64 / height as f64);
    let (iscale_x, iscale_y) = (scale_x.round_ties_even(), scale_y.round_ties_even());
    if (scale_x - iscale_x).abs() < f64::EPSILON && (scale_y - iscale_y).abs() < f64::EPSILON {
        return resize_fast(src, width, channels, to_width, to_height, iscale_x as usize, iscale_y as usize);
    }

    let cn = channels;
    let row_len = to_width * cn;
    let xtab = area_tab(width, to_width, cn, scale_x);
    let ytab = area_tab(height, to_height, 1, scale_y);
    let mut out = vec![0u8; to_height * row_len];
    let mut buf = vec![0f32; row_len];
    let mut sum = vec![0f32; row_len];
    let mut prev_dy = ytab[0].di;
    for t in &ytab {
        let row = &src[t.si * width * cn..(t.si + 1) * width * cn];
        buf.fill(0.0);
        for x in &xtab {
            for c in 0..cn {
                buf[x.di + c] += row[x.si + c] as f32 * x.alpha;
            }
        }
        let beta = t.alpha;
        if t.di != prev_dy {
            let dst = &mut out[prev_dy * row_len..(prev_dy + 1) * row_len];
            for ((d, s), b) in dst.iter_mut().zip(sum.iter_mut()).zip(&buf) {
                *d = saturate_u8(*s);
                *s = beta * b;
            }
            prev_dy = t.di;
        } else {
            for (s, b) in sum.iter_mut().zip(&buf) {
                *s += beta * b;
            }
        }
    }
    for (d, s) in out[prev_dy * row_len..(prev_dy + 1) * row_len].iter_mut().zip(&sum) {
        *d = saturate_u8(*s);
    }
    out
}

/// `resizeAreaFast_<uchar, int>` for integer factors `kx`, `ky` (the sizes divide exactly, so
/// OpenCV's partial-border loop never runs).
fn resize_fast(
    src: &[u8],
    width: usize,
    cn: usize,
    to_width: usize,
    to_height: usize,
    kx: usize,
    ky: usize,
) -> Vec<u8> {
    // ResizeAreaFastVec's shortcut: 2×2 with 1, 3 or 4 channels (not 2) rounds half up.
    let half_up = kx == 2 && ky == 2 && cn != 2;
    let scale = 1.0f32 / (kx * ky) as f32;
    let mut out = vec![0u8; to_width * to_height * cn];
    for dy in 0..to_height {
        for dx in 0..to_width {
            for c in 0..cn {
                let mut total = 0u32;
                for sy in dy * ky..(dy + 1) * ky {
                    for sx in dx * kx..(dx + 1) * kx {
                        total += src[(sy * width + sx) * cn + c] as u32;
                    }
                }
                out[(dy * to_width + dx) * cn + c] =
                    if half_up { ((total + 2) >> 2) as u8 } else { saturate_u8(total as f32 * scale) };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_cover_each_destination_with_unit_weight() {
        for (s, d) in [(1024, 448), (997, 448), (613, 300), (150, 64), (101, 64)] {
            let scale = 1.0 / (d as f64 / s as f64);
            let tab = area_tab(s, d, 3, scale);
            for dx in 0..d {
                let w: f64 = tab.iter().filter(|t| t.di == dx * 3).map(|t| t.alpha as f64).sum();
                assert!((w - 1.0).abs() < 1e-5, "{s}→{d} at {dx}: Σα = {w}");
            }
            assert!(tab.iter().all(|t| t.si < s * 3));
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_halving_rounds_half_up() {
        let flat = vec![77u8; 997 * 613 * 3];
        assert!(resize(&flat, 997, 613, 3, 448, 300).iter().all(|v| *v == 77));
        // 2×2 mean of 0, 0, 1, 1 is 0.5: OpenCV's (Σ + 2) >> 2 gives 1.
        assert_eq!(resize(&[0, 1, 0, 1], 2, 2, 1, 1, 1), vec![1]);
        // 4×4 with Σ/16 = 0.5 goes through the float path: ties to even gives 0.
        let mut quarter = vec![0u8; 16];
        quarter[..8].fill(1);
        assert_eq!(resize(&quarter, 4, 4, 1, 1, 1), vec![0]);
    }
}
