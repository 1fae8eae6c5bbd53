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
    let family = |n: &str| list.as_array().unwrap().iter().find(|p| p["name"] == n).unwrap()["family"].clone();
    assert_eq!(
        (family("sd15-character"), family("pony"), family("flux-16gb")),
        ("sd1".into(), "sdxl".into(), "flux".into())
    );
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

#[tokio::test]
async fn the_schema_says_which_families_each_key_applies_to_as_lorakit_train_does() {
    let app = app(&repo("examples"));
    let (_, schema) = call(&app, "GET", "/api/schema", Body::empty(), false).await;
    let fields = schema.as_array().unwrap();
    for f in fields {
        let (section, key) = (f["section"].as_str().unwrap(), f["key"].as_str().unwrap());
        let expected = lorakit_train::config::key_families(section, key);
        let families: Vec<&str> = f["families"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(families, expected.families, "{section}.{key}");
        assert_eq!(f["family_reason"], expected.reason, "{section}.{key}");
    }
    let field = |s: &str, k: &str| fields.iter().find(|f| f["section"] == s && f["key"] == k).unwrap().clone();
    assert_eq!(field("accelerate", "fp8_base_unet")["families"], serde_json::json!(["flux"]));
    assert_eq!(field("accelerate", "fp8_base_unet")["family_reason"], "Flux only");
    // SD3's own keys, and those it shares with Flux.
    for key in ["clip_g", "clip_g_dropout_rate", "clip_l_dropout_rate", "t5_dropout_rate", "pos_emb_random_crop_rate"] {
        assert_eq!(field("model", key)["families"], serde_json::json!(["sd3"]), "model.{key}");
        assert_eq!(field("model", key)["family_reason"], "SD3 only", "model.{key}");
    }
    assert_eq!(field("network", "emb_dims")["families"], serde_json::json!(["sd3"]));
    assert_eq!(field("model", "clip_l")["families"], serde_json::json!(["flux", "sd3"]));
    assert_eq!(field("model", "ae")["families"], serde_json::json!(["flux"]));
    assert_eq!(field("model", "clip_skip")["families"], serde_json::json!(["sd1", "sd2"]));
    assert_eq!(field("optimizer", "learning_rate")["family_reason"], "");
}

#[tokio::test]
async fn a_base_model_under_a_root_shows_the_family_lorakit_train_detects() {
    let app = app(&repo("examples"));
    for (path, family, variant) in
        [("quickstart/shapes-sd15", "sd1", "diffusers folder"), ("quickstart/tiny-sdxl", "sdxl", "diffusers folder")]
    {
        let (status, m) = call(&app, "GET", &format!("/api/model?root=0&path={path}"), Body::empty(), false).await;
        assert_eq!(status, StatusCode::OK, "{m}");
        assert_eq!((m["family"].as_str(), m["variant"].as_str()), (Some(family), Some(variant)), "{m}");
        assert_eq!(m["trainable"], true);
        assert!(Path::new(m["path"].as_str().unwrap()).is_absolute(), "{m}");
    }
    let (status, m) = call(&app, "GET", "/api/model?root=0&path=quickstart/prompts.txt", Body::empty(), false).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{m}");
    assert!(m["error"].as_str().unwrap().contains("prompts.txt"), "{m}");
    let (status, _) = call(&app, "GET", "/api/model?root=0&path=../Cargo.toml", Body::empty(), false).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let reference = self::app(&repo("tests/fixtures/reference"));
    let (status, m) = call(&reference, "GET", "/api/model?root=0&path=flux_tiny/pipeline", Body::empty(), false).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["family"], "flux");
    let (_, m) =
        call(&reference, "GET", "/api/model?root=0&path=sd2_tiny/single_file.safetensors", Body::empty(), false).await;
    assert_eq!((m["family"].as_str(), m["variant"].as_str()), (Some("sd2"), Some("single file")), "{m}");
    assert!(m["notes"][0].as_str().unwrap().contains("v_parameterization"), "{m}");
}

