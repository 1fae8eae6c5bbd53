//! One dataset image → the pixels a training step sees, as sd-scripts makes them
//! (`load_image` + `trim_and_resize_if_required` + flip + `IMAGE_TRANSFORMS`, spec §4.4–§4.6).
//!
//! 1. Decode, apply the EXIF orientation (read by [`crate::probe`]; sd-scripts ignores it, lorakit
//!    trains phone photos upright — see the note at the top of `probe.rs`), convert to RGB as PIL's
//!    `convert("RGB")` does: alpha is **dropped, not composited** (a transparent pixel keeps its
//!    stored colour), gray is replicated, palettes are expanded, 16-bit samples keep their high byte.
//! 2. Resize to [`BucketChoice::resized`] with sd-scripts' interpolation rule ([`Interpolation`]),
//!    reimplemented bit for bit against Pillow 13 and opencv-python 4.10: PIL's fixed-point
//!    resampler for `lanczos` and `box`, OpenCV's `INTER_AREA`, `INTER_LINEAR` and
//!    `INTER_NEAREST_EXACT` for the others; `bicubic` follows the Intel IPP code OpenCV hands it
//!    to, to within one level on about 1 byte in 10^5 (tests/fixtures/reference/preprocess).
//! 3. Crop to the bucket (center: offset `trim / 2`; random: uniform in `0..=trim` per axis).
//! 4. Flip horizontally if asked; normalise to `[-1, 1]` as torchvision does (`(x/255 − 0.5)/0.5`
//!    in f32, which is `x/127.5 − 1` to within one ulp); lay out as CHW.

use crate::bucket::{BucketChoice, Reso};
use crate::probe::{self, ProbeError};
use image::metadata::Orientation;
use image::{DynamicImage, ImageFormat, RgbImage};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// How the resized image is cropped to its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crop {
    /// sd-scripts' default: offset `trim / 2` on each axis.
    Center,
    /// `random_crop`: offset uniform in `0..=trim` on each axis (x drawn first), from a
    /// SplitMix64 stream seeded with this value. The same seed always gives the same crop.
    Random(u64),
}

/// A resize filter, named as in sd-scripts' `resize_interpolation` (spec §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// `lanczos`: PIL `LANCZOS` (a = 3, support widened by the scale on downscale).
    Lanczos,
    /// `area`: OpenCV `INTER_AREA` (exact box average on downscale; bilinear-like on upscale).
    Area,
    /// `nearest`: OpenCV `INTER_NEAREST_EXACT`.
    Nearest,
    /// `bilinear` / `linear`: OpenCV `INTER_LINEAR`.
    Bilinear,
    /// `bicubic` / `cubic`: OpenCV `INTER_CUBIC` (a = −0.75).
    Bicubic,
    /// `box`: PIL `BOX`.
    Box,
}

impl Interpolation {
    /// Parses one of [`crate::config::RESIZE_INTERPOLATIONS`]; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Interpolation> {
        Some(match name {
            "lanczos" => Interpolation::Lanczos,
            "area" => Interpolation::Area,
            "nearest" => Interpolation::Nearest,
            "bilinear" | "linear" => Interpolation::Bilinear,
            "bicubic" | "cubic" => Interpolation::Bicubic,
            "box" => Interpolation::Box,
            _ => return None,
        })
    }

    /// sd-scripts' automatic choice: `area` when the target is not larger than the source in
    /// both axes, `lanczos` otherwise.
    pub fn auto(source: Reso, target: Reso) -> Interpolation {
        if source.0 >= target.0 && source.1 >= target.1 {
            Interpolation::Area
        } else {
            Interpolation::Lanczos
        }
    }
}

/// The pixels of one training sample and the facts SDXL size conditioning needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingImage {
    /// Width of the sample (the bucket width).
    pub width: u32,
    /// Height of the sample (the bucket height).
    pub height: u32,
    /// CHW f32 RGB in [-1, 1] (`x/127.5 − 1`), `3 × height × width` values.
    pub pixels: Vec<f32>,
    /// Upright size of the image before resizing, `(W, H)`.
    pub original_size: (u32, u32),
    /// sd-scripts' `crop_ltrb` (spec §4.4 item 4, truncated to integers), mirrored when
    /// `flipped`; `(crop_ltrb.1, crop_ltrb.0)` is SDXL's `crop_top_left`. See [`crop_ltrb`].
    pub crop_ltrb: (u32, u32, u32, u32),
    /// Whether the sample was flipped horizontally.
    pub flipped: bool,
}

/// Why an image cannot be turned into a training sample. Every message names the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreprocessError {
    /// The file is missing, unreadable, not an image, unsupported, truncated or corrupt.
    #[error("{}: {source}. Replace the file (re-save it as PNG or JPEG) or remove it from the dataset; `lorakit dataset check` lists every such image", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// What is wrong with it.
        source: ProbeError,
    },
    /// Decoding would need more memory than the decoder allows.
    #[error("{}: the image is too large to decode ({reason}). Downscale it (e.g. to at most 4096 px a side) or remove it from the dataset", path.display())]
    TooLarge {
        /// The image file.
        path: PathBuf,
        /// The decoder's explanation.
        reason: String,
    },
    /// `resized` does not cover `bucket`, a size is zero, or it is absurdly large (> 2^28 pixels):
    /// the bucket plan does not fit this image.
    #[error("{}: cannot crop a {}x{} resize to the {}x{} bucket (the resized size must be non-zero and at least the bucket on both sides). The dataset changed since its buckets were planned: reload it", path.display(), resized.0, resized.1, bucket.0, bucket.1)]
    BadBucket {
        /// The image file.
        path: PathBuf,
        /// The planned resize.
        resized: Reso,
        /// The planned bucket.
        bucket: Reso,
    },
    /// The interpolation name is not one sd-scripts knows.
    #[error("{}: unknown resize interpolation `{name}`; use one of {}", path.display(), crate::config::RESIZE_INTERPOLATIONS.join(", "))]
    UnknownInterpolation {
        /// The image file.
        path: PathBuf,
        /// The name given.
        name: String,
    },
}

