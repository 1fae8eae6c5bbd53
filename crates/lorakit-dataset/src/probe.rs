//! Reading what an image file really is: its format from magic bytes, its size
//! from the header (no pixel decoding), its EXIF orientation; and, for the
//! deep check, a full decode with a content hash and a perceptual hash.
//!
//! Difference from sd-scripts, on purpose: sd-scripts reads the stored size
//! (`imagesize`) and loads pixels without applying EXIF orientation, so a phone
//! photo tagged "rotate 90°" is bucketed and trained sideways there. lorakit
//! applies the orientation: such an image's size is reported with width and
//! height swapped, and it is trained upright. The doctor flags every image
//! where this matters.

use image::metadata::Orientation;
use image::{ImageDecoder, ImageFormat, ImageReader};
use serde::Serialize;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;

/// What the header of an image says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImageProbe {
    /// Detected format from the file's magic bytes (lower-case name: "png", "jpeg", "webp", "bmp").
    pub format: &'static str,
    /// Width and height as stored in the file.
    pub stored_size: (u32, u32),
    /// EXIF orientation, 1..=8 (1 = as stored).
    pub orientation: u8,
    /// Width and height as trained: the stored size, swapped for orientations 5–8.
    pub size: (u32, u32),
    /// File size in bytes.
    pub file_len: u64,
}

impl ImageProbe {
    /// Rebuilds a probe from stored facts (e.g. a cache); `None` for an unknown format name.
    pub fn from_parts(format: &str, stored_size: (u32, u32), orientation: u8, file_len: u64) -> Option<ImageProbe> {
        let format = ["png", "jpeg", "webp", "bmp"].into_iter().find(|f| *f == format)?;
        Some(ImageProbe { format, stored_size, orientation, size: oriented(stored_size, orientation), file_len })
    }
}

/// Why an image cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum ProbeError {
    #[error("cannot read the file: {0}")]
    Unreadable(String),
    #[error("the file is empty (0 bytes)")]
    Empty,
    #[error("not an image{0}")]
    NotAnImage(String),
    #[error("{0} images are not supported: convert it to PNG, JPEG or WebP")]
    Unsupported(String),
    #[error("corrupt {format} image: {reason}")]
    Corrupt { format: String, reason: String },
    #[error("the image has a zero side ({0}x{1})")]
    ZeroSize(u32, u32),
    /// The header declares more pixels than [`MAX_IMAGE_PIXELS`]; nothing was decoded.
    #[error(
        "its header declares {width}x{height} pixels ({:.1} megapixels), above lorakit's limit of {:.2} megapixels \
         (a decompression bomb or a mis-sized export): nothing was decoded; downscale the image or delete it",
        *width as f64 * *height as f64 / 1e6, *limit as f64 / 1e6
    )]
    TooManyPixels { width: u32, height: u32, limit: u64 },
}

/// The largest image lorakit decodes: width × height, checked against the header before any
/// pixel memory is allocated (probe, fingerprint, duplicate hash and training load all check it).
///
/// Why this number: it is PIL's own `DecompressionBombError` threshold (2 × 89,478,485 px), so
/// every image sd-scripts can open, lorakit opens too — including 150-megapixel medium-format
/// photos (14204 × 10652) — while a header claiming 60000 × 60000 (3.6 gigapixels, 10+ GB
/// decoded) is refused. At the limit a 16-bit RGBA decode needs about 1.4 GB.
pub const MAX_IMAGE_PIXELS: u64 = 2 * 89_478_485;

/// Bytes the image crate may allocate for one decode: the largest image at 8 bytes per pixel
/// (16-bit RGBA), so a decoder that allocates beyond what the checked header declares stops.
const MAX_DECODE_BYTES: u64 = MAX_IMAGE_PIXELS * 8;

/// Refuses a declared size above [`MAX_IMAGE_PIXELS`] (the one place the limit is checked).
pub fn check_pixel_limit((width, height): (u32, u32)) -> Result<(), ProbeError> {
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(ProbeError::TooManyPixels { width, height, limit: MAX_IMAGE_PIXELS });
    }
    Ok(())
}

/// An image crate reader for `format` with limits matching [`MAX_IMAGE_PIXELS`]: every decoder
/// lorakit creates comes from here.
pub fn limited_reader<R: std::io::BufRead + Seek>(reader: R, format: ImageFormat) -> ImageReader<R> {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut image_reader = ImageReader::with_format(reader, format);
    image_reader.limits(limits);
    image_reader
}

