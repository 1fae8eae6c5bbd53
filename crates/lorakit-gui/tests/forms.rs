//! The Train page's API: presets as form values, form values rendered to TOML and checked as
//! `lorakit train` reads them (unset values dropped, whole numbers for float keys made floats),
//! a kohya_ss GUI JSON imported into form values with its notes, and the dry run's plan — with
//! paths kept inside the roots. The plan runs on the bundled quick-start model and dataset.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use lorakit_gui::{router, AppState, Roots};
use tower::ServiceExt;

const TOKEN: &str = "forms-token-0123456789";
const PORT: u16 = 7998;

fn repo(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(rel)
}

fn app(root: &Path) -> axum::Router {
    router(AppState::new(Roots::new(&[root.to_path_buf()]).unwrap(), TOKEN.into(), PORT, vec![]).unwrap())
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: impl Into<Body>,
    json: bool,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, format!("localhost:{PORT}"))
        .header(header::COOKIE, format!("lorakit_{PORT}={TOKEN}"))
        .header(header::ORIGIN, format!("http://localhost:{PORT}"));
    if json {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let resp = app.clone().oneshot(req.body(body.into()).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes))))
}

#[tokio::test]
async fn presets_load_as_form_values_and_render_back_to_an_accepted_config() {
    let app = app(&repo("examples"));
    let (status, list) = call(&app, "GET", "/api/presets", Body::empty(), false).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"sd15-character") && names.contains(&"flux-16gb"), "{names:?}");
    for name in names {
        let (status, preset) = call(&app, "GET", &format!("/api/presets/{name}"), Body::empty(), false).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        // The form's values go back through render unchanged in meaning: lorakit train accepts them.
        let body = serde_json::json!({ "values": preset["values"] }).to_string();
        let (status, rendered) = call(&app, "POST", "/api/config/render", body, true).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(rendered["ok"], true, "{name}: {}", rendered["error"]);
    }
    let (status, _) = call(&app, "GET", "/api/presets/no-such-preset", Body::empty(), false).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn render_drops_unset_values_makes_floats_and_reports_what_train_refuses() {
    let app = app(&repo("examples"));
    let values = serde_json::json!({ "values": {
        "optimizer": { "learning_rate": 1, "unet_lr": null },
        "training": { "max_train_epochs": 3 },
    }});
    let (_, r) = call(&app, "POST", "/api/config/render", values.to_string(), true).await;
    assert_eq!(r["ok"], true, "{r}");
    let text = r["toml"].as_str().unwrap();
    assert!(text.contains("learning_rate = 1.0") && text.contains("max_train_epochs = 3"), "{text}");
    assert!(!text.contains("unet_lr"), "unset values are not written: {text}");
    let bad = serde_json::json!({ "values": { "training": { "max_train_epochs": -1 }, "nonsense": { "x": 1 } } });
    let (_, r) = call(&app, "POST", "/api/config/render", bad.to_string(), true).await;
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("nonsense"), "{r}");
}

#[tokio::test]
async fn a_kohya_gui_json_imports_into_form_values_with_its_notes() {
    let app = app(&repo("examples"));
    let json = std::fs::read(repo("tests/fixtures/kohya_ss/flux-character.json")).unwrap();
    let (status, imported) = call(&app, "POST", "/api/config/import", json, false).await;
    assert_eq!(status, StatusCode::OK, "{imported}");
    assert_eq!(imported["values"]["model"]["model_family"], "flux", "{imported}");
    assert!(imported["notes"].as_array().is_some());
    let (status, r) = call(&app, "POST", "/api/config/import", "this is not a config", false).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
}

#[tokio::test]
async fn the_plan_is_the_dry_run_and_paths_stay_inside_the_roots() {
    let app = app(&repo("examples"));
    let quickstart = std::fs::read_to_string(repo("examples/quickstart.toml")).unwrap();
    // As bundled, the quick start writes to ../output: outside this root.
    let (_, r) = call(&app, "POST", "/api/plan", quickstart.clone(), false).await;
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("folders.output_dir"), "{r}");
    let inside = quickstart.replace("output_dir = \"../output/quickstart\"", "output_dir = \"gui-test-output\"");
    let (status, r) = call(&app, "POST", "/api/plan", inside, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["steps"].as_u64().unwrap() > 0 && r["memory_gb"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["text"].as_str().unwrap().contains("steps in"), "{r}");
    assert!(!repo("examples/gui-test-output").exists(), "the plan writes nothing");
}

#[tokio::test]
async fn save_writes_an_accepted_config_under_a_root_and_says_how_to_run_it() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("configs")).unwrap();
    let app = app(root.path());
    let toml = "[training]\nmax_train_epochs = 3\n";
    let body = |name: &str, folder: &str, toml: &str, overwrite: bool| {
        serde_json::json!({ "root": 0, "folder": folder, "name": name, "toml": toml, "overwrite": overwrite })
            .to_string()
    };
    let (status, r) = call(&app, "POST", "/api/config/save", body("my run", "configs", toml, false), true).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let saved = root.path().canonicalize().unwrap().join("configs").join("my run.toml");
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), toml);
    assert_eq!(r["command"], format!("lorakit train '{}'", saved.display()), "quoted for the shell");
    // Not over an existing file unless asked; not a config lorakit train refuses; nowhere else.
    let (status, _) = call(&app, "POST", "/api/config/save", body("my run", "configs", toml, false), true).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = call(&app, "POST", "/api/config/save", body("my run.toml", "configs", toml, true), true).await;
    assert_eq!(status, StatusCode::OK);
    for (name, folder, text, expected) in [
        ("bad", "configs", "[training]\nmax_train_epochs = -1\n", StatusCode::UNPROCESSABLE_ENTITY),
        ("../escape", "configs", toml, StatusCode::UNPROCESSABLE_ENTITY),
        (".hidden", "configs", toml, StatusCode::UNPROCESSABLE_ENTITY),
        ("x", "..", toml, StatusCode::FORBIDDEN),
        ("x", "missing", toml, StatusCode::NOT_FOUND),
    ] {
        let (status, r) = call(&app, "POST", "/api/config/save", body(name, folder, text, false), true).await;
        assert_eq!(status, expected, "{name} in {folder}: {r}");
    }
    assert!(!root.path().join("escape.toml").exists());
}
