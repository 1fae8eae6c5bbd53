//! Importing kohya configs: an sd-scripts `--config_file` TOML or a kohya_ss GUI JSON becomes a
//! lorakit config that trains what the file says — or the import is refused with the reason.
//!
//! The path has three steps, one module each:
//! - [`detect`]: what the file is, by content (JSON or TOML, BOM or not; a LoRA training config,
//!   or a dataset TOML, a DreamBooth / fine-tune / textual-inversion config, LECO prompts,
//!   caption metadata — the latter refused, saying what they look like).
//! - [`gui`]: a kohya_ss GUI JSON → the sd-scripts arguments the GUI itself would pass
//!   (`kohya_gui/lora_gui.py` `train_model`: `LoRA_type` → `network_module` + `network_args`,
//!   `epoch` vs `max_train_steps`, "0 / empty means not set", noise offset type, LR rules, …).
//! - [`args`]: sd-scripts arguments → lorakit keys, with sd-scripts' defaults for silent keys and
//!   a refusal for what lorakit cannot train (network types, model families). The family comes
//!   from the GUI's checkbox, `networks.lora_flux` / `networks.lora_sd3` and Flux- or SD3-only
//!   arguments, `v2`, SDXL-only arguments, or — for an sd-scripts TOML, which does not name its
//!   script — the base checkpoint's weights when the file is here to read.
//! - [`flow`]: Flux.1 and SD3 configs get `flux_train_network.py`'s / `sd3_train_network.py`'s
//!   rules: `lora_flux`'s / `lora_sd3`'s network arguments, per-encoder text-encoder rates, the
//!   `[flow]` objective (with sd-scripts' Flux defaults written out), the SD3 text-encoder
//!   options, block swap, and the SD options those scripts ignore dropped with a note.
//!
//! Everything not carried over becomes an [`ImportNote`], ranked by whether it changes the run.

pub mod args;
pub mod detect;
mod flow;
pub mod gui;
mod key_lists;

use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

pub use args::import_sd_scripts_args;

/// How much an import note matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoteLevel {
    /// An ignored or unsupported setting that changes what is trained: shown first, as a warning.
    ChangesRun,
    /// A memory-saving option lorakit does not have (Flux's `blocks_to_swap` without gradient
    /// checkpointing, SD3's `blocks_to_swap`): the same weights are
    /// trained, but the run needs more memory than kohya's — a warning, right after the above.
    Memory,
    /// A conversion or a setting that does not change the trained weights (file retention,
    /// logging destinations, a value lorakit chose where sd-scripts would draw one).
    Info,
    /// Speed, memory, launcher and GUI settings that lorakit has no use for: summarised in one line.
    Cosmetic,
}

/// One thing the user should know about an import.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportNote {
    /// How much it matters.
    pub level: NoteLevel,
    /// The key in the imported file (empty for notes about the whole file).
    pub key: String,
    /// What happened, in a sentence (empty for cosmetic keys: the key says it all).
    pub text: String,
}

impl ImportNote {
    pub(crate) fn changes_run(key: impl Into<String>, text: impl Into<String>) -> Self {
        ImportNote { level: NoteLevel::ChangesRun, key: key.into(), text: text.into() }
    }
    pub(crate) fn memory(key: impl Into<String>, text: impl Into<String>) -> Self {
        ImportNote { level: NoteLevel::Memory, key: key.into(), text: text.into() }
    }
    pub(crate) fn info(key: impl Into<String>, text: impl Into<String>) -> Self {
        ImportNote { level: NoteLevel::Info, key: key.into(), text: text.into() }
    }
    pub(crate) fn cosmetic(key: impl Into<String>) -> Self {
        ImportNote { level: NoteLevel::Cosmetic, key: key.into(), text: String::new() }
    }
}

/// The result of an import: a lorakit config table plus what was not carried over.
#[derive(Debug, Clone)]
pub struct Imported {
    /// Sections → keys, ready for `--set` overrides and deserialisation.
    pub table: toml::Table,
    /// What the user should know, in no particular order (see [`Imported::report`]).
    pub notes: Vec<ImportNote>,
    /// A prompt file to write before training: the kohya_ss GUI keeps sample prompts as text
    /// and writes them to `<output_dir>/sample/prompt.txt` when it starts a run; so does lorakit.
    pub prompt_file: Option<(PathBuf, String)>,
}

