//! sd-scripts' validation (`validation_split`, `validation_seed`, `validate_every_n_steps`,
//! `validate_every_n_epochs`, `max_validation_steps`): the images sd-scripts' shuffle holds out
//! are not trained, their loss is measured where sd-scripts measures it and logged under its
//! names, the measurement leaves training exactly as it was, and the LoRA's metadata says so.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lorakit_dataset::validation_split::PyRandom;
use lorakit_lora::safetensors_file::LoraFile;
use lorakit_train::data::TrainData;
use lorakit_train::TrainConfig;

use crate::common;
use common::{chessboard_dataset, repo, small_run_toml};

fn config(dir: &Path, data: &Path, out: &str, sets: &[&str]) -> TrainConfig {
    let text = small_run_toml(dir, data, &repo("examples/quickstart/tiny-sd15"));
    let mut all = vec![format!("folders.output_dir={:?}", dir.join(out).display().to_string())];
    all.extend(sets.iter().map(|s| s.to_string()));
    TrainConfig::from_toml_str(&text, &all).unwrap()
}

/// The log rows (`log.jsonl`) of a run.
fn log_rows(log_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log_dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn file_names(paths: impl IntoIterator<Item = PathBuf>) -> Vec<String> {
    let mut names: Vec<String> = paths.into_iter().map(|p| p.file_name().unwrap().to_string_lossy().into()).collect();
    names.sort();
    names
}

#[test]
fn held_out_images_are_the_ones_sd_scripts_holds_out_and_never_train() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 2, 4);
    let cfg = config(dir.path(), &data, "out", &["dataset.validation_split=0.25", "dataset.validation_seed=3"]);
    let loaded = TrainData::load(&cfg).unwrap();

    // sd-scripts: the subset's sorted list shuffled by random.seed(3); train = first ceil(4·0.75),
    // validation = last round(4·0.25).
    let mut sorted = file_names(std::fs::read_dir(data.join("2_chessboard")).unwrap().map(|e| e.unwrap().path()));
    sorted.retain(|n| n.ends_with(".jpg"));
    let mut order: Vec<usize> = (0..sorted.len()).collect();
    PyRandom::seed(3).shuffle(&mut order);
    let want_train = file_names(order[..3].iter().map(|&i| PathBuf::from(&sorted[i])));
    let want_validation = file_names(order[3..].iter().map(|&i| PathBuf::from(&sorted[i])));

    let trained = file_names(loaded.images.iter().filter(|i| i.repeats > 0).map(|i| i.path.clone()));
    let validated = file_names(
        loaded.validation.iter().flat_map(|b| b.samples.iter().map(|s| loaded.images[s.image].path.clone())),
    );
    assert_eq!(trained, want_train);
    assert_eq!(validated, want_validation);
    assert_eq!(loaded.num_train_images(), 3 * 2, "three images × 2 repeats");
    assert_eq!(loaded.num_validation_images(), 1);
    assert!(loaded.notes.iter().any(|n| n.contains("validation_split 0.25 holds 1 image(s) out of training")));

    // The same split from a dataset TOML (sd-scripts' per-dataset keys), which used to be ignored.
    let toml_path = dir.path().join("dataset.toml");
    std::fs::write(
        &toml_path,
        format!(
            "[general]\nresolution = 64\nmin_bucket_reso = 64\nmax_bucket_reso = 128\n\n[[datasets]]\nbatch_size = 2\nvalidation_split = 0.25\nvalidation_seed = 3\n[[datasets.subsets]]\nimage_dir = {:?}\nnum_repeats = 2\n",
            data.join("2_chessboard").display().to_string()
        ),
    )
    .unwrap();
    let from_toml =
        config(dir.path(), &data, "out", &[&format!("dataset.dataset_config={:?}", toml_path.display().to_string())]);
    let loaded = TrainData::load(&from_toml).unwrap();
    assert_eq!(file_names(loaded.images.iter().filter(|i| i.repeats > 0).map(|i| i.path.clone())), want_train);
    assert_eq!(loaded.num_validation_images(), 1);
}

