//! The Resize · Merge · Convert routes through the router: the resize preview is what
//! `lorakit resize` (lorakit-lora's `resize_file`) writes, module by module; paths outside the
//! roots and bad numbers are refused with the reason; submissions become command jobs whose
//! argument list the server built. The queue is not started: the jobs stay queued for a look at
//! their `command.json`.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use lorakit_gui::jobs::{Jobs, JobsOptions};
use lorakit_gui::{router, AppState, Roots};
use lorakit_lora::resize::{ResizeMethod, ResizeSettings};
use lorakit_lora::safetensors_file::Precision;
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789";
const PORT: u16 = 7998;

struct Setup {
    root: tempfile::TempDir,
    _state: tempfile::TempDir,
    jobs: Jobs,
    app: axum::Router,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference/trained_lora").join(name)
}

/// A root with `loras/sdxl.safetensors` (a lorakit-trained tiny SDXL LoRA) and `out/`.
fn setup() -> Setup {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("loras")).unwrap();
    std::fs::create_dir_all(root.path().join("out")).unwrap();
    std::fs::copy(fixture("tiny_sdxl_trained.safetensors"), root.path().join("loras/sdxl.safetensors")).unwrap();
    std::fs::copy(fixture("tiny_trained.safetensors"), root.path().join("loras/sd15.safetensors")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let roots = Roots::new(&[root.path().to_path_buf()]).unwrap();
    let options = JobsOptions {
        program: "false".into(),
        args: vec![],
        stop_timeout: Duration::from_secs(1),
        requests: false,
        command_program: "false".into(),
        command_args: vec![],
    };
    let (jobs, _) = Jobs::open(state.path(), roots.clone(), options).unwrap();
    let app = router(AppState::new(roots, TOKEN.into(), PORT, vec![]).unwrap().with_jobs(jobs.clone()));
    Setup { root, _state: state, jobs, app }
}

impl Setup {
    fn base(&self) -> PathBuf {
        self.root.path().canonicalize().unwrap()
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::builder()
            .method("POST")
            .uri(uri)
            .header(header::HOST, format!("127.0.0.1:{PORT}"))
            .header(header::COOKIE, format!("lorakit_{PORT}={TOKEN}"))
            .header(header::ORIGIN, format!("http://127.0.0.1:{PORT}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {bytes:?}")))
    }

    /// The argument list job `id` would run.
    fn argv(&self, id: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.jobs.dir().join(id).join("command.json")).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        serde_json::from_value(value["argv"].clone()).unwrap()
    }
}

/// Ranks and report lines of `lorakit resize` on `input` (the function the command runs).
fn resized_by_lorakit(input: &Path, settings: &ResizeSettings) -> (Vec<(String, usize)>, Vec<String>, String, u64) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let outcome = lorakit_lora::resize_file::resize_file(input, &out, settings, Precision::F32).unwrap();
    let ranks = outcome.modules.iter().map(|m| (m.name.clone(), m.rank)).collect();
    // A safetensors file is an 8-byte header length, the header, then the weights.
    let bytes = std::fs::read(&out).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    (ranks, outcome.verbose_lines, outcome.average_line, bytes.len() as u64 - 8 - header)
}

