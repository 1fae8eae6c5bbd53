//! Training end to end on the tiny Flux pipeline (tests/fixtures/reference/flux_tiny/pipeline:
//! a dev transformer with 2 double + 3 single blocks, a 3-level autoencoder with Flux's 16
//! channels, CLIP-L and T5 of widths 24 and 40, f16 weights computed in f32): the run on the
//! rectified-flow objective, kohya's Flux module names and sd-scripts' metadata, samples with
//! `--g`, logs, exact resume, `train_t5xxl`, `train_blocks` / type dims, cached text-encoder
//! outputs, and what Flux refuses.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use lorakit_models::flux_pipeline::{FluxOptions, FluxPaths};
use lorakit_train::data::TrainData;
use lorakit_train::flux_model::FluxModel;
use lorakit_train::{TrainConfig, Trainer};

use crate::common;
use common::{assert_resume_is_exact, chessboard_dataset, repo, small_run_toml};

fn tiny_flux() -> PathBuf {
    repo("tests/fixtures/reference/flux_tiny/pipeline")
}

/// A short Flux run on `data`: the common small run (2 epochs, batch 2, rank 4) at 32 px
/// (the tiny autoencoder's 4× cells packed 2×2: 8-pixel steps), without conv modules.
fn config(dir: &Path, data: &Path, extra: &[&str]) -> TrainConfig {
    let text = small_run_toml(dir, data, &tiny_flux())
        .replace("resolution = \"64\"", "resolution = \"32\"")
        .replace("min_bucket_reso = 64", "min_bucket_reso = 32")
        .replace("max_bucket_reso = 128", "max_bucket_reso = 64")
        .replace("bucket_reso_steps = 64", "bucket_reso_steps = 16")
        .replace("conv_dim = 2\n", "");
    let mut sets: Vec<String> = vec!["model.t5xxl_max_token_length=16".into()];
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_toml_str(&text, &sets).unwrap_or_else(|e| panic!("{e}"))
}

fn load(config: &TrainConfig) -> FluxModel {
    let opts = FluxOptions {
        t5_max_length: config.model.t5xxl_max_token_length,
        apply_t5_attn_mask: config.model.apply_t5_attn_mask,
        blocks_to_swap: config.accelerate.blocks_to_swap.unwrap_or(0),
        ..FluxOptions::default()
    };
    FluxModel::load(&FluxPaths { model: tiny_flux(), ..Default::default() }, &opts, &Device::Cpu).unwrap()
}

fn run(
    config: TrainConfig,
    model: &dyn lorakit_train::model::TrainableModel,
) -> Result<lorakit_train::RunSummary, String> {
    let data = TrainData::load(&config).map_err(|e| e.to_string())?;
    let trainer = Trainer::new(config, model, data).map_err(|e| e.to_string())?;
    trainer.run(&AtomicBool::new(false), &mut |_| {}).map_err(|e| e.to_string())
}

fn names(path: &Path) -> Vec<String> {
    let file = lorakit_lora::safetensors_file::LoraFile::open(path).unwrap();
    let mut names: Vec<String> = file.tensor_names().map(str::to_string).collect();
    names.sort();
    names
}