#[test]
fn the_validation_loss_is_logged_where_sd_scripts_logs_it_and_leaves_training_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 2, 4);
    let split = ["dataset.validation_split=0.25", "dataset.validation_seed=3"];
    let run = |out: &str, extra: &[&str]| {
        let sets: Vec<&str> = split.iter().copied().chain(extra.iter().copied()).collect();
        lorakit_train::train(config(dir.path(), &data, out, &sets), &AtomicBool::new(false), &mut |_| {}).unwrap()
    };
    // 3 train images × 2 repeats, batch 2: 3 steps per epoch, 2 epochs.
    let measured = run("measured", &["training.validate_every_n_steps=2"]);
    let again = run("again", &["training.validate_every_n_steps=2"]);
    let quiet = run("quiet", &["training.validate_every_n_epochs=5"]);
    assert_eq!(measured.steps, 6);
    assert_eq!(measured.losses, quiet.losses, "measuring the validation loss changed training");
    let weights = |p: &Path| std::fs::read(p).map(|b| b.len()).unwrap();
    assert_eq!(weights(measured.final_lora.as_ref().unwrap()), weights(quiet.final_lora.as_ref().unwrap()));
    let tensors = |p: &PathBuf| common::tensors(p);
    assert_eq!(tensors(measured.final_lora.as_ref().unwrap()), tensors(quiet.final_lora.as_ref().unwrap()));

    let rows = log_rows(&measured.log_dir);
    let step_rows: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r.get("loss/validation/step_average").is_some()).collect();
    let steps: Vec<u64> = step_rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [2, 4, 6], "after every 2nd optimizer step");
    for r in &step_rows {
        let (v, avg) = (r["loss/validation/step_average"].as_f64().unwrap(), r["loss/average"].as_f64().unwrap());
        assert!(v.is_finite() && v > 0.0);
        assert!((r["loss/validation/step_divergence"].as_f64().unwrap() - (v - avg)).abs() < 1e-12);
    }
    let epoch_rows: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r.get("loss/validation/epoch_average").is_some()).collect();
    assert_eq!(
        epoch_rows.iter().map(|r| r["epoch"].as_u64().unwrap()).collect::<Vec<_>>(),
        [1, 2],
        "every epoch by default"
    );
    // Step 6 ends epoch 2: the same weights, the same noise — the same number.
    assert_eq!(epoch_rows[1]["loss/validation/epoch_average"], step_rows[2]["loss/validation/step_average"]);
    // A second run measures the same numbers.
    let again_rows = log_rows(&again.log_dir);
    let values = |rows: &[serde_json::Value]| -> Vec<serde_json::Value> {
        rows.iter().filter_map(|r| r.get("loss/validation/step_average").cloned()).collect()
    };
    assert_eq!(values(&rows), values(&again_rows));
    // validate_every_n_epochs beyond the run: never measured.
    assert!(log_rows(&quiet.log_dir).iter().all(|r| r.get("loss/validation/epoch_average").is_none()));

    let meta = LoraFile::open(measured.final_lora.as_ref().unwrap()).unwrap().metadata().clone();
    assert_eq!(meta["ss_num_validation_images"], "1");
    assert_eq!(meta["ss_num_train_images"], "6");
    assert_eq!(meta["ss_validation_split"], "0.25");
    assert_eq!(meta["ss_validation_seed"], "3");
    assert_eq!(meta["ss_validate_every_n_steps"], "2");
    assert_eq!(meta["ss_validate_every_n_epochs"], "None");
    assert_eq!(meta["ss_max_validation_steps"], "None");
}

#[test]
fn validation_settings_without_a_split_or_out_of_range_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let loaded = TrainData::load(&config(dir.path(), &data, "out", &["training.validate_every_n_steps=5"])).unwrap();
    assert!(loaded.validation.is_empty());
    assert!(loaded.notes.iter().any(|n| n.contains("have no effect") && n.contains("dataset.validation_split")));
    assert!(loaded.notes.iter().any(|n| n.contains("have no effect: no images are held out")), "{:?}", loaded.notes);
    for (set, says) in [
        ("dataset.validation_split=1.0", "dataset.validation_split = 1"),
        ("dataset.validation_split=-0.1", "dataset.validation_split = -0.1"),
        ("training.max_validation_steps=0", "training.max_validation_steps = 0"),
    ] {
        let text = small_run_toml(dir.path(), &data, &repo("examples/quickstart/tiny-sd15"));
        let err = TrainConfig::from_toml_str(&text, &[set.to_string()]).unwrap_err();
        assert!(err.contains(says), "{set}: {err}");
    }
}

#[test]
fn regularisation_images_stay_whole_and_balance_against_the_trained_images() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 10, 4);
    let reg_src = repo("examples/dataset/reg");
    let reg_folder = std::fs::read_dir(&reg_src).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
    let reg = dir.path().join("reg");
    let reg_sub = reg.join("1_reg");
    std::fs::create_dir_all(&reg_sub).unwrap();
    let mut copied = 0;
    for f in std::fs::read_dir(&reg_folder).unwrap().map(|e| e.unwrap().path()) {
        std::fs::copy(&f, reg_sub.join(f.file_name().unwrap())).unwrap();
        copied += usize::from(f.extension().is_some_and(|e| e != "txt"));
    }
    assert!(copied > 0, "no regularisation images in {}", reg_folder.display());
    let cfg = config(
        dir.path(),
        &data,
        "out",
        &[
            "dataset.validation_split=0.25",
            "dataset.validation_seed=3",
            &format!("dataset.reg_data_dir={:?}", reg.display().to_string()),
        ],
    );
    let loaded = TrainData::load(&cfg).unwrap();
    // 3 of 4 train images × 10 repeats; the regularisation images, never split, balance to that.
    assert_eq!(loaded.num_train_images(), 30);
    assert_eq!(loaded.num_reg_images(), 30);
    assert_eq!(loaded.num_validation_images(), 1);
    let validated: Vec<bool> =
        loaded.validation.iter().flat_map(|b| b.samples.iter().map(|s| loaded.images[s.image].is_reg)).collect();
    assert_eq!(validated, [false]);
}
