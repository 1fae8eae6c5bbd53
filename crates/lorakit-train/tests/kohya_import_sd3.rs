//! `--from-kohya` for SD3 / SD3.5: sd-scripts `sd3_train_network.py` TOMLs (an SD3 Medium run
//! and an SD3.5 Medium run with `lora_sd3`'s network arguments) and a kohya_ss GUI config with
//! `sd3_checkbox` import as SD3 configs that train what kohya would: every SD or Flux.1 option
//! the SD3 script ignores is dropped with a note, what sd-scripts or lorakit would not run is
//! refused with the reason, and an SD3 checkpoint tells an sd-scripts TOML apart.

use std::path::{Path, PathBuf};

use lorakit_train::config::{TextEncoderLr, TrainConfig};
use lorakit_train::kohya_import::{import_bytes, import_file, ImportNote, Imported, NoteLevel};
use lorakit_train::objective::WeightingScheme;

/// A path in the repository.
fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn import(text: &str) -> Result<Imported, String> {
    import_bytes(text.as_bytes(), Path::new("/nonexistent"))
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

/// An SD3 Medium LoRA as an sd-scripts `--config_file` (sectioned, as the kohya_ss GUI writes
/// it): separate text-encoder and VAE files, the transformer only with cached text-encoder outputs,
/// SD3's logit-normal draw with a shift, masked CLIP and T5 padding.
const SD3_MEDIUM: &str = r#"
[model_arguments]
pretrained_model_name_or_path = "/models/sd3_medium.safetensors"
clip_l = "/models/clip_l.safetensors"
clip_g = "/models/clip_g.safetensors"
t5xxl = "/models/t5xxl_fp16.safetensors"
vae = "/models/sd3_vae.safetensors"

[additional_network_arguments]
network_module = "networks.lora_sd3"
network_dim = 16
network_alpha = 8
network_train_unet_only = true

[optimizer_arguments]
optimizer_type = "AdamW8bit"
learning_rate = 1e-4
lr_scheduler = "constant"

[training_arguments]
mixed_precision = "bf16"
save_precision = "bf16"
gradient_checkpointing = true
cache_latents_to_disk = true
cache_text_encoder_outputs = true
cache_text_encoder_outputs_to_disk = true
sdpa = true
max_train_epochs = 8
save_every_n_epochs = 2
seed = 42
output_dir = "/outputs"
output_name = "sd3m-lora"

[dataset_arguments]
dataset_config = "/datasets/sd3m.toml"

[sd3_arguments]
weighting_scheme = "logit_normal"
apply_lg_attn_mask = true
apply_t5_attn_mask = true
t5xxl_max_token_length = 256
training_shift = 3.0
"#;

#[test]
fn an_sd3_medium_toml_imports_as_the_sd3_config_kohya_would_train() {
    let imp = import(SD3_MEDIUM).unwrap();
    // The whole imported config: every argument in its lorakit key, sd-scripts' defaults for
    // what the file leaves out (caption extension, no buckets, no latent cache in memory, ddim
    // samples, no logging), lora_sd3 as lorakit's networks.lora on the SD3 model.
    let expected: toml::Table = r#"
[accelerate]
mixed_precision = "bf16"
[dataset]
caption_extension = ".caption"
dataset_config = "/datasets/sd3m.toml"
enable_bucket = false
[flow]
training_shift = 3.0
weighting_scheme = "logit_normal"
[folders]
output_dir = "/outputs"
output_name = "sd3m-lora"
[logging]
log_with = "none"
[model]
apply_lg_attn_mask = true
apply_t5_attn_mask = true
clip_g = "/models/clip_g.safetensors"
clip_l = "/models/clip_l.safetensors"
model_family = "sd3"
pretrained_model_name_or_path = "/models/sd3_medium.safetensors"
t5xxl = "/models/t5xxl_fp16.safetensors"
t5xxl_max_token_length = 256
vae = "/models/sd3_vae.safetensors"
[network]
network_alpha = 8.0
network_dim = 16
network_module = "networks.lora"
network_train_unet_only = true
[optimizer]
learning_rate = 0.0001
lr_scheduler = "constant"
optimizer_type = "AdamW8bit"
[samples]
sample_sampler = "ddim"
[save]
save_every_n_epochs = 2
save_precision = "bf16"
[training]
cache_latents = false
cache_latents_to_disk = true
cache_text_encoder_outputs = true
cache_text_encoder_outputs_to_disk = true
gradient_checkpointing = true
max_train_epochs = 8
seed = 42
"#
    .parse()
    .unwrap();
    assert_eq!(imp.table, expected, "imported:\n{}", toml::to_string(&imp.table).unwrap());
    assert_eq!(imp.notes, vec![ImportNote { level: NoteLevel::Cosmetic, key: "sdpa".into(), text: String::new() }]);
    let c = config(&imp);
    assert_eq!(c.model.model_family.as_deref(), Some("sd3"));
    assert_eq!(c.flow.weighting_scheme, WeightingScheme::LogitNormal);
    assert!(c.caches_text_encoder_outputs() && !c.trains_text_encoder());

    // The family comes from the network module alone: nothing else needs to say SD3.
    let c = config(&import("network_module = \"networks.lora_sd3\"\nnetwork_dim = 4\nseed = 1\n").unwrap());
    assert_eq!(c.model.model_family.as_deref(), Some("sd3"));
    assert_eq!(c.network.network_module, "networks.lora");
}

/// An SD3.5 Medium LoRA in sd-scripts' flat layout: `lora_sd3`'s rank-per-layer-type,
/// embedder and block arguments, T5-XXL trained with per-encoder rates, SD3.5 Medium's position
/// options, the text encoders' dropout — and the SD and Flux.1 options people leave in a
/// config, which `sd3_train_network.py` reads but never uses.
const SD35_MEDIUM: &str = r#"
pretrained_model_name_or_path = "/models/sd3.5_medium.safetensors"
clip_l = "/models/clip_l.safetensors"
clip_g = "/models/clip_g.safetensors"
t5xxl = "/models/t5xxl_fp16.safetensors"
network_module = "networks.lora_sd3"
network_dim = 32
network_alpha = 16
network_args = ["context_attn_dim=16", "context_mlp_dim=0", "context_mod_dim=4", "x_attn_dim=32", "x_mlp_dim=32", "x_mod_dim=8", "emb_dims=[0,0,4,0,4,4]", "train_block_indices=0-11,20", "split_qkv=True", "train_t5xxl=True", "rank_dropout=0.1", "module_dropout=0.05", "conv_dim=4", "loraplus_lr_ratio=4", "down_lr_weight=1,1,1", "verbose=True"]
unet_lr = 1e-4
text_encoder_lr = [1e-5, 5e-6]
optimizer_type = "AdamW"
learning_rate = 1e-4
mixed_precision = "bf16"
fp8_base = true
gradient_checkpointing = true
blocks_to_swap = 10
resolution = "1024,1024"
enable_bucket = true
bucket_reso_steps = 64
pos_emb_random_crop_rate = 0.2
enable_scaled_pos_embed = true
clip_l_dropout_rate = 0.1
clip_g_dropout_rate = 0.1
t5_dropout_rate = 0.2
weighting_scheme = "mode"
mode_scale = 1.1
min_timestep = 100
max_timestep = 900
max_train_steps = 2000
seed = 7
min_snr_gamma = 5
noise_offset = 0.05
multires_noise_iterations = 6
ip_noise_gamma = 0.1
clip_skip = 2
max_token_length = 225
v_parameterization = true
zero_terminal_snr = true
no_half_vae = true
save_clip = true
t5xxl_dtype = "bf16"
guidance_scale = 3.5
timestep_sampling = "shift"
ae = "/models/ae.safetensors"
mem_eff_save = true
"#;

#[test]
fn an_sd35_medium_toml_maps_lora_sd3_and_notes_what_sd3_ignores() {
    let imp = import(SD35_MEDIUM).unwrap();
    let c = config(&imp);
    assert_eq!(c.model.model_family.as_deref(), Some("sd3"));
    let n = &c.network;
    assert_eq!(n.network_module, "networks.lora");
    assert_eq!(
        (n.context_attn_dim, n.context_mlp_dim, n.context_mod_dim, n.x_attn_dim, n.x_mlp_dim, n.x_mod_dim),
        (Some(16), Some(0), Some(4), Some(32), Some(32), Some(8))
    );
    assert_eq!(n.emb_dims.as_deref(), Some("[0,0,4,0,4,4]"));
    assert_eq!(n.train_block_indices.as_deref(), Some("0-11,20"));
    assert!(n.split_qkv && n.train_t5xxl);
    assert_eq!((n.rank_dropout, n.module_dropout, n.loraplus_lr_ratio), (Some(0.1), Some(0.05), Some(4.0)));
    // emb_dims reaches the patch embedding, a conv: it takes conv_dim, with lora_sd3's
    // conv_alpha of 1.0 when none is given.
    assert_eq!((n.conv_dim, n.conv_alpha), (Some(4), Some(1.0)));
    assert_eq!(n.down_lr_weight, None, "lora_sd3 does not read U-Net block weights");
    assert_eq!(note(&imp, "network_args down_lr_weight=1,1,1").level, NoteLevel::Info);
    assert_eq!(note(&imp, "network_args verbose=True").level, NoteLevel::Cosmetic);
    assert!(note(&imp, "split_qkv").text.contains("alpha × 3"));
    // [CLIP-L, CLIP-G] with T5-XXL trained: lora_sd3 repeats the last rate for T5-XXL.
    assert_eq!(c.optimizer.text_encoder_lr, Some(TextEncoderLr::PerEncoder(vec![1e-5, 5e-6, 5e-6])));
    assert_eq!(c.text_encoder_lrs(), vec![1e-5, 5e-6, 5e-6]);
    let lr = note(&imp, "text_encoder_lr");
    assert!(lr.text.contains("CLIP-L 0.00001, CLIP-G 0.000005, T5-XXL 0.000005"), "{lr:?}");
    assert_eq!(c.optimizer.unet_lr, Some(1e-4));
    // SD3's own options.
    let m = &c.model;
    assert_eq!(
        (m.clip_l_dropout_rate, m.clip_g_dropout_rate, m.t5_dropout_rate, m.pos_emb_random_crop_rate),
        (0.1, 0.1, 0.2, 0.2)
    );
    assert!(m.enable_scaled_pos_embed && !m.apply_lg_attn_mask);
    assert_eq!((c.flow.weighting_scheme, c.flow.mode_scale), (WeightingScheme::Mode, 1.1));
    // SD3 draws its timesteps between min_timestep and max_timestep (Flux.1 ignores them).
    assert_eq!((c.training.min_timestep, c.training.max_timestep), (100, 900));
    assert!(c.accelerate.fp8_base && c.training.gradient_checkpointing);
    // Block swap with gradient checkpointing: imported as it is (sd-scripts' MMDiT swaps the
    // last N joint blocks, as lorakit's does), nothing to warn about.
    assert_eq!(c.accelerate.blocks_to_swap, Some(10));
    assert!(imp.notes.iter().all(|n| n.key != "blocks_to_swap"), "{:?}", imp.notes);
    assert!(at_level(&imp, NoteLevel::Memory).is_empty(), "{:?}", imp.notes);
    assert!(at_level(&imp, NoteLevel::ChangesRun).is_empty(), "{:?}", imp.notes);

    // SD options sd3_train_network.py reads but never uses: dropped, with the reason.
    for key in [
        "min_snr_gamma",
        "noise_offset",
        "multires_noise_iterations",
        "ip_noise_gamma",
        "clip_skip",
        "max_token_length",
        "v_parameterization",
        "zero_terminal_snr",
    ] {
        let n = note(&imp, key);
        assert!(
            n.level == NoteLevel::Info
                && n.text.contains("sd3_train_network.py does not use it")
                && n.text.ends_with("no effect in kohya's run, none here"),
            "{n:?}"
        );
    }
    assert!(note(&imp, "ip_noise_gamma").text.contains("no input perturbation"));
    assert_eq!((c.loss.min_snr_gamma, c.loss.noise_offset, c.loss.multires_noise_iterations), (None, None, None));
    assert_eq!((c.loss.ip_noise_gamma, c.model.clip_skip), (None, None));
    assert!(!c.model.v_parameterization && !c.loss.zero_terminal_snr);
    assert_eq!(c.training.max_token_length, TrainConfig::default().training.max_token_length);
    // no_half_vae does something in kohya's SD3 run, but lorakit has no such switch for SD3.
    assert!(!c.accelerate.no_half_vae);
    assert!(note(&imp, "no_half_vae").text.contains("keeps the VAE in f32"));
    // sd-scripts' "[DOES NOT WORK]" arguments.
    for key in ["save_clip", "t5xxl_dtype"] {
        assert!(note(&imp, key).text.contains("DOES NOT WORK"), "{key}");
    }
    // Flux.1's arguments: sd3_train_network.py ignores them.
    for key in ["guidance_scale", "timestep_sampling", "ae"] {
        let n = note(&imp, key);
        assert!(n.text.contains("flux_train_network.py (Flux.1); sd3_train_network.py ignores it"), "{n:?}");
    }
    assert!(note(&imp, "mem_eff_save").text.contains("Flux.1 scripts"));
    assert_eq!(c.flow, {
        let mut f = TrainConfig::default().flow;
        f.weighting_scheme = WeightingScheme::Mode;
        f.mode_scale = 1.1;
        f
    });
    assert_eq!(c.model.ae, None);
}

#[test]
fn sd3_text_encoder_rates_follow_lora_sd3() {
    let rates = |list: &str| {
        let imp = import(&format!(
            "network_module = \"networks.lora_sd3\"\nnetwork_args = [\"train_t5xxl=True\"]\ntext_encoder_lr = {list}\nseed = 1\n"
        ))
        .unwrap();
        (config(&imp).optimizer.text_encoder_lr, imp.notes.iter().any(|n| n.key == "text_encoder_lr"))
    };
    // One value: every encoder; three: one each; more: the first three.
    assert_eq!(rates("2e-5"), (Some(TextEncoderLr::All(2e-5)), false));
    assert_eq!(rates("[2e-5]"), (Some(TextEncoderLr::All(2e-5)), false));
    assert_eq!(rates("[1e-5, 2e-5, 3e-5]"), (Some(TextEncoderLr::PerEncoder(vec![1e-5, 2e-5, 3e-5])), false));
    assert_eq!(rates("[1e-5, 2e-5, 3e-5, 4e-5]"), (Some(TextEncoderLr::PerEncoder(vec![1e-5, 2e-5, 3e-5])), true));
    assert_eq!(rates("[]"), (None, false));
    // T5-XXL's own rate without train_t5xxl: unused, said so.
    let imp =
        import("network_module = \"networks.lora_sd3\"\ntext_encoder_lr = [1e-5, 1e-5, 3e-5]\nseed = 1\n").unwrap();
    assert!(note(&imp, "text_encoder_lr")
        .text
        .contains("T5-XXL's, which trains only with network_args train_t5xxl=True"));
}

/// A current kohya_ss GUI config (every field, as its "Save" writes them; `flux-character.json`
/// in `tests/fixtures/kohya_ss`) switched to SD3.5 Large: the SD3 box, LoRA type Standard and
/// the SD3 accordion's fields. The Flux fields it still holds are not passed for SD3.
fn sd3_gui(changes: &[(&str, serde_json::Value)]) -> Result<Imported, String> {
    let mut json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(repo("tests/fixtures/kohya_ss/flux-character.json")).unwrap()).unwrap();
    for (k, v) in [
        ("flux1_checkbox", false.into()),
        ("sd3_checkbox", true.into()),
        ("LoRA_type", "Standard".into()),
        ("pretrained_model_name_or_path", "/models/sd3.5_large.safetensors".into()),
        ("sd3_clip_l", "/models/clip_l.safetensors".into()),
        ("clip_g", "/models/clip_g.safetensors".into()),
        ("sd3_t5xxl", "/models/t5xxl_fp16.safetensors".into()),
        ("sd3_cache_text_encoder_outputs", true.into()),
        ("sd3_cache_text_encoder_outputs_to_disk", true.into()),
        ("sd3_text_encoder_batch_size", 4.into()),
        ("sd3_clip_l_dropout_rate", 0.0.into()),
        ("clip_g_dropout_rate", 0.0.into()),
        ("sd3_t5_dropout_rate", 0.0.into()),
        ("weighting_scheme", "logit_normal".into()),
        ("logit_mean", 0.0.into()),
        ("logit_std", 1.0.into()),
        ("mode_scale", 1.29.into()),
        ("sd3_enable_scaled_pos_embed", false.into()),
        ("pos_emb_random_crop_rate", 0.0.into()),
        ("save_clip", false.into()),
        ("save_t5xxl", false.into()),
        ("t5xxl_device", "".into()),
        ("t5xxl_dtype", "bf16".into()),
        ("sd3_fused_backward_pass", true.into()),
        ("sd3_disable_mmap_load_safetensors", true.into()),
    ] {
        json.insert(k.to_string(), v);
    }
    for (k, v) in changes {
        json.insert(k.to_string(), v.clone());
    }
    import_bytes(serde_json::to_string(&json).unwrap().as_bytes(), Path::new("/nonexistent"))
}

