//! Resumable training state: a folder with the LoRA weights in f32 (`network.safetensors`), the
//! optimizer's tensors (`optimizer.safetensors`) and everything else as JSON (`train_state.json`:
//! step, epoch, position in the epoch, loss history, loss scale, optimizer scalars).
//!
//! Nothing else is needed to continue exactly: every random draw of a step (noise, timesteps,
//! flips, dropout masks, data order) is derived from (seed, epoch/step), never from a running RNG,
//! so there is no RNG state to carry.
//!
//! Replacing a state is crash-safe: the new folder is written under a hidden temporary name
//! (`.<name>.tmp-<pid>`), the old one is renamed away (`.<name>.old-<pid>`), the new one renamed
//! into place, and only then the old one deleted. A crash between the two renames leaves no
//! folder under the state's name, but a complete previous one under the `.old-` name, which
//! [`load_state`] finds and [`clean_stale_state_folders`] renames back; leftovers of interrupted
//! writes are removed at the next run's start.
//!
//! Resuming checks the state before anything is applied: its progress fields against each other
//! ([`ProgressState::check`]), the network settings it was saved with against the config's
//! ([`check_network_settings`]), and every tensor against the network.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor, Var};
use lorakit_models::lora_inject::to_file_tensor;
use lorakit_nn::lora::LoraSet;
use lorakit_nn::optim::{Optimizer, OptimizerState};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
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
    /// Gradient accumulation steps of the run that saved it (absent in older states).
    #[serde(default)]
    pub gradient_accumulation_steps: Option<u64>,
    /// The network settings the state was trained with, by config key ([`network_settings`];
    /// absent in older states): resuming with other values is refused.
    #[serde(default)]
    pub network_settings: BTreeMap<String, String>,
}

impl ProgressState {
    /// Checks the progress fields against each other (a hand-edited or damaged
    /// `train_state.json`): the position lies inside the epoch, the step count is the one that
    /// position implies, the sd-scripts markers agree, the loss history fits, the loss scale is
    /// usable. Returns what is wrong, naming the fields.
    pub fn check(&self) -> std::result::Result<(), String> {
        let bpe = self.batches_per_epoch;
        if bpe == 0 {
            return Err("batches_per_epoch is 0".into());
        }
        if self.next_batch >= bpe {
            return Err(format!("next_batch = {} but an epoch has {bpe} batches (batches_per_epoch)", self.next_batch));
        }
        if self.current_step != self.global_step {
            return Err(format!(
                "current_step = {} differs from global_step = {}",
                self.current_step, self.global_step
            ));
        }
        let marker = if self.next_batch == 0 { self.epoch } else { self.epoch.saturating_add(1) };
        if self.current_epoch != marker {
            return Err(format!(
                "current_epoch = {} does not match epoch = {} and next_batch = {} (expected {marker})",
                self.current_epoch, self.epoch, self.next_batch
            ));
        }
        if let Some(ga) = self.gradient_accumulation_steps {
            if ga == 0 {
                return Err("gradient_accumulation_steps is 0".into());
            }
            // Saves happen after an optimizer step: mid-epoch at a whole accumulation, else at an
            // epoch's end (where a run stopped by max_train_steps may have done fewer steps).
            let per_epoch = bpe.div_ceil(ga);
            let done = u128::from(self.epoch) * u128::from(per_epoch);
            let step = u128::from(self.global_step);
            let consistent = if self.next_batch > 0 {
                self.next_batch % ga == 0 && step == done + u128::from(self.next_batch / ga)
            } else if self.epoch == 0 {
                step == 0
            } else {
                step > done - u128::from(per_epoch) && step <= done
            };
            if !consistent {
                return Err(format!(
                    "global_step = {} does not fit epoch = {}, next_batch = {} ({bpe} batches per epoch, gradient accumulation {ga}: {per_epoch} steps per epoch)",
                    self.global_step, self.epoch, self.next_batch
                ));
            }
        }
        if self.loss_window.len() as u64 > bpe {
            return Err(format!("loss_window has {} values for {bpe} batches per epoch", self.loss_window.len()));
        }
        if self.epoch_losses.len() as u64 > self.next_batch {
            return Err(format!(
                "epoch_losses has {} values but only {} batches of the epoch are done",
                self.epoch_losses.len(),
                self.next_batch
            ));
        }
        if let Some((scale, _)) = self.loss_scale {
            if !(scale.is_finite() && scale >= 1.0) {
                return Err(format!("loss_scale = {scale} (an fp16 loss scale is a finite number ≥ 1)"));
            }
        }
        Ok(())
    }
}

