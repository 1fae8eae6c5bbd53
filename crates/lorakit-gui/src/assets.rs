//! The pages: an HTML shell and plain ES modules, embedded in the binary (no CDN, no bundler,
//! no inline script — the CSP forbids it).
//!
//! `assets/app.js` routes between the page modules under `assets/pages/` (one `.js` and one
//! `.css` per page); `assets/ui.js` holds what they share. Thai texts live beside them, one
//! dictionary per page under `assets/i18n/th/`, served merged as `/assets/i18n/th.json`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! asset {
    ($path:literal, $type:expr) => {
        (concat!("/assets/", $path), $type, include_str!(concat!("../assets/", $path)))
    };
}

/// (path, content type, body) of every embedded file.
pub const FILES: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("../assets/index.html")),
    asset!("app.js", JS),
    asset!("ui.js", JS),
    asset!("style.css", CSS),
    asset!("pages/files.js", JS),
    asset!("pages/files.css", CSS),
    asset!("pages/datasets.js", JS),
    asset!("pages/datasets.css", CSS),
    asset!("pages/autocaption.js", JS),
    asset!("pages/jobs.js", JS),
    asset!("pages/jobs.css", CSS),
    asset!("pages/run.js", JS),
    asset!("pages/run.css", CSS),
    asset!("pages/train.js", JS),
    asset!("pages/train.css", CSS),
    asset!("pages/tools.js", JS),
    asset!("pages/tools.css", CSS),
    asset!("pages/options.js", JS),
    asset!("pages/loras.js", JS),
    asset!("pages/loras.css", CSS),
    // uPlot 1.6.32 (MIT), as published: see assets/vendor/README.md.
    asset!("vendor/uPlot.iife.min.js", JS),
    asset!("vendor/uPlot.min.css", CSS),
    asset!("vendor/uPlot.LICENSE", "text/plain; charset=utf-8"),
];

/// The Thai dictionaries, one per page (English text → Thai).
pub const THAI: &[(&str, &str)] = &[
    ("common", include_str!("../assets/i18n/th/common.json")),
    ("files", include_str!("../assets/i18n/th/files.json")),
    ("datasets", include_str!("../assets/i18n/th/datasets.json")),
    ("autocaption", include_str!("../assets/i18n/th/autocaption.json")),
    ("jobs", include_str!("../assets/i18n/th/jobs.json")),
    ("run", include_str!("../assets/i18n/th/run.json")),
    ("train", include_str!("../assets/i18n/th/train.json")),
    ("tools", include_str!("../assets/i18n/th/tools.json")),
    ("options", include_str!("../assets/i18n/th/options.json")),
    ("loras", include_str!("../assets/i18n/th/loras.json")),
];

/// The page and asset routes.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for &(path, content_type, body) in FILES {
        router = router.route(path, get(move || async move { asset(content_type, body) }));
    }
    router.route("/assets/i18n/th.json", get(|| async { thai_response() }))
}

/// Every Thai dictionary merged into one object (a later page's entry wins on a clash).
pub fn thai_dictionary() -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut merged = serde_json::Map::new();
    for (page, text) in THAI {
        let entries: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| format!("assets/i18n/th/{page}.json: {e}"))?;
        merged.extend(entries);
    }
    Ok(merged)
}

fn thai_response() -> Response {
    match thai_dictionary() {
        Ok(merged) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")],
            serde_json::Value::Object(merged).to_string(),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The texts given to `t("…")` in the page modules (string literals only), with the file each
/// is in: what the Thai dictionary must cover.
pub fn translated_texts() -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    for &(path, content_type, body) in FILES {
        if content_type != JS || path.contains("/vendor/") {
            continue;
        }
        let bytes = body.as_bytes();
        let mut i = 0;
        while let Some(at) = body[i..].find("t(\"") {
            let start = i + at;
            i = start + 3;
            // `t(` itself, not the end of another name (`set(`, `split(`).
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || matches!(bytes[start - 1], b'_' | b'$' | b'.'))
            {
                continue;
            }
            let mut text = String::new();
            let mut chars = body[i..].char_indices();
            while let Some((j, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            text.push(match escaped {
                                'n' => '\n',
                                other => other,
                            });
                        }
                    }
                    '"' => {
                        i += j + 1;
                        break;
                    }
                    c => text.push(c),
                }
            }
            found.push((path, text));
        }
    }
    found
}
