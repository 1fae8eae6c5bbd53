//! `--from-kohya` for Flux.1: kohya_ss' own Flux preset, a Flux GUI config and an sd-scripts
//! `flux_train_network.py` TOML (`tests/fixtures/kohya_ss`, see its README) import as Flux
//! configs that train what kohya would — or are refused with the reason; an sd-scripts TOML
//! naming a Flux checkpoint that is here is told by its weights.

use std::path::{Path, PathBuf};

use lorakit_train::config::TrainConfig;
use lorakit_train::kohya_import::{import_bytes, import_file, ImportNote, Imported, NoteLevel};
use lorakit_train::objective::{ModelPredictionType, TimestepSampling};

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

/// The imported table as a validated config (what `lorakit train --from-kohya` builds).
fn config(imp: &Imported) -> TrainConfig {
    let c: TrainConfig = toml::Value::Table(imp.table.clone()).try_into().unwrap();
    c.validate().unwrap_or_else(|e| panic!("{e}"));
    c
}

fn note<'a>(imp: &'a Imported, key: &str) -> &'a ImportNote {
    imp.notes.iter().find(|n| n.key == key).unwrap_or_else(|| panic!("no note on {key}: {:?}", imp.notes))
}

fn at_level(imp: &Imported, level: NoteLevel) -> Vec<&str> {
    imp.notes.iter().filter(|n| n.level == level).map(|n| n.key.as_str()).collect()
}

/// A GUI fixture with some fields replaced, imported from memory.
fn import_changed(name: &str, changes: &[(&str, serde_json::Value)]) -> Result<Imported, String> {
    let mut json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixture(name)).unwrap()).unwrap();
    for (k, v) in changes {
        json.insert(k.to_string(), v.clone());
    }
    import_bytes(serde_json::to_string(&json).unwrap().as_bytes(), Path::new("/nonexistent"))
}

#[test]
fn kohya_ss_flux_preset_imports_as_flux() {
    // presets/lora/flux1D - adamw8bit fp8.json, unchanged.
    let imp = import("flux1D - adamw8bit fp8.json");
    let c = config(&imp);
    assert_eq!(c.model.model_family.as_deref(), Some("flux"));
    assert_eq!(c.network.network_module, "networks.lora");
    assert_eq!((c.network.network_dim, c.network.network_alpha, c.network.conv_dim), (16, 16.0, None));
    assert_eq!(
        c.model.ae.as_deref(),
        Some(Path::new("put the full path to ae.sft here")),
        "paths as the file has them"
    );
    assert!(c.model.clip_l.is_some() && c.model.t5xxl.is_some());
    assert_eq!(c.model.t5xxl_max_token_length, Some(512));
    assert!(c.model.apply_t5_attn_mask);
    // The preset's objective, as given: raw predictions, guidance 1, sigmoid sampling.
    assert_eq!(c.flow.model_prediction_type, Some(ModelPredictionType::Raw));
    assert_eq!(c.flow.guidance_scale, 1.0);
    assert_eq!(c.flow.timestep_sampling, TimestepSampling::Sigmoid);
    assert_eq!(c.flow.discrete_flow_shift, 3.0);
    // text_encoder_lr 0 with unet_lr: the transformer only, so T5/CLIP-L outputs are cached.
    assert!(c.network.network_train_unet_only && !c.trains_text_encoder());
    assert!(c.training.cache_text_encoder_outputs && c.training.cache_text_encoder_outputs_to_disk);
    assert_eq!(c.optimizer.unet_lr, Some(3e-4));
    assert!(c.accelerate.fp8_base && c.accelerate.full_bf16 && c.accelerate.mixed_precision == "bf16");
    assert!(c.training.gradient_checkpointing && c.training.cache_latents_to_disk);
    assert_eq!((c.training.max_train_steps, c.save.save_every_n_steps), (1000, 50));
    assert_eq!(c.optimizer.optimizer_type, "AdamW8bit");
    // SD options the GUI passes along and flux_train_network.py ignores: dropped, with the reason.
    for key in ["min_snr_gamma", "noise_offset", "max_timestep", "clip_skip"] {
        let n = note(&imp, key);
        assert!(n.level == NoteLevel::Info && n.text.contains("flux_train_network.py does not use it"), "{n:?}");
    }
    assert_eq!((c.loss.min_snr_gamma, c.loss.noise_offset, c.model.clip_skip), (None, None, None));
    assert!(
        at_level(&imp, NoteLevel::ChangesRun).is_empty() && at_level(&imp, NoteLevel::Memory).is_empty(),
        "{:?}",
        imp.notes
    );
    let (path, prompts) = imp.prompt_file.clone().unwrap();
    assert!(path.ends_with("sample/prompt.txt") && prompts.starts_with("saruman posing"), "{path:?}");
}

