//! The JSON API under `/api` (every route behind [`crate::security`]).
//!
//! - `GET /api/session`: version and the roots.
//! - `GET /api/fs?root=N&path=REL`: a folder's entries under a root.
//! - `GET /api/schema`: every training config key with its type, default, sd-scripts name and
//!   documentation — the one schema the train form is generated from.
//! - `POST /api/config/check`: a TOML config checked as `lorakit train` would read it.
//! - `GET /api/lora?root=N&path=REL`: `lorakit inspect`'s report of a LoRA file under a root
//!   (metadata, format, base model, ranks, block-by-block norms; the module list left out).
//! - Jobs ([`crate::jobs`]): `GET /api/jobs` (`{jobs, skipped}`), `GET /api/jobs/{id}`,
//!   `GET /api/jobs/{id}/config` (the snapshot, for Clone & edit), `POST /api/jobs` (body: the
//!   TOML config; 422 with the reason when `lorakit train` would refuse it or a path leaves the
//!   roots), `POST /api/jobs/{id}/stop` (Stop & save), `/kill` (Stop now), `/resume`, and
//!   `GET /api/jobs/{id}/events`: the job's output lines as Server-Sent Events whose id is the
//!   byte offset after the line, so a reconnect's `Last-Event-ID` resumes exactly there; a
//!   `status` event carries the record when it changes, `end` closes a finished job's stream;
//!   `GET /api/jobs/{id}/metrics`: the run's `log.jsonl` rows the same way (the loss chart);
//!   `GET /api/jobs/{id}/samples`: the run's sample images so far, by save point and prompt;
//!   `POST /api/jobs/{id}/save-now` and `/sample-now` ask a running job to save or sample after
//!   its current step; `POST /api/jobs/{id}/move` (`{"by": -1|1}`) reorders a queued job,
//!   `POST /api/jobs/{id}/delete` removes a finished job's folder (never its outputs),
//!   `GET /api/jobs/{id}/command` is a command job's request ([`crate::tools`] queues them).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::jobs::{JobError, Jobs, Status};
use crate::roots::PathError;
use crate::AppState;

/// The API routes (mounted at `/api`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/session", get(session))
        .route("/fs", get(list_folder))
        .route("/schema", get(schema))
        .route("/config/check", post(check_config))
        .route("/jobs", get(list_jobs).post(submit_job))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/config", get(job_config))
        .route("/jobs/{id}/stop", post(stop_job))
        .route("/jobs/{id}/kill", post(kill_job))
        .route("/jobs/{id}/resume", post(resume_job))
        .route("/jobs/{id}/events", get(job_events))
        .route("/jobs/{id}/metrics", get(job_metrics))
        .route("/jobs/{id}/samples", get(job_samples))
        .route("/jobs/{id}/save-now", post(save_now))
        .route("/jobs/{id}/sample-now", post(sample_now))
        .route("/jobs/{id}/move", post(move_job))
        .route("/jobs/{id}/delete", post(delete_job))
        .route("/jobs/{id}/command", get(job_command))
        .route("/lora", get(inspect_lora))
        .merge(crate::forms::routes())
        .merge(crate::tools::routes())
        .merge(crate::library::routes())
        .merge(crate::images::routes())
        .merge(crate::autocaption::routes())
        .merge(crate::datasets::routes())
        .merge(crate::tags::routes())
        .merge(crate::captions::routes())
        .merge(crate::runs::routes())
}

/// The API's error answer: `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// A refused browser path: 403 when it leaves the root, 404 when there is no such root or file.
pub(crate) fn path_error(e: PathError) -> Response {
    match e {
        PathError::Outside(_) => error(StatusCode::FORBIDDEN, e.to_string()),
        PathError::NoSuchRoot(_) | PathError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

/// The existing folder `path` names under root `root` (422 when it is a file).
pub(crate) fn resolve_folder(state: &AppState, root: usize, path: &str) -> Result<std::path::PathBuf, Response> {
    match state.roots().resolve(root, path) {
        Ok(p) if p.is_dir() => Ok(p),
        Ok(_) => Err(error(StatusCode::UNPROCESSABLE_ENTITY, format!("{path}: not a folder"))),
        Err(e) => Err(path_error(e)),
    }
}

/// One root as the browser sees it.
#[derive(Serialize)]
struct RootInfo {
    id: usize,
    name: String,
    path: String,
}

async fn session(State(state): State<AppState>) -> Json<serde_json::Value> {
    let roots: Vec<RootInfo> = state
        .roots()
        .all()
        .iter()
        .enumerate()
        .map(|(id, p)| RootInfo {
            id,
            name: p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()),
            path: p.display().to_string(),
        })
        .collect();
    Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "roots": roots }))
}

