//! The LoRA library: every LoRA file under the roots with what CivitAI users look at
//! (base model, network, rank/alpha, resolution, training length, trigger words and top tags),
//! read from the safetensors header alone — no weights are read, so a folder of large
//! checkpoints costs a few kilobytes each.
//!
//! `GET /api/loras`: `{loras, other, truncated}` — LoRA files newest first; `other` counts the
//! `.safetensors` files that are not LoRAs (checkpoints, VAEs) or could not be read.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lorakit_lora::keys::{detect_scheme, guess_family, modules, Family, Scheme};
use lorakit_lora::metadata::LoraMetadata;
use lorakit_lora::safetensors_file::LoraFile;
use serde::Serialize;

use crate::api::error;
use crate::AppState;

/// How deep the scan goes below a root.
const MAX_DEPTH: usize = 8;
/// How many `.safetensors` files one scan reads at most (a library, not a disk indexer).
const MAX_FILES: usize = 5000;

/// The library routes (mounted at `/api`).
pub fn routes() -> Router<AppState> {
    Router::new().route("/loras", get(list))
}

/// One LoRA file of the library.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LibraryEntry {
    /// The root holding it.
    pub root: usize,
    /// Its path under that root (`/`-separated).
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Unix seconds of its last change.
    pub modified: Option<u64>,
    /// `kohya LoRA/LoCon`, `PEFT/diffusers LoRA`, `LyCORIS LoHa`, …
    pub format: String,
    /// The base model family (`SD 1.x`, `SDXL`, `Flux (dev)`, …).
    pub base_model: String,
    /// `ss_network_module`.
    pub network: Option<String>,
    /// The ranks of its modules (from the tensor shapes), ascending.
    pub ranks: Vec<usize>,
    /// `ss_network_alpha`, as written.
    pub alpha: Option<String>,
    /// `ss_resolution` (width, height).
    pub resolution: Option<(u32, u32)>,
    /// `ss_epoch` of `ss_num_epochs`.
    pub epoch: Option<u64>,
    /// `ss_num_epochs`.
    pub num_epochs: Option<u64>,
    /// `ss_steps`.
    pub steps: Option<u64>,
    /// `modelspec.title`, else `ss_output_name`.
    pub title: Option<String>,
    /// `modelspec.trigger_phrase`.
    pub trigger: Option<String>,
    /// The most frequent caption tags of its dataset (`ss_tag_frequency`), most frequent first.
    pub top_tags: Vec<(String, u64)>,
    /// `sshs_model_hash` (the AutoV3-style hash A1111 shows), when written.
    pub hash: Option<String>,
}

/// The scan's answer.
#[derive(Serialize, Debug, Default)]
pub struct Library {
    /// LoRA files, newest first.
    pub loras: Vec<LibraryEntry>,
    /// `.safetensors` files that are not LoRAs (or not readable), by root-relative path, with
    /// why.
    pub other: Vec<(usize, String, String)>,
    /// The scan stopped at [`MAX_FILES`].
    pub truncated: bool,
}

async fn list(State(state): State<AppState>) -> Response {
    let roots = state.roots().all().to_vec();
    match tokio::task::spawn_blocking(move || scan(&roots)).await {
        Ok(library) => Json(library).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Every `.safetensors` file under `roots` (hidden folders skipped, symlinks followed only
/// while they stay inside their root), read as a library entry.
pub fn scan(roots: &[PathBuf]) -> Library {
    let mut library = Library::default();
    let mut seen = 0;
    for (id, root) in roots.iter().enumerate() {
        let mut files = Vec::new();
        collect(root, root, 0, &mut files, &mut seen);
        for path in files {
            let rel = relative(root, &path);
            match read_entry(id, rel.clone(), &path) {
                Ok(Some(entry)) => library.loras.push(entry),
                Ok(None) => library.other.push((id, rel, "not a LoRA".into())),
                Err(why) => library.other.push((id, rel, why)),
            }
        }
    }
    library.truncated = seen >= MAX_FILES;
    library.loras.sort_by(|a, b| b.modified.cmp(&a.modified).then_with(|| a.path.cmp(&b.path)));
    library
}

fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

fn collect(root: &Path, dir: &Path, depth: usize, out: &mut Vec<PathBuf>, seen: &mut usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if *seen >= MAX_FILES {
            return;
        }
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let mut path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_symlink() {
            // Followed only when its target stays inside the root (as every browser path).
            match path.canonicalize() {
                Ok(target) if target.starts_with(root) => path = target,
                _ => continue,
            }
        }
        if path.is_dir() {
            if depth + 1 < MAX_DEPTH {
                collect(root, &path, depth + 1, out, seen);
            }
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
            *seen += 1;
            out.push(entry.path());
        }
    }
}

/// The base model as `lorakit inspect` names it: the family (with Flux's variant from the
/// metadata), and SD3's model (`SD3 (3.5 Medium)`) where the modules show it — header only.
fn base_model(file: &LoraFile) -> String {
    let family = guess_family(file);
    if family.family == Family::Sd3 {
        let variant = modules(file)
            .ok()
            .and_then(|set| lorakit_lora::sd3::variant(set.modules.iter().map(|m| (m.name.as_str(), m.in_features))));
        if let Some(v) = variant {
            return format!("{} ({v})", family.family);
        }
    }
    family.describe()
}

/// `Ok(None)`: a readable safetensors file that is not a LoRA.
fn read_entry(root: usize, rel: String, path: &Path) -> Result<Option<LibraryEntry>, String> {
    let file = LoraFile::open(path).map_err(|e| e.to_string())?;
    let scheme = detect_scheme(file.tensor_names());
    if matches!(scheme, Scheme::FullCheckpoint | Scheme::Unknown) {
        return Ok(None);
    }
    let meta = LoraMetadata::parse(file.metadata());
    let mut ranks: Vec<usize> = file
        .header()
        .tensors
        .iter()
        .filter(|(name, _)| name.ends_with("lora_down.weight") || name.ends_with("lora_A.weight"))
        .filter_map(|(_, info)| info.shape.first().copied())
        .collect();
    ranks.sort_unstable();
    ranks.dedup();
    let stat = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let modified = stat.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs());
    Ok(Some(LibraryEntry {
        root,
        path: rel,
        size: stat.len(),
        modified,
        format: scheme.describe().to_string(),
        base_model: base_model(&file),
        network: meta.network_module.clone(),
        ranks,
        alpha: file.metadata().get("ss_network_alpha").cloned(),
        resolution: meta.resolution,
        epoch: meta.epoch,
        num_epochs: meta.num_epochs,
        steps: meta.steps,
        title: meta.modelspec.title.clone().or_else(|| meta.output_name.clone()),
        trigger: meta.modelspec.trigger_phrase.clone(),
        top_tags: meta.top_tags(8),
        hash: meta.sshs_model_hash.clone(),
    }))
}
