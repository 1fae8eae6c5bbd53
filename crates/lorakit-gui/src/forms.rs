//! The Train page's server side: starting points (presets, a kohya_ss GUI JSON or sd-scripts
//! TOML), the form's values rendered to a lorakit TOML config and checked exactly as
//! `lorakit train` reads it, and the run plan of `lorakit train --dry-run`.
//!
//! - `GET /api/presets`: the presets of `lorakit config new`, each with the family it is for.
//! - `GET /api/presets/{name}`: one preset as its commented TOML and as form values.
//! - `POST /api/config/import`: a kohya config's text → form values and the import's notes.
//! - `POST /api/config/render`: form values (`{section: {key: value}}`, `null` = unset) → the
//!   TOML text and whether `lorakit train` accepts it.
//! - `POST /api/config/save`: `{root, folder, name, toml, overwrite}` → the config written
//!   (atomically) as `folder/name.toml` under a root, and the `lorakit train` command that runs it.
//! - `POST /api/config/command`: `{root, folder, name}` → the `lorakit train` commands that run
//!   (and dry-run) that config file, quoted for the shell (kohya's "Print training command").
//! - `POST /api/plan`: a TOML config → the dry run's plan (data, steps, warm-up, epochs, save and
//!   sample points, groups, LR curve, memory estimate against the device, warnings), or the
//!   reason the run would be refused. Paths resolve against the first root and must stay inside
//!   the roots, as for jobs.
//! - `GET /api/model?root=N&path=REL`: the family of a base model file or diffusers folder, as
//!   `lorakit train` detects it, with what to know about it.
//! - `GET /api/prompts?root=N&path=REL`: a sample prompt file (`.txt`, `.toml`, `.json`) read by
//!   the trainer's own parser as table rows; `POST /api/prompts/parse`: the same for `.txt` text;
//!   `POST /api/prompts/save`: `{root, folder, name, rows, overwrite}` → the rows written as
//!   sd-scripts prompt lines (checked by reading them back), atomically.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

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
        .route("/config/command", post(command))
        .route("/model", get(model))
        .route("/prompts", get(read_prompts))
        .route("/prompts/parse", post(parse_prompts))
        .route("/prompts/save", post(save_prompts))
}

async fn presets() -> Json<serde_json::Value> {
    let list: Vec<serde_json::Value> = lorakit_train::presets::PRESETS
        .iter()
        .map(|(name, about)| {
            serde_json::json!({ "name": name, "about": about, "family": lorakit_train::presets::preset_family(name) })
        })
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
    crate::jobs::resolve_paths(&mut config, &state.roots().all()[0]);
    if let Err(e) = crate::jobs::check_paths(&config, state.roots()) {
        return Json(serde_json::json!({ "ok": false, "error": e.to_string() })).into_response();
    }
    let schedule = config.clone();
    // The dry run reads the dataset and the model's weights: off the async threads.
    let planned = tokio::task::spawn_blocking(move || {
        let mut notes = Vec::new();
        let plan = lorakit_train::dry_run(config, &mut |event| {
            if let lorakit_train::TrainEvent::Note(n) = event {
                notes.push(n);
            }
        });
        (plan, notes, lorakit_train::plan::available_memory())
    })
    .await;
    match planned {
        Ok((Ok(plan), mut notes, available)) => {
            notes.extend(plan.notes.iter().cloned());
            let (warnings, notes): (Vec<String>, Vec<String>) =
                notes.into_iter().partition(|n| n.starts_with("warning: "));
            let warnings: Vec<String> = warnings.iter().map(|w| w["warning: ".len()..].to_string()).collect();
            let m = &plan.memory;
            let device = schedule.accelerate.device.clone();
            // The CPU trains in host memory: compare with what the system can give now. A card's
            // memory is not read here; the card sizes it fits are.
            let available_gb = (device == "cpu").then_some(available).flatten().map(|b| b / 1e9);
            Json(serde_json::json!({
                "ok": true,
                "images": plan.images,
                "reg_images": plan.reg_images,
                "batches_per_epoch": plan.batches_per_epoch,
                "steps": plan.steps,
                "epochs": plan.epochs,
                "warmup_steps": plan.warmup_steps,
                "optimizer": plan.optimizer,
                "save_points": lorakit_train::schedule::save_points(&schedule, plan.steps, plan.epochs),
                "sample_points": lorakit_train::schedule::sample_points(&schedule, plan.steps, plan.epochs),
                "memory_gb": m.total() / 1e9,
                "memory": { "weights_gb": m.weights / 1e9, "network_gb": m.network / 1e9, "activations_gb": m.activations / 1e9 },
                "device": device,
                "available_gb": available_gb,
                "cards": lorakit_train::plan::card_fit(m.total()),
                "warnings": warnings,
                "text": plan.to_string(),
                "notes": notes,
            }))
            .into_response()
        }
        Ok((Err(e), _, _)) => Json(serde_json::json!({ "ok": false, "error": e.to_string() })).into_response(),
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

/// `{root, folder, name}`: where a config file is (or will be) saved.
#[derive(Deserialize)]
struct ConfigPlace {
    root: usize,
    #[serde(default)]
    folder: String,
    name: String,
}

/// A plain file name (`stem` or `stem.ext`), without folders or a leading dot.
fn plain_stem<'a>(name: &'a str, ext: &str) -> Result<&'a str, Response> {
    let name = name.trim();
    let stem = name.strip_suffix(ext).unwrap_or(name);
    if stem.is_empty() || stem.starts_with('.') || stem.contains(['/', '\\', '\0']) {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, format!("{name:?}: give a file name without folders")));
    }
    Ok(stem)
}

