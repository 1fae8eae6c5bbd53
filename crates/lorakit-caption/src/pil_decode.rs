//! Image files decoded as PIL decodes them, so the captioners' inputs are the bytes their
//! Python references (kohya's tagger, transformers' processors) see.
//!
//! JPEGs go through libjpeg-turbo's decoder (the `mozjpeg` crate builds its C sources with
//! `cc`, no NASM) with PIL's settings — ISLOW integer IDCT, fancy upsampling, libjpeg's
//! YCbCr→RGB tables — which Pillow's bundled libjpeg-turbo also uses: byte for byte the same
//! pixels on 4:2:0, 4:2:2, 4:4:4, greyscale, progressive, restart-marker and odd-sized files
//! (the `image` crate's zune-jpeg differs by up to 5 levels on a quarter of the bytes of a
//! 4:2:0 file; docs/captioning.md has the numbers). CMYK/YCCK JPEGs and files libjpeg rejects
//! fall back to the `image` crate, as does every other format (PNG, WebP, BMP, GIF decode
//! identically there). A JPEG without its end marker is refused, as PIL refuses it.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::{DynamicImage, GrayImage, ImageFormat, RgbImage};

/// Why an image file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// Its bytes are not a decodable image.
    #[error("cannot decode: {0}")]
    Decode(String),
}

/// The `image` crate's default allocation limit, kept for the libjpeg path too: a header
/// claiming 65500×65500 is refused instead of allocating 12 GB.
const MAX_BYTES: usize = 512 * 1024 * 1024;

/// Reads and decodes the image at `path` (format from its content, like `PIL.Image.open`).
pub fn open(path: &Path) -> Result<DynamicImage, DecodeError> {
    decode(&std::fs::read(path)?)
}

/// Decodes an image file's bytes.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, DecodeError> {
    if image::guess_format(bytes).ok() == Some(ImageFormat::Jpeg) {
        if let Some(image) = decode_jpeg(bytes)? {
            return Ok(image);
        }
    }
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()?
        .decode()
        .map_err(|e| DecodeError::Decode(e.to_string()))
}

/// libjpeg's decode of an RGB/YCbCr or greyscale JPEG; `None` for what it cannot give as
/// PIL would (CMYK/YCCK: PIL's own conversion) or does not read (then the `image` crate tries).
fn decode_jpeg(bytes: &[u8]) -> Result<Option<DynamicImage>, DecodeError> {
    // libjpeg pads a file that ends early with grey and only warns; PIL raises "image file is
    // truncated" (and kohya skips the image), so a missing end marker is an error here too.
    if !reaches_end_marker(bytes) {
        return Err(DecodeError::Decode("truncated JPEG (no end-of-image marker)".into()));
    }
    // libjpeg reports fatal errors by unwinding out of its error_exit (the mozjpeg crate's
    // error manager); warnings (a truncated file, as every other decoder) are silenced.
    let decoded = catch_unwind(AssertUnwindSafe(|| -> std::io::Result<Result<Option<DynamicImage>, DecodeError>> {
        let mut d = mozjpeg::Decompress::new_mem(bytes)?;
        let (w, h) = (d.width(), d.height());
        if w.saturating_mul(h).saturating_mul(3) > MAX_BYTES {
            return Ok(Err(DecodeError::Decode(format!("{w}×{h} pixels is over the {MAX_BYTES}-byte limit"))));
        }
        d.dct_method(mozjpeg::DctMethod::IntegerSlow);
        d.do_fancy_upsampling(true);
        let image = match d.color_space() {
            mozjpeg::ColorSpace::JCS_GRAYSCALE => {
                let mut s = d.grayscale()?;
                let px: Vec<u8> = s.read_scanlines()?;
                s.finish()?;
                GrayImage::from_raw(w as u32, h as u32, px).map(DynamicImage::ImageLuma8)
            }
            mozjpeg::ColorSpace::JCS_YCbCr | mozjpeg::ColorSpace::JCS_RGB => {
                let mut s = d.rgb()?;
                let px: Vec<u8> = s.read_scanlines()?;
                s.finish()?;
                RgbImage::from_raw(w as u32, h as u32, px).map(DynamicImage::ImageRgb8)
            }
            _ => None,
        };
        Ok(Ok(image))
    }));
    match decoded {
        Ok(Ok(result)) => result,
        // Rejected by libjpeg (corrupt, or a coding it lacks): the image crate has its say.
        Ok(Err(_)) | Err(_) => Ok(None),
    }
}

/// Whether the JPEG's marker sequence reaches EOI: segments skipped by their lengths, entropy
/// data after each SOS scanned to the next marker that is not a stuffed `FF 00`, a restart
/// marker or fill; stray bytes between segments are skipped as libjpeg skips them.
fn reaches_end_marker(b: &[u8]) -> bool {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else { return false };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else { return false };
        if len < 2 || i + len > b.len() {
            return false;
        }
        i += len;
        if marker == 0xDA {
            while i + 1 < b.len()
                && !(b[i] == 0xFF && b[i + 1] != 0x00 && b[i + 1] != 0xFF && !(0xD0..=0xD7).contains(&b[i + 1]))
            {
                i += 1;
            }
            if i + 1 >= b.len() {
                return false;
            }
        }
    }
}