#[tokio::test]
async fn the_preview_is_what_lorakit_resize_writes() {
    let s = setup();
    let input = s.base().join("loras/sdxl.safetensors");
    for (body, method, rank) in [
        (json!({ "rank": 4, "dynamic": "sv_fro", "param": 0.9 }), ResizeMethod::SvFro(0.9), 4),
        (json!({ "rank": 8, "dynamic": "sv-ratio", "param": 3 }), ResizeMethod::SvRatio(3.0), 8),
        (json!({ "rank": 2 }), ResizeMethod::Fixed, 2),
    ] {
        let mut request = body.clone();
        request["root"] = json!(0);
        request["path"] = json!("loras/sdxl.safetensors");
        let (status, preview) = s.post("/api/resize/preview", request).await;
        assert_eq!(status, StatusCode::OK, "{preview}");
        let settings = ResizeSettings::new(method, rank, None).unwrap();
        let (ranks, lines, average, weight_bytes) = resized_by_lorakit(&input, &settings);
        let modules = preview["modules"].as_array().unwrap();
        let shown: Vec<(String, usize)> = modules
            .iter()
            .map(|m| (m["name"].as_str().unwrap().to_string(), m["rank"].as_u64().unwrap() as usize))
            .collect();
        assert!(!shown.is_empty());
        assert_eq!(shown, ranks, "{body}");
        let verbose: Vec<&str> = modules.iter().map(|m| m["verbose"].as_str().unwrap()).collect();
        assert_eq!(verbose, lines, "{body}");
        assert_eq!(preview["average"], average.as_str());
        // The size after is the written file's weights, exactly (fp32 as written here).
        assert_eq!(preview["bytes_after"].as_u64(), Some(weight_bytes), "{body}");
        assert_eq!(preview["bytes_before"].as_u64(), Some(std::fs::metadata(&input).unwrap().len()));
    }
    // A dynamic method really varies the ranks on this file (else the comparison above is weak).
    let (_, preview) = s
        .post(
            "/api/resize/preview",
            json!({ "root": 0, "path": "loras/sdxl.safetensors", "rank": 8, "dynamic": "sv_fro", "param": 0.5 }),
        )
        .await;
    let ranks: std::collections::BTreeSet<u64> =
        preview["modules"].as_array().unwrap().iter().map(|m| m["rank"].as_u64().unwrap()).collect();
    assert!(ranks.len() > 1, "{ranks:?}");
}