/// The network settings a state records and a resume must match, by config key. Values are
/// shown as written in a config (`none` for an unset key). `conv_dim = 0` is not `none`: like
/// sd-scripts (whose conv block targets come with any conv_dim) and LyCORIS (where unset means
/// network_dim) it builds another module set.
pub fn network_settings(config: &TrainConfig) -> BTreeMap<String, String> {
    let n = &config.network;
    let opt = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    let mut out = BTreeMap::new();
    let mut put = |key: &str, value: String| {
        out.insert(format!("network.{key}"), value);
    };
    put("network_module", n.network_module.clone());
    put("network_dim", n.network_dim.to_string());
    put("network_alpha", n.network_alpha.to_string());
    put("conv_dim", opt(n.conv_dim.map(|d| d.to_string())));
    // conv_alpha only matters with conv modules (its default: 1 for LoCon, network_alpha for
    // LyCORIS, whose k×k modules exist unless conv_dim = 0).
    let (default_conv_alpha, has_conv) =
        if n.is_lycoris() { (n.network_alpha, n.conv_dim != Some(0)) } else { (1.0, n.conv_dim.is_some()) };
    put("conv_alpha", opt(has_conv.then(|| n.conv_alpha.unwrap_or(default_conv_alpha).to_string())));
    if n.is_lycoris() {
        put("algo", opt(n.algo.clone()));
        put("preset", opt(n.preset.clone()));
        put("factor", n.factor.to_string());
        put("decompose_both", n.decompose_both.to_string());
        put("full_matrix", n.full_matrix.to_string());
    }
    put("block_dims", opt(n.block_dims.clone()));
    put("block_alphas", opt(n.block_alphas.clone()));
    put("conv_block_dims", opt(n.conv_block_dims.clone()));
    put("conv_block_alphas", opt(n.conv_block_alphas.clone()));
    put("network_train_unet_only", n.network_train_unet_only.to_string());
    put("network_train_text_encoder_only", n.network_train_text_encoder_only.to_string());
    put("split_qkv", n.split_qkv.to_string());
    out
}

