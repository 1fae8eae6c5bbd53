//! Training end to end on the tiny SD3.5-shaped pipeline (tests/fixtures/reference/sd3_tiny/
//! pipeline: an MMDiT with q/k norms, 2 joint blocks of width 32, a 2-level VAE with SD3's 16
//! channels, scale and shift, CLIP-L and CLIP-G of width 32 and T5 of width 64 with the real
//! vocabularies; f16 weights computed in f32): the run on SD3's flow objective, kohya's
//! `lora_sd3` module names and sd-scripts' metadata, samples, exact resume, the lora_sd3 network
//! arguments, per-encoder dropout, the position-table options, cached text-encoder outputs,
//! block swap (on a 4-block copy), and what SD3 refuses.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use lorakit_models::checkpoint::sd3::Sd3Paths;
use lorakit_models::sd3_pipeline::Sd3Options;
use lorakit_train::data::TrainData;
use lorakit_train::sd3_model::{Sd3Model, Sd3TrainOptions};
use lorakit_train::{TrainConfig, Trainer};

use crate::common;
use common::{assert_resume_is_exact, chessboard_dataset, repo, small_run_toml};

fn tiny_sd3() -> PathBuf {
    repo("tests/fixtures/reference/sd3_tiny/pipeline")
}

/// A short SD3 run on `data`: the common small run (2 epochs, batch 2, rank 4) at 32 px (the
/// tiny VAE's 2× cells in 2×2 patches: 4-pixel steps), without conv modules, 16 T5 tokens.
fn config(dir: &Path, data: &Path, extra: &[&str]) -> TrainConfig {
    config_for(&tiny_sd3(), dir, data, extra)
}

/// [`config`] for the model at `model`.
fn config_for(model: &Path, dir: &Path, data: &Path, extra: &[&str]) -> TrainConfig {
    let text = small_run_toml(dir, data, model)
        .replace("resolution = \"64\"", "resolution = \"32\"")
        .replace("min_bucket_reso = 64", "min_bucket_reso = 32")
        .replace("max_bucket_reso = 128", "max_bucket_reso = 64")
        .replace("bucket_reso_steps = 64", "bucket_reso_steps = 16")
        .replace("conv_dim = 2\n", "");
    let mut sets: Vec<String> = vec!["model.t5xxl_max_token_length=16".into()];
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_toml_str(&text, &sets).unwrap_or_else(|e| panic!("{e}"))
}

/// The model as `lorakit train` loads it for `config` (through the dry run's loader).
fn load(config: &TrainConfig) -> Sd3Model {
    let m = &config.model;
    let opts = Sd3Options {
        t5_max_length: m.t5xxl_max_token_length,
        blocks_to_swap: config.accelerate.blocks_to_swap.unwrap_or(0),
        ..Sd3Options::default()
    };
    let train = Sd3TrainOptions {
        dropout: lorakit_models::sd3_text::Sd3DropoutRates {
            clip_l: m.clip_l_dropout_rate,
            clip_g: m.clip_g_dropout_rate,
            t5: m.t5_dropout_rate,
        },
        pos_emb_random_crop_rate: m.pos_emb_random_crop_rate,
    };
    let model = m.pretrained_model_name_or_path.clone().unwrap_or_else(tiny_sd3);
    Sd3Model::load(&Sd3Paths { model, ..Default::default() }, &opts, train, &Device::Cpu).unwrap()
}

fn run(
    config: TrainConfig,
    model: &dyn lorakit_train::model::TrainableModel,
) -> Result<lorakit_train::RunSummary, String> {
    let data = TrainData::load(&config).map_err(|e| e.to_string())?;
    let trainer = Trainer::new(config, model, data).map_err(|e| e.to_string())?;
    trainer.run(&AtomicBool::new(false), &mut |_| {}).map_err(|e| e.to_string())
}

fn modules(path: &Path) -> BTreeSet<String> {
    let file = lorakit_lora::safetensors_file::LoraFile::open(path).unwrap();
    file.tensor_names().map(|n| n.split('.').next().unwrap().to_string()).collect()
}

