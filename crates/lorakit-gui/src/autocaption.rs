//! Captioning a folder from the GUI: `lorakit caption wd14|florence|api` queued as a command job.
//!
//! `POST /api/caption` `{root, path, captioner: "wd14"|"florence"|"api", recursive, caption_extension,
//! existing: "skip"|"overwrite"|"append", trigger, wd14: {model: {root, path}, general_threshold,
//! character_threshold, remove_underscore, undesired_tags, character_tags_first,
//! use_rating_tags, max_tags}, florence: {model: {root, path}, task, num_beams}, api: {url, model,
//! key_env, prompt, concurrency, max_tokens}}`.
//! The folder and the model folder must lie under the roots; the API key is never sent by the
//! browser: the job reads it from the server's environment variable `key_env` names.

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use crate::api::{path_error, resolve_folder};
use crate::jobs::{CommandArg, CommandJob, CommandKind};
use crate::tools::{invalid, queued};
use crate::AppState;

/// The captioning route (mounted at `/api`).
pub fn routes() -> Router<AppState> {
    Router::new().route("/caption", post(caption))
}

#[derive(Deserialize)]
struct Place {
    root: usize,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct Request {
    root: usize,
    #[serde(default)]
    path: String,
    captioner: String,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    caption_extension: Option<String>,
    #[serde(default)]
    existing: Option<String>,
    #[serde(default)]
    trigger: Option<String>,
    #[serde(default)]
    wd14: Option<Wd14>,
    #[serde(default)]
    florence: Option<Florence>,
    #[serde(default)]
    api: Option<Api>,
}

#[derive(Deserialize)]
struct Florence {
    model: Place,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    num_beams: Option<u64>,
}

#[derive(Deserialize)]
struct Wd14 {
    model: Place,
    #[serde(default)]
    general_threshold: Option<f64>,
    #[serde(default)]
    character_threshold: Option<f64>,
    #[serde(default)]
    remove_underscore: bool,
    #[serde(default)]
    undesired_tags: Option<String>,
    #[serde(default)]
    character_tags_first: bool,
    #[serde(default)]
    use_rating_tags: bool,
    #[serde(default)]
    max_tags: Option<u64>,
}

#[derive(Deserialize)]
struct Api {
    url: String,
    model: String,
    #[serde(default)]
    key_env: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    concurrency: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
}

/// `--flag=value` (so a value starting with `-` stays a value).
fn flag(name: &str, value: impl std::fmt::Display) -> CommandArg {
    CommandArg::Text(format!("{name}={value}"))
}

fn text(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn threshold(what: &str, value: Option<f64>) -> Result<Option<f64>, Response> {
    match value {
        Some(v) if !(0.0..=1.0).contains(&v) || !v.is_finite() => {
            Err(invalid(format!("{what} must be between 0 and 1 (got {v})")))
        }
        other => Ok(other),
    }
}

/// The job a request asks for, checked (paths under the roots, numbers in range, a usable URL
/// and variable name).
fn build(state: &AppState, body: Value) -> Result<CommandJob, Response> {
    let req: Request = serde_json::from_value(body.clone()).map_err(|e| invalid(format!("the request: {e}")))?;
    let folder = resolve_folder(state, req.root, &req.path)?;
    let mut args = vec![CommandArg::Text(req.captioner.clone())];
    args.push(CommandArg::Input { flag: None, path: folder, weight: None });
    if req.recursive {
        args.push(CommandArg::Text("--recursive".into()));
    }
    if let Some(ext) = text(&req.caption_extension) {
        args.push(flag("--caption-extension", ext));
    }
    match req.existing.as_deref().unwrap_or("skip") {
        "skip" => {}
        "overwrite" => args.push(CommandArg::Text("--overwrite".into())),
        "append" => args.push(CommandArg::Text("--append".into())),
        other => return Err(invalid(format!("existing {other:?}: expected skip, overwrite or append"))),
    }
    if let Some(trigger) = text(&req.trigger) {
        args.push(flag("--trigger", trigger));
    }
    let shown = if req.path.is_empty() { "(root)".to_string() } else { req.path.clone() };
    let summary = match req.captioner.as_str() {
        "wd14" => {
            let w = req.wd14.ok_or_else(|| invalid("wd14: choose the tagger's model folder"))?;
            let model = model_folder(
                state,
                &w.model,
                "the tagger's folder holds model.safetensors, config.json and selected_tags.csv",
            )?;
            args.push(CommandArg::Input { flag: Some("--model"), path: model, weight: None });
            if let Some(t) = threshold("general_threshold", w.general_threshold)? {
                args.push(flag("--general-threshold", t));
            }
            if let Some(t) = threshold("character_threshold", w.character_threshold)? {
                args.push(flag("--character-threshold", t));
            }
            if w.remove_underscore {
                args.push(CommandArg::Text("--remove-underscore".into()));
            }
            if let Some(tags) = text(&w.undesired_tags) {
                args.push(flag("--undesired-tags", tags));
            }
            if w.character_tags_first {
                args.push(CommandArg::Text("--character-tags-first".into()));
            }
            if w.use_rating_tags {
                args.push(CommandArg::Text("--use-rating-tags".into()));
            }
            if let Some(n) = w.max_tags {
                args.push(flag("--max-tags", n));
            }
            format!("WD14 tags for {shown}")
        }
        "florence" => {
            let f = req.florence.ok_or_else(|| invalid("florence: choose the Florence-2 model folder"))?;
            let model = model_folder(
                state,
                &f.model,
                "a Florence-2 folder holds config.json, model.safetensors, tokenizer.json and preprocessor_config.json",
            )?;
            args.push(CommandArg::Input { flag: Some("--model"), path: model, weight: None });
            let task = f.task.as_deref().unwrap_or("more-detailed");
            if !["caption", "detailed", "more-detailed"].contains(&task) {
                return Err(invalid(format!("task {task:?}: expected caption, detailed or more-detailed")));
            }
            args.push(flag("--task", task));
            if let Some(n) = f.num_beams {
                if n == 0 || n > 16 {
                    return Err(invalid(format!("num_beams must be 1 to 16 (got {n})")));
                }
                args.push(flag("--num-beams", n));
            }
            format!("Florence-2 captions for {shown}")
        }
        "api" => {
            let a = req.api.ok_or_else(|| invalid("api: give the server's URL and model"))?;
            let url = a.url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(char::is_whitespace) {
                return Err(invalid(format!("{url:?}: give the API's http:// or https:// address")));
            }
            if a.model.trim().is_empty() {
                return Err(invalid("api: give the model's name"));
            }
            args.push(flag("--api", url));
            args.push(flag("--api-model", a.model.trim()));
            if let Some(var) = text(&a.key_env) {
                let valid = var.chars().next().is_some_and(|c| c.is_ascii_uppercase() || c == '_')
                    && var.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if !valid {
                    return Err(invalid(format!("{var:?}: the name of an environment variable (A–Z, 0–9, _)")));
                }
                args.push(flag("--api-key-env", var));
            }
            if let Some(prompt) = text(&a.prompt) {
                args.push(flag("--prompt", prompt));
            }
            if let Some(n) = a.concurrency {
                if n == 0 || n > 64 {
                    return Err(invalid(format!("concurrency must be 1 to 64 (got {n})")));
                }
                args.push(flag("--concurrency", n));
            }
            if let Some(n) = a.max_tokens {
                args.push(flag("--max-tokens", n));
            }
            format!("{} captions for {shown}", a.model.trim())
        }
        other => return Err(invalid(format!("captioner {other:?}: expected wd14, florence or api"))),
    };
    Ok(CommandJob { kind: CommandKind::Caption, args, summary, request: body })
}

/// The model folder `place` names, which must be a folder (`holds` says what it should hold).
fn model_folder(state: &AppState, place: &Place, holds: &str) -> Result<std::path::PathBuf, Response> {
    let model = state.roots().resolve(place.root, &place.path).map_err(path_error)?;
    if !model.is_dir() {
        return Err(invalid(format!("{}: not a folder ({holds})", place.path)));
    }
    Ok(model)
}

async fn caption(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    match build(&state, body) {
        Ok(job) => queued(&state, job),
        Err(response) => response,
    }
}
