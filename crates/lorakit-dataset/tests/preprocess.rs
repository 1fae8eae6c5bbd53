//! Image preprocessing against sd-scripts' own pipeline (PIL + OpenCV), recorded by
//! tools/reference/preprocess_fixture.py in tests/fixtures/reference/preprocess/.
//! Run with `--nocapture` to see the per-case differences; with `PP_DEBUG=1` also the first
//! differing bytes of each case as (byte column, row, ours − expected).

use lorakit_dataset::bucket::BucketChoice;
use lorakit_dataset::preprocess::{
    crop_ltrb, crop_offsets, decode_upright_rgb, load_training_image, prepare_rgb, resize_rgb8, Crop, Interpolation,
    PreprocessError, TrainingImage,
};
use lorakit_dataset::probe::ProbeError;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/preprocess")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("cases.json")).expect("fixture cases.json");
    serde_json::from_str(&text).expect("valid json")
}

fn reso(v: &Value) -> (u32, u32) {
    (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
}

fn choice(resized: (u32, u32), bucket: (u32, u32)) -> BucketChoice {
    BucketChoice { bucket, resized, ar_error: 0.0 }
}

/// The sample's pixels back as HWC bytes (the normalisation is a bijection on bytes).
fn to_bytes(t: &TrainingImage) -> Vec<u8> {
    let (w, h) = (t.width as usize, t.height as usize);
    let plane = w * h;
    let mut out = vec![0u8; plane * 3];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v = t.pixels[c * plane + y * w + x];
                assert!((-1.0..=1.0).contains(&v), "pixel out of range: {v}");
                out[(y * w + x) * 3 + c] = ((v + 1.0) * 127.5).round() as u8;
            }
        }
    }
    out
}

/// (max abs difference, mean abs difference), in byte units.
fn diff(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
    let sum: u64 = a.iter().zip(b).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    (max, sum as f64 / a.len() as f64)
}

#[test]
fn matches_sd_scripts_pipeline() {
    let doc = cases();
    let dir = fixture_dir();
    let mut worst_png = (0u8, 0f64);
    let mut failures = Vec::new();
    println!("{:<24} {:>8} {:>10} {:>9}", "case", "max/255", "mean/255", "differing");
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let input = case["input"].as_str().unwrap();
        let interp = case["interpolation"].as_str();
        let (resized, bucket) = (reso(&case["resized"]), reso(&case["bucket"]));
        let flip = case["flip"].as_bool().unwrap();
        let got = load_training_image(&dir.join(input), &choice(resized, bucket), interp, Crop::Center, flip)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((got.width, got.height), bucket, "{name}");
        assert_eq!(got.pixels.len(), 3 * bucket.0 as usize * bucket.1 as usize, "{name}");
        assert_eq!(got.flipped, flip, "{name}");
        assert_eq!(got.original_size, reso(&case["original_size"]), "{name}: original_size");
        let ctl = reso(&case["crop_top_left"]);
        assert_eq!((got.crop_ltrb.0, got.crop_ltrb.1), ctl, "{name}: crop left/top");

        let expected = image::open(dir.join(case["expected"].as_str().unwrap())).unwrap().to_rgb8();
        let ours = to_bytes(&got);
        let (max, mean) = diff(&ours, expected.as_raw());
        let differing = ours.iter().zip(expected.as_raw()).filter(|(a, b)| a != b).count();
        println!("{name:<24} {max:>8} {mean:>10.4} {differing:>9}");
        if std::env::var("PP_DEBUG").is_ok() && differing > 0 {
            let w = bucket.0 as usize * 3;
            let pos: Vec<(usize, usize, i32)> = ours
                .iter()
                .zip(expected.as_raw())
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(i, (a, b))| (i % w, i / w, i32::from(*a) - i32::from(*b)))
                .take(40)
                .collect();
            println!("   {pos:?}");
        }
        if input.ends_with(".jpg") {
            // Different JPEG decoders (libjpeg-turbo vs image's): small differences expected.
            if !(max <= 4 && mean < 1.0) {
                failures.push(format!("{name}: max {max}, mean {mean}"));
            }
        } else {
            if !(max <= 1 && mean < 0.5) {
                failures.push(format!("{name}: max {max}, mean {mean}"));
            }
            worst_png = (worst_png.0.max(max), worst_png.1.max(mean));
        }
    }
    println!("worst PNG case: max {} /255, mean {:.4} /255", worst_png.0, worst_png.1);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn crop_ltrb_matches_bucket_manager() {
    let doc = cases();
    for c in doc["crop_ltrb_cases"].as_array().unwrap() {
        let (bucket, image) = (reso(&c["bucket"]), reso(&c["image"]));
        let f: Vec<f64> = c["crop_ltrb"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let want = (f[0] as u32, f[1] as u32, f[2] as u32, f[3] as u32);
        assert_eq!(crop_ltrb(bucket, image, false), want, "{bucket:?} {image:?}");
        let flipped = crop_ltrb(bucket, image, true);
        assert_eq!((flipped.0, flipped.1), reso(&c["crop_top_left_flipped"]), "{bucket:?} {image:?} flipped");
        assert_eq!(flipped.2, (f64::from(bucket.0) - f[0]) as u32);
        assert_eq!(flipped.3, want.3);
    }
}

#[test]
fn normalisation_is_torchvision_bit_for_bit() {
    let doc = cases();
    let table: Vec<f32> = doc["normalize"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let img = image::RgbImage::from_fn(256, 1, |x, _| image::Rgb([x as u8, x as u8, 255 - x as u8]));
    let t = prepare_rgb(&img, &choice((256, 1), (256, 1)), None, Crop::Center, false).unwrap();
    for v in 0..256 {
        assert_eq!(t.pixels[v].to_bits(), table[v].to_bits(), "byte {v}");
        assert_eq!(t.pixels[512 + v].to_bits(), table[255 - v].to_bits(), "byte {}", 255 - v);
        assert!((t.pixels[v] - (v as f32 / 127.5 - 1.0)).abs() <= 1.2e-7);
    }
}

/// An image whose pixel (x, y) encodes its coordinates.
fn coord_image(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]))
}

