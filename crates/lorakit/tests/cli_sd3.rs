//! SD3 from the command line as a user runs it, on the tiny SD3.5-shaped pipeline
//! (tests/fixtures/reference/sd3_tiny/pipeline): `lorakit train` a LoRA, `lorakit inspect` it,
//! `lorakit generate` with and without it (and a grid), with `--blocks-to-swap` (on a 4-block
//! copy), and what SD3 refuses.

use std::path::{Path, PathBuf};

use crate::common;
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
        // sd-scripts swaps at most depth − 2 joint blocks: none of this model's 2.
        (&["--blocks-to-swap", "1"][..], "Cannot swap more than 0 blocks. Requested: 1 blocks."),
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

/// The tiny pipeline with a 4-block transformer (sd-scripts swaps at most depth − 2 blocks, none
/// of the fixture's 2): blocks 0, 1, 2 are its block 0, block 3 its last (pre-only) one; the
/// other parts copied as they are. Returns the folder made under `dir`.
fn four_block_pipeline(dir: &Path) -> PathBuf {
    let out = dir.join("sd3_4_blocks");
    for part in ["scheduler", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"] {
        std::fs::create_dir_all(out.join(part)).unwrap();
        for entry in std::fs::read_dir(pipeline().join(part)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, out.join(part).join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(pipeline().join("model_index.json"), out.join("model_index.json")).unwrap();
    let weights = out.join("transformer").join("diffusion_pytorch_model.safetensors");
    let mut deep = std::collections::HashMap::new();
    for (name, t) in candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap() {
        match name.strip_prefix("transformer_blocks.") {
            Some(rest) if rest.starts_with("0.") => {
                for i in 0..3 {
                    deep.insert(format!("transformer_blocks.{i}.{}", &rest[2..]), t.clone());
                }
            }
            Some(rest) if rest.starts_with("1.") => {
                deep.insert(format!("transformer_blocks.3.{}", &rest[2..]), t);
            }
            Some(_) => panic!("{name}: the fixture was expected to have 2 blocks"),
            None => {
                deep.insert(name, t);
            }
        }
    }
    candle_core::safetensors::save(&deep, &weights).unwrap();
    let config = out.join("transformer").join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\"num_layers\": 2"), "{text}");
    std::fs::write(&config, text.replace("\"num_layers\": 2", "\"num_layers\": 4")).unwrap();
    out
}

/// `--blocks-to-swap` (sd-scripts' `--blocks_to_swap`): the last N joint blocks stay in RAM and
/// are copied to the device when they run — on the CPU an identity copy, so the same image; more
/// than depth − 2 is refused with sd-scripts' message.
#[test]
fn generate_with_blocks_to_swap_gives_the_same_image() {
    let dir = tempfile::tempdir().unwrap();
    let model = four_block_pipeline(dir.path());
    let common = ["--prompt", "chkbrd, a board", "--width", "32", "--height", "32", "--steps", "2", "--seed", "5"];
    let image = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "-o", out.to_str().unwrap()];
        args.extend(common);
        args.extend(extra);
        let o = lorakit(&args);
        assert!(o.status.success(), "{extra:?}: {}", text(&o));
        assert!(text(&o).contains("4 joint blocks"), "{}", text(&o));
        pixels(&out)
    };
    let plain = image("plain.png", &[]);
    assert_eq!(image("swapped.png", &["--blocks-to-swap", "2"]), plain, "streaming blocks changes no pixel");
    let out = dir.path().join("too_many.png");
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend(common);
    args.extend(["--blocks-to-swap", "3"]);
    let o = lorakit(&args);
    assert!(!o.status.success());
    assert!(text(&o).contains("Cannot swap more than 2 blocks. Requested: 3 blocks."), "{}", text(&o));
    assert!(!out.exists());
}
