//! Training end to end on a tiny SDXL-shaped model: examples/quickstart/tiny-sdxl, the SDXL
//! fixture's diffusers folder (tests/fixtures/reference/sdxl_tiny: two text encoders,
//! `text_time` size conditioning, a 3-level VAE) with both encoders' token embeddings widened to
//! CLIP's full vocabulary, so real captions tokenise. Checks the run, SGM module names, SDXL metadata, samples, logs, resume,
//! cached text-encoder outputs, and what SDXL refuses.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use lorakit_models::lora_inject::load_lora_file;
use lorakit_train::data::TrainData;
use lorakit_train::model::StableDiffusionModel;
use lorakit_train::{TrainConfig, Trainer};

use crate::common;
use common::{assert_resume_is_exact, chessboard_dataset, copy_model_folder, repo, small_run_toml};

/// The bundled tiny SDXL model (the fixture's weights, vocabularies widened to CLIP's; built by
/// tools/reference/make_quickstart_model.py).
fn tiny_sdxl() -> PathBuf {
    repo("examples/quickstart/tiny-sdxl")
}

/// A short SDXL run on `data` (the common small run: 2 epochs, batch 2, rank 4, conv rank 2).
fn config(dir: &Path, data: &Path, model: &Path, extra: &[&str]) -> TrainConfig {
    let text = small_run_toml(dir, data, model);
    let sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_toml_str(&text, &sets).unwrap_or_else(|e| panic!("{e}"))
}

fn load(model_dir: &Path) -> StableDiffusionModel {
    StableDiffusionModel::load(model_dir, DType::F32, &Device::Cpu, false).unwrap()
}

fn run(config: TrainConfig, model: &StableDiffusionModel) -> Result<lorakit_train::RunSummary, String> {
    let data = TrainData::load(&config).map_err(|e| e.to_string())?;
    let trainer = Trainer::new(config, model, data).map_err(|e| e.to_string())?;
    trainer.run(&AtomicBool::new(false), &mut |_| {}).map_err(|e| e.to_string())
}

#[test]
fn sdxl_trains_with_sgm_names_and_sdxl_metadata_samples_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_sdxl();
    let model = load(&model_dir);
    let data = chessboard_dataset(dir.path(), 1, 4);
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "chkbrd, (a board:1.3) --n blurry --w 64 --h 64 --s 2 --d 1\n").unwrap();
    let mut cfg = config(dir.path(), &data, &model_dir, &["model.model_family=sdxl"]);
    cfg.samples.sample_prompts = Some(prompts);
    cfg.samples.sample_every_n_epochs = 1;
    let summary = run(cfg, &model).unwrap();
    assert_eq!(summary.steps, 4, "4 images, batch 2, 2 epochs");
    assert!(summary.losses.iter().all(|l| l.is_finite()), "{:?}", summary.losses);

    let out = dir.path().join("out");
    let file = lorakit_lora::safetensors_file::LoraFile::open(out.join("tiny.safetensors")).unwrap();
    let names: Vec<&str> = file.tensor_names().collect();
    for expected in [
        // SGM names as sd-scripts' SDXL U-Net has them: attention in input block 4 (level 1).
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
        "lora_unet_middle_block_1_transformer_blocks_2_ff_net_2.lora_up.weight",
        // conv_dim: ResNet convs and the samplers under their SGM names.
        "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight",
        "lora_unet_input_blocks_3_0_op.lora_down.weight",
        "lora_unet_output_blocks_2_2_conv.lora_down.weight",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
        "lora_te2_text_model_encoder_layers_3_mlp_fc2.lora_up.weight",
    ] {
        assert!(names.contains(&expected), "{expected} missing; have e.g. {:?}", &names[..names.len().min(8)]);
    }
    assert!(!names.iter().any(|n| n.starts_with("lora_unet_down_blocks") || n.starts_with("lora_te_")));
    let m = file.metadata();
    for (k, v) in [
        ("ss_base_model_version", "sdxl_base_v1-0"),
        ("ss_v2", "False"),
        ("modelspec.architecture", "stable-diffusion-xl-v1-base/lora"),
        ("modelspec.implementation", "https://github.com/Stability-AI/generative-models"),
        ("modelspec.prediction_type", "epsilon"),
    ] {
        assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
    }

    // The file loads back onto the model it was trained for (every module matched).
    let components = model.pipeline().lora_components();
    let loaded =
        load_lora_file(&out.join("tiny.safetensors"), 1.0, false, &components, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.module_count, names.iter().filter(|n| n.ends_with(".lora_down.weight")).count());

    let samples: Vec<_> = std::fs::read_dir(out.join("sample"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    assert_eq!(samples.len(), 2, "a sample per epoch: {samples:?}");
    let logs: Vec<_> = std::fs::read_dir(out.join("logs")).unwrap().collect();
    assert!(!logs.is_empty(), "logs written");
}

#[test]
fn sdxl_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_sdxl();
    let model = load(&model_dir);
    let data = chessboard_dataset(dir.path(), 3, 3);
    let mut cfg = config(dir.path(), &data, &model_dir, &["save.save_state=true", "training.train_batch_size=1"]);
    cfg.folders.output_dir = dir.path().join("full");
    assert_resume_is_exact(&cfg, &model, dir.path(), 5);
}

