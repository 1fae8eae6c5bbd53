//! `lorakit train` and `lorakit config new` end to end: presets, overrides, sd-scripts import,
//! a real (tiny) run, and kill -9 in the middle of saving.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use common::{chessboard_data, lorakit, repo, text};

/// A tiny run's config: 4 chessboard images at 64 px on the bundled tiny model.
fn tiny_config(dir: &Path, extra: &str) -> PathBuf {
    chessboard_data(dir, 4);
    let path = dir.join("run.toml");
    std::fs::write(
        &path,
        format!(
            r#"[model]
pretrained_model_name_or_path = "{model}"
[folders]
output_dir = "out"
output_name = "tiny"
[dataset]
train_data_dir = "data"
resolution = "64"
min_bucket_reso = 64
max_bucket_reso = 128
[network]
network_dim = 2
network_alpha = 1
[training]
train_batch_size = 2
max_train_epochs = 2
[optimizer]
learning_rate = 1e-3
{extra}
"#,
            model = repo("examples/quickstart/tiny-sd15").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn presets_are_written_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("char.toml");
    let o = lorakit(&["config", "new", "--preset", "sd15-character", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains("text_encoder_lr") && written.contains("25–50%"), "the guide's advice is in the file");
    let o = lorakit(&["config", "new", "--preset", "sd15-character", "-o", out.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("--force"), "{}", text(&o));
    let o = lorakit(&["train", out.to_str().unwrap(), "--print-config", "--set", "training.max_train_epochs=3"]);
    assert!(o.status.success(), "{}", text(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("max_train_epochs = 3") && printed.contains("network_dim = 16"), "{printed}");
    let o = lorakit(&["config", "new", "--preset", "sdxl-pony", "-o", "-"]);
    assert!(!o.status.success() && text(&o).contains("sd15-style") && text(&o).contains("illustrious"), "{}", text(&o));
    // The SDXL presets: written, read back as SDXL configs.
    for name in ["sdxl-character", "sdxl-style", "pony", "illustrious"] {
        let out = dir.path().join(format!("{name}.toml"));
        let o = lorakit(&["config", "new", "--preset", name, "-o", out.to_str().unwrap()]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let o = lorakit(&["train", out.to_str().unwrap(), "--print-config"]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let printed = String::from_utf8_lossy(&o.stdout);
        assert!(printed.contains("model_family = \"sdxl\"") && printed.contains("resolution = \"1024\""), "{printed}");
    }
    let o = lorakit(&["config", "new", "--preset", "pony", "-o", "-"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("score_9, score_8_up"), "{}", text(&o));
}

#[test]
fn sd_scripts_configs_are_imported_with_a_list_of_what_was_not() {
    let dir = tempfile::tempdir().unwrap();
    let kohya = dir.path().join("args.toml");
    std::fs::write(
        &kohya,
        "[model_arguments]\npretrained_model_name_or_path = \"/m/sd15.safetensors\"\n[training]\nnetwork_dim = 32\nnetwork_alpha = 16\nmax_train_epochs = 6\nxformers = true\nlearning_rate = 1e-4\n",
    )
    .unwrap();
    let o = lorakit(&["train", "--from-kohya", kohya.to_str().unwrap(), "--print-config"]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("network_dim = 32") && stdout.contains("max_train_epochs = 6"), "{stdout}");
    assert!(stdout.contains("caption_extension = \".caption\""), "sd-scripts' default for silent keys: {stdout}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("ignored: xformers"), "{}", text(&o));
}

#[test]
fn a_tiny_run_trains_and_bad_configs_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "");
    let o = lorakit(&["train", cfg.to_str().unwrap(), "--set", "save.save_every_n_epochs=1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("done: 8 steps"), "{}", text(&o));
    for f in ["out/tiny-000001.safetensors", "out/tiny.safetensors"] {
        assert!(dir.path().join(f).is_file(), "{f}: {}", text(&o));
    }

    let o = lorakit(&["train", cfg.to_str().unwrap(), "--set", "learnig_rate=1"]);
    assert!(!o.status.success() && text(&o).contains("learnig_rate"), "{}", text(&o));
    let o = lorakit(&["train", cfg.to_str().unwrap(), "--set", "optimizer.learnig_rate=1"]);
    assert!(!o.status.success() && text(&o).contains("learnig_rate"), "{}", text(&o));
    let o = lorakit(&["train", dir.path().join("missing.toml").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("missing.toml"), "{}", text(&o));
}

/// Starts `lorakit train` on a [`tiny_config`] with saves every step for `epochs` epochs and
/// returns once its first step save exists (or after two minutes).
fn train_until_first_save(cfg: &Path, epochs: u32, stderr: Stdio) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_lorakit"))
        .args(["train", cfg.to_str().unwrap(), "--set", &format!("training.max_train_epochs={epochs}")])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let first = cfg.parent().unwrap().join("out/tiny-step00000001.safetensors");
    let start = Instant::now();
    while !first.exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Every `.safetensors` under `dir` is a complete, readable LoRA.
fn all_complete(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "safetensors") {
            let f =
                lorakit_lora::safetensors_file::LoraFile::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(!f.is_empty());
            n += 1;
        }
    }
    n
}

#[test]
fn kill_9_while_saving_leaves_earlier_files_intact() {
    let dir = tempfile::tempdir().unwrap();
    // A save after every step: the process spends much of its time writing files.
    let cfg = tiny_config(dir.path(), "[save]\nsave_every_n_steps = 1\nsave_state = true\n");
    let out = dir.path().join("out");
    for delay_ms in [700u64, 1100, 1600] {
        let mut child = train_until_first_save(&cfg, 20, Stdio::null());
        // Then kill at a moment that falls into later saves.
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(all_complete(&out) >= 1, "earlier saves survive");
        // Every state folder that exists under its final name is complete.
        for entry in std::fs::read_dir(&out).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() && name.ends_with("-state") && !name.starts_with('.') {
                for f in ["network.safetensors", "optimizer.safetensors", "train_state.json"] {
                    assert!(p.join(f).is_file(), "{name}/{f} missing after kill -9");
                }
            }
        }
    }
}

#[test]
fn dry_run_prints_the_plan_without_training() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path(), "lr_scheduler = \"cosine\"\nlr_warmup_steps = 6\noptimizer_type = \"AdamW\"");
    let o = lorakit(&["train", cfg.to_str().unwrap(), "--dry-run", "--set", "network.loraplus_lr_ratio=8"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    // 4 images × 2 repeats = 8 samples, batch 2 → 4 steps per epoch, 2 epochs.
    assert!(out.contains("length: 8 steps in 2 epochs, 6 warmup steps"), "{out}");
    assert!(out.contains("group unet plus") && out.contains("group textencoder"), "{out}");
    assert!(out.contains("lr schedule: step 1: ×0.0000") && out.contains("step 8:"), "{out}");
    assert!(out.contains("memory: this run needs about"), "{out}");
    assert!(out.contains("warning: optimizer.lr_warmup_steps: 6 of the run's 8 steps"), "{out}");
    assert!(!dir.path().join("out").exists(), "a dry run writes nothing");
}

#[test]
fn sigterm_and_sighup_save_a_state_like_ctrl_c() {
    for signal in ["-TERM", "-HUP"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny_config(dir.path(), "[save]\nsave_every_n_steps = 1\n");
        let out = dir.path().join("out");
        let child = train_until_first_save(&cfg, 200, Stdio::piped());
        let kill = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(kill.success());
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(130), "{signal}: {stderr}");
        assert!(stderr.contains("resume with: --set save.resume="), "{signal}: {stderr}");
        let state = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().ends_with("-state"))
            .unwrap_or_else(|| panic!("{signal}: no state folder: {stderr}"));
        assert!(state.join("train_state.json").is_file(), "{signal}");
    }
}

/// A kohya_ss GUI config as the GUI saves it (a subset of its fields).
fn gui_json(dir: &Path, extra: &str) -> String {
    format!(
        r#"{{"LoRA_type": "Standard", "pretrained_model_name_or_path": "{model}", "train_data_dir": "{data}",
  "output_dir": "{out}", "output_name": "gui", "max_resolution": "64,64", "min_bucket_reso": 64,
  "max_bucket_reso": 128, "epoch": 1, "max_train_steps": "", "train_batch_size": 2, "network_dim": 2,
  "network_alpha": 1, "learning_rate": 0.001, "text_encoder_lr": 0, "unet_lr": 0, "optimizer": "AdamW",
  "optimizer_args": "", "lr_warmup": 0, "seed": 5, "xformers": "xformers", "num_cpu_threads_per_process": 2,
  "mixed_precision": "no", "save_precision": "fp16", "caption_extension": ".txt", "enable_bucket": true,
  "noise_offset_type": "Original", "noise_offset": 0, "sample_prompts": "chessboard --w 64 --h 64 --s 2",
  "sample_every_n_epochs": 0, "vae": "", "flux1_checkbox": false,
  "guidance_scale": 3.5{extra}}}"#,
        model = repo("examples/quickstart/tiny-sd15").display(),
        data = dir.join("data").display(),
        out = dir.join("out").display(),
    )
}

#[test]
fn kohya_gui_configs_import_by_content_with_ranked_notes() {
    let dir = tempfile::tempdir().unwrap();
    tiny_config(dir.path(), "");
    // A .txt name and a BOM: JSON is told by its content.
    let file = dir.path().join("saved config.txt");
    let mut bytes = vec![0xEF, 0xBB, 0xBF];
    // A setting lorakit does not apply, passed as the GUI passes extra arguments.
    let extra = ", \"additional_parameters\": \"--face_crop_aug_range 2.0,4.0\"";
    bytes.extend_from_slice(gui_json(dir.path(), extra).as_bytes());
    std::fs::write(&file, bytes).unwrap();
    let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--print-config"]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("model_family = \"sd1\"") && stdout.contains("seed = 5"), "{stdout}");
    assert!(stdout.contains("# conv_dim = (unset)"), "Standard has no conv modules: {stdout}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines[0].starts_with("warning: ") && lines[0].contains("`face_crop_aug_range`"), "loud first: {stderr}");
    assert!(stderr.contains("ignored: num_cpu_threads_per_process, xformers"), "{stderr}");
    // The GUI's prompt text becomes the file the GUI would write.
    let prompts = dir.path().join("out/sample/prompt.txt");
    assert_eq!(std::fs::read_to_string(&prompts).unwrap(), "chessboard --w 64 --h 64 --s 2");

    // The GUI's LoKr preset style (network_dim 100000 = LyCORIS' full matrices) plans as LoKr.
    let lokr = gui_json(dir.path(), "")
        .replace(
            "\"LoRA_type\": \"Standard\"",
            "\"LoRA_type\": \"LyCORIS/LoKr\", \"LyCORIS_preset\": \"full\", \"factor\": 4",
        )
        .replace("\"network_dim\": 2,", "\"network_dim\": 100000, \"conv_dim\": 100000, \"conv_alpha\": 1,");
    std::fs::write(&file, lokr).unwrap();
    let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--print-config"]);
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(&o));
    assert!(printed.contains("algo = \"lokr\"") && printed.contains("factor = 4"), "{printed}");
    let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success() && text(&o).contains("group unet"), "{}", text(&o));

    // A config for SD 2.x with an SD 1.x checkpoint: an error naming both.
    std::fs::write(&file, gui_json(dir.path(), ", \"v2\": true")).unwrap();
    let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--dry-run"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("SD 1.x checkpoint") && text(&o).contains("SD 2.x"), "{}", text(&o));

    // An SDXL config (the GUI's SDXL checkbox): imported as SDXL, clip_skip dropped with a note,
    // and planned on the bundled tiny SDXL model.
    let sdxl = gui_json(dir.path(), ", \"sdxl\": true, \"clip_skip\": 2, \"sdxl_no_half_vae\": true")
        .replace("tiny-sd15", "tiny-sdxl");
    std::fs::write(&file, sdxl).unwrap();
    let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--print-config"]);
    assert!(o.status.success(), "{}", text(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(printed.contains("model_family = \"sdxl\"") && printed.contains("# clip_skip = (unset)"), "{printed}");
    assert!(printed.contains("no_half_vae = true"), "{printed}");
    assert!(text(&o).contains("`clip_skip`: 2: SDXL always conditions on the penultimate layer"), "{}", text(&o));
    let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));

    // Refusals exit non-zero and say why.
    for (content, says) in [
        // Flux.1 imports (tests/cli_kohya_import_flux.rs), but not with a LoRA type the GUI refuses.
        (gui_json(dir.path(), ", \"flux1_checkbox\": true"), "LoRA type must be set to 'Flux1'"),
        (gui_json(dir.path(), ", \"sdxl\": true, \"v2\": true"), "v2 cannot be enabled in SDXL training"),
        (gui_json(dir.path(), ", \"LoRA_type\": \"LyCORIS/iA3\"").replace("\"LoRA_type\": \"Standard\", ", ""), "iA3"),
        ("[general]\nresolution = 512\n[[datasets]]\n".to_string(), "dataset config"),
        (String::new(), "empty"),
        ("{\"pretrained_model_name_or_path\": \"m\", \"token_string\": \"x\"}".into(), "textual-inversion"),
    ] {
        std::fs::write(&file, content).unwrap();
        let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--print-config"]);
        assert!(!o.status.success() && text(&o).contains(says), "{says}: {}", text(&o));
        assert!(text(&o).contains("saved config.txt"), "the file is named: {}", text(&o));
    }
}