async fn command(State(state): State<AppState>, Json(req): Json<ConfigPlace>) -> Response {
    let stem = match plain_stem(&req.name, ".toml") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let folder = match resolve_folder(&state, req.root, &req.folder) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let path = shell_quote(&folder.join(format!("{stem}.toml")).display().to_string());
    Json(serde_json::json!({
        "command": format!("lorakit train {path}"),
        "dry_run": format!("lorakit train {path} --dry-run"),
    }))
    .into_response()
}

/// `?root=N&path=REL`.
#[derive(Deserialize)]
struct Place {
    root: usize,
    #[serde(default)]
    path: String,
}

/// A base model as the Train page shows it.
#[derive(Serialize, Debug, PartialEq)]
pub struct ModelInfo {
    /// The absolute path, for `model.pretrained_model_name_or_path`.
    pub path: String,
    /// `sd1`, `sd2`, `sdxl`, `flux`, `sd3` (the values of `model.model_family`) or `unknown`.
    pub family: &'static str,
    /// The family as people say it (`SD 1.x`, `SDXL`, `Flux`, `SD 3`).
    pub family_name: String,
    /// `diffusers folder` or `single file`.
    pub variant: &'static str,
    /// Whether `lorakit train` trains this family.
    pub trainable: bool,
    /// What to know before training it.
    pub notes: Vec<String>,
}

/// The family of the model at `path` as `lorakit train` detects it (`detect_family_at`, through
/// `config::detect_model_family`: a file's tensor names, or a diffusers folder's
/// `model_index.json` and configs).
pub fn model_info(path: &std::path::Path) -> Result<ModelInfo, String> {
    let (family, family_name) = lorakit_train::config::detect_model_family(path)?;
    let folder = path.is_dir();
    let trainable = lorakit_train::config::MODEL_FAMILIES.contains(&family);
    let mut notes = Vec::new();
    match family {
        "flux" if !folder => notes.push(
            "a single Flux transformer file: set model.clip_l, model.t5xxl and model.ae to the text encoders' and autoencoder's files".into(),
        ),
        "sd2" => notes.push("SD 2.x: a 768-v model needs model.v_parameterization = true".into()),
        "sd3" => notes.extend(sd3_notes(path)?),
        "unknown" => notes.push(
            "lorakit does not recognise this model (no SD 1.x/2.x, SDXL, SD3 or Flux weights found); a U-Net-only file cannot tell SD 1.x from 2.x".into(),
        ),
        _ => {}
    }
    Ok(ModelInfo {
        path: path.display().to_string(),
        family,
        family_name,
        variant: if folder { "diffusers folder" } else { "single file" },
        trainable,
        notes,
    })
}

/// What an SD3 model lacks for training: the text encoders neither inside the single file nor in
/// the diffusers folder, each with the key that names its file (all three are needed).
fn sd3_notes(path: &std::path::Path) -> Result<Vec<String>, String> {
    use lorakit_models::checkpoint::sd3::{sd3_text_encoder_available, Sd3Paths, Sd3TextEncoder};
    let paths = Sd3Paths { model: path.to_path_buf(), ..Sd3Paths::default() };
    let mut missing = Vec::new();
    for (which, name) in
        [(Sd3TextEncoder::ClipL, "CLIP-L"), (Sd3TextEncoder::ClipG, "CLIP-G"), (Sd3TextEncoder::T5xxl, "T5-XXL")]
    {
        if !sd3_text_encoder_available(&paths, which).map_err(|e| e.to_string())? {
            missing.push((name, which.flag()));
        }
    }
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
    let keys: Vec<String> = missing.iter().map(|(_, key)| format!("model.{key}")).collect();
    let place = if path.is_dir() { "this diffusers folder" } else { "this SD3 file" };
    Ok(vec![format!("{place} holds no {}: set {} to the text encoders' files", names.join(", "), keys.join(", "))])
}