#[test]
fn a_gui_config_with_sd3_checkbox_imports_what_sd3_train_network_would_run() {
    let imp = sd3_gui(&[]).unwrap();
    let c = config(&imp);
    assert_eq!(c.model.model_family.as_deref(), Some("sd3"));
    assert_eq!(c.network.network_module, "networks.lora");
    assert_eq!((c.network.network_dim, c.network.network_alpha), (16, 16.0));
    // The accordion's fields under sd-scripts' names (sd3_clip_l → clip_l, …).
    assert_eq!(c.model.clip_l.as_deref(), Some(Path::new("/models/clip_l.safetensors")));
    assert_eq!(c.model.clip_g.as_deref(), Some(Path::new("/models/clip_g.safetensors")));
    assert_eq!(c.model.t5xxl.as_deref(), Some(Path::new("/models/t5xxl_fp16.safetensors")));
    assert_eq!(
        (c.flow.weighting_scheme, c.flow.logit_std, c.flow.mode_scale),
        (WeightingScheme::LogitNormal, 1.0, 1.29)
    );
    assert!(c.training.cache_text_encoder_outputs && c.training.cache_text_encoder_outputs_to_disk);
    // text_encoder_lr 0 with unet_lr: the transformer only (so caching is allowed).
    assert!(c.network.network_train_unet_only && !c.trains_text_encoder());
    // The GUI passes no T5 length, mask or shift for SD3: sd-scripts' defaults, which lorakit's are.
    assert_eq!((c.model.t5xxl_max_token_length, c.model.apply_t5_attn_mask, c.flow.training_shift), (None, false, 1.0));
    // Flux fields the file still holds are not passed for SD3.
    assert_eq!((c.model.ae.as_deref(), c.flow.guidance_scale), (None, TrainConfig::default().flow.guidance_scale));
    assert!(imp.notes.iter().all(|n| !["ae", "guidance_scale", "timestep_sampling"].contains(&n.key.as_str())));
    // What the GUI passes along and SD3 ignores: clip_skip, max_token_length (noted).
    for key in ["clip_skip", "max_token_length"] {
        assert!(note(&imp, key).text.contains("sd3_train_network.py does not use it"), "{key}");
    }
    // sd3_fused_backward_pass with Adafactor: sd-scripts accepts it, a LoRA run does not use it.
    assert_eq!(note(&imp, "fused_backward_pass").level, NoteLevel::Cosmetic);
    // The GUI's blocks_to_swap 18, with its gradient checkpointing: swapped as in kohya's run.
    assert!(c.training.gradient_checkpointing);
    assert_eq!(c.accelerate.blocks_to_swap, Some(18));
    assert!(at_level(&imp, NoteLevel::Memory).is_empty(), "{:?}", imp.notes);
    assert!(at_level(&imp, NoteLevel::ChangesRun).is_empty(), "{:?}", imp.notes);
    assert!(note(&imp, "t5xxl_dtype").text.contains("DOES NOT WORK"));

    // Text encoders trained with the GUI's [text_encoder_lr, t5xxl_lr]: lora_sd3 reads two rates
    // as [CLIP-L, CLIP-G + T5-XXL] — CLIP-G trains at t5xxl_lr, as in kohya's run.
    let imp = sd3_gui(&[
        ("text_encoder_lr", 1e-5.into()),
        ("t5xxl_lr", 2e-5.into()),
        ("sd3_cache_text_encoder_outputs", false.into()),
        ("sd3_cache_text_encoder_outputs_to_disk", false.into()),
        ("sd3_clip_l_dropout_rate", 0.1.into()),
        ("sd3_t5_dropout_rate", 0.2.into()),
        ("sd3_enable_scaled_pos_embed", true.into()),
        ("additional_parameters", "--apply_lg_attn_mask --training_shift 3.0".into()),
    ])
    .unwrap();
    let c = config(&imp);
    assert!(c.trains_text_encoder() && c.trains_unet());
    assert_eq!(c.text_encoder_lrs(), vec![1e-5, 2e-5, 2e-5]);
    assert!(note(&imp, "text_encoder_lr").text.contains("CLIP-G 0.00002"));
    assert_eq!((c.model.clip_l_dropout_rate, c.model.t5_dropout_rate), (0.1, 0.2));
    assert!(c.model.enable_scaled_pos_embed && c.model.apply_lg_attn_mask);
    assert_eq!(c.flow.training_shift, 3.0);

    // Kohya LoCon on SD3: its conv rank reaches no layer (the patch embedding needs emb_dims).
    let imp = sd3_gui(&[("LoRA_type", "Kohya LoCon".into()), ("conv_dim", 8.into())]).unwrap();
    let c = config(&imp);
    assert_eq!(c.network.conv_dim, None);
    assert!(note(&imp, "network_args conv_dim=8").text.contains("emb_dims"));
}