#[test]
fn flux_trains_with_kohya_names_flux_metadata_samples_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 4);
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "chkbrd, a board --w 32 --h 32 --s 2 --d 1 --g 3.0\n").unwrap();
    let mut cfg = config(dir.path(), &data, &[]);
    cfg.samples.sample_prompts = Some(prompts);
    cfg.samples.sample_every_n_epochs = 1;
    let model = load(&cfg);
    let summary = run(cfg, &model).unwrap();
    assert_eq!(summary.steps, 4, "4 images, batch 2, 2 epochs");
    assert!(summary.losses.iter().all(|l| l.is_finite() && *l > 0.0), "{:?}", summary.losses);

    let out = dir.path().join("out");
    let lora = out.join("tiny.safetensors");
    let names = names(&lora);
    let modules: std::collections::BTreeSet<&str> = names.iter().map(|n| n.split('.').next().unwrap()).collect();
    // 2 double blocks × 10 + 3 single blocks × 3 transformer modules, CLIP-L's 2 layers × 6; no T5.
    assert_eq!(modules.iter().filter(|m| m.starts_with("lora_unet_")).count(), 29);
    assert_eq!(modules.iter().filter(|m| m.starts_with("lora_te1_")).count(), 12);
    assert!(!modules.iter().any(|m| m.starts_with("lora_te3_")), "T5 is trained only with network.train_t5xxl");
    for expected in [
        "lora_unet_double_blocks_0_img_attn_qkv",
        "lora_unet_double_blocks_1_txt_mlp_2",
        "lora_unet_single_blocks_2_linear1",
        "lora_unet_single_blocks_0_modulation_lin",
        "lora_te1_text_model_encoder_layers_1_mlp_fc2",
    ] {
        assert!(modules.contains(expected), "{expected} missing");
    }
    let file = lorakit_lora::safetensors_file::LoraFile::open(&lora).unwrap();
    let m = file.metadata();
    for (k, v) in [
        ("ss_base_model_version", "flux1"),
        ("ss_network_module", "networks.lora_flux"),
        ("ss_model_type", "flux"),
        ("modelspec.architecture", "flux-1-dev/lora"),
        ("modelspec.implementation", "https://github.com/black-forest-labs/flux"),
        ("ss_timestep_sampling", "sigma"),
        ("ss_model_prediction_type", "raw"),
        ("ss_guidance_scale", "1.0"),
        ("ss_discrete_flow_shift", "3.0"),
        ("ss_apply_t5_attn_mask", "False"),
    ] {
        assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
    }
    // Samples at each epoch, and the log.
    let samples: Vec<_> = std::fs::read_dir(out.join("sample")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(samples.iter().filter(|p| p.extension().is_some_and(|e| e == "png")).count() >= 2, "{samples:?}");
    let log = std::fs::read_to_string(summary.log_dir.join("log.jsonl")).unwrap_or_default();
    assert!(log.lines().count() >= 4, "one log line per step: {log}");

    // `lorakit generate` would apply the file; here its modules load into the model by name.
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
fn flux_resume_is_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 4);
    let cfg = config(dir.path(), &data, &["save.save_state=true"]);
    let model = load(&cfg);
    assert_resume_is_exact(&cfg, &model, dir.path(), 3);
}

#[test]
fn flux_network_arguments_and_t5_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let cfg = config(
        dir.path(),
        &data,
        &[
            "network.train_t5xxl=true",
            "network.train_blocks=\"single\"",
            "network.single_mod_dim=0",
            "network.in_dims=\"[2,0,0,0,2]\"",
            "training.max_train_epochs=1",
        ],
    );
    let model = load(&cfg);
    run(cfg, &model).unwrap();
    let names = names(&dir.path().join("out").join("tiny.safetensors"));
    let modules: std::collections::BTreeSet<&str> = names.iter().map(|n| n.split('.').next().unwrap()).collect();
    let unet: Vec<&&str> = modules.iter().filter(|m| m.starts_with("lora_unet_")).collect();
    // 3 single blocks × (linear1, linear2), img_in and txt_in.
    assert_eq!(unet.len(), 3 * 2 + 2, "{unet:?}");
    assert!(modules.contains("lora_unet_img_in") && modules.contains("lora_unet_txt_in"));
    assert!(!unet.iter().any(|m| m.contains("double_blocks") || m.contains("modulation")));
    // T5: 2 layers × (q, k, v, o, wi_0, wi_1, wo).
    assert_eq!(modules.iter().filter(|m| m.starts_with("lora_te3_")).count(), 14);
    assert!(modules.contains("lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0"));
    let file = lorakit_lora::safetensors_file::LoraFile::open(dir.path().join("out").join("tiny.safetensors")).unwrap();
    let args = &file.metadata()["ss_network_args"];
    assert!(args.contains("\"train_blocks\":\"single\"") && args.contains("\"train_t5xxl\":\"True\""), "{args}");
    let img_in = file.info("lora_unet_img_in.lora_down.weight").unwrap();
    assert_eq!(img_in.shape[0], 2, "in_dims gives img_in rank 2");
}

