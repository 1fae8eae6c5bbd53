//! WD tagger (ViT, ConvNeXt) against `tools/reference/wd14_fixtures.py`: timm logits on fixed
//! tensors and on real image files through kohya's preprocessing, kohya's `preprocess_image`
//! output byte for byte (and OpenCV's INTER_AREA on generated images), and the captions kohya's
//! tag selection writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use lorakit_caption::wd14::config::Architecture;
use lorakit_caption::wd14::postprocess::{Frequency, Options, Selector};
use lorakit_caption::wd14::{cv_area, preprocess, Model, Resize, Tagger, Wd14Error};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/wd14")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn images() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    assert_eq!(v.len(), 7);
    v
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn model(name: &str) -> Model {
    let dir = fixtures().join(name);
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    Model::load(&tensors, &Architecture::from_timm(&config).unwrap()).unwrap()
}

#[test]
fn logits_match_timm_on_fixed_inputs() {
    let r = reference();
    for name in ["vit", "convnext"] {
        let got = model(name).forward(&r["x"]).unwrap();
        let d = max_diff(&got, &r[&format!("{name}/logits")]);
        assert!(d <= 1e-4, "{name}: max |Δlogit| {d}");
        // The logits depend on the input (no dead branches): the two inputs differ.
        assert!(max_diff(&got.get(0).unwrap(), &got.get(1).unwrap()) > 1e-2, "{name}");
    }
}

#[test]
fn preprocessing_matches_kohya_and_the_space_rule() {
    let r = reference();
    for name in images() {
        let path = fixtures().join("images").join(&name);
        for (mode, resize) in [("kohya", Resize::Kohya), ("bicubic", Resize::Bicubic)] {
            let want: Vec<u8> = r[&format!("{mode}/{name}")].flatten_all().unwrap().to_vec1().unwrap();
            let got = preprocess::load(&path, 64, resize).unwrap().bgr;
            let diffs: Vec<i32> = got.iter().zip(&want).map(|(a, b)| (*a as i32 - *b as i32).abs()).collect();
            let worst = diffs.iter().max().copied().unwrap();
            let off = diffs.iter().filter(|d| **d > 0).count();
            // Decoding (PNG, and JPEG through libjpeg-turbo as PIL), compositing, padding and
            // both resamplers (OpenCV's INTER_AREA at the non-integer factors of large.png and
            // odd.jpg too) are exact: so is the whole preprocessing.
            assert_eq!(off, 0, "{mode}/{name}: {off} bytes differ (worst {worst})");
        }
    }
}

/// `pattern` of wd14_fixtures.py: hash noise (top half), a gradient, flat 7×5 blocks.
fn pattern(h: usize, w: usize, c: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(h * w * c);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                let i = ((y * w + x) * c + ch) as u64;
                v.push(if y < h / 2 {
                    (((i * 2654435761) % (1 << 32)) >> 24) as u8
                } else if x < w / 2 {
                    ((x + 2 * y + 50 * ch) % 256) as u8
                } else if (x / 7 + y / 5) % 2 == 0 {
                    255
                } else {
                    (17 + 40 * ch) as u8
                });
            }
        }
    }
    v
}

fn area_reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("area.safetensors"), &Device::Cpu).unwrap()
}

fn assert_identical(got: &[u8], want: &Tensor, what: &str) {
    let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    let off: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
    assert!(
        off.is_empty(),
        "{what}: {} bytes differ from cv2, first at {} ({} vs {})",
        off.len(),
        off[0],
        got[off[0]],
        want[off[0]]
    );
}

#[test]
fn inter_area_equals_opencv_byte_for_byte() {
    let r = area_reference();
    let cases = [
        ("square_1024_448", 1024, 1024, 3, 448, 448),
        ("odd_613x997_c1", 613, 997, 1, 150, 250),
        ("odd_203x301_c4", 203, 301, 4, 64, 97),
        ("mixed_150x200", 150, 200, 3, 64, 100),
        ("triple_192", 192, 192, 3, 64, 64),
        ("half_odd_c3", 130, 66, 3, 65, 33),
    ];
    for (name, h, w, c, th, tw) in cases {
        let got = cv_area::resize(&pattern(h, w, c), w, h, c, tw, th);
        assert_identical(&got, &r[name], name);
    }
}

