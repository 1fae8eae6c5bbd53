//! The natural-language caption editor's API: find/replace previews write nothing, apply writes
//! exactly the previewed files (a caption that changed or vanished since is reported, not
//! overwritten), undo restores byte for byte — also after a restart, since the history is kept
//! under the state folder — and one image's caption is saved only over what was read.

use std::path::Path;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use lorakit_gui::{router, AppState, Roots};
use serde_json::json;
use tower::ServiceExt;

const TOKEN: &str = "captions-token-0123456789";

fn app(root: &Path, state: Option<&Path>) -> axum::Router {
    let mut s = AppState::new(Roots::new(&[root.to_path_buf()]).unwrap(), TOKEN.into(), 7995, vec![]).unwrap();
    if let Some(dir) = state {
        s = s.with_state_dir(dir);
    }
    router(s)
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "127.0.0.1:7995")
        .header(header::COOKIE, format!("lorakit_7995={TOKEN}"))
        .header(header::ORIGIN, "http://127.0.0.1:7995");
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// A train folder with sentence captions (one with CRLF and no UTF-8 BOM games), a tag caption
/// and one that does not mention the word.
fn dataset(root: &Path) -> std::path::PathBuf {
    let sub = root.join("train").join("4_cat");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("a.txt"), "A photo of a cat sitting on a mat.\r\n").unwrap();
    std::fs::write(sub.join("b.txt"), "A Cat sleeps in the sun. The cat is orange.").unwrap();
    std::fs::write(sub.join("c.txt"), "A caterpillar on a leaf, seen from above.").unwrap();
    std::fs::write(sub.join("d.txt"), "cat, mat, sitting").unwrap();
    std::fs::write(sub.join("e.txt"), "A dog runs across a wide green field.").unwrap();
    sub
}

fn read(sub: &Path, name: &str) -> Vec<u8> {
    std::fs::read(sub.join(name)).unwrap()
}

