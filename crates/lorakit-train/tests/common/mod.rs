//! Helpers shared by the end-to-end training tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lorakit_train::data::TrainData;
use lorakit_train::model::TrainableModel;
use lorakit_train::{TrainConfig, TrainEvent, Trainer};

/// A path in the repository.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

/// A small DreamBooth folder `<dir>/data/<repeats>_chessboard` with the first `images` images
/// (and their captions) of the sample dataset's 8_chessboard folder; returns `<dir>/data`.
pub fn chessboard_dataset(dir: &Path, repeats: u32, images: usize) -> PathBuf {
    let src = repo("examples/dataset/img/8_chessboard");
    let dst = dir.join("data").join(format!("{repeats}_chessboard"));
    std::fs::create_dir_all(&dst).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for jpg in names.iter().filter(|p| p.extension().is_some_and(|e| e == "jpg")).take(images) {
        std::fs::copy(jpg, dst.join(jpg.file_name().unwrap())).unwrap();
        let txt = jpg.with_extension("txt");
        if txt.exists() {
            std::fs::copy(&txt, dst.join(txt.file_name().unwrap())).unwrap();
        }
    }
    dir.join("data")
}

/// Copies a diffusers model folder's `model_index.json` and the given component folders to `dst`
/// (to edit a config or weights in the copy); returns `dst`.
#[allow(dead_code)] // not every test binary edits a model
pub fn copy_model_folder(src: &Path, dst: &Path, components: &[&str]) -> PathBuf {
    for sub in components {
        std::fs::create_dir_all(dst.join(sub)).unwrap();
        for entry in std::fs::read_dir(src.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dst.join(sub).join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(src.join("model_index.json"), dst.join("model_index.json")).unwrap();
    dst.to_path_buf()
}

/// The config of a short run (2 epochs, batch 2, rank 4 + conv rank 2, a save per epoch)
/// of `model` on `data`, writing `<dir>/out/tiny*.safetensors`.
pub fn small_run_toml(dir: &Path, data: &Path, model: &Path) -> String {
    format!(
        r#"
[model]
pretrained_model_name_or_path = "{model}"
[folders]
output_dir = "{out}"
output_name = "tiny"
[metadata]
metadata_author = "tester"
metadata_trigger_phrase = "chkbrd"
[dataset]
train_data_dir = "{data}"
resolution = "64"
min_bucket_reso = 64
max_bucket_reso = 128
bucket_reso_steps = 64
[network]
network_dim = 4
network_alpha = 2
conv_dim = 2
[training]
train_batch_size = 2
max_train_epochs = 2
seed = 7
[optimizer]
learning_rate = 2e-3
lr_scheduler = "cosine"
lr_warmup_steps = 1
[save]
save_every_n_epochs = 1
save_precision = "float"
"#,
        model = model.display(),
        out = dir.join("out").display(),
        data = data.display(),
    )
}

/// Runs `config` on `model`; with `stop_after`, stops (as Ctrl-C does) after that step.
#[allow(dead_code)] // not every test binary trains
pub fn train(config: TrainConfig, model: &dyn TrainableModel, stop_after: Option<u64>) -> lorakit_train::RunSummary {
    let data = TrainData::load(&config).unwrap();
    let trainer = Trainer::new(config, model, data).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let mut events = move |e: TrainEvent| {
        if let (TrainEvent::Step { step, .. }, Some(n)) = (&e, stop_after) {
            if *step == n {
                flag.store(true, Ordering::SeqCst);
            }
        }
    };
    trainer.run(&stop, &mut events).unwrap()
}

/// Every tensor of a safetensors file, as f32 values by name.
#[allow(dead_code)]
pub fn tensors(path: &Path) -> HashMap<String, Vec<f32>> {
    let file = lorakit_lora::safetensors_file::LoraFile::open(path).unwrap();
    file.tensor_names().map(|n| (n.to_string(), file.tensor_f32(n).unwrap())).collect()
}

/// The runs of [`assert_resume_is_exact`].
#[allow(dead_code)]
pub struct ResumeRuns {
    /// The uninterrupted run.
    pub full: lorakit_train::RunSummary,
    /// The run stopped after `stop_after` steps.
    pub part: lorakit_train::RunSummary,
    /// The state that stop saved.
    pub state: PathBuf,
}

/// Runs `config` (a run that saves states) uninterrupted, then again into `<dir>/part` stopped
/// after `stop_after` steps as Ctrl-C stops it, resumed from the state that stop saved, and
/// asserts the resumed run repeats the uninterrupted one bit for bit: losses and final weights
/// (`<output_name>.safetensors` in both output folders).
#[allow(dead_code)]
pub fn assert_resume_is_exact(
    config: &TrainConfig,
    model: &dyn TrainableModel,
    dir: &Path,
    stop_after: u64,
) -> ResumeRuns {
    let full = train(config.clone(), model, None);
    let mut part_cfg = config.clone();
    part_cfg.folders.output_dir = dir.join("part");
    let part = train(part_cfg.clone(), model, Some(stop_after));
    let state = part.interrupted_state.clone().expect("stop saves a state");
    assert_eq!(part.steps, stop_after);
    assert_eq!(part.losses, full.losses[..stop_after as usize]);
    let mut resume_cfg = part_cfg;
    resume_cfg.save.resume = Some(state.clone());
    let resumed = train(resume_cfg, model, None);
    assert_eq!(resumed.losses, full.losses[stop_after as usize..], "bitwise-identical loss curve after resume");
    let file = format!("{}.safetensors", config.folders.output_name);
    assert_eq!(
        tensors(&dir.join("part").join(&file)),
        tensors(&config.folders.output_dir.join(&file)),
        "identical final weights"
    );
    ResumeRuns { full, part, state }
}
