//! The Datasets page's server side: the dataset doctor over a kohya train folder or a dataset
//! TOML under a root (`lorakit dataset check`'s report: subsets, repeats, steps, buckets,
//! findings, every image with its caption and bucket), thumbnails of its images, and how
//! training will see one image.
//!
//! - `GET /api/dataset?root=N&path=REL[&full=1]`: the report of `REL`, a train folder (the
//!   parent of `N_name` subsets) or a dataset TOML (`[[datasets]]` with `image_dir`s; refused
//!   when an `image_dir` is not inside the roots). Headers only by default (fast on large
//!   datasets); `full=1` decodes every image, as `lorakit dataset check` does, to find corrupt
//!   files and duplicates. Each image carries `root` and `file` (for the caption routes) and `id`
//!   (its thumbnail, `/api/thumb/{id}`, and the as-trained view).
//! - `GET /api/dataset/as-trained?root=N&path=REL&image=ID[&flip=1]`: how training
//!   sees the image `ID` names (its id in the report) in the dataset `REL` — its size, the size it is resized to, the crop offsets,
//!   its bucket, the resize filter, flip and random crop — computed by the dataset code training
//!   uses (`BucketManager::select`, `crop_offsets`); `/api/dataset/as-trained.png` with the same
//!   query: the pixels of that sample as a PNG (`load_training_image`, the trainer's loader).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lorakit_dataset::bucket::{BucketChoice, BucketManager};
use lorakit_dataset::config::{plan_from_dirs, plan_from_toml, DatasetPlan, DatasetSpec, OptionLayer, SubsetSpec};
use lorakit_dataset::dataset::ProbeMode;
use lorakit_dataset::doctor::{check_with, CheckOptions};
use lorakit_dataset::fingerprint_cache::FingerprintCache;
use lorakit_dataset::preprocess::{crop_offsets, load_training_image, Crop, Interpolation};
use serde::{Deserialize, Serialize};

use crate::api::{error, path_error};
use crate::roots::Roots;
use crate::AppState;

/// The Datasets page's routes (mounted at `/api`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dataset", get(dataset))
        .route("/dataset/as-trained", get(as_trained))
        .route("/dataset/as-trained.png", get(as_trained_png))
        .merge(crate::repeats::routes())
}

/// `?root=N&path=REL[&full=1]`.
#[derive(Deserialize)]
struct DatasetQuery {
    root: usize,
    #[serde(default)]
    path: String,
    #[serde(default)]
    full: Option<u8>,
}

/// What the page checks: a train folder or a dataset TOML, resolved under a root.
pub(crate) enum Source {
    /// A train folder (canonical): its `N_name` subfolders are the subsets.
    Folder(PathBuf),
    /// A dataset TOML (canonical).
    Toml(PathBuf),
}

/// The dataset `path` under root `root` names (a folder or a `.toml` file).
pub(crate) fn resolve_source(state: &AppState, root: usize, path: &str) -> Result<Source, Response> {
    let resolved = state.roots().resolve(root, path).map_err(path_error)?;
    if resolved.is_dir() {
        Ok(Source::Folder(resolved))
    } else if resolved.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml")) {
        Ok(Source::Toml(resolved))
    } else {
        Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{path}: not a train folder or a dataset TOML; choose a folder holding N_name subsets or a .toml file"
            ),
        ))
    }
}

/// Why a dataset cannot be shown: the answer's status and message.
pub(crate) type Refusal = (StatusCode, String);

/// The plan of `source`, as `lorakit dataset check` makes it (sd-scripts' defaults: 512,
/// buckets on). A TOML's every `image_dir` must exist and lie inside the roots (each is replaced
/// by its canonical path); `shown` names the source in messages.
pub(crate) fn load_plan(source: &Source, roots: &Roots, shown: &str) -> Result<DatasetPlan, Refusal> {
    let unprocessable = |e: String| (StatusCode::UNPROCESSABLE_ENTITY, format!("{shown}: {e}"));
    match source {
        Source::Folder(dir) => {
            plan_from_dirs(dir, None, &OptionLayer::default()).map_err(|e| unprocessable(e.to_string()))
        }
        Source::Toml(file) => {
            let mut plan = plan_from_toml(file, &OptionLayer::default()).map_err(|e| unprocessable(e.to_string()))?;
            for (d, dataset) in plan.datasets.iter_mut().enumerate() {
                for (s, subset) in dataset.subsets.iter_mut().enumerate() {
                    let at = format!("[[datasets]] #{} subset #{}", d + 1, s + 1);
                    let canonical = subset
                        .image_dir
                        .canonicalize()
                        .map_err(|e| unprocessable(format!("image_dir {} ({at}): {e}", subset.image_dir.display())))?;
                    if !roots.all().iter().any(|r| canonical.starts_with(r)) {
                        return Err((
                            StatusCode::FORBIDDEN,
                            format!(
                                "{shown}: image_dir {} ({at}) is not inside the roots this GUI was started with; \
                                 start `lorakit gui` with --root for it, or move the images under a root",
                                subset.image_dir.display()
                            ),
                        ));
                    }
                    subset.image_dir = canonical;
                }
            }
            Ok(plan)
        }
    }
}

