//! The Datasets page's API on the bundled example dataset (examples/dataset/img): the doctor's
//! report (subsets, repeats, findings per image) and server-made thumbnails, with paths kept
//! inside the root and only image files thumbnailed.

use std::path::{Path, PathBuf};

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
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a file is not a train folder");
}

#[tokio::test]
async fn thumbnails_are_small_upright_pngs_of_image_files_only() {
    let (status, kind, body) = get("/api/thumb?root=0&path=dataset/img/2_misc/wide.jpg").await;
    assert_eq!((status, kind.as_deref()), (StatusCode::OK, Some("image/png")));
    let thumb = image::load_from_memory(&body).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (256, 64), "1024×256 fitted into 256 px, aspect kept");
    for (path, expected) in [
        ("dataset/img/2_misc/wide.txt", StatusCode::UNPROCESSABLE_ENTITY),
        ("../Cargo.toml", StatusCode::FORBIDDEN),
        ("dataset/img/2_misc/none.png", StatusCode::NOT_FOUND),
    ] {
        let (status, _, _) = get(&format!("/api/thumb?root=0&path={path}")).await;
        assert_eq!(status, expected, "{path}");
    }
}