#[test]
fn a_flux_gui_config_takes_the_gui_defaults_and_swaps_blocks() {
    let imp = import("flux-character.json");
    let c = config(&imp);
    assert_eq!(c.model.model_family.as_deref(), Some("flux"));
    // The GUI writes its own defaults (sigma_scaled, 3.5, sigma, 3.0): taken as given, no note.
    assert_eq!(c.flow.model_prediction_type, Some(ModelPredictionType::SigmaScaled));
    assert_eq!((c.flow.guidance_scale, c.flow.discrete_flow_shift), (3.5, 3.0));
    assert_eq!(c.flow.timestep_sampling, TimestepSampling::Sigma);
    assert!(imp.notes.iter().all(|n| n.key != "model_prediction_type" && n.key != "guidance_scale"));
    assert_eq!(c.optimizer.optimizer_type, "Adafactor");
    assert_eq!(c.optimizer.optimizer_args, vec!["relative_step=False", "scale_parameter=False", "warmup_init=False"]);
    assert_eq!(c.optimizer.lr_warmup_steps, 100.0);
    assert!(c.caches_text_encoder_outputs() && c.network.network_train_unet_only && c.accelerate.fp8_base);
    assert_eq!(c.network.train_double_block_indices.as_deref(), Some("all"));
    // blocks_to_swap 18 (a 12 GB card's setting) with gradient checkpointing: swapped as in
    // sd-scripts (9 double and 18 single blocks in host memory).
    assert_eq!(c.accelerate.blocks_to_swap, Some(18));
    assert!(c.training.gradient_checkpointing);
    assert!(
        at_level(&imp, NoteLevel::ChangesRun).is_empty() && at_level(&imp, NoteLevel::Memory).is_empty(),
        "{:?}",
        imp.notes
    );
    // The same config without gradient checkpointing: lorakit cannot swap then — imported
    // without block swap, warned about first.
    let imp = import_changed("flux-character.json", &[("gradient_checkpointing", false.into())]).unwrap();
    assert_eq!(config(&imp).accelerate.blocks_to_swap, None);
    let report = imp.report(Path::new("flux-character.json"));
    assert!(
        report[0].starts_with("warning: flux-character.json: `blocks_to_swap`: 18: lorakit swaps 18 blocks only with gradient checkpointing")
            && report[0].ends_with("the run needs the memory `lorakit train --dry-run` reports"),
        "{report:?}"
    );
}

#[test]
fn sd_scripts_flux_guide_toml_imports_as_flux_with_memory_warnings() {
    let imp = import("flux_train_network.toml");
    let c = config(&imp);
    assert_eq!(c.model.model_family.as_deref(), Some("flux"));
    assert_eq!(c.model.t5xxl.as_deref(), Some(Path::new("/models/t5xxl_fp16.safetensors")));
    assert_eq!(c.flow.timestep_sampling, TimestepSampling::FluxShift);
    assert_eq!(c.flow.model_prediction_type, Some(ModelPredictionType::Raw));
    assert_eq!(c.flow.guidance_scale, 1.0);
    assert_eq!((c.network.network_dim, c.network.network_alpha), (16, 1.0));
    assert_eq!((c.optimizer.optimizer_type.as_str(), c.optimizer.learning_rate), ("AdamW8bit", 1e-4));
    assert!(c.training.gradient_checkpointing && c.training.cache_latents);
    assert_eq!((c.accelerate.mixed_precision.as_str(), c.training.max_train_epochs), ("fp16", 10));
    assert_eq!(c.dataset.dataset_config.as_deref(), Some(Path::new("my_flux_dataset_config.toml")));
    assert_eq!(c.accelerate.blocks_to_swap, Some(18), "with gradient checkpointing, as the guide has it");
    // CLIP-L trains (no network_train_unet_only): T5-XXL's outputs are cached and CLIP-L runs
    // at every step, as in sd-scripts — nothing to warn about.
    assert!(c.trains_text_encoder() && c.caches_text_encoder_outputs());
    assert!(at_level(&imp, NoteLevel::Memory).is_empty(), "{:?}", imp.notes);
    assert!(at_level(&imp, NoteLevel::ChangesRun).is_empty(), "{:?}", imp.notes);

    // The same TOML for the transformer only, leaving the objective to sd-scripts' defaults:
    // cached as in sd-scripts, and the defaults are written out.
    let text = std::fs::read_to_string(fixture("flux_train_network.toml"))
        .unwrap()
        .replace("network_alpha = 1\n", "network_alpha = 1\nnetwork_train_unet_only = true\n")
        .replace("model_prediction_type = \"raw\"\n", "")
        .replace("guidance_scale = 1.0\n", "");
    let imp = import_bytes(text.as_bytes(), Path::new("/nonexistent")).unwrap();
    let c = config(&imp);
    assert!(c.caches_text_encoder_outputs() && !c.trains_text_encoder());
    assert_eq!((c.flow.model_prediction_type, c.flow.guidance_scale), (Some(ModelPredictionType::SigmaScaled), 3.5));
    assert!(note(&imp, "guidance_scale").text.contains("sd-scripts' default 3.5"));
    assert!(at_level(&imp, NoteLevel::Memory).is_empty(), "{:?}", imp.notes);
}