/// Refuses a resume whose network settings differ from the state's, naming every differing key
/// with both values. There is no override: the saved weights were trained for the saved scale
/// and shapes (a changed alpha silently rescales every module's output), so the way forward is
/// the state's values, or a fresh run. Keys one side does not record (another lorakit version)
/// are not compared.
pub fn check_network_settings(
    saved: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> std::result::Result<(), String> {
    let differing: Vec<String> = saved
        .iter()
        .filter_map(|(key, was)| {
            let now = current.get(key)?;
            (now != was).then(|| format!("  {key}: {was} in the state, {now} in this config"))
        })
        .collect();
    if differing.is_empty() {
        return Ok(());
    }
    let mut hint = String::new();
    let no_convs = |d: &String| d == "none" || d == "0";
    if saved.get("network.conv_dim").is_some_and(|d| !no_convs(d))
        && current.get("network.conv_dim").is_some_and(no_convs)
    {
        hint = format!(
            "\nthe state is a LoCon (its 3×3 conv modules are trained): set network.conv_dim = {} and network.conv_alpha = {} to continue it",
            saved["network.conv_dim"],
            saved.get("network.conv_alpha").map_or("1", String::as_str)
        );
    }
    Err(format!(
        "the state was trained with other network settings:\n{}{hint}\nset these keys back to the state's values to continue it, or start a fresh run without save.resume (network.network_weights = <a saved .safetensors> starts from its weights)",
        differing.join("\n")
    ))
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
    // A state must hold exactly this network: modules it has and the network lacks (e.g. a
    // LoCon's conv modules resumed without conv_dim) would be dropped silently.
    let extra: Vec<&String> = if strict {
        let known: std::collections::HashSet<String> = network_tensors(sets).into_keys().collect();
        let mut extra: Vec<&String> = tensors.keys().filter(|k| !known.contains(*k)).collect();
        extra.sort();
        extra
    } else {
        Vec::new()
    };
    if !problems.is_empty() || (strict && !(missing.is_empty() && extra.is_empty())) || used == 0 {
        let mut msg = String::from("the saved network does not fit this config's network");
        let missing_lines = missing.iter().map(|m| format!("{m}: not in the saved network"));
        let extra_lines = extra.iter().map(|m| format!("{m}: in the saved network, not in this config's"));
        for p in problems.iter().cloned().chain(missing_lines).chain(extra_lines).take(8) {
            msg.push_str(&format!("\n  {p}"));
        }
        let counted = problems.len() + if strict { missing.len() + extra.len() } else { 0 };
        if counted > 8 {
            msg.push_str(&format!("\n  … {} more", counted - 8));
        }
        if !strict && !problems.is_empty() {
            // network_weights: a file of other ranks (resized, trained with another dim).
            msg.push_str("\nto train the file's own modules at their ranks, set network.dim_from_weights = true");
        }
        if extra.iter().any(|k| tensors.get(*k).is_some_and(|t| t.rank() == 4 && t.dims()[2..] != [1, 1])) {
            msg.push_str(
                "\nthe saved network has 3×3 conv modules (LoCon): set network.conv_dim (and conv_alpha) as when it was saved",
            );
        }
        // A state resumes; a LoRA file (network_weights) only starts the network.
        return Err(if strict {
            TrainError::Resume { path: origin.to_path_buf(), message: msg }
        } else {
            TrainError::Other(format!("network.network_weights = {}: {msg}", origin.display()))
        });
    }
    Ok(missing)
}

/// Cuts the fused layers of a LoRA file (`network_weights`) into the parts a `split_qkv`
/// network trains, as sd-scripts' `load_state_dict` does: `down` into equal row blocks, the
/// block-diagonal `up` into its diagonal blocks. A fused `up` with anything off its diagonal was
/// not trained with split_qkv — cutting it would drop part of the LoRA, so it is refused. Files
/// already holding parts (`<module>.lora_down.<i>.weight`) and networks without parts pass
/// through unchanged. The file's alpha is not read (the config's scale applies, as for every
/// `network_weights` file).
pub fn split_fused_parts(
    sets: &[Arc<LoraSet>],
    mut tensors: HashMap<String, Tensor>,
    origin: &Path,
) -> Result<HashMap<String, Tensor>> {
    let err = |message: String| TrainError::Other(format!("network.network_weights = {}: {message}", origin.display()));
    for set in sets {
        let mut groups: BTreeMap<&str, Vec<&lorakit_nn::LoraModule>> = BTreeMap::new();
        for m in set.modules().iter().filter(|m| m.part().is_some()) {
            groups.entry(m.name()).or_default().push(m);
        }
        for (name, mut parts) in groups {
            parts.sort_by_key(|m| m.part().map_or(0, |p| p.index));
            let (down_key, up_key) = (format!("{name}.lora_down.weight"), format!("{name}.lora_up.weight"));
            let (Some(down), Some(up)) = (tensors.get(&down_key).cloned(), tensors.get(&up_key).cloned()) else {
                continue;
            };
            let rank = parts[0].rank();
            let count = parts.len();
            let (rows, _inputs) = down.dims2().map_err(|e| err(format!("{down_key}: {e}")))?;
            let (outputs, cols) = up.dims2().map_err(|e| err(format!("{up_key}: {e}")))?;
            let widths: Vec<usize> = parts.iter().map(|m| m.up().dims()[0]).collect();
            if rows != rank * count || cols != rows || outputs != widths.iter().sum::<usize>() {
                let hint = if rows % count == 0 && cols == rows {
                    format!("set network.network_dim = {} as when it was trained", rows / count)
                } else {
                    format!("it was not saved by a split_qkv run (rank {rows} is not {count} equal parts); set network.split_qkv = false to continue it fused")
                };
                return Err(err(format!(
                    "{name}: fused factors down {:?} / up {:?} do not split into {count} parts of rank {rank}: {hint}",
                    down.dims(),
                    up.dims(),
                )));
            }
            let up = up.to_dtype(candle_core::DType::F32)?;
            let mut offset = 0;
            for (i, (m, width)) in parts.iter().zip(&widths).enumerate() {
                let rows_of_part = up.narrow(0, offset, *width)?;
                for j in (0..count).filter(|&j| j != i) {
                    let off_diagonal = rows_of_part.narrow(1, j * rank, rank)?.abs()?.max_all()?.to_scalar::<f32>()?;
                    if off_diagonal != 0.0 {
                        return Err(err(format!(
                            "{name}: its fused lora_up is not block-diagonal, so it was not trained with split_qkv and cannot be cut into q/k/v parts without losing part of it; set network.split_qkv = false to continue it fused, or start without network_weights"
                        )));
                    }
                }
                let index = m.part().map_or(i, |p| p.index);
                tensors.insert(format!("{name}.lora_down.{index}.weight"), down.narrow(0, i * rank, rank)?);
                tensors.insert(format!("{name}.lora_up.{index}.weight"), rows_of_part.narrow(1, i * rank, rank)?);
                offset += width;
            }
            tensors.remove(&down_key);
            tensors.remove(&up_key);
        }
    }
    Ok(tensors)
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
    let (tmp, _) = temp_names(parent, &name, std::process::id());
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let written = write_state_files(&tmp, sets, optimizer, progress);
    if written.is_err() {
        // A failed write (a full disk) leaves nothing behind; the previous state is untouched.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    replace_dir(&tmp, dir)
}

/// The three files of a state, written into `tmp` and synced.
fn write_state_files(
    tmp: &Path,
    sets: &[Arc<LoraSet>],
    optimizer: &dyn Optimizer,
    progress: &ProgressState,
) -> Result<()> {
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
    Ok(())
}

/// Test hook: [`replace_dir`] of this folder stops right after renaming the old folder away, as
/// a process killed between the two renames would.
#[cfg(test)]
static CRASH_BETWEEN_RENAMES: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// The hidden names a state folder `<name>` is written and replaced under:
/// `.<name>.tmp-<pid>` (being written) and `.<name>.old-<pid>` (the previous one, between the
/// renames).
fn temp_names(parent: &Path, name: &str, pid: u32) -> (PathBuf, PathBuf) {
    (parent.join(format!(".{name}.tmp-{pid}")), parent.join(format!(".{name}.old-{pid}")))
}

/// Moves the complete folder `tmp` to `dir`, replacing what is there. There is a moment
/// between the two renames where nothing has `dir`'s name (no rename swaps two folders
/// portably); a crash there leaves the previous state complete under `.<name>.old-<pid>`,
/// which readers use ([`load_state`]) and the next run renames back
/// ([`clean_stale_state_folders`]). The old folder is deleted only once the new one is in place.
fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "state".into());
    let (_, old) = temp_names(parent, &name, std::process::id());
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    if dir.exists() {
        if let Err(e) = std::fs::rename(dir, &old) {
            let _ = std::fs::remove_dir_all(tmp);
            return Err(TrainError::io(dir, e));
        }
    }
    #[cfg(test)]
    if CRASH_BETWEEN_RENAMES.lock().unwrap().as_deref() == Some(dir) {
        return Err(TrainError::Other("test hook: stopped between the renames".into()));
    }
    if let Err(e) = std::fs::rename(tmp, dir) {
        // An error rather than a crash: put the previous state back under its name.
        if old.exists() && !dir.exists() {
            let _ = std::fs::rename(&old, dir);
        }
        let _ = std::fs::remove_dir_all(tmp);
        return Err(TrainError::io(dir, e));
    }
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// A hidden state folder of ours: `.<name>-state.tmp-<pid>` or `.<name>-state.old-<pid>`;
/// returns (`<name>-state`, is old, pid).
fn parse_temp_name(file_name: &str) -> Option<(&str, bool, u32)> {
    let rest = file_name.strip_prefix('.')?;
    let (base, tail) = rest.rsplit_once('.')?;
    let (kind, pid) = tail.split_once('-')?;
    let old = match kind {
        "tmp" => false,
        "old" => true,
        _ => return None,
    };
    if !base.ends_with("-state") || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, old, pid.parse().ok()?))
}