fn pixel(t: &TrainingImage, x: usize, y: usize) -> [u8; 3] {
    let (w, plane) = (t.width as usize, (t.width * t.height) as usize);
    std::array::from_fn(|c| ((t.pixels[c * plane + y * w + x] + 1.0) * 127.5).round() as u8)
}

#[test]
fn center_crop_offsets() {
    assert_eq!(crop_offsets((100, 60), (64, 60), Crop::Center), (18, 0));
    assert_eq!(crop_offsets((64, 67), (64, 60), Crop::Center), (0, 3));
    assert_eq!(crop_offsets((65, 61), (64, 60), Crop::Center), (0, 0));
    // resized == image size: no resampling, the crop shows the source pixels.
    let t = prepare_rgb(&coord_image(100, 61), &choice((100, 61), (64, 60)), None, Crop::Center, false).unwrap();
    assert_eq!(pixel(&t, 0, 0), [18, 0, 7]);
    assert_eq!(pixel(&t, 63, 59), [81, 59, 7]);
}

#[test]
fn random_crop_is_bounded_and_deterministic() {
    let (resized, bucket) = ((120, 70), (64, 64));
    let mut seen_x = std::collections::BTreeSet::new();
    let mut seen_y = std::collections::BTreeSet::new();
    for seed in 0..2000u64 {
        let (x, y) = crop_offsets(resized, bucket, Crop::Random(seed));
        assert!(x <= 56 && y <= 6, "seed {seed}: {x},{y}");
        assert_eq!(crop_offsets(resized, bucket, Crop::Random(seed)), (x, y));
        seen_x.insert(x);
        seen_y.insert(y);
    }
    // Every offset, ends included, is reachable.
    assert_eq!(seen_x.len(), 57);
    assert_eq!(seen_y.len(), 7);
    assert_ne!(crop_offsets(resized, bucket, Crop::Random(1)), crop_offsets(resized, bucket, Crop::Random(2)));
    // No trim: offset 0 whatever the seed.
    assert_eq!(crop_offsets((64, 64), (64, 64), Crop::Random(9)), (0, 0));
    // The sample shows the window at that offset.
    let (x, y) = crop_offsets(resized, bucket, Crop::Random(42));
    let t = prepare_rgb(&coord_image(120, 70), &choice(resized, bucket), None, Crop::Random(42), false).unwrap();
    assert_eq!(pixel(&t, 0, 0), [x as u8, y as u8, 7]);
    // crop_ltrb does not depend on the crop (as in sd-scripts).
    assert_eq!(t.crop_ltrb, crop_ltrb(bucket, (120, 70), false));
}