/// Lower-case name of a format, as reported.
fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "png",
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::WebP => "webp",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Gif => "gif",
        ImageFormat::Tiff => "tiff",
        ImageFormat::Avif => "avif",
        ImageFormat::Ico => "ico",
        ImageFormat::Hdr => "hdr",
        ImageFormat::OpenExr => "exr",
        ImageFormat::Qoi => "qoi",
        ImageFormat::Tga => "tga",
        ImageFormat::Pnm => "pnm",
        ImageFormat::Dds => "dds",
        ImageFormat::Farbfeld => "farbfeld",
        _ => "unknown",
    }
}

/// Whether training can decode this format.
fn is_trainable(format: ImageFormat) -> bool {
    matches!(format, ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Bmp)
}

/// A short, printable description of the first bytes of a non-image file.
fn describe_non_image(head: &[u8]) -> String {
    let text: String = head.iter().take(48).map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '.' }).collect();
    let lower = text.to_ascii_lowercase();
    let hint = if lower.contains("<!doctype html") || lower.contains("<html") {
        " (it is a web page: probably a failed download)"
    } else if lower.starts_with("<?xml") || lower.contains("<svg") {
        " (it is XML/SVG text)"
    } else if head.starts_with(b"PK\x03\x04") {
        " (it is a ZIP archive)"
    } else if head.len() >= 12 && &head[4..8] == b"ftyp" {
        " (it is an ISO media file such as HEIC/AVIF or MP4)"
    } else {
        ""
    };
    format!(": the file starts with \"{text}\"{hint}")
}

fn oriented(size: (u32, u32), orientation: u8) -> (u32, u32) {
    if (5..=8).contains(&orientation) {
        (size.1, size.0)
    } else {
        size
    }
}

/// Opens a reader, detects the format and reads the header.
fn header<'a, R: std::io::BufRead + Seek + 'a>(
    mut reader: R,
    file_len: u64,
) -> Result<(ImageFormat, ImageProbe, impl ImageDecoder + 'a), ProbeError> {
    if file_len == 0 {
        return Err(ProbeError::Empty);
    }
    let mut head = [0u8; 64];
    let n = read_up_to(&mut reader, &mut head).map_err(|e| ProbeError::Unreadable(e.to_string()))?;
    reader.rewind().map_err(|e| ProbeError::Unreadable(e.to_string()))?;
    let format = image::guess_format(&head[..n]).map_err(|_| ProbeError::NotAnImage(describe_non_image(&head[..n])))?;
    if !is_trainable(format) {
        return Err(ProbeError::Unsupported(format_name(format).to_uppercase()));
    }
    let corrupt =
        |e: image::ImageError| ProbeError::Corrupt { format: format_name(format).into(), reason: e.to_string() };
    let mut decoder = limited_reader(reader, format).into_decoder().map_err(corrupt)?;
    let stored_size = decoder.dimensions();
    check_pixel_limit(stored_size)?;
    // A damaged EXIF block must not make the image unusable: treat it as "no rotation".
    let orientation = decoder.orientation().map(Orientation::to_exif).unwrap_or(1);
    if stored_size.0 == 0 || stored_size.1 == 0 {
        return Err(ProbeError::ZeroSize(stored_size.0, stored_size.1));
    }
    let probe = ImageProbe {
        format: format_name(format),
        stored_size,
        orientation,
        size: oriented(stored_size, orientation),
        file_len,
    };
    Ok((format, probe, decoder))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Reads the format, size and orientation from the file header without decoding pixels.
pub fn probe_header(path: &Path) -> Result<ImageProbe, ProbeError> {
    let unreadable = |e: std::io::Error| ProbeError::Unreadable(e.to_string());
    let mut file = crate::regular_file::open_regular(path).map_err(unreadable)?;
    let file_len = file.metadata().map_err(unreadable)?.len();
    if let Some((format, stored_size, orientation)) = crate::headers::read_header(&mut file, file_len) {
        if stored_size.0 > 0 && stored_size.1 > 0 {
            check_pixel_limit(stored_size)?;
            let size = oriented(stored_size, orientation);
            return Ok(ImageProbe { format, stored_size, orientation, size, file_len });
        }
    }
    // Anything unusual: let the image crate read it and explain what is wrong.
    file.rewind().map_err(unreadable)?;
    header(BufReader::new(file), file_len).map(|(_, probe, _)| probe)
}

/// [`probe_header`] on bytes already in memory.
pub fn probe_header_bytes(bytes: &[u8]) -> Result<ImageProbe, ProbeError> {
    header(Cursor::new(bytes), bytes.len() as u64).map(|(_, probe, _)| probe)
}

/// The result of fully decoding an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DecodedImage {
    /// Header facts.
    pub probe: ImageProbe,
    /// Hash of the file bytes (exact duplicates have equal hashes).
    pub content_hash: u128,
    /// 64-bit perceptual hash of the upright image (near duplicates differ in few bits).
    pub phash: u64,
}