/// Cleans the hidden folders interrupted state saves left in `dir` (only ours: named
/// `.<name>-state.tmp-<pid>` / `.<name>-state.old-<pid>`, folders, written by a process that is
/// no longer running, or by an earlier process with this one's id). A previous state left under
/// `.old-` by a crash between the renames, with nothing under its own name, is renamed back;
/// everything else is deleted. Returns a line per folder handled, for the run's notes.
pub fn clean_stale_state_folders(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(dir, e))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else { continue };
        let Some((base, old, pid)) = parse_temp_name(name) else { continue };
        // Never follow a link; only whole folders of ours.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if pid != std::process::id() && lorakit_dataset::fs_atomic::process_alive(pid) {
            continue;
        }
        found.push((entry.path(), base.to_string(), old));
    }
    // Restores first, so a `.tmp-` of the same save is deleted after its `.old-` is back.
    found.sort_by_key(|(path, _, old)| (!*old, path.clone()));
    let mut notes = Vec::new();
    for (path, base, old) in found {
        let target = dir.join(&base);
        if old && !target.exists() && path.join("train_state.json").is_file() {
            std::fs::rename(&path, &target).map_err(|e| TrainError::io(&path, e))?;
            notes.push(format!(
                "{}: restored the previous state that an interrupted save had left under {}",
                target.display(),
                path.display()
            ));
        } else {
            std::fs::remove_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
            notes.push(format!("removed {}, left by an interrupted state save", path.display()));
        }
    }
    Ok(notes)
}

