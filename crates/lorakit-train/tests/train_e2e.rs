//! Training end to end on the tiny SD1.5-shaped model bundled for the quickstart
//! (examples/quickstart/tiny-sd15, random weights) and the sample dataset (examples/dataset):
//! files, metadata, logs, samples, exact resume, and a LoRA that learns.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use lorakit_models::lora_inject::load_lora_file;
use lorakit_models::lora_inject::ComponentTargets;
use lorakit_nn::ForwardCtx;
use lorakit_train::data::TrainData;
use lorakit_train::model::{StableDiffusionModel, TrainableModel};
use lorakit_train::{TrainConfig, TrainEvent, Trainer};

use crate::common;
// Small runs: the 8_chessboard folder only (9 images × 8 repeats would be long), with fewer
// repeats so an epoch is a handful of steps.
use common::{assert_resume_is_exact, chessboard_dataset, repo, small_run_toml, tensors, train};

fn model() -> StableDiffusionModel {
    StableDiffusionModel::load(&repo("examples/quickstart/tiny-sd15"), DType::F32, &Device::Cpu, false).unwrap()
}

fn base_text(dir: &Path, data: &Path) -> String {
    small_run_toml(dir, data, &repo("examples/quickstart/tiny-sd15"))
}

fn config(dir: &Path, data: &Path, extra: &str) -> TrainConfig {
    let text = format!("{}\n{extra}", base_text(dir, data));
    TrainConfig::from_toml_str(&text, &[]).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn two_epochs_write_kohya_files_logs_samples_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 2, 4);
    std::fs::write(
        dir.path().join("prompts.txt"),
        "chkbrd, a board --w 64 --h 64 --d 3 --s 3\nchkbrd --w 64 --h 64 --s 2\n",
    )
    .unwrap();
    let extra = format!(
        "save_state = true\n[samples]\nsample_prompts = \"{}\"\nsample_every_n_epochs = 1\n",
        dir.path().join("prompts.txt").display()
    );
    let model = model();
    let summary = train(config(dir.path(), &data, &extra), &model, None);
    let out = dir.path().join("out");

    // 4 images × 2 repeats in one 64×64 bucket, batch 2 → 4 steps per epoch.
    assert_eq!(summary.steps, 8);
    assert!(summary.losses.iter().all(|l| l.is_finite()));
    let epoch_mean = |e: usize| summary.losses[e * 4..e * 4 + 4].iter().sum::<f64>() / 4.0;
    assert!(epoch_mean(1) < epoch_mean(0), "loss falls from epoch 1 to 2: {:?}", summary.losses);
    for f in ["tiny-000001.safetensors", "tiny.safetensors"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(!out.join("tiny-000002.safetensors").exists(), "the last epoch is the final save");
    for f in ["network.safetensors", "optimizer.safetensors", "train_state.json"] {
        assert!(out.join("tiny-000001-state").join(f).is_file(), "state {f} missing");
    }

    // kohya keys and metadata.
    let file = lorakit_lora::safetensors_file::LoraFile::open(out.join("tiny.safetensors")).unwrap();
    let names: Vec<&str> = file.tensor_names().collect();
    assert!(names.contains(&"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"));
    assert!(names.contains(&"lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"));
    assert!(
        names.iter().any(|n| n.starts_with("lora_unet_down_blocks_0_resnets_0_conv1.")),
        "conv_dim adds resnet convs"
    );
    let m = file.metadata();
    for (k, v) in [
        ("ss_network_module", "networks.lora"),
        ("ss_network_dim", "4"),
        ("ss_network_alpha", "2.0"),
        ("ss_base_model_version", "sd_v1"),
        ("ss_v2", "False"),
        ("ss_steps", "8"),
        ("ss_epoch", "2"),
        ("ss_num_train_images", "8"),
        ("ss_num_batches_per_epoch", "4"),
        ("ss_max_train_steps", "8"),
        ("ss_lr_scheduler", "cosine"),
        ("ss_seed", "7"),
        ("ss_resolution", "(64, 64)"),
        ("modelspec.sai_model_spec", "1.0.1"),
        ("modelspec.architecture", "stable-diffusion-v1/lora"),
        ("modelspec.implementation", "diffusers"),
        ("modelspec.title", "tiny"),
        ("modelspec.author", "tester"),
        ("modelspec.trigger_phrase", "chkbrd"),
        ("modelspec.resolution", "64x64"),
        ("modelspec.prediction_type", "epsilon"),
    ] {
        assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
    }
    let tags: serde_json::Value = serde_json::from_str(&m["ss_tag_frequency"]).unwrap();
    assert!(tags["2_chessboard"]["chkbrd"].as_u64().unwrap() >= 3, "{tags}");
    let dirs: serde_json::Value = serde_json::from_str(&m["ss_dataset_dirs"]).unwrap();
    assert_eq!(dirs["2_chessboard"]["n_repeats"], 2);
    assert_eq!(dirs["2_chessboard"]["img_count"], 4);
    let buckets: serde_json::Value = serde_json::from_str(&m["ss_bucket_info"]).unwrap();
    assert_eq!(buckets["buckets"]["0"]["resolution"], serde_json::json!([64, 64]));
    assert!(m.contains_key("sshs_model_hash") && m.contains_key("ss_network_args"));
    assert_eq!(
        lorakit_lora::safetensors_file::LoraFile::open(out.join("tiny-000001.safetensors")).unwrap().metadata()
            ["ss_epoch"],
        "1"
    );

    // The file loads back into the model with every key matched, and changes its output.
    let sd = model.pipeline();
    let components = [
        ComponentTargets { prefix: "lora_unet", targets: sd.unet_targets() },
        ComponentTargets { prefix: "lora_te", targets: &sd.text_encoder_targets()[0] },
    ];
    let loaded =
        load_lora_file(&out.join("tiny.safetensors"), 1.0, false, &components, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.module_count * 3, names.len());

    // Logs: TensorBoard with sd-scripts' scalar names, and the plain JSONL log.
    let tb_dir = summary.log_dir.join("network_train");
    let event_file = std::fs::read_dir(&tb_dir).unwrap().next().unwrap().unwrap().path();
    let scalars = lorakit_train::tensorboard::read_scalars(&event_file).unwrap();
    for tag in ["loss/current", "loss/average", "lr/unet", "lr/textencoder", "loss/epoch_average"] {
        assert!(scalars.iter().any(|s| s.tag == tag), "no {tag} in TensorBoard log");
    }
    let lr: Vec<f32> = scalars.iter().filter(|s| s.tag == "lr/unet").map(|s| s.value).collect();
    assert_eq!(lr.len(), 8);
    // torch's LambdaLR semantics, as sd-scripts: the first update runs at warmup factor 0/1.
    assert!(
        lr[0] == 0.0 && (lr[1] - 2e-3).abs() < 1e-6 && lr[7] < lr[2] && lr[2] < lr[1],
        "warmup then cosine: {lr:?}"
    );
    let jsonl = std::fs::read_to_string(summary.log_dir.join("log.jsonl")).unwrap();
    assert!(jsonl.lines().count() >= 8);
    // The gradient norm clipping measured (max_grad_norm 1.0), logged every step.
    let norms: Vec<f64> = jsonl
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["norm/grad_norm"].as_f64())
        .collect();
    assert!(norms.len() == 8 && norms.iter().all(|n| n.is_finite() && *n > 0.0), "grad norms: {norms:?}");
    assert_eq!(scalars.iter().filter(|s| s.tag == "norm/grad_norm").count(), 8);

    // Samples: two prompts per epoch, plus a grid each epoch.
    let samples: Vec<String> = std::fs::read_dir(out.join("sample"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(samples.iter().filter(|s| s.starts_with("tiny_e000001_")).count(), 3, "{samples:?}");
    assert!(samples.iter().any(|s| s.starts_with("tiny_e000002_00_") && s.ends_with("_3.png")), "{samples:?}");
}

#[test]
fn a_resumed_run_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 3, 3);
    let model = model();
    // Uninterrupted: 2 epochs of ceil(9/2) = 5 batches, accumulation 2 → 3 steps per epoch.
    let full_cfg = config(dir.path(), &data, "save_state = true\n");
    let mut full_cfg = full_cfg;
    full_cfg.training.gradient_accumulation_steps = 2;
    full_cfg.training.cache_latents = false;
    // Interrupted mid-epoch (Ctrl-C after step 2), then resumed.
    let full = assert_resume_is_exact(&full_cfg, &model, dir.path(), 2).full;
    assert_eq!(full.steps, 6);

    // And from the epoch-end state.
    let mut epoch_cfg = full_cfg.clone();
    epoch_cfg.folders.output_dir = dir.path().join("epoch");
    epoch_cfg.save.resume = Some(dir.path().join("out/tiny-000001-state"));
    let from_epoch = train(epoch_cfg, &model, None);
    assert_eq!(from_epoch.losses, full.losses[3..]);
    assert_eq!(tensors(&dir.path().join("epoch/tiny.safetensors")), tensors(&dir.path().join("out/tiny.safetensors")));

    // A state from a different network is refused with the reason.
    let mut wrong = full_cfg.clone();
    wrong.network.network_dim = 8;
    wrong.folders.output_dir = dir.path().join("wrong");
    wrong.save.resume = Some(dir.path().join("out/tiny-000001-state"));
    let data2 = TrainData::load(&wrong).unwrap();
    let trainer = Trainer::new(wrong, &model, data2).unwrap();
    let err = trainer.run(&AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("network_dim") && err.contains("tiny-000001-state"), "{err}");
}

