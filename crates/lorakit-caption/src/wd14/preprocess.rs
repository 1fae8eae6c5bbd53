//! An image → the WD tagger's input, as kohya's `preprocess_image`
//! (sd-scripts `finetune/tag_images_by_wd14_tagger.py`) makes it:
//!
//! 1. transparency composited on white (PIL `paste` with the alpha as mask, its rounding);
//! 2. BGR; padded to a square with white (255), centred (`pad_left = (S−w)//2`);
//! 3. resized to the model's side by `library/utils.py::resize_image`: OpenCV `INTER_AREA`
//!    when shrinking (or equal), PIL `LANCZOS` when enlarging — or, with [`Resize::Bicubic`],
//!    PIL `BICUBIC` skipped at the exact size (the official WD Space's rule);
//! 4. for the timm weights: NCHW and `x/127.5 − 1` ([`Prepared::nchw_normalised`]).
//!
//! Both resamplers are re-implemented here: PIL's `ImagingResample` with its 22-bit fixed-point
//! coefficients (exact), and OpenCV's area average in floating point (within one level of
//! OpenCV's float rounding).

use std::path::Path;

use image::{DynamicImage, RgbImage};

use super::Wd14Error;
use crate::pil_resize::{self, PilFilter};

/// How the padded square is brought to the model's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resize {
    /// kohya: OpenCV INTER_AREA when shrinking, PIL LANCZOS when enlarging.
    #[default]
    Kohya,
    /// The official WD Space / TagGUI: PIL BICUBIC (none at the exact size).
    Bicubic,
}

/// A prepared input: `size`×`size`, HWC, BGR, 0..255.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Side.
    pub size: usize,
    /// `size·size·3` bytes, row-major, B G R per pixel.
    pub bgr: Vec<u8>,
}

impl Prepared {
    /// The timm input: channels first (B, G, R planes), `x/127.5 − 1`.
    pub fn nchw_normalised(&self) -> Vec<f32> {
        let n = self.size * self.size;
        let mut out = vec![0f32; 3 * n];
        for (i, px) in self.bgr.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n + i] = px[c] as f32 / 127.5 - 1.0;
            }
        }
        out
    }
}

/// Decodes `path` and prepares it (a decoding failure names the file).
pub fn load(path: &Path, size: usize, resize: Resize) -> Result<Prepared, Wd14Error> {
    let image = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Wd14Error::Image { path: path.to_path_buf(), message: e.to_string() })?
        .decode()
        .map_err(|e| Wd14Error::Image { path: path.to_path_buf(), message: format!("cannot decode: {e}") })?;
    Ok(prepare(&image, size, resize))
}

/// Prepares a decoded image.
pub fn prepare(image: &DynamicImage, size: usize, resize: Resize) -> Prepared {
    let rgb = on_white(image);
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let side = w.max(h);
    let (left, top) = ((side - w) / 2, (side - h) / 2);
    let mut square = vec![255u8; side * side * 3];
    for (y, row) in rgb.as_raw().chunks_exact(w * 3).enumerate() {
        for (x, px) in row.chunks_exact(3).enumerate() {
            let o = ((y + top) * side + x + left) * 3;
            square[o..o + 3].copy_from_slice(&[px[2], px[1], px[0]]);
        }
    }
    let bgr = match resize {
        Resize::Kohya if side >= size => area_resize(&square, side, size),
        Resize::Kohya => pil_resize::resize(&square, side, side, size, size, PilFilter::Lanczos),
        Resize::Bicubic if side == size => square,
        Resize::Bicubic => pil_resize::resize(&square, side, side, size, size, PilFilter::Bicubic),
    };
    Prepared { size, bgr }
}

/// RGB with any transparency composited on white, as kohya's `background.paste(image,
/// mask=alpha)`: PIL's `BLEND` = `div255(bg·(255−a) + src·a)` with its rounding.
fn on_white(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for c in 0..3 {
            let t = 255 * (255 - a) + p[c] as u32 * a + 128;
            o[c] = (((t >> 8) + t) >> 8) as u8;
        }
    }
    out
}

/// OpenCV `INTER_AREA` downscale of a square BGR image `from`² → `to`²: each output pixel is the
/// area-weighted mean of the source pixels its footprint covers (separable), rounded half to
/// even like `saturate_cast<uchar>`.
fn area_resize(src: &[u8], from: usize, to: usize) -> Vec<u8> {
    if from == to {
        return src.to_vec();
    }
    if from % to == 0 {
        return area_resize_integer(src, from, to);
    }
    let scale = from as f64 / to as f64;
    // (first source index, weights) per output index.
    let taps: Vec<(usize, Vec<f64>)> = (0..to)
        .map(|d| {
            let (start, end) = (d as f64 * scale, ((d + 1) as f64 * scale).min(from as f64));
            let first = start.floor() as usize;
            let mut weights = Vec::new();
            let mut i = first;
            while (i as f64) < end {
                let overlap = (end.min((i + 1) as f64) - start.max(i as f64)).max(0.0);
                weights.push(overlap / scale);
                i += 1;
            }
            (first, weights)
        })
        .collect();
    // Horizontal pass in f64, then vertical, rounding once at the end like OpenCV.
    let mut rows = vec![0f64; from * to * 3];
    for y in 0..from {
        for (x, (first, weights)) in taps.iter().enumerate() {
            for c in 0..3 {
                rows[(y * to + x) * 3 + c] =
                    weights.iter().enumerate().map(|(k, w)| w * src[(y * from + first + k) * 3 + c] as f64).sum();
            }
        }
    }
    let mut out = vec![0u8; to * to * 3];
    for (y, (first, weights)) in taps.iter().enumerate() {
        for x in 0..to * 3 {
            let v: f64 = weights.iter().enumerate().map(|(k, w)| w * rows[(first + k) * to * 3 + x]).sum();
            out[y * to * 3 + x] = v.round_ties_even().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// OpenCV's `resizeAreaFast` for an integer factor k: the k×k block mean — `(Σ + 2) >> 2` in
/// its 2× vector path, `saturate_cast(Σ·(1/k²))` (f32, ties to even) otherwise.
fn area_resize_integer(src: &[u8], from: usize, to: usize) -> Vec<u8> {
    let k = from / to;
    let inv = 1.0f32 / (k * k) as f32;
    let mut out = vec![0u8; to * to * 3];
    for y in 0..to {
        for x in 0..to {
            for c in 0..3 {
                let mut sum = 0u32;
                for dy in 0..k {
                    for dx in 0..k {
                        sum += src[((y * k + dy) * from + x * k + dx) * 3 + c] as u32;
                    }
                }
                out[(y * to + x) * 3 + c] =
                    if k == 2 { ((sum + 2) >> 2) as u8 } else { (sum as f32 * inv).round_ties_even().min(255.0) as u8 };
            }
        }
    }
    out
}
