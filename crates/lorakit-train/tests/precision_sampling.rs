//! Every precision the CPU runs × every way a run renders sample images, end to end on the
//! bundled tiny model: f32, `mixed_precision = "fp16"`, fp16 with `full_fp16`, fp16 with
//! `fp8_base`; each with a sample before training (`sample_at_first`) and after every epoch, from
//! a prompt file holding plain and emphasis-weighted prompts over several samplers. (An fp16 run
//! used to stop at its first sample: the sampler fed the f16 UNet f32 latents.) bf16 is refused on
//! the CPU with the same message by the dry run and the run.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lorakit_train::{TrainConfig, TrainEvent};

use crate::common;
use common::{chessboard_dataset, repo, small_run_toml};

/// A plain prompt, an emphasis-weighted one and one with a negative prompt, each with its own
/// sampler, at the smallest size and two steps.
const PROMPTS: &str = "\
chkbrd, a board --w 64 --h 64 --d 3 --s 2 --ss euler_a
chkbrd, (board:1.3), [noise], ((sharp)) --w 64 --h 64 --d 4 --s 2 --ss ddim
chkbrd --n (blurry:1.2) --w 64 --h 64 --d 5 --s 2 --ss dpmpp_2m_karras
";

/// A 1-step run (one batch in one epoch) sampling first and after each epoch.
fn config(dir: &Path, sets: &[&str]) -> TrainConfig {
    let data = chessboard_dataset(dir, 1, 2);
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, PROMPTS).unwrap();
    let text = format!(
        "{}\n[samples]\nsample_prompts = \"{}\"\nsample_at_first = true\nsample_every_n_epochs = 1\n",
        small_run_toml(dir, &data, &repo("examples/quickstart/tiny-sd15")),
        prompts.display()
    );
    let sets: Vec<String> =
        std::iter::once("training.max_train_epochs=1").chain(sets.iter().copied()).map(String::from).collect();
    TrainConfig::from_toml_str(&text, &sets).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether a PNG has more than one colour (a NaN latent decodes to a flat image).
fn varied_png(path: &Path) -> bool {
    let image = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    if !path.to_string_lossy().ends_with("_grid.png") {
        assert_eq!(image.dimensions(), (64, 64), "{}", path.display());
    }
    let first = image.get_pixel(0, 0);
    image.pixels().any(|p| p != first)
}

#[test]
fn every_cpu_precision_samples_at_first_and_per_epoch_with_weighted_and_plain_prompts() {
    let precisions: [(&str, &[&str]); 4] = [
        ("f32", &["accelerate.mixed_precision=no"]),
        ("fp16", &["accelerate.mixed_precision=fp16", "training.weighted_captions=true"]),
        ("full_fp16", &["accelerate.mixed_precision=fp16", "accelerate.full_fp16=true"]),
        (
            "fp8_base",
            &["accelerate.mixed_precision=fp16", "accelerate.fp8_base=true", "training.weighted_captions=true"],
        ),
    ];
    for (name, sets) in precisions {
        let dir = tempfile::tempdir().unwrap();
        let mut sampled: Vec<PathBuf> = Vec::new();
        let mut events = |e: TrainEvent| {
            if let TrainEvent::Sampled(p) = e {
                sampled.push(p);
            }
        };
        let summary = lorakit_train::train(config(dir.path(), sets), &AtomicBool::new(false), &mut events)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(summary.steps, 1, "{name}");
        assert!(summary.losses.iter().all(|l| l.is_finite()), "{name}: {:?}", summary.losses);
        assert!(summary.final_lora.as_ref().is_some_and(|p| p.is_file()), "{name}");

        // Step 0 and epoch 1: three prompts and a grid each.
        let names: Vec<String> =
            sampled.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(sampled.len(), 8, "{name}: {names:?}");
        for tag in ["tiny_000000_", "tiny_e000001_"] {
            assert_eq!(names.iter().filter(|n| n.starts_with(tag)).count(), 4, "{name}: {tag} in {names:?}");
            assert!(names.contains(&format!("{tag}grid.png")), "{name}: {tag}grid.png in {names:?}");
        }
        for path in &sampled {
            assert!(varied_png(path), "{name}: {} is one flat colour", path.display());
        }
    }
}

#[test]
fn bf16_is_refused_on_the_cpu_by_the_dry_run_and_the_run_alike() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &["accelerate.mixed_precision=bf16"]);
    let dry = lorakit_train::dry_run(cfg.clone(), &mut |_| {}).map(|_| ()).unwrap_err().to_string();
    let run = lorakit_train::train(cfg, &AtomicBool::new(false), &mut |_| {}).map(|_| ()).unwrap_err().to_string();
    assert_eq!(dry, run);
    assert!(
        dry.contains("accelerate.mixed_precision")
            && dry.contains("bf16")
            && dry.contains("CPU")
            && dry.contains("\"no\""),
        "{dry}"
    );
    assert!(!dir.path().join("out").exists(), "a refused run writes nothing");
}