#[test]
fn sdxl_trains_from_cached_text_encoder_outputs_and_refuses_clip_skip() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_sdxl();
    let model = load(&model_dir);
    let data = chessboard_dataset(dir.path(), 1, 2);
    let live = run(config(&dir.path().join("a"), &data, &model_dir, &["network.network_train_unet_only=true"]), &model)
        .unwrap();
    let cached = run(
        config(
            &dir.path().join("b"),
            &data,
            &model_dir,
            &["network.network_train_unet_only=true", "training.cache_text_encoder_outputs=true"],
        ),
        &model,
    )
    .unwrap();
    for (a, b) in live.losses.iter().zip(&cached.losses) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "live {a} vs cached {b}");
    }

    let err = run(config(&dir.path().join("c"), &data, &model_dir, &["model.clip_skip=2"]), &model).unwrap_err();
    assert!(err.contains("clip_skip") && err.contains("penultimate"), "{err}");
    let err = model.check_family(Some("sd1"), &model_dir).unwrap_err().to_string();
    assert!(err.contains("an SDXL checkpoint") && err.contains("SD 1.x"), "{err}");
    model.check_family(Some("sdxl"), &model_dir).unwrap();
}

/// The bundled tiny SDXL model declaring itself v-prediction with a zero-terminal-SNR schedule
/// (what NoobAI-XL v-pred's diffusers folder says in its scheduler config).
fn vpred_ztsnr_folder(dir: &Path) -> PathBuf {
    let components = ["unet", "vae", "scheduler", "text_encoder", "text_encoder_2"];
    let dst = copy_model_folder(&repo("examples/quickstart/tiny-sdxl"), &dir.join("tiny-sdxl-vpred"), &components);
    let sched = dst.join("scheduler/scheduler_config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&sched).unwrap()).unwrap();
    config["prediction_type"] = "v_prediction".into();
    config["rescale_betas_zero_snr"] = true.into();
    std::fs::write(&sched, config.to_string()).unwrap();
    dst
}

#[test]
fn v_prediction_zero_terminal_snr_sdxl_trains_only_as_declared() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = vpred_ztsnr_folder(dir.path());
    let err = StableDiffusionModel::load(&model_dir, DType::F32, &Device::Cpu, false).err().unwrap().to_string();
    assert!(err.contains("v-prediction") && err.contains("v_parameterization = true"), "{err}");
    let model = StableDiffusionModel::load(&model_dir, DType::F32, &Device::Cpu, true).unwrap();
    let err = model.check_schedule(false, &model_dir).unwrap_err().to_string();
    assert!(err.contains("zero_terminal_snr = true"), "{err}");
    model.check_schedule(true, &model_dir).unwrap();

    let data = chessboard_dataset(dir.path(), 1, 2);
    let cfg = config(
        dir.path(),
        &data,
        &model_dir,
        &["model.v_parameterization=true", "loss.zero_terminal_snr=true", "training.gradient_checkpointing=true"],
    );
    let summary = run(cfg, &model).unwrap();
    assert!(summary.losses.iter().all(|l| l.is_finite()), "{:?}", summary.losses);
    let file = lorakit_lora::safetensors_file::LoraFile::open(dir.path().join("out/tiny.safetensors")).unwrap();
    let m = file.metadata();
    for (k, v) in [
        ("ss_base_model_version", "sdxl_base_v1-0"),
        ("modelspec.prediction_type", "v"),
        ("ss_zero_terminal_snr", "True"),
    ] {
        assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
    }
}