fn request(extra: serde_json::Value) -> serde_json::Value {
    let mut body = json!({ "root": 0, "path": "train", "find": "cat", "replace": "kitten", "whole_word": true });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn find_and_replace_previews_applies_exactly_the_diff_and_undoes() {
    let root = tempfile::tempdir().unwrap();
    let sub = dataset(root.path());
    let before: Vec<Vec<u8>> = ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"].iter().map(|n| read(&sub, n)).collect();
    let app = app(root.path(), None);

    let (status, preview) = call(&app, "POST", "/api/captions/preview", Some(request(json!({})))).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    // Whole word, any case: a.txt and b.txt (twice); the caterpillar and the dog stay; the tag
    // caption is left to the tag editor.
    assert_eq!(preview["changed"], 2, "{preview}");
    assert_eq!(preview["matches"], 3, "{preview}");
    assert_eq!(preview["skipped_tags"], 1, "{preview}");
    assert_eq!(preview["unchanged"], 2, "{preview}");
    assert_eq!(preview["changes"][1]["after"], "A kitten sleeps in the sun. The kitten is orange.");
    let now: Vec<Vec<u8>> = ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"].iter().map(|n| read(&sub, n)).collect();
    assert_eq!(now, before, "a preview writes nothing");

    // Case-sensitive and not whole-word: other matches.
    let (_, p) = call(
        &app,
        "POST",
        "/api/captions/preview",
        Some(request(json!({ "whole_word": false, "case_sensitive": true }))),
    )
    .await;
    assert_eq!((p["changed"].as_u64(), p["matches"].as_u64()), (Some(3), Some(3)), "{p}");
    // Scope all: the tag caption too.
    let (_, p) = call(&app, "POST", "/api/captions/preview", Some(request(json!({ "scope": "all" })))).await;
    assert_eq!(p["changed"], 3, "{p}");

    let (status, applied) =
        call(&app, "POST", "/api/captions/apply", Some(request(json!({ "expect": preview["expect"] })))).await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    assert_eq!(applied["written"], 2, "{applied}");
    assert_eq!(applied["changed_since"], json!([]));
    assert_eq!(read(&sub, "a.txt"), b"A photo of a kitten sitting on a mat.\r\n", "the line ending is kept");
    assert_eq!(read(&sub, "b.txt"), b"A kitten sleeps in the sun. The kitten is orange.");
    for (i, name) in ["c.txt", "d.txt", "e.txt"].iter().enumerate() {
        assert_eq!(read(&sub, name), before[i + 2], "{name} is outside the diff");
    }

    let (status, next) = call(&app, "GET", "/api/tags/undo", None).await;
    assert_eq!((status, next["files"].as_u64()), (StatusCode::OK, Some(2)), "{next}");
    assert!(next["summary"].as_str().unwrap().contains("\"cat\""), "{next}");
    let (status, undone) = call(&app, "POST", "/api/tags/undo", Some(json!({}))).await;
    assert_eq!((status, undone["restored"].as_u64()), (StatusCode::OK, Some(2)), "{undone}");
    let now: Vec<Vec<u8>> = ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"].iter().map(|n| read(&sub, n)).collect();
    assert_eq!(now, before, "undo restores every caption byte for byte");
}

#[tokio::test]
async fn captions_changed_or_gone_since_the_preview_are_reported_not_written() {
    let root = tempfile::tempdir().unwrap();
    let sub = dataset(root.path());
    let app = app(root.path(), None);
    let (_, preview) = call(&app, "POST", "/api/captions/preview", Some(request(json!({ "whole_word": false })))).await;
    assert_eq!(preview["changed"], 3, "a, b and the caterpillar: {preview}");
    // After the preview: a.txt is edited by hand (still matching), b.txt is deleted, and e.txt
    // starts to match.
    std::fs::write(sub.join("a.txt"), "A cat, edited by hand, sits on the mat.").unwrap();
    std::fs::remove_file(sub.join("b.txt")).unwrap();
    std::fs::write(sub.join("e.txt"), "A cat runs across a wide green field.").unwrap();
    let (status, applied) = call(
        &app,
        "POST",
        "/api/captions/apply",
        Some(request(json!({ "whole_word": false, "expect": preview["expect"] }))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    assert_eq!(applied["written"], 1, "only the caterpillar is as previewed: {applied}");
    let reported: Vec<&str> =
        applied["changed_since"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(reported.len(), 3, "{reported:?}");
    assert!(reported.iter().any(|m| m.starts_with("train/4_cat/a.txt: changed since the preview")), "{reported:?}");
    assert!(reported.iter().any(|m| m.starts_with("train/4_cat/b.txt: no longer exists")), "{reported:?}");
    assert!(reported.iter().any(|m| m.starts_with("train/4_cat/e.txt: not in the preview")), "{reported:?}");
    assert_eq!(read(&sub, "a.txt"), b"A cat, edited by hand, sits on the mat.", "not overwritten");
    assert!(!sub.join("b.txt").exists(), "not recreated");
    assert_eq!(read(&sub, "e.txt"), b"A cat runs across a wide green field.");
    assert_eq!(read(&sub, "c.txt"), b"A kittenerpillar on a leaf, seen from above.");

    for (bad, expected) in [
        (request(json!({ "find": "" })), StatusCode::UNPROCESSABLE_ENTITY),
        (request(json!({ "scope": "most" })), StatusCode::UNPROCESSABLE_ENTITY),
        (request(json!({ "path": ".." })), StatusCode::FORBIDDEN),
        (request(json!({ "path": "train/4_cat/a.txt" })), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, body) = call(&app, "POST", "/api/captions/preview", Some(bad.clone())).await;
        assert_eq!(status, expected, "{bad}: {body}");
    }
}

#[tokio::test]
async fn the_undo_history_survives_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let sub = dataset(root.path());
    let (a, d) = (read(&sub, "a.txt"), read(&sub, "d.txt"));
    {
        let first = app(root.path(), Some(state.path()));
        let (_, preview) = call(&first, "POST", "/api/captions/preview", Some(request(json!({})))).await;
        let (_, applied) =
            call(&first, "POST", "/api/captions/apply", Some(request(json!({ "expect": preview["expect"] })))).await;
        assert_eq!(applied["written"], 2, "{applied}");
        // A tag edit after it: the same history.
        let edit = json!({ "root": 0, "path": "train", "op": "add_front", "tags": ["sks"] });
        let (status, tagged) = call(&first, "POST", "/api/tags/apply", Some(edit)).await;
        assert_eq!(status, StatusCode::OK, "{tagged}");
    }
    assert!(state.path().join("tag-undo").read_dir().unwrap().count() == 2, "one record per edit on disk");
    // A new server over the same state folder.
    let second = app(root.path(), Some(state.path()));
    let (status, undone) = call(&second, "POST", "/api/tags/undo", Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{undone}");
    assert_eq!(undone["undone"], "add_front sks");
    assert_eq!(read(&sub, "d.txt"), d);
    let (_, undone) = call(&second, "POST", "/api/tags/undo", Some(json!({}))).await;
    assert!(undone["undone"].as_str().unwrap().starts_with("replace \"cat\""), "{undone}");
    assert_eq!(read(&sub, "a.txt"), a, "byte for byte after the restart");
    let (status, _) = call(&second, "POST", "/api/tags/undo", Some(json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn one_caption_is_read_and_saved_only_over_what_was_read() {
    let root = tempfile::tempdir().unwrap();
    let sub = root.path().join("3_dog");
    std::fs::create_dir(&sub).unwrap();
    let png = |name: &str| image::RgbImage::new(4, 4).save(sub.join(name)).unwrap();
    png("one.png");
    png("two.png");
    std::fs::write(sub.join("one.txt"), "A dog.\n").unwrap();
    let app = app(root.path(), None);

    let (status, one) = call(&app, "GET", "/api/captions/one?root=0&image=3_dog/one.png", None).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(
        (one["file"].as_str(), one["text"].as_str(), one["exists"].as_bool()),
        (Some("3_dog/one.txt"), Some("A dog.\n"), Some(true))
    );
    let save =
        json!({ "root": 0, "image": "3_dog/one.png", "text": "A brown dog on a sofa.", "digest": one["digest"] });
    let (status, saved) = call(&app, "POST", "/api/captions/one", Some(save.clone())).await;
    assert_eq!((status, saved["written"].as_bool()), (StatusCode::OK, Some(true)), "{saved}");
    assert_eq!(std::fs::read_to_string(sub.join("one.txt")).unwrap(), "A brown dog on a sofa.");
    // The same save again carries the old digest: refused, the file kept.
    let (status, refused) = call(&app, "POST", "/api/captions/one", Some(save)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("changed since"), "{refused}");

    // An image without a caption: a new `<stem>.txt`, and undo removes it again.
    let (_, two) = call(&app, "GET", "/api/captions/one?root=0&image=3_dog/two.png", None).await;
    assert_eq!((two["exists"].as_bool(), two["digest"].is_null()), (Some(false), true), "{two}");
    let (status, _) = call(
        &app,
        "POST",
        "/api/captions/one",
        Some(json!({ "root": 0, "image": "3_dog/two.png", "text": "A dog.", "digest": null })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::fs::read_to_string(sub.join("two.txt")).unwrap(), "A dog.");
    let (_, undone) = call(&app, "POST", "/api/tags/undo", Some(json!({}))).await;
    assert_eq!(undone["restored"], 1, "{undone}");
    assert!(!sub.join("two.txt").exists());
    let (_, undone) = call(&app, "POST", "/api/tags/undo", Some(json!({}))).await;
    assert_eq!(std::fs::read_to_string(sub.join("one.txt")).unwrap(), "A dog.\n", "{undone}");

    for (uri, expected) in [
        ("/api/captions/one?root=0&image=3_dog/one.txt", StatusCode::UNPROCESSABLE_ENTITY),
        ("/api/captions/one?root=0&image=../x.png", StatusCode::FORBIDDEN),
        ("/api/captions/one?root=0&image=3_dog/none.png", StatusCode::NOT_FOUND),
    ] {
        let (status, body) = call(&app, "GET", uri, None).await;
        assert_eq!(status, expected, "{uri}: {body}");
    }
}