#[tokio::test]
async fn paths_outside_the_roots_are_refused() {
    let s = setup();
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tiny_trained.safetensors"), outside.path().join("x.safetensors")).unwrap();
    std::os::unix::fs::symlink(outside.path(), s.root.path().join("link")).unwrap();
    for path in ["../x.safetensors", "/etc/passwd", "link/x.safetensors"] {
        let (status, body) = s.post("/api/resize/preview", json!({ "root": 0, "path": path, "rank": 4 })).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        let input = json!({ "root": 0, "path": path });
        let output = json!({ "root": 0, "path": "out", "name": "x" });
        let (status, body) = s.post("/api/resize", json!({ "input": input, "output": output, "rank": 4 })).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    let input = json!({ "root": 0, "path": "loras/sd15.safetensors" });
    for (folder, name, status) in [
        ("..", "x", StatusCode::FORBIDDEN),
        ("link", "x", StatusCode::FORBIDDEN),
        ("out", "../x", StatusCode::UNPROCESSABLE_ENTITY),
        ("out", "/tmp/x", StatusCode::UNPROCESSABLE_ENTITY),
        ("missing", "x", StatusCode::NOT_FOUND),
    ] {
        let output = json!({ "root": 0, "path": folder, "name": name });
        let (got, body) = s.post("/api/convert", json!({ "input": input, "output": output, "to": "peft" })).await;
        assert_eq!(got, status, "{folder}/{name}: {body}");
    }
    // Not a LoRA file; a root that does not exist.
    std::fs::write(s.root.path().join("loras/notes.txt"), "x").unwrap();
    let (status, body) =
        s.post("/api/resize/preview", json!({ "root": 0, "path": "loras/notes.txt", "rank": 4 })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("not a .safetensors file"), "{body}");
    let (status, _) =
        s.post("/api/resize/preview", json!({ "root": 7, "path": "loras/sd15.safetensors", "rank": 4 })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(s.jobs.list().0.is_empty(), "nothing queued");
}

#[tokio::test]
async fn bad_numbers_are_refused_with_the_reason() {
    let s = setup();
    let lora = json!({ "root": 0, "path": "loras/sd15.safetensors" });
    let out = json!({ "root": 0, "path": "out", "name": "r" });
    let resize = |extra: Value| {
        let mut body = json!({ "input": lora, "output": out, "rank": 4 });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for (uri, body, reason) in [
        ("/api/resize", resize(json!({ "rank": 0 })), "--rank must be at least 1"),
        ("/api/resize", resize(json!({ "rank": 1.5 })), "rank must be a whole number"),
        ("/api/resize", resize(json!({ "rank": -2 })), "rank must be a whole number"),
        ("/api/resize", resize(json!({ "rank": "four" })), "rank must be a number (got \"four\")"),
        (
            "/api/merge",
            json!({ "inputs": [{ "root": 0, "path": "a", "ratio": "x" }], "output": out, "rank": 4 }),
            "ratio must be a number",
        ),
        ("/api/resize", resize(json!({ "conv_rank": 0 })), "--conv-rank must be at least 1"),
        ("/api/resize", resize(json!({ "dynamic": "sv_fro" })), "--dynamic sv_fro needs --param"),
        ("/api/resize", resize(json!({ "dynamic": "sv_fro", "param": 2 })), "out of range for --dynamic sv_fro"),
        ("/api/resize", resize(json!({ "dynamic": "sv_ratio", "param": 1 })), "out of range for --dynamic sv_ratio"),
        ("/api/resize", resize(json!({ "param": 0.5 })), "has no effect without --dynamic"),
        ("/api/resize", resize(json!({ "dynamic": "svd" })), "unknown --dynamic method"),
        ("/api/resize", resize(json!({ "precision": "fp8" })), "expected fp32, fp16 or bf16"),
        (
            "/api/resize/preview",
            json!({ "root": 0, "path": "loras/sd15.safetensors", "rank": 0 }),
            "--rank must be at least 1",
        ),
        ("/api/merge", json!({ "inputs": [], "output": out, "rank": 4 }), "at least one LoRA"),
        ("/api/merge", json!({ "inputs": [lora], "output": out, "rank": 0 }), "--rank must be at least 1"),
        ("/api/convert", json!({ "input": lora, "output": out, "to": "comfy" }), "expected kohya or peft"),
        (
            "/api/convert",
            json!({ "input": lora, "output": out, "to": "peft", "family": "sd35" }),
            "family \"sd35\": expected sd15, sdxl, flux or sd3",
        ),
        ("/api/generate", json!({ "model": lora, "prompts": ["a"], "width": 100, "output": out }), "multiple of 8"),
        (
            "/api/generate",
            json!({ "model": lora, "prompts": ["a"], "steps": 0, "output": out }),
            "steps must be a whole number of at least 1",
        ),
        ("/api/generate", json!({ "model": lora, "prompts": [" "], "output": out }), "at least one prompt"),
        (
            "/api/generate",
            json!({ "model": lora, "prompts": ["a"], "device": "tpu", "output": out }),
            "expected cpu, cuda or metal",
        ),
    ] {
        let (status, resp) = s.post(uri, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri} {body}: {resp}");
        let message = resp["error"].as_str().unwrap();
        assert!(message.contains(reason), "{uri} {body}: {message}");
    }
    assert!(s.jobs.list().0.is_empty(), "nothing queued");
}

#[tokio::test]
async fn submissions_queue_the_command_the_server_builds() {
    let s = setup();
    let base = s.base();
    let sd15 = json!({ "root": 0, "path": "loras/sd15.safetensors" });
    let sdxl = json!({ "root": 0, "path": "loras/sdxl.safetensors" });
    let out = |name: &str| json!({ "root": 0, "path": "out", "name": name });
    let (status, job) = s
        .post("/api/resize", json!({ "input": sdxl, "output": out("small"), "rank": 4, "dynamic": "sv_fro", "param": 0.9, "precision": "fp16" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!((job["kind"].as_str(), job["status"].as_str()), (Some("resize"), Some("queued")));
    let (input, output) = (base.join("loras/sdxl.safetensors"), base.join("out/small.safetensors"));
    let expected = [
        "resize",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--rank",
        "4",
        "--dynamic",
        "sv_fro",
        "--param",
        "0.9",
        "--precision",
        "fp16",
    ];
    assert_eq!(s.argv(job["id"].as_str().unwrap()), expected);

    let (status, job) = s
        .post("/api/merge", json!({ "inputs": [{ "root": 0, "path": "loras/sd15.safetensors", "ratio": 0.7 }, { "root": 0, "path": "loras/sdxl.safetensors", "ratio": -1 }], "output": out("merged.safetensors"), "rank": 8 }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let merged = base.join("out/merged.safetensors");
    assert_eq!(
        s.argv(job["id"].as_str().unwrap()),
        [
            "merge".to_string(),
            format!("{}:0.7", base.join("loras/sd15.safetensors").display()),
            format!("{}:-1", input.display()),
            format!("--output={}", merged.display()),
            "--rank".into(),
            "8".into()
        ]
    );

    let (status, job) =
        s.post("/api/convert", json!({ "input": sd15, "output": out("peft"), "to": "peft", "family": "sd15" })).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(s.argv(job["id"].as_str().unwrap())[3..], ["--to", "peft", "--family", "sd15"]);

    // A prompt that starts with `-` stays a prompt (`--prompt=…`), never a flag.
    let (status, job) = s
        .post("/api/generate", json!({ "model": sd15, "loras": [{ "root": 0, "path": "loras/sd15.safetensors", "weight": 0.8 }], "prompts": ["a cat", "--device=cuda"], "steps": 4, "seed": 3, "width": 64, "height": 64, "output": out("grid") }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let sd15_path = base.join("loras/sd15.safetensors");
    assert_eq!(
        s.argv(job["id"].as_str().unwrap()),
        [
            "generate".to_string(),
            format!("--model={}", sd15_path.display()),
            format!("--lora={}:0.8", sd15_path.display()),
            "--prompt=a cat".into(),
            "--prompt=--device=cuda".into(),
            "--steps=4".into(),
            "--width=64".into(),
            "--height=64".into(),
            "--seed=3".into(),
            "--grid".into(),
            "--device=cpu".into(),
            format!("--output={}", base.join("out/grid.png").display()),
        ]
    );

    // An existing output needs overwrite; the input itself never is the output.
    std::fs::write(base.join("out/small.safetensors"), "x").unwrap();
    let (status, body) = s.post("/api/resize", json!({ "input": sdxl, "output": out("small"), "rank": 4 })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("choose overwrite"), "{body}");
    let mut over = out("small");
    over["overwrite"] = json!(true);
    assert_eq!(s.post("/api/resize", json!({ "input": sdxl, "output": over, "rank": 4 })).await.0, StatusCode::CREATED);
    let onto_input = json!({ "root": 0, "path": "loras", "name": "sdxl", "overwrite": true });
    let (status, body) = s.post("/api/resize", json!({ "input": sdxl, "output": onto_input, "rank": 4 })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("this is also an input"), "{body}");
    assert_eq!(s.jobs.list().0.len(), 5);
}

/// SD3: a LoRA converted with `--family sd3`, and an XY plot of an SD3 single file with its text
/// encoders and VAE given as files (`--clip-l`, `--clip-g`, `--t5xxl`, `--vae`, as `lorakit
/// generate` takes them).
#[tokio::test]
async fn sd3_conversions_and_xy_plots_queue_sd3s_arguments() {
    let s = setup();
    let base = s.base();
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference");
    std::fs::create_dir_all(base.join("sd3")).unwrap();
    for (from, to) in [
        ("sd3_lora/kohya.safetensors", "loras/sd3.safetensors"),
        ("sd3_checkpoint/sd35m_sai.safetensors", "sd3/sd35m.safetensors"),
        ("sd3_tiny/pipeline/text_encoder/model.safetensors", "sd3/clip_l.safetensors"),
        ("sd3_tiny/pipeline/text_encoder_2/model.safetensors", "sd3/clip_g.safetensors"),
        ("sd3_tiny/pipeline/text_encoder_3/model.safetensors", "sd3/t5xxl.safetensors"),
        ("sd3_tiny/pipeline/vae/diffusion_pytorch_model.safetensors", "sd3/vae.safetensors"),
    ] {
        std::fs::copy(reference.join(from), base.join(to)).unwrap();
    }
    let file = |path: &str| json!({ "root": 0, "path": path });
    let out = |name: &str| json!({ "root": 0, "path": "out", "name": name });
    let (status, job) = s
        .post(
            "/api/convert",
            json!({ "input": file("loras/sd3.safetensors"), "output": out("sd3-peft"), "to": "peft", "family": "sd3" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let lora = base.join("loras/sd3.safetensors");
    assert_eq!(
        s.argv(job["id"].as_str().unwrap()),
        [
            "convert".to_string(),
            lora.display().to_string(),
            base.join("out/sd3-peft.safetensors").display().to_string(),
            "--to".into(),
            "peft".into(),
            "--family".into(),
            "sd3".into()
        ]
    );

    let body = json!({
        "model": file("sd3/sd35m.safetensors"),
        "clip_l": file("sd3/clip_l.safetensors"),
        "clip_g": file("sd3/clip_g.safetensors"),
        "t5xxl": file("sd3/t5xxl.safetensors"),
        "vae": file("sd3/vae.safetensors"),
        "loras": [{ "root": 0, "path": "loras/sd3.safetensors", "weight": 0.5 }],
        "prompts": ["a board"],
        "baseline": true,
        "output": out("sd3-grid"),
    });
    let (status, job) = s.post("/api/generate", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let part = |flag: &str, name: &str| format!("--{flag}={}", base.join("sd3").join(name).display());
    assert_eq!(
        s.argv(job["id"].as_str().unwrap()),
        [
            "generate".to_string(),
            part("model", "sd35m.safetensors"),
            part("clip-l", "clip_l.safetensors"),
            part("clip-g", "clip_g.safetensors"),
            part("t5xxl", "t5xxl.safetensors"),
            part("vae", "vae.safetensors"),
            format!("--lora={}:0.5", lora.display()),
            "--prompt=a board".into(),
            "--grid".into(),
            "--grid-baseline".into(),
            "--device=cpu".into(),
            format!("--output={}", base.join("out/sd3-grid.png").display()),
        ]
    );
    // A CLIP-G file outside the roots, or one that is not a .safetensors file, is refused.
    for (clip_g, expected, reason) in [
        (json!({ "root": 0, "path": "../clip_g.safetensors" }), StatusCode::FORBIDDEN, "not inside the root"),
        (file("sd3"), StatusCode::UNPROCESSABLE_ENTITY, "sd3: not a .safetensors file"),
    ] {
        let mut bad = body.clone();
        bad["clip_g"] = clip_g.clone();
        let (status, resp) = s.post("/api/generate", bad).await;
        assert_eq!(status, expected, "{clip_g}: {resp}");
        assert!(resp["error"].as_str().unwrap().contains(reason), "{clip_g}: {resp}");
    }
    assert_eq!(s.jobs.list().0.len(), 2);
}

/// Captioning jobs: the argument list `lorakit caption` gets from the Datasets page's form, and
/// the requests refused before anything is queued.
#[tokio::test]
async fn caption_requests_queue_lorakit_caption_with_checked_arguments() {
    let s = setup();
    std::fs::create_dir_all(s.root.path().join("img/5_x")).unwrap();
    std::fs::create_dir_all(s.root.path().join("models/wd")).unwrap();
    let base = s.base();
    let (status, job) = s
        .post(
            "/api/caption",
            json!({
                "root": 0, "path": "img", "captioner": "wd14", "recursive": true, "existing": "append", "trigger": "-lk",
                "wd14": {"model": {"root": 0, "path": "models/wd"}, "general_threshold": 0.4, "remove_underscore": true,
                         "undesired_tags": "watermark, text"}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["kind"], "caption");
    let folder = base.join("img").display().to_string();
    let model = format!("--model={}", base.join("models/wd").display());
    assert_eq!(
        s.argv(job["id"].as_str().unwrap()),
        [
            "caption",
            "wd14",
            &folder,
            "--recursive",
            "--append",
            "--trigger=-lk",
            &model,
            "--general-threshold=0.4",
            "--remove-underscore",
            "--undesired-tags=watermark, text",
        ]
    );
    let (status, job) = s
        .post(
            "/api/caption",
            json!({
                "root": 0, "path": "img/5_x", "captioner": "api",
                "api": {"url": "http://127.0.0.1:11434/v1", "model": "llava", "key_env": "MY_KEY", "prompt": "Describe {name}.", "concurrency": 2}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let argv = s.argv(job["id"].as_str().unwrap());
    assert_eq!(
        argv[1..],
        [
            "api",
            &base.join("img/5_x").display().to_string(),
            "--api=http://127.0.0.1:11434/v1",
            "--api-model=llava",
            "--api-key-env=MY_KEY",
            "--prompt=Describe {name}.",
            "--concurrency=2",
        ]
    );
    assert!(!argv.iter().any(|a| a.contains("sk-")), "no key in a job's arguments");

    std::fs::create_dir_all(s.root.path().join("models/florence")).unwrap();
    let (status, job) = s
        .post(
            "/api/caption",
            json!({"root": 0, "path": "img", "captioner": "florence",
                   "florence": {"model": {"root": 0, "path": "models/florence"}, "task": "detailed", "num_beams": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(
        s.argv(job["id"].as_str().unwrap())[1..],
        [
            "florence",
            &folder,
            &format!("--model={}", base.join("models/florence").display()),
            "--task=detailed",
            "--num-beams=2",
        ]
    );
    let florence = |f: Value| json!({"root": 0, "path": "img", "captioner": "florence", "florence": f});

    let wd14 = |extra: Value| {
        let mut body =
            json!({"root": 0, "path": "img", "captioner": "wd14", "wd14": {"model": {"root": 0, "path": "models/wd"}}});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let api = |api: Value| json!({"root": 0, "path": "img", "captioner": "api", "api": api});
    for (body, expected) in [
        (wd14(json!({"path": ".."})), StatusCode::FORBIDDEN),
        (wd14(json!({"path": "nowhere"})), StatusCode::NOT_FOUND),
        (wd14(json!({"wd14": {"model": {"root": 0, "path": "models/none"}}})), StatusCode::NOT_FOUND),
        (
            wd14(json!({"wd14": {"model": {"root": 0, "path": "loras/sd15.safetensors"}}})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            wd14(json!({"wd14": {"model": {"root": 0, "path": "models/wd"}, "general_threshold": 1.5}})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (wd14(json!({"existing": "erase"})), StatusCode::UNPROCESSABLE_ENTITY),
        (wd14(json!({"captioner": "blip"})), StatusCode::UNPROCESSABLE_ENTITY),
        (
            florence(json!({"model": {"root": 0, "path": "models/florence"}, "task": "long"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            florence(json!({"model": {"root": 0, "path": "models/florence"}, "num_beams": 0})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (florence(json!({"model": {"root": 0, "path": "models/nothing"}})), StatusCode::NOT_FOUND),
        (api(json!({"url": "file:///etc/passwd", "model": "m"})), StatusCode::UNPROCESSABLE_ENTITY),
        (api(json!({"url": "http://x/v1", "model": " "})), StatusCode::UNPROCESSABLE_ENTITY),
        (api(json!({"url": "http://x/v1", "model": "m", "key_env": "sk-123"})), StatusCode::UNPROCESSABLE_ENTITY),
        (api(json!({"url": "http://x/v1", "model": "m", "concurrency": 0})), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, answer) = s.post("/api/caption", body.clone()).await;
        assert_eq!(status, expected, "{body} → {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{answer}");
    }
}