/// Loads `path` and makes the training sample for `choice` (spec §4.4–§4.6).
///
/// `interpolation` is the subset's `resize_interpolation` (`None` = automatic: `area` when
/// shrinking, `lanczos` otherwise). Never panics on bad input: every problem is an error that
/// names the file.
pub fn load_training_image(
    path: &Path,
    choice: &BucketChoice,
    interpolation: Option<&str>,
    crop: Crop,
    flip: bool,
) -> Result<TrainingImage, PreprocessError> {
    let interp = interpolation_named(path, interpolation)?;
    check_choice(path, choice)?;
    let image = decode_upright_rgb(path)?;
    prepare_rgb(&image, choice, interp, crop, flip).map_err(|_| bad_bucket(path, choice))
}

/// [`load_training_image`] plus sd-scripts' `color_aug` on the resized 8-bit image (applied
/// before normalising; flipping and cropping do not change which pixels it sees).
pub fn load_training_image_with_color(
    path: &Path,
    choice: &BucketChoice,
    interpolation: Option<&str>,
    crop: Crop,
    flip: bool,
    color: Option<ColorAug>,
) -> Result<TrainingImage, PreprocessError> {
    let Some(color) = color else {
        return load_training_image(path, choice, interpolation, crop, flip);
    };
    let interp = interpolation_named(path, interpolation)?;
    check_choice(path, choice)?;
    let image = decode_upright_rgb(path)?;
    let original_size = image.dimensions();
    let mut resized = if original_size == choice.resized {
        image
    } else {
        resize_rgb8(
            &image,
            choice.resized,
            interp.unwrap_or_else(|| Interpolation::auto(original_size, choice.resized)),
        )
    };
    color.apply(&mut resized);
    // Already at `choice.resized`: prepare_rgb only crops, flips and normalises.
    let mut out = prepare_rgb(&resized, choice, None, crop, flip).map_err(|_| bad_bucket(path, choice))?;
    // The crop box and original size describe the file, not the intermediate image.
    out.original_size = original_size;
    out.crop_ltrb = crop_ltrb(choice.bucket, original_size, flip);
    Ok(out)
}

/// The alpha channel of an image file, resized, cropped and flipped exactly as its pixels are
/// (sd-scripts' `alpha_mask`), as `height × width` values in [0, 1]; an image without alpha gives
/// all ones.
pub fn load_alpha_mask(
    path: &Path,
    choice: &BucketChoice,
    interpolation: Option<&str>,
    crop: Crop,
    flip: bool,
) -> Result<Vec<f32>, PreprocessError> {
    let interp = interpolation_named(path, interpolation)?;
    check_choice(path, choice)?;
    let image_err = |source: ProbeError| PreprocessError::Image { path: path.to_path_buf(), source };
    let bytes =
        crate::regular_file::read_regular(path).map_err(|e| image_err(ProbeError::Unreadable(e.to_string())))?;
    let probe = probe::probe_header_bytes(&bytes).map_err(image_err)?;
    let format = ImageFormat::from_extension(probe.format).ok_or_else(|| {
        image_err(ProbeError::Corrupt { format: probe.format.into(), reason: "unknown format".into() })
    })?;
    let decoded = probe::limited_reader(Cursor::new(&bytes), format)
        .decode()
        .map_err(|e| image_err(ProbeError::Corrupt { format: probe.format.into(), reason: e.to_string() }))?;
    let (bw, bh) = choice.bucket;
    if !decoded.color().has_alpha() {
        return Ok(vec![1.0; bw as usize * bh as usize]);
    }
    // The alpha plane as a gray RGB image, so it goes through the very same resize and crop.
    let rgba = decoded.to_rgba8();
    let mut alpha = DynamicImage::ImageRgb8(RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let a = rgba.get_pixel(x, y).0[3];
        image::Rgb([a, a, a])
    }));
    if let Some(orientation) = Orientation::from_exif(probe.orientation) {
        alpha.apply_orientation(orientation);
    }
    let prepared = prepare_rgb(&alpha.into_rgb8(), choice, interp, crop, flip).map_err(|_| bad_bucket(path, choice))?;
    let plane = bw as usize * bh as usize;
    // Back from [-1, 1] to bytes, then /255 as sd-scripts.
    Ok(prepared.pixels[..plane].iter().map(|v| ((v + 1.0) * 127.5).round() / 255.0).collect())
}

/// One draw of sd-scripts' `color_aug` (its `AugHelper.color_aug`): a hue shift in OpenCV's
/// 0–180 hue units or a gamma on 0–255 values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColorAug {
    /// Added to the 8-bit hue modulo 180 (a negative draw is stored as `180 + shift`).
    HueShift(f64),
    /// `x^gamma` on 0–255 values, clipped and truncated to 8 bits.
    Gamma(f64),
}

impl ColorAug {
    /// sd-scripts' draw: nothing with probability 0.67; otherwise a hue shift uniform in
    /// [−8, 8] or (each half the time) a gamma uniform in [0.95, 1.05].
    pub fn draw(rng: &mut impl rand::Rng) -> Option<ColorAug> {
        if rng.random::<f64>() > 0.33 {
            return None;
        }
        if rng.random::<f64>() > 0.5 {
            let shift = rng.random_range(-8.0..8.0);
            Some(ColorAug::HueShift(if shift < 0.0 { 180.0 + shift } else { shift }))
        } else {
            Some(ColorAug::Gamma(rng.random_range(0.95..1.05)))
        }
    }

    /// Applies the augmentation in place, with OpenCV's 8-bit BGR↔HSV arithmetic (sd-scripts
    /// hands its RGB array to `COLOR_BGR2HSV`; the channel order is kept the same way).
    pub fn apply(&self, image: &mut RgbImage) {
        match *self {
            ColorAug::Gamma(g) => {
                let lut: Vec<u8> = (0..256).map(|v| (v as f64).powf(g).clamp(0.0, 255.0) as u8).collect();
                for p in image.pixels_mut() {
                    for c in p.0.iter_mut() {
                        *c = lut[*c as usize];
                    }
                }
            }
            ColorAug::HueShift(shift) => {
                for p in image.pixels_mut() {
                    let [h, s, v] = bgr_to_hsv8(p.0);
                    // numpy: (uint8 + float) % 180 assigned back into uint8 truncates.
                    let h = ((f64::from(h) + shift) % 180.0) as u8;
                    p.0 = hsv8_to_bgr([h, s, v]);
                }
            }
        }
    }
}