#[test]
fn kohya_preprocessing_at_448_equals_kohyas_bytes() {
    // 997×613 → padded to 997² → INTER_AREA to 448² (a non-integer factor), as the real taggers.
    let r = area_reference();
    let image = image::RgbImage::from_raw(997, 613, pattern(613, 997, 3)).unwrap();
    let got = preprocess::prepare(&image::DynamicImage::ImageRgb8(image), 448, Resize::Kohya);
    assert_identical(&got.bgr, &r["kohya_997x613_448"], "kohya_997x613_448");
}

#[test]
fn image_files_give_timm_probabilities_through_the_whole_pipeline() {
    let r = reference();
    for name in ["vit", "convnext"] {
        let tagger = Tagger::load(&fixtures().join(name), &Device::Cpu).unwrap();
        assert_eq!(tagger.size(), 64);
        let paths: Vec<PathBuf> = images().iter().map(|n| fixtures().join("images").join(n)).collect();
        let mut got = Vec::new();
        tagger.tag_files(&paths, Resize::Kohya, 3, |p, probs| got.push((p.to_path_buf(), probs.unwrap()))).unwrap();
        assert_eq!(got.len(), paths.len());
        for (image, (path, probs)) in images().iter().zip(got) {
            assert_eq!(path.file_name().unwrap().to_string_lossy(), *image);
            let logits = &r[&format!("{name}/image/{image}")];
            let want = (logits.neg().unwrap().exp().unwrap() + 1.0).unwrap().recip().unwrap();
            let got = Tensor::new(probs, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let d = max_diff(&got, &want);
            let tol = if image.ends_with(".jpg") || image == "large.png" { 2e-2 } else { 1e-4 };
            assert!(d <= tol, "{name}/{image}: max |Δp| {d}");
        }
    }
}

fn options(over: &Value) -> Options {
    let mut o = Options::default();
    for (k, v) in over.as_object().unwrap() {
        let s = || v.as_str().unwrap().to_string();
        let b = || v.as_bool().unwrap();
        match k.as_str() {
            "general_threshold" => o.general_threshold = Some(v.as_f64().unwrap() as f32),
            "character_threshold" => o.character_threshold = Some(v.as_f64().unwrap() as f32),
            "character_tags_first" => o.character_tags_first = b(),
            "use_rating_tags" => o.use_rating_tags = b(),
            "use_rating_tags_as_last_tag" => o.use_rating_tags_as_last_tag = b(),
            "remove_underscore" => o.remove_underscore = b(),
            "undesired_tags" => o.undesired_tags = s(),
            "always_first_tags" => o.always_first_tags = Some(s()),
            "caption_separator" => o.caption_separator = s(),
            "tag_replacement" => o.tag_replacement = Some(s()),
            "character_tag_expand" => o.character_tag_expand = b(),
            other => panic!("option {other} not mapped"),
        }
    }
    o
}

#[test]
fn captions_equal_kohyas_tag_selection() {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("postprocess.json")).unwrap()).unwrap();
    let tags = lorakit_caption::wd14::Tags::load(&fixtures().join("vit/selected_tags.csv")).unwrap();
    let probs: Vec<Vec<f32>> = serde_json::from_value(fixture["probabilities"].clone()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 12);
    for case in cases {
        let selector = Selector::new(&tags, options(&case["options"])).unwrap();
        let mut frequency = Frequency::default();
        let captions: Vec<String> =
            probs.iter().map(|p| selector.caption(&selector.select(p, &mut frequency))).collect();
        let want: Vec<String> = serde_json::from_value(case["captions"].clone()).unwrap();
        assert_eq!(captions, want, "case {}", case["name"]);
        let want_freq: Vec<(String, usize)> = serde_json::from_value(case["frequency"].clone()).unwrap();
        assert_eq!(frequency.sorted(), want_freq, "case {} frequencies", case["name"]);
    }
}

