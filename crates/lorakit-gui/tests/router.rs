//! The router without a browser (gui-peers.md §9, layer 1): the token and its cookie, Host and
//! Origin checks, method rules, paths that try to leave a root, security headers, and the
//! config schema covering every key.

use std::path::Path;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use lorakit_gui::{router, AppState, Roots};
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789";
const PORT: u16 = 7999;

fn app(root: &Path) -> axum::Router {
    let roots = Roots::new(&[root.to_path_buf()]).unwrap();
    router(AppState::new(roots, TOKEN.into(), PORT, vec!["studio.lan".into()]).unwrap())
}

fn cookie() -> String {
    format!("lorakit_{PORT}={TOKEN}")
}

/// A request with a loopback Host and, when `signed_in`, the cookie.
fn request(method: &str, uri: &str, signed_in: bool) -> axum::http::request::Builder {
    let b = Request::builder().method(method).uri(uri).header(header::HOST, format!("127.0.0.1:{PORT}"));
    if signed_in {
        b.header(header::COOKIE, cookie())
    } else {
        b
    }
}

async fn send(app: &axum::Router, req: Request<Body>) -> Response<Body> {
    app.clone().oneshot(req).await.unwrap()
}

async fn json(resp: Response<Body>) -> serde_json::Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
}

fn dataset_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("10_cat")).unwrap();
    std::fs::write(dir.path().join("10_cat").join("a.png"), b"not really a png").unwrap();
    std::fs::write(dir.path().join("10_cat").join("a.txt"), "<script>alert(1)</script>, cat").unwrap();
    dir
}

