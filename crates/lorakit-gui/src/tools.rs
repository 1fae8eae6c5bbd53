//! The Resize · Merge · Convert page's server side, and XY plots.
//!
//! - `POST /api/resize/preview` `{root, path, rank, conv_rank?, dynamic?, param?, precision?}`:
//!   the rank each module of the LoRA would get and the norm it keeps, computed with lorakit's
//!   own resize code on the same modules in the same order as `lorakit resize` (so the preview
//!   is what the command writes), and the size before and after.
//! - `POST /api/resize`, `/api/merge`, `/api/convert`: checked as `lorakit resize` / `merge` /
//!   `convert` check their arguments (the same messages where the CLI has one), then queued as a
//!   command job ([`crate::jobs::CommandJob`]); the answer is the job record.
//! - `POST /api/generate`: an XY plot — LoRA files (rows) × prompts (columns) as one labelled
//!   PNG by `lorakit generate --grid`, queued the same way.
//!
//! Inputs are `{root, path}` under a root; an output is `{root, path: folder, name}` plus
//! `overwrite` to replace an existing file. The argument list is built here, never taken from
//! the browser.

use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use lorakit_lora::resize::{average_fro_line, verbose_line, ResizeMethod, ResizeSettings};
use lorakit_lora::resize_file::plan_resize;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{error, job_error, job_store, path_error, resolve_folder};
use crate::jobs::{CommandArg, CommandJob, CommandKind};
use crate::AppState;

/// The tools' routes (mounted at `/api`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/resize/preview", post(resize_preview))
        .route("/resize", post(resize))
        .route("/merge", post(merge))
        .route("/convert", post(convert))
        .route("/generate", post(generate))
}

/// A file under a root.
#[derive(Deserialize, Serialize, Clone, Debug)]
struct FileArg {
    root: usize,
    path: String,
}

/// Where a result goes: a folder under a root and a plain file name.
#[derive(Deserialize, Serialize, Clone, Debug)]
struct OutputArg {
    root: usize,
    #[serde(default)]
    path: String,
    name: String,
    #[serde(default)]
    overwrite: bool,
}

/// The fields that hold numbers (top level, and in each merge input or XY plot row).
const NUMBERS: [&str; 10] =
    ["rank", "conv_rank", "param", "steps", "cfg", "seed", "width", "height", "ratio", "weight"];

/// The body as `T`, or a 422 naming the field that does not fit (serde's own message does not
/// name a field inside a flattened struct).
fn parse<T: DeserializeOwned>(body: Value) -> Result<T, Response> {
    let rows = ["inputs", "loras"].into_iter().filter_map(|k| body[k].as_array()).flatten();
    for object in std::iter::once(&body).chain(rows) {
        for key in NUMBERS {
            if let Some(v) = object.get(key).filter(|v| !v.is_number() && !v.is_null()) {
                return Err(invalid(format!("{key} must be a number (got {v})")));
            }
        }
    }
    serde_json::from_value(body).map_err(|e| invalid(format!("the request: {e}")))
}

/// A 422 with `message`.
pub(crate) fn invalid(message: impl Into<String>) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, message)
}

/// A whole number of at least `min` (`what` names the field), from the browser's JSON number.
fn whole(what: &str, value: f64, min: u64) -> Result<usize, Response> {
    if !value.is_finite() || value.fract() != 0.0 || value < min as f64 || value > 1e9 {
        return Err(invalid(format!("{what} must be a whole number of at least {min} (got {value})")));
    }
    Ok(value as usize)
}

/// An existing `.ext` file under a root.
fn input_file(state: &AppState, file: &FileArg, ext: &str) -> Result<PathBuf, Response> {
    let path = state.roots().resolve(file.root, &file.path).map_err(path_error)?;
    if !path.is_file() || path.extension().and_then(|e| e.to_str()) != Some(ext) {
        return Err(invalid(format!("{}: not a .{ext} file", file.path)));
    }
    Ok(path)
}

/// The file an output names (`.ext` added when missing): a plain name in an existing folder
/// under a root; an existing file only with `overwrite`, never through a symlink.
fn output_file(state: &AppState, out: &OutputArg, ext: &str) -> Result<PathBuf, Response> {
    let name = out.name.trim();
    let plain = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    if !plain {
        return Err(invalid(format!("{name:?}: give a file name without folders")));
    }
    let folder = resolve_folder(state, out.root, &out.path)?;
    let dotted = format!(".{ext}");
    let file = if name.ends_with(&dotted) { name.to_string() } else { format!("{name}{dotted}") };
    let path = folder.join(file);
    if path.is_symlink() {
        return Err(error(StatusCode::FORBIDDEN, format!("{}: a symlink; not written through", path.display())));
    }
    if path.is_dir() {
        return Err(invalid(format!("{}: a folder; give a file name", path.display())));
    }
    if path.exists() && !out.overwrite {
        return Err(error(StatusCode::CONFLICT, format!("{} exists; choose overwrite to replace it", path.display())));
    }
    Ok(path)
}

