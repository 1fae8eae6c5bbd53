//! `lorakit generate` end to end on the bundled tiny SDXL model (examples/quickstart/tiny-sdxl):
//! size conditioning, both text encoders, and SDXL LoRA files in every naming users meet —
//! sd-scripts' own file with diffusers-layout U-Net names (the reference fixture's), the same
//! converted to PEFT/diffusers names and back to kohya's SGM names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn lorakit<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorakit")).args(args).output().expect("run lorakit")
}

fn ok(out: &Output) {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
}

fn generate(extra: &[&str], out: &Path) -> Output {
    let model = repo("examples/quickstart/tiny-sdxl");
    let mut args: Vec<String> = vec!["generate".into(), "--model".into(), model.display().to_string()];
    args.extend(["--width", "64", "--height", "48", "--steps", "3", "--seed", "5"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["-o".to_string(), out.display().to_string()]);
    lorakit(&args)
}

fn pixels(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

/// Mean absolute difference of two images' 8-bit values.
fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    sum as f64 / a.as_raw().len() as f64
}

#[test]
fn sdxl_generates_with_kohya_peft_and_sgm_named_loras() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = ["--prompt", "chkbrd, (a chessboard:1.2), photo", "--negative", "blurry"];
    let base = dir.path().join("base.png");
    ok(&generate(&prompt, &base));
    let again = dir.path().join("again.png");
    ok(&generate(&prompt, &again));
    assert_eq!(std::fs::read(&base).unwrap(), std::fs::read(&again).unwrap(), "same seed, same image");
    assert_eq!(pixels(&base).dimensions(), (64, 48));

    // sd-scripts' file from the reference fixture (kohya names in the diffusers layout).
    let kohya = repo("tests/fixtures/reference/sdxl_tiny/lora/lora.safetensors");
    let with_kohya = dir.path().join("kohya.png");
    ok(&generate(&[&prompt[..], &["--lora", kohya.to_str().unwrap()]].concat(), &with_kohya));
    let lora_effect = mean_abs_diff(&pixels(&base), &pixels(&with_kohya));
    assert!(lora_effect > 1.0, "the LoRA changes the image (mean difference {lora_effect})");

    // The same LoRA as PEFT/diffusers names, and back to kohya names (SGM layout).
    let peft = dir.path().join("peft.safetensors");
    ok(&lorakit(&["convert", kohya.to_str().unwrap(), peft.to_str().unwrap(), "--to", "peft"]));
    let sgm = dir.path().join("sgm.safetensors");
    ok(&lorakit(&["convert", peft.to_str().unwrap(), sgm.to_str().unwrap(), "--to", "kohya"]));
    let sgm_names = lorakit_lora::safetensors_file::LoraFile::open(&sgm).unwrap();
    assert!(sgm_names.tensor_names().any(|n| n.starts_with("lora_unet_input_blocks_4_1_")), "SGM names");
    for (file, name) in [(&peft, "peft.png"), (&sgm, "sgm.png")] {
        let out = dir.path().join(name);
        ok(&generate(&[&prompt[..], &["--lora", file.to_str().unwrap()]].concat(), &out));
        let d = mean_abs_diff(&pixels(&with_kohya), &pixels(&out));
        assert!(d < 0.05 * lora_effect, "{name}: {d} from the kohya file's image (LoRA effect {lora_effect})");
    }
}

#[test]
fn sdxl_refuses_clip_skip_and_sd15_loras_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let out = generate(&["--prompt", "a", "--clip-skip", "1"], &dir.path().join("x.png"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("penultimate"), "{err}");

    let sd15 = repo("tests/fixtures/reference/sd15_tiny/lora/lora.safetensors");
    let out = generate(&["--prompt", "a", "--lora", sd15.to_str().unwrap()], &dir.path().join("y.png"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("another base model"), "{err}");
    assert!(!dir.path().join("y.png").exists());
}