/// OpenCV's `RGB2HSV_b` (8-bit, hue 0–180) on `[b, g, r]`: fixed-point tables with a 12-bit shift.
fn bgr_to_hsv8([b, g, r]: [u8; 3]) -> [u8; 3] {
    const SHIFT: i32 = 12;
    let (b, g, r) = (i32::from(b), i32::from(g), i32::from(r));
    let v = b.max(g).max(r);
    let vmin = b.min(g).min(r);
    let diff = v - vmin;
    let sdiv = |i: i32| if i == 0 { 0 } else { ((255 << SHIFT) as f64 / i as f64).round() as i32 };
    let hdiv = |i: i32| if i == 0 { 0 } else { ((180 << SHIFT) as f64 / (6.0 * i as f64)).round() as i32 };
    let s = (diff * sdiv(v) + (1 << (SHIFT - 1))) >> SHIFT;
    let h = if v == r {
        g - b
    } else if v == g {
        b - r + 2 * diff
    } else {
        r - g + 4 * diff
    };
    let mut h = (h * hdiv(diff) + (1 << (SHIFT - 1))) >> SHIFT;
    if h < 0 {
        h += 180;
    }
    [h as u8, s as u8, v as u8]
}

/// OpenCV's `HSV2RGB_b` (8-bit, hue 0–180) back to `[b, g, r]`, in f32 (OpenCV 4.10).
fn hsv8_to_bgr([h, s, v]: [u8; 3]) -> [u8; 3] {
    let (mut h, s, v) = (f32::from(h) * (6.0 / 180.0), f32::from(s) * (1.0 / 255.0), f32::from(v) * (1.0 / 255.0));
    let (b, g, r) = if s == 0.0 {
        (v, v, v)
    } else {
        const SECTORS: [[usize; 3]; 6] = [[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]];
        while h < 0.0 {
            h += 6.0;
        }
        while h >= 6.0 {
            h -= 6.0;
        }
        let mut sector = h.floor() as usize;
        h -= sector as f32;
        if sector >= 6 {
            sector = 0;
            h = 0.0;
        }
        // OpenCV's build contracts `1 − s·x` into a fused multiply-add.
        let tab = [v, v * (1.0 - s), v * (-s).mul_add(h, 1.0), v * (-s).mul_add(1.0 - h, 1.0)];
        let d = SECTORS[sector];
        (tab[d[0]], tab[d[1]], tab[d[2]])
    };
    // OpenCV's vector path (all but the last few pixels of an image) truncates `x·255`; its scalar
    // tail rounds. The vector path is what nearly every pixel sees.
    let to8 = |x: f32| (x * 255.0).clamp(0.0, 255.0) as u8;
    [to8(b), to8(g), to8(r)]
}

/// The resize filter a subset names (`None` = automatic), or an error naming the file.
fn interpolation_named(path: &Path, name: Option<&str>) -> Result<Option<Interpolation>, PreprocessError> {
    name.map(|name| {
        Interpolation::from_name(name)
            .ok_or_else(|| PreprocessError::UnknownInterpolation { path: path.to_path_buf(), name: name.to_string() })
    })
    .transpose()
}

/// Decodes an image file into upright 8-bit RGB, as sd-scripts' `load_image` (PIL
/// `convert("RGB")`) sees it plus the EXIF orientation.
pub fn decode_upright_rgb(path: &Path) -> Result<RgbImage, PreprocessError> {
    let image_err = |source: ProbeError| PreprocessError::Image { path: path.to_path_buf(), source };
    let bytes =
        crate::regular_file::read_regular(path).map_err(|e| image_err(ProbeError::Unreadable(e.to_string())))?;
    decode_upright_rgb_bytes(&bytes).map_err(|e| match e {
        DecodeFailure::Probe(source) => image_err(source),
        DecodeFailure::TooLarge(reason) => PreprocessError::TooLarge { path: path.to_path_buf(), reason },
    })
}

/// Why bytes could not be decoded.
enum DecodeFailure {
    Probe(ProbeError),
    TooLarge(String),
}

fn decode_upright_rgb_bytes(bytes: &[u8]) -> Result<RgbImage, DecodeFailure> {
    // The probe checks format, size and reads the orientation exactly as bucketing did.
    let probe = probe::probe_header_bytes(bytes).map_err(DecodeFailure::Probe)?;
    let corrupt = |reason: String| DecodeFailure::Probe(ProbeError::Corrupt { format: probe.format.into(), reason });
    let format = ImageFormat::from_extension(probe.format).ok_or_else(|| corrupt("unknown format".into()))?;
    if format == ImageFormat::Jpeg && !probe::jpeg_has_end_marker(bytes) {
        // The JPEG decoder pads a cut-off file with gray instead of failing.
        return Err(corrupt("the file ends before the end-of-image marker: it is truncated".into()));
    }
    let image = probe::limited_reader(Cursor::new(bytes), format).decode().map_err(|e| match e {
        image::ImageError::Limits(l) => DecodeFailure::TooLarge(l.to_string()),
        other => corrupt(other.to_string()),
    })?;
    let mut rgb = DynamicImage::ImageRgb8(to_rgb8_like_pil(image));
    if let Some(orientation) = Orientation::from_exif(probe.orientation) {
        rgb.apply_orientation(orientation);
    }
    Ok(rgb.into_rgb8())
}

/// PIL `convert("RGB")`: alpha dropped (not composited), gray replicated; 16-bit samples keep
/// their high byte, as PIL reads 16-bit PNGs. (PIL clips 16-bit gray `I;16` to 0/255 instead — a
/// PIL bug lorakit does not copy.)
fn to_rgb8_like_pil(image: DynamicImage) -> RgbImage {
    let high = |v: u16| (v >> 8) as u8;
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgb16(img) => {
            let (w, h) = img.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let p = img.get_pixel(x, y).0;
                image::Rgb([high(p[0]), high(p[1]), high(p[2])])
            })
        }
        DynamicImage::ImageRgba16(img) => {
            let (w, h) = img.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let p = img.get_pixel(x, y).0;
                image::Rgb([high(p[0]), high(p[1]), high(p[2])])
            })
        }
        DynamicImage::ImageLuma16(img) => {
            let (w, h) = img.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let v = high(img.get_pixel(x, y).0[0]);
                image::Rgb([v, v, v])
            })
        }
        DynamicImage::ImageLumaA16(img) => {
            let (w, h) = img.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let v = high(img.get_pixel(x, y).0[0]);
                image::Rgb([v, v, v])
            })
        }
        // 8-bit gray, gray+alpha, RGBA (alpha dropped) and anything else.
        other => other.into_rgb8(),
    }
}

