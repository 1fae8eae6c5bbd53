//! `--from-kohya` for SDXL (Pony, Illustrious, NoobAI): kohya_ss GUI presets and configs
//! (`tests/fixtures/kohya_ss`, see its README for where each comes from) and an sd-scripts
//! `sdxl_train_network.py` TOML import as SDXL configs — or are refused as kohya refuses them.

use std::path::{Path, PathBuf};

use lorakit_train::config::{TextEncoderLr, TrainConfig};
use lorakit_train::kohya_import::{import_file, Imported, NoteLevel};

/// A path in the repository.
fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn fixture(name: &str) -> PathBuf {
    repo("tests/fixtures/kohya_ss").join(name)
}

fn import(name: &str) -> Imported {
    import_file(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn refusal(name: &str) -> String {
    match import_file(&fixture(name)) {
        Err(e) => e.to_string(),
        Ok(imp) => panic!("{name}: imported: {:?}", imp.table),
    }
}

/// The imported table as a validated config (what `lorakit train --from-kohya` builds).
fn config(imp: &Imported) -> TrainConfig {
    let c: TrainConfig = toml::Value::Table(imp.table.clone()).try_into().unwrap();
    c.validate().unwrap_or_else(|e| panic!("{e}"));
    c
}

fn note<'a>(imp: &'a Imported, key: &str) -> &'a lorakit_train::kohya_import::ImportNote {
    imp.notes.iter().find(|n| n.key == key).unwrap_or_else(|| panic!("no note on {key}: {:?}", imp.notes))
}

fn changes_run(imp: &Imported) -> Vec<&str> {
    imp.notes.iter().filter(|n| n.level == NoteLevel::ChangesRun).map(|n| n.key.as_str()).collect()
}

#[test]
fn kohya_ss_sdxl_presets_import_as_sdxl() {
    // presets/lora/SDXL - LoRA AI_characters standard v1.1.json
    let imp = import("SDXL - LoRA AI_characters standard v1.1.json");
    let c = config(&imp);
    assert_eq!(c.model.model_family.as_deref(), Some("sdxl"));
    assert_eq!(c.network.network_module, "networks.lora");
    assert_eq!((c.network.network_dim, c.network.network_alpha, c.network.conv_dim), (32, 32.0, None));
    assert_eq!(c.dataset.resolution, "1024,1024");
    assert_eq!((c.dataset.min_bucket_reso, c.dataset.max_bucket_reso, c.dataset.bucket_reso_steps), (256, 2048, 64));
    assert_eq!(c.accelerate.mixed_precision, "fp16");
    assert!(c.accelerate.no_half_vae, "sdxl_no_half_vae");
    assert!(c.training.gradient_checkpointing && c.training.cache_latents_to_disk);
    assert_eq!(c.optimizer.text_encoder_lr, Some(TextEncoderLr::All(3e-5)));
    assert_eq!(c.optimizer.unet_lr, Some(3e-5));
    assert!(c.trains_text_encoder() && !c.caches_text_encoder_outputs());
    assert_eq!(c.training.max_train_epochs, 50);
    assert_eq!(c.loss.min_snr_gamma, Some(5.0));
    assert_eq!(c.model.clip_skip, None);
    let clip = note(&imp, "clip_skip");
    assert!(clip.level == NoteLevel::Info && clip.text.starts_with("1: "), "{clip:?}");
    assert!(changes_run(&imp).is_empty(), "{:?}", imp.notes);

    // presets/lora/SDXL - LoRA AI_Now prodigy v1.0.json: bucket step 32 is fine for SDXL.
    let c = config(&import("SDXL - LoRA AI_Now prodigy v1.0.json"));
    assert_eq!(c.model.model_family.as_deref(), Some("sdxl"));
    assert_eq!(c.dataset.bucket_reso_steps, 32);
    assert_eq!(c.optimizer.optimizer_type, "Prodigy");
    assert_eq!(
        c.optimizer.optimizer_args,
        vec!["weight_decay=0.01", "decouple=True", "d0=0.0001", "use_bias_correction=True"]
    );
    assert_eq!((c.network.network_dim, c.network.network_alpha), (32, 16.0));
}