#[tokio::test]
async fn the_plan_lists_warmup_save_and_sample_points_and_the_device() {
    let app = app(&repo("examples"));
    let quickstart = std::fs::read_to_string(repo("examples/quickstart.toml"))
        .unwrap()
        .replace("output_dir = \"../output/quickstart\"", "output_dir = \"gui-test-output\"")
        + "\n";
    let (_, r) = call(&app, "POST", "/api/plan", quickstart, false).await;
    assert_eq!(r["ok"], true, "{r}");
    let text = r["text"].as_str().unwrap();
    let length = format!("length: {} steps in {} epochs, {} warmup steps", r["steps"], r["epochs"], r["warmup_steps"]);
    assert!(text.contains(&length), "{length} / {text}");
    let epochs = r["epochs"].as_u64().unwrap();
    let samples: Vec<String> = (1..=epochs).map(|e| format!("epoch {e}")).collect();
    assert_eq!(r["sample_points"], serde_json::json!(samples), "sample_every_n_epochs = 1");
    assert_eq!(r["save_points"].as_array().unwrap().last().unwrap(), "end");
    assert_eq!(r["device"], "cpu");
    assert!(r["available_gb"].as_f64().unwrap() > 0.0 && r["cards"].as_str().unwrap().contains("24 GB"), "{r}");
}