#[test]
fn sd3_gui_configs_kohya_or_lorakit_would_not_run_are_refused_with_the_reason() {
    for (changes, says) in [
        (vec![("sdxl", true.into())], "sdxl and sd3_checkbox are both checked"),
        (vec![("flux1_checkbox", true.into()), ("LoRA_type", "Flux1".into())], "flux1_checkbox and sd3_checkbox"),
        (vec![("LoRA_type", "LyCORIS/LoKr".into())], "networks.lora_sd3"),
        (vec![("weighted_captions", true.into())], "SD3 tokenizer has no weighted tokenization"),
        (vec![("shuffle_caption", true.into())], "shuffle_caption"),
        (vec![("loss_type", "huber".into())], "Huber schedule 'snr' is not supported"),
        (vec![("optimizer", "AdamW".into())], "fused_backward_pass currently only works with optimizer_type Adafactor"),
        (vec![("bucket_reso_steps", 48.into())], "divisible by 32"),
    ] {
        let err = sd3_gui(&changes).map(|i| i.table).unwrap_err();
        assert!(err.contains(says), "{changes:?}: {err}");
    }
}

/// `SD3_MEDIUM` with `extra` arguments appended to its last section.
fn medium(extra: &str) -> Result<Imported, String> {
    import(&format!("{SD3_MEDIUM}{extra}"))
}

