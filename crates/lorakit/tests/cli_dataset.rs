//! End-to-end tests of `lorakit dataset check`, run as a user would run it,
//! on datasets built in temporary folders: broken files, odd names, symlinks,
//! captions with BOM/CRLF, EXIF rotation, duplicates, configs with mistakes.

use image::{DynamicImage, ImageFormat, RgbImage};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn lorakit(args: &[&std::ffi::OsStr]) -> Output {
    // Keep the decode cache out of the real home folder.
    let cache = std::env::temp_dir().join("lorakit-test-cache");
    Command::new(env!("CARGO_BIN_EXE_lorakit"))
        .env("LORAKIT_CACHE_DIR", cache)
        .args(args)
        .output()
        .expect("run lorakit")
}

fn check_json(dir: &Path, extra: &[&str]) -> (i32, Value, String) {
    let mut args: Vec<&std::ffi::OsStr> = vec!["dataset".as_ref(), "check".as_ref(), dir.as_os_str()];
    args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    args.push("--json".as_ref());
    let out = lorakit(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}): {}\nstderr: {stderr}", String::from_utf8_lossy(&out.stdout))
    });
    (out.status.code().unwrap(), json, stderr)
}

/// A picture with structure, seeded so different seeds give different pictures.
fn picture(w: u32, h: u32, seed: u32) -> DynamicImage {
    let (fx, fy) = (f64::from(seed % 3 + 1), f64::from(seed % 4 + 1));
    let phase = f64::from(seed) * 1.7;
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (f64::from(x) / f64::from(w), f64::from(y) / f64::from(h));
        let a = (std::f64::consts::TAU * fx * u + phase).sin();
        let b = (std::f64::consts::TAU * fy * v - phase).cos();
        let blob = if (u - 0.3 - 0.1 * (phase % 3.0)).hypot(v - 0.5) < 0.2 { 60.0 } else { 0.0 };
        let px = |k: f64| (128.0 + 50.0 * a + 40.0 * b * k + blob).clamp(0.0, 255.0) as u8;
        image::Rgb([px(1.0), px(-1.0), px(0.5)])
    }))
}

fn save(img: &DynamicImage, path: &Path, format: ImageFormat) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, format).unwrap();
}

fn images(report: &Value) -> Vec<Value> {
    report["datasets"].as_array().unwrap().iter().flat_map(|d| d["images"].as_array().unwrap().clone()).collect()
}

fn image<'a>(list: &'a [Value], path: &str) -> &'a Value {
    list.iter().find(|i| i["path"] == path).unwrap_or_else(|| {
        let all: Vec<_> = list.iter().map(|i| i["path"].to_string()).collect();
        panic!("{path} not in report: {all:?}")
    })
}

fn codes(img: &Value) -> Vec<String> {
    img["warnings"].as_array().unwrap().iter().map(|w| w["code"].as_str().unwrap().to_owned()).collect()
}

/// A JPEG with an EXIF APP1 segment carrying `orientation`.
fn jpeg_with_orientation(img: &DynamicImage, orientation: u16) -> Vec<u8> {
    let mut plain = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut plain), ImageFormat::Jpeg).unwrap();
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes()); // count
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding + next IFD = 0
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = plain[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}