/// `?root=N&path=REL`.
#[derive(Deserialize)]
struct FolderQuery {
    root: usize,
    #[serde(default)]
    path: String,
}

/// A folder entry.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The file name.
    pub name: String,
    /// `dir`, `file`, or `outside` (a symlink that leaves the root: listed, not followed).
    pub kind: &'static str,
    /// Bytes, for files.
    pub size: Option<u64>,
}

async fn list_folder(State(state): State<AppState>, Query(q): Query<FolderQuery>) -> Response {
    let roots = state.roots();
    let dir = match roots.resolve(q.root, &q.path) {
        Ok(d) => d,
        Err(e) => return path_error(e),
    };
    let root = roots.all()[q.root].clone();
    let listed = tokio::task::spawn_blocking(move || read_entries(&dir, &root)).await;
    match listed {
        Ok(Ok((entries, unlisted))) => Json(serde_json::json!({
            "root": q.root,
            "path": q.path,
            "entries": entries,
            "unlisted": unlisted,
        }))
        .into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The entries of `dir` (folders first, then by name), and how many names could not be listed
/// (not UTF-8).
fn read_entries(dir: &std::path::Path, root: &std::path::Path) -> std::io::Result<(Vec<Entry>, usize)> {
    let mut entries = Vec::new();
    let mut unlisted = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            unlisted += 1;
            continue;
        };
        let path = entry.path();
        let inside = path.canonicalize().map(|p| p.starts_with(root)).unwrap_or(false);
        let meta = std::fs::metadata(&path);
        let (kind, size) = match (&meta, inside) {
            (_, false) => ("outside", None),
            (Ok(m), true) if m.is_dir() => ("dir", None),
            (Ok(m), true) => ("file", Some(m.len())),
            (Err(_), true) => ("outside", None),
        };
        entries.push(Entry { name, kind, size });
    }
    entries.sort_by(|a, b| (a.kind != "dir", &a.name).cmp(&(b.kind != "dir", &b.name)));
    Ok((entries, unlisted))
}

/// One training config key as the form shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SchemaField {
    /// `[section]` of the config file.
    pub section: String,
    /// The key (sd-scripts' name where one exists).
    pub key: String,
    /// `bool`, `integer`, `float`, `string`, `array` or `table`.
    pub kind: &'static str,
    /// The value of a fresh config (`null`: unset).
    pub default: serde_json::Value,
    /// The sd-scripts argument it corresponds to, from docs/training-options.md.
    pub kohya: String,
    /// What it does, from docs/training-options.md.
    pub doc: String,
    /// The model families the key applies to, and why only those (lorakit-train's
    /// `config::key_families`: the form hides the others' fields with this reason).
    pub families: &'static [&'static str],
    /// Empty when every family reads the key.
    pub family_reason: &'static str,
}

/// The reference documentation the schema's texts come from (also checked by lorakit-train's
/// `options_doc` test to list every key).
const OPTIONS_DOC: &str = include_str!("../../../docs/training-options.md");

/// Every key of [`lorakit_train::TrainConfig`], with its documentation row.
pub fn config_schema() -> Vec<SchemaField> {
    let defaults = toml::Value::try_from(lorakit_train::TrainConfig::default()).ok();
    let mut out = Vec::new();
    for (section, keys) in lorakit_train::config::key_examples() {
        let rows = doc_rows(&section);
        for (key, example) in keys {
            let default = defaults
                .as_ref()
                .and_then(|d| d.get(&section))
                .and_then(|s| s.get(&key))
                .and_then(|v| serde_json::to_value(v).ok())
                .unwrap_or(serde_json::Value::Null);
            let (kohya, doc) =
                rows.iter().find(|(k, _, _)| *k == key).map(|(_, s, d)| (s.clone(), d.clone())).unwrap_or_default();
            let applies = lorakit_train::config::key_families(&section, &key);
            let (families, family_reason) = (applies.families, applies.reason);
            out.push(SchemaField {
                section: section.clone(),
                key,
                kind: kind_of(&example),
                default,
                kohya,
                doc,
                families,
                family_reason,
            });
        }
    }
    out
}

fn kind_of(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::Boolean(_) => "bool",
        toml::Value::Integer(_) => "integer",
        toml::Value::Float(_) => "float",
        toml::Value::String(_) => "string",
        toml::Value::Array(_) => "array",
        _ => "table",
    }
}