/// The model's denoising error on one image at fixed noise and timesteps, with and without LoRA.
fn denoise_error(model: &StableDiffusionModel, latents: &Tensor, caption: &str, lora: Option<&Path>) -> f32 {
    let sd = model.pipeline();
    let sets = match lora {
        Some(p) => {
            let components = [
                ComponentTargets { prefix: "lora_unet", targets: sd.unet_targets() },
                ComponentTargets { prefix: "lora_te", targets: &sd.text_encoder_targets()[0] },
            ];
            let loaded = load_lora_file(p, 1.0, false, &components, DType::F32, &Device::Cpu).unwrap();
            lorakit_models::lora_inject::sets_from_files(vec![loaded], 2, &Device::Cpu).unwrap()
        }
        None => Vec::new(),
    };
    let ctxs: Vec<ForwardCtx> = sets.iter().map(|s| ForwardCtx::with_lora(s.clone())).collect();
    let cond = model.encode_text(&[caption], 75, None, &ctxs).unwrap();
    let mut total = 0.0;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(11);
    for t in [100u32, 300, 500, 700, 900] {
        let values: Vec<f32> = (0..latents.elem_count())
            .map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng))
            .collect();
        let noise = Tensor::from_vec(values, latents.dims(), &Device::Cpu).unwrap();
        let t_int = Tensor::new(&[t], &Device::Cpu).unwrap();
        let noisy = model.pipeline().schedule.add_noise(latents, &noise, &t_int).unwrap();
        let t = Tensor::new(&[t as f32], &Device::Cpu).unwrap();
        let pred = model.denoise(&noisy, &t, None, &cond, &[], &ctxs, &mut rng).unwrap();
        total += (pred - noise).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    }
    total / 5.0
}

