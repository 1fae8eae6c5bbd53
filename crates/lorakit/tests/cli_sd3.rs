//! SD3 from the command line as a user runs it, on the tiny SD3.5-shaped pipeline
//! (tests/fixtures/reference/sd3_tiny/pipeline): `lorakit train` a LoRA, `lorakit inspect` it,
//! `lorakit generate` with and without it (and a grid), and what SD3 refuses.

use std::path::{Path, PathBuf};

mod common;
use common::{chessboard_data, lorakit, repo, text};

fn pipeline() -> PathBuf {
    repo("tests/fixtures/reference/sd3_tiny/pipeline")
}

/// A tiny SD3 run's config: 4 chessboard images at 32 px.
fn tiny_config(dir: &Path) -> PathBuf {
    chessboard_data(dir, 4);
    let path = dir.join("run.toml");
    std::fs::write(
        &path,
        format!(
            r#"[model]
pretrained_model_name_or_path = "{model}"
model_family = "sd3"
t5xxl_max_token_length = 16
[folders]
output_dir = "out"
output_name = "tiny"
[dataset]
train_data_dir = "data"
resolution = "32"
min_bucket_reso = 32
max_bucket_reso = 64
bucket_reso_steps = 16
[network]
network_dim = 4
network_alpha = 4
network_train_unet_only = true
[training]
train_batch_size = 2
max_train_epochs = 2
[optimizer]
learning_rate = 1e-2
"#,
            model = pipeline().display()
        ),
    )
    .unwrap();
    path
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8().into_raw()
}

#[test]
fn train_inspect_and_generate_an_sd3_lora() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let o = lorakit(&["train", cfg.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = lorakit(&["train", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let lora = dir.path().join("out/tiny.safetensors");
    assert!(lora.is_file(), "{}", text(&o));
    let o = lorakit(&["inspect", lora.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("SD3"), "{}", text(&o));

    let model = pipeline();
    let common = ["--prompt", "chkbrd, a board", "--width", "32", "--height", "32", "--steps", "2", "--seed", "5"];
    let base = dir.path().join("base.png");
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "-o", base.to_str().unwrap()];
    args.extend(common);
    let o = lorakit(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("SD3.5 Large-shaped MMDiT"), "{}", text(&o));
    let with = dir.path().join("with.png");
    let spec = format!("{}:1.0", lora.display());
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--lora", &spec, "-o", with.to_str().unwrap()];
    args.extend(common);
    let o = lorakit(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(pixels(&base).len(), 32 * 32 * 3);
    assert_ne!(pixels(&base), pixels(&with), "the trained LoRA changes the image");

    // An XY grid: the base row and the LoRA, two prompts.
    let grid = dir.path().join("grid.png");
    let o = lorakit(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--grid",
        "--grid-baseline",
        "--lora",
        lora.to_str().unwrap(),
        "--prompt",
        "a",
        "--prompt",
        "b",
        "--width",
        "32",
        "--height",
        "32",
        "--steps",
        "1",
        "-o",
        grid.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let img = image::open(&grid).unwrap();
    assert!(img.width() >= 64 && img.height() >= 64, "{}×{}", img.width(), img.height());
}

#[test]
fn generate_refuses_what_does_not_apply_to_sd3() {
    let dir = tempfile::tempdir().unwrap();
    let model = pipeline();
    let out = dir.path().join("x.png");
    for (extra, expected) in [
        (&["--sampler", "ddim"][..], "--sampler does not apply"),
        (&["--clip-skip", "2"][..], "--clip-skip does not apply to SD3"),
        (&["--blocks-to-swap", "1"][..], "--blocks-to-swap does not apply to SD3"),
    ] {
        let mut args =
            vec!["generate", "--model", model.to_str().unwrap(), "--prompt", "x", "-o", out.to_str().unwrap()];
        args.extend(extra);
        let o = lorakit(&args);
        assert!(!o.status.success());
        assert!(text(&o).contains(expected), "{extra:?}: {}", text(&o));
    }
    assert!(!out.exists());
}
