//! Images addressed by opaque ids (`GET /api/thumb/{id}`, `GET /api/image/{id}`).
//!
//! A page never names an image file in an image address: the server hands out a random id with
//! each image it lists (the dataset report, a run's samples, a job's XY plot) and serves only the
//! files it handed ids out for. An `<img src>` that a page, an extension or a copied link makes up
//! cannot reach any other file, and addresses (which end up in history and logs) carry no paths.
//! Ids live as long as the server; a page from before a restart shows broken images until it is
//! reloaded.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path as FsPath;
use std::sync::Mutex;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::api::{error, path_error};
use crate::AppState;

/// Longest side of a thumbnail.
pub const THUMB_SIDE: u32 = 256;
/// Files a thumbnail is made of (what the dataset code decodes).
const THUMB_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "bmp", "gif"];
/// Files served as they are, with their content type.
const IMAGE_TYPES: [(&str, &str); 4] =
    [("png", "image/png"), ("jpg", "image/jpeg"), ("jpeg", "image/jpeg"), ("webp", "image/webp")];
/// Ids kept before the oldest are forgotten (pages listing them must be reloaded): bounds the
/// memory of a server left running over many large datasets.
const MAX_IDS: usize = 1_000_000;

/// The registry of handed-out image ids: id ↔ (root, path under it).
#[derive(Default)]
pub struct ImageIds {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<String, (usize, String)>,
    by_file: HashMap<(usize, String), String>,
}

impl ImageIds {
    /// The id of the image at `path` under root `root` (the same id every time it is asked for).
    pub fn id(&self, root: usize, path: &str) -> String {
        let mut registry = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = registry.by_file.get(&(root, path.to_string())) {
            return id.clone();
        }
        if registry.by_id.len() >= MAX_IDS {
            *registry = Registry::default();
        }
        // 128 random bits: not guessable, short enough for addresses.
        let id: String = crate::security::random_token()[..32].to_string();
        registry.by_id.insert(id.clone(), (root, path.to_string()));
        registry.by_file.insert((root, path.to_string()), id.clone());
        id
    }

    /// The (root, path) an id was handed out for.
    pub fn get(&self, id: &str) -> Option<(usize, String)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).by_id.get(id).cloned()
    }
}

/// The image routes (mounted at `/api`).
pub fn routes() -> Router<AppState> {
    Router::new().route("/thumb/{id}", get(thumb)).route("/image/{id}", get(full_image))
}

/// The existing file behind `id` and its path under its root (resolved under the root again: a
/// file replaced by a symlink out of the root since the id was handed out is refused).
pub(crate) fn resolve(state: &AppState, id: &str) -> Result<(std::path::PathBuf, String), Response> {
    let (root, path) = state
        .images()
        .get(id)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "no such image (the page is older than the server: reload it)"))?;
    let file = state.roots().resolve(root, &path).map_err(path_error)?;
    if !file.is_file() {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, format!("{path}: not a file")));
    }
    Ok((file, path))
}

fn extension(path: &FsPath) -> String {
    path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase()
}

/// The image upright (as training sees it), at most [`THUMB_SIDE`] a side, as PNG.
async fn thumb(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let (file, shown) = match resolve(&state, &id) {
        Ok(found) => found,
        Err(response) => return response,
    };
    if !THUMB_EXTENSIONS.contains(&extension(&file).as_str()) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, format!("{shown}: not an image file"));
    }
    let encoded = tokio::task::spawn_blocking(move || {
        let rgb = lorakit_dataset::preprocess::decode_upright_rgb(&file).map_err(|e| e.to_string())?;
        let small = image::DynamicImage::ImageRgb8(rgb).thumbnail(THUMB_SIDE, THUMB_SIDE);
        let mut png = Vec::new();
        small.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).map_err(|e| e.to_string())?;
        Ok::<_, String>(png)
    })
    .await;
    match encoded {
        Ok(Ok(png)) => image_response("image/png", png),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{shown}: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The image file as it is (sample images, XY plots).
async fn full_image(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let (file, shown) = match resolve(&state, &id) {
        Ok(found) => found,
        Err(response) => return response,
    };
    let ext = extension(&file);
    let Some(&(_, kind)) = IMAGE_TYPES.iter().find(|(e, _)| *e == ext) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, format!("{shown}: not a PNG, JPEG or WebP file"));
    };
    match tokio::task::spawn_blocking(move || lorakit_dataset::regular_file::read_regular(&file)).await {
        Ok(Ok(bytes)) => image_response(kind, bytes),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, format!("{shown}: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn image_response(kind: &'static str, bytes: Vec<u8>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "private, max-age=60")], bytes)
        .into_response()
}