#[test]
fn overfitting_one_image_lowers_its_denoising_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 1);
    let model = model();
    let mut cfg = config(dir.path(), &data, "");
    cfg.training.train_batch_size = 1;
    cfg.training.max_train_epochs = 60;
    cfg.save.save_every_n_epochs = 0;
    cfg.optimizer.lr_scheduler = "constant".into();
    cfg.optimizer.lr_warmup_steps = 0.0;
    cfg.optimizer.learning_rate = 3e-3;
    let summary = train(cfg.clone(), &model, None);
    let lora = summary.final_lora.unwrap();

    let training = TrainData::load(&cfg).unwrap();
    let image = &training.images[0];
    let pixels =
        lorakit_train::latents::image_tensor(image, false, lorakit_train::latents::SampleAugment::NONE, &Device::Cpu)
            .unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let latents = model.encode_images(&pixels, &mut rng).unwrap();
    // Same noise draws for both measurements (seeded inside).
    let without = denoise_error(&model, &latents, &image.caption, None);
    let with = denoise_error(&model, &latents, &image.caption, Some(&lora));
    assert!(with < 0.8 * without, "error with LoRA {with} vs without {without}");
    let first: f64 = summary.losses[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = summary.losses[summary.losses.len() - 10..].iter().sum::<f64>() / 10.0;
    assert!(last < first, "loss falls: first {first}, last {last}");
}