/// The `| \`key\` | type | sd-scripts | doc |` rows of `## [section]`.
fn doc_rows(section: &str) -> Vec<(String, String, String)> {
    let heading = format!("## [{section}]");
    let Some(start) = OPTIONS_DOC.find(&heading) else { return Vec::new() };
    let body = &OPTIONS_DOC[start + heading.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    body.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.strip_prefix('|')?.strip_suffix('|')?.split(" | ").collect();
            let key = cells.first()?.trim().strip_prefix('`')?.strip_suffix('`')?;
            (cells.len() >= 4)
                .then(|| (key.to_string(), cells[2].trim().to_string(), cells[3..].join(" | ").trim().to_string()))
        })
        .collect()
}

async fn schema() -> Json<Vec<SchemaField>> {
    Json(config_schema())
}

/// `{"toml": "..."}`.
#[derive(Deserialize)]
struct ConfigText {
    toml: String,
}

async fn check_config(Json(body): Json<ConfigText>) -> Json<serde_json::Value> {
    match lorakit_train::TrainConfig::from_toml_str(&body.toml, &[]) {
        Ok(_) => Json(serde_json::json!({ "ok": true })),
        Err(e) => Json(serde_json::json!({ "ok": false, "error": e })),
    }
}

/// A job request's refusal as an answer (404, 422, 409 or 500).
pub(crate) fn job_error(e: JobError) -> Response {
    let status = match e {
        JobError::NotFound(_) => StatusCode::NOT_FOUND,
        JobError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        JobError::Conflict(_) => StatusCode::CONFLICT,
        JobError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// The server's job store (503 when it has none).
pub(crate) fn job_store(state: &AppState) -> Result<Jobs, Response> {
    state.jobs().cloned().ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "this server has no job queue"))
}

/// Runs file-reading job work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Response> {
    tokio::task::spawn_blocking(work).await.map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn job_response(result: Result<crate::jobs::JobRecord, JobError>, ok: StatusCode) -> Response {
    match result {
        Ok(record) => (ok, Json(record)).into_response(),
        Err(e) => job_error(e),
    }
}

/// A job record as the pages get it: each image file it wrote (an XY plot) carries the `image`
/// id its address uses ([`crate::images`]).
fn addressed_record(state: &AppState, record: &crate::jobs::JobRecord) -> serde_json::Value {
    let mut value = serde_json::to_value(record).unwrap_or_default();
    for (file, shown) in record.files.iter().zip(value["files"].as_array_mut().into_iter().flatten()) {
        if file.path.to_ascii_lowercase().ends_with(".png") {
            shown["image"] = state.images().id(file.root, &file.path).into();
        }
    }
    value
}

async fn list_jobs(State(state): State<AppState>) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    match blocking(move || jobs.list()).await {
        Ok((jobs, skipped)) => {
            let jobs: Vec<serde_json::Value> = jobs.iter().map(|r| addressed_record(&state, r)).collect();
            Json(serde_json::json!({ "jobs": jobs, "skipped": skipped })).into_response()
        }
        Err(r) => r,
    }
}

async fn get_job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    match blocking(move || jobs.get(&id)).await {
        Ok(Ok(record)) => Json(addressed_record(&state, &record)).into_response(),
        Ok(Err(e)) => job_error(e),
        Err(r) => r,
    }
}

async fn job_config(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    match jobs.config_text(&id) {
        Ok(text) => ([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        Err(e) => job_error(e),
    }
}

async fn submit_job(State(state): State<AppState>, body: String) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    match blocking(move || jobs.submit(&body)).await {
        Ok(result) => job_response(result, StatusCode::CREATED),
        Err(r) => r,
    }
}

async fn stop_job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match job_store(&state) {
        Ok(jobs) => job_response(jobs.stop(&id), StatusCode::OK),
        Err(r) => r,
    }
}

async fn kill_job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match job_store(&state) {
        Ok(jobs) => job_response(jobs.kill(&id), StatusCode::OK),
        Err(r) => r,
    }
}

/// `{"by": -1}` (earlier) or `{"by": 1}` (later).
#[derive(Deserialize)]
struct MoveBy {
    by: i64,
}

async fn move_job(State(state): State<AppState>, Path(id): Path<String>, body: String) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_str::<MoveBy>(&body) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, r#"give {"by": -1} or {"by": 1}"#);
    };
    match blocking(move || jobs.move_job(&id, body.by)).await {
        Ok(result) => job_response(result, StatusCode::OK),
        Err(r) => r,
    }
}

/// Removes a finished job's folder; answers `{"deleted": id}`.
async fn delete_job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    match blocking(move || jobs.delete(&id)).await {
        Ok(Ok(record)) => Json(serde_json::json!({ "deleted": record.id })).into_response(),
        Ok(Err(e)) => job_error(e),
        Err(r) => r,
    }
}

