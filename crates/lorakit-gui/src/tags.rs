//! The tag editor's server side (`lorakit tags`' edits on a folder of captions under a root):
//! tag frequencies, a preview of a bulk edit ("N files will change", before and after), the edit
//! written atomically, and undo.
//!
//! - `GET /api/tags?root=N&path=REL`: the tag frequency table of the captions under `REL`.
//! - `POST /api/tags/preview` and `POST /api/tags/apply`: body `{root, path, op, tags, old,
//!   new}` with `op` one of `add_front`, `add_back`, `remove`, `replace`, `move_to_front`,
//!   `dedupe`, `sort`; natural-language captions are left alone, as `lorakit tags` does.
//! - `POST /api/tags/undo`: puts back the files of the latest applied caption edit (this
//!   editor's, the find/replace's or one caption's: [`crate::captions`]) — each only if it still
//!   holds what the edit wrote (a file changed since is left and named). `GET /api/tags/undo`:
//!   what the next undo would undo. The history is kept under the state folder
//!   ([`crate::undo`]), so it survives a restart.

use std::path::PathBuf;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lorakit_dataset::tags::edit::{AddPosition, EditOptions, SortOrder, TagEdit};
use lorakit_dataset::tags::matching::TagMatching;
use lorakit_dataset::tags::plan::{plan_edit, EditPlan, FileOutcome};
use lorakit_dataset::tags::select::select_caption_files;
use serde::Deserialize;

use crate::api::{error, resolve_folder};
use crate::undo::{UndoFile, UndoRecord};
use crate::AppState;

/// Changes listed in a preview (the count covers all of them).
const PREVIEW_ROWS: usize = 200;

/// The tag editor's routes (mounted at `/api`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tags", get(stats))
        .route("/tags/preview", post(preview))
        .route("/tags/apply", post(apply))
        .route("/tags/undo", post(undo).get(next_undo))
}

