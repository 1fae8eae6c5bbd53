//! Per-image cost of the two check modes, per format, on a ~1 megapixel photo-like image:
//! header probe (`--quick`) and full decode + fingerprint (the default check).
//! Run: `cargo bench -p lorakit-dataset --bench probe`.

use criterion::{criterion_group, criterion_main, Criterion};
use image::{DynamicImage, ImageFormat, RgbImage};
use std::io::Cursor;

fn photo_like(w: u32, h: u32) -> DynamicImage {
    // Smooth shapes plus fine noise, so encoders do realistic work.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state % 24) as f64;
        let (u, v) = (f64::from(x) / f64::from(w), f64::from(y) / f64::from(h));
        let base = 120.0 + 80.0 * (6.0 * u).sin() * (4.0 * v).cos();
        let px = |k: f64| (base * k + n).clamp(0.0, 255.0) as u8;
        image::Rgb([px(1.0), px(0.8), px(0.6)])
    }))
}

fn bench(c: &mut Criterion) {
    let img = photo_like(1152, 864);
    for (format, name) in
        [(ImageFormat::Jpeg, "jpeg"), (ImageFormat::Png, "png"), (ImageFormat::WebP, "webp"), (ImageFormat::Bmp, "bmp")]
    {
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("a.{name}"));
        std::fs::write(&path, &bytes).unwrap();
        c.bench_function(&format!("probe_header/{name}"), |b| {
            b.iter(|| lorakit_dataset::probe::probe_header(&path).unwrap())
        });
        c.bench_function(&format!("decode_and_fingerprint/{name}"), |b| {
            b.iter(|| lorakit_dataset::probe::decode_bytes(&bytes).unwrap())
        });
    }
    let decoded = image::load_from_memory(&{
        let mut v = Vec::new();
        img.write_to(&mut Cursor::new(&mut v), ImageFormat::Png).unwrap();
        v
    })
    .unwrap();
    c.bench_function("perceptual_hash_only", |b| b.iter(|| lorakit_dataset::probe::perceptual_hash(&decoded, 1)));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
