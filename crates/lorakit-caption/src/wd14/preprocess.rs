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
//! Both resamplers are re-implemented, bit for bit: PIL's `ImagingResample` with its 22-bit
//! fixed-point coefficients ([`crate::pil_resize`]) and OpenCV's `INTER_AREA` with its f32
//! accumulation order ([`super::cv_area`]).

use std::path::Path;

use image::{DynamicImage, RgbImage};

use super::{cv_area, Wd14Error};
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

/// Decodes `path` as PIL does ([`crate::pil_decode`]) and prepares it (a decoding failure
/// names the file).
pub fn load(path: &Path, size: usize, resize: Resize) -> Result<Prepared, Wd14Error> {
    let image = crate::pil_decode::open(path)
        .map_err(|e| Wd14Error::Image { path: path.to_path_buf(), message: e.to_string() })?;
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
        Resize::Kohya if side >= size => cv_area::resize(&square, side, side, 3, size, size),
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
