//! The API captioner against an in-process mock OpenAI server on 127.0.0.1: the request format
//! (path, auth, JSON shape, the image as an upright downscaled JPEG data URL), retries with
//! `Retry-After`, 5xx, timeouts, garbage answers, and errors that stop the run.

use crate::mock_openai;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use lorakit_caption::api::{
    caption_all, ApiKey, ApiOptions, ClientOptions, Report, RequestOptions, Template, TokensField,
};
use lorakit_caption::output::{Existing, Outcome, Style, WriteOptions};
use lorakit_caption::targets::find_targets;
use mock_openai::{MockServer, Response};

const KEY: &str = "sk-test-ZQ7xK9distinctive";

/// Writes a `w`×`h` image: left half red, right half blue.
fn two_tone(path: &Path, w: u32, h: u32) {
    let img =
        image::RgbImage::from_fn(
            w,
            h,
            |x, _| if x < w / 2 { image::Rgb([220, 20, 20]) } else { image::Rgb([20, 20, 220]) },
        );
    img.save(path).unwrap();
}

/// A JPEG `w`×`h` (as stored) with an EXIF orientation 6 (shown rotated 90° clockwise).
fn rotated_jpeg(path: &Path, w: u32, h: u32) {
    let img =
        image::RgbImage::from_fn(
            w,
            h,
            |x, _| if x < w / 2 { image::Rgb([220, 20, 20]) } else { image::Rgb([20, 20, 220]) },
        );
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95).encode_image(&img).unwrap();
    let mut tiff = b"II*\0\x08\0\0\0\x01\0".to_vec();
    tiff.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
    let payload = [b"Exif\0\0".as_slice(), &tiff].concat();
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    std::fs::write(path, out).unwrap();
}

fn options(server: &MockServer, prompt: &str) -> ApiOptions {
    ApiOptions {
        client: ClientOptions {
            url: lorakit_caption::api::endpoint(&server.base).unwrap(),
            key: None,
            timeout: Duration::from_secs(10),
            retries: 2,
            backoff: Duration::from_millis(10),
        },
        request: RequestOptions { model: "joycaption".into(), ..Default::default() },
        prompt: Template::parse(prompt).unwrap(),
        max_side: 1024,
        concurrency: 3,
        tags_extension: None,
    }
}

fn write_options() -> WriteOptions {
    WriteOptions { existing: Existing::Skip, trigger: None, style: Style::Text, dry_run: false }
}

fn run(dir: &Path, options: &ApiOptions, write: &WriteOptions) -> Report {
    let targets = find_targets(dir, true, ".txt").unwrap();
    caption_all(&targets.targets, options, write, |_| {})
}

fn caption(path: PathBuf) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn failure<'a>(report: &'a Report, name: &str) -> &'a str {
    let found = report.summary.failed.iter().find(|(p, _)| p.file_name().unwrap() == name);
    &found.unwrap_or_else(|| panic!("{name} did not fail: {report:?}")).1
}

