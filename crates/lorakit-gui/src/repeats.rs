//! Changing a subset's repeats the kohya way: the repeat count is the number in the folder's
//! name (`5_chk`), so `5_chk` → `10_chk` is a rename — previewed first with what it does to the
//! samples per epoch, then done atomically, never over an existing folder.
//!
//! `POST /api/dataset/repeats`: body `{root, path, repeats, dry_run}`, `path` the subset folder
//! (`train/5_chk`). Refused: a folder whose name is not `N_name` (422), a repeat count below 1
//! (422), a target that exists (409), a path outside the roots (403). The answer: `{from, to,
//! path, repeats_before, repeats_after, samples_before, samples_after, renamed}`, the samples
//! per epoch of the train folder holding the subset (the dataset loader's count) before and after.

use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use lorakit_dataset::config::{plan_from_dirs, OptionLayer};
use lorakit_dataset::dataset::{load_dataset, ProbeMode};
use lorakit_dataset::folders::parse_repeat_folder_name;
use serde::{Deserialize, Serialize};

use crate::api::{error, resolve_folder};
use crate::AppState;

/// The repeats routes (mounted at `/api`).
pub fn routes() -> Router<AppState> {
    Router::new().route("/dataset/repeats", post(repeats))
}

/// A repeats change as the page sends it.
#[derive(Deserialize)]
struct RepeatsRequest {
    root: usize,
    path: String,
    repeats: i64,
    #[serde(default)]
    dry_run: bool,
}

/// What the rename does (or did).
#[derive(Serialize, Debug)]
pub struct RepeatsChange {
    /// The folder's name now (`5_chk`).
    pub from: String,
    /// Its new name (`10_chk`).
    pub to: String,
    /// The new folder under the root.
    pub path: String,
    /// Repeats before and after.
    pub repeats_before: u32,
    /// Repeats after.
    pub repeats_after: u32,
    /// Samples per epoch of the train folder before.
    pub samples_before: u64,
    /// Samples per epoch after.
    pub samples_after: u64,
    /// Whether the folder was renamed (false for a dry run).
    pub renamed: bool,
}

/// The folder name for `repeats`, keeping the class name (`5_chk` → `10_chk`).
pub fn renamed(name: &str, repeats: u32) -> Option<String> {
    let (count, _) = parse_repeat_folder_name(name)?;
    count.ok().filter(|n| *n >= 1)?;
    Some(match name.split_once('_') {
        Some((_, class)) => format!("{repeats}_{class}"),
        None => repeats.to_string(),
    })
}

/// Renames `from` to `to` unless `to` exists, atomically where the file system can
/// (`renameat2(RENAME_NOREPLACE)` on Linux; elsewhere a check just before the rename).
pub fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            std::ffi::CString::new(p.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL in the path"))
        };
        let (f, t) = (c(from)?, c(to)?);
        // SAFETY: both are valid NUL-terminated paths that outlive the call.
        let rc =
            unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        // File systems without RENAME_NOREPLACE answer EINVAL (old kernels ENOSYS).
        if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(err);
        }
    }
    if to.symlink_metadata().is_ok() {
        return Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the target exists"));
    }
    std::fs::rename(from, to)
}

/// Samples per epoch of the train folder `parent` with the subset `dir` at `repeats` (the
/// dataset loader's count: usable images × repeats, headers only).
fn samples_per_epoch(parent: &Path, dir: &Path, repeats: Option<u32>) -> Result<u64, String> {
    let plan = plan_from_dirs(parent, None, &OptionLayer::default()).map_err(|e| e.to_string())?;
    let mut total = 0;
    for mut spec in plan.datasets {
        if let Some(n) = repeats {
            for s in spec.subsets.iter_mut().filter(|s| s.image_dir == dir) {
                s.num_repeats = n;
            }
        }
        let loaded = load_dataset(&spec, ProbeMode::Header);
        loaded.check_epoch_size()?;
        total += loaded.samples_per_epoch();
    }
    Ok(total)
}

fn plan_change(dir: &Path, shown: &str, repeats: i64) -> Result<(PathBuf, RepeatsChange), (StatusCode, String)> {
    let unprocessable = |m: String| (StatusCode::UNPROCESSABLE_ENTITY, m);
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let parent = dir.parent().filter(|_| !shown.trim_matches('/').is_empty()).ok_or_else(|| {
        unprocessable(format!("{shown:?}: choose a subset folder (N_name) inside a train folder, not the root"))
    })?;
    let Some((Ok(before), _)) = parse_repeat_folder_name(&name).filter(|(n, _)| n.as_ref().is_ok_and(|n| *n >= 1))
    else {
        return Err(unprocessable(format!(
            "{shown}: not an N_name subset folder (its name does not start with a repeat count and _), so it has no repeats to change"
        )));
    };
    let after = u32::try_from(repeats)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| unprocessable(format!("repeats {repeats}: give a whole number of at least 1")))?;
    let before = u32::try_from(before).map_err(|_| unprocessable(format!("{shown}: the repeat count is too large")))?;
    if before == after {
        return Err(unprocessable(format!("{shown} already has {after} repeats")));
    }
    let to = renamed(&name, after).ok_or_else(|| unprocessable(format!("{shown}: not an N_name subset folder")))?;
    let target = parent.join(&to);
    if target.symlink_metadata().is_ok() {
        return Err((StatusCode::CONFLICT, format!("{to} already exists beside {name}: rename or merge it first")));
    }
    let samples_before = samples_per_epoch(parent, dir, None).map_err(unprocessable)?;
    let samples_after = samples_per_epoch(parent, dir, Some(after)).map_err(unprocessable)?;
    let path = match shown.trim_end_matches('/').rsplit_once('/') {
        Some((up, _)) => format!("{up}/{to}"),
        None => to.clone(),
    };
    let change = RepeatsChange {
        from: name,
        to,
        path,
        repeats_before: before,
        repeats_after: after,
        samples_before,
        samples_after,
        renamed: false,
    };
    Ok((target, change))
}

async fn repeats(State(state): State<AppState>, Json(request): Json<RepeatsRequest>) -> Response {
    let dir = match resolve_folder(&state, request.root, &request.path) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let done = tokio::task::spawn_blocking(move || {
        let (target, mut change) = plan_change(&dir, &request.path, request.repeats)?;
        if !request.dry_run {
            rename_no_replace(&dir, &target).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => (
                    StatusCode::CONFLICT,
                    format!("{} already exists beside {}: rename or merge it first", change.to, change.from),
                ),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, format!("{}: cannot rename: {e}", request.path)),
            })?;
            change.renamed = true;
        }
        Ok::<_, (StatusCode, String)>(change)
    })
    .await;
    match done {
        Ok(Ok(change)) => Json(change).into_response(),
        Ok(Err((status, message))) => error(status, message),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_names_keep_the_class_name() {
        assert_eq!(renamed("5_chk", 10).as_deref(), Some("10_chk"));
        assert_eq!(renamed("05_my_dog", 2).as_deref(), Some("2_my_dog"));
        assert_eq!(renamed("3", 4).as_deref(), Some("4"));
        assert_eq!(renamed("chk", 4), None);
        assert_eq!(renamed("0_chk", 4), None, "a 0_ folder is ignored by training, not a subset");
    }

    #[test]
    fn rename_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("5_a"), dir.path().join("10_a"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let err = rename_no_replace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
        assert!(a.is_dir() && b.is_dir());
        std::fs::remove_dir(&b).unwrap();
        rename_no_replace(&a, &b).unwrap();
        assert!(!a.exists() && b.is_dir());
    }
}
