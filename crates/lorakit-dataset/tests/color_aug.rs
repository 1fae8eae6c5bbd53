//! `ColorAug` against OpenCV/numpy running sd-scripts' own color_aug lines
//! (fixture from tools/reference/color_aug_fixture.py).

use image::RgbImage;
use lorakit_dataset::preprocess::ColorAug;
use rand::{rngs::StdRng, SeedableRng};
use serde_json::Value;

#[test]
fn hue_shift_and_gamma_match_opencv_and_numpy() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference/color_aug/color_aug.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pixels: Vec<u8> = fx["pixels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
    let n = pixels.len() / 3;
    for case in fx["cases"].as_array().unwrap() {
        let value = case["value"].as_f64().unwrap();
        let aug = match case["kind"].as_str().unwrap() {
            "hue" => ColorAug::HueShift(if value < 0.0 { 180.0 + value } else { value }),
            _ => ColorAug::Gamma(value),
        };
        let mut image = RgbImage::from_raw(n as u32, 1, pixels.clone()).unwrap();
        aug.apply(&mut image);
        let want: Vec<u8> = case["out"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
        // OpenCV converts HSV→BGR in SIMD blocks that truncate and finishes the last pixels
        // (fewer than 64 with AVX-512) in scalar code that rounds: exact up to there, ±1 after.
        let exact_until = (n - 64) * 3;
        let bad: Vec<usize> = (0..pixels.len())
            .filter(|&i| {
                let d = (i32::from(image.as_raw()[i]) - i32::from(want[i])).abs();
                d > 1 || (i < exact_until && d != 0)
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{aug:?}: {} of {} values differ, first at pixel {} (in {:?}, ours {:?}, OpenCV {:?})",
            bad.len(),
            pixels.len(),
            bad[0] / 3,
            &pixels[bad[0] / 3 * 3..][..3],
            &image.as_raw()[bad[0] / 3 * 3..][..3],
            &want[bad[0] / 3 * 3..][..3]
        );
    }
}

#[test]
fn draws_follow_sd_scripts_probabilities() {
    let mut rng = StdRng::seed_from_u64(3);
    let draws: Vec<Option<ColorAug>> = (0..30_000).map(|_| ColorAug::draw(&mut rng)).collect();
    let hue: Vec<f64> = draws
        .iter()
        .filter_map(|d| match d {
            Some(ColorAug::HueShift(h)) => Some(*h),
            _ => None,
        })
        .collect();
    let gamma: Vec<f64> = draws
        .iter()
        .filter_map(|d| match d {
            Some(ColorAug::Gamma(g)) => Some(*g),
            _ => None,
        })
        .collect();
    let some = (hue.len() + gamma.len()) as f64 / draws.len() as f64;
    assert!((some - 0.33).abs() < 0.015, "augmented fraction {some}");
    assert!((hue.len() as f64 / gamma.len() as f64 - 1.0).abs() < 0.08);
    assert!(hue.iter().all(|h| (0.0..8.0).contains(h) || (172.0..180.0).contains(h)));
    assert!(gamma.iter().all(|g| (0.95..1.05).contains(g)));
}