async fn dataset(State(state): State<AppState>, Query(q): Query<DatasetQuery>) -> Response {
    let source = match resolve_source(&state, q.root, &q.path) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let full = q.full == Some(1);
    let roots = state.roots().clone();
    let ids = state.clone();
    let (root, base) = (q.root, q.path.clone());
    let checked = tokio::task::spawn_blocking(move || {
        let plan = load_plan(&source, &roots, &base)?;
        let options =
            CheckOptions { mode: if full { ProbeMode::Full } else { ProbeMode::Header }, ..CheckOptions::default() };
        // Image paths are shown relative to the train folder, or to the roots for a TOML.
        let shown_from = match &source {
            Source::Folder(dir) => vec![dir.clone()],
            Source::Toml(_) => roots.all().to_vec(),
        };
        let report = check_with(&plan, &shown_from, &options, &FingerprintCache::disabled(), &|_| {});
        let mut value =
            serde_json::to_value(&report).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        address_images(&mut value, &source, &roots, root, &base, ids.images());
        value["source"] = if matches!(source, Source::Folder(_)) { "folder" } else { "toml" }.into();
        Ok::<_, Refusal>(value)
    })
    .await;
    match checked {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err((status, message))) => error(status, message),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Adds `root` and `file` (its path under that root) to every image of a report, so the page
/// addresses thumbnails, captions and the as-trained view the same way for folders and TOMLs.
fn address_images(
    report: &mut serde_json::Value,
    source: &Source,
    roots: &Roots,
    root: usize,
    base: &str,
    images: &crate::images::ImageIds,
) {
    let Some(datasets) = report["datasets"].as_array_mut() else { return };
    for image in datasets.iter_mut().filter_map(|d| d["images"].as_array_mut()).flatten() {
        let shown = image["path"].as_str().unwrap_or_default().to_string();
        let (r, file) = match source {
            Source::Folder(_) if base.is_empty() => (Some(root), shown),
            Source::Folder(_) => (Some(root), format!("{}/{shown}", base.trim_end_matches('/'))),
            // The doctor showed it from the deepest root holding it.
            Source::Toml(_) => {
                let deepest = roots
                    .all()
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.join(&shown).exists())
                    .max_by_key(|(_, r)| r.components().count())
                    .map(|(i, _)| i);
                (deepest, shown)
            }
        };
        // The thumbnail's address: an opaque id (crate::images), never the path.
        image["id"] = r.map(|r| images.id(r, &file)).into();
        image["root"] = r.into();
        image["file"] = file.into();
    }
}

/// `?root=N&path=REL&image=ID[&flip=1]` (`ID`: the image's id from the report).
#[derive(Deserialize)]
struct AsTrainedQuery {
    root: usize,
    #[serde(default)]
    path: String,
    image: String,
    #[serde(default)]
    flip: Option<u8>,
}

/// How training sees one image: every number from the dataset code training runs.
#[derive(Debug, Serialize, PartialEq)]
pub struct AsTrained {
    /// The image's subset folder (under its root).
    pub subset: String,
    /// Upright size of the file `(W, H)`.
    pub original: (u32, u32),
    /// The size it is resized to (covers the bucket).
    pub resized: (u32, u32),
    /// Left and top offset of the centre crop from the resized image to the bucket.
    pub crop: (u32, u32),
    /// Pixels cut off the resized image per axis (the room a random crop moves in).
    pub trim: (u32, u32),
    /// The bucket `(W, H)`: the size of the sample.
    pub bucket: (u32, u32),
    /// Share of the resized image's pixels cut off by the crop.
    pub cropped_fraction: f64,
    /// The resize filter, as sd-scripts names it; `none` when the size does not change.
    pub interpolation: String,
    /// The filter was chosen automatically (`area` shrinking, `lanczos` enlarging).
    pub interpolation_auto: bool,
    /// `flip_aug`: half the samples are mirrored.
    pub flip_aug: bool,
    /// `random_crop`: each sample's crop offset is drawn in `0..=trim` instead of the centre.
    pub random_crop: bool,
    /// The dataset's resolution and bucketing.
    pub resolution: (u32, u32),
    /// Buckets on (off: every image is resized and cropped to the resolution).
    pub enable_bucket: bool,
}

/// The dataset and subset of `image` (canonical) in `plan`.
fn subset_of<'p>(plan: &'p DatasetPlan, image: &Path) -> Option<(&'p DatasetSpec, &'p SubsetSpec)> {
    let folder = image.parent()?;
    plan.datasets.iter().find_map(|d| {
        d.subsets.iter().find(|s| s.image_dir.canonicalize().is_ok_and(|dir| dir == folder)).map(|s| (d, s))
    })
}

