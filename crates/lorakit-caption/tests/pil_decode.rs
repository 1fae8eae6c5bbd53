//! The captioners' image loader against PIL (`tools/reference/jpeg_fixtures.py`): JPEGs decode
//! to Pillow's bytes exactly; files that are not images are errors, not panics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use lorakit_caption::pil_decode::{self, DecodeError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/jpeg")
}

fn reference() -> HashMap<String, Vec<u8>> {
    candle_core::safetensors::load(fixtures().join("pil.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t): (String, Tensor)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn differing(a: &[u8], b: &[u8]) -> (usize, u8) {
    let off = a.iter().zip(b).filter(|(x, y)| x != y).count();
    (off, a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0))
}

#[test]
fn jpegs_decode_to_pils_bytes() {
    let r = reference();
    assert_eq!(r.len(), 17);
    for (name, want) in &r {
        if name == "cmyk.jpg" {
            continue;
        }
        let image = pil_decode::open(&fixtures().join(name)).unwrap();
        if name.starts_with("gray") {
            assert_eq!(image.color(), image::ColorType::L8, "{name}: greyscale stays one channel, like PIL's L");
        }
        let got = image.to_rgb8().into_raw();
        assert_eq!(got.len(), want.len(), "{name}");
        let (off, worst) = differing(&got, want);
        assert_eq!(off, 0, "{name}: {off} bytes differ from PIL (worst {worst})");
    }
}

#[test]
fn the_image_crates_decoder_is_what_this_replaces() {
    // zune-jpeg (inside `image`) rounds its IDCT and chroma upsampling differently: the exact
    // test above is not vacuous.
    let r = reference();
    let path = fixtures().join("nat_420_q95.jpg");
    let theirs = image::open(&path).unwrap().to_rgb8().into_raw();
    let (off, worst) = differing(&theirs, &r["nat_420_q95.jpg"]);
    assert!(off * 10 > theirs.len() && worst >= 2, "{off} bytes differ, worst {worst}");
}

#[test]
fn cmyk_falls_back_to_the_image_crate() {
    let r = reference();
    let path = fixtures().join("cmyk.jpg");
    let got = pil_decode::open(&path).unwrap().to_rgb8().into_raw();
    let theirs = image::open(&path).unwrap().to_rgb8().into_raw();
    assert_eq!(got, theirs);
    // PIL's cmyk2rgb and image's CMYK conversion round differently (< 1 % of the bytes).
    let (off, worst) = differing(&got, &r["cmyk.jpg"]);
    assert!(worst <= 1 && off * 100 < got.len(), "{off} bytes differ, worst {worst}");
}

#[test]
fn broken_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(pil_decode::open(&dir.path().join("missing.jpg")), Err(DecodeError::Io(_))));
    let good = std::fs::read(fixtures().join("nat_420_q95.jpg")).unwrap();
    for (name, bytes) in [
        ("header_only.jpg", good[..200].to_vec()),
        ("garbage.jpg", [&[0xFF, 0xD8, 0xFF, 0xE0][..], &[0x5A; 300][..]].concat()),
        ("empty.jpg", Vec::new()),
        // PIL: "image file is truncated" (libjpeg alone would pad it with grey).
        ("half.jpg", good[..good.len() / 2].to_vec()),
        ("no_end_marker.jpg", good[..good.len() - 2].to_vec()),
        ("text.png", b"not an image".to_vec()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        match pil_decode::open(&path) {
            Err(DecodeError::Decode(msg)) => assert!(!msg.is_empty(), "{name}"),
            Err(e) => panic!("{name}: {e}"),
            Ok(image) => panic!("{name}: decoded as {:?} {}×{}", image.color(), image.width(), image.height()),
        }
    }
}

#[test]
fn markers_inside_the_file_do_not_end_it_early() {
    // An EXIF thumbnail carries its own SOI…EOI inside APP1; trailing bytes after EOI are fine.
    let good = std::fs::read(fixtures().join("nat_420_q95.jpg")).unwrap();
    let thumb = std::fs::read(fixtures().join("odd_9x1_420.jpg")).unwrap();
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((thumb.len() + 2) as u16).to_be_bytes());
    app1.extend_from_slice(&thumb);
    let with_thumb = [&good[..2], &app1[..], &good[2..], b"trailing"].concat();
    let want = pil_decode::decode(&good).unwrap();
    assert_eq!(pil_decode::decode(&with_thumb).unwrap(), want);
    let cut = [&good[..2], &app1[..], &good[2..good.len() / 2]].concat();
    assert!(pil_decode::decode(&cut).is_err());
}

#[test]
fn other_formats_decode_as_the_image_crate_does() {
    let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/wd14/images/large.png");
    assert_eq!(pil_decode::open(&png).unwrap(), image::open(&png).unwrap());
}
