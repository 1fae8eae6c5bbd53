//! `--dry-run` refuses every config the run refuses, with the same message, and a refused run
//! writes nothing: both go through `Trainer::preflight` (output names and folders, the resumed
//! state, sample prompts, clip_skip, every image decoded).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lorakit_train::{TrainConfig, TrainEvent};

use crate::common;
use common::{chessboard_dataset, repo, small_run_toml};

/// The tiny model's run on two chessboard images, with `extra` TOML appended (it lands in the
/// `[save]` section unless it opens another).
fn config(dir: &Path, extra: &str) -> TrainConfig {
    let data = chessboard_dataset(dir, 1, 2);
    let text = format!("{}\n{extra}", small_run_toml(dir, &data, &repo("examples/quickstart/tiny-sd15")));
    TrainConfig::from_toml_str(&text, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// The dry run's and the run's errors for `cfg`, asserted equal; the run must not have written
/// into its output folder.
fn refused(cfg: TrainConfig) -> String {
    let out = cfg.folders.output_dir.clone();
    let dry = match lorakit_train::dry_run(cfg.clone(), &mut |_| {}) {
        Ok(_) => panic!("the dry run accepted a config the run refuses"),
        Err(e) => e.to_string(),
    };
    let run = match lorakit_train::train(cfg, &AtomicBool::new(false), &mut |_| {}) {
        Ok(_) => panic!("the run accepted it (dry run: {dry})"),
        Err(e) => e.to_string(),
    };
    assert_eq!(dry, run, "the dry run and the run disagree");
    assert!(!out.is_dir() || std::fs::read_dir(&out).unwrap().next().is_none(), "a refused run wrote into {out:?}");
    run
}

fn prompts(dir: &Path, text: &str) -> String {
    let path = dir.join("prompts.txt");
    std::fs::write(&path, text).unwrap();
    format!("[samples]\nsample_prompts = \"{}\"\n", path.display())
}

#[test]
fn sample_settings_the_run_refuses_are_refused_by_the_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let cfg = config(d, &format!("{}sample_sampler = \"bogus\"\n", prompts(d, "chkbrd --w 64 --h 64\n")));
    let err = refused(cfg);
    assert!(err.contains("bogus") && err.contains("euler_a"), "{err}");

    let cfg = config(d, &format!("[samples]\nsample_prompts = \"{}\"\n", d.join("missing.txt").display()));
    let err = refused(cfg);
    assert!(err.contains("missing.txt"), "{err}");

    // Prompt files the run stops at (the pipeline renders up to 4096², with a finite scale; an
    // emphasis weight sd-scripts cannot read stops its sampling), with what the error names.
    let files: [(&str, &[&str]); 5] = [
        ("chkbrd --w abc\n", &["prompts.txt", "abc"]),
        ("chkbrd, (board:1.2.3) --w 64 --h 64\n", &["prompts.txt", "1.2.3"]),
        ("chkbrd --w 64 --h 64\nchkbrd --w 8192 --h 64\n", &["prompt 2", "width 8192"]),
        ("chkbrd --w 64 --h 64 --l nan\n", &["line 1", "--l nan"]),
        ("chkbrd --n (bad:1..2) --w 64 --h 64\n", &["prompt 1", "1..2"]),
    ];
    for (text, expected) in files {
        let err = refused(config(d, &prompts(d, text)));
        assert!(expected.iter().all(|e| err.contains(e)), "{text:?}: {err}");
    }
}

#[test]
fn flux_only_settings_on_an_sd_model_are_refused_by_both() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_dataset(dir.path(), 1, 2);
    let text = small_run_toml(dir.path(), &data, &repo("examples/quickstart/tiny-sd15"));
    for extra in
        ["accelerate.blocks_to_swap=2", "accelerate.cpu_offload_checkpointing=true", "model.t5xxl_max_token_length=77"]
    {
        let sets = ["training.gradient_checkpointing=true".to_string(), extra.to_string()];
        let cfg = TrainConfig::from_toml_str(&text, &sets).unwrap_or_else(|e| panic!("{e}"));
        let err = refused(cfg);
        assert!(err.contains("is for Flux") && err.contains("remove it"), "{extra}: {err}");
    }
}

