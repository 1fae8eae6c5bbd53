//! `lorakit train` on SDXL from the command line, as a user runs it: the bundled SDXL
//! quickstart config (examples/quickstart-sdxl.toml, tiny SDXL-shaped model) shortened with
//! `--set`, then the LoRA it wrote applied by `lorakit generate`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn lorakit<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorakit")).args(args).output().expect("run lorakit")
}

#[test]
fn the_sdxl_quickstart_trains_from_the_cli_and_its_lora_generates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = repo("examples/quickstart-sdxl.toml");
    // Two of the sample images (as train and as regularisation folder) keep the run short.
    let data = dir.path().join("data/1_chessboard");
    std::fs::create_dir_all(&data).unwrap();
    for name in ["left01.jpg", "left01.txt", "left02.jpg", "left02.txt"] {
        std::fs::copy(repo("examples/dataset/img/8_chessboard").join(name), data.join(name)).unwrap();
    }
    let sets = [
        format!("folders.output_dir={}", out.display()),
        format!("dataset.train_data_dir={}", dir.path().join("data").display()),
        format!("dataset.reg_data_dir={}", dir.path().join("data").display()),
        "training.max_train_steps=2".into(),
        "training.cache_latents=false".into(),
        "training.train_batch_size=2".into(),
        "dataset.resolution=64".into(),
        "samples.sample_every_n_epochs=0".into(),
        "save.save_state=false".into(),
    ];
    let mut args = vec!["train".to_string(), config.display().to_string()];
    for s in &sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    let dry = lorakit(&[&args[..], &["--dry-run".to_string()]].concat());
    let stderr = String::from_utf8_lossy(&dry.stderr);
    assert!(dry.status.success(), "{stderr}");
    let text = format!("{stderr}{}", String::from_utf8_lossy(&dry.stdout));
    assert!(text.contains("needs about"), "the dry run states the memory it needs: {text}");

    let run = lorakit(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let lora = out.join("quickstart-sdxl.safetensors");
    let file = lorakit_lora::safetensors_file::LoraFile::open(&lora).unwrap();
    assert_eq!(file.metadata()["ss_base_model_version"], "sdxl_base_v1-0");
    assert!(file.tensor_names().any(|n| n.starts_with("lora_unet_output_blocks_")));
    assert!(file.tensor_names().any(|n| n.starts_with("lora_te2_")));

    let png = dir.path().join("x.png");
    let model = repo("examples/quickstart/tiny-sdxl");
    let gen = lorakit(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--lora",
        &format!("{}:0.8", lora.display()),
        "--prompt",
        "chkbrd",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "2",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    assert!(png.exists());
}