#[test]
fn flux_caches_text_encoder_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let cfg = config(
        dir.path(),
        &data,
        &[
            "training.cache_text_encoder_outputs=true",
            "training.cache_text_encoder_outputs_to_disk=true",
            "network.network_train_unet_only=true",
            "model.apply_t5_attn_mask=true",
            "model.t5xxl_max_token_length=64",
            "training.max_train_epochs=1",
        ],
    );
    let mut model = load(&cfg);
    let mut events = |_| {};
    let summary = {
        let data = TrainData::load(&cfg).unwrap();
        let cache = lorakit_train::text_cache::TextEncoderCache::build(&model, &data, &cfg, &mut |_, _| {}).unwrap();
        model.release_text_encoders(&[true, false, false]);
        assert!(model.pipeline().clip_l().is_none() && model.pipeline().t5().is_none());
        let trainer = Trainer::new(cfg, &model, data).unwrap().with_text_cache(cache);
        trainer.run(&AtomicBool::new(false), &mut events).unwrap()
    };
    assert!(summary.losses.iter().all(|l| l.is_finite()));
    let names = names(&dir.path().join("out").join("tiny.safetensors"));
    assert!(names.iter().all(|n| n.starts_with("lora_unet_")), "UNet-only: {names:?}");
    // The T5 padding mask is cached with the outputs (apply_t5_attn_mask) and trained with.
    let cached = std::fs::read_dir(&data)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".lorakit-te.safetensors"))
        .expect("a cache file on disk");
    let file = lorakit_lora::safetensors_file::LoraFile::open(&cached).unwrap();
    let mask = file.tensor_f32("mask").unwrap();
    assert_eq!(mask.len(), 64);
    assert!(mask[0] == 1.0 && mask[63] == 0.0, "{mask:?}");
    let file = lorakit_lora::safetensors_file::LoraFile::open(dir.path().join("out").join("tiny.safetensors")).unwrap();
    assert_eq!(file.metadata()["ss_apply_t5_attn_mask"], "True");
}

#[test]
fn flux_refuses_what_it_cannot_train() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let model = load(&config(dir.path(), &data, &[]));
    let refusals: [(&[&str], &str); 4] = [
        (&["loss.min_snr_gamma=5"], "min_snr_gamma"),
        (&["model.clip_skip=2"], "clip_skip"),
        (&["dataset.enable_bucket=false", "dataset.resolution=\"36\""], "multiple of 8"),
        (&["network.block_dims=\"2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2\""], "block"),
    ];
    for (extra, expected) in refusals {
        let err = run(config(dir.path(), &data, extra), &model).expect_err(extra[0]);
        assert!(err.contains(expected), "{extra:?}: {err}");
    }
    // Flux network arguments on an SD model.
    let sd = lorakit_train::model::StableDiffusionModel::load(
        &repo("tests/fixtures/reference/sd15_tiny/diffusers"),
        candle_core::DType::F32,
        &Device::Cpu,
        false,
    )
    .unwrap();
    let mut cfg = config(dir.path(), &data, &["network.train_blocks=\"single\""]);
    cfg.model.t5xxl_max_token_length = None;
    let err = run(cfg, &sd).expect_err("Flux args on SD");
    assert!(err.contains("Flux and SD3 network arguments"), "{err}");
}

#[test]
fn flux_block_swap_trains_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let plain_cfg = config(dir.path(), &data, &["training.gradient_checkpointing=true", "training.max_train_epochs=1"]);
    let plain = run(plain_cfg.clone(), &load(&plain_cfg)).unwrap();
    let mut swap_cfg = config(
        dir.path(),
        &data,
        &["training.gradient_checkpointing=true", "training.max_train_epochs=1", "accelerate.blocks_to_swap=2"],
    );
    swap_cfg.folders.output_dir = dir.path().join("swap");
    let model = load(&swap_cfg);
    assert_eq!(model.pipeline().transformer().host_blocks(), (1, 2));
    let swapped = run(swap_cfg, &model).unwrap();
    assert_eq!(plain.losses, swapped.losses, "streaming blocks changes no number");
    assert_eq!(
        common::tensors(&dir.path().join("out").join("tiny.safetensors")),
        common::tensors(&dir.path().join("swap").join("tiny.safetensors"))
    );
    // Without checkpointing the swap would save nothing: refused with the reason.
    let text = small_run_toml(dir.path(), &data, &tiny_flux());
    let err =
        TrainConfig::from_toml_str(&text, &["accelerate.blocks_to_swap=2".to_string()]).expect_err("no checkpointing");
    assert!(err.to_string().contains("gradient_checkpointing"), "{err}");
}