/// Where `image` goes when `plan` is trained: its bucket choice and subset (the numbers
/// `load_dataset` computes for it, by the same `BucketManager`).
fn plan_image(plan: &DatasetPlan, image: &Path, shown: &str) -> Result<(BucketChoice, AsTrainedParts), Refusal> {
    let (dataset, subset) = subset_of(plan, image).ok_or_else(|| {
        (StatusCode::UNPROCESSABLE_ENTITY, format!("{shown}: not an image of this dataset's subsets"))
    })?;
    let probe = lorakit_dataset::probe::probe_header(image)
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, format!("{shown}: {e}")))?;
    let choice = BucketManager::new(&dataset.buckets)
        .select(probe.size.0, probe.size.1)
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, format!("{shown}: {e}")))?;
    Ok((
        choice,
        AsTrainedParts {
            original: probe.size,
            interpolation: subset.resize_interpolation.clone(),
            flip_aug: subset.augment.flip_aug,
            random_crop: subset.augment.random_crop,
            resolution: dataset.buckets.resolution,
            enable_bucket: dataset.buckets.enable_bucket,
            subset_dir: subset.image_dir.clone(),
        },
    ))
}

/// The subset facts [`AsTrained`] reports besides the bucket choice.
struct AsTrainedParts {
    original: (u32, u32),
    interpolation: Option<String>,
    flip_aug: bool,
    random_crop: bool,
    resolution: (u32, u32),
    enable_bucket: bool,
    subset_dir: PathBuf,
}

fn interpolation_name(i: Interpolation) -> &'static str {
    match i {
        Interpolation::Lanczos => "lanczos",
        Interpolation::Area => "area",
        Interpolation::Nearest => "nearest",
        Interpolation::Bilinear => "bilinear",
        Interpolation::Bicubic => "bicubic",
        Interpolation::Box => "box",
    }
}

/// Resolves the query's dataset and image and plans the image (blocking: reads files).
fn plan_query(state: &AppState, q: &AsTrainedQuery) -> Result<(PathBuf, BucketChoice, AsTrainedParts), Response> {
    let source = resolve_source(state, q.root, &q.path)?;
    let (image_root, shown) = state
        .images()
        .get(&q.image)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "no such image (the page is older than the server: reload it)"))?;
    let image = state.roots().resolve(image_root, &shown).map_err(path_error)?;
    let plan = load_plan(&source, state.roots(), &q.path).map_err(|(s, m)| error(s, m))?;
    let (choice, parts) = plan_image(&plan, &image, &shown).map_err(|(s, m)| error(s, m))?;
    Ok((image, choice, parts))
}

async fn as_trained(State(state): State<AppState>, Query(q): Query<AsTrainedQuery>) -> Response {
    let planned = tokio::task::spawn_blocking(move || {
        let (_, choice, parts) = plan_query(&state, &q)?;
        let auto = Interpolation::auto(parts.original, choice.resized);
        let interpolation = if parts.original == choice.resized {
            "none".to_string()
        } else {
            parts.interpolation.clone().unwrap_or_else(|| interpolation_name(auto).to_string())
        };
        let subset = (0..state.roots().all().len())
            .find_map(|r| state.roots().relative(r, &parts.subset_dir))
            .unwrap_or_else(|| parts.subset_dir.display().to_string());
        Ok::<_, Response>(AsTrained {
            subset,
            original: parts.original,
            resized: choice.resized,
            crop: crop_offsets(choice.resized, choice.bucket, Crop::Center),
            trim: (choice.resized.0 - choice.bucket.0, choice.resized.1 - choice.bucket.1),
            bucket: choice.bucket,
            cropped_fraction: (choice.cropped_fraction() * 1e4).round() / 1e4,
            interpolation_auto: parts.interpolation.is_none() && parts.original != choice.resized,
            interpolation,
            flip_aug: parts.flip_aug,
            random_crop: parts.random_crop,
            resolution: parts.resolution,
            enable_bucket: parts.enable_bucket,
        })
    })
    .await;
    match planned {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(r)) => r,
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The sample as the trainer loads it (`load_training_image`: resize, centre crop, flip when
/// `flip=1`), its `[-1, 1]` values turned back into 8-bit RGB, as PNG.
async fn as_trained_png(State(state): State<AppState>, Query(q): Query<AsTrainedQuery>) -> Response {
    let flip = q.flip == Some(1);
    let encoded = tokio::task::spawn_blocking(move || {
        let (image, choice, parts) = plan_query(&state, &q)?;
        let sample = load_training_image(&image, &choice, parts.interpolation.as_deref(), Crop::Center, flip)
            .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        let (w, h) = (sample.width as usize, sample.height as usize);
        let plane = w * h;
        let mut rgb = vec![0u8; 3 * plane];
        for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
            for (c, v) in px.iter_mut().enumerate() {
                // Inverse of x/127.5 − 1, exact after rounding for every byte value.
                *v = ((sample.pixels[c * plane + i] + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
            }
        }
        let img = image::RgbImage::from_raw(sample.width, sample.height, rgb)
            .ok_or_else(|| error(StatusCode::INTERNAL_SERVER_ERROR, "sample size mismatch"))?;
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok::<_, Response>(png)
    })
    .await;
    match encoded {
        Ok(Ok(png)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "no-store")], png)
                .into_response()
        }
        Ok(Err(r)) => r,
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