/// `fp32`, `fp16` or `bf16`.
fn precision(value: &Option<String>) -> Result<Option<&'static str>, Response> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some("fp32") => Ok(Some("fp32")),
        Some("fp16") => Ok(Some("fp16")),
        Some("bf16") => Ok(Some("bf16")),
        Some(other) => Err(invalid(format!("precision {other:?}: expected fp32, fp16 or bf16"))),
    }
}

/// The bytes per weight of a precision.
fn precision_bytes(precision: Option<&str>) -> u64 {
    if precision == Some("fp32") || precision.is_none() {
        4
    } else {
        2
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Queues a command job: 201 with its record, or the refusal.
pub(crate) fn queued(state: &AppState, job: CommandJob) -> Response {
    let jobs = match job_store(state) {
        Ok(jobs) => jobs,
        Err(r) => return r,
    };
    match jobs.submit_command(job) {
        Ok(record) => (StatusCode::CREATED, Json(record)).into_response(),
        Err(e) => job_error(e),
    }
}

/// `lorakit resize`'s settings.
#[derive(Deserialize, Serialize, Clone, Debug)]
struct ResizeOptions {
    rank: f64,
    #[serde(default)]
    conv_rank: Option<f64>,
    /// `sv_ratio`, `sv_fro`, `sv_cumulative` (or with `-`); empty: a fixed rank.
    #[serde(default)]
    dynamic: Option<String>,
    #[serde(default)]
    param: Option<f64>,
    #[serde(default)]
    precision: Option<String>,
}

impl ResizeOptions {
    /// The validated settings and the arguments `lorakit resize` takes for them.
    fn settings(&self) -> Result<(ResizeSettings, Vec<String>), Response> {
        let rank = whole("rank", self.rank, 0)?;
        let conv_rank = self.conv_rank.map(|r| whole("conv_rank", r, 0)).transpose()?;
        let dynamic = self.dynamic.as_deref().map(|d| d.trim().replace('-', "_")).filter(|d| !d.is_empty());
        if let Some(p) = self.param {
            if !p.is_finite() {
                return Err(invalid(format!("--param {p} is not a finite number")));
            }
        }
        let method = ResizeMethod::from_flags(dynamic.as_deref(), self.param).map_err(|e| invalid(e.to_string()))?;
        let settings = ResizeSettings::new(method, rank, conv_rank).map_err(|e| invalid(e.to_string()))?;
        let mut args = vec!["--rank".to_string(), rank.to_string()];
        if let Some(c) = conv_rank {
            args.extend(["--conv-rank".to_string(), c.to_string()]);
        }
        if let (Some(name), Some(p)) = (method.dynamic_name(), method.param()) {
            args.extend(["--dynamic".to_string(), name.to_string(), "--param".to_string(), p.to_string()]);
        }
        if let Some(p) = precision(&self.precision)? {
            args.extend(["--precision".to_string(), p.to_string()]);
        }
        Ok((settings, args))
    }
}

/// `{root, path, …ResizeOptions}`.
#[derive(Deserialize)]
struct PreviewRequest {
    root: usize,
    path: String,
    #[serde(flatten)]
    options: ResizeOptions,
}

/// One module of a resize preview.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct PreviewModule {
    /// The module's name (as `lorakit resize --verbose` prints it).
    pub name: String,
    /// Its rank now.
    pub old_rank: usize,
    /// The rank it would get.
    pub rank: usize,
    /// Its new alpha (the scale alpha/rank is kept).
    pub alpha: f64,
    /// Share of the sum of singular values kept.
    pub sum_retained: f64,
    /// Share of the Frobenius norm kept.
    pub fro_retained: f64,
    /// Largest / smallest kept singular value.
    pub max_ratio: f64,
    /// `lorakit resize --verbose`'s line for it.
    pub verbose: String,
}

/// What a resize of a file would do.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Preview {
    /// Every module in the order `lorakit resize` reports them.
    pub modules: Vec<PreviewModule>,
    /// `Average Frobenius norm retention: …`, as the command prints it.
    pub average: String,
    /// Weights (values) in the file now.
    pub params_before: u64,
    /// Weights after the resize.
    pub params_after: u64,
    /// The file's size now.
    pub bytes_before: u64,
    /// About the size after (weights at the chosen precision; the header adds a little).
    pub bytes_after: u64,
}