#[test]
fn kohya_ss_sdxl_presets_are_refused_where_kohya_or_lorakit_would_not_run_them() {
    // presets/lora/locon-dadaptation-sdxl.json: bucket_reso_steps = 1 with buckets on, which
    // sdxl_train_network.py refuses ("it must be divisible by 32").
    let err = refusal("locon-dadaptation-sdxl.json");
    assert!(err.contains("bucket_reso_steps = 1") && err.contains("multiple of 32"), "{err}");
    assert!(err.contains("locon-dadaptation-sdxl.json"), "the file is named: {err}");
    // presets/lora/SDXL - LoKR v1.0.json: LyCORIS LoKr with use_cp (Tucker), named.
    let err = refusal("SDXL - LoKR v1.0.json");
    assert!(err.contains("use_tucker / use_cp"), "{err}");
}

#[test]
fn a_pony_character_config_imports_with_its_prompts() {
    let imp = import("pony-character.json");
    let c = config(&imp);
    assert_eq!(c.model.model_family.as_deref(), Some("sdxl"));
    assert!(!c.model.v_parameterization);
    // Pony's clip skip 2 is what SDXL does anyway: dropped, with the reason.
    assert_eq!(c.model.clip_skip, None);
    let clip = note(&imp, "clip_skip");
    assert!(clip.text.starts_with("2: ") && clip.text.contains("Pony"), "{clip:?}");
    assert_eq!(c.optimizer.optimizer_type, "AdamW8bit");
    assert_eq!(
        (c.optimizer.unet_lr, c.optimizer.text_encoder_lr.clone()),
        (Some(1e-4), Some(TextEncoderLr::All(5e-5)))
    );
    assert_eq!(c.optimizer.lr_warmup_steps, 0.05);
    assert!(c.dataset.shuffle_caption && c.dataset.keep_tokens == 1);
    assert_eq!(c.training.max_token_length, 225);
    assert!(c.accelerate.no_half_vae && c.accelerate.mixed_precision == "bf16");
    assert_eq!(c.loss.noise_offset, Some(0.0357));
    assert_eq!(c.training.seed, 42);
    // The dataset folder is not on this machine: epochs, said so.
    assert_eq!(c.training.max_train_epochs, 10);
    assert_eq!(note(&imp, "epoch").level, NoteLevel::Info);
    let (path, prompts) = imp.prompt_file.clone().unwrap();
    assert_eq!(path, Path::new("/outputs/mychar/sample/prompt.txt"));
    assert!(prompts.starts_with("score_9, score_8_up, score_7_up"), "{prompts}");
    assert!(changes_run(&imp).is_empty(), "{:?}", imp.notes);
}

#[test]
fn a_noobai_vpred_style_config_imports_v_prediction_and_cached_text_encoders() {
    let imp = import("noobai-vpred-style.json");
    let c = config(&imp);
    assert_eq!(c.model.model_family.as_deref(), Some("sdxl"));
    assert!(c.model.v_parameterization && c.loss.zero_terminal_snr, "v-pred with zero terminal SNR");
    assert!(c.training.cache_text_encoder_outputs && c.network.network_train_unet_only);
    assert!(!c.trains_text_encoder());
    assert_eq!((c.network.conv_dim, c.network.conv_alpha), (Some(8), Some(4.0)), "Kohya LoCon");
    assert_eq!(c.model.clip_skip, None);
    assert!(c.dataset.flip_aug && !c.dataset.shuffle_caption);
    assert!(changes_run(&imp).is_empty(), "{:?}", imp.notes);
}

