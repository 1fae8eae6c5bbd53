//! The tag editor's API: a preview writes nothing and counts what will change, apply writes
//! atomically, undo puts back only what the edit wrote (a caption changed since is kept and
//! named), and bad edits and paths are refused.

use std::path::Path;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use lorakit_gui::{router, AppState, Roots};
use tower::ServiceExt;

const TOKEN: &str = "tags-token-0123456789";

async fn post(app: &axum::Router, uri: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    let req = Request::post(uri)
        .header(header::HOST, "127.0.0.1:7996")
        .header(header::COOKIE, format!("lorakit_7996={TOKEN}"))
        .header(header::ORIGIN, "http://127.0.0.1:7996")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join("10_cat").join(name)).unwrap()
}

#[tokio::test]
async fn preview_apply_and_undo_a_bulk_edit() {
    let root = tempfile::tempdir().unwrap();
    let sub = root.path().join("10_cat");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("a.txt"), "cat, sitting\n").unwrap();
    std::fs::write(sub.join("b.txt"), "cat, lying, cat").unwrap();
    std::fs::write(sub.join("c.txt"), "A photo of a cat sitting on a mat.").unwrap();
    let app =
        router(AppState::new(Roots::new(&[root.path().to_path_buf()]).unwrap(), TOKEN.into(), 7996, vec![]).unwrap());
    let edit = serde_json::json!({ "root": 0, "path": "", "op": "add_front", "tags": ["mytrigger"] });

    let (status, preview) = post(&app, "/api/tags/preview", edit.clone()).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    // Adding a trigger word is safe on sentences too (as `lorakit tags add`).
    assert_eq!((preview["changed"].as_u64(), preview["skipped_natural_language"].as_u64()), (Some(3), Some(0)));
    assert_eq!(preview["changes"][0]["before"], "cat, sitting");
    assert_eq!(preview["changes"][0]["after"], "mytrigger, cat, sitting");
    assert_eq!(read(root.path(), "a.txt"), "cat, sitting\n", "a preview writes nothing");

    // Tag-only edits leave sentences alone.
    let remove = serde_json::json!({ "root": 0, "path": "", "op": "remove", "tags": ["cat"] });
    let (_, p) = post(&app, "/api/tags/preview", remove).await;
    assert_eq!((p["changed"].as_u64(), p["skipped_natural_language"].as_u64()), (Some(2), Some(1)), "{p}");

    let (_, applied) = post(&app, "/api/tags/apply", edit.clone()).await;
    assert_eq!(applied["written"], 3, "{applied}");
    assert_eq!(read(root.path(), "a.txt"), "mytrigger, cat, sitting\n", "the rest of the file is kept");

    // b.txt changes again by hand: undo leaves it and says so; a.txt goes back byte for byte.
    std::fs::write(sub.join("b.txt"), "edited by hand").unwrap();
    let (status, undone) = post(&app, "/api/tags/undo", serde_json::json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(undone["restored"], 2, "{undone}");
    assert!(undone["kept"][0].as_str().unwrap().contains("changed since the edit"), "{undone}");
    assert_eq!(read(root.path(), "a.txt"), "cat, sitting\n");
    assert_eq!(read(root.path(), "b.txt"), "edited by hand");
    assert_eq!(read(root.path(), "c.txt"), "A photo of a cat sitting on a mat.");
    let (status, _) = post(&app, "/api/tags/undo", serde_json::json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing left to undo");

    for (bad, expected) in [
        (serde_json::json!({ "root": 0, "path": "", "op": "explode" }), StatusCode::UNPROCESSABLE_ENTITY),
        (serde_json::json!({ "root": 0, "path": "", "op": "remove", "tags": [] }), StatusCode::UNPROCESSABLE_ENTITY),
        (serde_json::json!({ "root": 0, "path": "..", "op": "dedupe" }), StatusCode::FORBIDDEN),
        (serde_json::json!({ "root": 3, "path": "", "op": "dedupe" }), StatusCode::NOT_FOUND),
    ] {
        let (status, body) = post(&app, "/api/tags/apply", bad.clone()).await;
        assert_eq!(status, expected, "{bad}: {body}");
    }
}
