//! What the run view reads about one job's training besides its live streams (those are in
//! [`crate::api`]):
//!
//! - `GET /api/runs/{id}/loras`: the LoRA files the run has written so far —
//!   `<output_dir>/<output_name>[-NNNNNN|-stepNNNNNNNN].safetensors`, as lorakit train names its
//!   final, epoch and step saves — each with its root and path (files outside the roots are
//!   counted, not listed), size and time, and the output folder itself.
//! - `GET /api/runs/{id}/series?key=loss/current`: one value of the run's `log.jsonl` as
//!   `{steps, values}` (another run's loss drawn over this one's chart, read once instead of
//!   holding an event stream open per overlay).
//! - `GET /api/runs/{id}/output.log`: the job's captured output as a download.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::{blocking, error, job_error, job_store};
use crate::jobs::Jobs;
use crate::{AppState, Roots};

/// The run routes (mounted under `/api`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/runs/{id}/loras", get(run_loras))
        .route("/runs/{id}/series", get(run_series))
        .route("/runs/{id}/output.log", get(run_output))
}

/// What a saved LoRA file is, read back from its name.
#[derive(Serialize, Debug, PartialEq, Eq, Clone, Copy)]
#[serde(tag = "kind", content = "n", rename_all = "lowercase")]
pub enum SaveKind {
    /// `<name>.safetensors`: the end of the training.
    Final,
    /// `<name>-NNNNNN.safetensors`: the end of epoch N.
    Epoch(u64),
    /// `<name>-stepNNNNNNNN.safetensors`: after step N (a step save or Save now).
    Step(u64),
}

/// Reads lorakit train's save name back: `None` for any other file (another run's output name
/// that merely starts the same, a state folder, a sample).
pub fn parse_save_name(file: &str, output_name: &str) -> Option<SaveKind> {
    let rest = file.strip_suffix(".safetensors")?.strip_prefix(output_name)?;
    if rest.is_empty() {
        return Some(SaveKind::Final);
    }
    let rest = rest.strip_prefix('-')?;
    let number = |digits: &str, width: usize| {
        (digits.len() >= width && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
    };
    match rest.strip_prefix("step") {
        Some(step) => number(step, 8).map(SaveKind::Step),
        None => number(rest, 6).map(SaveKind::Epoch),
    }
}

/// One saved LoRA file of a run.
#[derive(Serialize, Debug, PartialEq)]
pub struct SavedLora {
    /// The file name.
    pub name: String,
    /// Final, epoch or step save.
    #[serde(flatten)]
    pub kind: SaveKind,
    /// The root holding it.
    pub root: usize,
    /// Its path under that root.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Unix seconds when it was last written.
    pub modified: u64,
}

/// The run's saved LoRA files in `dir` (oldest first), and how many matching files lie outside
/// the roots (a symlink out of one: counted, never listed).
pub fn saved_loras(dir: &Path, output_name: &str, roots: &Roots) -> (Vec<SavedLora>, usize) {
    let mut found = Vec::new();
    let mut outside = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return (found, outside) };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let Some(kind) = parse_save_name(&name, output_name) else { continue };
        let Ok(path) = entry.path().canonicalize() else { continue };
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if !meta.is_file() {
            continue;
        }
        let place = (0..roots.all().len()).find_map(|r| roots.relative(r, &path).map(|p| (r, p)));
        let Some((root, path)) = place else {
            outside += 1;
            continue;
        };
        let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
        found.push(SavedLora { name, kind, root, path, size: meta.len(), modified });
    }
    // Saves in training order: steps and epochs by number in the order written, the final last.
    let number = |k: SaveKind| match k {
        SaveKind::Epoch(n) | SaveKind::Step(n) => n,
        SaveKind::Final => 0,
    };
    found.sort_by_key(|f| (matches!(f.kind, SaveKind::Final), f.modified, number(f.kind)));
    (found, outside)
}

/// The job's config snapshot as `lorakit train` reads it.
fn job_config(jobs: &Jobs, id: &str) -> Result<lorakit_train::TrainConfig, Response> {
    let text = jobs.config_text(id).map_err(job_error)?;
    lorakit_train::TrainConfig::from_toml_str(&text, &[])
        .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, format!("job {id}'s config.toml: {e}")))
}