/// `split_qkv`: the run trains one pair per part, resumes bit for bit (the state keeps the parts
/// under sd-scripts' `lora_down.<i>` names), saves them fused (block-diagonal up, alpha ×
/// parts, `split_qkv` in ss_network_args), and a later run continues from that file through
/// `network_weights` (cut back into parts); a fused file that was not trained split is refused.
#[test]
fn flux_split_qkv_trains_resumes_saves_fused_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 4);
    let cfg = config(dir.path(), &data, &["network.split_qkv=true", "save.save_state=true"]);
    let model = load(&cfg);
    let runs = assert_resume_is_exact(&cfg, &model, dir.path(), 3);
    assert!(runs.full.losses.iter().all(|l| l.is_finite()));
    let saved = dir.path().join("out").join("tiny.safetensors");
    let file = lorakit_lora::safetensors_file::LoraFile::open(&saved).unwrap();
    assert!(file.metadata()["ss_network_args"].contains("\"split_qkv\":\"True\""));
    let rank = 4; // small_run_toml's network_dim
    let alpha = |m: &str| file.tensor_f32(&format!("{m}.alpha")).unwrap()[0];
    let plain_alpha = alpha("lora_unet_double_blocks_0_img_attn_proj");
    for (module, parts, width) in
        [("lora_unet_double_blocks_0_img_attn_qkv", 3, 48), ("lora_unet_single_blocks_2_linear1", 4, 48)]
    {
        let down = file.info(&format!("{module}.lora_down.weight")).unwrap();
        let up = file.info(&format!("{module}.lora_up.weight")).unwrap();
        assert_eq!(down.shape[0], parts * rank, "{module}: the parts' downs stacked");
        assert_eq!(up.shape[1], parts * rank, "{module}");
        assert_eq!(alpha(module), plain_alpha * parts as f32, "{module}: alpha × parts");
        // Block-diagonal: the q rows read only the q part's ranks.
        let values = file.tensor_f32(&format!("{module}.lora_up.weight")).unwrap();
        let cols = parts * rank;
        let q_rows_off_block = (0..width).flat_map(|r| (rank..cols).map(move |c| (r, c)));
        assert!(q_rows_off_block.map(|(r, c)| values[r * cols + c]).all(|v| v == 0.0), "{module}");
        assert!(values.iter().any(|v| *v != 0.0), "{module} trained");
    }

    let report = lorakit_lora::inspect::inspect_file(&saved).unwrap();
    assert!(
        report.notes.iter().any(|n| n.contains("7 fused qkv/linear1 layers") && n.contains("alpha × parts")),
        "{:?}",
        report.notes
    );

    // Continue from the saved file: its parts are cut back out and trained further.
    let mut next = config(dir.path(), &data, &["network.split_qkv=true", "training.max_train_epochs=1"]);
    next.network.network_weights = Some(saved.clone());
    next.folders.output_dir = dir.path().join("next");
    run(next, &model).unwrap();
    // A fused LoRA that was not trained split cannot be cut into parts.
    let single = ["training.max_train_epochs=1", "network.train_blocks=\"single\""];
    let mut fused = config(dir.path(), &data, &single);
    fused.folders.output_dir = dir.path().join("fused");
    run(fused.clone(), &model).unwrap();
    let mut cut = config(dir.path(), &data, &[&single[..], &["network.split_qkv=true"]].concat());
    cut.network.network_weights = Some(dir.path().join("fused").join("tiny.safetensors"));
    cut.folders.output_dir = dir.path().join("cut");
    // Rank 4 does not make 4 parts of rank 4: the rank the parts would need is named.
    let err = run(cut.clone(), &model).expect_err("rank mismatch");
    assert!(err.contains("set network.network_dim = 1"), "{err}");
    // At rank 1 the 4 rows fit 4 linear1 parts by shape, but the up is dense: refused.
    cut.network.network_dim = 1;
    let err = run(cut, &model).expect_err("a dense fused up is not cut");
    assert!(err.contains("not block-diagonal") && err.contains("network.split_qkv = false"), "{err}");
}