#[test]
fn requests_carry_the_prompt_and_an_upright_downscaled_jpeg_and_captions_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("10_my_char");
    std::fs::create_dir(&sub).unwrap();
    rotated_jpeg(&sub.join("photo.jpg"), 300, 200);
    two_tone(&sub.join("wide.png"), 400, 100);
    std::fs::write(sub.join("wide.tags"), "1girl, red hair\n").unwrap();
    let server = MockServer::start(|r, _| Response::caption(&format!("  \"A caption of {}.\"\n", r.prompt())));
    let mut opts = options(&server, "{trigger}|{name}|{folder}|{tags}");
    opts.client.key = ApiKey::new(KEY.into());
    opts.request = RequestOptions {
        model: "joycaption".into(),
        system: Some("You are a helpful image captioner.".into()),
        max_tokens: Some(300),
        tokens_field: TokensField::MaxCompletionTokens,
        temperature: Some(0.5),
        detail: Some("low".into()),
    };
    opts.max_side = 150;
    opts.tags_extension = Some("tags".into());
    let write = WriteOptions { trigger: Some("lkchar".into()), ..write_options() };
    let mut events = Vec::new();
    let targets = find_targets(dir.path(), true, ".txt").unwrap();
    let report = caption_all(&targets.targets, &opts, &write, |e| events.push((e.done, e.total, e.usage)));

    assert_eq!(report.summary.written, 2, "{report:?}");
    assert!(report.stopped.is_none() && report.not_done.is_empty());
    assert_eq!(report.usage.total, 220);
    assert_eq!(events.len(), 2);
    assert_eq!(caption(sub.join("photo.txt")), "lkchar, A caption of lkchar|photo|my_char|.\n");
    assert_eq!(caption(sub.join("wide.txt")), "lkchar, A caption of lkchar|wide|my_char|1girl, red hair.\n");

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/chat/completions"));
        assert_eq!(r.header("authorization"), Some(format!("Bearer {KEY}").as_str()));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["model"], "joycaption");
        assert_eq!(body["max_completion_tokens"], 300);
        assert!(body.get("max_tokens").is_none());
        assert_eq!(body["temperature"], 0.5);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0], serde_json::json!({"role": "system", "content": "You are a helpful image captioner."}));
        assert_eq!(messages[1]["role"], "user");
        let content = messages[1]["content"].as_array().unwrap();
        assert_eq!(content[0]["type"], "text");
        assert_eq!(content[1]["type"], "image_url");
        assert_eq!(content[1]["image_url"]["detail"], "low");
        let url = content[1]["image_url"]["url"].as_str().unwrap();
        let b64 = url.strip_prefix("data:image/jpeg;base64,").expect("a JPEG data URL");
        let jpeg = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        assert!(!jpeg.windows(6).any(|w| w == b"Exif\0\0"), "no EXIF is sent");
        let img = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg).unwrap().to_rgb8();
        if content[0]["text"].as_str().unwrap().contains("|photo|") {
            // Stored 300×200 with orientation 6: upright 200×300, long side 150 → 100×150, and
            // the stored left (red) half is on top.
            assert_eq!(img.dimensions(), (100, 150));
            let (top, bottom) = (img.get_pixel(50, 20).0, img.get_pixel(50, 130).0);
            assert!(top[0] > 150 && top[2] < 100, "top is red: {top:?}");
            assert!(bottom[2] > 150 && bottom[0] < 100, "bottom is blue: {bottom:?}");
        } else {
            assert_eq!(img.dimensions(), (150, 38));
        }
    }
}

#[test]
fn without_a_key_no_authorization_is_sent_and_defaults_stay_out_of_the_body() {
    let dir = tempfile::tempdir().unwrap();
    two_tone(&dir.path().join("a.png"), 64, 64);
    let server = MockServer::start(|_, _| Response::caption("A cat."));
    let report = run(dir.path(), &options(&server, "Describe."), &write_options());
    assert_eq!(report.summary.written, 1);
    let r = &server.requests()[0];
    assert_eq!(r.header("authorization"), None);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["messages", "model"], "no temperature, token limit or detail unless asked");
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
    assert!(body["messages"][0]["content"][1]["image_url"].get("detail").is_none());
    assert_eq!(caption(dir.path().join("a.txt")), "A cat.\n");
}

