//! The Datasets page's server side: the dataset doctor over a kohya train folder under a root
//! (`lorakit dataset check`'s report: subsets, repeats, steps, buckets, findings, every image with
//! its caption and bucket) and thumbnails of its images.
//!
//! - `GET /api/dataset?root=N&path=REL[&full=1]`: the report of the train folder `REL` (the
//!   parent of `N_name` subsets). Headers only by default (fast on large datasets); `full=1`
//!   decodes every image, as `lorakit dataset check` does, to find corrupt files and duplicates.
//! - `GET /api/thumb?root=N&path=REL`: the image at `REL` (upright, as training sees it), at most
//!   256 px a side, as PNG. Image files only; the path goes through the roots like any other.
//! - `GET /api/image?root=N&path=REL`: a PNG, JPEG or WebP file under a root as it is (sample
//!   images at full size).

use std::io::Cursor;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lorakit_dataset::config::{plan_from_dirs, OptionLayer};
use lorakit_dataset::dataset::ProbeMode;
use lorakit_dataset::doctor::{check_with, CheckOptions};
use lorakit_dataset::fingerprint_cache::FingerprintCache;
use serde::Deserialize;

use crate::api::{error, path_error, resolve_folder};
use crate::AppState;

/// Longest side of a thumbnail.
const THUMB_SIDE: u32 = 256;
/// The extensions the dataset loader reads as images.
const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "bmp", "gif"];

/// The Datasets page's routes (mounted at `/api`).
pub fn routes() -> Router<AppState> {
    Router::new().route("/dataset", get(dataset)).route("/thumb", get(thumb)).route("/image", get(full_image))
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

async fn dataset(State(state): State<AppState>, Query(q): Query<DatasetQuery>) -> Response {
    let dir = match resolve_folder(&state, q.root, &q.path) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let full = q.full == Some(1);
    let checked = tokio::task::spawn_blocking(move || {
        let plan = plan_from_dirs(&dir, None, &OptionLayer::default()).map_err(|e| e.to_string())?;
        let options =
            CheckOptions { mode: if full { ProbeMode::Full } else { ProbeMode::Header }, ..CheckOptions::default() };
        Ok::<_, String>(check_with(&plan, &[dir], &options, &FingerprintCache::disabled(), &|_| {}))
    })
    .await;
    match checked {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{}: {e}", q.path)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `?root=N&path=REL`.
#[derive(Deserialize)]
struct ThumbQuery {
    root: usize,
    path: String,
}

async fn thumb(State(state): State<AppState>, Query(q): Query<ThumbQuery>) -> Response {
    let path = match state.roots().resolve(q.root, &q.path) {
        Ok(p) => p,
        Err(e) => return path_error(e),
    };
    let is_image = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
    if !path.is_file() || !is_image {
        return error(StatusCode::UNPROCESSABLE_ENTITY, format!("{}: not an image file", q.path));
    }
    let encoded = tokio::task::spawn_blocking(move || {
        let rgb = lorakit_dataset::preprocess::decode_upright_rgb(&path).map_err(|e| e.to_string())?;
        let small = image::DynamicImage::ImageRgb8(rgb).thumbnail(THUMB_SIDE, THUMB_SIDE);
        let mut png = Vec::new();
        small.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| e.to_string())?;
        Ok::<_, String>(png)
    })
    .await;
    match encoded {
        Ok(Ok(png)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "private, max-age=60")], png)
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{}: {e}", q.path)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn full_image(State(state): State<AppState>, Query(q): Query<ThumbQuery>) -> Response {
    let path = match state.roots().resolve(q.root, &q.path) {
        Ok(p) => p,
        Err(e) => return path_error(e),
    };
    let kind = match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => return error(StatusCode::UNPROCESSABLE_ENTITY, format!("{}: not a PNG, JPEG or WebP file", q.path)),
    };
    match tokio::task::spawn_blocking(move || lorakit_dataset::regular_file::read_regular(&path)).await {
        Ok(Ok(bytes)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "private, max-age=60")], bytes)
                .into_response()
        }
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{}: {e}", q.path)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
