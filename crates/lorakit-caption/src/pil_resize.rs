//! PIL's `Image.resize` for 8-bit RGB (`ImagingResample` in `Resample.c`), bit for bit: the
//! captioners' references (kohya's tagger enlarging with LANCZOS, the WD Space and Florence-2's
//! processor with BICUBIC) resize with PIL, and captions near a threshold depend on the exact
//! bytes.

/// A PIL resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    /// `BILINEAR` (2).
    Bilinear,
    /// `BICUBIC` (3).
    Bicubic,
    /// `LANCZOS` (1).
    Lanczos,
}

impl PilFilter {
    fn support(self) -> f64 {
        match self {
            PilFilter::Bilinear => 1.0,
            PilFilter::Bicubic => 2.0,
            PilFilter::Lanczos => 3.0,
        }
    }

    /// `bilinear_filter`, `bicubic_filter` (a = −0.5) and `lanczos_filter`.
    fn weight(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        }
        match self {
            PilFilter::Bilinear => (1.0 - x.abs()).max(0.0),
            PilFilter::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            PilFilter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// PIL's fixed-point precision for 8-bit images (`PRECISION_BITS = 32 − 8 − 2`).
const PRECISION_BITS: u32 = 22;

/// `precompute_coeffs` + `normalize_coeffs_8bpc`: (first source index, integer weights) per
/// output index.
fn coeffs(in_size: usize, out_size: usize, filter: PilFilter) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let one = (1i64 << PRECISION_BITS) as f64;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero before the clamp.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let k: Vec<f64> = (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) / filterscale)).collect();
            let ww: f64 = k.iter().sum();
            let ints = k
                .iter()
                .map(|&w| {
                    let w = if ww != 0.0 { w / ww } else { w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i64
                    } else {
                        (0.5 + w * one) as i64
                    }
                })
                .collect();
            (xmin, ints)
        })
        .collect()
}

/// One 8-bit pass: `clip8((2^(P−1) + Σ in·k) >> P)`.
fn clip8(sum: i64) -> u8 {
    ((sum + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Packed 3-channel `w×h` → `ow×oh`: the horizontal pass, then the vertical one, each rounded to
/// 8 bits; a pass whose size does not change is skipped, as PIL does.
pub fn resize(src: &[u8], w: usize, h: usize, ow: usize, oh: usize, filter: PilFilter) -> Vec<u8> {
    let horizontal = if ow == w {
        src.to_vec()
    } else {
        let cx = coeffs(w, ow, filter);
        let mut out = vec![0u8; h * ow * 3];
        for y in 0..h {
            for (x, (first, k)) in cx.iter().enumerate() {
                for c in 0..3 {
                    let s: i64 = k.iter().enumerate().map(|(i, wt)| wt * src[(y * w + first + i) * 3 + c] as i64).sum();
                    out[(y * ow + x) * 3 + c] = clip8(s);
                }
            }
        }
        out
    };
    if oh == h {
        return horizontal;
    }
    let cy = coeffs(h, oh, filter);
    let mut out = vec![0u8; oh * ow * 3];
    for (y, (first, k)) in cy.iter().enumerate() {
        for x in 0..ow * 3 {
            let s: i64 = k.iter().enumerate().map(|(i, wt)| wt * horizontal[(first + i) * ow * 3 + x] as i64).sum();
            out[y * ow * 3 + x] = clip8(s);
        }
    }
    out
}