async fn run_loras(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    // A command job (resize, captioning, …) saves no LoRA of a run: nothing to list.
    if jobs.get(&id).is_ok_and(|r| r.kind != "train") {
        return Json(serde_json::json!({ "folder": null, "output_name": "", "files": [], "outside": 0 }))
            .into_response();
    }
    let config = match job_config(&jobs, &id) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let roots = state.roots().clone();
    let dir = config.folders.output_dir.clone();
    let name = config.folders.output_name.clone();
    let listed = blocking(move || {
        let folder = dir.canonicalize().ok().and_then(|d| {
            (0..roots.all().len())
                .find_map(|r| roots.relative(r, &d).map(|p| serde_json::json!({ "root": r, "path": p })))
        });
        let (files, outside) = saved_loras(&dir, &name, &roots);
        serde_json::json!({ "folder": folder, "output_name": name, "files": files, "outside": outside })
    })
    .await;
    match listed {
        Ok(body) => Json(body).into_response(),
        Err(r) => r,
    }
}

/// `?key=loss/current`.
#[derive(Deserialize)]
struct SeriesQuery {
    key: String,
}

/// The steps and values of `key` in a `log.jsonl` (rows without it, or with `null`, skipped;
/// a line cut short by a running writer ends the read).
pub fn read_series(path: &Path, key: &str) -> std::io::Result<(Vec<u64>, Vec<f64>)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let (mut steps, mut values) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(row) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let (Some(step), Some(value)) = (row["step"].as_u64(), row[key].as_f64()) {
            steps.push(step);
            values.push(value);
        }
    }
    Ok((steps, values))
}

async fn run_series(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<SeriesQuery>,
) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    let (lookup, wanted) = (jobs.clone(), id.clone());
    let record = match blocking(move || lookup.get(&wanted)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return job_error(e),
        Err(r) => return r,
    };
    let Some(log) = record.log_dir.map(|d| d.join(lorakit_train::run_log::JSONL_FILE)) else {
        // Not started, or no row logged yet: an empty series, not an error.
        return Json(serde_json::json!({ "key": q.key, "steps": [], "values": [], "status": record.status }))
            .into_response();
    };
    let key = q.key.clone();
    let shown = log.clone();
    match blocking(move || read_series(&log, &key)).await {
        Ok(Ok((steps, values))) => {
            Json(serde_json::json!({ "key": q.key, "steps": steps, "values": values, "status": record.status }))
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}", shown.display())),
        Err(r) => r,
    }
}