#[tokio::test]
async fn the_token_is_exchanged_for_an_http_only_strict_cookie() {
    let root = dataset_root();
    let app = app(root.path());
    // Nothing without the token: pages, API, assets.
    for uri in ["/", "/api/session", "/assets/app.js"] {
        let resp = send(&app, request("GET", uri, false).body(Body::empty()).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{uri}");
    }
    let wrong = send(&app, request("GET", "/?token=wrong-token-0123456789", false).body(Body::empty()).unwrap()).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    // ?token= → cookie and a redirect to the same address without the token.
    let uri = format!("/api/fs?root=0&token={TOKEN}&path=10_cat");
    let resp = send(&app, request("GET", &uri, false).body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[header::LOCATION], "/api/fs?root=0&path=10_cat");
    let set_cookie = resp.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set_cookie.starts_with(&cookie()), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    // A token in a POST's query is not exchanged (and the POST is refused).
    let post = request("POST", &format!("/api/config/check?token={TOKEN}"), false)
        .header(header::ORIGIN, format!("http://127.0.0.1:{PORT}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, post).await.status(), StatusCode::UNAUTHORIZED);
    // The cookie, or the header scripts use, opens everything.
    let resp = send(&app, request("GET", "/api/session", true).body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let with_header = request("GET", "/api/session", false)
        .header(header::AUTHORIZATION, format!("token {TOKEN}"))
        .body(Body::empty());
    assert_eq!(send(&app, with_header.unwrap()).await.status(), StatusCode::OK);
    // Another port's cookie (another lorakit on this machine) does not.
    let other_port = request("GET", "/api/session", false)
        .header(header::COOKIE, format!("lorakit_7000={TOKEN}"))
        .body(Body::empty());
    assert_eq!(send(&app, other_port.unwrap()).await.status(), StatusCode::UNAUTHORIZED);
    // Short or odd tokens are refused at start.
    let roots = Roots::new(&[root.path().to_path_buf()]).unwrap();
    for bad in ["short", "has spaces in the token!", "quote\"-0123456789abc"] {
        assert!(AppState::new(roots.clone(), bad.into(), PORT, vec![]).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn foreign_hosts_and_cross_site_posts_are_refused() {
    let root = dataset_root();
    let app = app(root.path());
    let with_host = |host: &str| {
        Request::get("/api/session")
            .header(header::HOST, host)
            .header(header::COOKIE, cookie())
            .body(Body::empty())
            .unwrap()
    };
    // DNS rebinding: the token does not help a page served under another name.
    for host in ["evil.example", "evil.example:7999", "127.0.0.1.evil.example", ""] {
        assert_eq!(send(&app, with_host(host)).await.status(), StatusCode::FORBIDDEN, "Host {host:?}");
    }
    for host in ["localhost:7999", "[::1]:7999", "studio.lan:7999", "LOCALHOST"] {
        assert_eq!(send(&app, with_host(host)).await.status(), StatusCode::OK, "Host {host:?}");
    }
    let post = |origin: Option<&str>| {
        let mut b = request("POST", "/api/config/check", true).header(header::CONTENT_TYPE, "application/json");
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        b.body(Body::from(r#"{"toml": "[training]\nmax_train_epochs = 2\n"}"#)).unwrap()
    };
    for origin in [Some("https://evil.example"), Some("null"), None, Some("http://127.0.0.1.evil.example")] {
        assert_eq!(send(&app, post(origin)).await.status(), StatusCode::FORBIDDEN, "Origin {origin:?}");
    }
    let ok = send(&app, post(Some(&format!("http://127.0.0.1:{PORT}")))).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(json(ok).await["ok"], true);
    // Same-origin fetches without Origin (Sec-Fetch-Site) pass too; a bad config comes back
    // with lorakit train's reason.
    let resp = send(
        &app,
        request("POST", "/api/config/check", true)
            .header(header::CONTENT_TYPE, "application/json")
            .header("sec-fetch-site", "same-origin")
            .body(Body::from(r#"{"toml": "[training]\nmax_train_epochs = -1\n"}"#))
            .unwrap(),
    )
    .await;
    let body = json(resp).await;
    assert_eq!(body["ok"], false, "{body}");
    assert!(body["error"].as_str().unwrap().contains("max_train_epochs"), "{body}");
    // Actions are POST only; reading is GET only.
    let get_action = send(&app, request("GET", "/api/config/check", true).body(Body::empty()).unwrap()).await;
    assert_eq!(get_action.status(), StatusCode::METHOD_NOT_ALLOWED);
    let post_read = request("POST", "/api/session", true).header(header::ORIGIN, format!("http://localhost:{PORT}"));
    assert_eq!(send(&app, post_read.body(Body::empty()).unwrap()).await.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn paths_cannot_leave_the_root() {
    let root = dataset_root();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "s").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
    let app = app(root.path());
    let status = |uri: String| {
        let app = app.clone();
        async move { send(&app, request("GET", &uri, true).body(Body::empty()).unwrap()).await.status() }
    };
    for (path, expected) in [
        ("..", StatusCode::FORBIDDEN),
        ("10_cat/../..", StatusCode::FORBIDDEN),
        ("%2e%2e", StatusCode::FORBIDDEN),
        ("%2E%2E%2Fetc", StatusCode::FORBIDDEN),
        ("/etc", StatusCode::FORBIDDEN),
        ("%2Fetc", StatusCode::FORBIDDEN),
        ("10_cat%00", StatusCode::FORBIDDEN),
        ("escape", StatusCode::FORBIDDEN),
        ("escape/secret.txt", StatusCode::FORBIDDEN),
        ("10_CAT", StatusCode::NOT_FOUND),
        ("missing", StatusCode::NOT_FOUND),
        ("10_cat", StatusCode::OK),
        ("", StatusCode::OK),
    ] {
        assert_eq!(status(format!("/api/fs?root=0&path={path}")).await, expected, "path {path:?}");
    }
    assert_eq!(status("/api/fs?root=1&path=".into()).await, StatusCode::NOT_FOUND, "no second root");
    // The listing marks the symlink that leaves the root and never follows it.
    let resp = send(&app, request("GET", "/api/fs?root=0&path=", true).body(Body::empty()).unwrap()).await;
    let body = json(resp).await;
    let entries = body["entries"].as_array().unwrap();
    assert_eq!((&entries[0]["name"], &entries[0]["kind"]), (&"10_cat".into(), &"dir".into()));
    #[cfg(unix)]
    assert!(entries.iter().any(|e| e["name"] == "escape" && e["kind"] == "outside"), "{body}");
    // File names come back as JSON data, never as markup.
    let resp = send(&app, request("GET", "/api/fs?root=0&path=10_cat", true).body(Body::empty()).unwrap()).await;
    let body = json(resp).await;
    let names: Vec<&str> = body["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a.png", "a.txt"]);
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let root = dataset_root();
    let app = app(root.path());
    for (uri, signed_in) in [("/", true), ("/assets/app.js", true), ("/api/session", false)] {
        let resp = send(&app, request("GET", uri, signed_in).body(Body::empty()).unwrap()).await;
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{uri}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{uri}");
        assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    // The shell has no inline script (the CSP would block it anyway).
    let resp = send(&app, request("GET", "/", true).body(Body::empty()).unwrap()).await;
    let html = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(html.contains(r#"<script type="module" src="/assets/app.js">"#));
    assert!(
        html.split("<script").skip(1).all(|tag| tag.trim_start().split('>').next().unwrap().contains("src=")),
        "{html}"
    );
}

#[test]
fn the_schema_documents_every_config_key() {
    let schema = lorakit_gui::api::config_schema();
    let keys: usize = lorakit_train::config::known_keys().iter().map(|(_, k)| k.len()).sum();
    assert_eq!(schema.len(), keys, "one field per config key");
    let undocumented: Vec<String> =
        schema.iter().filter(|f| f.doc.is_empty()).map(|f| format!("{}.{}", f.section, f.key)).collect();
    assert!(undocumented.is_empty(), "no documentation row: {undocumented:?}");
    let epochs = schema.iter().find(|f| f.key == "max_train_epochs").unwrap();
    assert_eq!((epochs.section.as_str(), epochs.kind), ("training", "integer"));
    assert_eq!(epochs.kohya, "`--max_train_epochs`");
    let swap = schema.iter().find(|f| f.key == "blocks_to_swap").unwrap();
    assert_eq!(swap.default, serde_json::Value::Null, "unset by default");
    let lr = schema.iter().find(|f| f.key == "learning_rate").unwrap();
    assert_eq!(lr.default, serde_json::json!(1e-4));
}

/// Every text a page passes to `t("…")` has a Thai entry, and every dictionary parses.
#[test]
fn every_translated_text_has_a_thai_entry() {
    let thai = lorakit_gui::assets::thai_dictionary().unwrap();
    let texts = lorakit_gui::assets::translated_texts();
    assert!(texts.len() > 20, "the scan found only {} texts", texts.len());
    let missing: Vec<String> = texts
        .iter()
        .filter(|(_, text)| !thai.contains_key(text))
        .map(|(file, text)| format!("{file}: {text:?}"))
        .collect();
    assert!(missing.is_empty(), "no Thai for {} texts:\n{}", missing.len(), missing.join("\n"));
}