#[test]
fn flux_configs_kohya_or_lorakit_would_not_run_are_refused_with_the_reason() {
    let base = "flux1D - adamw8bit fp8.json";
    for (changes, says) in [
        (vec![("LoRA_type", "LyCORIS/LoKr".into())], "LyCORIS on Flux.1"),
        (vec![("LoRA_type", "Flux1 OFT".into())], "Flux OFT"),
        (vec![("LoRA_type", "Standard".into())], "LoRA type must be set to 'Flux1'"),
        (vec![("model_type", "chroma".into())], "Chroma"),
        (vec![("sdxl", true.into())], "sdxl and flux1_checkbox are both checked"),
        (vec![("train_t5xxl", true.into())], "T5XXL is trained"),
        (vec![("shuffle_caption", true.into())], "shuffle_caption"),
        (vec![("weighted_captions", true.into())], "weighted_captions"),
        (vec![("loss_type", "huber".into())], "huber_schedule"),
    ] {
        let err = import_changed(base, &changes).map(|i| i.table).unwrap_err();
        assert!(err.contains(says), "{changes:?}: {err}");
    }
    // Not refused: CLIP-L trained with cached outputs (T5-XXL's are cached, as sd-scripts
    // does); split_mode: the GUI's train_blocks=single and sd-scripts' 18 swapped blocks.
    let imp = import_changed(base, &[("text_encoder_lr", 1e-5.into()), ("split_mode", true.into())]).unwrap();
    let c = config(&imp);
    assert!(c.trains_text_encoder() && c.caches_text_encoder_outputs());
    assert_eq!(c.network.train_blocks.as_deref(), Some("single"), "the GUI forces train_blocks=single with split_mode");
    assert_eq!(c.accelerate.blocks_to_swap, Some(18));
    assert_eq!(note(&imp, "split_mode").level, NoteLevel::Info);
    assert!(at_level(&imp, NoteLevel::Memory).is_empty(), "{:?}", imp.notes);
}

/// An sd-scripts TOML naming `model` as its checkpoint.
fn toml_for(dir: &Path, model: &Path, module: &str) -> PathBuf {
    let path = dir.join("args.toml");
    std::fs::write(
        &path,
        format!(
            "pretrained_model_name_or_path = {:?}\nnetwork_module = \"{module}\"\nnetwork_dim = 4\nnetwork_train_unet_only = true\nseed = 3\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    path
}

#[test]
fn an_sd_scripts_toml_is_told_flux_by_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for model in
        ["tests/fixtures/reference/flux_tiny/pipeline", "tests/fixtures/reference/flux_tiny/dev_bfl.safetensors"]
    {
        // networks.lora with a Flux checkpoint: neither sd-scripts script could train it.
        let err = import_file(&toml_for(dir.path(), &repo(model), "networks.lora")).unwrap_err().to_string();
        assert!(err.contains("is a Flux.1 checkpoint") && err.contains("networks.lora_flux"), "{model}: {err}");
        let c = config(&import_file(&toml_for(dir.path(), &repo(model), "networks.lora_flux")).unwrap());
        assert_eq!(c.model.model_family.as_deref(), Some("flux"), "{model}");
    }
    // lora_flux with an SDXL checkpoint: flux_train_network.py cannot load it.
    let sdxl = repo("tests/fixtures/reference/sdxl_tiny/single_file.safetensors");
    let err = import_file(&toml_for(dir.path(), &sdxl, "networks.lora_flux")).unwrap_err().to_string();
    assert!(err.contains("is an SDXL checkpoint"), "{err}");
}