#[test]
fn sd3_tomls_kohya_or_lorakit_would_not_run_are_refused_with_the_reason() {
    for (extra, says) in [
        ("fp8_base_unet = true\n", "fp8_base_unet = true: lorakit stores the transformer in fp8"),
        ("cpu_offload_checkpointing = true\n", "unexpected keyword argument 'cpu_offload'"),
        (
            "cpu_offload_checkpointing = true\nblocks_to_swap = 4\n",
            "blocks_to_swap is not supported with cpu_offload_checkpointing",
        ),
        ("weighted_captions = true\n", "weighted_captions"),
        ("loss_type = \"smooth_l1\"\n", "huber_schedule"),
        ("enable_bucket = true\nbucket_reso_steps = 16\n", "divisible by 32"),
        ("network_args = [\"train_t5xxl=True\"]\n", "T5XXL is trained, so cache_text_encoder_outputs cannot be used"),
        ("caption_dropout_rate = 0.1\n", "sd3_train_network.py refuses this"),
        ("fused_backward_pass = true\n", "fused_backward_pass"),
    ] {
        let err = medium(extra).map(|i| i.table).unwrap_err();
        assert!(err.contains(says), "{extra}: {err}");
    }
    // cpu_offload_checkpointing without gradient checkpointing: sd-scripts does not use it.
    let imp =
        import(&SD3_MEDIUM.replace("gradient_checkpointing = true\n", "cpu_offload_checkpointing = true\n")).unwrap();
    assert_eq!(note(&imp, "cpu_offload_checkpointing").level, NoteLevel::Info);
    // LyCORIS or networks.lora with SD3's arguments: not SD3's network.
    let err = import(&SD3_MEDIUM.replace("networks.lora_sd3", "lycoris.kohya")).unwrap_err();
    assert!(err.contains("LyCORIS on SD3") && err.contains("it sets clip_g"), "{err}");
    let err = import(&SD3_MEDIUM.replace("networks.lora_sd3", "networks.lora")).unwrap_err();
    assert!(err.contains("set network_module = \"networks.lora_sd3\" for an SD3 LoRA"), "{err}");
    // Text-encoder paths without a network module say which modules would take them.
    let err = import("clip_l = \"/m/clip_l.safetensors\"\nnetwork_dim = 4\n").unwrap_err();
    assert!(err.contains("networks.lora_flux") && err.contains("networks.lora_sd3"), "{err}");
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
fn an_sd_scripts_toml_is_told_sd3_by_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let sd3 = repo("tests/fixtures/reference/sd3_tiny/sd3m.safetensors");
    // networks.lora with an SD3 checkpoint: train_network.py's LoRA finds no MMDiT layer.
    let err = import_file(&toml_for(dir.path(), &sd3, "networks.lora")).unwrap_err().to_string();
    assert!(err.contains("is an SD3 checkpoint") && err.contains("networks.lora_sd3"), "{err}");
    let c = config(&import_file(&toml_for(dir.path(), &sd3, "networks.lora_sd3")).unwrap());
    assert_eq!(c.model.model_family.as_deref(), Some("sd3"));
    // The other flow family's network, or an SD3 network with a Flux.1 checkpoint.
    let err = import_file(&toml_for(dir.path(), &sd3, "networks.lora_flux")).unwrap_err().to_string();
    assert!(err.contains("is an SD3 checkpoint: flux_train_network.py cannot load it"), "{err}");
    let flux = repo("tests/fixtures/reference/flux_tiny/dev_bfl.safetensors");
    let err = import_file(&toml_for(dir.path(), &flux, "networks.lora_sd3")).unwrap_err().to_string();
    assert!(err.contains("is a Flux.1 checkpoint: sd3_train_network.py cannot load it"), "{err}");
}