/// Reads the whole file, decodes every pixel (catching truncated and corrupt
/// data that a header read cannot), and fingerprints the image.
pub fn decode_and_fingerprint(path: &Path) -> Result<DecodedImage, ProbeError> {
    let bytes = crate::regular_file::read_regular(path).map_err(|e| ProbeError::Unreadable(e.to_string()))?;
    decode_bytes(&bytes)
}

/// [`decode_and_fingerprint`] on a file already in memory.
pub fn decode_bytes(bytes: &[u8]) -> Result<DecodedImage, ProbeError> {
    let (format, probe, decoder) = header(Cursor::new(bytes), bytes.len() as u64)?;
    let corrupt = |reason: String| ProbeError::Corrupt { format: probe.format.into(), reason };
    if format == ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        // The JPEG decoder pads a cut-off file with gray instead of failing.
        return Err(corrupt("the file ends before the end-of-image marker: it is truncated".into()));
    }
    let image = image::DynamicImage::from_decoder(decoder).map_err(|e| corrupt(e.to_string()))?;
    let content_hash = xxhash_rust::xxh3::xxh3_128(bytes);
    let phash = perceptual_hash(&image, probe.orientation);
    Ok(DecodedImage { probe, content_hash, phash })
}

/// A JPEG ends with FF D9; allow a little trailing padding some writers add.
pub(crate) fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(1024)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Side of the downscaled grayscale image the hash is computed from.
const HASH_GRID: usize = 32;

/// pHash: box-downscale to 32×32 gray, 2-D DCT, keep the 8×8 lowest
/// frequencies, one bit per coefficient above their median (DC excluded from
/// the median). Robust to re-encoding, resizing and small edits.
pub fn perceptual_hash(image: &image::DynamicImage, orientation: u8) -> u64 {
    let grid = orient_grid(gray_grid(image), orientation);
    let dct = dct_low_8x8(&grid);
    let mut sorted: Vec<f64> = dct.iter().flatten().skip(1).copied().collect();
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[31] + sorted[32]) / 2.0;
    dct.iter().flatten().enumerate().fold(0u64, |acc, (i, &v)| if v > median { acc | (1 << i) } else { acc })
}

/// Mean luma (Rec. 709 weights) of each cell of a 32×32 grid over the image.
/// Reads 8-bit RGB, RGBA and gray pixels in place (the hot path of a full
/// check); other pixel types are converted first.
fn gray_grid(image: &image::DynamicImage) -> [[f64; HASH_GRID]; HASH_GRID] {
    use image::DynamicImage as D;
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut grid = [[0f64; HASH_GRID]; HASH_GRID];
    if w == 0 || h == 0 {
        return grid;
    }
    let converted;
    let (raw, channels): (&[u8], usize) = match image {
        D::ImageRgb8(b) => (b.as_raw(), 3),
        D::ImageRgba8(b) => (b.as_raw(), 4),
        D::ImageLuma8(b) => (b.as_raw(), 1),
        other => {
            converted = other.to_rgb8();
            (converted.as_raw(), 3)
        }
    };
    let cell_of_col: Vec<usize> = (0..w).map(|x| x * HASH_GRID / w).collect();
    let mut cols_per_cell = [0u64; HASH_GRID];
    cell_of_col.iter().for_each(|&c| cols_per_cell[c] += 1);
    let mut rows_per_cell = [0u64; HASH_GRID];
    // Sums of luma × 10000, in integers: exact and fast.
    let mut sums = [[0u64; HASH_GRID]; HASH_GRID];
    for (y, row) in raw.chunks_exact(w * channels).enumerate().take(h) {
        let gy = y * HASH_GRID / h;
        rows_per_cell[gy] += 1;
        let acc = &mut sums[gy];
        if channels == 1 {
            for (x, &v) in row.iter().enumerate() {
                acc[cell_of_col[x]] += u64::from(v) * 10_000;
            }
        } else {
            for (x, px) in row.chunks_exact(channels).enumerate() {
                let luma = 2126 * u64::from(px[0]) + 7152 * u64::from(px[1]) + 722 * u64::from(px[2]);
                acc[cell_of_col[x]] += luma;
            }
        }
    }
    for (gy, row) in grid.iter_mut().enumerate() {
        for (gx, cell) in row.iter_mut().enumerate() {
            let n = cols_per_cell[gx] * rows_per_cell[gy];
            if n > 0 {
                *cell = sums[gy][gx] as f64 / (n as f64 * 10_000.0);
            }
        }
    }
    grid
}

