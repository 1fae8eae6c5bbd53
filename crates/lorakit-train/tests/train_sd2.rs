//! Training end to end on a tiny SD 2.x v-prediction model: the SD 2 fixture's diffusers folder
//! (tests/fixtures/reference/sd2_tiny, linear projections, GELU text encoder, scheduler
//! `prediction_type = "v_prediction"`) with its token embedding widened to CLIP's full
//! vocabulary, so real captions tokenise. Checks the run, the SD 2 v-prediction metadata and
//! a sample image.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use lorakit_train::data::TrainData;
use lorakit_train::model::StableDiffusionModel;
use lorakit_train::{TrainConfig, Trainer};

use crate::common;
use common::{chessboard_dataset, copy_model_folder, repo, small_run_toml};

/// The fixture folder, its text encoder's 1,000-row token embedding grown to 49,408 rows
/// (the new rows deterministic pseudo-random values).
fn sd2_model_folder(dir: &Path) -> PathBuf {
    let src = repo("tests/fixtures/reference/sd2_tiny/diffusers");
    let dst = copy_model_folder(&src, &dir.join("sd2-tiny"), &["unet", "vae", "scheduler", "text_encoder"]);

    let te = dst.join("text_encoder");
    let mut tensors = candle_core::safetensors::load(te.join("model.safetensors"), &Device::Cpu).unwrap();
    let key = "text_model.embeddings.token_embedding.weight";
    let small = tensors[key].to_dtype(DType::F32).unwrap();
    let width = small.dim(1).unwrap();
    let extra = lorakit_nn::gradcheck::pseudo_random(&[49408 - small.dim(0).unwrap(), width], 11).unwrap();
    let grown = Tensor::cat(&[small, extra.to_dtype(DType::F32).unwrap()], 0).unwrap();
    tensors.insert(key.to_string(), grown.to_dtype(DType::F16).unwrap());
    candle_core::safetensors::save(&tensors, te.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(te.join("config.json")).unwrap()).unwrap();
    config["vocab_size"] = 49408.into();
    config["eos_token_id"] = 2.into(); // as SD 2's published config: pool at the largest id
    std::fs::write(te.join("config.json"), config.to_string()).unwrap();
    dst
}

#[test]
fn sd2_v_prediction_model_trains_and_writes_sd2_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = sd2_model_folder(dir.path());
    let data = chessboard_dataset(dir.path(), 1, 4);
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "chkbrd, (a board:1.3) --w 64 --h 64 --s 2 --d 1\n").unwrap();
    let text = format!(
        "{}\n[samples]\nsample_prompts = \"{}\"\nsample_every_n_epochs = 1\n",
        small_run_toml(dir.path(), &data, &model_dir),
        prompts.display()
    );
    let config = TrainConfig::from_toml_str(&text, &["model.v_parameterization=true".to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    let model = StableDiffusionModel::load(&model_dir, DType::F32, &Device::Cpu, true).unwrap();
    let data = TrainData::load(&config).unwrap();
    let summary = Trainer::new(config, &model, data).unwrap().run(&AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(summary.steps, 4, "4 images, batch 2, 2 epochs");
    assert!(summary.losses.iter().all(|l| l.is_finite()), "{:?}", summary.losses);

    let out = dir.path().join("out");
    let file = lorakit_lora::safetensors_file::LoraFile::open(out.join("tiny.safetensors")).unwrap();
    let names: Vec<&str> = file.tensor_names().collect();
    // The diffusers folder's encoder is already cut to the layers SD 2 conditions on (3 here).
    assert!(names.contains(&"lora_te_text_model_encoder_layers_2_mlp_fc2.lora_up.weight"));
    assert!(!names.iter().any(|n| n.starts_with("lora_te_text_model_encoder_layers_3_")));
    // SD 2's transformers project in and out with linears: sd-scripts targets them.
    assert!(names.contains(&"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"));
    let m = file.metadata();
    for (k, v) in [
        ("ss_v2", "True"),
        ("ss_base_model_version", "sd_v2_v"),
        ("modelspec.architecture", "stable-diffusion-v2-768-v/lora"),
        ("modelspec.prediction_type", "v"),
    ] {
        assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
    }
    let samples: Vec<_> = std::fs::read_dir(out.join("sample"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    assert!(!samples.is_empty(), "a sample image per save point");
}
