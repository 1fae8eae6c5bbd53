//! `lorakit train` with a LyCORIS LoHa config from the command line, and what the other
//! commands do with the file it writes: `inspect` reads it, `generate` applies it, `resize`
//! refuses it by name.

use crate::common;
use common::{chessboard_data, lorakit, repo, text};

#[test]
fn a_loha_config_trains_from_the_cli_and_the_file_is_inspected_applied_and_not_resized() {
    let dir = tempfile::tempdir().unwrap();
    chessboard_data(dir.path(), 2);
    let model = repo("examples/quickstart/tiny-sd15");
    let config = dir.path().join("loha.toml");
    std::fs::write(
        &config,
        format!(
            r#"[model]
pretrained_model_name_or_path = "{model}"
[folders]
output_dir = "out"
output_name = "loha"
[dataset]
train_data_dir = "data"
resolution = "64"
min_bucket_reso = 64
max_bucket_reso = 128
[network]
network_module = "lycoris.kohya"
algo = "loha"
network_dim = 2
network_alpha = 1
conv_dim = 2
[training]
train_batch_size = 2
max_train_epochs = 1
[optimizer]
learning_rate = 1e-3
"#,
            model = model.display()
        ),
    )
    .unwrap();
    let o = lorakit(&["train".as_ref(), config.as_os_str(), "--dry-run".as_ref()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = lorakit(&["train".as_ref(), config.as_os_str()]);
    assert!(o.status.success(), "{}", text(&o));
    let file = dir.path().join("out/loha.safetensors");
    assert!(file.is_file(), "{}", text(&o));

    let o = lorakit(&["inspect".as_ref(), file.as_os_str()]);
    assert!(o.status.success() && text(&o).contains("LoHa"), "{}", text(&o));

    let png = dir.path().join("with_loha.png");
    let o = lorakit(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--lora",
        &format!("{}:0.8", file.display()),
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
    assert!(o.status.success() && png.is_file(), "{}", text(&o));

    let resized = dir.path().join("small.safetensors");
    let o = lorakit(&["resize".as_ref(), file.as_os_str(), resized.as_os_str(), "--rank".as_ref(), "1".as_ref()]);
    assert!(!o.status.success() && text(&o).contains("LoHa") && !resized.exists(), "{}", text(&o));
}