#[test]
fn an_sdxl_train_network_toml_is_told_by_its_sdxl_only_arguments() {
    let imp = import("illustrious-sdxl_train_network.toml");
    let c = config(&imp);
    assert_eq!(c.model.model_family.as_deref(), Some("sdxl"));
    assert!(note(&imp, "cache_text_encoder_outputs").text.contains("sdxl_train_network.py"));
    assert!(c.training.cache_text_encoder_outputs && c.network.network_train_unet_only);
    assert!(c.training.cache_latents_to_disk && c.accelerate.no_half_vae);
    assert_eq!(c.model.clip_skip, None);
    assert_eq!(note(&imp, "clip_skip").level, NoteLevel::Info);
    assert_eq!((c.network.network_dim, c.network.network_alpha), (32, 16.0));
    assert_eq!(c.optimizer.optimizer_type, "AdamW8bit");
    assert_eq!(c.training.max_train_epochs, 10);
    assert_eq!(c.samples.sample_prompts.as_deref(), Some(Path::new("/outputs/mychar/sample/prompt.txt")));
    assert!(changes_run(&imp).is_empty(), "{:?}", imp.notes);
}

/// An sd-scripts TOML naming `model` as its checkpoint, with `extra` lines.
fn toml_for(dir: &Path, model: &Path, extra: &str) -> PathBuf {
    let path = dir.join("args.toml");
    std::fs::write(
        &path,
        format!(
            "[model_arguments]\npretrained_model_name_or_path = {:?}\n[additional_network_arguments]\nnetwork_module = \"networks.lora\"\nnetwork_dim = 8\n[training_arguments]\nclip_skip = 2\nseed = 3\n{extra}",
            model.display().to_string()
        ),
    )
    .unwrap();
    path
}

#[test]
fn an_sd_scripts_toml_is_told_by_its_checkpoint_when_it_is_here() {
    let dir = tempfile::tempdir().unwrap();
    // An SDXL single file and an SDXL diffusers folder: SDXL configs, clip_skip dropped.
    for model in
        ["tests/fixtures/reference/sdxl_tiny/single_file.safetensors", "tests/fixtures/reference/sdxl_tiny/diffusers"]
    {
        let imp = import_file(&toml_for(dir.path(), &repo(model), "")).unwrap();
        let c = config(&imp);
        assert_eq!(c.model.model_family.as_deref(), Some("sdxl"), "{model}");
        assert_eq!(c.model.clip_skip, None, "{model}");
        assert!(note(&imp, "pretrained_model_name_or_path").text.contains("is an SDXL checkpoint"), "{model}");
    }
    // v2 with an SDXL checkpoint: refused as sdxl_train_network.py refuses it.
    let sdxl = repo("tests/fixtures/reference/sdxl_tiny/single_file.safetensors");
    let err = import_file(&toml_for(dir.path(), &sdxl, "v2 = true\n")).unwrap_err().to_string();
    assert!(err.contains("v2 cannot be enabled in SDXL training"), "{err}");
    // An SD 1.5 checkpoint: clip_skip stays; the SDXL-only caching argument is ignored, as
    // train_network.py ignores it.
    let sd15 = repo("examples/quickstart/tiny-sd15");
    let imp = import_file(&toml_for(dir.path(), &sd15, "cache_text_encoder_outputs = true\n")).unwrap();
    let c = config(&imp);
    assert_eq!((c.model.model_family.as_deref(), c.model.clip_skip), (None, Some(2)));
    assert!(!c.caches_text_encoder_outputs());
    assert!(note(&imp, "cache_text_encoder_outputs").text.contains("train_network.py"));
    // A checkpoint that is not here: the TOML alone decides (clip_skip kept, family unset).
    let imp = import_file(&toml_for(dir.path(), Path::new("/nowhere/model.safetensors"), "")).unwrap();
    let c = config(&imp);
    assert_eq!((c.model.model_family.as_deref(), c.model.clip_skip), (None, Some(2)));
}
