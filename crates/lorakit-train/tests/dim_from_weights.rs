//! `network.dim_from_weights` (sd-scripts' `--dim_from_weights`): the network is the file's —
//! exactly its modules, each at its own rank and alpha (a resized LoRA keeps its ranks), the text
//! encoders only when the file adapts them — and it continues from the file's weights.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use lorakit_lora::keys::modules;
use lorakit_lora::safetensors_file::LoraFile;
use lorakit_train::TrainConfig;

use crate::common;
use common::{chessboard_dataset, repo, small_run_toml};

fn config(dir: &Path, data: &Path, out: &str, sets: &[String]) -> TrainConfig {
    let text = small_run_toml(dir, data, &repo("examples/quickstart/tiny-sd15"));
    let mut all = vec![
        format!("folders.output_dir={:?}", dir.join(out).display().to_string()),
        "training.max_train_epochs=1".to_string(),
    ];
    all.extend(sets.iter().cloned());
    TrainConfig::from_toml_str(&text, &all).unwrap()
}

/// (rank, alpha) of every module of a LoRA file.
fn shape(path: &Path) -> HashMap<String, (usize, f32)> {
    let file = LoraFile::open(path).unwrap();
    modules(&file).unwrap().modules.into_iter().map(|m| (m.name, (m.rank, m.alpha))).collect()
}

#[test]
fn the_network_is_the_files_modules_at_their_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let run = |cfg: TrainConfig| lorakit_train::train(cfg, &AtomicBool::new(false), &mut |_| {});
    let first = run(config(dir.path(), &data, "a", &[])).unwrap();
    let a = first.final_lora.unwrap();
    let a_shape = shape(&a);
    assert!(a_shape.keys().any(|k| k.starts_with("lora_te_")), "the first run trains the text encoder");

    // The file as a user might have it after editing or resizing: no text-encoder modules, and
    // one U-Net module cut to rank 2 with alpha 1.
    let mut tensors = candle_core::safetensors::load(&a, &Device::Cpu).unwrap();
    tensors.retain(|k, _| !k.starts_with("lora_te_"));
    let mut names: Vec<String> =
        tensors.keys().filter_map(|k| k.strip_suffix(".lora_down.weight")).map(str::to_string).collect();
    names.sort();
    let cut = names.iter().find(|n| tensors[&format!("{n}.lora_down.weight")].rank() == 2).unwrap().clone();
    let down = tensors[&format!("{cut}.lora_down.weight")].narrow(0, 0, 2).unwrap().contiguous().unwrap();
    let up = tensors[&format!("{cut}.lora_up.weight")].narrow(1, 0, 2).unwrap().contiguous().unwrap();
    tensors.insert(format!("{cut}.lora_down.weight"), down);
    tensors.insert(format!("{cut}.lora_up.weight"), up);
    tensors.insert(format!("{cut}.alpha"), Tensor::new(1f32, &Device::Cpu).unwrap());
    let edited = dir.path().join("edited.safetensors");
    candle_core::safetensors::save(&tensors, &edited).unwrap();
    let edited_shape = shape(&edited);

    let weights = format!("network.network_weights={:?}", edited.display().to_string());
    let sets = [weights.clone(), "network.dim_from_weights=true".into(), "network.network_dim=8".into()];
    let second = run(config(dir.path(), &data, "b", &sets)).unwrap();
    let b_shape = shape(second.final_lora.as_ref().unwrap());
    assert_eq!(b_shape, edited_shape, "exactly the file's modules, ranks and alphas");
    assert_eq!(b_shape[&cut], (2, 1.0));
    assert!(!b_shape.keys().any(|k| k.starts_with("lora_te_")), "no text-encoder modules in the file: none trained");
    // Not the unused network_dim: the ranks differ per module, as resize_lora.py labels them.
    let meta = LoraFile::open(second.final_lora.as_ref().unwrap()).unwrap().metadata().clone();
    assert_eq!((meta["ss_network_dim"].as_str(), meta["ss_network_alpha"].as_str()), ("Dynamic", "Dynamic"));

    // Without dim_from_weights the file does not fit the configured network: refused, not reshaped.
    let err = run(config(dir.path(), &data, "c", &[weights.clone(), "network.network_dim=8".into()])).unwrap_err();
    let err = err.to_string();
    assert!(
        err.starts_with("network.network_weights = ") && err.contains("set network.dim_from_weights = true"),
        "{err}"
    );

    // Refusals: no file; a file of another model.
    let err = run(config(dir.path(), &data, "d", &["network.dim_from_weights=true".into()])).unwrap_err();
    assert!(err.to_string().contains("set that file too"), "{err}");
    let flux_lora = repo("tests/fixtures/reference/trained_lora/tiny_flux_trained.safetensors");
    let other = [
        format!("network.network_weights={:?}", flux_lora.display().to_string()),
        "network.dim_from_weights=true".into(),
    ];
    let err = run(config(dir.path(), &data, "e", &other)).unwrap_err();
    assert!(err.to_string().contains("match no layer of this model"), "{err}");
}