#[test]
fn sd3_trains_with_kohya_names_sd3_metadata_samples_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 4);
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "chkbrd, a board --w 32 --h 32 --s 2 --d 1 --l 4\n").unwrap();
    let mut cfg = config(dir.path(), &data, &[]);
    cfg.samples.sample_prompts = Some(prompts);
    cfg.samples.sample_every_n_epochs = 1;
    let model = load(&cfg);
    let summary = run(cfg, &model).unwrap();
    assert_eq!(summary.steps, 4, "4 images, batch 2, 2 epochs");
    assert!(summary.losses.iter().all(|l| l.is_finite() && *l > 0.0), "{:?}", summary.losses);

    let out = dir.path().join("out");
    let lora = out.join("tiny.safetensors");
    let modules = modules(&lora);
    // Block 0: both sides' qkv, proj, fc1, fc2, modulation (10); block 1 (last): the context
    // side is pre-only (qkv, modulation) + the x side's 5. CLIP-L and CLIP-G: 2 layers × 6 each.
    assert_eq!(modules.iter().filter(|m| m.starts_with("lora_unet_")).count(), 17, "{modules:?}");
    assert_eq!(modules.iter().filter(|m| m.starts_with("lora_te1_")).count(), 12);
    assert_eq!(modules.iter().filter(|m| m.starts_with("lora_te2_")).count(), 12);
    assert!(!modules.iter().any(|m| m.starts_with("lora_te3_")), "T5 is trained only with network.train_t5xxl");
    for expected in [
        "lora_unet_joint_blocks_0_context_block_attn_qkv",
        "lora_unet_joint_blocks_0_x_block_mlp_fc2",
        "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1",
        "lora_unet_joint_blocks_1_x_block_attn_proj",
        "lora_te2_text_model_encoder_layers_1_mlp_fc2",
    ] {
        assert!(modules.contains(expected), "{expected} missing");
    }
    assert!(!modules.contains("lora_unet_joint_blocks_1_context_block_attn_proj"), "pre-only side");
    let file = lorakit_lora::safetensors_file::LoraFile::open(&lora).unwrap();
    let m = file.metadata();
    for (k, v) in [
        ("ss_base_model_version", "5-large"),
        ("ss_network_module", "networks.lora_sd3"),
        ("modelspec.architecture", "stable-diffusion-3-5-large/lora"),
        ("modelspec.implementation", "https://github.com/Stability-AI/generative-models"),
        ("ss_apply_lg_attn_mask", "False"),
        ("ss_apply_t5_attn_mask", "False"),
        ("ss_weighting_scheme", "uniform"),
    ] {
        assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
    }
    let samples: Vec<_> = std::fs::read_dir(out.join("sample")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(samples.iter().filter(|p| p.extension().is_some_and(|e| e == "png")).count() >= 2, "{samples:?}");
    // The file applies to the model by name, as `lorakit generate` applies it.
    let components = model.pipeline().lora_components();
    let loaded = lorakit_models::lora_inject::load_lora_file(
        &lora,
        1.0,
        false,
        &components,
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(loaded.module_count, 41);
}

#[test]
fn sd3_resume_is_bit_for_bit_with_dropout_and_position_crops() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 4);
    let cfg = config(
        dir.path(),
        &data,
        &[
            "save.save_state=true",
            "model.clip_l_dropout_rate=0.3",
            "model.t5_dropout_rate=0.3",
            "model.pos_emb_random_crop_rate=0.5",
        ],
    );
    let model = load(&cfg);
    assert_resume_is_exact(&cfg, &model, dir.path(), 3);
}

#[test]
fn sd3_network_arguments_and_t5_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let cfg = config(
        dir.path(),
        &data,
        &[
            "network.context_attn_dim=0",
            "network.x_mlp_dim=2",
            "network.emb_dims=\"[2,0,2,0,0,2]\"",
            "network.train_block_indices=\"1\"",
            "network.train_t5xxl=true",
            "network.split_qkv=true",
            "training.max_train_epochs=1",
        ],
    );
    let model = load(&cfg);
    run(cfg, &model).unwrap();
    let lora = dir.path().join("out").join("tiny.safetensors");
    let modules = modules(&lora);
    let unet: Vec<&String> = modules.iter().filter(|m| m.starts_with("lora_unet_")).collect();
    // Block 1 only, without the context side's attention: context modulation + the x side's 5;
    // the embedders emb_dims names (context_embedder, x_embedder's conv, final_layer.linear).
    assert!(unet.iter().all(|m| !m.contains("joint_blocks_0_")), "{unet:?}");
    assert!(!modules.contains("lora_unet_joint_blocks_1_context_block_attn_qkv"));
    for expected in [
        "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1",
        "lora_unet_joint_blocks_1_x_block_attn_qkv",
        "lora_unet_context_embedder",
        "lora_unet_x_embedder_proj",
        "lora_unet_final_layer_linear",
    ] {
        assert!(modules.contains(expected), "{expected} missing: {unet:?}");
    }
    assert_eq!(unet.len(), 9, "{unet:?}");
    assert!(modules.iter().any(|m| m.starts_with("lora_te3_")), "train_t5xxl");
    let file = lorakit_lora::safetensors_file::LoraFile::open(&lora).unwrap();
    // x_mlp_dim = 2 shapes the x side's MLP; split qkv saves fused (3 × rank rows of down).
    let down = file.info("lora_unet_joint_blocks_1_x_block_mlp_fc1.lora_down.weight").unwrap();
    assert_eq!(down.shape[0], 2);
    let qkv = file.info("lora_unet_joint_blocks_1_x_block_attn_qkv.lora_down.weight").unwrap();
    assert_eq!(qkv.shape[0], 12, "split_qkv: three rank-4 parts stacked");
    let args = &file.metadata()["ss_network_args"];
    assert!(args.contains("\"emb_dims\"") && args.contains("\"train_block_indices\""), "{args}");
}

