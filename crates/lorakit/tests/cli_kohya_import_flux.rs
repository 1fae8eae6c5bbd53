//! `lorakit train --from-kohya` with Flux.1 configs, end to end: kohya_ss' Flux preset pointed at
//! the tiny Flux pipeline (tests/fixtures/reference/flux_tiny/pipeline, a diffusers folder) and a
//! small chessboard dataset imports, prints, and plans with `--dry-run`; so does an sd-scripts
//! `flux_train_network.py` TOML told Flux by that checkpoint; refusals exit non-zero with the reason.

use std::path::{Path, PathBuf};

use crate::common;
use common::{chessboard_data, lorakit, repo, text};

/// kohya_ss' `flux1D - adamw8bit fp8.json` preset with its placeholders filled in for the tiny
/// pipeline (whose folder holds CLIP-L, T5 and the autoencoder), a 64-pixel run on the CPU.
fn gui_config(dir: &Path) -> PathBuf {
    let data = chessboard_data(dir, 2);
    let mut json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(repo("tests/fixtures/kohya_ss/flux1D - adamw8bit fp8.json")).unwrap())
            .unwrap();
    for (k, v) in [
        (
            "pretrained_model_name_or_path",
            repo("tests/fixtures/reference/flux_tiny/pipeline").display().to_string().into(),
        ),
        ("ae", "".into()),
        ("clip_l", "".into()),
        ("t5xxl", "".into()),
        ("train_data_dir", data.display().to_string().into()),
        ("output_dir", dir.join("out").display().to_string().into()),
        ("logging_dir", dir.join("logs").display().to_string().into()),
        ("max_resolution", "64,64".into()),
        ("min_bucket_reso", 32.into()),
        ("max_bucket_reso", 128.into()),
        ("bucket_reso_steps", 32.into()),
        ("t5xxl_max_token_length", 16.into()),
        ("max_train_steps", 4.into()),
        ("mixed_precision", "no".into()),
        ("fp8_base", false.into()),
        ("full_bf16", false.into()),
        ("sample_prompts", "chkbrd, a board --w 64 --h 64 --s 2 --d 1".into()),
    ] {
        json.insert(k.to_string(), v);
    }
    let path = dir.join("flux preset.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    path
}

#[test]
fn a_kohya_flux_gui_config_imports_and_plans_on_the_tiny_flux_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let file = gui_config(dir.path());
    let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--print-config"]);
    assert!(o.status.success(), "{}", text(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    for expected in [
        "model_family = \"flux\"",
        "network_module = \"networks.lora\"",
        "model_prediction_type = \"raw\"",
        "timestep_sampling = \"sigmoid\"",
        "guidance_scale = 1.0",
        "apply_t5_attn_mask = true",
        "cache_text_encoder_outputs = true",
        "network_train_unet_only = true",
    ] {
        assert!(printed.contains(expected), "{expected}: {printed}");
    }
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("`min_snr_gamma`: 7: flux_train_network.py does not use it"), "{stderr}");
    assert!(!stderr.contains("warning:"), "nothing that changes the run: {stderr}");
    assert!(dir.path().join("out/sample/prompt.txt").is_file(), "the GUI's prompt file is written");

    let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("memory: this run needs about"), "{}", text(&o));
    assert!(!dir.path().join("out").join("last.safetensors").exists(), "a dry run trains nothing");

    // Block swap: 2 blocks (1 double, 2 single of the tiny model's 2 and 3) with gradient
    // checkpointing, as the preset has it, is lorakit's accelerate.blocks_to_swap.
    let preset = std::fs::read_to_string(&file).unwrap();
    let swap =
        preset.replace("\"gradient_accumulation_steps\"", "\"blocks_to_swap\": 2,\n  \"gradient_accumulation_steps\"");
    std::fs::write(&file, &swap).unwrap();
    let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success() && !text(&o).contains("warning: "), "{}", text(&o));
    // Without gradient checkpointing lorakit cannot swap: planned without it, warned about first.
    std::fs::write(&file, swap.replace("\"gradient_checkpointing\": true", "\"gradient_checkpointing\": false"))
        .unwrap();
    let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let first = String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or_default().to_string();
    assert!(
        first.starts_with("warning: ") && first.contains("`blocks_to_swap`") && first.contains("--dry-run"),
        "{first}"
    );
    // split_mode: sd-scripts' 18 blocks, more than the tiny model has — refused when it loads.
    std::fs::write(&file, preset.replace("\"split_mode\": false", "\"split_mode\": true")).unwrap();
    let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--dry-run"]);
    assert!(!o.status.success() && text(&o).contains("blocks_to_swap = 18"), "{}", text(&o));
}

#[test]
fn an_sd_scripts_flux_toml_plans_and_refusals_exit_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = chessboard_data(dir.path(), 2);
    let file = dir.path().join("flux.toml");
    let toml = |module: &str, extra: &str| {
        format!(
            "[model_arguments]\npretrained_model_name_or_path = {:?}\n[additional_network_arguments]\nnetwork_module = \"{module}\"\nnetwork_dim = 2\nnetwork_args = [\"train_blocks=single\", \"single_dim=4\"]\n[training_arguments]\ntrain_data_dir = {:?}\noutput_dir = {:?}\nresolution = \"32,32\"\ncaption_extension = \".txt\"\nt5xxl_max_token_length = 16\nmax_train_steps = 2\nseed = 1\n{extra}",
            repo("tests/fixtures/reference/flux_tiny/pipeline").display().to_string(),
            data.display().to_string(),
            dir.path().join("out").display().to_string(),
        )
    };
    std::fs::write(&file, toml("networks.lora_flux", "")).unwrap();
    let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    // sd-scripts' defaults for what the file leaves unset are said, and planned.
    assert!(
        text(&o).contains("`model_prediction_type`: not set: sd-scripts' default \"sigma_scaled\""),
        "{}",
        text(&o)
    );
    for (content, says) in [
        (toml("networks.lora", ""), "set network_module = \"networks.lora_flux\""),
        (
            toml("networks.lora_flux", "blocks_to_swap = 4\ncpu_offload_checkpointing = true\n"),
            "blocks_to_swap is not supported with cpu_offload_checkpointing",
        ),
        (toml("networks.lora_flux", "model_type = \"chroma\"\n"), "Chroma"),
    ] {
        std::fs::write(&file, content).unwrap();
        let o = lorakit(&["train", "--from-kohya", file.to_str().unwrap(), "--dry-run"]);
        assert!(!o.status.success() && text(&o).contains(says), "{says}: {}", text(&o));
        assert!(text(&o).contains("flux.toml"), "the file is named: {}", text(&o));
    }
}
