//! The Train page's server side: starting points (presets, a kohya_ss GUI JSON or sd-scripts
//! TOML), the form's values rendered to a lorakit TOML config and checked exactly as
//! `lorakit train` reads it, and the run plan of `lorakit train --dry-run`.
//!
//! - `GET /api/presets`: the presets of `lorakit config new`.
//! - `GET /api/presets/{name}`: one preset as its commented TOML and as form values.
//! - `POST /api/config/import`: a kohya config's text → form values and the import's notes.
//! - `POST /api/config/render`: form values (`{section: {key: value}}`, `null` = unset) → the
//!   TOML text and whether `lorakit train` accepts it.
//! - `POST /api/config/save`: `{root, folder, name, toml, overwrite}` → the config written
//!   (atomically) as `folder/name.toml` under a root, and the `lorakit train` command that runs it.
//! - `POST /api/plan`: a TOML config → the dry run's plan (data, steps, groups, LR curve, memory
//!   estimate, warnings), or the reason the run would be refused. Paths resolve against the
//!   first root and must stay inside the roots, as for jobs.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::api::{error, resolve_folder};
use crate::AppState;

/// The Train page's routes (mounted at `/api`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/presets", get(presets))
        .route("/presets/{name}", get(preset))
        .route("/config/import", post(import))
        .route("/config/render", post(render))
        .route("/plan", post(plan))
        .route("/config/save", post(save))
}

async fn presets() -> Json<serde_json::Value> {
    let list: Vec<serde_json::Value> = lorakit_train::presets::PRESETS
        .iter()
        .map(|(name, about)| serde_json::json!({ "name": name, "about": about }))
        .collect();
    Json(serde_json::Value::Array(list))
}

/// A TOML table as the form's values (JSON), sections → keys → values.
fn form_values(table: &toml::Table) -> serde_json::Value {
    serde_json::to_value(table).unwrap_or(serde_json::Value::Null)
}

async fn preset(Path(name): Path<String>) -> Response {
    let text = match lorakit_train::presets::preset(&name) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::NOT_FOUND, e),
    };
    match text.parse::<toml::Table>() {
        Ok(table) => Json(serde_json::json!({ "toml": text, "values": form_values(&table) })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("preset {name}: {e}")),
    }
}

async fn import(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let base = state.roots().all()[0].clone();
    let imported = match lorakit_train::kohya_import::import_bytes(&body, &base) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let notes = imported.report(std::path::Path::new("the imported file"));
    Json(serde_json::json!({
        "values": form_values(&imported.table),
        "notes": notes,
        "prompts": imported.prompt_file.map(|(_, text)| text),
    }))
    .into_response()
}

/// `{values: {section: {key: value}}}`.
#[derive(Deserialize)]
struct FormValues {
    values: serde_json::Map<String, serde_json::Value>,
}

/// The form's values as a TOML table: `null` (unset) dropped, whole numbers given for float keys
/// (JSON cannot tell 1.0 from 1) made floats, unknown sections and keys kept for `lorakit train`
/// to refuse with its message.
pub fn values_to_table(values: &serde_json::Map<String, serde_json::Value>) -> Result<toml::Table, String> {
    let floats: std::collections::HashSet<(String, String)> =
        crate::api::config_schema().into_iter().filter(|f| f.kind == "float").map(|f| (f.section, f.key)).collect();
    let mut table = toml::Table::new();
    for (section, keys) in values {
        let Some(keys) = keys.as_object() else {
            return Err(format!("[{section}]: expected a table of keys"));
        };
        let mut out = toml::Table::new();
        for (key, value) in keys {
            if value.is_null() {
                continue;
            }
            let mut v = toml::Value::try_from(value).map_err(|e| format!("{section}.{key}: {e}"))?;
            if let (toml::Value::Integer(i), true) = (&v, floats.contains(&(section.clone(), key.clone()))) {
                v = toml::Value::Float(*i as f64);
            }
            out.insert(key.clone(), v);
        }
        if !out.is_empty() {
            table.insert(section.clone(), toml::Value::Table(out));
        }
    }
    Ok(table)
}

async fn render(Json(form): Json<FormValues>) -> Response {
    let table = match values_to_table(&form.values) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let text = match toml::to_string_pretty(&table) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    let checked = lorakit_train::TrainConfig::from_toml_str(&text, &[]);
    Json(serde_json::json!({ "toml": text, "ok": checked.is_ok(), "error": checked.err() })).into_response()
}

async fn plan(State(state): State<AppState>, text: String) -> Response {
    let mut config = match lorakit_train::TrainConfig::from_toml_str(&text, &[]) {
        Ok(c) => c,
        Err(e) => return Json(serde_json::json!({ "ok": false, "error": e })).into_response(),
    };
    config.resolve_paths(&state.roots().all()[0]);
    if let Err(e) = crate::jobs::check_paths(&config, state.roots()) {
        return Json(serde_json::json!({ "ok": false, "error": e.to_string() })).into_response();
    }
    // The dry run reads the dataset and the model's weights: off the async threads.
    let planned = tokio::task::spawn_blocking(move || {
        let mut notes = Vec::new();
        let plan = lorakit_train::dry_run(config, &mut |event| {
            if let lorakit_train::TrainEvent::Note(n) = event {
                notes.push(n);
            }
        });
        (plan, notes)
    })
    .await;
    match planned {
        Ok((Ok(plan), notes)) => Json(serde_json::json!({
            "ok": true,
            "steps": plan.steps,
            "epochs": plan.epochs,
            "memory_gb": plan.memory.total() / 1e9,
            "text": plan.to_string(),
            "notes": notes,
        }))
        .into_response(),
        Ok((Err(e), _)) => Json(serde_json::json!({ "ok": false, "error": e.to_string() })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `{root, folder, name, toml, overwrite}`.
#[derive(Deserialize)]
struct SaveRequest {
    root: usize,
    #[serde(default)]
    folder: String,
    name: String,
    toml: String,
    #[serde(default)]
    overwrite: bool,
}

async fn save(State(state): State<AppState>, Json(req): Json<SaveRequest>) -> Response {
    if let Err(e) = lorakit_train::TrainConfig::from_toml_str(&req.toml, &[]) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, format!("not saved: {e}"));
    }
    let name = req.name.trim();
    let stem = name.strip_suffix(".toml").unwrap_or(name);
    let plain = !stem.is_empty() && !stem.starts_with('.') && !stem.contains(['/', '\\', '\0']);
    if !plain {
        return error(StatusCode::UNPROCESSABLE_ENTITY, format!("{name:?}: give a file name without folders"));
    }
    let folder = match resolve_folder(&state, req.root, &req.folder) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let path = folder.join(format!("{stem}.toml"));
    if path.exists() && !req.overwrite {
        return error(StatusCode::CONFLICT, format!("{} exists; save with overwrite to replace it", path.display()));
    }
    if path.is_symlink() {
        return error(StatusCode::FORBIDDEN, format!("{}: a symlink; not written through", path.display()));
    }
    match lorakit_dataset::fs_atomic::write_atomic(&path, req.toml.as_bytes()) {
        Ok(()) => Json(serde_json::json!({
            "path": path.display().to_string(),
            "command": format!("lorakit train {}", shell_quote(&path.display().to_string())),
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}", path.display())),
    }
}

/// `text` as one POSIX shell word.
fn shell_quote(text: &str) -> String {
    if text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+:,=@".contains(&b)) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}