#[test]
fn configuration_and_dataset_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("10_nothing")).unwrap();
    let cfg = config(dir.path(), &empty, "");
    let err = match TrainData::load(&cfg) {
        Ok(_) => panic!("an empty dataset must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no trainable images") && err.contains("10_mychar"), "{err}");

    let missing = config(dir.path(), &dir.path().join("nope"), "");
    let err = match TrainData::load(&missing) {
        Ok(_) => panic!("a missing folder must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("nope") && err.contains("no such folder"), "{err}");

    let mut no_model = config(dir.path(), &empty, "");
    no_model.model.pretrained_model_name_or_path = Some(dir.path().join("missing.safetensors"));
    let err = lorakit_train::train(no_model, &AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("missing.safetensors"), "{err}");
}

#[test]
fn disk_latent_cache_is_reused_only_while_the_image_matches() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let model = model();
    let mut cfg = config(dir.path(), &data, "");
    cfg.training.cache_latents_to_disk = true;
    cfg.training.max_train_epochs = 1;
    let notes = |cfg: TrainConfig| {
        let data = TrainData::load(&cfg).unwrap();
        let trainer = Trainer::new(cfg, &model, data).unwrap();
        let mut notes = Vec::new();
        trainer
            .run(&AtomicBool::new(false), &mut |e| {
                if let TrainEvent::Note(n) = e {
                    notes.push(n)
                }
            })
            .unwrap();
        notes.join("\n")
    };
    let first = notes(cfg.clone());
    assert!(!first.contains("reused"), "{first}");
    let caches: Vec<_> = std::fs::read_dir(data.join("1_chessboard"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".lorakit-latent.safetensors"))
        .collect();
    assert_eq!(caches.len(), 2, "one cache file per image: {caches:?}");
    assert!(notes(cfg.clone()).contains("2 latents reused"));
    // A changed image (here: another photo under the same name) is re-encoded.
    let folder = data.join("1_chessboard");
    let mut jpgs: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    jpgs.sort();
    std::fs::copy(repo("examples/dataset/img/8_chessboard/left08.jpg"), &jpgs[0]).unwrap();
    assert!(notes(cfg.clone()).contains("1 latents reused"));
    // Another resolution means other buckets: nothing is reused.
    let mut bigger = cfg.clone();
    bigger.dataset.resolution = "128".into();
    assert!(!notes(bigger).contains("reused"));
}

#[test]
fn fp16_trains_on_cpu_and_bf16_is_refused_there() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let model =
        StableDiffusionModel::load(&repo("examples/quickstart/tiny-sd15"), DType::F16, &Device::Cpu, false).unwrap();
    let mut cfg = config(dir.path(), &data, "");
    cfg.accelerate.mixed_precision = "fp16".into();
    let summary = train(cfg.clone(), &model, None);
    assert!(summary.losses.iter().all(|l| l.is_finite()), "{:?}", summary.losses);
    let t = tensors(&summary.final_lora.unwrap());
    let up = t.iter().find(|(k, _)| k.ends_with("attn1_to_q.lora_up.weight")).unwrap().1;
    assert!(up.iter().any(|v| *v != 0.0), "the LoRA learned something");

    cfg.accelerate.mixed_precision = "bf16".into();
    let err = lorakit_train::train(cfg, &AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("bf16") && err.contains("CPU"), "{err}");
}

#[test]
fn a_diverging_run_stops_and_keeps_earlier_saves() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 2, 4);
    let model = model();
    let mut cfg = config(dir.path(), &data, "");
    cfg.optimizer.learning_rate = 1e9;
    cfg.optimizer.lr_warmup_steps = 0.0;
    cfg.training.max_grad_norm = 0.0;
    cfg.training.max_train_epochs = 30;
    let data = TrainData::load(&cfg).unwrap();
    let trainer = Trainer::new(cfg, &model, data).unwrap();
    let err = trainer.run(&AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("the loss became") && err.contains("learning rate"), "{err}");
    let out = dir.path().join("out");
    assert!(!out.join("tiny.safetensors").exists(), "no final save after a NaN");
    for entry in std::fs::read_dir(&out).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            let t = tensors(&p);
            assert!(t.values().flatten().all(|v| v.is_finite()), "{} holds NaN", p.display());
        }
    }
}

#[test]
fn checkpointing_gives_the_same_run_and_unet_only_skips_the_text_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 4);
    let model = model();
    let mut plain = config(dir.path(), &data, "");
    plain.training.max_train_epochs = 1;
    plain.network.network_dropout = Some(0.1);
    let a = train(plain.clone(), &model, None);
    let mut ckpt = plain.clone();
    ckpt.training.gradient_checkpointing = true;
    ckpt.folders.output_dir = dir.path().join("ckpt");
    let b = train(ckpt, &model, None);
    for (x, y) in a.losses.iter().zip(&b.losses) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "checkpointed run differs: {:?} vs {:?}", a.losses, b.losses);
    }

    let mut unet_only = plain.clone();
    unet_only.network.network_train_unet_only = true;
    unet_only.folders.output_dir = dir.path().join("unet_only");
    let c = train(unet_only, &model, None);
    let names: Vec<String> = tensors(&c.final_lora.unwrap()).into_keys().collect();
    assert!(!names.is_empty() && names.iter().all(|n| n.starts_with("lora_unet_")), "{names:?}");
}