/// sd-scripts' partial caching: with CLIP-L's LoRA trained, T5-XXL's outputs are cached (and T5
/// leaves memory) while CLIP-L runs at every step with its LoRA; the run trains the same numbers
/// as encoding every caption at every step. With T5-XXL trained, caching is refused.
#[test]
fn flux_caches_t5_outputs_while_clip_l_trains() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let live_cfg = config(dir.path(), &data, &["training.max_train_epochs=1"]);
    let live = run(live_cfg.clone(), &load(&live_cfg)).unwrap();

    let mut cfg =
        config(dir.path(), &data, &["training.max_train_epochs=1", "training.cache_text_encoder_outputs=true"]);
    cfg.folders.output_dir = dir.path().join("cached");
    let mut model = load(&cfg);
    let summary = {
        let data = TrainData::load(&cfg).unwrap();
        lorakit_train::text_cache::check_cacheable(&cfg, &data, &model).unwrap();
        let cache = lorakit_train::text_cache::TextEncoderCache::build(&model, &data, &cfg, &mut |_, _| {}).unwrap();
        let trained =
            lorakit_train::model::trained_components(&cfg, &lorakit_train::model::TrainableModel::components(&model));
        assert_eq!(trained, [true, true, false], "transformer and CLIP-L train, T5-XXL does not");
        model.release_text_encoders(&trained);
        assert!(model.pipeline().t5().is_none() && model.pipeline().clip_l().is_some(), "T5-XXL alone left memory");
        let trainer = Trainer::new(cfg.clone(), &model, data).unwrap().with_text_cache(cache);
        trainer.run(&AtomicBool::new(false), &mut |_| {}).unwrap()
    };
    assert_eq!(summary.losses.len(), live.losses.len());
    for (a, b) in summary.losses.iter().zip(&live.losses) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1e-3), "cached {a} vs live {b}");
    }
    let saved = common::tensors(&dir.path().join("cached").join("tiny.safetensors"));
    let reference = common::tensors(&dir.path().join("out").join("tiny.safetensors"));
    let te1: Vec<&String> = saved.keys().filter(|k| k.starts_with("lora_te1_")).collect();
    assert!(!te1.is_empty(), "CLIP-L's LoRA was trained");
    for name in te1 {
        let (a, b) = (&saved[name], &reference[name]);
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{name}: CLIP-L's LoRA differs from the live run by {worst}");
    }

    // T5-XXL trained: its outputs cannot be cached.
    let t5 = config(dir.path(), &data, &["training.cache_text_encoder_outputs=true", "network.train_t5xxl=true"]);
    let err = run(t5, &model).expect_err("T5 trained with caching");
    assert!(err.contains("not while T5-XXL trains"), "{err}");
}

/// `accelerate.cpu_offload_checkpointing` reaches the transformer and trains the same numbers
/// as plain checkpointing (on the CPU the offload is the identity; the CUDA path is checked by
/// lorakit-nn's `checkpoint_offload` test under `--features cuda`); sd-scripts' refusals hold.
#[test]
fn flux_cpu_offload_checkpointing_trains_the_same_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let base = ["training.gradient_checkpointing=true", "training.max_train_epochs=1"];
    let plain_cfg = config(dir.path(), &data, &base);
    let plain = run(plain_cfg.clone(), &load(&plain_cfg)).unwrap();
    let mut cfg = config(dir.path(), &data, &[&base[..], &["accelerate.cpu_offload_checkpointing=true"]].concat());
    cfg.folders.output_dir = dir.path().join("offload");
    let opts = FluxOptions {
        t5_max_length: cfg.model.t5xxl_max_token_length,
        offload_checkpoints: cfg.accelerate.cpu_offload_checkpointing,
        ..FluxOptions::default()
    };
    let model = FluxModel::load(&FluxPaths { model: tiny_flux(), ..Default::default() }, &opts, &Device::Cpu).unwrap();
    assert!(model.pipeline().transformer().offloads_checkpoints());
    let offloaded = run(cfg, &model).unwrap();
    assert_eq!(plain.losses, offloaded.losses);
    assert_eq!(
        common::tensors(&dir.path().join("out").join("tiny.safetensors")),
        common::tensors(&dir.path().join("offload").join("tiny.safetensors"))
    );
    let text = small_run_toml(dir.path(), &data, &tiny_flux());
    let refuse = |sets: &[&str], says: &str| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let err = TrainConfig::from_toml_str(&text, &sets).expect_err(says).to_string();
        assert!(err.contains(says), "{sets:?}: {err}");
    };
    refuse(&["accelerate.cpu_offload_checkpointing=true"], "needs training.gradient_checkpointing");
    refuse(
        &[
            "accelerate.cpu_offload_checkpointing=true",
            "training.gradient_checkpointing=true",
            "accelerate.blocks_to_swap=2",
        ],
        "blocks_to_swap is not supported with cpu_offload_checkpointing",
    );
}