#[test]
fn mcut_and_max_tags() {
    let tags = lorakit_caption::wd14::Tags::load(&fixtures().join("vit/selected_tags.csv")).unwrap();
    // Ratings, 9 general, 3 character (see the CSV).
    let p = [0.1, 0.2, 0.3, 0.4, 0.9, 0.85, 0.2, 0.1, 0.05, 0.3, 0.8, 0.02, 0.01, 0.12, 0.11, 0.01];
    let sel = |o: Options| {
        let s = Selector::new(&tags, o).unwrap();
        s.caption(&s.select(&p, &mut Frequency::default()))
    };
    // General MCut: the largest gap is 0.8 → 0.3, threshold 0.55. Character MCut 0.065, floored
    // to 0.15: none.
    assert_eq!(
        sel(Options { mcut_general: true, mcut_character: true, ..Options::default() }),
        "1girl, solo, blue_eyes"
    );
    assert_eq!(sel(Options { max_tags: Some(2), thresh: 0.1, ..Options::default() }), "1girl, solo");
}

#[test]
fn a_bad_replacement_is_refused() {
    let tags = lorakit_caption::wd14::Tags::load(&fixtures().join("vit/selected_tags.csv")).unwrap();
    let err =
        Selector::new(&tags, Options { tag_replacement: Some("a,b,c".into()), ..Options::default() }).unwrap_err();
    assert!(err.contains("source,target"), "{err}");
}

fn copy_model(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "selected_tags.csv"] {
        std::fs::copy(fixtures().join(name).join(f), dir.path().join(f)).unwrap();
    }
    dir
}

#[test]
fn broken_model_folders_are_named() {
    let dir = copy_model("vit");
    std::fs::remove_file(dir.path().join("selected_tags.csv")).unwrap();
    let err = Tagger::load(dir.path(), &Device::Cpu).err().unwrap();
    assert!(matches!(err, Wd14Error::MissingFile { file: "selected_tags.csv", .. }), "{err}");
    assert!(err.to_string().contains("selected_tags.csv"));

    let dir = copy_model("vit");
    let csv = std::fs::read_to_string(dir.path().join("selected_tags.csv")).unwrap();
    std::fs::write(dir.path().join("selected_tags.csv"), csv.lines().take(10).collect::<Vec<_>>().join("\n")).unwrap();
    let err = Tagger::load(dir.path(), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("selected_tags.csv") && err.contains("config.json") && err.contains("16 classes"), "{err}");

    let dir = copy_model("convnext");
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap().replace("convnext_base", "resnet50");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let err = Tagger::load(dir.path(), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("resnet50") && err.contains("config.json"), "{err}");

    // config.json says ViT with a depth the weights do not have: the missing tensor is named.
    let dir = copy_model("vit");
    let config =
        std::fs::read_to_string(dir.path().join("config.json")).unwrap().replace("\"depth\": 2", "\"depth\": 3");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let err = Tagger::load(dir.path(), &Device::Cpu).err().unwrap().to_string();
    // (Which of block 2's tensors is named first depends on the load order.)
    assert!(err.contains("no tensor `blocks.2.") && err.contains("model.safetensors"), "{err}");
}

#[test]
fn a_corrupt_image_is_reported_and_the_others_go_on() {
    let tagger = Tagger::load(&fixtures().join("vit"), &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let good = fixtures().join("images/grey.png");
    let mut results = Vec::new();
    tagger.tag_files(&[bad.clone(), good], Resize::Kohya, 4, |p, r| results.push((p.to_path_buf(), r))).unwrap();
    assert!(matches!(&results[0].1, Err(Wd14Error::Image { path, .. }) if path == &bad));
    assert_eq!(results[1].1.as_ref().unwrap().len(), 16);
}