/// The caption files (`.txt`) under `dir`, as `lorakit tags` selects them.
fn captions(dir: PathBuf) -> Result<Vec<PathBuf>, Response> {
    select_caption_files(&[dir], ".txt").map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

/// `?root=N&path=REL`.
#[derive(Deserialize)]
struct FolderQuery {
    root: usize,
    #[serde(default)]
    path: String,
}

async fn stats(State(state): State<AppState>, Query(q): Query<FolderQuery>) -> Response {
    let dir = match resolve_folder(&state, q.root, &q.path) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let counted = tokio::task::spawn_blocking(move || {
        captions(dir).map(|files| lorakit_dataset::tags::stats::tag_stats(&files, &TagMatching::default()))
    })
    .await;
    match counted {
        Ok(Ok(stats)) => Json(stats).into_response(),
        Ok(Err(r)) => r,
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A bulk edit as the page sends it.
#[derive(Deserialize, Clone)]
struct EditRequest {
    root: usize,
    #[serde(default)]
    path: String,
    op: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    old: String,
    #[serde(default)]
    new: String,
}

impl EditRequest {
    fn edit(&self) -> Result<TagEdit, String> {
        let tags: Vec<String> = self.tags.iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
        let need_tags = || if tags.is_empty() { Err(format!("{}: give at least one tag", self.op)) } else { Ok(()) };
        Ok(match self.op.as_str() {
            "add_front" => {
                need_tags()?;
                TagEdit::add(tags, AddPosition::Start, false)
            }
            "add_back" => {
                need_tags()?;
                TagEdit::add(tags, AddPosition::End, false)
            }
            "remove" => {
                need_tags()?;
                TagEdit::remove(tags)
            }
            "move_to_front" => {
                need_tags()?;
                TagEdit::move_to_front(tags, false)
            }
            "replace" => {
                if self.old.trim().is_empty() {
                    return Err("replace: give the tag to replace".into());
                }
                TagEdit::replace(self.old.trim(), self.new.trim(), false).map_err(|e| e.to_string())?
            }
            "dedupe" => TagEdit::dedupe(),
            "sort" => TagEdit::sort(SortOrder::Alphabetical, 0),
            other => {
                return Err(format!(
                    "op {other:?}: use add_front, add_back, remove, replace, move_to_front, dedupe or sort"
                ))
            }
        })
    }

    fn summary(&self) -> String {
        match self.op.as_str() {
            "replace" => format!("replace {:?} with {:?}", self.old.trim(), self.new.trim()),
            "dedupe" | "sort" => self.op.clone(),
            op => format!("{op} {}", self.tags.join(", ")),
        }
    }
}

/// The plan of `request` (folder resolved, captions read; nothing written).
async fn plan(state: &AppState, request: &EditRequest) -> Result<EditPlan, Response> {
    let dir = resolve_folder(state, request.root, &request.path)?;
    let edit = request.edit().map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    tokio::task::spawn_blocking(move || captions(dir).map(|files| plan_edit(&files, &edit, &EditOptions::default())))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// Counts and the first changes of a plan, file names relative to the root.
fn describe(state: &AppState, root: usize, plan: &EditPlan) -> serde_json::Value {
    let counts = plan.counts();
    let name = |p: &std::path::Path| {
        let canonical = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        state.roots().relative(root, &canonical).unwrap_or_else(|| p.display().to_string())
    };
    let changes: Vec<serde_json::Value> = plan
        .files
        .iter()
        .filter_map(|f| match &f.outcome {
            FileOutcome::Change(c) => {
                Some(serde_json::json!({ "file": name(&f.path), "before": c.old_line, "after": c.new_line }))
            }
            _ => None,
        })
        .take(PREVIEW_ROWS)
        .collect();
    let failed: Vec<serde_json::Value> = plan
        .files
        .iter()
        .filter_map(|f| match &f.outcome {
            FileOutcome::Failed(m) => Some(serde_json::json!({ "file": name(&f.path), "error": m })),
            _ => None,
        })
        .collect();
    serde_json::json!({
        "changed": counts.changed,
        "unchanged": counts.unchanged,
        "skipped_natural_language": counts.skipped_natural_language,
        "failed": failed,
        "changes": changes,
    })
}

async fn preview(State(state): State<AppState>, Json(request): Json<EditRequest>) -> Response {
    match plan(&state, &request).await {
        Ok(plan) => Json(describe(&state, request.root, &plan)).into_response(),
        Err(r) => r,
    }
}

async fn apply(State(state): State<AppState>, Json(request): Json<EditRequest>) -> Response {
    let plan = match plan(&state, &request).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut described = describe(&state, request.root, &plan);
    let (plan, failures) = match tokio::task::spawn_blocking(move || {
        let failures = plan.write();
        (plan, failures)
    })
    .await
    {
        Ok(done) => done,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let failed: std::collections::HashSet<&PathBuf> = failures.iter().map(|f| &f.path).collect();
    let files: Vec<UndoFile> = plan
        .files
        .iter()
        .filter(|f| !failed.contains(&f.path))
        .filter_map(|f| match &f.outcome {
            FileOutcome::Change(c) => Some(UndoFile {
                path: f.path.clone(),
                before: Some(c.original_bytes().to_vec()),
                after: c.new_bytes.clone(),
            }),
            _ => None,
        })
        .collect();
    described["written"] = files.len().into();
    described["write_failures"] = failures
        .iter()
        .map(|f| serde_json::json!({ "file": f.path.display().to_string(), "error": f.message }))
        .collect();
    if let Err(e) = record_undo(&state, UndoRecord { summary: request.summary(), files }).await {
        described["undo_error"] = e.into();
    }
    Json(described).into_response()
}

/// Adds an applied edit to the undo history (off the async threads: it may write a file).
pub(crate) async fn record_undo(state: &AppState, record: UndoRecord) -> Result<(), String> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || state.tag_undo().push(record)).await.map_err(|e| e.to_string())?
}

async fn next_undo(State(state): State<AppState>) -> Response {
    match tokio::task::spawn_blocking(move || state.tag_undo().peek()).await {
        Ok(Ok(next)) => Json(serde_json::json!({
            "summary": next.as_ref().map(|(s, _)| s.clone()),
            "files": next.map_or(0, |(_, n)| n),
        }))
        .into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn undo(State(state): State<AppState>) -> Response {
    let undone = tokio::task::spawn_blocking(move || {
        let record = state.tag_undo().pop()?;
        Ok::<_, String>(record.map(|r| crate::undo::restore(&r)))
    })
    .await;
    match undone {
        Ok(Ok(Some(done))) => Json(done).into_response(),
        Ok(Ok(None)) => error(StatusCode::CONFLICT, "nothing to undo"),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
