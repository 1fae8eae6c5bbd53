//! The Datasets page's API on the bundled example dataset (examples/dataset/img): the doctor's
//! report (subsets, repeats, findings per image) and server-made thumbnails, with paths kept
//! inside the root and only image files thumbnailed.

use std::path::{Path, PathBuf};

use serde_json::json;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use lorakit_gui::{router, AppState, Roots};
use tower::ServiceExt;

const TOKEN: &str = "datasets-token-0123456789";

fn repo(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(rel)
}

async fn get(uri: &str) -> (StatusCode, Option<String>, Vec<u8>) {
    let app = router(AppState::new(Roots::new(&[repo("examples")]).unwrap(), TOKEN.into(), 7997, vec![]).unwrap());
    let req = Request::get(uri)
        .header(header::HOST, "127.0.0.1:7997")
        .header(header::COOKIE, format!("lorakit_7997={TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let kind = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
    (status, kind, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

#[tokio::test]
async fn the_doctor_reports_the_example_dataset() {
    let (status, _, body) = get("/api/dataset?root=0&path=dataset/img").await;
    assert_eq!(status, StatusCode::OK);
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let subsets: Vec<(&str, u64)> = report["datasets"][0]["subsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["dir"].as_str().unwrap(), s["num_repeats"].as_u64().unwrap()))
        .collect();
    assert!(subsets.iter().any(|(d, r)| d.ends_with("2_misc") && *r == 2), "{subsets:?}");
    assert!(subsets.iter().any(|(d, r)| d.ends_with("8_chessboard") && *r == 8), "{subsets:?}");
    let images = report["datasets"][0]["images"].as_array().unwrap();
    assert_eq!(images.len(), report["totals"]["images"].as_u64().unwrap() as usize);
    assert!(images.iter().any(|i| i["warnings"].as_array().unwrap().iter().any(|w| w["code"] == "missing_caption")));
    let (status, _, _) = get("/api/dataset?root=0&path=..").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = get("/api/dataset?root=0&path=quickstart.toml").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a training config is not a dataset TOML");
    let (status, _, _) = get("/api/dataset?root=0&path=dataset/README.md").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a file is not a train folder");
    // Every image carries its address for thumbnails, captions and the as-trained view.
    assert!(images.iter().all(|i| i["root"] == 0 && i["file"].as_str().unwrap().starts_with("dataset/img/")));
}

#[tokio::test]
async fn thumbnails_are_small_upright_pngs_addressed_by_the_reports_ids() {
    let state = AppState::new(Roots::new(&[repo("examples")]).unwrap(), TOKEN.into(), 7997, vec![]).unwrap();
    let app = router(state.clone());
    let (_, body) = send(&app, "GET", "/api/dataset?root=0&path=dataset/img", None).await;
    let report = json_of(&body);
    let images = report["datasets"][0]["images"].as_array().unwrap();
    let wide = images.iter().find(|i| i["file"] == "dataset/img/2_misc/wide.jpg").unwrap();
    let id = wide["id"].as_str().unwrap();
    assert!(id.len() >= 32 && !id.contains("wide"), "an opaque id, not a path: {id}");
    let (status, body) = send(&app, "GET", &format!("/api/thumb/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let thumb = image::load_from_memory(&body).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (256, 64), "1024×256 fitted into 256 px, aspect kept");
    // Every image of the report has its own id, the same one each time it is listed.
    let ids: std::collections::BTreeSet<&str> = images.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), images.len());
    let (_, again) = send(&app, "GET", "/api/dataset?root=0&path=dataset/img", None).await;
    assert!(json_of(&again)["datasets"][0]["images"].as_array().unwrap().iter().any(|i| i["id"] == id));
    // A made-up id, and a path in place of an id, reach nothing.
    for uri in ["/api/thumb/0123456789abcdef0123456789abcdef", "/api/thumb/dataset%2Fimg%2F2_misc%2Fwide.jpg"] {
        let (status, _) = send(&app, "GET", uri, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
    let (status, _) = send(&app, "GET", "/api/thumb?root=0&path=dataset/img/2_misc/wide.jpg", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the path-addressed route is gone");
    // Only image files: an id handed out for a caption file is refused; one whose file has gone
    // says so.
    let caption = state.images().id(0, "dataset/img/2_misc/wide.txt");
    let (status, _) = send(&app, "GET", &format!("/api/thumb/{caption}"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let gone = state.images().id(0, "dataset/img/2_misc/none.png");
    let (status, _) = send(&app, "GET", &format!("/api/image/{gone}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn send(app: &axum::Router, method: &str, uri: &str, body: Option<serde_json::Value>) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "127.0.0.1:7997")
        .header(header::COOKIE, format!("lorakit_7997={TOKEN}"))
        .header(header::ORIGIN, "http://127.0.0.1:7997");
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes().to_vec())
}

fn json_of(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null)
}

fn app_over(roots: &[PathBuf]) -> axum::Router {
    router(AppState::new(Roots::new(roots).unwrap(), TOKEN.into(), 7997, vec![]).unwrap())
}

/// A train folder `train/` with `5_chk` (the example chessboards, 5 images) and `2_misc`.
fn train_folder(root: &Path) {
    let chk = root.join("train").join("5_chk");
    std::fs::create_dir_all(&chk).unwrap();
    for entry in std::fs::read_dir(repo("examples/dataset/img/8_chessboard")).unwrap().flatten() {
        std::fs::copy(entry.path(), chk.join(entry.file_name())).unwrap();
    }
    let misc = root.join("train").join("2_misc");
    std::fs::create_dir_all(&misc).unwrap();
    image::RgbImage::new(64, 64).save(misc.join("a.png")).unwrap();
}

#[tokio::test]
async fn repeats_change_by_renaming_the_subset_after_a_preview() {
    let root = tempfile::tempdir().unwrap();
    train_folder(root.path());
    let app = app_over(&[root.path().to_path_buf()]);
    let images = std::fs::read_dir(root.path().join("train/5_chk"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "jpg"))
        .count() as u64;
    let change = json!({ "root": 0, "path": "train/5_chk", "repeats": 10, "dry_run": true });
    let (status, body) = send(&app, "POST", "/api/dataset/repeats", Some(change.clone())).await;
    let preview = json_of(&body);
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!((preview["from"].as_str(), preview["to"].as_str()), (Some("5_chk"), Some("10_chk")));
    assert_eq!(preview["path"], "train/10_chk");
    // The loader's count: 5 repeats × the chessboards + 2 × one image, then 10 ×.
    assert_eq!(preview["samples_before"].as_u64(), Some(5 * images + 2), "{preview}");
    assert_eq!(preview["samples_after"].as_u64(), Some(10 * images + 2), "{preview}");
    assert_eq!(preview["renamed"], false);
    assert!(root.path().join("train/5_chk").is_dir(), "a preview renames nothing");

    let mut apply = change.clone();
    apply["dry_run"] = false.into();
    let (status, body) = send(&app, "POST", "/api/dataset/repeats", Some(apply.clone())).await;
    assert_eq!(status, StatusCode::OK, "{}", json_of(&body));
    assert_eq!(json_of(&body)["renamed"], true);
    assert!(!root.path().join("train/5_chk").exists() && root.path().join("train/10_chk/left01.jpg").is_file());
    // The report sees the new repeats.
    let (_, body) = send(&app, "GET", "/api/dataset?root=0&path=train", None).await;
    assert_eq!(json_of(&body)["totals"]["samples_per_epoch"].as_u64(), Some(10 * images + 2));

    std::fs::create_dir(root.path().join("train/3_chk")).unwrap();
    std::fs::create_dir(root.path().join("train/plain")).unwrap();
    for (body, expected) in [
        (json!({ "root": 0, "path": "train/10_chk", "repeats": 3 }), StatusCode::CONFLICT),
        (json!({ "root": 0, "path": "train/plain", "repeats": 3 }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "root": 0, "path": "train/10_chk", "repeats": 0 }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "root": 0, "path": "train/10_chk", "repeats": 10 }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "root": 0, "path": "", "repeats": 3 }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "root": 0, "path": "train/5_chk", "repeats": 3 }), StatusCode::NOT_FOUND),
        (json!({ "root": 0, "path": "../x/5_chk", "repeats": 3 }), StatusCode::FORBIDDEN),
    ] {
        let (status, answer) = send(&app, "POST", "/api/dataset/repeats", Some(body.clone())).await;
        assert_eq!(status, expected, "{body}: {}", json_of(&answer));
    }
    assert!(root.path().join("train/10_chk").is_dir() && root.path().join("train/3_chk").is_dir(), "nothing renamed");
    let (status, _) = send(&app, "GET", "/api/dataset/repeats", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "an action is a POST");
}

#[tokio::test]
async fn a_dataset_toml_is_read_when_its_image_dirs_are_inside_the_roots() {
    let app = app_over(&[repo("examples")]);
    let (status, body) = send(&app, "GET", "/api/dataset?root=0&path=dataset/dataset.toml", None).await;
    let report = json_of(&body);
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["source"], "toml");
    assert_eq!(report["datasets"][0]["batch_size"], 2);
    let images = report["datasets"][0]["images"].as_array().unwrap();
    let in_reg = |i: &serde_json::Value| i["file"].as_str().unwrap().starts_with("dataset/reg/1_texture/");
    assert!(images.iter().any(in_reg), "the regularisation subset's images too");
    assert!(
        images.iter().all(|i| i["root"] == 0 && repo("examples").join(i["file"].as_str().unwrap()).is_file()),
        "{images:?}"
    );
    // How training sees one of its images follows the TOML's subset (its bucket settings).
    let row = images.iter().find(|i| i["file"] == "dataset/img/2_misc/wide.jpg").unwrap();
    let uri = format!("/api/dataset/as-trained?root=0&path=dataset/dataset.toml&image={}", row["id"].as_str().unwrap());
    let (status, body) = send(&app, "GET", &uri, None).await;
    let seen = json_of(&body);
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!((seen["bucket"].clone(), seen["resized"].clone()), (row["bucket"].clone(), row["resized"].clone()));
    assert_eq!(seen["subset"], "dataset/img/2_misc");

    // A TOML under a root whose image_dir lies outside every root is refused, naming the
    // image_dir; one whose image_dir does not exist says so.
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(outside.path().join("4_x")).unwrap();
    let text = format!(
        "[[datasets]]\n[[datasets.subsets]]\nimage_dir = {:?}\n",
        outside.path().join("4_x").display().to_string()
    );
    std::fs::write(root.path().join("outside.toml"), text).unwrap();
    std::fs::write(
        root.path().join("missing.toml"),
        "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"nowhere/1_x\"\n",
    )
    .unwrap();
    let app = app_over(&[root.path().to_path_buf()]);
    let (status, body) = send(&app, "GET", "/api/dataset?root=0&path=outside.toml", None).await;
    let message = json_of(&body)["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    assert!(message.contains("4_x") && message.contains("not inside the roots"), "{message}");
    let (status, body) = send(&app, "GET", "/api/dataset?root=0&path=missing.toml", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{}", json_of(&body));
    assert!(json_of(&body)["error"].as_str().unwrap().contains("nowhere/1_x"));
}

#[tokio::test]
async fn how_training_sees_one_image() {
    let root = tempfile::tempdir().unwrap();
    let sub = root.path().join("train").join("3_x");
    std::fs::create_dir_all(&sub).unwrap();
    // 768×512 (3:2): at 512 with buckets the nearest bucket is 640×384 (5:3 beats 576×448's
    // 9:7); the width is scaled to 640, so the height to 426.67 → 427, and the centre crop cuts
    // (427 − 384) / 2 = 21 rows off the top.
    let wide = image::RgbImage::from_fn(768, 512, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 7]));
    wide.save(sub.join("wide.png")).unwrap();
    // 512×512 is a bucket itself: nothing is resized or cropped.
    let square = image::RgbImage::from_fn(512, 512, |x, y| image::Rgb([(x % 256) as u8, (y / 2) as u8, (x ^ y) as u8]));
    square.save(sub.join("square.png")).unwrap();
    let state = AppState::new(Roots::new(&[root.path().to_path_buf()]).unwrap(), TOKEN.into(), 7997, vec![]).unwrap();
    let app = router(state.clone());
    // Images are named by the ids the report hands out.
    let id = |file: &str| state.images().id(0, file);
    let query = |img: &str| format!("root=0&path=train&image={}", id(&format!("train/3_x/{img}")));

    let (status, body) = send(&app, "GET", &format!("/api/dataset/as-trained?{}", query("wide.png")), None).await;
    let seen = json_of(&body);
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["original"], json!([768, 512]));
    assert_eq!(seen["bucket"], json!([640, 384]));
    assert_eq!(seen["resized"], json!([640, 427]));
    assert_eq!(seen["crop"], json!([0, 21]));
    assert_eq!(seen["trim"], json!([0, 43]));
    assert_eq!(seen["interpolation"], "area", "shrinking picks area");
    assert_eq!((seen["flip_aug"].as_bool(), seen["subset"].as_str()), (Some(false), Some("train/3_x")));
    // The doctor's report says the same for this image, under the same id.
    let (_, body) = send(&app, "GET", "/api/dataset?root=0&path=train", None).await;
    let report = json_of(&body);
    assert!(report["datasets"][0]["images"].as_array().unwrap().iter().any(|i| i["id"] == id("train/3_x/wide.png")));
    let row = report["datasets"][0]["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["file"] == "train/3_x/wide.png")
        .unwrap()
        .clone();
    assert_eq!((row["bucket"].clone(), row["resized"].clone()), (seen["bucket"].clone(), seen["resized"].clone()));

    let png = |body: &[u8]| image::load_from_memory(body).unwrap().to_rgb8();
    let (status, body) = send(&app, "GET", &format!("/api/dataset/as-trained.png?{}", query("wide.png")), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(png(&body).dimensions(), (640, 384), "the sample is the bucket's size");

    let (_, body) = send(&app, "GET", &format!("/api/dataset/as-trained?{}", query("square.png")), None).await;
    let seen = json_of(&body);
    assert_eq!(
        (seen["bucket"].clone(), seen["crop"].clone(), seen["interpolation"].clone()),
        (json!([512, 512]), json!([0, 0]), json!("none"))
    );
    let (_, body) = send(&app, "GET", &format!("/api/dataset/as-trained.png?{}", query("square.png")), None).await;
    assert_eq!(png(&body), square, "nothing to resize or crop: the pixels themselves");
    let (_, body) =
        send(&app, "GET", &format!("/api/dataset/as-trained.png?{}&flip=1", query("square.png")), None).await;
    assert_eq!(png(&body), image::imageops::flip_horizontal(&square), "flipped as flip_aug flips");

    std::fs::write(root.path().join("loose.png"), std::fs::read(sub.join("square.png")).unwrap()).unwrap();
    for (q, expected) in [
        (format!("root=0&path=train&image={}", id("loose.png")), StatusCode::UNPROCESSABLE_ENTITY),
        (format!("root=0&path=train&image={}", id("../x.png")), StatusCode::FORBIDDEN),
        ("root=0&path=train&image=loose.png".to_string(), StatusCode::NOT_FOUND),
        (format!("root=0&path=nope&image={}", id("loose.png")), StatusCode::NOT_FOUND),
        (query("none.png"), StatusCode::NOT_FOUND),
    ] {
        let (status, body) = send(&app, "GET", &format!("/api/dataset/as-trained?{q}"), None).await;
        assert_eq!(status, expected, "{q}: {}", json_of(&body));
    }
}
