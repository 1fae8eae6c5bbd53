//! The pages: an HTML shell and plain ES modules, embedded in the binary (no CDN, no bundler,
//! no inline script — the CSP forbids it).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

/// (path, content type, body) of every embedded file.
const FILES: [(&str, &str, &str); 6] = [
    ("/", "text/html; charset=utf-8", include_str!("../assets/index.html")),
    ("/assets/app.js", "text/javascript; charset=utf-8", include_str!("../assets/app.js")),
    ("/assets/style.css", "text/css; charset=utf-8", include_str!("../assets/style.css")),
    // uPlot 1.6.32 (MIT), as published: see assets/vendor/README.md.
    (
        "/assets/vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/vendor/uPlot.iife.min.js"),
    ),
    ("/assets/vendor/uPlot.min.css", "text/css; charset=utf-8", include_str!("../assets/vendor/uPlot.min.css")),
    ("/assets/vendor/uPlot.LICENSE", "text/plain; charset=utf-8", include_str!("../assets/vendor/uPlot.LICENSE")),
];

/// The page and asset routes.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for (path, content_type, body) in FILES {
        router = router.route(path, get(move || async move { asset(content_type, body) }));
    }
    router
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}