#[test]
fn gradient_checkpointing_gives_the_same_sdxl_run() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_sdxl();
    let model = load(&model_dir);
    let data = chessboard_dataset(dir.path(), 1, 2);
    let plain = run(config(&dir.path().join("a"), &data, &model_dir, &[]), &model).unwrap();
    let ckpt = run(config(&dir.path().join("b"), &data, &model_dir, &["training.gradient_checkpointing=true"]), &model)
        .unwrap();
    for (a, b) in plain.losses.iter().zip(&ckpt.losses) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "plain {a} vs checkpointed {b}");
    }
}

#[test]
fn sdxl_block_dims_use_sd_scripts_23_sdxl_slots() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_sdxl();
    let model = load(&model_dir);
    let data = chessboard_dataset(dir.path(), 1, 2);
    // Slot 5 = input_blocks.4 (rank 2), slot 11 = middle_block.1 (rank 0: no modules), the rest 4.
    let mut dims = vec!["4"; 23];
    dims[5] = "2";
    dims[11] = "0";
    let dims = format!("network.block_dims={}", dims.join(","));
    let cfg = config(dir.path(), &data, &model_dir, &["model.model_family=sdxl", "network.conv_dim=0", &dims]);
    run(cfg, &model).unwrap();
    let file = lorakit_lora::safetensors_file::LoraFile::open(dir.path().join("out/tiny.safetensors")).unwrap();
    let rank = |module: &str| file.info(&format!("{module}.lora_down.weight")).map(|i| i.shape[0]);
    assert_eq!(rank("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"), Some(2));
    assert_eq!(rank("lora_unet_input_blocks_7_1_transformer_blocks_0_attn1_to_q"), Some(4));
    assert!(!file.tensor_names().any(|n| n.starts_with("lora_unet_middle_block_1_")));

    let err = TrainConfig::from_toml_str("[model]\nmodel_family = \"sdxl\"\n[network]\nblock_dims = \"4,4,4\"\n", &[])
        .unwrap_err();
    assert!(err.contains("block_dims") && err.contains("23"), "{err}");
}

#[test]
fn sdxl_fp8_base_no_half_vae_and_loha_train_on_cpu() {
    use lorakit_train::model::{TrainableModel, WeightStorage};
    let dir = tempfile::tempdir().unwrap();
    let model_dir = tiny_sdxl();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let half = |storage: WeightStorage| {
        StableDiffusionModel::load_with(&model_dir, DType::F16, &Device::Cpu, false, storage).unwrap()
    };
    let fp16 = ["accelerate.mixed_precision=fp16", "optimizer.lr_warmup_steps=0"];
    let plain =
        run(config(&dir.path().join("f16"), &data, &model_dir, &fp16), &half(WeightStorage::default())).unwrap();

    // fp8_base stores both text encoders' and the U-Net's weights in 1 byte: close, not equal.
    let fp8 = half(WeightStorage { fp8_base: true, no_half_vae: true });
    assert_eq!(fp8.pipeline().vae.dtype(), DType::F32, "SDXL's VAE kept in f32 (no_half_vae)");
    assert_eq!(fp8.dtype(), DType::F16);
    let mut sets = fp16.to_vec();
    sets.extend(["accelerate.fp8_base=true", "accelerate.no_half_vae=true"]);
    let low = run(config(&dir.path().join("fp8"), &data, &model_dir, &sets), &fp8).unwrap();
    assert_ne!(low.losses, plain.losses);
    for (a, b) in low.losses.iter().zip(&plain.losses) {
        assert!((a - b).abs() < 0.1 * b.abs(), "fp8 {a} vs f16 {b}");
    }

    // A LyCORIS LoHa on SDXL: SGM names, and the file applies back onto the model.
    let model = load(&model_dir);
    let cfg = config(
        &dir.path().join("loha"),
        &data,
        &model_dir,
        &["network.network_module=lycoris.kohya", "network.algo=loha", "network.conv_dim=0"],
    );
    run(cfg, &model).unwrap();
    let path = dir.path().join("loha/out/tiny.safetensors");
    let file = lorakit_lora::safetensors_file::LoraFile::open(&path).unwrap();
    assert!(file.tensor_names().any(|n| n == "lora_unet_input_blocks_4_1_proj_in.hada_w1_a"));
    let components = model.pipeline().lora_components();
    load_lora_file(&path, 1.0, false, &components, DType::F32, &Device::Cpu).unwrap();
}