fn bad_bucket(path: &Path, choice: &BucketChoice) -> PreprocessError {
    PreprocessError::BadBucket { path: path.to_path_buf(), resized: choice.resized, bucket: choice.bucket }
}

fn check_choice(path: &Path, choice: &BucketChoice) -> Result<(), PreprocessError> {
    let (r, b) = (choice.resized, choice.bucket);
    // 2^28 pixels (16384²) bounds the memory a sample may take; real buckets are far smaller.
    let too_big = u64::from(r.0) * u64::from(r.1) > 1 << 28;
    if r.0 == 0 || r.1 == 0 || b.0 == 0 || b.1 == 0 || r.0 < b.0 || r.1 < b.1 || too_big {
        return Err(bad_bucket(path, choice));
    }
    Ok(())
}

/// The in-memory half of [`load_training_image`]: resize (when the size differs), crop, flip,
/// normalise. `interpolation: None` = automatic. Errs (`Err(())`) only when `choice.resized` is
/// zero or smaller than `choice.bucket`, or the image is empty.
#[allow(clippy::result_unit_err)]
pub fn prepare_rgb(
    image: &RgbImage,
    choice: &BucketChoice,
    interpolation: Option<Interpolation>,
    crop: Crop,
    flip: bool,
) -> Result<TrainingImage, ()> {
    let (resized, bucket) = (choice.resized, choice.bucket);
    let original_size = image.dimensions();
    if resized.0 < bucket.0 || resized.1 < bucket.1 || bucket.0 == 0 || bucket.1 == 0 {
        return Err(());
    }
    if original_size.0 == 0 || original_size.1 == 0 {
        return Err(());
    }
    let resized_image;
    let src = if original_size == resized {
        image
    } else {
        let interp = interpolation.unwrap_or_else(|| Interpolation::auto(original_size, resized));
        resized_image = resize_rgb8(image, resized, interp);
        &resized_image
    };
    let (left, top) = crop_offsets(resized, bucket, crop);
    let (bw, bh) = (bucket.0 as usize, bucket.1 as usize);
    let plane = bw * bh;
    let mut pixels = vec![0f32; 3 * plane];
    let lut = normalize_lut();
    let row_len = resized.0 as usize * 3;
    let raw = src.as_raw();
    for y in 0..bh {
        let row = &raw[(top as usize + y) * row_len..][..row_len];
        for x in 0..bw {
            let sx = if flip { bw - 1 - x } else { x } + left as usize;
            for c in 0..3 {
                pixels[c * plane + y * bw + x] = lut[row[sx * 3 + c] as usize];
            }
        }
    }
    Ok(TrainingImage {
        width: bucket.0,
        height: bucket.1,
        pixels,
        original_size,
        crop_ltrb: crop_ltrb(bucket, original_size, flip),
        flipped: flip,
    })
}

/// torchvision `ToTensor` + `Normalize([0.5], [0.5])` for every byte value, bit for bit.
fn normalize_lut() -> [f32; 256] {
    let mut lut = [0f32; 256];
    for (v, out) in lut.iter_mut().enumerate() {
        *out = ((v as f32) / 255.0 - 0.5) / 0.5;
    }
    lut
}