async fn run_output(State(state): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    let jobs = match job_store(&state) {
        Ok(j) => j,
        Err(r) => return r,
    };
    let path: PathBuf = match jobs.output_path(&id) {
        Ok(p) => p,
        Err(e) => return job_error(e),
    };
    let read = path.clone();
    match blocking(move || std::fs::read(&read)).await {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"job-{id}-output.log\"")),
            ],
            bytes,
        )
            .into_response(),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            error(StatusCode::NOT_FOUND, format!("job {id} has no output yet"))
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}", path.display())),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const TOKEN: &str = "runs-token-0123456789";
    const PORT: u16 = 7998;

    /// A server whose queue holds one finished job `000001` writing `run*` files to `<root>/out`,
    /// with a log folder and an output; `outside` is a folder beside the root.
    struct Fixture {
        app: Router,
        root: tempfile::TempDir,
        _state: tempfile::TempDir,
        _outside: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let base = root.path().canonicalize().unwrap();
        let out = base.join("out");
        std::fs::create_dir_all(out.join("run-step00000003-state")).unwrap();
        for (name, bytes) in [
            ("run-step00000003.safetensors", 3),
            ("run-000001.safetensors", 5),
            ("run.safetensors", 7),
            ("run2.safetensors", 1),
            ("run-sample.png", 1),
        ] {
            std::fs::write(out.join(name), vec![0u8; bytes]).unwrap();
        }
        std::fs::write(outside.path().join("secret.safetensors"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.safetensors"), out.join("run-000002.safetensors"))
            .unwrap();
        let logs = out.join("logs/20260101000000");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(
            logs.join("log.jsonl"),
            concat!(
                "{\"step\":1,\"epoch\":1,\"wall_time\":1,\"loss/current\":0.5,\"lr/unet\":0.001}\n",
                "{\"step\":2,\"epoch\":1,\"wall_time\":2,\"loss/current\":null}\n",
                "{\"step\":2,\"epoch\":1,\"wall_time\":2,\"loss/epoch_average\":0.4}\n",
                "{\"step\":3,\"epoch\":2,\"wall_time\":3,\"loss/current\":0.25}\n",
                "{\"step\":4,\"epo",
            ),
        )
        .unwrap();
        let job = state.path().join("jobs/000001");
        std::fs::create_dir_all(&job).unwrap();
        let record = serde_json::json!({
            "id": "000001", "kind": "train", "created": 1, "status": "done", "started": 1, "finished": 2,
            "log_dir": logs,
        });
        std::fs::write(job.join("job.json"), record.to_string()).unwrap();
        let config = format!("[folders]\noutput_dir = {:?}\noutput_name = \"run\"\n", out.display().to_string());
        std::fs::write(job.join("config.toml"), config).unwrap();
        std::fs::write(job.join("output.log"), "step 1\nsaved run.safetensors\n").unwrap();
        let roots = Roots::new(&[root.path().to_path_buf()]).unwrap();
        let (jobs, _) = Jobs::open(state.path(), roots.clone(), crate::JobsOptions::lorakit().unwrap()).unwrap();
        let app = crate::router(AppState::new(roots, TOKEN.into(), PORT, vec![]).unwrap().with_jobs(jobs));
        Fixture { app, root, _state: state, _outside: outside }
    }

    async fn get(app: &Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let request = Request::get(uri)
            .header(header::HOST, format!("127.0.0.1:{PORT}"))
            .header(header::COOKIE, format!("lorakit_{PORT}={TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_runs_saved_loras_are_listed_in_training_order_and_none_outside_the_roots() {
        let f = fixture();
        let (status, _, body) = get(&f.app, "/api/runs/000001/loras").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let names: Vec<&str> = v["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names.len(), 3, "{v}");
        assert_eq!(names[2], "run.safetensors", "the final save last: {v}");
        assert!(names.contains(&"run-step00000003.safetensors") && names.contains(&"run-000001.safetensors"));
        let epoch = v["files"].as_array().unwrap().iter().find(|f| f["name"] == "run-000001.safetensors").unwrap();
        assert_eq!((epoch["kind"].as_str(), epoch["n"].as_u64()), (Some("epoch"), Some(1)), "{epoch}");
        assert_eq!((epoch["root"].as_u64(), epoch["path"].as_str()), (Some(0), Some("out/run-000001.safetensors")));
        assert_eq!(epoch["size"], 5);
        assert!(epoch["modified"].as_u64().unwrap() > 0);
        assert_eq!(v["outside"], 1, "the symlink out of the root is counted, not listed: {v}");
        assert_eq!(v["folder"], serde_json::json!({ "root": 0, "path": "out" }));
        assert!(f.root.path().exists());
    }

    #[tokio::test]
    async fn one_logged_value_is_read_as_steps_and_values() {
        let f = fixture();
        let (status, _, body) = get(&f.app, "/api/runs/000001/series?key=loss/current").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["steps"], serde_json::json!([1, 3]), "null and missing values skipped, a cut line ignored: {v}");
        assert_eq!(v["values"], serde_json::json!([0.5, 0.25]));
        assert_eq!(v["status"], "done");
        let (_, _, body) = get(&f.app, "/api/runs/000001/series?key=lr/unet").await;
        assert!(body.contains("\"steps\":[1]"), "{body}");
        let (status, _, _) = get(&f.app, "/api/runs/000001/series").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "key is required");
    }

    #[tokio::test]
    async fn the_output_downloads_and_unknown_jobs_are_404() {
        let f = fixture();
        let (status, headers, body) = get(&f.app, "/api/runs/000001/output.log").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "step 1\nsaved run.safetensors\n");
        let disposition = headers[header::CONTENT_DISPOSITION].to_str().unwrap();
        assert_eq!(disposition, "attachment; filename=\"job-000001-output.log\"");
        for uri in [
            "/api/runs/000009/loras",
            "/api/runs/..%2F..%2Fetc/loras",
            "/api/runs/000009/output.log",
            "/api/runs/x/series?key=a",
        ] {
            let (status, _, body) = get(&f.app, uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
            assert!(body.contains("\"error\""), "{uri}: {body}");
        }
    }

    #[test]
    fn save_names_are_read_back_as_lorakit_train_writes_them() {
        assert_eq!(parse_save_name("e2e.safetensors", "e2e"), Some(SaveKind::Final));
        assert_eq!(parse_save_name("e2e-000002.safetensors", "e2e"), Some(SaveKind::Epoch(2)));
        assert_eq!(parse_save_name("e2e-step00000003.safetensors", "e2e"), Some(SaveKind::Step(3)));
        for other in [
            "e2e2.safetensors",
            "e2e-foo.safetensors",
            "e2e-01.safetensors",
            "e2e-step3.safetensors",
            "e2e-step00000003-state",
            "e2e-000002.ckpt",
            "e2e_000002_00_20261206223000.png",
        ] {
            assert_eq!(parse_save_name(other, "e2e"), None, "{other}");
        }
    }
}