#[test]
fn flip_mirrors_the_crop() {
    let c = choice((100, 61), (64, 60));
    let plain = prepare_rgb(&coord_image(100, 61), &c, None, Crop::Center, false).unwrap();
    let flipped = prepare_rgb(&coord_image(100, 61), &c, None, Crop::Center, true).unwrap();
    assert!(flipped.flipped && !plain.flipped);
    for y in [0, 30, 59] {
        for x in [0, 1, 40, 63] {
            assert_eq!(pixel(&flipped, x, y), pixel(&plain, 63 - x, y));
        }
    }
    // crop_ltrb mirrored: left = W_b − right.
    let (l, t, r, b) = plain.crop_ltrb;
    assert_eq!(flipped.crop_ltrb, (64 - r, t, 64 - l, b));
}

#[test]
fn crop_ltrb_examples() {
    // Wider image than bucket: fitted width 64, height 64/ar.
    assert_eq!(crop_ltrb((64, 64), (128, 64), false), (0, 16, 64, 48));
    // Taller: fitted height, centred horizontally.
    assert_eq!(crop_ltrb((64, 64), (32, 64), false), (16, 0, 48, 64));
    assert_eq!(crop_ltrb((1024, 1024), (1024, 1024), true), (0, 0, 1024, 1024));
    // 832x1216 bucket, 3:4 photo: ar_b 0.684 < ar 0.75 → (832, 1109.33), top = floor(53.33) = 53.
    assert_eq!(crop_ltrb((832, 1216), (3000, 4000), false), (0, 53, 832, 1162));
}

/// A JPEG stored 40x24 with EXIF orientation 6 comes out upright: 24x40, rotated 90° clockwise.
#[test]
fn exif_orientation_is_applied() {
    let path = fixture_dir().join("exif6_40x24.jpg");
    let upright = decode_upright_rgb(&path).unwrap();
    assert_eq!(upright.dimensions(), (24, 40));
    let stored = image::open(&path).unwrap().to_rgb8();
    assert_eq!(stored.dimensions(), (40, 24));
    let rotated = image::imageops::rotate90(&stored);
    assert_eq!(upright.as_raw(), rotated.as_raw());
    let t = load_training_image(&path, &choice((24, 40), (24, 40)), None, Crop::Center, false).unwrap();
    assert_eq!(t.original_size, (24, 40));
    assert_eq!((t.width, t.height), (24, 40));
}

/// PIL's `convert("RGB")` drops alpha: a fully transparent pixel keeps its colour.
#[test]
fn alpha_is_dropped_not_composited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.png");
    let img = image::RgbaImage::from_fn(4, 2, |x, _| image::Rgba([200, 10 * x as u8, 30, if x < 2 { 0 } else { 128 }]));
    img.save(&path).unwrap();
    let rgb = decode_upright_rgb(&path).unwrap();
    assert_eq!(rgb.get_pixel(0, 0).0, [200, 0, 30]);
    assert_eq!(rgb.get_pixel(3, 1).0, [200, 30, 30]);
}

/// 16-bit PNGs keep the high byte of each sample, as PIL reads them.
#[test]
fn sixteen_bit_keeps_high_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a16.png");
    let img =
        image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(3, 1, |x, _| image::Rgb([0x12ff, 0x80 + x as u16, 0xffff]));
    img.save(&path).unwrap();
    let rgb = decode_upright_rgb(&path).unwrap();
    assert_eq!(rgb.get_pixel(1, 0).0, [0x12, 0, 0xff]);
}