/// Where a state named `dir` is: `dir` itself, or — when a save was interrupted between its
/// renames — the complete previous state kept under `.<name>.old-<pid>`.
fn find_state_dir(dir: &Path) -> Option<PathBuf> {
    if dir.is_dir() {
        return Some(dir.to_path_buf());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dir.file_name()?.to_str()?;
    let mut kept: Vec<PathBuf> = std::fs::read_dir(parent)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_str().and_then(parse_temp_name).is_some_and(|(base, old, _)| old && base == name))
        .map(|e| e.path())
        .filter(|p| p.join("train_state.json").is_file())
        .collect();
    kept.sort();
    kept.pop()
}

/// `train_state.json`'s text as a [`ProgressState`]; a counter that is not a whole number ≥ 0
/// (negative, fractional, too large, text) is named.
fn parse_progress(text: &str) -> std::result::Result<ProgressState, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    const COUNTERS: [&str; 8] =
        ["format", "global_step", "epoch", "next_batch", "batches_per_epoch", "seed", "current_epoch", "current_step"];
    for key in COUNTERS {
        match object.get(key) {
            None => return Err(format!("{key} is missing")),
            Some(v) if !v.is_u64() => return Err(format!("{key} = {v} is not a whole number from 0 to 2^64 − 1")),
            Some(_) => {}
        }
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
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

/// Reads a state folder (everything checked before anything is applied). `dir` may be missing
/// when a save was interrupted between its renames: the previous state is read then
/// ([`LoadedState::dir`] says from where).
pub fn load_state(dir: &Path, device: &Device) -> Result<LoadedState> {
    let requested = dir;
    let err = |message: String| TrainError::Resume { path: requested.to_path_buf(), message };
    if dir.is_file() {
        return Err(err(not_a_state_folder(dir)));
    }
    let Some(dir) = find_state_dir(dir) else {
        return Err(err(
            "no such folder (save.resume takes a `<name>-state` folder written with save.save_state = true)".into(),
        ));
    };
    let dir = dir.as_path();
    let json_path = dir.join("train_state.json");
    let text = std::fs::read_to_string(&json_path).map_err(|e| {
        err(format!(
            "{}: {e} (not a state folder: a state holds train_state.json, network.safetensors and optimizer.safetensors, as written with save.save_state = true)",
            json_path.display()
        ))
    })?;
    let damaged = |e: String| {
        err(format!(
            "{}: {e} — the file is damaged or was edited; resume from an intact state or start a fresh run",
            json_path.display()
        ))
    };
    let progress = parse_progress(&text).map_err(damaged)?;
    if progress.format != STATE_FORMAT {
        return Err(err(format!("state format {} (this lorakit reads format {STATE_FORMAT})", progress.format)));
    }
    progress.check().map_err(damaged)?;
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

/// Why a file given as `save.resume` is not a state: a LoRA file (or a state's own
/// `network.safetensors`) is recognised and the right key named.
fn not_a_state_folder(path: &Path) -> String {
    let inside_state = path
        .parent()
        .filter(|p| p.join("train_state.json").is_file())
        .map(|p| format!(" — the state folder is {}", p.display()));
    if let Some(hint) = inside_state {
        return format!("this is a file inside a state; give the folder itself{hint}");
    }
    let is_lora = lorakit_lora::safetensors_file::LoraFile::open(path).is_ok();
    let what = if is_lora { "a LoRA file" } else { "a file" };
    format!(
        "{what}, not a state folder: save.resume continues an interrupted run from a `<name>-state` folder (written with \
         save.save_state = true){}",
        if is_lora {
            format!("; to start a new run from this LoRA's weights, set network.network_weights = {:?} instead", path.display().to_string())
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_alpha_is_compared_whenever_conv_modules_exist() {
        let mut c = TrainConfig::default();
        let alpha_of = |c: &TrainConfig| network_settings(c)["network.conv_alpha"].clone();
        assert_eq!(alpha_of(&c), "none", "LoRA without conv_dim: no conv modules");
        c.network.network_module = "lycoris.kohya".into();
        c.network.algo = Some("loha".into());
        let before = network_settings(&c);
        c.network.conv_alpha = Some(4.0);
        let err = check_network_settings(&before, &network_settings(&c)).unwrap_err();
        assert!(err.contains("network.conv_alpha"), "LyCORIS: unset conv_dim still has conv modules: {err}");
        c.network.conv_dim = Some(0);
        assert_eq!(alpha_of(&c), "none", "LyCORIS conv_dim = 0: no conv modules");
    }

    /// A folder standing for a state: `train_state.json` holding `text`.
    fn fake_state(dir: &Path, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("train_state.json"), text).unwrap();
    }

    fn read(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("train_state.json")).unwrap()
    }

    fn hidden(parent: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_crash_between_the_renames_leaves_the_previous_state_findable_and_restorable() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run-000001-state");
        fake_state(&dir, "old");
        let pid = std::process::id();
        let (tmp, old) = temp_names(root.path(), "run-000001-state", pid);
        fake_state(&tmp, "new");

        *CRASH_BETWEEN_RENAMES.lock().unwrap() = Some(dir.clone());
        assert!(replace_dir(&tmp, &dir).is_err());
        *CRASH_BETWEEN_RENAMES.lock().unwrap() = None;
        // Nothing under the state's name, the previous state complete under `.old-`.
        assert!(!dir.exists());
        assert_eq!(read(&old), "old");
        assert_eq!(find_state_dir(&dir), Some(old.clone()), "readers find the previous state");

        // The next run's start renames it back and drops the half-done new one.
        let notes = clean_stale_state_folders(root.path()).unwrap();
        assert_eq!(read(&dir), "old");
        assert!(hidden(root.path()).is_empty(), "{:?}", hidden(root.path()));
        assert!(notes.iter().any(|n| n.contains("restored")), "{notes:?}");

        // Without the crash: replaced, nothing hidden left.
        fake_state(&tmp, "new");
        replace_dir(&tmp, &dir).unwrap();
        assert_eq!(read(&dir), "new");
        assert!(hidden(root.path()).is_empty());

        // A rename that fails (here: the new folder is gone) puts the previous state back.
        assert!(replace_dir(&tmp, &dir).is_err());
        assert_eq!(read(&dir), "new");
        assert!(hidden(root.path()).is_empty());
    }

    #[test]
    #[cfg(unix)]
    fn only_our_abandoned_temporary_state_folders_are_cleaned() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // 4294967 is above every pid_max: no such process is running.
        let stale = [".a-000001-state.tmp-4294967", ".a-state.old-4294967"];
        for name in stale {
            fake_state(&r.join(name), "x");
        }
        std::fs::create_dir(r.join("a-state")).unwrap(); // so the `.old-` one is not restored
        let kept_dirs = [".notes.tmp-4294967", ".a-state.tmp-abc", ".a-state.bak-4294967", "a-state.tmp-4294967"];
        for name in kept_dirs {
            fake_state(&r.join(name), "x");
        }
        std::fs::write(r.join(".b-state.tmp-4294967"), "a file, not a folder").unwrap();
        // A live process's save in progress (this test's parent process) is left alone.
        let live = format!(".c-state.tmp-{}", std::os::unix::process::parent_id());
        fake_state(&r.join(&live), "x");

        let notes = clean_stale_state_folders(r).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        for name in stale {
            assert!(!r.join(name).exists(), "{name} removed");
        }
        for name in kept_dirs.iter().chain(&[".b-state.tmp-4294967", live.as_str(), "a-state"]) {
            assert!(r.join(name).exists(), "{name} kept");
        }
        assert!(clean_stale_state_folders(&r.join("missing")).unwrap().is_empty());
    }

    fn progress(global_step: u64, epoch: u64, next_batch: u64) -> ProgressState {
        ProgressState {
            format: STATE_FORMAT,
            lorakit_version: "test".into(),
            global_step,
            epoch,
            next_batch,
            batches_per_epoch: 5,
            seed: 1,
            loss_window: vec![0.1; 5],
            epoch_losses: vec![0.1; next_batch as usize],
            loss_scale: None,
            optimizer_scalars: serde_json::Value::Null,
            current_epoch: if next_batch == 0 { epoch } else { epoch + 1 },
            current_step: global_step,
            gradient_accumulation_steps: Some(2),
            network_settings: BTreeMap::new(),
        }
    }

    #[test]
    fn progress_fields_are_checked_against_each_other() {
        // 5 batches, accumulation 2: 3 steps per epoch.
        for ok in [progress(0, 0, 0), progress(4, 1, 2), progress(3, 1, 0), progress(5, 2, 0), progress(6, 2, 0)] {
            ok.check().unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        let cases: Vec<(ProgressState, &str)> = vec![
            (progress(9, 1, 2), "global_step = 9"),
            (progress(2, 2, 0), "global_step = 2"),
            (progress(u64::MAX, 1, 0), "global_step"),
            (progress(1, 0, 0), "global_step = 1"),
            (progress(4, 1, 7), "next_batch = 7"),
            (progress(4, 1, 3), "global_step"),
            (ProgressState { current_epoch: 9, ..progress(4, 1, 2) }, "current_epoch = 9"),
            (ProgressState { current_step: 9, ..progress(4, 1, 2) }, "current_step = 9"),
            (ProgressState { batches_per_epoch: 0, ..progress(0, 0, 0) }, "batches_per_epoch is 0"),
            (ProgressState { loss_window: vec![0.0; 9], ..progress(4, 1, 2) }, "loss_window"),
            (ProgressState { loss_scale: Some((f64::INFINITY, 0)), ..progress(4, 1, 2) }, "loss_scale"),
        ];
        for (p, expected) in cases {
            let err = p.check().unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let text = serde_json::to_string(&progress(4, 1, 2)).unwrap();
        assert_eq!(parse_progress(&text).unwrap(), progress(4, 1, 2));
        for (from, to, expected) in [
            ("\"global_step\":4", "\"global_step\":-4", "global_step = -4"),
            ("\"epoch\":1", "\"epoch\":\"1\"", "epoch = \"1\""),
            ("\"next_batch\":2", "\"next_batch\":2.5", "next_batch = 2.5"),
            ("\"seed\":1,", "", "seed is missing"),
        ] {
            assert!(text.contains(from), "{from}");
            let err = parse_progress(&text.replacen(from, to, 1)).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