#[test]
fn clip_skip_beyond_the_text_encoder_is_refused_by_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "");
    cfg.model.clip_skip = Some(40);
    let err = refused(cfg);
    assert!(err.contains("model.clip_skip = 40") && err.contains("between 1 and"), "{err}");
}

#[test]
fn output_names_and_folders_the_run_cannot_write_are_refused_by_both() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, expected) in [("ti\0ny", "'\\0'"), ("tab\there", "'\\t'"), (&"x".repeat(250) as &str, "250 bytes long")]
    {
        let mut cfg = config(d, "");
        cfg.folders.output_name = name.to_string();
        let err = refused(cfg);
        assert!(err.contains("folders.output_name") && err.contains(expected), "{err}");
    }

    // Under a regular file.
    let file = d.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let mut cfg = config(d, "");
    cfg.folders.output_dir = file.join("out");
    let err = refused(cfg);
    assert!(err.contains("folders.output_dir") && err.contains("a-file is a file"), "{err}");
    let mut cfg = config(d, "");
    cfg.folders.output_dir = file.clone();
    let err = refused(cfg);
    assert!(err.contains("folders.output_dir") && err.contains("is a file, not a folder"), "{err}");
    let mut cfg = config(d, "");
    cfg.folders.logging_dir = Some(file.join("logs"));
    let err = refused(cfg);
    assert!(err.contains("folders.logging_dir"), "{err}");

    // Under a read-only folder (meaningless for root, who may write anywhere).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = d.join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        let root = std::fs::create_dir(locked.join("probe")).is_ok();
        if !root {
            let mut cfg = config(d, "");
            cfg.folders.output_dir = locked.join("deeper").join("out");
            let err = refused(cfg);
            assert!(err.contains("folders.output_dir") && err.contains("locked"), "{err}");
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn a_missing_resume_folder_is_refused_by_both() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &format!("resume = \"{}\"\n", dir.path().join("gone-state").display()));
    let err = refused(cfg);
    assert!(err.contains("gone-state") && err.contains("no such folder") && err.contains("save_state"), "{err}");
}

#[test]
fn an_image_whose_data_does_not_decode_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A PNG with an intact header and damaged pixel data: the dataset's header probe accepts it,
    // decoding does not.
    let image = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 7]));
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    let idat = bytes.windows(4).position(|w| w == b"IDAT").unwrap();
    for b in &mut bytes[idat + 8..idat + 40] {
        *b ^= 0x5a;
    }
    for cache in [true, false] {
        let mut cfg = config(d, "");
        cfg.training.cache_latents = cache;
        let broken = d.join("data/1_chessboard/broken.png");
        std::fs::write(&broken, &bytes).unwrap();
        let err = refused(cfg);
        assert!(err.contains("broken.png") && err.contains("lorakit dataset check"), "{err}");
    }
}

/// A finished run (LoRA 4/2 + LoCon 2/1, 2 epochs of one step) that saved a state after epoch 1;
/// returns the config resuming from it into `<dir>/resumed`, and the state folder.
fn saved_state(dir: &Path) -> (TrainConfig, PathBuf) {
    let cfg = config(dir, "save_state = true\n");
    lorakit_train::train(cfg.clone(), &AtomicBool::new(false), &mut |_| {}).unwrap();
    let state = dir.join("out/tiny-000001-state");
    let mut resume = cfg;
    resume.save.resume = Some(state.clone());
    resume.folders.output_dir = dir.join("resumed");
    (resume, state)
}