fn assert_image_error(err: PreprocessError, path: &Path, want: fn(&ProbeError) -> bool) {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "message names the file: {msg}");
    match err {
        PreprocessError::Image { source, .. } => assert!(want(&source), "{source:?}"),
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn bad_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let c = choice((24, 40), (24, 40));
    // Truncated JPEG and PNG.
    let jpg = std::fs::read(fixture_dir().join("exif6_40x24.jpg")).unwrap();
    let cut_jpg = dir.path().join("cut.jpg");
    std::fs::write(&cut_jpg, &jpg[..jpg.len() * 2 / 3]).unwrap();
    let err = load_training_image(&cut_jpg, &c, None, Crop::Center, false).unwrap_err();
    assert_image_error(err, &cut_jpg, |e| matches!(e, ProbeError::Corrupt { .. }));

    let png = std::fs::read(fixture_dir().join("rgb_67x43.png")).unwrap();
    let cut_png = dir.path().join("cut.png");
    std::fs::write(&cut_png, &png[..png.len() / 2]).unwrap();
    let err = load_training_image(&cut_png, &choice((67, 43), (64, 40)), None, Crop::Center, false).unwrap_err();
    assert_image_error(err, &cut_png, |e| matches!(e, ProbeError::Corrupt { .. }));

    // Missing, empty, not an image.
    let missing = dir.path().join("missing.png");
    let err = load_training_image(&missing, &c, None, Crop::Center, false).unwrap_err();
    assert_image_error(err, &missing, |e| matches!(e, ProbeError::Unreadable(_)));
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let err = load_training_image(&empty, &c, None, Crop::Center, false).unwrap_err();
    assert_image_error(err, &empty, |e| matches!(e, ProbeError::Empty));
    let html = dir.path().join("page.jpg");
    std::fs::write(&html, b"<!DOCTYPE html><html>404</html>").unwrap();
    let err = load_training_image(&html, &c, None, Crop::Center, false).unwrap_err();
    assert_image_error(err, &html, |e| matches!(e, ProbeError::NotAnImage(_)));
    assert!(err_text(&html, &c).contains("remove it from the dataset"));
}

fn err_text(path: &Path, c: &BucketChoice) -> String {
    load_training_image(path, c, None, Crop::Center, false).unwrap_err().to_string()
}

#[test]
fn bad_plan_and_interpolation_are_errors() {
    let path = fixture_dir().join("rgb_67x43.png");
    // resized smaller than the bucket, or zero.
    for c in [choice((60, 43), (64, 40)), choice((0, 0), (0, 0)), choice((67, 43), (64, 0))] {
        let err = load_training_image(&path, &c, None, Crop::Center, false).unwrap_err();
        assert!(matches!(err, PreprocessError::BadBucket { .. }), "{err:?}");
        assert!(err.to_string().contains("rgb_67x43.png"));
    }
    let err =
        load_training_image(&path, &choice((67, 43), (64, 40)), Some("lanczos4"), Crop::Center, false).unwrap_err();
    assert!(matches!(err, PreprocessError::UnknownInterpolation { .. }), "{err:?}");
    assert!(err.to_string().contains("lanczos, nearest"), "{err}");
    assert!(prepare_rgb(&coord_image(10, 10), &choice((8, 10), (9, 10)), None, Crop::Center, false).is_err());
}

#[test]
fn interpolation_names_and_auto_rule() {
    for name in lorakit_dataset::config::RESIZE_INTERPOLATIONS {
        assert!(Interpolation::from_name(name).is_some(), "{name}");
    }
    assert_eq!(Interpolation::from_name("linear"), Some(Interpolation::Bilinear));
    assert_eq!(Interpolation::from_name("cubic"), Some(Interpolation::Bicubic));
    assert_eq!(Interpolation::from_name("Lanczos"), None);
    assert_eq!(Interpolation::auto((100, 100), (100, 50)), Interpolation::Area);
    assert_eq!(Interpolation::auto((100, 100), (101, 50)), Interpolation::Lanczos);
    assert_eq!(Interpolation::auto((100, 100), (100, 100)), Interpolation::Area);
}

#[test]
fn resize_of_constant_image_is_constant_for_every_filter() {
    let img = image::RgbImage::from_pixel(13, 9, image::Rgb([17, 128, 250]));
    for interp in [
        Interpolation::Lanczos,
        Interpolation::Area,
        Interpolation::Nearest,
        Interpolation::Bilinear,
        Interpolation::Bicubic,
        Interpolation::Box,
    ] {
        for size in [(5, 3), (13, 20), (40, 27), (1, 1), (6, 9)] {
            let out = resize_rgb8(&img, size, interp);
            assert_eq!(out.dimensions(), size);
            assert!(out.pixels().all(|p| p.0 == [17, 128, 250]), "{interp:?} {size:?}");
        }
    }
}