/// Applies an EXIF orientation to the small square grid so hashes describe the upright image.
fn orient_grid(g: [[f64; HASH_GRID]; HASH_GRID], orientation: u8) -> [[f64; HASH_GRID]; HASH_GRID] {
    let n = HASH_GRID - 1;
    let mut out = [[0f64; HASH_GRID]; HASH_GRID];
    for (y, row) in out.iter_mut().enumerate() {
        for (x, v) in row.iter_mut().enumerate() {
            // Source coordinates of output pixel (x, y) for each EXIF orientation.
            let (sx, sy) = match orientation {
                2 => (n - x, y),
                3 => (n - x, n - y),
                4 => (x, n - y),
                5 => (y, x),
                6 => (y, n - x),
                7 => (n - y, n - x),
                8 => (n - y, x),
                _ => (x, y),
            };
            *v = g[sy][sx];
        }
    }
    out
}

/// The 8×8 lowest-frequency coefficients of the 2-D DCT-II of a 32×32 grid.
fn dct_low_8x8(g: &[[f64; HASH_GRID]; HASH_GRID]) -> [[f64; 8]; 8] {
    let mut basis = [[0f64; HASH_GRID]; 8];
    for (k, row) in basis.iter_mut().enumerate() {
        for (n, b) in row.iter_mut().enumerate() {
            *b = (std::f64::consts::PI * (n as f64 + 0.5) * k as f64 / HASH_GRID as f64).cos();
        }
    }
    // Rows first: tmp[y][v] = Σ_x g[y][x] · basis[v][x]
    let mut tmp = [[0f64; 8]; HASH_GRID];
    for (y, trow) in tmp.iter_mut().enumerate() {
        for (v, t) in trow.iter_mut().enumerate() {
            *t = g[y].iter().zip(&basis[v]).map(|(a, b)| a * b).sum();
        }
    }
    let mut out = [[0f64; 8]; 8];
    for (u, orow) in out.iter_mut().enumerate() {
        for (v, o) in orow.iter_mut().enumerate() {
            *o = (0..HASH_GRID).map(|y| tmp[y][v] * basis[u][y]).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, RgbImage};

    fn gradient(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, ((x * y) % 251) as u8])
        }))
    }

    #[test]
    fn phash_survives_resize_and_differs_for_other_images() {
        let a = gradient(320, 192);
        let b = a.resize_exact(160, 96, image::imageops::FilterType::Triangle);
        let c = gradient(320, 192).rotate180();
        let (ha, hb, hc) = (perceptual_hash(&a, 1), perceptual_hash(&b, 1), perceptual_hash(&c, 1));
        assert!((ha ^ hb).count_ones() <= 4, "resized copy differs by {}", (ha ^ hb).count_ones());
        assert!((ha ^ hc).count_ones() > 16, "rotated image too similar: {}", (ha ^ hc).count_ones());
        // Orientation 3 (rotate 180) makes the rotated copy hash like the original.
        assert_eq!(perceptual_hash(&c, 3), ha);
    }

    /// Wraps an encoded VP8L WebP into an extended (VP8X) file with an EXIF orientation chunk.
    fn webp_with_exif(vp8l_file: &[u8], w: u32, h: u32, orientation: u16) -> Vec<u8> {
        let vp8l = &vp8l_file[12..]; // the VP8L chunk with its header
        let mut exif = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        exif.extend_from_slice(&orientation.to_le_bytes());
        exif.extend_from_slice(&[0; 6]);
        let mut body = b"WEBP".to_vec();
        body.extend_from_slice(b"VP8X");
        body.extend_from_slice(&10u32.to_le_bytes());
        body.push(0x08);
        body.extend_from_slice(&[0, 0, 0]);
        body.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
        body.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
        body.extend_from_slice(vp8l);
        body.extend_from_slice(b"EXIF");
        body.extend_from_slice(&(exif.len() as u32).to_le_bytes());
        body.extend_from_slice(&exif);
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn fast_header_agrees_with_image_crate() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (i, (w, h)) in [(64u32, 48u32), (33, 97), (300, 1)].into_iter().enumerate() {
            let img = gradient(w, h);
            for (fmt, ext) in [
                (ImageFormat::Png, "png"),
                (ImageFormat::Jpeg, "jpg"),
                (ImageFormat::WebP, "webp"),
                (ImageFormat::Bmp, "bmp"),
            ] {
                let p = dir.path().join(format!("{i}.{ext}"));
                img.save_with_format(&p, fmt).unwrap();
                files.push(p);
            }
            let gray = image::DynamicImage::ImageLuma16(img.to_luma16());
            let p = dir.path().join(format!("{i}-16.png"));
            gray.save_with_format(&p, ImageFormat::Png).unwrap();
            files.push(p);
            let mut webp = Vec::new();
            img.write_to(&mut Cursor::new(&mut webp), ImageFormat::WebP).unwrap();
            let p = dir.path().join(format!("{i}-exif.webp"));
            std::fs::write(&p, webp_with_exif(&webp, w, h, 6)).unwrap();
            files.push(p);
        }
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            let fast = crate::headers::read_header(&mut Cursor::new(&bytes), bytes.len() as u64)
                .unwrap_or_else(|| panic!("fast header failed on {}", f.display()));
            let (_, slow, _) = header(Cursor::new(&bytes[..]), bytes.len() as u64).unwrap();
            assert_eq!(fast, (slow.format, slow.stored_size, slow.orientation), "{}", f.display());
            if f.to_string_lossy().contains("exif") {
                assert_eq!(fast.2, 6);
                assert_eq!(probe_header(f).unwrap().size, (slow.stored_size.1, slow.stored_size.0));
            }
        }
        for name in
            ["img/8_chessboard/left01.jpg", "img/2_misc/fruits.webp", "img/2_misc/cell.png", "reg/1_texture/text.png"]
        {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/dataset").join(name);
            let bytes = std::fs::read(&p).unwrap();
            let fast = crate::headers::read_header(&mut Cursor::new(&bytes), bytes.len() as u64).unwrap();
            let (_, slow, _) = header(Cursor::new(&bytes[..]), bytes.len() as u64).unwrap();
            assert_eq!(fast, (slow.format, slow.stored_size, slow.orientation), "{name}");
        }
    }

    /// CRC-32 (PNG's), bit by bit: enough for one patched chunk.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    fn encoded(format: ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        gradient(8, 8).write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        bytes
    }

    /// Tiny valid files whose headers claim 60000x60000 pixels: PNG, JPEG and (extended) WebP.
    fn pixel_bombs() -> Vec<(&'static str, Vec<u8>, (u32, u32))> {
        let mut png = encoded(ImageFormat::Png);
        png[16..20].copy_from_slice(&60000u32.to_be_bytes());
        png[20..24].copy_from_slice(&60000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let mut jpeg = encoded(ImageFormat::Jpeg);
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline JPEG frame header");
        jpeg[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
        let webp = webp_with_exif(&encoded(ImageFormat::WebP), 60000, 60000, 1);
        vec![("png", png, (60000, 60000)), ("jpg", jpeg, (60000, 60000)), ("webp", webp, (60000, 60000))]
    }

    #[test]
    fn declared_size_above_the_pixel_limit_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        for (i, (ext, bytes, (w, h))) in pixel_bombs().into_iter().enumerate() {
            let path = dir.path().join(format!("bomb{i}.{ext}"));
            std::fs::write(&path, &bytes).unwrap();
            let want = ProbeError::TooManyPixels { width: w, height: h, limit: MAX_IMAGE_PIXELS };
            assert_eq!(probe_header(&path), Err(want.clone()), "{}", path.display());
            assert_eq!(probe_header_bytes(&bytes), Err(want.clone()), "{}", path.display());
            assert_eq!(decode_and_fingerprint(&path).unwrap_err(), want, "{}", path.display());
            let err = crate::preprocess::decode_upright_rgb(&path).unwrap_err().to_string();
            for part in [path.display().to_string(), format!("{w}x{h}"), "178.96 megapixels".into()] {
                assert!(err.contains(&part), "{err} lacks {part}");
            }
        }
        // The limit itself still decodes as far as the size check goes.
        assert!(check_pixel_limit((14204, 10652)).is_ok());
        assert!(check_pixel_limit((u32::MAX, u32::MAX)).is_err());
    }

    #[test]
    fn non_image_is_described() {
        let d = describe_non_image(b"<!DOCTYPE html><html>");
        assert!(d.contains("failed download"), "{d}");
    }
}