/// The resize `lorakit resize` would do on `input` with `settings`, without writing anything:
/// `lorakit_lora::resize_file::plan_resize`, the code `lorakit resize` runs before it writes.
pub fn preview_resize(input: &Path, settings: &ResizeSettings, bytes_per_weight: u64) -> Result<Preview, String> {
    lorakit_lora::inspect::ensure_finite(input, "The resized LoRA would be NaN in those modules")?;
    let plan = plan_resize(input, settings).map_err(|e| e.to_string())?;
    let others: u64 = plan
        .set
        .other_tensors
        .iter()
        .map(|n| plan.file.info(n).map_or(0, |i| i.shape.iter().product::<usize>() as u64))
        .sum();
    let params_after = plan.resized.iter().map(|r| (r.up.len() + r.down.len()) as u64).sum::<u64>() + others;
    let alphas = plan.resized.len() as u64;
    let modules = plan
        .resized
        .iter()
        .map(|r| PreviewModule {
            name: r.name.clone(),
            old_rank: r.old_rank,
            rank: r.rank,
            alpha: r.alpha,
            sum_retained: r.stats.sum_retained,
            fro_retained: r.stats.fro_retained,
            max_ratio: r.stats.max_ratio,
            verbose: verbose_line(r, settings.method()),
        })
        .collect();
    Ok(Preview {
        modules,
        average: average_fro_line(&plan.resized),
        params_before: plan.module_params_before + others,
        params_after,
        bytes_before: std::fs::metadata(input).map_or(0, |m| m.len()),
        bytes_after: (params_after + alphas) * bytes_per_weight,
    })
}