/// A command job's kind and request (the tools page refills its form from it).
async fn job_command(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match job_store(&state) {
        Ok(jobs) => match jobs.command_request(&id) {
            Ok(value) => Json(value).into_response(),
            Err(e) => job_error(e),
        },
        Err(r) => r,
    }
}

async fn resume_job(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    match blocking(move || jobs.resume(&id)).await {
        Ok(result) => job_response(result, StatusCode::CREATED),
        Err(r) => r,
    }
}

/// Where one event stream is.
struct Tail {
    jobs: Jobs,
    id: String,
    /// The file followed: the job's output, or (`None` until the run has made it) its
    /// `log.jsonl`.
    path: Option<PathBuf>,
    /// Follow the run's `log.jsonl` (metrics) instead of the output.
    metrics: bool,
    offset: u64,
    pending: VecDeque<Event>,
    status: Option<Status>,
    ended: bool,
}

/// Bytes read per look at the output (a longer line arrives in pieces).
const EVENT_CHUNK: usize = 64 * 1024;

async fn job_events(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    let path = match jobs.output_path(&id) {
        Ok(p) => p,
        Err(e) => return job_error(e),
    };
    let offset = last_event_id(&headers);
    stream_file(jobs, id, Some(path), false, offset)
}

/// `GET /api/jobs/{id}/metrics`: the run's `log.jsonl` rows (step, epoch, wall_time, loss,
/// learning rates, …) as Server-Sent Events, each row's data the JSON line and its id the byte
/// offset after it, so a reconnecting chart resumes where it left off.
async fn job_metrics(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    if let Err(e) = jobs.get(&id) {
        return job_error(e);
    }
    stream_file(jobs, id, None, true, last_event_id(&headers))
}

/// The `Last-Event-ID` EventSource sends when it reconnects: the offset to go on from.
fn last_event_id(headers: &HeaderMap) -> u64 {
    headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
}

