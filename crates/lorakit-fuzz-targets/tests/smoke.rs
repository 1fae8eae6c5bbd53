//! Every fuzz target under the deterministic mutation harness, from seeds built here: the
//! stable-Rust run that CI repeats (`LORAKIT_FUZZ_ITERATIONS=200000` runs longer by hand;
//! `fuzz/README.md` records what ran).

use lorakit_fuzz_targets::mutate::{run, Budget};
use lorakit_fuzz_targets::*;

fn budget() -> Budget {
    Budget::from_env(10_000)
}

fn check(name: &str, target: fn(&[u8]), seeds: &[Vec<u8>], dictionary: &[&[u8]]) {
    let summary = run(name, target, seeds, dictionary, &budget());
    assert!(summary.inputs > seeds.len(), "{name}: {summary:?}");
}

const GUI_JSON: &str = r#"{"LoRA_type": "LyCORIS/LoKr", "LyCORIS_preset": "full", "network_dim": 100000,
"network_alpha": 1, "conv_dim": 8, "conv_alpha": 1, "factor": 6, "decompose_both": false, "epoch": 4,
"max_train_steps": "", "max_train_epochs": "", "train_batch_size": 2, "learning_rate": 0.0001,
"text_encoder_lr": 5e-05, "unet_lr": 0.0001, "lr_warmup": 10, "lr_scheduler_num_cycles": "",
"optimizer": "AdamW", "optimizer_args": "\"weight_decay=0.1\"", "noise_offset_type": "Multires",
"multires_noise_iterations": 6, "seed": "1234", "max_resolution": "512,512", "sdxl": false, "v2": false,
"sample_prompts": "a cat --n dog", "output_dir": "out", "dataset_config": "",
"additional_parameters": "--max_grad_norm 0.5 --lr_scheduler_args \"T_max=10\"", "xformers": "xformers"}"#;

const SD_SCRIPTS_TOML: &str = r#"[model_arguments]
pretrained_model_name_or_path = "/m/sd15.safetensors"
v2 = false
[additional_network_arguments]
network_module = "networks.lora"
network_dim = 16
network_alpha = 8
network_args = ["conv_dim=4", "conv_alpha=2", "down_lr_weight=sine+0.5", "loraplus_lr_ratio=16"]
text_encoder_lr = [5e-5, 5e-5]
[optimizer_arguments]
optimizer_type = "Prodigy"
optimizer_args = ["decouple=True", "betas=0.9,0.99"]
lr_warmup_steps = 0.1
[training_arguments]
max_train_epochs = 10
seed = 7
xformers = true
epoch = 3
"#;

const LYCORIS_TOML: &str = "network_module = \"lycoris.kohya\"\nnetwork_dim = 8\nnetwork_args = [\"algo=loha\", \"preset=full\", \"use_tucker=False\", \"rank_dropout=0\"]\n";

const DATASET_TOML: &str = r#"[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1
[[datasets]]
resolution = 512
batch_size = 2
enable_bucket = true
  [[datasets.subsets]]
  image_dir = "img"
  num_repeats = 10
  class_tokens = "sks"
  [[datasets.subsets]]
  image_dir = "reg"
  is_reg = true
"#;

#[test]
fn kohya_import_never_panics() {
    let seeds: Vec<Vec<u8>> = [GUI_JSON, SD_SCRIPTS_TOML, LYCORIS_TOML, DATASET_TOML, "{}", ""]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let dictionary: &[&[u8]] = &[
        b"\"LoRA_type\": \"Standard\", ",
        b"\"LoRA_type\": \"Kohya LoCon\", ",
        b"\"sdxl\": true, ",
        b"\"epoch\": 99999999999, ",
        b"\"max_train_steps\": -5, ",
        b"\"dataset_config\": \"d.toml\", ",
        b"\"additional_parameters\": \"--vae 'x' --flag\", ",
        b"\"text_encoder_lr\": 0, \"unet_lr\": 0, ",
        b"network_module = \"lycoris.kohya\"\n",
        b"network_module = \"networks.lora_flux\"\n",
        b"network_args = [\"algo=lokr\", \"factor=-1\"]\n",
        b"text_encoder_lr = []\n",
        b"[general]\n",
        b"[[prompts]]\ntarget = \"x\"\n",
        b"clip_skip = 99999\n",
        b"network_dim = 1e30\n",
        b"v2 = true\n",
    ];
    check("kohya_import", kohya_import, &seeds, dictionary);
}

#[test]
fn training_configs_never_panic_and_print_back_unchanged() {
    let quickstart = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart.toml")).unwrap();
    let seeds = vec![
        quickstart,
        b"[network]\nnetwork_dim = 8\nconv_dim = 4\n[optimizer]\nlearning_rate = 1e-4\nunet_lr = 2e-4\n".to_vec(),
        b"[loss]\nnoise_offset = 0.05\nmin_snr_gamma = 5\n[training]\nmax_train_epochs = 3\n".to_vec(),
    ];
    let dictionary: &[&[u8]] = &[
        b"[training]\n",
        b"[network]\n",
        b"max_train_steps = ",
        b"network_dim = ",
        b"learning_rate = ",
        b"output_name = \"a/b\"\n",
        b"model_family = \"sd2\"\n",
        b"nan",
        b"-inf",
    ];
    check("training_config", training_config, &seeds, dictionary);
}

#[test]
fn dataset_configs_never_panic() {
    let dictionary: &[&[u8]] =
        &[b"num_repeats = ", b"99999999999999", b"[[datasets.subsets]]\n", b"resolution = [512, 768]\n"];
    check("dataset_toml", dataset_toml, &[DATASET_TOML.as_bytes().to_vec()], dictionary);
}

#[test]
fn caption_text_never_panics() {
    let mut utf16 = vec![0xFF, 0xFE];
    for u in "tag, other tag\r\nsecond".encode_utf16() {
        utf16.extend_from_slice(&u.to_le_bytes());
    }
    let seeds = vec![b"1girl, solo, (smile:1.2), \\(x\\)\nline two".to_vec(), utf16];
    check("caption_text", caption_text, &seeds, &[b", ", b"\xE2\x80\x8B", b"\x1b[31m"]);
}

#[test]
fn image_probes_never_panic() {
    let img = image::RgbImage::from_fn(8, 6, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 128]));
    let encode = |format| {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    };
    let seeds =
        vec![encode(image::ImageFormat::Png), encode(image::ImageFormat::Jpeg), encode(image::ImageFormat::WebP)];
    check("image_probe", image_probe, &seeds, &[b"IHDR", b"\xFF\xC0", b"VP8L", b"\xFF\xFF\xFF\xFF"]);
}

#[test]
fn lora_headers_never_panic() {
    let header = r#"{"__metadata__":{"ss_network_dim":"4","ss_network_alpha":"1"},"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight":{"dtype":"F16","shape":[2,1],"data_offsets":[8,12]},"lora_unet_down_blocks_0_attentions_0_proj_in.alpha":{"dtype":"F32","shape":[],"data_offsets":[12,16]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64, 0, 60, 0, 60, 0, 0, 128, 63]);
    let dictionary: &[&[u8]] = &[b"\"BF16\"", b"\"U8\"", b"[0,0]", b"[99999999999,1]", b"\"shape\":[]", b".hada_w1_a"];
    check("lora_header", lora_header, &[file], dictionary);
}

#[test]
fn every_target_is_exercised_here() {
    let source = include_str!("smoke.rs");
    for (name, _) in TARGETS {
        assert!(source.contains(&format!("check(\"{name}\"")), "{name} has no smoke test");
    }
}
