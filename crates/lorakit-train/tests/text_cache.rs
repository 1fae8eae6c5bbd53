//! `training.cache_text_encoder_outputs` (+ `_to_disk`): training from cached conditioning
//! matches training with live encoders, the disk cache is reused only while caption and model
//! match, and options that change captions per step (or train the encoders) are refused.

use crate::common;

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use common::{chessboard_dataset, repo, small_run_toml, train};
use lorakit_train::data::TrainData;
use lorakit_train::model::StableDiffusionModel;
use lorakit_train::{TrainConfig, TrainEvent, Trainer};

fn model() -> StableDiffusionModel {
    StableDiffusionModel::load(&repo("examples/quickstart/tiny-sd15"), DType::F32, &Device::Cpu, false).unwrap()
}

fn config(dir: &std::path::Path, extra: &[&str]) -> TrainConfig {
    let data = chessboard_dataset(dir, 1, 3);
    let text = small_run_toml(dir, &data, &repo("examples/quickstart/tiny-sd15"));
    let mut sets: Vec<String> = vec!["network.network_train_unet_only=true".into(), "network.conv_dim=0".into()];
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_toml_str(&text, &sets).unwrap_or_else(|e| panic!("{e}"))
}

/// The error `Trainer::run` ends with.
fn run_error(config: TrainConfig, model: &StableDiffusionModel) -> String {
    let data = TrainData::load(&config).unwrap();
    let trainer = Trainer::new(config, model, data).unwrap();
    match trainer.run(&AtomicBool::new(false), &mut |_| {}) {
        Ok(_) => panic!("the run should be refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn cached_outputs_train_like_live_encoders() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let live = train(config(&dir.path().join("live"), &[]), &model, None);
    let cached = train(config(&dir.path().join("cached"), &["training.cache_text_encoder_outputs=true"]), &model, None);
    assert_eq!(live.losses.len(), cached.losses.len());
    for (a, b) in live.losses.iter().zip(&cached.losses) {
        assert!(a.is_finite() && (a - b).abs() <= 1e-5 * a.abs().max(1e-3), "live {a} vs cached {b}");
    }
}

#[test]
fn disk_cache_is_reused_until_the_caption_changes() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &["training.cache_text_encoder_outputs_to_disk=true"]);
    let notes = |cfg: TrainConfig| -> Vec<String> {
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
        notes
    };
    let first = notes(cfg.clone());
    assert!(first.iter().any(|n| n.contains("(0 images' outputs reused from disk)")), "{first:?}");
    let folder = dir.path().join("data/1_chessboard");
    let caches: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".lorakit-te.safetensors"))
        .collect();
    assert_eq!(caches.len(), 3, "one cache file per image");

    let second = notes(cfg.clone());
    assert!(second.iter().any(|n| n.contains("(3 images' outputs reused from disk)")), "{second:?}");

    // Editing one caption invalidates that image's cache only.
    let mut captions: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    captions.sort();
    std::fs::write(&captions[0], "chkbrd, an edited caption").unwrap();
    let third = notes(cfg);
    assert!(third.iter().any(|n| n.contains("(2 images' outputs reused from disk)")), "{third:?}");
}

#[test]
fn options_that_change_captions_or_train_the_encoders_are_refused() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    for (extra, expected) in [
        ("dataset.shuffle_caption=true", "shuffle_caption"),
        ("dataset.caption_dropout_rate=0.1", "caption_dropout_rate"),
        ("dataset.caption_tag_dropout_rate=0.1", "caption_tag_dropout_rate"),
        ("dataset.token_warmup_step=10", "token_warmup_step"),
        ("network.network_train_unet_only=false", "network_train_unet_only"),
    ] {
        let cfg = config(&dir.path().join(expected), &["training.cache_text_encoder_outputs=true", extra]);
        let err = run_error(cfg, &model);
        assert!(err.contains("cache_text_encoder_outputs") && err.contains(expected), "{extra}: {err}");
    }
}

#[test]
fn a_run_without_samples_releases_the_encoders_after_caching() {
    let dir = tempfile::tempdir().unwrap();
    let live = train(config(&dir.path().join("live"), &[]), &model(), None);
    let cfg = config(&dir.path().join("released"), &["training.cache_text_encoder_outputs=true"]);
    assert!(cfg.samples.sample_prompts.is_none());
    let mut notes = Vec::new();
    let released = lorakit_train::train(cfg, &AtomicBool::new(false), &mut |e| {
        if let TrainEvent::Note(n) = e {
            notes.push(n)
        }
    })
    .unwrap();
    assert!(notes.iter().any(|n| n.contains("the text encoders left memory")), "{notes:?}");
    for (a, b) in live.losses.iter().zip(&released.losses) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "live {a} vs released {b}");
    }
}