#[test]
fn loss_and_noise_options_reach_the_run_and_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let model = model();
    let extra = "[loss]\nloss_type = \"huber\"\nhuber_schedule = \"exponential\"\nmin_snr_gamma = 5\nnoise_offset = 0.05\n\
                 adaptive_noise_scale = 0.01\nmultires_noise_iterations = 3\nip_noise_gamma = 0.1\ndebiased_estimation_loss = true\n\
                 zero_terminal_snr = true\n";
    let mut cfg = config(dir.path(), &data, extra);
    cfg.training.max_train_epochs = 1;
    let plain = {
        let mut c = config(dir.path(), &data, "");
        c.training.max_train_epochs = 1;
        c.folders.output_dir = dir.path().join("plain");
        train(c, &model, None)
    };
    let summary = train(cfg, &model, None);
    assert!(summary.losses.iter().all(|l| l.is_finite()));
    assert_ne!(summary.losses, plain.losses, "the options change the loss");
    let file = lorakit_lora::safetensors_file::LoraFile::open(summary.final_lora.unwrap()).unwrap();
    let m = file.metadata();
    for (k, v) in [
        ("ss_loss_type", "huber"),
        ("ss_huber_schedule", "exponential"),
        ("ss_min_snr_gamma", "5.0"),
        ("ss_noise_offset", "0.05"),
        ("ss_adaptive_noise_scale", "0.01"),
        ("ss_multires_noise_iterations", "3"),
        ("ss_ip_noise_gamma", "0.1"),
        ("ss_debiased_estimation", "True"),
        ("ss_zero_terminal_snr", "True"),
    ] {
        assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
    }
    let err = TrainConfig::from_toml_str("[loss]\nadaptive_noise_scale = 0.1\n", &[]).unwrap_err();
    assert!(err.contains("noise_offset"), "{err}");
    let err = TrainConfig::from_toml_str("[loss]\nloss_type = \"l3\"\n", &[]).unwrap_err();
    assert!(err.contains("l3") && err.contains("huber"), "{err}");
}

#[test]
fn rank_and_module_dropout_change_training_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let model = model();
    let mut base = config(dir.path(), &data, "");
    base.training.max_train_epochs = 4;
    base.optimizer.lr_warmup_steps = 0.0;
    let plain = train(base.clone(), &model, None);
    let mut dropped = base.clone();
    dropped.network.rank_dropout = Some(0.3);
    dropped.network.module_dropout = Some(0.2);
    dropped.folders.output_dir = dir.path().join("dropout");
    let with = train(dropped, &model, None);
    assert_eq!(plain.losses[0], with.losses[0], "the first step's loss is before any update (up weights are zero)");
    assert_ne!(plain.losses, with.losses);
    let m = lorakit_lora::safetensors_file::LoraFile::open(with.final_lora.unwrap()).unwrap().metadata().clone();
    let args: serde_json::Value = serde_json::from_str(&m["ss_network_args"]).unwrap();
    assert_eq!(args["rank_dropout"], "0.3");
    assert_eq!(args["module_dropout"], "0.2");
    let err = TrainConfig::from_toml_str("[network]\nrank_dropout = 1.5\n", &[]).unwrap_err();
    assert!(err.contains("rank_dropout"), "{err}");
}