#[test]
fn resuming_with_other_network_settings_is_refused_naming_keys_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let (resume, state) = saved_state(dir.path());
    type Change = fn(&mut TrainConfig);
    let cases: [(Change, &[&str]); 6] = [
        (|c| c.network.network_alpha = 3.0, &["network.network_alpha: 2 in the state, 3 in this config"]),
        (|c| c.network.conv_alpha = Some(0.5), &["network.conv_alpha: 1 in the state, 0.5 in this config"]),
        (|c| c.network.network_dim = 8, &["network.network_dim: 4 in the state, 8 in this config"]),
        (|c| c.network.conv_dim = Some(3), &["network.conv_dim: 2 in the state, 3 in this config"]),
        (|c| c.network.network_train_unet_only = true, &["network.network_train_unet_only: false in the state"]),
        (
            |c| c.network.conv_dim = Some(0),
            &["network.conv_dim: 2 in the state, 0 in this config", "LoCon", "conv_dim = 2"],
        ),
    ];
    for (change, expected) in cases {
        let mut cfg = resume.clone();
        change(&mut cfg);
        let err = refused(cfg);
        for e in expected {
            assert!(err.contains(e) && err.contains("tiny-000001-state") && err.contains("fresh run"), "{e}: {err}");
        }
    }
    let mut cfg = resume.clone();
    cfg.network.conv_dim = None;
    let err = refused(cfg);
    assert!(err.contains("network.conv_dim: 2 in the state, none in this config") && err.contains("LoCon"), "{err}");

    // A state from before the settings were recorded: its tensors still tell a LoCon apart.
    let json = state.join("train_state.json");
    let mut value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    value.as_object_mut().unwrap().remove("network_settings");
    std::fs::write(&json, serde_json::to_string(&value).unwrap()).unwrap();
    let mut cfg = resume.clone();
    cfg.network.conv_dim = None;
    let err = refused(cfg);
    assert!(err.contains("not in this config's") && err.contains("LoCon") && err.contains("conv_dim"), "{err}");

    // The unchanged config resumes and finishes the run.
    let summary = lorakit_train::train(resume, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(summary.steps, 2);
}

#[test]
fn a_lora_file_or_a_file_inside_a_state_given_as_the_state_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let (resume, state) = saved_state(dir.path());
    let mut cfg = resume.clone();
    cfg.save.resume = Some(dir.path().join("out/tiny.safetensors"));
    let err = refused(cfg);
    assert!(
        err.contains("a LoRA file, not a state folder")
            && err.contains("network.network_weights")
            && err.contains("-state"),
        "{err}"
    );
    let mut cfg = resume;
    cfg.save.resume = Some(state.join("network.safetensors"));
    let err = refused(cfg);
    assert!(err.contains("give the folder itself") && err.contains("tiny-000001-state"), "{err}");
}

#[test]
fn tampered_progress_fields_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (resume, state) = saved_state(dir.path());
    let json = state.join("train_state.json");
    let original = std::fs::read_to_string(&json).unwrap();
    let cases: [(&str, serde_json::Value, &str); 7] = [
        ("global_step", serde_json::json!(-1), "global_step = -1"),
        ("global_step", serde_json::json!(1_000_000_000_000u64), "global_step = 1000000000000"),
        ("global_step", serde_json::json!("1"), "global_step = \"1\""),
        ("global_step", serde_json::json!(0), "global_step = 0"),
        ("epoch", serde_json::json!(99), "current_epoch"),
        ("next_batch", serde_json::json!(5), "next_batch = 5"),
        ("loss_scale", serde_json::json!([0.0, 1]), "loss_scale"),
    ];
    for (key, value, expected) in cases {
        let mut state_value: serde_json::Value = serde_json::from_str(&original).unwrap();
        state_value[key] = value;
        std::fs::write(&json, serde_json::to_string(&state_value).unwrap()).unwrap();
        let err = refused(resume.clone());
        assert!(
            err.contains(expected) && err.contains("train_state.json") && err.contains("edited"),
            "{expected}: {err}"
        );
    }

    // Consistent but beyond this run: at epoch 99 of a 2-epoch run.
    let mut state_value: serde_json::Value = serde_json::from_str(&original).unwrap();
    for key in ["epoch", "current_epoch", "global_step", "current_step"] {
        state_value[key] = serde_json::json!(99);
    }
    std::fs::write(&json, serde_json::to_string(&state_value).unwrap()).unwrap();
    let err = refused(resume.clone());
    assert!(err.contains("step 99") && err.contains("only 2 steps"), "{err}");

    // Within the steps but past the epochs: a state at epoch 3 (step 3), resumed by a run of 2
    // epochs of 2 batches (batch size 1: 4 steps).
    for key in ["epoch", "current_epoch", "global_step", "current_step"] {
        state_value[key] = serde_json::json!(3);
    }
    std::fs::write(&json, serde_json::to_string(&state_value).unwrap()).unwrap();
    let mut cfg = resume;
    cfg.training.train_batch_size = 1;
    let err = refused(cfg);
    assert!(err.contains("epoch 4") && err.contains("only 2 epochs"), "{err}");
}