fn stream_file(jobs: Jobs, id: String, path: Option<PathBuf>, metrics: bool, offset: u64) -> Response {
    let tail = Tail { jobs, id, path, metrics, offset, pending: VecDeque::new(), status: None, ended: false };
    let stream = futures_util::stream::unfold(tail, next_event);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

async fn next_event(mut tail: Tail) -> Option<(Result<Event, Infallible>, Tail)> {
    loop {
        if let Some(event) = tail.pending.pop_front() {
            return Some((Ok(event), tail));
        }
        if tail.ended || tail.jobs.is_closing() {
            return None;
        }
        // The status first: output read after seeing a final status is complete.
        let (jobs, id) = (tail.jobs.clone(), tail.id.clone());
        let record = match blocking(move || jobs.get(&id)).await {
            Ok(Ok(r)) => r,
            _ => return None,
        };
        let finished = record.status.is_final();
        if tail.metrics && tail.path.is_none() {
            tail.path = record.log_dir.as_ref().map(|d| d.join(lorakit_train::run_log::JSONL_FILE));
        }
        let lines = match tail.path.clone() {
            Some(path) => {
                let offset = tail.offset;
                blocking(move || crate::jobs::read_lines_from(&path, offset, EVENT_CHUNK, finished))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        let more = !lines.is_empty();
        for (end, text) in lines {
            tail.pending.push_back(Event::default().id(end.to_string()).data(text));
            tail.offset = end;
        }
        if tail.status != Some(record.status) {
            tail.status = Some(record.status);
            let json = serde_json::to_string(&record).unwrap_or_default();
            tail.pending.push_back(Event::default().event("status").data(json));
        }
        if finished && !more {
            let status = serde_json::to_value(record.status).unwrap_or_default();
            tail.pending.push_back(Event::default().event("end").data(status.as_str().unwrap_or_default()));
            tail.ended = true;
        }
        if tail.pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// `lorakit inspect`'s report of the `.safetensors` file at `?root=N&path=REL`, without the
/// per-module list (hundreds of rows; the block statistics summarise it).
async fn inspect_lora(State(state): State<AppState>, Query(q): Query<FolderQuery>) -> Response {
    let path = match state.roots().resolve(q.root, &q.path) {
        Ok(p) => p,
        Err(e) => return path_error(e),
    };
    if !path.is_file() || path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return error(StatusCode::UNPROCESSABLE_ENTITY, format!("{}: not a .safetensors file", q.path));
    }
    match tokio::task::spawn_blocking(move || lorakit_lora::inspect::inspect_file(&path)).await {
        Ok(Ok(mut report)) => {
            let modules = report.modules.len();
            report.modules.clear();
            report.path = q.path.clone();
            let mut value = serde_json::to_value(&report).unwrap_or_default();
            value["module_count"] = modules.into();
            Json(value).into_response()
        }
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{}: {e}", q.path)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// One sample image of a run.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct SampleImage {
    /// Its id for `/api/thumb/{id}` and `/api/image/{id}` ([`crate::images`]).
    pub id: String,
    /// `e000002` (end of epoch 2) or `000100` (after step 100), sd-scripts' tag.
    pub tag: String,
    /// The prompt's place in the prompt file (0-based).
    pub prompt: usize,
    /// The root holding it.
    pub root: usize,
    /// Its path under that root.
    pub path: String,
}

/// Reads sd-scripts' sample name `<output_name>_<tag>_<idx:02>_<timestamp:14>[_<seed>].png`
/// back into (tag, prompt index); grids and other files give `None`.
pub fn parse_sample_name(file: &str, output_name: &str) -> Option<(String, usize)> {
    let stem = file.strip_suffix(".png")?;
    let rest = if output_name.is_empty() { stem } else { stem.strip_prefix(output_name)?.strip_prefix('_')? };
    let mut parts = rest.split('_');
    let tag = parts.next()?;
    let index = parts.next()?;
    let timestamp = parts.next()?;
    let seed = parts.next();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let tag_ok = digits(tag.strip_prefix('e').unwrap_or(tag)) && tag.len() >= 6;
    let ok = tag_ok && index.len() >= 2 && digits(index) && timestamp.len() == 14 && digits(timestamp);
    if !(ok && seed.is_none_or(digits) && parts.next().is_none()) {
        return None;
    }
    Some((tag.to_string(), index.parse().ok()?))
}

async fn job_samples(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    // A command job makes no samples.
    if jobs.get(&id).is_ok_and(|r| r.kind != "train") {
        return Json(Vec::<SampleImage>::new()).into_response();
    }
    let config = match jobs.config_text(&id) {
        Ok(text) => match lorakit_train::TrainConfig::from_toml_str(&text, &[]) {
            Ok(c) => c,
            Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("job {id}'s config: {e}")),
        },
        Err(e) => return job_error(e),
    };
    let dir = config.folders.output_dir.join("sample");
    let name = config.folders.output_name.clone();
    let found = blocking(move || {
        let roots = state.roots();
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else { return out };
        for entry in entries.flatten() {
            let Some(file) = entry.file_name().to_str().map(str::to_string) else { continue };
            let Some((tag, prompt)) = parse_sample_name(&file, &name) else { continue };
            let Ok(path) = entry.path().canonicalize() else { continue };
            let place = (0..roots.all().len()).find_map(|r| roots.relative(r, &path).map(|p| (r, p)));
            if let Some((root, path)) = place {
                out.push(SampleImage { id: state.images().id(root, &path), tag, prompt, root, path });
            }
        }
        out.sort_by(|a, b| (a.tag.starts_with('e'), &a.tag, a.prompt).cmp(&(b.tag.starts_with('e'), &b.tag, b.prompt)));
        out
    })
    .await;
    match found {
        Ok(images) => Json(images).into_response(),
        Err(r) => r,
    }
}

async fn save_now(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match job_store(&state) {
        Ok(jobs) => job_response(jobs.request(&id, lorakit_train::trainer::SAVE_NOW_REQUEST), StatusCode::OK),
        Err(r) => r,
    }
}

async fn sample_now(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match job_store(&state) {
        Ok(jobs) => job_response(jobs.request(&id, lorakit_train::trainer::SAMPLE_NOW_REQUEST), StatusCode::OK),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_sample_name;

    #[test]
    fn sample_names_are_read_back_as_sd_scripts_writes_them() {
        let parse = |f: &str, n: &str| parse_sample_name(f, n);
        assert_eq!(parse("my_lora_e000002_01_20261206223000.png", "my_lora"), Some(("e000002".into(), 1)));
        assert_eq!(parse("my_lora_000100_00_20261206223000_42.png", "my_lora"), Some(("000100".into(), 0)));
        assert_eq!(parse("000100_03_20261206223000.png", ""), Some(("000100".into(), 3)));
        for not_a_sample in [
            "my_lora_e000002_grid.png",
            "other_e000002_01_20261206223000.png",
            "my_lora_e000002_01_2026.png",
            "my_lora_e000002_01_20261206223000.jpg",
            "my_lora_e000002_01_20261206223000_x.png",
        ] {
            assert_eq!(parse(not_a_sample, "my_lora"), None, "{not_a_sample}");
        }
    }
}
