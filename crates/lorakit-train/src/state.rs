//! Resumable training state: a folder with the LoRA weights in f32 (`network.safetensors`), the
//! optimizer's tensors (`optimizer.safetensors`) and everything else as JSON (`train_state.json`:
//! step, epoch, position in the epoch, loss history, loss scale, optimizer scalars).
//!
//! Nothing else is needed to continue exactly: every random draw of a step (noise, timesteps,
//! flips, dropout masks, data order) is derived from (seed, epoch/step), never from a running RNG,
//! so there is no RNG state to carry. The folder is written under a temporary name and renamed
//! into place, so a crash during a save leaves the previous state intact.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor, Var};
use lorakit_models::lora_inject::to_file_tensor;
use lorakit_nn::lora::LoraSet;
use lorakit_nn::optim::{Optimizer, OptimizerState};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Layout version of state folders.
pub const STATE_FORMAT: u32 = 1;

/// The JSON part of a state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressState {
    /// Layout version.
    pub format: u32,
    /// The lorakit version that wrote it.
    pub lorakit_version: String,
    /// Optimizer steps done.
    pub global_step: u64,
    /// The epoch (0-based) training continues in.
    pub epoch: u64,
    /// The batch of that epoch training continues from.
    pub next_batch: u64,
    /// Batches per epoch when saved (a changed dataset changes the order; resume warns).
    pub batches_per_epoch: u64,
    /// The run seed.
    pub seed: u64,
    /// Loss per batch slot (sd-scripts' moving-average window).
    pub loss_window: Vec<f64>,
    /// Losses of the current epoch so far.
    pub epoch_losses: Vec<f64>,
    /// fp16 dynamic loss scale (and good steps since the last change).
    pub loss_scale: Option<(f64, u64)>,
    /// The optimizer's scalar state.
    pub optimizer_scalars: serde_json::Value,
    /// sd-scripts-compatible marker (`current_epoch` 1-based, `current_step`).
    pub current_epoch: u64,
    /// Same as `global_step`.
    pub current_step: u64,
}

fn write_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let mut file_tensors = BTreeMap::new();
    for (name, t) in tensors {
        file_tensors.insert(name.clone(), to_file_tensor(t)?);
    }
    let bytes = lorakit_lora::safetensors_file::serialize(
        &file_tensors,
        &BTreeMap::new(),
        lorakit_lora::safetensors_file::Precision::F32,
    )?;
    std::fs::write(path, bytes).map_err(|e| TrainError::io(path, e))?;
    Ok(())
}

/// The network's trainable tensors by kohya name (`<module>.lora_down.weight`, …), f32.
pub fn network_tensors(sets: &[Arc<LoraSet>]) -> BTreeMap<String, Tensor> {
    sets.iter().flat_map(|s| s.named_vars()).map(|v| (v.name, v.var.as_tensor().clone())).collect()
}

/// Sets the network's `Var`s from `tensors` (by kohya name). Strict: every module must be
/// present with its shape (a state), or lenient: missing ones are reported (initial weights).
pub fn load_network_tensors(
    sets: &[Arc<LoraSet>],
    tensors: &HashMap<String, Tensor>,
    strict: bool,
    origin: &Path,
) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    let mut problems = Vec::new();
    let mut used = 0;
    for set in sets {
        for lorakit_nn::lora::NamedVar { name, var, optional } in set.named_vars() {
            match tensors.get(&name) {
                None if optional => {}
                None => missing.push(name),
                Some(t) if t.dims() != var.dims() => problems.push(format!(
                    "{name}: shape {:?} in the file, {:?} in this network (different network_dim/conv_dim?)",
                    t.dims(),
                    var.dims()
                )),
                Some(t) => {
                    set_var(&var, t)?;
                    used += 1;
                }
            }
        }
    }
    if !problems.is_empty() || (strict && !missing.is_empty()) || used == 0 {
        let mut msg = String::from("the saved network does not fit this config's network");
        for p in problems.iter().chain(missing.iter().map(|m| m as &String)).take(8) {
            msg.push_str(&format!("\n  {p}"));
        }
        return Err(TrainError::Resume { path: origin.to_path_buf(), message: msg });
    }
    Ok(missing)
}

fn set_var(var: &Var, value: &Tensor) -> Result<()> {
    var.set(&value.to_dtype(var.dtype())?.to_device(var.device())?)?;
    Ok(())
}

/// Writes a state folder atomically (temporary folder, then rename over the old one).
pub fn save_state(
    dir: &Path,
    sets: &[Arc<LoraSet>],
    optimizer: &dyn Optimizer,
    progress: &ProgressState,
) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "state".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;

    write_tensors(&tmp.join("network.safetensors"), &network_tensors(sets))?;
    let opt_state = optimizer.state()?;
    write_tensors(&tmp.join("optimizer.safetensors"), &opt_state.tensors)?;
    let mut progress = progress.clone();
    progress.optimizer_scalars = opt_state.scalars;
    let json = serde_json::to_vec_pretty(&progress).map_err(|e| TrainError::Other(e.to_string()))?;
    let json_path = tmp.join("train_state.json");
    std::fs::write(&json_path, json).map_err(|e| TrainError::io(&json_path, e))?;
    for f in ["network.safetensors", "optimizer.safetensors", "train_state.json"] {
        let p = tmp.join(f);
        std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(|e| TrainError::io(&p, e))?;
    }

    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A loaded state.
pub struct LoadedState {
    /// Its folder.
    pub dir: PathBuf,
    /// Progress and scalars.
    pub progress: ProgressState,
    /// Network tensors by kohya name.
    pub network: HashMap<String, Tensor>,
    /// Optimizer state.
    pub optimizer: OptimizerState,
}

/// Reads a state folder (everything checked before anything is applied).
pub fn load_state(dir: &Path, device: &Device) -> Result<LoadedState> {
    let err = |message: String| TrainError::Resume { path: dir.to_path_buf(), message };
    if !dir.is_dir() {
        return Err(err("no such folder (give a `<name>-state` folder written with save.save_state)".into()));
    }
    let json_path = dir.join("train_state.json");
    let text = std::fs::read_to_string(&json_path).map_err(|e| err(format!("train_state.json: {e}")))?;
    let progress: ProgressState =
        serde_json::from_str(&text).map_err(|e| err(format!("train_state.json is not a lorakit state: {e}")))?;
    if progress.format != STATE_FORMAT {
        return Err(err(format!("state format {} (this lorakit reads format {STATE_FORMAT})", progress.format)));
    }
    let read = |file: &str| -> Result<HashMap<String, Tensor>> {
        let p = dir.join(file);
        candle_core::safetensors::load(&p, device).map_err(|e| err(format!("{file}: {e}")))
    };
    let network = read("network.safetensors")?;
    let optimizer_tensors = read("optimizer.safetensors")?;
    Ok(LoadedState {
        dir: dir.to_path_buf(),
        optimizer: OptimizerState {
            tensors: optimizer_tensors.into_iter().collect(),
            scalars: progress.optimizer_scalars.clone(),
        },
        progress,
        network,
    })
}