#[test]
fn sd3_caches_text_encoder_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let cfg = config(
        dir.path(),
        &data,
        &[
            "training.cache_text_encoder_outputs=true",
            "network.network_train_unet_only=true",
            "model.clip_g_dropout_rate=0.5",
            "training.max_train_epochs=1",
        ],
    );
    let mut model = load(&cfg);
    let data_set = TrainData::load(&cfg).unwrap();
    let cache = lorakit_train::text_cache::TextEncoderCache::build(&model, &data_set, &cfg, &mut |_, _| {}).unwrap();
    model.release_text_encoders(&[true, false, false, false]);
    assert!(model.pipeline().text_encoders().t5().is_none() && model.pipeline().text_encoders().clip_l().is_none());
    let trainer = Trainer::new(cfg, &model, data_set).unwrap().with_text_cache(cache);
    let summary = trainer.run(&AtomicBool::new(false), &mut |_| {}).unwrap();
    assert!(summary.losses.iter().all(|l| l.is_finite()));
    let modules = modules(&dir.path().join("out").join("tiny.safetensors"));
    assert!(modules.iter().all(|n| n.starts_with("lora_unet_")), "transformer only: {modules:?}");
}

#[test]
fn sd3_partial_caching_trains_the_clips_over_cached_t5_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let cfg = config(dir.path(), &data, &["training.cache_text_encoder_outputs=true", "training.max_train_epochs=1"]);
    let mut model = load(&cfg);
    let data_set = TrainData::load(&cfg).unwrap();
    let cache = lorakit_train::text_cache::TextEncoderCache::build(&model, &data_set, &cfg, &mut |_, _| {}).unwrap();
    model.release_text_encoders(&[true, true, true, false]);
    assert!(model.pipeline().text_encoders().t5().is_none() && model.pipeline().text_encoders().clip_l().is_some());
    let trainer = Trainer::new(cfg, &model, data_set).unwrap().with_text_cache(cache);
    let summary = trainer.run(&AtomicBool::new(false), &mut |_| {}).unwrap();
    assert!(summary.losses.iter().all(|l| l.is_finite()));
    let modules = modules(&dir.path().join("out").join("tiny.safetensors"));
    assert!(modules.iter().any(|m| m.starts_with("lora_te1_")) && modules.iter().any(|m| m.starts_with("lora_te2_")));
}

#[test]
fn sd3_refuses_what_it_cannot_train() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    for (extra, expected) in [
        ("model.clip_skip=2", "clip_skip"),
        ("model.v_parameterization=true", "v_parameterization"),
        ("flow.timestep_sampling=\"sigmoid\"", "flow.timestep_sampling"),
        ("loss.min_snr_gamma=5", "min_snr_gamma"),
        ("network.img_attn_dim=4", "network.img_attn_dim"),
        ("model.model_family=\"flux\"", "model_family"),
        ("model.clip_l_dropout_rate=1.5", "clip_l"),
        ("network.block_dims=\"2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2\"", "block_dims"),
    ] {
        let cfg = config(dir.path(), &data, &[extra]);
        let err = match lorakit_train::dry_run(cfg, &mut |_| {}) {
            Ok(_) => panic!("{extra}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{extra}: {err}");
    }
}