/// Left and top offset of the crop from a `resized` image to `bucket` (sizes assumed to cover
/// the bucket; a side smaller than the bucket gets offset 0).
pub fn crop_offsets(resized: Reso, bucket: Reso, crop: Crop) -> (u32, u32) {
    let trim_x = resized.0.saturating_sub(bucket.0);
    let trim_y = resized.1.saturating_sub(bucket.1);
    match crop {
        Crop::Center => (trim_x / 2, trim_y / 2),
        Crop::Random(seed) => {
            let mut rng = SplitMix64(seed);
            // As sd-scripts: a draw only for an axis that is trimmed, x first.
            let x = if trim_x > 0 { rng.below_inclusive(trim_x) } else { 0 };
            let y = if trim_y > 0 { rng.below_inclusive(trim_y) } else { 0 };
            (x, y)
        }
    }
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max` (multiply-shift; bias below 2^-32 for image sizes).
    fn below_inclusive(&mut self, max: u32) -> u32 {
        ((u128::from(self.next()) * (u128::from(max) + 1)) >> 64) as u32
    }
}

/// sd-scripts' `BucketManager.get_crop_ltrb` (spec §4.4 item 4) truncated to integers: the box the
/// original aspect ratio would occupy if fitted *inside* the bucket and centred — not the real
/// crop. With `flipped`, mirrored (`left = W_b − right`, `right = W_b − left`), so `.0` equals
/// sd-scripts' flipped `crop_left` and `.1` its `crop_top`.
pub fn crop_ltrb(bucket: Reso, original_size: (u32, u32), flipped: bool) -> (u32, u32, u32, u32) {
    let (bw, bh) = (f64::from(bucket.0), f64::from(bucket.1));
    let (iw, ih) = (f64::from(original_size.0), f64::from(original_size.1.max(1)));
    let bucket_ar = bw / bh.max(1.0);
    let image_ar = iw / ih;
    let (fw, fh) = if bucket_ar > image_ar { (bh * image_ar, bh) } else { (bw, bw / image_ar) };
    let left = ((bw - fw) / 2.0).floor();
    let top = ((bh - fh) / 2.0).floor();
    let (right, bottom) = (left + fw, top + fh);
    // Python's int() truncates toward zero; sizes are never negative in practice.
    let t = |v: f64| if v.is_finite() && v > 0.0 { v.trunc().min(f64::from(u32::MAX)) as u32 } else { 0 };
    if flipped {
        (t(bw - right), t(top), t(bw - left), t(bottom))
    } else {
        (t(left), t(top), t(right), t(bottom))
    }
}

/// Resizes 8-bit RGB to `size` exactly as sd-scripts' `resize_image` does with this filter
/// (PIL for `Lanczos`/`Box`, OpenCV for the rest). A zero target size or an empty image gives
/// an image of the requested size filled with zeros.
pub fn resize_rgb8(image: &RgbImage, size: Reso, interpolation: Interpolation) -> RgbImage {
    let (sw, sh) = image.dimensions();
    if size.0 == 0 || size.1 == 0 || sw == 0 || sh == 0 {
        return RgbImage::new(size.0, size.1);
    }
    if (sw, sh) == size {
        return image.clone();
    }
    let src = Plane { data: image.as_raw(), w: sw as usize, h: sh as usize };
    let (dw, dh) = (size.0 as usize, size.1 as usize);
    let out = match interpolation {
        Interpolation::Lanczos => pil::resample(&src, dw, dh, pil::Filter::Lanczos),
        Interpolation::Box => pil::resample(&src, dw, dh, pil::Filter::Box),
        Interpolation::Area => cv::resize_area(&src, dw, dh),
        Interpolation::Bilinear => cv::resize_linear(&src, dw, dh),
        Interpolation::Bicubic => cv::resize_cubic(&src, dw, dh),
        Interpolation::Nearest => cv::resize_nearest_exact(&src, dw, dh),
    };
    RgbImage::from_raw(size.0, size.1, out).unwrap_or_else(|| RgbImage::new(size.0, size.1))
}

/// Interleaved 3-channel u8 pixels.
struct Plane<'a> {
    data: &'a [u8],
    w: usize,
    h: usize,
}

const CN: usize = 3;

/// The most recently used horizontally resampled rows, so a separable resize keeps a few rows
/// in memory instead of the whole intermediate image (the vertical pass reads rows in order).
struct RowCache<T> {
    /// (source row, last use, values); `usize::MAX` = empty.
    slots: Vec<(usize, u64, Vec<T>)>,
    clock: u64,
}

impl<T: Copy + Default> RowCache<T> {
    fn new(width: usize) -> Self {
        RowCache { slots: (0..8).map(|_| (usize::MAX, 0, vec![T::default(); width])).collect(), clock: 0 }
    }

    /// The rows `ys` (at most 4), computing missing ones with `fill(row, out)`.
    fn rows<const K: usize>(&mut self, ys: [usize; K], mut fill: impl FnMut(usize, &mut [T])) -> [&[T]; K] {
        let mut idx = [0usize; K];
        for (i, &y) in ys.iter().enumerate() {
            self.clock += 1;
            let slot = match self.slots.iter().position(|s| s.0 == y) {
                Some(p) => p,
                None => {
                    // Least recently used: never one of the rows already taken in this call.
                    let p = (0..self.slots.len()).min_by_key(|&p| self.slots[p].1).unwrap_or(0);
                    fill(y, &mut self.slots[p].2);
                    self.slots[p].0 = y;
                    p
                }
            };
            self.slots[slot].1 = self.clock;
            idx[i] = slot;
        }
        std::array::from_fn(|i| &self.slots[idx[i]].2[..])
    }
}

/// Pillow's `ImagingResample` for 8-bit images (`libImaging/Resample.c`): separable, horizontal
/// pass first, coefficients in 22-bit fixed point, intermediate rounded to u8.
mod pil {
    use super::{Plane, CN};

    #[derive(Clone, Copy)]
    pub(super) enum Filter {
        Lanczos,
        Box,
    }

    const PRECISION_BITS: u32 = 32 - 8 - 2;

    impl Filter {
        fn support(self) -> f64 {
            match self {
                Filter::Lanczos => 3.0,
                Filter::Box => 0.5,
            }
        }

        fn eval(self, x: f64) -> f64 {
            match self {
                Filter::Lanczos => {
                    if (-3.0..3.0).contains(&x) {
                        sinc(x) * sinc(x / 3.0)
                    } else {
                        0.0
                    }
                }
                Filter::Box => {
                    if x > -0.5 && x <= 0.5 {
                        1.0
                    } else {
                        0.0
                    }
                }
            }
        }
    }

    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            return 1.0;
        }
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }

    /// Per output index: first source index, the fixed-point weights.
    struct Coeffs {
        bounds: Vec<(usize, usize)>,
        ksize: usize,
        kk: Vec<i32>,
    }

    /// `precompute_coeffs` + `normalize_coeffs_8bpc`.
    fn precompute(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
        let scale = in_size as f32 as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut kk = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize - xmin;
            let xmax = xmax.min(ksize);
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(xmax) {
                let w = filter.eval(((x + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let row = &mut kk[xx * ksize..(xx + 1) * ksize];
            for x in 0..xmax {
                let v = if ww != 0.0 { k[x] / ww } else { k[x] };
                let scaled = v * f64::from(1u32 << PRECISION_BITS);
                row[x] = if v < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
            }
            bounds.push((xmin, xmax));
        }
        Coeffs { bounds, ksize, kk }
    }

    fn clip8(v: i32) -> u8 {
        (v >> PRECISION_BITS).clamp(0, 255) as u8
    }

    /// One horizontal pass: `rows` rows of `sw` pixels → `dw` pixels each.
    fn horizontal(data: &[u8], sw: usize, rows: usize, dw: usize, c: &Coeffs) -> Vec<u8> {
        let half = 1i32 << (PRECISION_BITS - 1);
        let mut out = vec![0u8; dw * rows * CN];
        for y in 0..rows {
            let row = &data[y * sw * CN..(y + 1) * sw * CN];
            for xx in 0..dw {
                let (xmin, xmax) = c.bounds[xx];
                let k = &c.kk[xx * c.ksize..];
                let mut ss = [half; CN];
                for x in 0..xmax {
                    let p = &row[(x + xmin) * CN..];
                    for ch in 0..CN {
                        ss[ch] += i32::from(p[ch]) * k[x];
                    }
                }
                for ch in 0..CN {
                    out[(y * dw + xx) * CN + ch] = clip8(ss[ch]);
                }
            }
        }
        out
    }

    /// One vertical pass over rows of `width` pixels → `dh` rows.
    fn vertical(data: &[u8], width: usize, dh: usize, c: &Coeffs) -> Vec<u8> {
        let half = 1i32 << (PRECISION_BITS - 1);
        let stride = width * CN;
        let mut out = vec![0u8; stride * dh];
        for yy in 0..dh {
            let (ymin, ymax) = c.bounds[yy];
            let k = &c.kk[yy * c.ksize..];
            for x in 0..stride {
                let mut ss = half;
                for y in 0..ymax {
                    ss += i32::from(data[(y + ymin) * stride + x]) * k[y];
                }
                out[yy * stride + x] = clip8(ss);
            }
        }
        out
    }

    /// `ImagingResampleInner` of Pillow 13: horizontal pass first, unless the height shrinks
    /// by more than twice as many pixels as the width (then vertical first; Pillow ≤ 12
    /// always went horizontal first). Every pass rounds to u8.
    pub(super) fn resample(src: &Plane, dw: usize, dh: usize, filter: Filter) -> Vec<u8> {
        let (sw, sh) = (src.w, src.h);
        let need_h = dw != sw;
        let need_v = dh != sh;
        let horizontal_first = !(sh > dh && (sh as i64 - dh as i64) > (sw as i64 - dw as i64) * 2);
        // Pillow skips source rows the vertical pass never reads; the values are the same.
        match (need_h, need_v) {
            (false, false) => src.data.to_vec(),
            (true, false) => horizontal(src.data, sw, sh, dw, &precompute(sw, dw, filter)),
            (false, true) => vertical(src.data, sw, dh, &precompute(sh, dh, filter)),
            (true, true) => {
                let (hc, vc) = (precompute(sw, dw, filter), precompute(sh, dh, filter));
                if horizontal_first {
                    vertical(&horizontal(src.data, sw, sh, dw, &hc), dw, dh, &vc)
                } else {
                    horizontal(&vertical(src.data, sw, dh, &vc), sw, dh, dw, &hc)
                }
            }
        }
    }
}

/// OpenCV 4.x `cv::resize` for `CV_8UC3` (`modules/imgproc/src/resize.cpp`).
mod cv {
    use super::{Plane, RowCache, CN};

    const COEF_BITS: u32 = 11;
    /// 16-bit lanes of OpenCV's baseline SIMD registers (128-bit: SSE on x86-64, NEON).
    const SIMD_I16_LANES: usize = 8;
    const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

    fn cv_round(v: f32) -> i32 {
        v.round_ties_even() as i32
    }

    fn sat_u8(v: i32) -> u8 {
        v.clamp(0, 255) as u8
    }

    /// `INTER_AREA`: true area averaging when shrinking both axes; OpenCV's bilinear variant
    /// with "area" coefficients otherwise.
    pub(super) fn resize_area(src: &Plane, dw: usize, dh: usize) -> Vec<u8> {
        let inv_scale_x = dw as f64 / src.w as f64;
        let inv_scale_y = dh as f64 / src.h as f64;
        let scale_x = 1.0 / inv_scale_x;
        let scale_y = 1.0 / inv_scale_y;
        if scale_x >= 1.0 && scale_y >= 1.0 {
            let iscale_x = scale_x.round() as i64;
            let iscale_y = scale_y.round() as i64;
            let fast =
                (scale_x - iscale_x as f64).abs() < f64::EPSILON && (scale_y - iscale_y as f64).abs() < f64::EPSILON;
            if fast {
                return area_fast(src, dw, dh, iscale_x as usize, iscale_y as usize);
            }
            return area_general(src, dw, dh, scale_x, scale_y);
        }
        linear_generic(src, dw, dh, true)
    }

    /// `resizeAreaFast_`: integer factors, plain block sums.
    fn area_fast(src: &Plane, dw: usize, dh: usize, sx: usize, sy: usize) -> Vec<u8> {
        let area = sx * sy;
        let scale = 1.0f32 / area as f32;
        let mut out = vec![0u8; dw * dh * CN];
        for dy in 0..dh {
            for dx in 0..dw {
                for c in 0..CN {
                    let mut sum = 0i32;
                    for ky in 0..sy {
                        let row = (dy * sy + ky) * src.w * CN;
                        for kx in 0..sx {
                            sum += i32::from(src.data[row + (dx * sx + kx) * CN + c]);
                        }
                    }
                    // OpenCV's SIMD path for 2x2 rounds half up; the scalar path rounds to even.
                    out[(dy * dw + dx) * CN + c] =
                        if area == 4 { sat_u8((sum + 2) >> 2) } else { sat_u8(cv_round(sum as f32 * scale)) };
                }
            }
        }
        out
    }

    /// One entry of `computeResizeAreaTab`.
    struct Decimate {
        di: usize,
        si: usize,
        alpha: f32,
    }

    fn area_tab(ssize: usize, dsize: usize, scale: f64) -> Vec<Decimate> {
        let mut tab = Vec::new();
        for dx in 0..dsize {
            let fsx1 = dx as f64 * scale;
            let fsx2 = fsx1 + scale;
            let cell_width = scale.min(ssize as f64 - fsx1);
            let mut sx1 = fsx1.ceil() as i64;
            let mut sx2 = fsx2.floor() as i64;
            sx2 = sx2.min(ssize as i64 - 1);
            sx1 = sx1.min(sx2);
            if sx1 as f64 - fsx1 > 1e-3 && sx1 >= 1 {
                tab.push(Decimate { di: dx, si: (sx1 - 1) as usize, alpha: ((sx1 as f64 - fsx1) / cell_width) as f32 });
            }
            for sx in sx1.max(0)..sx2 {
                tab.push(Decimate { di: dx, si: sx as usize, alpha: (1.0 / cell_width) as f32 });
            }
            if fsx2 - sx2 as f64 > 1e-3 && sx2 >= 0 {
                let a = (fsx2 - sx2 as f64).min(1.0).min(cell_width) / cell_width;
                tab.push(Decimate { di: dx, si: sx2 as usize, alpha: a as f32 });
            }
        }
        tab
    }

    /// `ResizeArea_Invoker` with `WT = float`.
    fn area_general(src: &Plane, dw: usize, dh: usize, scale_x: f64, scale_y: f64) -> Vec<u8> {
        let xtab = area_tab(src.w, dw, scale_x);
        let ytab = area_tab(src.h, dh, scale_y);
        let width = dw * CN;
        let mut out = vec![0u8; dh * width];
        let mut buf = vec![0f32; width];
        let mut sum = vec![0f32; width];
        let Some(first) = ytab.first() else { return out };
        let mut prev_dy = first.di;
        for yt in &ytab {
            let beta = yt.alpha;
            let row = &src.data[yt.si * src.w * CN..(yt.si + 1) * src.w * CN];
            buf.iter_mut().for_each(|b| *b = 0.0);
            for xt in &xtab {
                for c in 0..CN {
                    buf[xt.di * CN + c] += f32::from(row[xt.si * CN + c]) * xt.alpha;
                }
            }
            if yt.di != prev_dy {
                let d = &mut out[prev_dy * width..(prev_dy + 1) * width];
                for dx in 0..width {
                    d[dx] = sat_u8(cv_round(sum[dx]));
                    sum[dx] = beta * buf[dx];
                }
                prev_dy = yt.di;
            } else {
                for dx in 0..width {
                    sum[dx] += beta * buf[dx];
                }
            }
        }
        let d = &mut out[prev_dy * width..(prev_dy + 1) * width];
        for dx in 0..width {
            d[dx] = sat_u8(cv_round(sum[dx]));
        }
        out
    }

    /// `INTER_LINEAR`.
    pub(super) fn resize_linear(src: &Plane, dw: usize, dh: usize) -> Vec<u8> {
        let inv_scale_x = dw as f64 / src.w as f64;
        let inv_scale_y = dh as f64 / src.h as f64;
        let (scale_x, scale_y) = (1.0 / inv_scale_x, 1.0 / inv_scale_y);
        let (ix, iy) = (scale_x.round(), scale_y.round());
        // "INTER_AREA (fast) is equal to INTER_LINEAR" for an exact 2x shrink.
        if (scale_x - ix).abs() < f64::EPSILON && (scale_y - iy).abs() < f64::EPSILON && ix == 2.0 && iy == 2.0 {
            return area_fast(src, dw, dh, 2, 2);
        }
        linear_generic(src, dw, dh, false)
    }

    /// Source index and fractional weight per output index (the `xofs`/`alpha` tables).
    fn linear_tab(ssize: usize, dsize: usize, area_mode: bool, clamp: bool) -> Vec<(i64, [i32; 2])> {
        let inv_scale = dsize as f64 / ssize as f64;
        let scale = 1.0 / inv_scale;
        (0..dsize)
            .map(|d| {
                let (mut sx, mut fx);
                if !area_mode {
                    fx = ((d as f64 + 0.5) * scale - 0.5) as f32;
                    sx = fx.floor() as i64;
                    fx -= sx as f32;
                } else {
                    sx = (d as f64 * scale).floor() as i64;
                    fx = ((d + 1) as f64 - (sx + 1) as f64 * inv_scale) as f32;
                    fx = if fx <= 0.0 { 0.0 } else { fx - fx.floor() };
                }
                // Only the x axis is clamped (OpenCV leaves y alone; its rows are clipped).
                if clamp && sx < 0 {
                    fx = 0.0;
                    sx = 0;
                }
                if clamp && sx >= ssize as i64 - 1 {
                    fx = 0.0;
                    sx = ssize as i64 - 1;
                }
                let a0 = cv_round((1.0 - fx) * COEF_SCALE).clamp(i16::MIN.into(), i16::MAX.into());
                let a1 = cv_round(fx * COEF_SCALE).clamp(i16::MIN.into(), i16::MAX.into());
                (sx, [a0, a1])
            })
            .collect()
    }

    fn linear_generic(src: &Plane, dw: usize, dh: usize, area_mode: bool) -> Vec<u8> {
        let xt = linear_tab(src.w, dw, area_mode, true);
        let yt = linear_tab(src.h, dh, area_mode, false);
        let clampi = |v: i64, n: usize| v.clamp(0, n as i64 - 1) as usize;
        let width = dw * CN;
        // Horizontal pass for every source row: int sums scaled by 2^11.
        let hrow = |y: usize, d: &mut [i32]| {
            let s = &src.data[y * src.w * CN..(y + 1) * src.w * CN];
            for (dx, &(sx, a)) in xt.iter().enumerate() {
                let (sx, sx1) = (clampi(sx, src.w), clampi(sx + 1, src.w));
                for c in 0..CN {
                    d[dx * CN + c] = i32::from(s[sx * CN + c]) * a[0] + i32::from(s[sx1 * CN + c]) * a[1];
                }
            }
        };
        let mut cache = RowCache::new(width);
        let mut out = vec![0u8; dh * width];
        for (dy, &(sy, b)) in yt.iter().enumerate() {
            let [r0, r1] = cache.rows([clampi(sy, src.h), clampi(sy + 1, src.h)], hrow);
            let d = &mut out[dy * width..(dy + 1) * width];
            // OpenCV's u8 `VResizeLinear` (vector and scalar alike): drop 4 bits, multiply-high
            // by the 16-bit weight, add, round off the last 2 bits.
            let (b0, b1) = (b[0], b[1]);
            for x in 0..width {
                let v = (((r0[x] >> 4) * b0) >> 16) + (((r1[x] >> 4) * b1) >> 16);
                d[x] = sat_u8((v + 2) >> 2);
            }
        }
        out
    }

    /// `interpolateCubic` with A = −0.75.
    fn cubic_coeffs(x: f32) -> [f32; 4] {
        const A: f32 = -0.75;
        let c0 = ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A;
        let c1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
        let c2 = ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
        [c0, c1, c2, 1.0 - c0 - c1 - c2]
    }

    /// `INTER_CUBIC`: 4 taps per axis (a = −0.75), borders replicated. OpenCV hands 8-bit
    /// images of at least 4×4 pixels to Intel IPP (opencv-python wheels are built with it),
    /// which works in f32 without intermediate rounding or clipping (modelled here from
    /// measurements: about 1 byte in 10^5 still differs by one); smaller images take
    /// OpenCV's own fixed-point path.
    pub(super) fn resize_cubic(src: &Plane, dw: usize, dh: usize) -> Vec<u8> {
        if src.w >= 4 && src.h >= 4 {
            cubic_float(src, dw, dh)
        } else {
            cubic_fixed(src, dw, dh)
        }
    }

    fn cubic_float(src: &Plane, dw: usize, dh: usize) -> Vec<u8> {
        let xt = cubic_tab_ipp(src.w, dw);
        let yt = cubic_tab_ipp(src.h, dh);
        let width = dw * CN;
        let clampi = |v: i64, n: usize| v.clamp(0, n as i64 - 1) as usize;
        let hrow = |y: usize, d: &mut [f32]| {
            let s = &src.data[y * src.w * CN..(y + 1) * src.w * CN];
            for (dx, (sx, a)) in xt.iter().enumerate() {
                for c in 0..CN {
                    let mut acc = 0f32;
                    for (k, ak) in a.iter().enumerate() {
                        acc += f32::from(s[clampi(sx - 1 + k as i64, src.w) * CN + c]) * ak;
                    }
                    d[dx * CN + c] = acc;
                }
            }
        };
        let mut cache = RowCache::new(width);
        let mut out = vec![0u8; dh * width];
        for (dy, (sy, b)) in yt.iter().enumerate() {
            let r = cache.rows(std::array::from_fn::<_, 4, _>(|k| clampi(sy - 1 + k as i64, src.h)), hrow);
            let d = &mut out[dy * width..(dy + 1) * width];
            for x in 0..width {
                let mut acc = 0f32;
                for k in 0..4 {
                    acc += r[k][x] * b[k];
                }
                d[x] = sat_u8(cv_round(acc));
            }
        }
        out
    }

    /// `interpolateCubic` (A = −0.75) in f64, for the IPP path.
    fn cubic_coeffs_f64(x: f64) -> [f64; 4] {
        const A: f64 = -0.75;
        let c0 = ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A;
        let c1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
        let c2 = ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
        [c0, c1, c2, 1.0 - c0 - c1 - c2]
    }

    /// IPP's weights: positions and weights in f64, weights stored as f32.
    fn cubic_tab_ipp(ssize: usize, dsize: usize) -> Vec<(i64, [f32; 4])> {
        let ratio = ssize as f64 / dsize as f64;
        (0..dsize)
            .map(|d| {
                let fx = (d as f64 + 0.5) * ratio - 0.5;
                let sx = fx.floor();
                (sx as i64, cubic_coeffs_f64(fx - sx).map(|v| v as f32))
            })
            .collect()
    }

    /// OpenCV's weights: position in f32, weights in 11-bit fixed point.
    fn cubic_tab_cv(ssize: usize, dsize: usize) -> Vec<(i64, [i32; 4])> {
        let scale = 1.0 / (dsize as f64 / ssize as f64);
        (0..dsize)
            .map(|d| {
                let mut fx = ((d as f64 + 0.5) * scale - 0.5) as f32;
                let sx = fx.floor() as i64;
                fx -= sx as f32;
                let a = cubic_coeffs(fx).map(|v| cv_round(v * COEF_SCALE).clamp(i16::MIN.into(), i16::MAX.into()));
                (sx, a)
            })
            .collect()
    }

    /// OpenCV's own `HResizeCubic` + `VResizeCubic` in fixed point.
    fn cubic_fixed(src: &Plane, dw: usize, dh: usize) -> Vec<u8> {
        let xt = cubic_tab_cv(src.w, dw);
        let yt = cubic_tab_cv(src.h, dh);
        let width = dw * CN;
        let clampi = |v: i64, n: usize| v.clamp(0, n as i64 - 1) as usize;
        let hrow = |y: usize, d: &mut [i32]| {
            let s = &src.data[y * src.w * CN..(y + 1) * src.w * CN];
            for (dx, (sx, a)) in xt.iter().enumerate() {
                for c in 0..CN {
                    let mut acc = 0i32;
                    for (k, ak) in a.iter().enumerate() {
                        acc += i32::from(s[clampi(sx - 1 + k as i64, src.w) * CN + c]) * ak;
                    }
                    d[dx * CN + c] = acc;
                }
            }
        };
        let mut cache = RowCache::new(width);
        let mut out = vec![0u8; dh * width];
        for (dy, (sy, b)) in yt.iter().enumerate() {
            let r = cache.rows(std::array::from_fn::<_, 4, _>(|k| clampi(sy - 1 + k as i64, src.h)), hrow);
            let d = &mut out[dy * width..(dy + 1) * width];
            // `VResizeCubicVec_32s8u` (f32 multiply-adds, round to even) for whole SSE vectors,
            // the fixed-point cast for the tail.
            let vec_end = width / SIMD_I16_LANES * SIMD_I16_LANES;
            let scale = 1.0f32 / (COEF_SCALE * COEF_SCALE);
            let bf = b.map(|v| v as f32 * scale);
            for x in 0..vec_end {
                let mut t = r[3][x] as f32 * bf[3];
                t += r[2][x] as f32 * bf[2];
                t += r[1][x] as f32 * bf[1];
                t += r[0][x] as f32 * bf[0];
                d[x] = sat_u8(cv_round(t));
            }
            for x in vec_end..width {
                let acc = b[0] * r[0][x] + b[1] * r[1][x] + b[2] * r[2][x] + b[3] * r[3][x];
                d[x] = sat_u8((acc + (1 << (2 * COEF_BITS - 1))) >> (2 * COEF_BITS));
            }
        }
        out
    }

    /// `INTER_NEAREST_EXACT` (`resizeNN_bitexact`): pixel centres in 16.16 fixed point.
    pub(super) fn resize_nearest_exact(src: &Plane, dw: usize, dh: usize) -> Vec<u8> {
        let ofs = |ssize: usize, dsize: usize| -> Vec<usize> {
            let (s, d) = (ssize as i64, dsize as i64);
            let ifx = ((s << 16) + d / 2) / d;
            let ifx0 = ifx / 2 - s % 2;
            (0..d).map(|x| (((ifx * x + ifx0) >> 16).clamp(0, s - 1)) as usize).collect()
        };
        let xo = ofs(src.w, dw);
        let yo = ofs(src.h, dh);
        let mut out = vec![0u8; dh * dw * CN];
        for (dy, &sy) in yo.iter().enumerate() {
            for (dx, &sx) in xo.iter().enumerate() {
                let s = (sy * src.w + sx) * CN;
                out[(dy * dw + dx) * CN..][..CN].copy_from_slice(&src.data[s..s + CN]);
            }
        }
        out
    }
}