#[test]
fn block_weights_lora_plus_max_norm_and_multiplier_shape_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let model = model();
    // Slot 1 (IN01) rank 2, slot 2 (IN02) LR weight 0 → no modules; everything else rank 4.
    let dims: Vec<String> = (0..25).map(|slot| if slot == 1 { "2".into() } else { "4".into() }).collect();
    let extra = format!(
        "[network]\nnetwork_dim = 4\nnetwork_alpha = 2\nconv_dim = 2\nblock_dims = \"{}\"\n\
         down_lr_weight = \"1,1,0,1,1,1,1,1,1,1,1,0.5\"\nloraplus_unet_lr_ratio = 4\nscale_weight_norms = 0.02\n",
        dims.join(",")
    );
    // The [network] table replaces the base one: build from the extra text alone.
    let text = format!(
        "{}\n{extra}",
        base_text(dir.path(), &data).replace("[network]\nnetwork_dim = 4\nnetwork_alpha = 2\nconv_dim = 2\n", "")
    );
    let mut cfg = TrainConfig::from_toml_str(&text, &[]).unwrap_or_else(|e| panic!("{e}"));
    cfg.training.max_train_epochs = 2;
    let summary = train(cfg, &model, None);
    let file = lorakit_lora::safetensors_file::LoraFile::open(summary.final_lora.as_ref().unwrap()).unwrap();
    let rank_of = |module: &str| file.info(&format!("{module}.lora_down.weight")).map(|i| i.shape[0]);
    assert_eq!(rank_of("lora_unet_down_blocks_0_attentions_0_proj_in"), Some(2), "IN01 has block rank 2");
    assert_eq!(rank_of("lora_unet_down_blocks_0_resnets_0_conv1"), Some(2), "IN01 conv uses conv_dim");
    assert_eq!(rank_of("lora_unet_down_blocks_0_attentions_1_proj_in"), None, "IN02 (weight 0) has no module");
    assert_eq!(rank_of("lora_unet_down_blocks_1_attentions_0_proj_in"), Some(4));
    assert_eq!(rank_of("lora_te_text_model_encoder_layers_0_self_attn_q_proj"), Some(4), "TE ignores block dims");

    // Max-norm: every saved module's ΔW = up·down·alpha/rank has a Frobenius norm ≤ 0.02.
    let names: Vec<String> =
        file.tensor_names().filter(|n| n.ends_with(".lora_down.weight")).map(String::from).collect();
    for down_name in &names {
        let module = down_name.trim_end_matches(".lora_down.weight");
        let down_info = file.info(down_name).unwrap();
        let up_name = format!("{module}.lora_up.weight");
        let r = down_info.shape[0];
        let down =
            Tensor::from_vec(file.tensor_f32(down_name).unwrap(), (r, down_info.numel() / r), &Device::Cpu).unwrap();
        let up_values = file.tensor_f32(&up_name).unwrap();
        let up = Tensor::from_vec(up_values.clone(), (up_values.len() / r, r), &Device::Cpu).unwrap();
        let alpha = file.scalar_f32(&format!("{module}.alpha")).unwrap().unwrap();
        let norm = (up.matmul(&down).unwrap() * (alpha as f64 / r as f64)).unwrap().sqr().unwrap().sum_all().unwrap();
        let norm = norm.to_scalar::<f32>().unwrap().sqrt();
        assert!(norm <= 0.02 * (1.0 + 1e-4), "{module}: ‖ΔW‖ = {norm}");
    }

    // Logs: one group per block, LoRA+ groups at 4× the lr, IN11 at half, max-norm keys.
    let tb_dir = summary.log_dir.join("network_train");
    let event_file = std::fs::read_dir(&tb_dir).unwrap().next().unwrap().unwrap().path();
    let scalars = lorakit_train::tensorboard::read_scalars(&event_file).unwrap();
    let last = |tag: &str| scalars.iter().rev().find(|s| s.tag == tag).map(|s| s.value);
    let base = last("lr/unet_block1").expect("per-block groups");
    assert!((last("lr/unet_block1 plus").unwrap() - 4.0 * base).abs() < 1e-9);
    assert!((last("lr/unet_block11").unwrap() - 0.5 * base).abs() < 1e-9);
    assert!(last("lr/unet_block2").is_none());
    assert!(last("lr/textencoder").is_some() && last("lr/unet").is_none());
    assert!(last("max_norm/keys_scaled").unwrap() > 0.0, "the small max norm scales modules");
    assert!(last("max_norm/max_key_norm").unwrap() <= 0.02 * (1.0 + 1e-4));
    assert!(last("norm/avg_key_norm").is_some());

    let m = file.metadata();
    assert_eq!(m["ss_scale_weight_norms"], "0.02");
    let args: serde_json::Value = serde_json::from_str(&m["ss_network_args"]).unwrap();
    assert_eq!(args["block_dims"], dims.join(","));
    assert_eq!(args["down_lr_weight"], "1,1,0,1,1,1,1,1,1,1,1,0.5");
    assert_eq!(args["loraplus_unet_lr_ratio"], "4.0");

    // The multiplier scales the LoRA while training: same first loss (up = 0), then a different run.
    let mut plain = config(dir.path(), &data, "");
    plain.training.max_train_epochs = 3;
    plain.optimizer.lr_warmup_steps = 0.0;
    plain.folders.output_dir = dir.path().join("plain");
    let mut half = plain.clone();
    half.network.network_multiplier = 0.5;
    half.folders.output_dir = dir.path().join("half");
    let (a, b) = (train(plain, &model, None), train(half, &model, None));
    assert_eq!(a.losses[0], b.losses[0]);
    assert_ne!(a.losses, b.losses);
}