/// The tiny pipeline with a 4-block transformer (sd-scripts swaps at most depth − 2 blocks, none
/// of the fixture's 2): blocks 0, 1, 2 are its block 0, block 3 its last (pre-only) one; the
/// other parts copied as they are. Returns the folder made under `dir`.
fn four_block_pipeline(dir: &Path) -> PathBuf {
    let out = dir.join("sd3_4_blocks");
    for part in ["scheduler", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"] {
        std::fs::create_dir_all(out.join(part)).unwrap();
        for entry in std::fs::read_dir(tiny_sd3().join(part)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, out.join(part).join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(tiny_sd3().join("model_index.json"), out.join("model_index.json")).unwrap();
    let weights = out.join("transformer").join("diffusion_pytorch_model.safetensors");
    let mut deep = std::collections::HashMap::new();
    for (name, t) in candle_core::safetensors::load(&weights, &Device::Cpu).unwrap() {
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

/// `accelerate.blocks_to_swap` (sd-scripts' `--blocks_to_swap`): the last N joint blocks stay
/// in host memory and are copied to the device for each forward and recomputation — on the CPU
/// an identity copy, so the run trains the same numbers bit for bit; the device memory estimate
/// leaves the swapped blocks out; sd-scripts' depth − 2 limit and the checkpointing it needs.
#[test]
fn sd3_block_swap_trains_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = four_block_pipeline(dir.path());
    let data = chessboard_dataset(dir.path(), 1, 2);
    let base = ["training.gradient_checkpointing=true", "training.max_train_epochs=1"];
    let plain_cfg = config_for(&model_dir, dir.path(), &data, &base);
    let plain_model = load(&plain_cfg);
    assert_eq!(plain_model.pipeline().transformer().config().depth, 4);
    let plain = run(plain_cfg, &plain_model).unwrap();
    drop(plain_model);

    let mut swap_cfg =
        config_for(&model_dir, dir.path(), &data, &[&base[..], &["accelerate.blocks_to_swap=2"]].concat());
    swap_cfg.folders.output_dir = dir.path().join("swap");
    let model = load(&swap_cfg);
    assert_eq!(model.pipeline().transformer().host_blocks(), 2);
    // The estimate's transformer: without blocks 2 and 3, with the larger of them streaming in.
    use lorakit_train::model::TrainableModel;
    let cfg = model.pipeline().transformer().config().clone();
    let block = |i: usize| -> usize {
        let prefix = format!("joint_blocks.{i}.");
        cfg.parameter_shapes()
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    };
    let all: usize = cfg.parameter_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(model.parameter_counts().1, all - block(3));
    drop(model);
    // The run as `lorakit train` loads it (the config's blocks_to_swap reaches the model).
    let swapped = lorakit_train::train(swap_cfg, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(plain.losses, swapped.losses, "streaming blocks changes no number");
    assert_eq!(
        common::tensors(&dir.path().join("out").join("tiny.safetensors")),
        common::tensors(&dir.path().join("swap").join("tiny.safetensors"))
    );

    // sd-scripts' limit: depth − 2 blocks, its message, the model file named.
    let mut too_many =
        config_for(&model_dir, dir.path(), &data, &[&base[..], &["accelerate.blocks_to_swap=3"]].concat());
    too_many.folders.output_dir = dir.path().join("too_many");
    let err = lorakit_train::train(too_many, &AtomicBool::new(false), &mut |_| {}).expect_err("3 of 4 blocks");
    let err = err.to_string();
    assert!(err.contains("Cannot swap more than 2 blocks. Requested: 3 blocks."), "{err}");
    assert!(err.contains("sd3_4_blocks"), "names the model: {err}");
    // Without checkpointing the swap would save nothing: refused with the reason.
    let text = small_run_toml(dir.path(), &data, &model_dir);
    let err =
        TrainConfig::from_toml_str(&text, &["accelerate.blocks_to_swap=2".to_string()]).expect_err("no checkpointing");
    assert!(err.to_string().contains("gradient_checkpointing"), "{err}");
}

/// `apply_lg_attn_mask` and `apply_t5_attn_mask` as `lorakit train` runs them: the masks shape the
/// cached encoder outputs (sd-scripts passes them only when caching), the run trains, and the
/// metadata says so.
#[test]
fn sd3_trains_with_the_text_encoder_masks() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let mut runs = Vec::new();
    for (name, masks) in [("plain", "false"), ("masked", "true")] {
        let mut cfg = config(
            dir.path(),
            &data,
            &[
                "training.cache_text_encoder_outputs=true",
                "network.network_train_unet_only=true",
                "training.max_train_epochs=1",
                &format!("model.apply_lg_attn_mask={masks}"),
                &format!("model.apply_t5_attn_mask={masks}"),
            ],
        );
        cfg.folders.output_dir = dir.path().join(name);
        let summary = lorakit_train::train(cfg, &AtomicBool::new(false), &mut |_| {}).unwrap();
        assert!(summary.losses.iter().all(|l| l.is_finite()), "{name}: {:?}", summary.losses);
        let file =
            lorakit_lora::safetensors_file::LoraFile::open(dir.path().join(name).join("tiny.safetensors")).unwrap();
        let m = file.metadata();
        let flag = if masks == "true" { "True" } else { "False" };
        assert_eq!(m["ss_apply_lg_attn_mask"], flag);
        assert_eq!(m["ss_apply_t5_attn_mask"], flag);
        runs.push(summary.losses);
    }
    assert_ne!(runs[0], runs[1], "the masks change what the transformer is conditioned on");
}