async fn model(State(state): State<AppState>, Query(q): Query<Place>) -> Response {
    let path = match state.roots().resolve(q.root, &q.path) {
        Ok(p) => p,
        Err(e) => return crate::api::path_error(e),
    };
    match tokio::task::spawn_blocking(move || model_info(&path)).await {
        Ok(Ok(info)) => Json(info).into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{}: {e}", q.path)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// One sample prompt as the table edits it: sd-scripts' prompt-line options, `None` where the
/// line leaves the value to the run's defaults.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct PromptRow {
    /// The prompt.
    pub prompt: String,
    /// `--n`.
    #[serde(default)]
    pub negative: Option<String>,
    /// `--w`.
    #[serde(default)]
    pub width: Option<u32>,
    /// `--h`.
    #[serde(default)]
    pub height: Option<u32>,
    /// `--s`.
    #[serde(default)]
    pub steps: Option<u32>,
    /// `--l`.
    #[serde(default)]
    pub cfg: Option<f64>,
    /// `--d`.
    #[serde(default)]
    pub seed: Option<u64>,
    /// `--ss`.
    #[serde(default)]
    pub sampler: Option<String>,
}

/// Two sets of defaults no line sets both of: a value that reads the same under both was
/// written in the line.
fn probe_defaults() -> [lorakit_train::sample_prompts::SampleDefaults; 2] {
    use lorakit_train::sample_prompts::SampleDefaults;
    let d = |size, steps, cfg_scale| SampleDefaults {
        width: size,
        height: size,
        steps,
        cfg_scale,
        guidance: None,
        sampler: "ddim".into(),
    };
    [d(64, 1, 1.0), d(72, 2, 2.0)]
}

/// The rows of prompts parsed by the trainer's parser under each of [`probe_defaults`].
fn rows_from(
    a: Vec<lorakit_train::sample_prompts::SamplePrompt>,
    b: Vec<lorakit_train::sample_prompts::SamplePrompt>,
) -> Vec<PromptRow> {
    let same = |x, y| (x == y).then_some(x);
    a.into_iter()
        .zip(b)
        .map(|(a, b)| PromptRow {
            width: same(a.width, b.width),
            height: same(a.height, b.height),
            steps: same(a.steps, b.steps),
            cfg: (a.cfg_scale == b.cfg_scale).then_some(a.cfg_scale),
            prompt: a.prompt,
            negative: a.negative,
            seed: a.seed,
            sampler: a.sampler,
        })
        .collect()
}

/// The rows of a `.txt` prompt file's text, read by `lorakit train`'s parser, and its warnings.
pub fn parse_prompt_rows(text: &str) -> Result<(Vec<PromptRow>, Vec<String>), String> {
    let [da, db] = probe_defaults();
    let (a, warnings) = lorakit_train::sample_prompts::parse_prompt_text(text, &da).map_err(|e| e.to_string())?;
    let (b, _) = lorakit_train::sample_prompts::parse_prompt_text(text, &db).map_err(|e| e.to_string())?;
    Ok((rows_from(a, b), warnings))
}

/// The prompt file at `path` (any format the trainer reads) as rows, and its warnings.
pub fn read_prompt_rows(path: &std::path::Path) -> Result<(Vec<PromptRow>, Vec<String>), String> {
    let [da, db] = probe_defaults();
    let (a, warnings) = lorakit_train::sample_prompts::parse_prompt_file(path, &da).map_err(|e| e.to_string())?;
    let (b, _) = lorakit_train::sample_prompts::parse_prompt_file(path, &db).map_err(|e| e.to_string())?;
    Ok((rows_from(a, b), warnings))
}

/// The rows as a `.txt` prompt file (`prompt --n … --w … --h … --s … --l … --d … --ss …`), or
/// what a row holds that the format cannot say (`row 2: …`).
pub fn render_prompt_rows(rows: &[PromptRow]) -> Result<String, String> {
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let at = format!("row {}", i + 1);
        let prompt = row.prompt.trim();
        let text_ok = |what: &str, t: &str| {
            if t.contains(['\n', '\r']) {
                Err(format!("{at}: the {what} has a line break; a prompt file holds one prompt per line"))
            } else if t.contains(" --") {
                Err(format!("{at}: the {what} contains \" --\", which starts an option in a prompt line"))
            } else {
                Ok(())
            }
        };
        if prompt.is_empty() {
            return Err(format!("{at}: give a prompt (or remove the row)"));
        }
        if prompt.starts_with('#') {
            return Err(format!("{at}: a prompt line starting with # is a comment; start the prompt otherwise"));
        }
        if prompt.starts_with("--") {
            return Err(format!("{at}: a prompt starting with -- would be read as an option"));
        }
        text_ok("prompt", prompt)?;
        out.push_str(prompt);
        if let Some(n) = row.negative.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
            text_ok("negative prompt", n)?;
            out.push_str(&format!(" --n {n}"));
        }
        for (opt, v) in [("w", row.width), ("h", row.height), ("s", row.steps)] {
            if let Some(v) = v {
                out.push_str(&format!(" --{opt} {v}"));
            }
        }
        if let Some(cfg) = row.cfg {
            if !cfg.is_finite() {
                return Err(format!("{at}: the CFG scale must be a number"));
            }
            out.push_str(&format!(" --l {cfg}"));
        }
        if let Some(seed) = row.seed {
            out.push_str(&format!(" --d {seed}"));
        }
        if let Some(s) = row.sampler.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            if s.contains(char::is_whitespace) {
                return Err(format!("{at}: the sampler {s:?} has a space"));
            }
            out.push_str(&format!(" --ss {s}"));
        }
        out.push('\n');
    }
    Ok(out)
}