#[test]
fn prompt_rows_round_trip_through_sd_scripts_prompt_lines() {
    use lorakit_gui::forms::{parse_prompt_rows, render_prompt_rows, PromptRow};
    let rows = vec![
        PromptRow {
            prompt: "red lkstar, (large:1.2), white background".into(),
            negative: Some("blurry, lowres".into()),
            width: Some(512),
            height: Some(768),
            steps: Some(20),
            cfg: Some(7.5),
            seed: Some(42),
            sampler: Some("euler_a".into()),
        },
        // Unset values stay unset: the run's defaults (which depend on the model) fill them.
        PromptRow { prompt: "a plain prompt".into(), ..Default::default() },
        PromptRow { prompt: "only a seed".into(), seed: Some(0), cfg: Some(7.0), ..Default::default() },
    ];
    let text = render_prompt_rows(&rows).unwrap();
    assert_eq!(
        text,
        "red lkstar, (large:1.2), white background --n blurry, lowres --w 512 --h 768 --s 20 --l 7.5 --d 42 --ss euler_a\na plain prompt\nonly a seed --l 7 --d 0\n"
    );
    let (back, warnings) = parse_prompt_rows(&text).unwrap();
    assert_eq!(back, rows);
    assert!(warnings.is_empty(), "{warnings:?}");
    // A file written by hand (comments, option order, case) reads to rows that write it again
    // in the same meaning.
    let bundled = std::fs::read_to_string(repo("examples/quickstart/prompts.txt")).unwrap();
    let (rows, _) = parse_prompt_rows(&bundled).unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!((rows[0].width, rows[0].seed, rows[0].cfg, rows[0].steps), (Some(64), Some(1), Some(7.0), Some(20)));
    assert_eq!(rows[0].negative, None);
    assert_eq!(parse_prompt_rows(&render_prompt_rows(&rows).unwrap()).unwrap().0, rows);
    let (rows, _) = parse_prompt_rows("x --S 3 --W 128 --N no\n").unwrap();
    assert_eq!((rows[0].steps, rows[0].width, rows[0].negative.as_deref()), (Some(3), Some(128), Some("no")));
    // What a prompt line cannot say is refused, naming the row.
    for (row, expected) in [
        (PromptRow { prompt: "a --w 5".into(), ..Default::default() }, "row 1"),
        (PromptRow { prompt: "two\nlines".into(), ..Default::default() }, "line break"),
        (PromptRow { prompt: "# not a prompt".into(), ..Default::default() }, "comment"),
        (PromptRow { prompt: " ".into(), ..Default::default() }, "give a prompt"),
        (PromptRow { prompt: "ok".into(), negative: Some("x --d 1".into()), ..Default::default() }, "negative"),
    ] {
        let err = render_prompt_rows(&[row]).unwrap_err();
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

#[tokio::test]
async fn prompts_are_saved_as_a_prompt_file_and_read_back_from_any_format() {
    let root = tempfile::tempdir().unwrap();
    let app = app(root.path());
    let rows = serde_json::json!([
        { "prompt": "chkbrd, a board", "negative": "blurry", "width": 64, "height": 64, "steps": 4, "cfg": 7, "seed": 1 },
        { "prompt": "chkbrd" },
    ]);
    let body = |name: &str, rows: &serde_json::Value, overwrite: bool| {
        serde_json::json!({ "root": 0, "folder": "", "name": name, "rows": rows, "overwrite": overwrite }).to_string()
    };
    let (status, r) = call(&app, "POST", "/api/prompts/save", body("run-prompts", &rows, false), true).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let written = std::fs::read_to_string(root.path().join("run-prompts.txt")).unwrap();
    assert_eq!(written, "chkbrd, a board --n blurry --w 64 --h 64 --s 4 --l 7 --d 1\nchkbrd\n");
    let (status, _) = call(&app, "POST", "/api/prompts/save", body("run-prompts", &rows, false), true).await;
    assert_eq!(status, StatusCode::CONFLICT, "not over an existing file unless asked");
    let (_, back) = call(&app, "GET", "/api/prompts?root=0&path=run-prompts.txt", Body::empty(), false).await;
    assert_eq!(back["rows"][0]["negative"], "blurry");
    assert_eq!(back["rows"][0]["cfg"], 7.0);
    assert_eq!(
        back["rows"][1],
        serde_json::json!({ "prompt": "chkbrd", "negative": null, "width": null, "height": null, "steps": null, "cfg": null, "seed": null, "sampler": null })
    );
    // The trainer's other formats read into the same table.
    std::fs::write(
        root.path().join("p.toml"),
        "[prompt]\nwidth = 128\n[[prompt.subset]]\nprompt = \"from toml\"\nseed = 5\n",
    )
    .unwrap();
    let (status, t) = call(&app, "GET", "/api/prompts?root=0&path=p.toml", Body::empty(), false).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!((t["rows"][0]["prompt"].as_str(), t["rows"][0]["width"].as_u64()), (Some("from toml"), Some(128)));
    assert_eq!(t["rows"][0]["height"], serde_json::Value::Null);
    // Refused: a row the format cannot hold, a name with folders, a path outside the root.
    let bad = serde_json::json!([{ "prompt": "a --b" }]);
    let (status, r) = call(&app, "POST", "/api/prompts/save", body("x", &bad, false), true).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r["error"].as_str().unwrap().contains("row 1"), "{r}");
    let (status, _) = call(&app, "POST", "/api/prompts/save", body("../x", &rows, false), true).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = call(&app, "GET", "/api/prompts?root=0&path=../x.txt", Body::empty(), false).await;
    assert!(status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND, "{status}");
    let (_, p) =
        call(&app, "POST", "/api/prompts/parse", serde_json::json!({ "text": "a --w 96\n" }).to_string(), true).await;
    assert_eq!(p["rows"][0]["width"], 96);
}

#[tokio::test]
async fn show_cli_gives_the_commands_for_a_config_file_under_a_root() {
    let root = tempfile::tempdir().unwrap();
    let app = app(root.path());
    let body = serde_json::json!({ "root": 0, "folder": "", "name": "my run" }).to_string();
    let (status, r) = call(&app, "POST", "/api/config/command", body, true).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let path = root.path().canonicalize().unwrap().join("my run.toml");
    assert_eq!(r["command"], format!("lorakit train '{}'", path.display()));
    assert_eq!(r["dry_run"], format!("lorakit train '{}' --dry-run", path.display()));
    let body = serde_json::json!({ "root": 0, "folder": "", "name": "a/b" }).to_string();
    let (status, _) = call(&app, "POST", "/api/config/command", body, true).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// Copies the folder `from` to `to` (the SD3 pipeline must lie under the test's root: a symlink
/// would resolve outside it).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn an_sd3_model_shows_its_family_and_the_text_encoders_it_lacks() {
    let reference = app(&repo("tests/fixtures/reference"));
    let (status, m) = call(&reference, "GET", "/api/model?root=0&path=sd3_tiny/pipeline", Body::empty(), false).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(
        (m["family"].as_str(), m["family_name"].as_str(), m["variant"].as_str(), &m["trainable"]),
        (Some("sd3"), Some("SD 3"), Some("diffusers folder"), &serde_json::json!(true)),
        "{m}"
    );
    assert_eq!(m["notes"], serde_json::json!([]), "a folder with text_encoder, _2 and _3 needs nothing more");
    // SAI's single files: what each lacks is what lorakit train would ask for.
    use lorakit_models::checkpoint::sd3::{sd3_text_encoder_available, Sd3Paths, Sd3TextEncoder};
    let mut lacking = 0;
    for file in ["sd3_checkpoint/sd35m_sai.safetensors", "sd3_checkpoint/sd3m_sai.safetensors"] {
        let (status, m) =
            call(&reference, "GET", &format!("/api/model?root=0&path={file}"), Body::empty(), false).await;
        assert_eq!(status, StatusCode::OK, "{m}");
        assert_eq!((m["family"].as_str(), m["variant"].as_str()), (Some("sd3"), Some("single file")), "{m}");
        let paths = Sd3Paths { model: repo("tests/fixtures/reference").join(file), ..Sd3Paths::default() };
        let missing: Vec<&str> = [Sd3TextEncoder::ClipL, Sd3TextEncoder::ClipG, Sd3TextEncoder::T5xxl]
            .into_iter()
            .filter(|w| !sd3_text_encoder_available(&paths, *w).unwrap())
            .map(|w| w.flag())
            .collect();
        if missing.is_empty() {
            assert_eq!(m["notes"], serde_json::json!([]), "{file}: every encoder is inside");
            continue;
        }
        lacking += 1;
        let note = m["notes"][0].as_str().unwrap_or_else(|| panic!("{m}"));
        for key in ["clip_l", "clip_g", "t5xxl"] {
            assert_eq!(note.contains(&format!("model.{key}")), missing.contains(&key), "{file}: {note}");
        }
        assert!(note.starts_with("this SD3 file holds no "), "{note}");
    }
    assert_eq!(lacking, 1, "one file with its encoders inside, one without");
    let (_, m) =
        call(&reference, "GET", "/api/model?root=0&path=sd3_checkpoint/sd35m_sai.safetensors", Body::empty(), false)
            .await;
    assert_eq!(
        m["notes"],
        serde_json::json!([
            "this SD3 file holds no CLIP-L, CLIP-G, T5-XXL: set model.clip_l, model.clip_g, model.t5xxl to the text encoders' files"
        ])
    );
}

#[tokio::test]
async fn the_plan_of_an_sd3_run_is_lorakit_trains_dry_run() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().canonicalize().unwrap();
    copy_dir(&repo("tests/fixtures/reference/sd3_tiny/pipeline"), &base.join("sd3"));
    copy_dir(&repo("examples/dataset/img/8_chessboard"), &base.join("img/2_chk"));
    // The run of crates/lorakit/tests/cli_sd3.rs, with SD3's own keys set.
    let toml = format!(
        r#"[model]
pretrained_model_name_or_path = "{model}"
t5xxl_max_token_length = 16
clip_g_dropout_rate = 0.1
[folders]
output_dir = "out"
output_name = "tiny"
[dataset]
train_data_dir = "{data}"
resolution = "32"
min_bucket_reso = 32
max_bucket_reso = 64
bucket_reso_steps = 16
[network]
network_dim = 4
network_alpha = 4
network_train_unet_only = true
context_attn_dim = 2
[training]
train_batch_size = 2
max_train_epochs = 2
[flow]
training_shift = 3.0
"#,
        model = base.join("sd3").display(),
        data = base.join("img").display()
    );
    let app = app(&base);
    let (status, m) = call(&app, "GET", "/api/model?root=0&path=sd3", Body::empty(), false).await;
    assert_eq!((status, m["family"].as_str()), (StatusCode::OK, Some("sd3")), "{m}");
    let (status, r) = call(&app, "POST", "/api/plan", toml.clone(), false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["ok"], true, "{r}");
    let mut config = lorakit_train::TrainConfig::from_toml_str(&toml, &[]).unwrap();
    config.resolve_paths(&base);
    let plan = lorakit_train::dry_run(config, &mut |_| {}).unwrap();
    assert_eq!(r["text"], plan.to_string());
    assert_eq!((r["steps"].as_u64(), r["epochs"].as_u64()), (Some(plan.steps as u64), Some(plan.epochs as u64)));
    assert!(!base.join("out").exists(), "the plan writes nothing");
    // A Flux-only key is refused for this SD3 model, as lorakit train refuses it.
    let (_, r) =
        call(&app, "POST", "/api/plan", toml.replace("[flow]\n", "[flow]\ntimestep_sampling = \"shift\"\n"), false)
            .await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("flow.timestep_sampling is for Flux only"), "{r}");
}

#[tokio::test]
async fn a_kohya_gui_json_for_sd3_imports_with_sd3s_keys() {
    let app = app(&repo("examples"));
    let mut json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(repo("tests/fixtures/kohya_ss/flux-character.json")).unwrap()).unwrap();
    for (k, v) in [
        ("flux1_checkbox", serde_json::json!(false)),
        ("sd3_checkbox", serde_json::json!(true)),
        ("LoRA_type", serde_json::json!("Standard")),
        ("clip_g", serde_json::json!("/models/clip_g.safetensors")),
        ("clip_g_dropout_rate", serde_json::json!(0.25)),
    ] {
        json.insert(k.into(), v);
    }
    let (status, imported) = call(&app, "POST", "/api/config/import", serde_json::to_vec(&json).unwrap(), false).await;
    assert_eq!(status, StatusCode::OK, "{imported}");
    let model = &imported["values"]["model"];
    assert_eq!(
        (&model["model_family"], &model["clip_g"], &model["clip_g_dropout_rate"]),
        (&serde_json::json!("sd3"), &serde_json::json!("/models/clip_g.safetensors"), &serde_json::json!(0.25)),
        "{imported}"
    );
}