#[test]
fn interrupted_state_saves_are_cleaned_and_a_crash_between_renames_resumes_from_the_previous_state() {
    let dir = tempfile::tempdir().unwrap();
    let (mut resume, state) = saved_state(dir.path());
    let out = dir.path().join("out");
    let uninterrupted = lorakit_train::train(resume.clone(), &AtomicBool::new(false), &mut |_| {}).unwrap();

    // On disk after a kill between the renames of a save replacing tiny-000001-state: the
    // previous state under `.old-`, the new one half-written under `.tmp-` (4294967 is above
    // every pid_max, so that process is gone); plus another save's leftover, and things that are
    // not ours.
    std::fs::rename(&state, out.join(".tiny-000001-state.old-4294967")).unwrap();
    std::fs::create_dir(out.join(".tiny-000001-state.tmp-4294967")).unwrap();
    std::fs::create_dir_all(out.join(".tiny-step00000007-state.tmp-4294967/x")).unwrap();
    std::fs::create_dir(out.join(".photos.tmp-4294967")).unwrap();
    std::fs::write(out.join(".tiny-state.tmp-4294967"), "a file").unwrap();
    // Interrupted atomic writes (fs_atomic's temporary files of an exited process): a LoRA, and
    // a latent cache file beside the images.
    std::fs::write(out.join(".lorakit-tmp-4294967-abc123.tmp"), "half a LoRA").unwrap();
    let half_latent = dir.path().join("data/1_chessboard/.lorakit-tmp-4294967-def456.tmp");
    std::fs::write(&half_latent, "half a latent").unwrap();
    resume.training.cache_latents_to_disk = true;

    // The dry run finds the previous state, says so, and changes nothing.
    let plan = lorakit_train::dry_run(resume.clone(), &mut |_| {}).unwrap();
    let notes = plan.notes.join("\n");
    assert!(
        notes.contains("interrupted between its renames") && notes.contains("at step 1 (epoch 2, batch 0)"),
        "{notes}"
    );
    assert!(!state.exists() && out.join(".tiny-000001-state.old-4294967").is_dir());

    resume.folders.output_dir = out.clone();
    let mut notes = Vec::new();
    let summary = lorakit_train::train(resume, &AtomicBool::new(false), &mut |e| {
        if let TrainEvent::Note(n) = e {
            notes.push(n)
        }
    })
    .unwrap();
    assert_eq!(summary.losses, uninterrupted.losses, "resumed from the previous state");
    assert!(notes.iter().any(|n| n.contains("interrupted between its renames")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("restored the previous state")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains(".lorakit-tmp-4294967-abc123.tmp")), "{notes:?}");
    assert!(state.join("train_state.json").is_file(), "the previous state is back under its name");
    assert!(!half_latent.exists(), "the latent cache's stale temporary file is removed");
    let mut hidden: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    hidden.sort();
    assert_eq!(hidden, [".photos.tmp-4294967", ".tiny-state.tmp-4294967"], "only what is not ours is left");
}

#[test]
fn a_run_whose_memory_estimate_exceeds_the_available_memory_is_refused_by_both() {
    // The check runs where the available memory is known (Linux).
    let Some(available) = lorakit_train::plan::available_memory() else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = config(dir.path(), "");
    // The tiny model's activations at 64² (batch 2, 8×8 latents), scaled to a resolution
    // whose estimate is four times what is available.
    let plan = lorakit_train::dry_run(base.clone(), &mut |_| {}).unwrap();
    let per_latent_pixel = plan.memory.activations / (2.0 * 64.0);
    let latent_side = (4.0 * available / per_latent_pixel / 2.0).sqrt().ceil() as u32;
    let side = (latent_side * 8).div_ceil(64) * 64;
    let mut cfg = base;
    cfg.dataset.resolution = side.to_string();
    cfg.dataset.max_bucket_reso = side;
    let err = refused(cfg);
    assert!(
        err.contains("more memory") && err.contains("is available") && err.contains("train_batch_size"),
        "{side}: {err}"
    );
}