#[test]
fn every_optimizer_trains_and_resumes_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let model = model();
    for (kind, names) in lorakit_nn::optim::OptimizerKind::NAMES {
        let name = names[0];
        let adaptive = matches!(
            kind,
            lorakit_nn::optim::OptimizerKind::Prodigy | lorakit_nn::optim::OptimizerKind::ProdigyPlusScheduleFree
        );
        let mut cfg = config(dir.path(), &data, "save_state = true\n");
        cfg.training.train_batch_size = 1;
        cfg.training.cache_latents = false;
        cfg.optimizer.optimizer_type = name.to_string();
        cfg.optimizer.lr_warmup_steps = 0.0;
        // D-adaptation wants lr ≈ 1 and one lr for every group.
        cfg.optimizer.learning_rate = if adaptive { 1.0 } else { 1e-3 };
        cfg.optimizer.text_encoder_lr = None;
        cfg.optimizer.unet_lr = None;
        cfg.folders.output_dir = dir.path().join(name).join("full");
        let full = train(cfg.clone(), &model, None);
        assert_eq!(full.steps, 4, "{name}");
        assert!(full.losses.iter().all(|l| l.is_finite()), "{name}: {:?}", full.losses);
        let out = cfg.folders.output_dir.join("tiny.safetensors");
        let file = lorakit_lora::safetensors_file::LoraFile::open(&out).unwrap();
        let trained = tensors(&out);
        assert!(
            trained.iter().any(|(k, v)| k.ends_with("lora_up.weight") && v.iter().any(|x| *x != 0.0)),
            "{name}: the up weights moved"
        );
        let ss_optimizer = &file.metadata()["ss_optimizer"];
        // The class name (SGDNesterov is torch's SGD with nesterov=True, bitsandbytes' SGD8bit).
        assert!(ss_optimizer.contains(&name.replace("Nesterov", "")), "{name}: {ss_optimizer}");

        let mut resume = cfg.clone();
        resume.folders.output_dir = dir.path().join(name).join("resumed");
        resume.save.resume = Some(cfg.folders.output_dir.join("tiny-000001-state"));
        let resumed = train(resume.clone(), &model, None);
        assert_eq!(resumed.losses, full.losses[2..], "{name}: same losses after resume");
        assert_eq!(tensors(&resume.folders.output_dir.join("tiny.safetensors")), trained, "{name}: same final weights");
    }
}

#[test]
fn random_crop_color_aug_and_alpha_masks_reach_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let model = model();
    let mut base = config(dir.path(), &data, "");
    base.training.cache_latents = false;
    // 12 samples: a third of them get a colour augmentation.
    base.training.max_train_epochs = 6;
    base.optimizer.lr_warmup_steps = 0.0;
    base.folders.output_dir = dir.path().join("plain");
    let plain = train(base.clone(), &model, None);
    for (option, set) in [
        ("random_crop", (|c: &mut TrainConfig| c.dataset.random_crop = true) as fn(&mut TrainConfig)),
        ("color_aug", |c: &mut TrainConfig| c.dataset.color_aug = true),
    ] {
        let mut cfg = base.clone();
        set(&mut cfg);
        cfg.folders.output_dir = dir.path().join(option);
        let run = train(cfg.clone(), &model, None);
        assert_ne!(run.losses, plain.losses, "{option} changes what the model sees");
        assert_eq!(train(cfg, &model, None).losses, run.losses, "{option} is seeded: runs repeat exactly");
        // Latent caching keeps one crop and one colour: refused, naming both keys.
        let mut cached = base.clone();
        set(&mut cached);
        cached.training.cache_latents = true;
        let err = cached.validate().unwrap_err();
        assert!(err.contains(option) && err.contains("cache_latents"), "{err}");
    }

    // Fully transparent images: the alpha mask zeroes the loss, so nothing is learned.
    let alpha_dir = dir.path().join("alpha/1_ghost");
    std::fs::create_dir_all(&alpha_dir).unwrap();
    for i in 0..2u8 {
        let img = image::RgbaImage::from_fn(96, 64, |x, y| image::Rgba([(x * 2) as u8, (y * 3) as u8, 40 * i, 0]));
        img.save(alpha_dir.join(format!("g{i}.png"))).unwrap();
        std::fs::write(alpha_dir.join(format!("g{i}.txt")), "a ghost").unwrap();
    }
    let mut masked = base.clone();
    masked.dataset.train_data_dir = Some(dir.path().join("alpha"));
    masked.dataset.alpha_mask = true;
    masked.folders.output_dir = dir.path().join("masked");
    let run = train(masked.clone(), &model, None);
    assert!(run.losses.iter().all(|l| *l == 0.0), "{:?}", run.losses);
    let weights = tensors(&dir.path().join("masked/tiny.safetensors"));
    assert!(weights.iter().filter(|(k, _)| k.ends_with("lora_up.weight")).all(|(_, v)| v.iter().all(|x| *x == 0.0)));
    // Without the mask the same images are learned.
    masked.dataset.alpha_mask = false;
    masked.folders.output_dir = dir.path().join("unmasked");
    assert!(train(masked, &model, None).losses.iter().all(|l| *l > 0.0));
}