impl Imported {
    /// Keys that were not carried over (any level), sorted.
    pub fn unmapped_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.notes.iter().map(|n| n.key.as_str()).filter(|k| !k.is_empty()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The notes as lines to print, most important first: settings that change the run (as
    /// warnings), memory-saving options lorakit does not have (warnings too), then information,
    /// then one line listing the cosmetic keys.
    pub fn report(&self, source: &Path) -> Vec<String> {
        let mut notes: Vec<&ImportNote> = self.notes.iter().collect();
        notes.sort_by(|a, b| a.level.cmp(&b.level).then_with(|| a.key.cmp(&b.key)));
        let mut lines = Vec::new();
        let mut cosmetic = Vec::new();
        for note in notes {
            let about = if note.key.is_empty() { String::new() } else { format!("`{}`: ", note.key) };
            match note.level {
                NoteLevel::ChangesRun => {
                    lines.push(format!("warning: {}: {about}{} — this changes the run", source.display(), note.text))
                }
                NoteLevel::Memory => lines.push(format!(
                    "warning: {}: {about}{} — the same weights are trained, but the run needs the memory `lorakit train --dry-run` reports",
                    source.display(),
                    note.text
                )),
                NoteLevel::Info => lines.push(format!("note: {}: {about}{}", source.display(), note.text)),
                NoteLevel::Cosmetic => cosmetic.push(note.key.as_str()),
            }
        }
        if !cosmetic.is_empty() {
            cosmetic.dedup();
            lines.push(format!(
                "note: {}: {} setting(s) with no effect on what is trained (speed, memory, launcher, hub or GUI options) ignored: {}",
                source.display(),
                cosmetic.len(),
                cosmetic.join(", ")
            ));
        }
        lines
    }
}

/// Reads an sd-scripts TOML or kohya_ss JSON file (told apart by content, not by extension).
pub fn import_file(path: &Path) -> Result<Imported> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    import_bytes(&bytes, base).map_err(|m| TrainError::config(path, m))
}

/// Imports a config's raw bytes; relative paths that exist under `base` (the file's folder) but
/// not in the current directory are taken from `base`. Never panics, whatever the bytes.
pub fn import_bytes(bytes: &[u8], base: &Path) -> std::result::Result<Imported, String> {
    let mut imported = match detect::parse(bytes)? {
        detect::Parsed::GuiJson(object) => {
            let converted = gui::to_sd_scripts_args(&object)?;
            let mut imported = import_sd_scripts_args(converted.args)?;
            imported.notes.extend(converted.notes);
            imported.prompt_file = converted.prompt_file;
            imported
        }
        detect::Parsed::SdScriptsArgs(pairs) => {
            let checkpoint = checkpoint_family(&pairs, base);
            args::import_args(pairs, checkpoint)?
        }
    };
    resolve_relative(&mut imported, base);
    Ok(imported)
}

/// What the base checkpoint of an sd-scripts TOML is, from its weights (the header of a
/// `.safetensors` file or a diffusers folder's configs, no tensor read), when it is here to read:
/// the TOML itself does not say whether it is for `train_network.py` or `sdxl_train_network.py`.
/// `None` when the path is missing, unreadable or something else than SD 1.x/2.x/SDXL/Flux.1/SD3.
fn checkpoint_family(pairs: &[(String, toml::Value)], base: &Path) -> Option<(args::Family, String)> {
    use lorakit_models::checkpoint::{detect_family_at, ModelFamily};
    let (_, value) = pairs.iter().rev().find(|(k, _)| k == "pretrained_model_name_or_path")?;
    let text = value.as_str()?.trim();
    if text.is_empty() {
        return None;
    }
    let path = Path::new(text);
    let path = if path.is_relative() && !path.exists() && base.join(path).exists() {
        base.join(path)
    } else {
        path.to_path_buf()
    };
    // Regular files and folders only: never a device or a pipe.
    let meta = std::fs::metadata(&path).ok()?;
    if !(meta.is_file() || meta.is_dir()) {
        return None;
    }
    let family = match detect_family_at(&path).ok()? {
        ModelFamily::Sd1 => args::Family::Sd1,
        ModelFamily::Sd2 => args::Family::Sd2,
        ModelFamily::Sdxl => args::Family::Sdxl,
        ModelFamily::Flux => args::Family::Flux1,
        ModelFamily::Sd3 => args::Family::Sd3,
        _ => return None,
    };
    Some((family, path.display().to_string()))
}

/// Relative paths in the imported file are taken from the current directory by sd-scripts;
/// keep them as they are when they exist there, else try the file's folder.
fn resolve_relative(imported: &mut Imported, base: &Path) {
    for (section, key) in [
        ("model", "pretrained_model_name_or_path"),
        ("model", "clip_l"),
        ("model", "clip_g"),
        ("model", "t5xxl"),
        ("model", "ae"),
        ("model", "vae"),
        ("dataset", "train_data_dir"),
        ("dataset", "reg_data_dir"),
        ("dataset", "dataset_config"),
        ("samples", "sample_prompts"),
        ("network", "network_weights"),
    ] {
        if let Some(toml::Value::String(p)) = imported.table.get_mut(section).and_then(|s| s.get_mut(key)) {
            let path = Path::new(p.as_str());
            if path.is_relative() && !path.exists() && base.join(path).exists() {
                *p = base.join(path).display().to_string();
            }
        }
    }
}