#[test]
fn broken_and_fake_images_are_named_never_a_crash() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("10_subject");
    save(&picture(640, 480, 1), &d.join("good.png"), ImageFormat::Png);
    std::fs::write(d.join("good.txt"), "sks, person").unwrap();
    std::fs::write(d.join("empty.png"), b"").unwrap();
    std::fs::write(d.join("page.jpg"), b"<!DOCTYPE html><html><body>Not found</body></html>").unwrap();
    let mut jpeg = Vec::new();
    picture(640, 480, 2).write_to(&mut std::io::Cursor::new(&mut jpeg), ImageFormat::Jpeg).unwrap();
    std::fs::write(d.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    let mut png = Vec::new();
    picture(64, 64, 3).write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png).unwrap();
    let n = png.len();
    png[60..n - 20].iter_mut().for_each(|b| *b = 0x5A);
    std::fs::write(d.join("corrupt.png"), &png).unwrap();
    std::fs::write(d.join("header_only.png"), &png[..33]).unwrap();

    let (code, r, _) = check_json(t.path(), &[]);
    assert_eq!(code, 0, "one good image keeps the dataset usable");
    let list = images(&r);
    assert_eq!(codes(image(&list, "10_subject/empty.png")), ["empty_file"]);
    let fake = image(&list, "10_subject/page.jpg");
    assert_eq!(codes(fake), ["not_an_image"]);
    assert!(fake["warnings"][0]["message"].as_str().unwrap().contains("failed download"));
    assert!(codes(image(&list, "10_subject/truncated.jpg")).contains(&"corrupt_image".to_owned()));
    assert!(codes(image(&list, "10_subject/corrupt.png")).contains(&"corrupt_image".to_owned()));
    assert!(codes(image(&list, "10_subject/header_only.png")).contains(&"corrupt_image".to_owned()));
    for p in ["empty.png", "page.jpg", "truncated.jpg", "corrupt.png"] {
        let i = image(&list, &format!("10_subject/{p}"));
        assert_eq!(i["used"], false, "{p}");
        assert!(i["bucket"].is_null(), "{p}");
    }
    assert_eq!(r["totals"]["used"], 1);
    assert_eq!(r["datasets"][0]["num_train_images"], 10);

    // Quick mode reads headers only: the truncated JPEG passes, the rest are still caught.
    let (code, r, _) = check_json(t.path(), &["--quick"]);
    assert_eq!(code, 0);
    assert_eq!(r["mode"], "quick");
    let list = images(&r);
    assert_eq!(codes(image(&list, "10_subject/empty.png")), ["empty_file"]);
    assert_eq!(codes(image(&list, "10_subject/page.jpg")), ["not_an_image"]);
}