async fn resize_preview(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let req: PreviewRequest = match parse(body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let input = match input_file(&state, &FileArg { root: req.root, path: req.path.clone() }, "safetensors") {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (settings, _) = match req.options.settings() {
        Ok(s) => s,
        Err(r) => return r,
    };
    let bytes = match precision(&req.options.precision) {
        Ok(p) => precision_bytes(p),
        Err(r) => return r,
    };
    // SVDs of every module: seconds on a big file, off the async threads.
    match tokio::task::spawn_blocking(move || preview_resize(&input, &settings, bytes)).await {
        Ok(Ok(preview)) => Json(preview).into_response(),
        Ok(Err(e)) => invalid(format!("{}: {e}", req.path)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `{input, output, …ResizeOptions}`.
#[derive(Deserialize, Serialize)]
struct ResizeRequest {
    input: FileArg,
    output: OutputArg,
    #[serde(flatten)]
    options: ResizeOptions,
}

async fn resize(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let req: ResizeRequest = match parse(body.clone()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let built = (|| {
        let (_, options) = req.options.settings()?;
        let input = input_file(&state, &req.input, "safetensors")?;
        let output = output_file(&state, &req.output, "safetensors")?;
        let summary = format!("resize {} → {} (rank {})", file_name(&input), file_name(&output), req.options.rank);
        let mut args = vec![
            CommandArg::Input { flag: None, path: input, weight: None },
            CommandArg::Output { flag: None, path: output },
        ];
        args.extend(options.into_iter().map(CommandArg::Text));
        Ok::<_, Response>(CommandJob { kind: CommandKind::Resize, args, summary, request: body })
    })();
    match built {
        Ok(job) => queued(&state, job),
        Err(r) => r,
    }
}

/// One merge input.
#[derive(Deserialize, Serialize)]
struct WeightedFile {
    root: usize,
    path: String,
    #[serde(default = "one")]
    ratio: f64,
}

fn one() -> f64 {
    1.0
}

/// `{inputs: [{root, path, ratio}], output, rank, conv_rank?, precision?}`.
#[derive(Deserialize, Serialize)]
struct MergeRequest {
    inputs: Vec<WeightedFile>,
    output: OutputArg,
    rank: f64,
    #[serde(default)]
    conv_rank: Option<f64>,
    #[serde(default)]
    precision: Option<String>,
}

async fn merge(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let req: MergeRequest = match parse(body.clone()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let built = (|| {
        if req.inputs.is_empty() {
            return Err(invalid("give at least one LoRA to merge"));
        }
        let rank = whole("rank", req.rank, 0)?;
        let conv_rank = req.conv_rank.map(|r| whole("conv_rank", r, 0)).transpose()?;
        lorakit_lora::merge::MergeSettings::new(rank, conv_rank).map_err(|e| invalid(e.to_string()))?;
        let mut args = Vec::new();
        let mut names = Vec::new();
        for input in &req.inputs {
            if !input.ratio.is_finite() {
                return Err(invalid(format!(
                    "{}: ratio {} is not a finite number; use e.g. 0.7",
                    input.path, input.ratio
                )));
            }
            let path = input_file(&state, &FileArg { root: input.root, path: input.path.clone() }, "safetensors")?;
            names.push(format!("{}×{}", file_name(&path), input.ratio));
            args.push(CommandArg::Input { flag: None, path, weight: Some(input.ratio) });
        }
        let output = output_file(&state, &req.output, "safetensors")?;
        let summary = format!("merge {} → {} (rank {rank})", names.join(" + "), file_name(&output));
        args.push(CommandArg::Output { flag: Some("--output"), path: output });
        args.extend(["--rank".to_string(), rank.to_string()].map(CommandArg::Text));
        if let Some(c) = conv_rank {
            args.extend(["--conv-rank".to_string(), c.to_string()].map(CommandArg::Text));
        }
        if let Some(p) = precision(&req.precision)? {
            args.extend(["--precision".to_string(), p.to_string()].map(CommandArg::Text));
        }
        Ok(CommandJob { kind: CommandKind::Merge, args, summary, request: body })
    })();
    match built {
        Ok(job) => queued(&state, job),
        Err(r) => r,
    }
}

/// `{input, output, to: kohya|peft, family?: sd15|sdxl|flux|sd3, precision?}`.
#[derive(Deserialize, Serialize)]
struct ConvertRequest {
    input: FileArg,
    output: OutputArg,
    to: String,
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    precision: Option<String>,
}

async fn convert(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let req: ConvertRequest = match parse(body.clone()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let built = (|| {
        let to = match req.to.trim() {
            "kohya" => "kohya",
            "peft" | "diffusers" => "peft",
            other => return Err(invalid(format!("to {other:?}: expected kohya or peft"))),
        };
        let family = match req.family.as_deref().map(str::trim) {
            None | Some("") => None,
            Some("sd15") | Some("sd1") => Some("sd15"),
            Some("sdxl") => Some("sdxl"),
            Some("flux") => Some("flux"),
            Some("sd3") => Some("sd3"),
            Some(other) => return Err(invalid(format!("family {other:?}: expected sd15, sdxl, flux or sd3"))),
        };
        let input = input_file(&state, &req.input, "safetensors")?;
        let output = output_file(&state, &req.output, "safetensors")?;
        let summary = format!("convert {} → {} ({to})", file_name(&input), file_name(&output));
        let mut args = vec![
            CommandArg::Input { flag: None, path: input, weight: None },
            CommandArg::Output { flag: None, path: output },
            CommandArg::Text("--to".into()),
            CommandArg::Text(to.into()),
        ];
        if let Some(f) = family {
            args.extend(["--family", f].map(|s| CommandArg::Text(s.into())));
        }
        if let Some(p) = precision(&req.precision)? {
            args.extend(["--precision", p].map(|s| CommandArg::Text(s.into())));
        }
        Ok(CommandJob { kind: CommandKind::Convert, args, summary, request: body })
    })();
    match built {
        Ok(job) => queued(&state, job),
        Err(r) => r,
    }
}

/// One row of an XY plot.
#[derive(Deserialize, Serialize)]
struct WeightedLora {
    root: usize,
    path: String,
    #[serde(default = "one")]
    weight: f64,
}

/// `{model, clip_l?, clip_g?, t5xxl?, ae?, vae?, loras, prompts, negative?, steps?, cfg?, seed?,
/// width?, height?, baseline?, device?, output}`: the text encoder and autoencoder files are
/// Flux's and SD3's (`clip_g` SD3's only, `ae` Flux's only), `vae` every family's but Flux's;
/// `lorakit generate` refuses the others' with the reason.
#[derive(Deserialize, Serialize)]
struct GenerateRequest {
    model: FileArg,
    #[serde(default)]
    clip_l: Option<FileArg>,
    #[serde(default)]
    clip_g: Option<FileArg>,
    #[serde(default)]
    t5xxl: Option<FileArg>,
    #[serde(default)]
    ae: Option<FileArg>,
    #[serde(default)]
    vae: Option<FileArg>,
    #[serde(default)]
    loras: Vec<WeightedLora>,
    prompts: Vec<String>,
    #[serde(default)]
    negative: Option<String>,
    #[serde(default)]
    steps: Option<f64>,
    #[serde(default)]
    cfg: Option<f64>,
    #[serde(default)]
    seed: Option<f64>,
    #[serde(default)]
    width: Option<f64>,
    #[serde(default)]
    height: Option<f64>,
    /// A first row without any LoRA.
    #[serde(default)]
    baseline: bool,
    /// `cpu` (default), `cuda` or `metal`.
    #[serde(default)]
    device: Option<String>,
    output: OutputArg,
}

async fn generate(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let req: GenerateRequest = match parse(body.clone()) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let built = (|| {
        let prompts: Vec<&str> = req.prompts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()).collect();
        if prompts.is_empty() {
            return Err(invalid("give at least one prompt (each prompt is a column)"));
        }
        let mut text = Vec::new();
        if let Some(steps) = req.steps {
            let steps = whole("steps", steps, 1)?;
            if steps > 1000 {
                return Err(invalid(format!("steps {steps} must be between 1 and 1000")));
            }
            text.push(format!("--steps={steps}"));
        }
        for (what, value) in [("width", req.width), ("height", req.height)] {
            if let Some(v) = value {
                let v = whole(what, v, 8)?;
                if v % 8 != 0 || v > 4096 {
                    return Err(invalid(format!(
                        "{what} {v} is not usable: it must be a multiple of 8 between 8 and 4096 (the VAE works on 8×8 pixel cells)"
                    )));
                }
                text.push(format!("--{what}={v}"));
            }
        }
        if let Some(cfg) = req.cfg {
            if !cfg.is_finite() {
                return Err(invalid("cfg scale and guidance must be finite numbers"));
            }
            text.push(format!("--cfg={cfg}"));
        }
        if let Some(seed) = req.seed {
            text.push(format!("--seed={}", whole("seed", seed, 0)?));
        }
        let device = match req.device.as_deref().map(str::trim) {
            None | Some("") | Some("cpu") => "cpu",
            Some("cuda") => "cuda",
            Some("metal") => "metal",
            Some(other) => return Err(invalid(format!("device {other:?}: expected cpu, cuda or metal"))),
        };
        let model = state.roots().resolve(req.model.root, &req.model.path).map_err(path_error)?;
        let mut args = vec![CommandArg::Input { flag: Some("--model"), path: model.clone(), weight: None }];
        for (flag, file) in [
            ("--clip-l", &req.clip_l),
            ("--clip-g", &req.clip_g),
            ("--t5xxl", &req.t5xxl),
            ("--ae", &req.ae),
            ("--vae", &req.vae),
        ] {
            if let Some(f) = file.as_ref().filter(|f| !f.path.is_empty()) {
                let path = input_file(&state, f, "safetensors")?;
                args.push(CommandArg::Input { flag: Some(flag), path, weight: None });
            }
        }
        for lora in &req.loras {
            if !lora.weight.is_finite() {
                return Err(invalid(format!("LoRA weight of {} must be a finite number", lora.path)));
            }
            let path = input_file(&state, &FileArg { root: lora.root, path: lora.path.clone() }, "safetensors")?;
            args.push(CommandArg::Input { flag: Some("--lora"), path, weight: Some(lora.weight) });
        }
        for prompt in &prompts {
            args.push(CommandArg::Text(format!("--prompt={prompt}")));
        }
        if let Some(negative) = req.negative.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
            args.push(CommandArg::Text(format!("--negative={negative}")));
        }
        args.extend(text.into_iter().map(CommandArg::Text));
        args.push(CommandArg::Text("--grid".into()));
        if req.baseline {
            args.push(CommandArg::Text("--grid-baseline".into()));
        }
        args.push(CommandArg::Text(format!("--device={device}")));
        let output = output_file(&state, &req.output, "png")?;
        let summary = format!(
            "XY plot: {} LoRA × {} prompts with {} → {}",
            req.loras.len(),
            prompts.len(),
            file_name(&model),
            file_name(&output)
        );
        args.push(CommandArg::Output { flag: Some("--output"), path: output });
        Ok(CommandJob { kind: CommandKind::Generate, args, summary, request: body })
    })();
    match built {
        Ok(job) => queued(&state, job),
        Err(r) => r,
    }
}