#[test]
fn full_fp16_fp8_base_and_no_half_vae_train_on_cpu() {
    use lorakit_train::model::{TrainableModel, WeightStorage};
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let path = repo("examples/quickstart/tiny-sd15");
    let load = |storage: WeightStorage| {
        StableDiffusionModel::load_with(&path, DType::F16, &Device::Cpu, false, storage).unwrap()
    };
    let mut base = config(dir.path(), &data, "");
    base.accelerate.mixed_precision = "fp16".into();
    base.optimizer.lr_warmup_steps = 0.0;
    base.training.cache_latents = false;
    base.folders.output_dir = dir.path().join("fp16");
    let half = load(WeightStorage::default());
    let plain = train(base.clone(), &half, None);

    // full_fp16: the LoRA itself is f16; it still learns and saves.
    let mut full = base.clone();
    full.accelerate.full_fp16 = true;
    full.folders.output_dir = dir.path().join("full");
    let run = train(full, &half, None);
    assert!(run.losses.iter().all(|l| l.is_finite()), "{:?}", run.losses);
    let file = lorakit_lora::safetensors_file::LoraFile::open(run.final_lora.as_ref().unwrap()).unwrap();
    assert_eq!(file.metadata()["ss_full_fp16"], "True");
    assert!(tensors(run.final_lora.as_ref().unwrap())
        .iter()
        .any(|(k, v)| k.ends_with("lora_up.weight") && v.iter().any(|x| *x != 0.0)));

    // fp8_base: 1-byte U-Net/TE weights, computed in f16: close to the f16 run, not identical.
    let fp8 = load(WeightStorage { fp8_base: true, ..Default::default() });
    assert_eq!(fp8.pipeline().unet.dtype(), DType::F16, "conv_in stays in the compute dtype");
    let mut cfg = base.clone();
    cfg.accelerate.fp8_base = true;
    cfg.folders.output_dir = dir.path().join("fp8");
    let run = train(cfg, &fp8, None);
    assert_ne!(run.losses, plain.losses);
    for (a, b) in run.losses.iter().zip(&plain.losses) {
        assert!((a - b).abs() < 0.1 * b.abs(), "fp8 {a} vs f16 {b}");
    }

    // no_half_vae: an f32 VAE under an f16 model; latents match the f32 model's encoder.
    let vae32 = load(WeightStorage { no_half_vae: true, ..Default::default() });
    assert_eq!(vae32.pipeline().vae.dtype(), DType::F32);
    assert_eq!(vae32.dtype(), DType::F16);
    let mut cfg = base.clone();
    cfg.accelerate.no_half_vae = true;
    cfg.folders.output_dir = dir.path().join("vae32");
    assert!(train(cfg, &vae32, None).losses.iter().all(|l| l.is_finite()));

    // sd-scripts' precision cross-checks.
    let mut bad = base.clone();
    bad.accelerate.mixed_precision = "no".into();
    bad.accelerate.full_fp16 = true;
    bad.accelerate.fp8_base = true;
    let err = bad.validate().unwrap_err();
    assert!(err.contains("full_fp16") && err.contains("fp8_base"), "{err}");
}

/// `--requests DIR` (lorakit gui's Save now / Sample now): a `save-now` file makes the next step
/// save the LoRA (and the state with save_state) as a step save does, and is removed; a
/// `sample-now` file without sample prompts is taken and said to have nothing to render.
#[test]
fn request_files_save_now_and_are_taken_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 4);
    let cfg = {
        let mut c = config(dir.path(), &data, "");
        c.save.save_state = true;
        c
    };
    let requests = dir.path().join("requests");
    std::fs::create_dir(&requests).unwrap();
    std::fs::write(requests.join(lorakit_train::trainer::SAVE_NOW_REQUEST), "").unwrap();
    std::fs::write(requests.join(lorakit_train::trainer::SAMPLE_NOW_REQUEST), "").unwrap();
    let model = model();
    let data_set = TrainData::load(&cfg).unwrap();
    let mut notes = Vec::new();
    let summary = Trainer::new(cfg, &model, data_set)
        .unwrap()
        .with_requests(requests.clone())
        .run(&AtomicBool::new(false), &mut |e| {
            if let TrainEvent::Note(n) = e {
                notes.push(n);
            }
        })
        .unwrap();
    let out = dir.path().join("out");
    assert!(out.join("tiny-step00000001.safetensors").is_file(), "saved at the first step: {:?}", summary.saved);
    assert!(out.join("tiny-step00000001-state").is_dir(), "with its state (save_state)");
    assert!(!out.join("tiny-step00000002.safetensors").exists(), "one request, one save");
    assert_eq!(std::fs::read_dir(&requests).unwrap().count(), 0, "both requests were taken");
    assert!(notes.iter().any(|n| n.contains("sample-now") && n.contains("sample_prompts")), "{notes:?}");
}