#[test]
fn every_image_broken_or_no_images_is_not_usable() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("5_x")).unwrap();
    std::fs::write(t.path().join("5_x/a.png"), b"").unwrap();
    let (code, r, stderr) = check_json(t.path(), &[]);
    assert_eq!(code, 1);
    assert_eq!(r["usable"], false);
    assert!(stderr.contains("not usable") && stderr.contains("no usable train images"), "{stderr}");
    let f: Vec<_> = r["findings"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap()).collect();
    assert!(f.contains(&"no_data"), "{f:?}");

    // Images placed directly in the train folder: the classic "No data found".
    let t = tempfile::tempdir().unwrap();
    save(&picture(512, 512, 1), &t.path().join("a.png"), ImageFormat::Png);
    let out = lorakit(&["dataset".as_ref(), "check".as_ref(), t.path().as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sit directly in the train folder"), "{text}");
    assert!(text.contains("no `N_name` subfolders"), "{text}");
    assert!(text.contains("NOT usable"), "{text}");

    // An empty folder.
    let t = tempfile::tempdir().unwrap();
    let (code, r, _) = check_json(t.path(), &[]);
    assert_eq!(code, 1);
    assert_eq!(r["totals"]["images"], 0);
}

#[test]
fn missing_folder_and_bad_config_are_clear_errors() {
    let out = lorakit(&["dataset".as_ref(), "check".as_ref(), "/no/such/dir".as_ref()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/dir") && err.contains("N_name"), "{err}");

    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("dataset.toml");
    std::fs::write(&cfg, "[general]\nshuffle_captions = true\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\n")
        .unwrap();
    let out = lorakit(&["dataset".as_ref(), "check".as_ref(), "--config".as_ref(), cfg.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dataset.toml") && err.contains("`shuffle_captions`") && err.contains("shuffle_caption`?"),
        "{err}"
    );

    let out = lorakit(&["dataset".as_ref(), "check".as_ref(), "x".as_ref(), "--resolution".as_ref(), "big".as_ref()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("big"));
}

#[test]
fn odd_names_symlinks_and_folder_rules() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let thai = root.join("3_แมว น่ารัก");
    save(&picture(512, 512, 1), &thai.join("รูป ภาพ.png"), ImageFormat::Png);
    std::fs::write(thai.join("รูป ภาพ.txt"), "แมว, cat").unwrap();
    save(&picture(512, 768, 2), &thai.join("Photo.Jpg"), ImageFormat::Jpeg);
    save(&picture(512, 512, 3), &thai.join(".hidden.png"), ImageFormat::Png);
    save(&picture(512, 512, 4), &thai.join("nested/deep.png"), ImageFormat::Png);
    std::fs::write(thai.join("x.avif"), b"\0\0\0\x1cftypavif").unwrap();
    save(&picture(512, 512, 5), &root.join("no_repeats/a.png"), ImageFormat::Png);
    save(&picture(512, 512, 6), &root.join("0_zero/a.png"), ImageFormat::Png);
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
        save(&picture(512, 512, 7), &thai.join(name), ImageFormat::Png);
        let outside = root.join("elsewhere.png");
        save(&picture(600, 400, 8), &outside, ImageFormat::Png);
        std::os::unix::fs::symlink(&outside, thai.join("linked.png")).unwrap();
        std::os::unix::fs::symlink(root.join("gone.png"), thai.join("dangling.png")).unwrap();
    }

    let (code, r, _) = check_json(root, &[]);
    assert_eq!(code, 0);
    let list = images(&r);
    let cat = image(&list, "3_แมว น่ารัก/รูป ภาพ.png");
    assert_eq!(cat["caption"], "แมว, cat");
    assert_eq!(cat["repeats"], 3);
    let mixed = image(&list, "3_แมว น่ารัก/Photo.Jpg");
    assert!(codes(mixed).contains(&"mixed_case_extension".to_owned()));
    assert_eq!(mixed["caption"], "แมว น่ารัก", "class name from the folder, with its space");
    assert!(list.iter().all(|i| !i["path"].as_str().unwrap().contains("hidden")));
    assert!(list.iter().all(|i| !i["path"].as_str().unwrap().contains("deep")));
    let findings: Vec<String> =
        r["findings"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap().to_owned()).collect();
    for code in ["nested_folder", "unsupported_files", "hidden_files", "folder_ignored"] {
        assert!(findings.contains(&code.to_owned()), "{code} missing from {findings:?}");
    }
    assert_eq!(findings.iter().filter(|c| *c == "folder_ignored").count(), 2);
    #[cfg(unix)]
    {
        let odd = list.iter().find(|i| i["path"].as_str().unwrap().contains("caf")).unwrap();
        assert!(codes(odd).contains(&"non_utf8_name".to_owned()));
        assert_eq!(odd["used"], true);
        let linked = image(&list, "3_แมว น่ารัก/linked.png");
        assert_eq!(linked["size"], serde_json::json!([600, 400]));
        assert_eq!(linked["used"], true);
        assert_eq!(codes(image(&list, "3_แมว น่ารัก/dangling.png")), ["broken_symlink"]);
    }
}

#[test]
fn captions_exif_duplicates_and_buckets() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("4_sks");
    let base = picture(768, 512, 1);
    save(&base, &d.join("a.png"), ImageFormat::Png);
    std::fs::write(d.join("a.txt"), b"\xEF\xBB\xBFsks, smiling\r\n").unwrap();
    std::fs::copy(d.join("a.png"), d.join("a_copy.png")).unwrap();
    std::fs::write(d.join("a_copy.txt"), "sks, copy").unwrap();
    save(
        &base.resize_exact(384, 256, image::imageops::FilterType::Triangle),
        &d.join("a_small.jpg"),
        ImageFormat::Jpeg,
    );
    std::fs::write(d.join("a_small.txt"), "sks, small").unwrap();
    save(&picture(512, 512, 9), &d.join("b.png"), ImageFormat::Png);
    std::fs::write(d.join("b.txt"), "").unwrap();
    save(&picture(512, 512, 10), &d.join("c.png"), ImageFormat::Png);
    std::fs::write(d.join("c.txt"), "outdoors, tree\nsecond line ignored").unwrap();
    std::fs::write(d.join("rotated.jpg"), jpeg_with_orientation(&picture(640, 480, 11), 6)).unwrap();
    std::fs::write(d.join("rotated.txt"), "sks, rotated").unwrap();
    save(&picture(100, 80, 12), &d.join("tiny.png"), ImageFormat::Png);
    std::fs::write(d.join("tiny.txt"), "sks, tiny").unwrap();

    let (code, r, _) = check_json(t.path(), &["--batch-size", "2", "--epochs", "3", "--grad-accum", "2"]);
    assert_eq!(code, 0);
    let list = images(&r);
    let a = image(&list, "4_sks/a.png");
    assert_eq!(a["caption"], "sks, smiling", "BOM and CRLF stripped");
    assert!(codes(a).contains(&"caption_bom".to_owned()) && codes(a).contains(&"caption_crlf".to_owned()));
    assert!(codes(image(&list, "4_sks/a_copy.png")).contains(&"exact_duplicate".to_owned()));
    assert!(
        codes(image(&list, "4_sks/a_small.jpg")).contains(&"near_duplicate".to_owned()),
        "{:?} {:?}",
        image(&list, "4_sks/a_small.jpg"),
        r["totals"]
    );
    let b = image(&list, "4_sks/b.png");
    assert_eq!(b["caption"], "sks", "0-byte caption falls back to the class name");
    assert!(codes(b).contains(&"empty_caption_file".to_owned()));
    let c = image(&list, "4_sks/c.png");
    assert_eq!(c["caption"], "outdoors, tree");
    assert!(codes(c).contains(&"caption_extra_lines".to_owned()));
    assert!(codes(c).contains(&"trigger_missing".to_owned()));
    let rot = image(&list, "4_sks/rotated.jpg");
    assert_eq!(rot["size"], serde_json::json!([480, 640]), "EXIF orientation 6 swaps the size");
    assert_eq!(rot["orientation"], 6);
    assert_eq!(rot["bucket"], serde_json::json!([448, 576]));
    assert!(codes(rot).contains(&"exif_orientation".to_owned()));
    assert!(codes(image(&list, "4_sks/tiny.png")).contains(&"upscaled".to_owned()));
    assert_eq!(r["datasets"][0]["subsets"][0]["trigger_word"], "sks");

    // Step math: 7 images × 4 repeats in buckets, batch 2, GA 2, 3 epochs.
    let batches = r["datasets"][0]["batches_per_epoch"].as_u64().unwrap();
    let buckets = r["datasets"][0]["buckets"].as_array().unwrap();
    let want: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap().div_ceil(2)).sum();
    assert_eq!(batches, want);
    assert_eq!(buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum::<u64>(), 28);
    assert_eq!(r["steps"]["steps_per_epoch"].as_u64().unwrap(), batches.div_ceil(2));
    assert_eq!(r["steps"]["max_train_steps"].as_u64().unwrap(), 3 * batches.div_ceil(2));

    // With bucket_no_upscale the 100x80 image would get a 64x64 bucket; at 50x40 it has none.
    save(&picture(50, 40, 13), &d.join("tiny2.png"), ImageFormat::Png);
    let (code, r, _) = check_json(t.path(), &["--bucket-no-upscale"]);
    assert_eq!(code, 0);
    let list = images(&r);
    assert_eq!(image(&list, "4_sks/tiny.png")["bucket"], serde_json::json!([64, 64]));
    assert_eq!(codes(image(&list, "4_sks/tiny2.png"))[0], "too_small_for_bucket");

    // No buckets: everything is cropped to the resolution.
    let (_, r, _) = check_json(t.path(), &["--no-buckets", "--resolution", "512"]);
    assert!(images(&r).iter().filter(|i| i["used"] == true).all(|i| i["bucket"] == serde_json::json!([512, 512])));
}

#[test]
fn caption_extension_flag_and_reg_balancing() {
    let t = tempfile::tempdir().unwrap();
    let train = t.path().join("train/5_dog");
    for i in 0..3 {
        save(&picture(512, 512, i), &train.join(format!("{i}.png")), ImageFormat::Png);
        std::fs::write(train.join(format!("{i}.caption")), format!("dog{i}")).unwrap();
    }
    let reg = t.path().join("reg/1_dog");
    for i in 0..20 {
        save(&picture(512, 512, 100 + i), &reg.join(format!("r{i:02}.png")), ImageFormat::Png);
    }
    let (train_dir, reg_dir) = (t.path().join("train"), t.path().join("reg"));
    let args: Vec<&std::ffi::OsStr> = vec![
        "dataset".as_ref(),
        "check".as_ref(),
        train_dir.as_os_str(),
        "--reg".as_ref(),
        reg_dir.as_os_str(),
        "--caption-extension".as_ref(),
        "caption".as_ref(),
        "--json".as_ref(),
    ];
    let out = lorakit(&args);
    assert_eq!(out.status.code(), Some(0));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = images(&r);
    assert_eq!(image(&list, "5_dog/1.png")["caption"], "dog1");
    // 15 train samples: the first 15 reg images get 1 repeat, the other 5 are unused.
    let reg_used: Vec<u64> =
        list.iter().filter(|i| i["is_reg"] == true).map(|i| i["repeats"].as_u64().unwrap()).collect();
    assert_eq!(reg_used.iter().sum::<u64>(), 15);
    assert_eq!(reg_used.iter().filter(|&&n| n == 0).count(), 5);
    assert_eq!(r["datasets"][0]["num_reg_images"], 20);
}

#[test]
fn decode_cache_is_reused_and_follows_file_changes() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let data = t.path().join("data");
    let img = data.join("2_x/a.png");
    save(&picture(320, 256, 1), &img, ImageFormat::Png);
    save(&picture(320, 256, 2), &data.join("2_x/b.png"), ImageFormat::Png);
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_lorakit"))
            .env("LORAKIT_CACHE_DIR", &cache)
            .args(["dataset".as_ref(), "check".as_ref(), data.as_os_str(), "--json".as_ref()])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = run();
    let cache_file = cache.join("image-fingerprints-v2.json");
    let stored = std::fs::read_to_string(&cache_file).expect("cache written");
    assert!(stored.contains("a.png") && stored.contains("b.png"));
    assert_eq!(images(&run()), images(&first), "a cached run reports the same");

    // Replace a.png with a truncated copy of itself: the cache must not hide it.
    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(&img, &bytes[..bytes.len() / 3]).unwrap();
    let after = run();
    assert_eq!(codes(image(&images(&after), "2_x/a.png")), ["corrupt_image"]);

    // A damaged cache file is ignored and rewritten.
    std::fs::write(&cache_file, b"\0garbage").unwrap();
    assert_eq!(images(&run()), images(&after));
    assert!(std::fs::read_to_string(&cache_file).unwrap().starts_with('{'));
}

use crate::common;

/// `dataset check ARGS` with a deadline: exit code (never killed by a signal), stdout, stderr.
fn check_within<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lorakit"));
    cmd.env("LORAKIT_CACHE_DIR", std::env::temp_dir().join("lorakit-test-cache"));
    cmd.args(["dataset", "check"]).args(args);
    let out = common::output_within(cmd, 60);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().expect("exited, not killed by a signal"), text(&out.stdout), text(&out.stderr))
}

/// [`check_within`] on `dir` with `--json`.
fn check_json_within(dir: &Path, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec![dir.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    args.push("--json".as_ref());
    let (code, stdout, stderr) = check_within(&args);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}); stderr: {stderr}"));
    (code, json, stderr)
}

#[test]
fn pixel_bombs_and_fifos_are_reported_never_an_abort_or_a_hang() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("3_subject");
    save(&picture(640, 480, 1), &d.join("good.png"), ImageFormat::Png);
    // A 1 KB JPEG whose frame header claims 60000x60000 pixels (10+ GB decoded).
    let mut jpeg = Vec::new();
    picture(16, 16, 2).write_to(&mut std::io::Cursor::new(&mut jpeg), ImageFormat::Jpeg).unwrap();
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    std::fs::write(d.join("bomb.jpg"), &jpeg).unwrap();
    common::mkfifo(&d.join("pipe.png"));
    common::mkfifo(&d.join("good.txt")); // the caption of good.png is a FIFO too
    std::os::unix::fs::symlink(d.join("pipe.png"), d.join("link_to_pipe.webp")).unwrap();

    for extra in [&[][..], &["--quick"][..]] {
        let (code, r, stderr) = check_json_within(t.path(), extra);
        assert_eq!(code, 0, "the good image keeps the dataset usable: {stderr}");
        let list = images(&r);
        let bomb = image(&list, "3_subject/bomb.jpg");
        assert_eq!(codes(bomb), ["too_many_pixels"], "{extra:?}");
        let message = bomb["warnings"][0]["message"].as_str().unwrap();
        assert!(message.contains("60000x60000") && message.contains("megapixels"), "{message}");
        assert_eq!(bomb["used"], false);
        // FIFOs are never images of the dataset; they are findings naming them.
        assert!(list.iter().all(|i| !i["path"].as_str().unwrap().contains("pipe")), "{list:?}");
        let findings: Vec<&str> = r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["code"] == "not_regular_file")
            .map(|f| f["message"].as_str().unwrap())
            .collect();
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert!(findings.iter().any(|m| m.contains("pipe.png") && m.contains("FIFO")), "{findings:?}");
        assert!(findings.iter().any(|m| m.contains("link_to_pipe.webp")), "{findings:?}");
        let good = image(&list, "3_subject/good.png");
        assert_eq!(good["used"], true);
        assert!(codes(good).contains(&"caption_unreadable".to_owned()), "{good}");
        assert!(good["warnings"].to_string().contains("FIFO"), "{good}");
    }
}

/// Repeat counts and epoch counts that do not fit are errors naming the folder, key or flag —
/// never clamped, never laid out in memory.
#[test]
fn huge_repeat_and_epoch_counts_are_errors_not_clamps() {
    let check = |args: &[&std::ffi::OsStr]| {
        let (code, stdout, stderr) = check_within(&[&["--quick".as_ref()], args].concat());
        (code, stdout + &stderr)
    };
    // A folder name whose count does not fit in 32 bits.
    let t = tempfile::tempdir().unwrap();
    save(&picture(64, 64, 1), &t.path().join("99999999999_x/a.png"), ImageFormat::Png);
    let (code, text) = check(&[t.path().as_os_str()]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("99999999999_x") && text.contains("too large"), "{text}");

    // A count that fits but makes an absurd epoch.
    let t = tempfile::tempdir().unwrap();
    save(&picture(64, 64, 1), &t.path().join("4294967295_x/a.png"), ImageFormat::Png);
    let (code, text) = check(&[t.path().as_os_str(), "--json".as_ref()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("epoch_too_large") && text.contains("4294967295_x"), "{text}");

    // The same through a dataset config's num_repeats.
    let cfg = t.path().join("dataset.toml");
    let dir = t.path().join("4294967295_x");
    std::fs::write(
        &cfg,
        format!(
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir = {:?}\nnum_repeats = 99999999999\n",
            dir.to_str().unwrap()
        ),
    )
    .unwrap();
    let (code, text) = check(&["--config".as_ref(), cfg.as_os_str()]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("`num_repeats`") && text.contains("99999999999"), "{text}");

    // Epochs × steps that overflow 64 bits.
    let t = tempfile::tempdir().unwrap();
    for i in 0..3 {
        save(&picture(64, 64, i), &t.path().join(format!("1_x/{i}.png")), ImageFormat::Png);
    }
    let (code, text) =
        check(&[t.path().as_os_str(), "--epochs".as_ref(), "9223372036854775807".as_ref(), "--json".as_ref()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("run_too_long") && text.contains("max_train_epochs"), "{text}");
}

/// Control bytes in captions (terminal escapes, carriage returns) are printed escaped.
#[test]
fn caption_control_bytes_are_escaped_in_the_text_report() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("2_x");
    for i in 0..3 {
        save(&picture(64, 64, i), &d.join(format!("{i}.png")), ImageFormat::Png);
        // The first tag (the trigger word) hides a screen clear and a carriage return.
        std::fs::write(d.join(format!("{i}.txt")), "sks\x1b[2J\x1b]0;pwned\x07\r, tag\u{9b}31m").unwrap();
    }
    let out = lorakit(&["dataset".as_ref(), "check".as_ref(), t.path().as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains(['\x1b', '\r', '\x07', '\u{9b}']), "raw control bytes printed: {text:?}");
    assert!(text.contains("sks\\u{1b}[2"), "{text}");
}