async fn read_prompts(State(state): State<AppState>, Query(q): Query<Place>) -> Response {
    let path = match state.roots().resolve(q.root, &q.path) {
        Ok(p) => p,
        Err(e) => return crate::api::path_error(e),
    };
    match tokio::task::spawn_blocking(move || read_prompt_rows(&path).map(|r| (r, path))).await {
        Ok(Ok(((rows, warnings), path))) => {
            Json(serde_json::json!({ "path": path.display().to_string(), "rows": rows, "warnings": warnings }))
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `{text}`.
#[derive(Deserialize)]
struct PromptText {
    text: String,
}

async fn parse_prompts(Json(body): Json<PromptText>) -> Response {
    match parse_prompt_rows(&body.text) {
        Ok((rows, warnings)) => Json(serde_json::json!({ "rows": rows, "warnings": warnings })).into_response(),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

/// `{root, folder, name, rows, overwrite}`.
#[derive(Deserialize)]
struct SavePrompts {
    root: usize,
    #[serde(default)]
    folder: String,
    name: String,
    rows: Vec<PromptRow>,
    #[serde(default)]
    overwrite: bool,
}

async fn save_prompts(State(state): State<AppState>, Json(req): Json<SavePrompts>) -> Response {
    let text = match render_prompt_rows(&req.rows) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("not saved: {e}")),
    };
    // What the trainer will read back must be what the table says.
    match parse_prompt_rows(&text) {
        Ok((back, _)) if back == req.rows.iter().map(trimmed).collect::<Vec<_>>() => {}
        Ok(_) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not saved: the prompt file would not read back as the table",
            )
        }
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("not saved: {e}")),
    }
    let stem = match plain_stem(&req.name, ".txt") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let folder = match resolve_folder(&state, req.root, &req.folder) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let path = folder.join(format!("{stem}.txt"));
    if path.is_symlink() {
        return error(StatusCode::FORBIDDEN, format!("{}: a symlink; not written through", path.display()));
    }
    if path.exists() && !req.overwrite {
        return error(StatusCode::CONFLICT, format!("{} exists; save with overwrite to replace it", path.display()));
    }
    match lorakit_dataset::fs_atomic::write_atomic(&path, text.as_bytes()) {
        Ok(()) => Json(serde_json::json!({ "path": path.display().to_string(), "text": text })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}", path.display())),
    }
}

/// A row as the parser gives it back: texts trimmed, an empty negative prompt or sampler unset,
/// sizes floored to multiples of 8 (at least 64) and steps clamped to 1..=1000 as the trainer does.
fn trimmed(row: &PromptRow) -> PromptRow {
    let text = |t: &Option<String>| t.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_string);
    let size = |v: Option<u32>| v.map(|v| (v - v % 8).max(64));
    PromptRow {
        prompt: row.prompt.trim().to_string(),
        negative: text(&row.negative),
        width: size(row.width),
        height: size(row.height),
        steps: row.steps.map(|s| s.clamp(1, 1000)),
        cfg: row.cfg,
        seed: row.seed,
        sampler: text(&row.sampler),
    }
}