#[test]
fn a_429_is_retried_after_the_time_retry_after_asks() {
    let dir = tempfile::tempdir().unwrap();
    two_tone(&dir.path().join("a.png"), 32, 32);
    let server = MockServer::start(|_, n| {
        if n == 0 {
            Response::raw(429, r#"{"error":{"message":"slow down"}}"#).with_header("Retry-After", "1")
        } else {
            Response::caption("A cat.")
        }
    });
    let start = Instant::now();
    let report = run(dir.path(), &options(&server, "Describe."), &write_options());
    assert_eq!(report.summary.written, 1, "{report:?}");
    assert_eq!(server.requests().len(), 2);
    assert!(start.elapsed() >= Duration::from_secs(1), "Retry-After: 1 was not waited for");
}

#[test]
fn server_errors_are_retried_then_fail_only_their_image() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["flaky", "broken", "fine"] {
        two_tone(&dir.path().join(format!("{name}.png")), 32, 32);
    }
    let flaky_tries = std::sync::atomic::AtomicUsize::new(0);
    let server = MockServer::start(move |r, _| match r.prompt().as_str() {
        "flaky" if flaky_tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 => {
            Response::raw(503, "overloaded")
        }
        "broken" => Response::raw(500, r#"{"error":{"message":"CUDA out of memory"}}"#),
        name => Response::caption(&format!("A {name} image.")),
    });
    let report = run(dir.path(), &options(&server, "{name}"), &write_options());
    assert_eq!(report.summary.written, 2, "{report:?}");
    assert_eq!(caption(dir.path().join("flaky.txt")), "A flaky image.\n");
    assert_eq!(caption(dir.path().join("fine.txt")), "A fine image.\n");
    let why = failure(&report, "broken.png");
    assert!(why.contains("HTTP 500: CUDA out of memory") && why.contains("3 tries"), "{why}");
    assert!(!dir.path().join("broken.txt").exists());
    let tries = |name: &str| server.requests().iter().filter(|r| r.prompt() == name).count();
    assert_eq!((tries("flaky"), tries("broken"), tries("fine")), (3, 3, 1));
}

#[test]
fn garbage_answers_fail_their_image_with_the_reason_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["html", "nochoices", "empty", "cut", "refused", "ok"] {
        two_tone(&dir.path().join(format!("{name}.png")), 32, 32);
    }
    let server = MockServer::start(|r, _| match r.prompt().as_str() {
        "html" => Response::raw(200, "<html><body>Bad gateway</body></html>"),
        "nochoices" => Response::raw(200, r#"{"choices":[]}"#),
        "empty" => Response::caption("   "),
        "cut" => Response::raw(200, r#"{"choices":[{"message":{"content":"A ca"},"finish_reason":"length"}]}"#),
        "refused" => Response::raw(400, r#"{"error":{"message":"Invalid image","type":"invalid_request_error"}}"#),
        _ => Response::caption("Caption: A fine image."),
    });
    let report = run(dir.path(), &options(&server, "{name}"), &write_options());
    assert_eq!(report.summary.written, 1, "{report:?}");
    assert_eq!(caption(dir.path().join("ok.txt")), "A fine image.\n");
    assert!(failure(&report, "html.png").contains("not JSON"));
    assert!(failure(&report, "html.png").contains("Bad gateway"));
    assert!(failure(&report, "nochoices.png").contains("no choices"));
    assert!(failure(&report, "empty.png").contains("no caption") || failure(&report, "empty.png").contains("no text"));
    assert!(failure(&report, "cut.png").contains("--max-tokens"));
    assert!(failure(&report, "refused.png").contains("HTTP 400: Invalid image"));
    // A 400 is not retried; garbage 200s are not retried either (the server answered).
    assert_eq!(server.requests().iter().filter(|r| r.prompt() == "refused").count(), 1);
    assert!(report.stopped.is_none());
}

#[test]
fn a_slow_answer_times_out_and_is_retried_and_fails_only_its_image() {
    let dir = tempfile::tempdir().unwrap();
    two_tone(&dir.path().join("slow.png"), 32, 32);
    two_tone(&dir.path().join("quick.png"), 32, 32);
    let server = MockServer::start(|r, _| {
        let answer = Response::caption("A picture.");
        if r.prompt() == "slow" {
            answer.after(Duration::from_secs(3))
        } else {
            answer
        }
    });
    let mut opts = options(&server, "{name}");
    opts.client.timeout = Duration::from_millis(400);
    opts.client.retries = 1;
    let start = Instant::now();
    let report = run(dir.path(), &opts, &write_options());
    assert!(start.elapsed() < Duration::from_secs(3), "the timeout did not cut the request");
    assert_eq!(report.summary.written, 1, "{report:?}");
    let why = failure(&report, "slow.png");
    assert!(why.contains("no answer within 0.4s") && why.contains("2 tries"), "{why}");
    assert_eq!(server.requests().iter().filter(|r| r.prompt() == "slow").count(), 2);
}

#[test]
fn an_unreachable_server_stops_the_run_at_once_with_its_url() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        two_tone(&dir.path().join(format!("{i}.png")), 32, 32);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = MockServer::start(|_, _| unreachable!());
    let mut opts = options(&server, "x");
    opts.client.url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    opts.client.retries = 5;
    opts.client.backoff = Duration::from_secs(1);
    opts.concurrency = 1;
    let start = Instant::now();
    let report = run(dir.path(), &opts, &write_options());
    assert!(start.elapsed() < Duration::from_secs(1), "no retries before the server ever answered");
    let why = report.stopped.clone().expect("the run stops");
    assert!(
        why.contains(&format!("http://127.0.0.1:{port}/v1/chat/completions")) && why.contains("server running"),
        "{why}"
    );
    assert_eq!(report.not_done.len(), 5);
    assert!(report.summary.failed.is_empty() && report.summary.written == 0);
}

#[test]
fn a_refused_key_stops_the_run_and_the_key_is_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..6 {
        two_tone(&dir.path().join(format!("{i}.png")), 32, 32);
    }
    let server = MockServer::start(|r, _| {
        let sent = r.header("authorization").unwrap_or_default().trim_start_matches("Bearer ").to_string();
        Response::raw(401, &format!(r#"{{"error":{{"message":"Incorrect API key provided: {sent}."}}}}"#))
    });
    let mut opts = options(&server, "x");
    opts.client.key = ApiKey::new(KEY.into());
    opts.concurrency = 2;
    let report = run(dir.path(), &opts, &write_options());
    let why = report.stopped.clone().expect("the run stops");
    assert!(why.contains("refused the key") && why.contains("Incorrect API key provided: ***"), "{why}");
    assert!(!format!("{report:?}").contains(KEY));
    assert!(server.requests().len() <= 2, "no new requests after the first refusal");
    assert_eq!(report.not_done.len(), 6);
}

#[test]
fn corrupt_images_fail_alone_existing_captions_are_skipped_and_dry_runs_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    two_tone(&dir.path().join("done.png"), 32, 32);
    std::fs::write(dir.path().join("done.txt"), "kept\n").unwrap();
    two_tone(&dir.path().join("new.png"), 32, 32);
    let server = MockServer::start(|_, _| Response::caption("A new caption."));
    let dry = WriteOptions { dry_run: true, ..write_options() };
    let mut outcomes = Vec::new();
    let targets = find_targets(dir.path(), false, ".txt").unwrap();
    let report = caption_all(&targets.targets, &options(&server, "x"), &dry, |e| outcomes.push(e.outcome.clone()));
    assert_eq!(outcomes.iter().filter(|o| matches!(o, Outcome::WouldWrite(c) if c == "A new caption.")).count(), 1);
    assert!(!dir.path().join("new.txt").exists(), "a dry run writes nothing");
    assert!(report.summary.dry_run && report.summary.written == 1);
    assert!(failure(&report, "bad.png").contains("corrupt") || failure(&report, "bad.png").contains("image"));
    assert_eq!(report.summary.skipped.len(), 1);
    assert_eq!(caption(dir.path().join("done.txt")), "kept\n");
    assert_eq!(server.requests().len(), 1, "only the new image is sent");

    let report = run(dir.path(), &options(&server, "x"), &write_options());
    assert_eq!(report.summary.written, 1);
    assert_eq!(caption(dir.path().join("new.txt")), "A new caption.\n");
}
