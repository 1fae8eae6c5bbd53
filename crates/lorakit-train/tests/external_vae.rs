//! `model.vae` (sd-scripts' `--vae`): the run encodes its latents with the given VAE — the latent
//! cache records which VAE made it, is remade when the VAE changes and kept when the same VAE
//! comes in another layout — and the LoRA file names the VAE as `train_network.py` does; a
//! missing VAE stops the dry run and the run before any output is written.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lorakit_lora::safetensors_file::LoraFile;
use lorakit_train::TrainConfig;

use crate::common;
use common::{chessboard_dataset, repo, small_run_toml};

fn config(dir: &Path, data: &Path, out: &str, vae: Option<&Path>) -> TrainConfig {
    let text = small_run_toml(dir, data, &repo("examples/quickstart/tiny-sd15"));
    let mut sets = vec![
        "training.cache_latents_to_disk=true".to_string(),
        "training.max_train_epochs=1".to_string(),
        format!("folders.output_dir={:?}", dir.join(out).display().to_string()),
    ];
    if let Some(vae) = vae {
        sets.push(format!("model.vae={:?}", vae.display().to_string()));
    }
    TrainConfig::from_toml_str(&text, &sets).unwrap()
}

/// Each latent cache file's VAE fingerprint and latent, by file name.
fn caches(data: &Path) -> Vec<(String, String, Vec<f32>)> {
    let mut out = Vec::new();
    for entry in walk(data) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".lorakit-latent.safetensors") {
            continue;
        }
        let vae = LoraFile::open(&entry).unwrap().metadata()["lorakit.vae"].clone();
        let tensors = candle_core::safetensors::load(&entry, &candle_core::Device::Cpu).unwrap();
        let latent = tensors["latent"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        out.push((name, vae, latent));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn train(cfg: TrainConfig) {
    lorakit_train::train(cfg, &AtomicBool::new(false), &mut |_| {}).unwrap();
}

#[test]
fn the_given_vae_makes_the_latents_and_is_named_in_the_lora() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let ldm_file = repo("tests/fixtures/reference/vae_swap/ldm_bare.safetensors");
    let diffusers_folder = repo("tests/fixtures/reference/vae_swap/diffusers");

    train(config(dir.path(), &data, "own", None));
    let own = caches(&data);
    assert_eq!(own.len(), 2, "one cache file per image");

    train(config(dir.path(), &data, "swapped", Some(&ldm_file)));
    let swapped = caches(&data);
    for ((name, vae_before, latent_before), (_, vae_after, latent_after)) in own.iter().zip(&swapped) {
        assert_ne!(vae_before, vae_after, "{name}: the cache says which VAE made it");
        assert_ne!(latent_before, latent_after, "{name}: remade with the given VAE");
    }

    // The same VAE as a diffusers folder: the same tensors, so the cache is kept as it is.
    let before: Vec<_> =
        walk(&data).into_iter().map(|p| (p.clone(), std::fs::metadata(&p).unwrap().modified().unwrap())).collect();
    train(config(dir.path(), &data, "folder", Some(&diffusers_folder)));
    assert_eq!(caches(&data), swapped);
    for (path, modified) in before {
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), modified, "{} rewritten", path.display());
    }

    // The LoRA names the VAE as train_network.py does: file name, A1111's short hash, SHA-256.
    let lora = LoraFile::open(dir.path().join("swapped/tiny.safetensors")).unwrap();
    let meta = lora.metadata();
    assert_eq!(meta["ss_vae_name"], "ldm_bare.safetensors");
    use sha2::{Digest, Sha256};
    let sha: String = Sha256::digest(std::fs::read(&ldm_file).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(meta["ss_new_vae_hash"], sha);
    assert_eq!(meta["ss_vae_hash"].len(), 8);
    let folder_meta = LoraFile::open(dir.path().join("folder/tiny.safetensors")).unwrap().metadata().clone();
    assert_eq!(folder_meta["ss_vae_name"], "diffusers");
    assert!(!folder_meta.contains_key("ss_new_vae_hash"), "a folder has no file hash");
    let own_meta = LoraFile::open(dir.path().join("own/tiny.safetensors")).unwrap().metadata().clone();
    assert!(!own_meta.keys().any(|k| k.starts_with("ss_vae") || k.starts_with("ss_new_vae")));
}

#[test]
fn a_missing_or_foreign_vae_stops_the_dry_run_and_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 1);
    for (vae, says) in [
        (dir.path().join("sdxl_vae.safetensors"), "sdxl_vae.safetensors"),
        (repo("tests/fixtures/reference/sd3_tiny/pipeline/vae"), "16 latent channels"),
    ] {
        let cfg = config(dir.path(), &data, "out", Some(&vae));
        let dry = lorakit_train::dry_run(cfg.clone(), &mut |_| {}).map(|_| ()).unwrap_err().to_string();
        let run = lorakit_train::train(cfg, &AtomicBool::new(false), &mut |_| {}).map(|_| ()).unwrap_err().to_string();
        assert_eq!(dry, run);
        assert!(run.contains(says), "{run}");
        assert!(!dir.path().join("out").exists(), "a refused run wrote its output folder");
    }
}
