//! A kohya_ss GUI LoRA config (the JSON its "Save" button writes) → the sd-scripts arguments the
//! GUI itself would pass to `train_network.py`, following `kohya_gui/lora_gui.py` `train_model`:
//! - `LoRA_type` → `network_module` + `network_args` (Standard: no conv modules; Kohya LoCon:
//!   `conv_dim`/`conv_alpha`; LyCORIS types: `lycoris.kohya` with `algo` and its options);
//! - the model family from `sdxl`, `v2`, `flux1_checkbox`, `sd3_checkbox`, …; with `sdxl` the GUI
//!   runs `sdxl_train_network.py` and passes its "SDXL Specific Parameters"
//!   (`sdxl_cache_text_encoder_outputs` → `cache_text_encoder_outputs`, `sdxl_no_half_vae` →
//!   `no_half_vae`), which it drops for other families; with `flux1_checkbox` (and `LoRA_type`
//!   Flux1) it runs `flux_train_network.py` with `networks.lora_flux`, the Flux accordion's fields
//!   and the rank / block-index fields as `network_args`; with `sd3_checkbox` it runs
//!   `sd3_train_network.py` with `networks.lora_sd3` (LoRA types Standard and Kohya LoCon) and
//!   the SD3 accordion's fields (`sd3_clip_l` → `clip_l`, `sd3_t5_dropout_rate` →
//!   `t5_dropout_rate`, …);
//! - `epoch` only when `max_train_steps` is 0/empty: with DreamBooth folders the GUI turns it into
//!   `max_train_steps` (images × repeats ÷ batch ÷ accumulation × epochs × 2 with regularisation
//!   images), with a dataset config it passes nothing (sd-scripts then trains 1600 steps);
//! - "0 / empty means not set": every value that is `""`, `false` or `0` is dropped before
//!   sd-scripts sees it (so sd-scripts' default applies);
//! - learning rates: `text_encoder_lr` / `unet_lr` of 0 select U-Net-only or text-encoder-only
//!   training, both 0 train both at `learning_rate`;
//! - `lr_warmup` is a percentage (an absolute `lr_warmup_steps` wins), the noise-offset type picks
//!   one noise option, `sample_prompts` is prompt text written to `<output_dir>/sample/prompt.txt`,
//!   and `additional_parameters` are command-line arguments that override the rest.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::args::{refuse_unsupported_family, split_args, Family};
use super::detect::json_to_toml;
use super::key_lists::is_unset;
use super::ImportNote;

/// What the GUI would pass to sd-scripts, plus what the conversion itself has to say.
#[derive(Debug, Clone, Default)]
pub struct Converted {
    /// sd-scripts arguments, in the order they override each other.
    pub args: Vec<(String, toml::Value)>,
    /// Notes about GUI-only rules that applied.
    pub notes: Vec<ImportNote>,
    /// The sample prompt file the GUI writes before a run.
    pub prompt_file: Option<(PathBuf, String)>,
}

/// GUI fields that only matter for other LoRA types or model families, launcher settings the
/// GUI handles itself, and fields of older GUI versions: consumed without a note when they do
/// not apply.
const GUI_ONLY_PREFIXES: &[&str] = &["flux1_", "sd3_", "hunyuan_", "anima_", "lumina_"];
const GUI_ONLY_FIELDS: &[&str] = &[
    "headless",
    "print_only",
    "LyCORIS_preset",
    "factor",
    "bypass_mode",
    "dora_wd",
    "use_cp",
    "use_tucker",
    "use_scalar",
    "rank_dropout_scale",
    "constrain",
    "rescaled",
    "train_norm",
    "decompose_both",
    "train_on_input",
    "unit",
    "t5xxl_lr",
    "sdxl_cache_text_encoder_outputs",
    "sdxl_no_half_vae",
    "stop_text_encoder_training",
    "train_lora_ggpo",
    "ggpo_sigma",
    "ggpo_beta",
    "model_type",
    "ae",
    "clip_l",
    "t5xxl",
    "discrete_flow_shift",
    "model_prediction_type",
    "timestep_sampling",
    "split_mode",
    "train_blocks",
    "t5xxl_max_token_length",
    "enable_all_linear",
    "guidance_scale",
    "apply_t5_attn_mask",
    "split_qkv",
    "train_t5xxl",
    "single_blocks_to_swap",
    "double_blocks_to_swap",
    "img_attn_dim",
    "img_mlp_dim",
    "img_mod_dim",
    "single_dim",
    "txt_attn_dim",
    "txt_mlp_dim",
    "txt_mod_dim",
    "single_mod_dim",
    "in_dims",
    "train_double_block_indices",
    "train_single_block_indices",
    "clip_g",
    "clip_g_dropout_rate",
    "logit_mean",
    "logit_std",
    "mode_scale",
    "pos_emb_random_crop_rate",
    "save_clip",
    "save_t5xxl",
    "t5xxl_device",
    "t5xxl_dtype",
    "weighting_scheme",
    "fp8_base_unet",
    "sdxl_checkbox",
    "no_token_padding",
    "use_wandb",
    "save_as_bool",
    "model_list",
    "blockwise_fused_optimizers",
    "fused_optimizer_groups",
    "fused_backward_pass",
    "learning_rate_te",
    "learning_rate_te1",
    "learning_rate_te2",
    "sample_at_first",
];

/// Block-wise options the GUI passes in `network_args` for Standard and Kohya LoCon.
const BLOCK_ARGS: &[&str] = &[
    "down_lr_weight",
    "mid_lr_weight",
    "up_lr_weight",
    "block_lr_zero_threshold",
    "block_dims",
    "block_alphas",
    "conv_block_dims",
    "conv_block_alphas",
    "rank_dropout",
    "module_dropout",
];

/// Read access to the GUI's fields that remembers which were read.
struct Gui<'a> {
    object: &'a Map<String, Value>,
    used: RefCell<BTreeSet<String>>,
}

impl Gui<'_> {
    fn raw(&self, key: &str) -> Option<&Value> {
        self.used.borrow_mut().insert(key.to_string());
        self.object.get(key).filter(|v| !v.is_null())
    }

    /// A number as the GUI reads it: `""`/missing is 0; text must parse.
    fn num(&self, key: &str) -> Result<f64, String> {
        let n = match self.raw(key) {
            None => 0.0,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(Value::Bool(b)) => f64::from(u8::from(*b)),
            Some(Value::String(s)) if s.trim().is_empty() => 0.0,
            Some(Value::String(s)) => {
                s.trim().parse::<f64>().map_err(|_| format!("{key} = {s:?}: expected a number"))?
            }
            Some(other) => return Err(format!("{key} = {other}: expected a number")),
        };
        if !n.is_finite() {
            return Err(format!("{key} = {n}: expected a finite number"));
        }
        Ok(n)
    }

    /// A whole number (the GUI's `int(...)`): fractions are cut as Python's `int` cuts them.
    fn int(&self, key: &str) -> Result<i64, String> {
        let n = self.num(key)?.trunc();
        if n.abs() >= 9.007_199_254_740_992e15 {
            return Err(format!("{key} = {n}: too large"));
        }
        Ok(n as i64)
    }

    fn text(&self, key: &str) -> String {
        match self.raw(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }

    fn flag(&self, key: &str) -> bool {
        match self.raw(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
            Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
            _ => false,
        }
    }

    /// The field as the TOML value sd-scripts would get (`None` for null and objects).
    fn value(&self, key: &str) -> Option<toml::Value> {
        self.raw(key).and_then(json_to_toml)
    }
}

/// A number as the GUI formats it inside `network_args` (`1`, `0.5`).
fn py_num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

/// Python's `str(bool)`.
fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// Converts a GUI config to sd-scripts arguments, or refuses it with the reason.
pub fn to_sd_scripts_args(object: &Map<String, Value>) -> Result<Converted, String> {
    let g = Gui { object, used: RefCell::new(BTreeSet::new()) };
    let mut out = Converted::default();
    let mut args: Vec<(String, toml::Value)> = Vec::new();
    let mut put = |k: &str, v: toml::Value| args.push((k.to_string(), v));

    let family = family(&g)?;
    let flux = family == Family::Flux1;
    // The GUI passes its v2 box to every script; the flow scripts ignore it (noted).
    let flow = flux || family == Family::Sd3;
    put("v2", toml::Value::Boolean(family == Family::Sd2 || flow && g.flag("v2")));
    put("model_family", toml::Value::String(family.config_value().unwrap_or_default().into()));
    put("v_parameterization", toml::Value::Boolean(g.flag("v_parameterization")));
    if g.flag("train_inpainting") {
        return Err("train_inpainting = true: inpainting LoRA training is not supported by lorakit".into());
    }
    // The "SDXL Specific Parameters" accordion: the GUI passes these only with the SDXL checkbox
    // (sd-scripts' own --cache_text_encoder_outputs and --no_half_vae). Read either way, so they
    // are known fields in an SD 1.x config too.
    let (cache_te, no_half_vae) = (g.flag("sdxl_cache_text_encoder_outputs"), g.flag("sdxl_no_half_vae"));
    if family == Family::Sdxl {
        put("cache_text_encoder_outputs", toml::Value::Boolean(cache_te));
        put("no_half_vae", toml::Value::Boolean(no_half_vae));
    }
    if flux {
        flux_args(&g, &mut put)?;
    }
    if family == Family::Sd3 {
        sd3_args(&g, &mut put)?;
    }

    let (module, network_args) = network(&g, family)?;
    let train_blocks = g.text("train_blocks");
    if module == "networks.lora_flux" && !g.flag("split_mode") && !matches!(train_blocks.trim(), "" | "all") {
        out.notes.push(ImportNote::info(
            "train_blocks",
            format!("{train_blocks:?}: the kohya_ss GUI does not pass its train_blocks field to sd-scripts (only split_mode forces \"single\"), so kohya's run trains all blocks, and so does lorakit — set network.train_blocks to train only some"),
        ));
    }
    put("network_module", toml::Value::String(module.into()));
    put("network_args", toml::Value::Array(split_args(&network_args).into_iter().map(toml::Value::String).collect()));
    for key in ["network_dim", "network_alpha", "network_dropout", "scale_weight_norms"] {
        put(key, toml::Value::Float(g.num(key)?));
    }
    let weights = g.text("lora_network_weights");
    let weights = if weights.trim().is_empty() { g.text("network_weights") } else { weights };
    put("network_weights", toml::Value::String(weights));
    put("dim_from_weights", toml::Value::Boolean(g.flag("dim_from_weights")));

    learning_rates(&g, &mut put, &mut out.notes)?;
    length(&g, &mut put, &mut out.notes)?;
    noise(&g, &mut put)?;

    // Values the GUI drops when they are 0 ("0 means not set").
    for key in [
        "min_snr_gamma",
        "min_timestep",
        "max_timestep",
        "v_pred_like_loss",
        "ip_noise_gamma",
        "clip_skip",
        "vae_batch_size",
        "sample_every_n_epochs",
        "sample_every_n_steps",
        "save_every_n_epochs",
        "save_every_n_steps",
        "save_last_n_steps",
        "save_last_n_steps_state",
        "save_last_n_epochs",
        "save_last_n_epochs_state",
        "max_grad_norm",
        "prior_loss_weight",
        "caption_dropout_rate",
        "huber_c",
        "huber_scale",
        "train_batch_size",
        "min_bucket_reso",
        "max_bucket_reso",
        "bucket_reso_steps",
        "lr_scheduler_power",
    ] {
        put(key, toml::Value::Float(g.num(key)?));
    }
    for key in ["caption_dropout_every_n_epochs", "keep_tokens", "gradient_accumulation_steps", "max_token_length"] {
        let n = g.int(key)?;
        // The GUI passes no max_token_length to flux_train_network.py (T5 has its own).
        if !(flux && key == "max_token_length") {
            put(key, toml::Value::Integer(n));
        }
    }
    let seed = g.int("seed")?;
    put("seed", toml::Value::Integer(seed));
    for key in [
        "bucket_no_upscale",
        "cache_latents",
        "cache_latents_to_disk",
        "color_aug",
        "debiased_estimation_loss",
        "enable_bucket",
        "flip_aug",
        "fp8_base",
        "full_bf16",
        "full_fp16",
        "gradient_checkpointing",
        "ip_noise_gamma_random_strength",
        "masked_loss",
        "random_crop",
        "save_state",
        "save_state_on_train_end",
        "scale_v_pred_loss_like_noise_pred",
        "shuffle_caption",
        "weighted_captions",
        "highvram",
        "lowvram",
        "mem_eff_attn",
        "persistent_data_loader_workers",
        "skip_cache_check",
        "async_upload",
        "save_state_to_huggingface",
    ] {
        put(key, toml::Value::Boolean(g.flag(key)));
    }
    for key in [
        "pretrained_model_name_or_path",
        "train_data_dir",
        "reg_data_dir",
        "dataset_config",
        "output_dir",
        "output_name",
        "logging_dir",
        "log_with",
        "log_tracker_name",
        "log_tracker_config",
        "log_config",
        "wandb_api_key",
        "wandb_run_name",
        "caption_extension",
        "save_model_as",
        "save_precision",
        "mixed_precision",
        "resume",
        "vae",
        "loss_type",
        "huber_schedule",
        "sample_sampler",
        "lr_scheduler",
        "lr_scheduler_type",
        "training_comment",
        "metadata_author",
        "metadata_description",
        "metadata_license",
        "metadata_tags",
        "metadata_title",
        "huggingface_repo_id",
        "huggingface_token",
        "huggingface_repo_type",
        "huggingface_repo_visibility",
        "huggingface_path_in_repo",
        "resume_from_huggingface",
    ] {
        put(key, g.value(key).unwrap_or(toml::Value::String(String::new())));
    }
    put("resolution", toml::Value::String(g.text("max_resolution")));
    put("optimizer_type", toml::Value::String(g.text("optimizer")));
    let optimizer_args = split_args(&g.text("optimizer_args"));
    put("optimizer_args", toml::Value::Array(optimizer_args.into_iter().map(toml::Value::String).collect()));
    put(
        "lr_scheduler_args",
        toml::Value::Array(split_args(&g.text("lr_scheduler_args")).into_iter().map(toml::Value::String).collect()),
    );
    match g.text("xformers").as_str() {
        "xformers" => put("xformers", toml::Value::Boolean(true)),
        "sdpa" => put("sdpa", toml::Value::Boolean(true)),
        _ => {}
    }
    if g.flag("use_wandb") {
        put("log_with", toml::Value::String("wandb".into()));
    }

    // The GUI writes its prompt text to a file and passes that.
    let prompts = g.text("sample_prompts");
    if !prompts.trim().is_empty() {
        let output_dir = g.text("output_dir");
        let path = Path::new(if output_dir.is_empty() { "." } else { &output_dir }).join("sample").join("prompt.txt");
        put("sample_prompts", toml::Value::String(path.display().to_string()));
        out.prompt_file = Some((path, prompts));
    }

    // Launcher settings are cosmetic; listed so the user sees they were read.
    for key in [
        "num_cpu_threads_per_process",
        "num_processes",
        "num_machines",
        "multi_gpu",
        "gpu_ids",
        "main_process_port",
        "dynamo_backend",
        "dynamo_mode",
        "dynamo_use_fullgraph",
        "dynamo_use_dynamic",
        "extra_accelerate_launch_args",
        "max_data_loader_n_workers",
    ] {
        if let Some(v) = g.value(key) {
            put(key, v);
        }
    }

    // sd-scripts' config keeps only set values: the GUI drops "", false, None and 0.
    args.retain(|(_, v)| !is_unset(v));
    // Then `additional_parameters`, appended to the command line, override the file.
    args.extend(parse_command_line(&g.text("additional_parameters"))?);

    for (key, value) in object {
        let known = g.used.borrow().contains(key)
            || GUI_ONLY_FIELDS.contains(&key.as_str())
            || GUI_ONLY_PREFIXES.iter().any(|p| key.starts_with(p))
            || super::key_lists::is_cosmetic(key);
        if known {
            continue;
        }
        if json_to_toml(value).is_some_and(|v| !is_unset(&v)) {
            out.notes.push(ImportNote::info(
                key.clone(),
                "not a field of the kohya_ss LoRA GUI that lorakit knows; ignored",
            ));
        }
    }
    out.args = args;
    Ok(out)
}

/// The family the GUI would train, refusing those lorakit does not train yet.
fn family(g: &Gui) -> Result<Family, String> {
    let lora_type = g.text("LoRA_type");
    let flux_box = g.flag("flux1_checkbox");
    let sdxl_box = g.flag("sdxl") || g.flag("sdxl_checkbox");
    if flux_box || lora_type.starts_with("Flux1") {
        if !flux_box {
            return Err(format!(
                "LoRA_type = {lora_type:?} but flux1_checkbox is off: the kohya_ss GUI would run {} with networks.lora_flux and no Flux.1 model files, which fails; check flux1_checkbox (Flux.1) or choose another LoRA type",
                if sdxl_box { "sdxl_train_network.py" } else { "train_network.py" }
            ));
        }
        if sdxl_box {
            return Err(
                "sdxl and flux1_checkbox are both checked: the kohya_ss GUI runs sdxl_train_network.py (its sdxl box comes first) with the Flux.1 network networks.lora_flux, which fails; uncheck one of them"
                    .into(),
            );
        }
        if g.flag("sd3_checkbox") {
            return Err(
                "flux1_checkbox and sd3_checkbox are both checked: the kohya_ss GUI runs flux_train_network.py (its Flux.1 box comes first) with SD3's CLIP-L file, which is not what either model needs; uncheck one of them"
                    .into(),
            );
        }
        if lora_type != "Flux1" && lora_type != "Flux1 OFT" && !lora_type.contains("LyCORIS") {
            return Err(format!(
                "LoRA_type = {lora_type:?} with flux1_checkbox: the kohya_ss GUI refuses this too (\"LoRA type must be set to 'Flux1', 'Flux1 OFT' or 'LyCORIS' if Flux1 checkbox is checked\"); choose Flux1"
            ));
        }
        return Ok(Family::Flux1);
    }
    if g.flag("sd3_checkbox") {
        if sdxl_box {
            return Err(
                "sdxl and sd3_checkbox are both checked: the kohya_ss GUI runs sdxl_train_network.py (its sdxl box comes first) with the SD3 network networks.lora_sd3, which fails; uncheck one of them"
                    .into(),
            );
        }
        return Ok(Family::Sd3);
    }
    let checks: [(bool, Family, &str); 5] = [
        (
            g.flag("hunyuan_image_checkbox") || lora_type == "HunyuanImage-2.1",
            Family::HunyuanImage,
            "hunyuan_image_checkbox",
        ),
        (g.flag("anima_checkbox") || lora_type == "Anima", Family::Anima, "anima_checkbox"),
        (g.flag("lumina_checkbox") || lora_type == "Lumina", Family::Lumina, "lumina_checkbox"),
        (sdxl_box, Family::Sdxl, "sdxl = true"),
        (g.flag("v2"), Family::Sd2, "v2 = true"),
    ];
    for (set, family, shown_by) in checks {
        if set {
            refuse_unsupported_family(family, shown_by)?;
            if family == Family::Sdxl && g.flag("v2") {
                return Err(
                    "sdxl and v2 are both checked: the kohya_ss GUI runs sdxl_train_network.py, which refuses v2 (\"v2 cannot be enabled in SDXL training\"); uncheck v2"
                        .into(),
                );
            }
            return Ok(family);
        }
    }
    Ok(Family::Sd1)
}

/// The GUI's "Flux.1" accordion, passed only with `flux1_checkbox` (`train_model`'s
/// `config_toml_data`): model files, T5 length and mask, the objective, memory options and
/// text-encoder caching (`flux1_cache_text_encoder_outputs(_to_disk)`).
fn flux_args(g: &Gui, put: &mut impl FnMut(&str, toml::Value)) -> Result<(), String> {
    use toml::Value as V;
    // Chroma is the only model_type the GUI passes (flux is sd-scripts' default).
    if g.text("model_type").trim().eq_ignore_ascii_case("chroma") {
        put("model_type", V::String("chroma".into()));
    }
    for key in ["ae", "clip_l", "t5xxl", "model_prediction_type", "timestep_sampling"] {
        put(key, V::String(g.text(key)));
    }
    put("t5xxl_max_token_length", V::Integer(g.int("t5xxl_max_token_length")?));
    for key in ["guidance_scale", "discrete_flow_shift"] {
        put(key, V::Float(g.num(key)?));
    }
    for key in ["blocks_to_swap", "single_blocks_to_swap", "double_blocks_to_swap"] {
        put(key, V::Integer(g.int(key)?));
    }
    for key in ["apply_t5_attn_mask", "split_mode", "mem_eff_save", "cpu_offload_checkpointing", "fp8_base_unet"] {
        put(key, V::Boolean(g.flag(key)));
    }
    put("cache_text_encoder_outputs", V::Boolean(g.flag("flux1_cache_text_encoder_outputs")));
    put("cache_text_encoder_outputs_to_disk", V::Boolean(g.flag("flux1_cache_text_encoder_outputs_to_disk")));
    Ok(())
}

/// The GUI's "SD3" accordion, passed only with `sd3_checkbox` (`train_model`'s
/// `config_toml_data`): model files, the text encoders' dropout and masks, the SD3.5 Medium
/// position options, the objective's density, the text-encoder caching boxes, `blocks_to_swap`
/// and the "does not work" fields, under the names sd-scripts takes. (The GUI passes no
/// `t5xxl_max_token_length`, `apply_t5_attn_mask`, `apply_lg_attn_mask` or `training_shift` for
/// SD3: sd-scripts' defaults apply unless `additional_parameters` sets them.)
fn sd3_args(g: &Gui, put: &mut impl FnMut(&str, toml::Value)) -> Result<(), String> {
    use toml::Value as V;
    for (arg, field) in [
        ("clip_l", "sd3_clip_l"),
        ("clip_g", "clip_g"),
        ("t5xxl", "sd3_t5xxl"),
        ("weighting_scheme", "weighting_scheme"),
        ("t5xxl_device", "t5xxl_device"),
        ("t5xxl_dtype", "t5xxl_dtype"),
    ] {
        put(arg, V::String(g.text(field)));
    }
    for (arg, field) in [
        ("clip_l_dropout_rate", "sd3_clip_l_dropout_rate"),
        ("clip_g_dropout_rate", "clip_g_dropout_rate"),
        ("t5_dropout_rate", "sd3_t5_dropout_rate"),
        ("pos_emb_random_crop_rate", "pos_emb_random_crop_rate"),
        ("logit_mean", "logit_mean"),
        ("logit_std", "logit_std"),
        ("mode_scale", "mode_scale"),
    ] {
        put(arg, V::Float(g.num(field)?));
    }
    for (arg, field) in
        [("text_encoder_batch_size", "sd3_text_encoder_batch_size"), ("blocks_to_swap", "blocks_to_swap")]
    {
        put(arg, V::Integer(g.int(field)?));
    }
    for (arg, field) in [
        ("enable_scaled_pos_embed", "sd3_enable_scaled_pos_embed"),
        ("save_clip", "save_clip"),
        ("save_t5xxl", "save_t5xxl"),
        ("disable_mmap_load_safetensors", "sd3_disable_mmap_load_safetensors"),
        ("cache_text_encoder_outputs", "sd3_cache_text_encoder_outputs"),
        ("cache_text_encoder_outputs_to_disk", "sd3_cache_text_encoder_outputs_to_disk"),
        ("fused_backward_pass", "sd3_fused_backward_pass"),
    ] {
        put(arg, V::Boolean(g.flag(field)));
    }
    Ok(())
}

/// `LoRA_type` → `network_module` and the `network_args` string, as the GUI builds them.
fn network(g: &Gui, family: Family) -> Result<(&'static str, String), String> {
    let lora_type = g.text("LoRA_type");
    let lora_type = if lora_type.is_empty() { "Standard".to_string() } else { lora_type };
    let num = |k: &str| g.num(k).map(py_num);
    let lycoris = |algo: &str| -> Result<String, String> {
        let preset = g.text("LyCORIS_preset");
        let mut s = format!(
            " preset={} conv_dim={} conv_alpha={} use_tucker={} rank_dropout={} bypass_mode={} dora_wd={} module_dropout={} use_scalar={} rank_dropout_scale={} algo={algo} train_norm={}",
            if preset.is_empty() { "full" } else { &preset },
            num("conv_dim")?,
            num("conv_alpha")?,
            py_bool(g.flag("use_tucker")),
            num("rank_dropout")?,
            py_bool(g.flag("bypass_mode")),
            py_bool(g.flag("dora_wd")),
            num("module_dropout")?,
            py_bool(g.flag("use_scalar")),
            py_bool(g.flag("rank_dropout_scale")),
            py_bool(g.flag("train_norm")),
        );
        if algo == "lokr" {
            s += &format!(
                " factor={} use_cp={} decompose_both={}",
                num("factor")?,
                py_bool(g.flag("use_cp")),
                py_bool(g.flag("decompose_both"))
            );
        }
        Ok(s)
    };
    // Read for every type: the GUI saves them all, but passes each only for some types.
    let conv = (num("conv_dim")?, num("conv_alpha")?);
    let blocks: Vec<(&str, String)> = BLOCK_ARGS.iter().map(|k| (*k, g.text(k))).collect();
    let (module, mut network_args) = match lora_type.as_str() {
        "Standard" | "Kohya LoCon" => {
            let mut s = String::new();
            if lora_type == "Kohya LoCon" {
                s += &format!(" conv_dim={} conv_alpha={}", conv.0, conv.1);
            }
            for (key, value) in &blocks {
                if !value.trim().is_empty() && !value.trim().parse::<f64>().is_ok_and(|v| v == 0.0) {
                    s += &format!(" {key}={value}");
                }
            }
            // train_model: `networks.lora_sd3 if sd3_checkbox else networks.lora`.
            (if family == Family::Sd3 { "networks.lora_sd3" } else { "networks.lora" }, s)
        }
        "Flux1" => ("networks.lora_flux", flux_network_args(g)?),
        "Flux1 OFT" => ("networks.oft_flux", String::new()),
        _ if family == Family::Flux1 => {
            return Err(format!(
                "LoRA_type = {lora_type:?} with flux1_checkbox: LyCORIS on Flux.1 is not supported by lorakit yet — it trains Flux.1 LoRAs as sd-scripts' networks.lora_flux does (LoRA_type Flux1); it will not train LyCORIS' network as that LoRA"
            ))
        }
        _ if family == Family::Sd3 => {
            return Err(format!(
                "LoRA_type = {lora_type:?} with sd3_checkbox: lorakit trains SD3 LoRAs as sd-scripts' networks.lora_sd3 does (LoRA_type Standard); it will not train {lora_type} as that LoRA"
            ))
        }
        "LoCon" | "LyCORIS/LoCon" => ("lycoris.kohya", lycoris("locon")?),
        "LyCORIS/LoHa" => ("lycoris.kohya", lycoris("loha")?),
        "LyCORIS/LoKr" => ("lycoris.kohya", lycoris("lokr")?),
        "Kohya LoHa" | "Kohya LoKr" if family == Family::Sdxl => {
            return Err(format!(
                "LoRA_type = {lora_type:?} is sd-scripts' native networks.{}, which lorakit does not train (it would not train it as a LoRA instead); choose LyCORIS/{}, which lorakit trains",
                lora_type[6..].to_ascii_lowercase(),
                &lora_type[6..]
            ))
        }
        "Kohya LoHa" | "Kohya LoKr" => {
            return Err(format!(
                "LoRA_type = {lora_type:?} (sd-scripts' native networks.loha/lokr) needs SDXL or Anima, as the kohya_ss GUI says; for SD 1.x/2.x use LyCORIS/{}",
                &lora_type[6..]
            ))
        }
        other => {
            return Err(format!(
                "LoRA_type = {other:?} is not trained by lorakit (Standard, Kohya LoCon, LyCORIS/LoCon, LyCORIS/LoHa and LyCORIS/LoKr are); it will not train it as a LoRA instead"
            ))
        }
    };
    for key in ["loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"] {
        let v = g.num(key)?;
        if v != 0.0 {
            network_args += &format!(" {key}={}", py_num(v));
        }
    }
    Ok((module, network_args))
}

/// The Flux1 LoRA type's `network_args`, as the GUI builds them: the type ranks, `in_dims` and
/// block indices whose fields are truthy (Python's truth: a non-empty text, a non-zero
/// number), `train_blocks=single` only with `split_mode` (the GUI does not pass its
/// `train_blocks` field otherwise), `split_qkv` / `train_t5xxl`, GGPO with `train_lora_ggpo`,
/// then `rank_dropout` / `module_dropout` above 0.
fn flux_network_args(g: &Gui) -> Result<String, String> {
    let mut keys = vec![
        "img_attn_dim",
        "img_mlp_dim",
        "img_mod_dim",
        "single_dim",
        "txt_attn_dim",
        "txt_mlp_dim",
        "txt_mod_dim",
        "single_mod_dim",
        "in_dims",
        "train_double_block_indices",
        "train_single_block_indices",
    ];
    if g.flag("train_lora_ggpo") {
        keys.extend(["ggpo_beta", "ggpo_sigma"]);
    }
    let mut s = String::new();
    for key in keys {
        let truthy = match g.raw(key) {
            Some(Value::String(v)) => !v.is_empty(),
            Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
            Some(Value::Bool(b)) => *b,
            _ => false,
        };
        if truthy {
            let text = match g.raw(key) {
                Some(Value::Number(n)) => py_num(n.as_f64().unwrap_or(0.0)),
                Some(Value::Bool(b)) => py_bool(*b).to_string(),
                _ => g.text(key),
            };
            s += &format!(" {key}={text}");
        }
    }
    g.text("train_blocks"); // read: passed only with split_mode
    if g.flag("split_mode") {
        s += " train_blocks=single";
    }
    if g.flag("split_qkv") {
        s += " split_qkv=True";
    }
    if g.flag("train_t5xxl") {
        s += " train_t5xxl=True";
    }
    for key in ["rank_dropout", "module_dropout"] {
        let v = g.num(key)?;
        if v > 0.0 {
            s += &format!(" {key}={}", py_num(v));
        }
    }
    Ok(s)
}

/// The learning rates and which networks train (`resolve_network_train_flags`).
fn learning_rates(g: &Gui, put: &mut impl FnMut(&str, toml::Value), notes: &mut Vec<ImportNote>) -> Result<(), String> {
    let lr = g.num("learning_rate")?;
    let te = g.num("text_encoder_lr")?;
    let unet = g.num("unet_lr")?;
    if lr == 0.0 && te == 0.0 && unet == 0.0 {
        return Err(
            "learning_rate, text_encoder_lr and unet_lr are all 0: the kohya_ss GUI refuses this too (\"Please input learning rate values\")"
                .into(),
        );
    }
    // T5-XXL's rate (Flux) rides in the second slot of the text_encoder_lr list.
    let t5 = g.num("t5xxl_lr")?;
    if te == 0.0 && t5 > 0.0 {
        return Err(
            "t5xxl_lr is set but text_encoder_lr is 0: the kohya_ss GUI refuses this too (\"When specifying T5XXL learning rate, text encoder learning rate need to be a value greater than 0\")"
                .into(),
        );
    }
    put("learning_rate", toml::Value::Float(lr));
    put("unet_lr", toml::Value::Float(unet));
    if te > 0.0 {
        let second = if t5 > 0.0 { t5 } else { te };
        put("text_encoder_lr", toml::Value::Array(vec![toml::Value::Float(te), toml::Value::Float(second)]));
    }
    let unet_only = te == 0.0 && unet != 0.0;
    let te_only = te != 0.0 && unet == 0.0;
    put("network_train_unet_only", toml::Value::Boolean(unet_only));
    put("network_train_text_encoder_only", toml::Value::Boolean(te_only));
    if unet_only {
        notes.push(ImportNote::info(
            "text_encoder_lr",
            "0 with unet_lr set: the kohya_ss GUI trains the U-Net only (network_train_unet_only); the LoRA has no text-encoder modules",
        ));
    } else if te_only {
        notes.push(ImportNote::info(
            "unet_lr",
            "0 with text_encoder_lr set: the kohya_ss GUI trains the text encoder only (network_train_text_encoder_only)",
        ));
    }
    Ok(())
}

/// Epochs, steps, warmup and cosine cycles as the GUI resolves them.
fn length(g: &Gui, put: &mut impl FnMut(&str, toml::Value), notes: &mut Vec<ImportNote>) -> Result<(), String> {
    let epoch = g.int("epoch")?;
    let max_train_epochs = g.int("max_train_epochs")?;
    let mut max_train_steps = g.int("max_train_steps")?;
    let warmup_pct = g.num("lr_warmup")?;
    let warmup_steps = g.num("lr_warmup_steps")?;
    let dataset_config = !g.text("dataset_config").trim().is_empty();
    let mut warmup = if warmup_steps > 0.0 {
        warmup_steps.trunc()
    } else if warmup_pct != 0.0 {
        warmup_pct / 100.0
    } else {
        0.0
    };
    if dataset_config {
        if max_train_steps > 0 {
            if warmup_steps <= 0.0 && warmup_pct != 0.0 {
                warmup = (warmup_pct * max_train_steps as f64 / 100.0).round();
            }
        } else {
            // The GUI zeroes lr_warmup_steps here, so only the percentage is left.
            warmup = if warmup_pct != 0.0 { warmup_pct / 100.0 } else { 0.0 };
            if max_train_epochs == 0 && epoch > 0 {
                notes.push(ImportNote::changes_run(
                    "epoch",
                    format!(
                        "{epoch} is not used with a dataset_config and no max_train_steps: the kohya_ss GUI passes no length, so sd-scripts trains its default 1600 steps, and so does lorakit (set max_train_epochs to train by epochs)"
                    ),
                ));
            }
        }
    } else if max_train_steps == 0 && max_train_epochs == 0 && epoch > 0 {
        match gui_step_count(g, epoch) {
            Some((steps, how)) => {
                max_train_steps = steps;
                notes.push(ImportNote::info(
                    "epoch",
                    format!("{epoch}: max_train_steps = {how}, as the kohya_ss GUI computes it"),
                ));
            }
            None => {
                put("max_train_epochs", toml::Value::Integer(epoch));
                notes.push(ImportNote::info(
                    "epoch",
                    format!("{epoch}: the train_data_dir cannot be read here, so the GUI's step count (images × repeats ÷ batch × epochs) is not known; training {epoch} epoch(s) instead"),
                ));
            }
        }
    }
    put("max_train_epochs", toml::Value::Integer(max_train_epochs));
    put("max_train_steps", toml::Value::Integer(max_train_steps));
    put("lr_warmup_steps", toml::Value::Float(warmup));
    let cycles = g.text("lr_scheduler_num_cycles");
    let cycles = if cycles.trim().is_empty() { epoch } else { g.int("lr_scheduler_num_cycles")? };
    put("lr_scheduler_num_cycles", toml::Value::Integer(cycles));
    Ok(())
}

/// The GUI's own step count for DreamBooth folders: Σ images × repeats over `N_name` folders,
/// ÷ batch ÷ accumulation × epochs × (2 with regularisation images), rounded up.
fn gui_step_count(g: &Gui, epoch: i64) -> Option<(i64, String)> {
    let dir = g.text("train_data_dir");
    let entries = std::fs::read_dir(dir.trim()).ok()?;
    let mut total: i64 = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(repeats) = name.split('_').next().and_then(|r| r.parse::<i64>().ok()) else { continue };
        let images = std::fs::read_dir(&path)
            .ok()?
            .flatten()
            .filter(|f| {
                let n = f.file_name().to_string_lossy().to_lowercase();
                [".jpg", ".jpeg", ".png", ".webp"].iter().any(|e| n.ends_with(e))
            })
            .count() as i64;
        total = total.checked_add(repeats.checked_mul(images)?)?;
    }
    let batch = g.int("train_batch_size").ok()?.max(1);
    let accumulation = g.int("gradient_accumulation_steps").ok()?.max(1);
    let reg_factor = if g.text("reg_data_dir").trim().is_empty() { 1 } else { 2 };
    let steps = (total as f64 / batch as f64 / accumulation as f64 * epoch as f64 * reg_factor as f64).ceil();
    (steps.is_finite() && steps < 9e15)
        .then(|| (steps as i64, format!("{total} / {batch} / {accumulation} × {epoch} × {reg_factor} = {steps}")))
}

/// The noise options of the chosen `noise_offset_type`.
fn noise(g: &Gui, put: &mut impl FnMut(&str, toml::Value)) -> Result<(), String> {
    let kind = g.text("noise_offset_type");
    let kind = if kind.is_empty() { "Original".to_string() } else { kind };
    // Read both sets so neither is reported as unknown.
    let offset = g.num("noise_offset")?;
    let adaptive = g.num("adaptive_noise_scale")?;
    let random_strength = g.flag("noise_offset_random_strength");
    let iterations = g.num("multires_noise_iterations")?;
    let discount = g.num("multires_noise_discount")?;
    match kind.as_str() {
        "Original" => {
            put("noise_offset", toml::Value::Float(offset));
            put("adaptive_noise_scale", toml::Value::Float(adaptive));
            put("noise_offset_random_strength", toml::Value::Boolean(random_strength));
        }
        "Multires" => {
            put("multires_noise_iterations", toml::Value::Float(iterations));
            put("multires_noise_discount", toml::Value::Float(discount));
        }
        other => return Err(format!("noise_offset_type = {other:?}: the kohya_ss GUI knows Original and Multires")),
    }
    Ok(())
}

/// `additional_parameters`: sd-scripts command-line arguments (`--key value…`, `--flag`), split
/// as a POSIX shell would.
fn parse_command_line(text: &str) -> Result<Vec<(String, toml::Value)>, String> {
    let words = shell_words(text)?;
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for word in words {
        if let Some(key) = word.strip_prefix("--") {
            let (key, inline) = match key.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (key.to_string(), None),
            };
            out.push((key, inline.into_iter().collect()));
        } else if let Some((_, values)) = out.last_mut() {
            values.push(word);
        } else {
            return Err(format!("additional_parameters: {word:?} comes before any --argument"));
        }
    }
    Ok(out
        .into_iter()
        .map(|(key, mut values)| {
            let value = match values.len() {
                0 => toml::Value::Boolean(true),
                1 => toml::Value::String(values.remove(0)),
                _ => toml::Value::Array(values.into_iter().map(toml::Value::String).collect()),
            };
            (key, value)
        })
        .collect())
}

/// Words of a command line with `"…"`, `'…'` and `\` quoting.
fn shell_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '"' | '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => w.extend(chars.next()),
                        Some(other) => w.push(other),
                        None => return Err(format!("additional_parameters: unclosed {c} quote")),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            other => word.get_or_insert_with(String::new).push(other),
        }
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::kohya_import::{import_bytes, Imported, NoteLevel};

    fn import(json: &str) -> Result<Imported, String> {
        import_bytes(json.as_bytes(), Path::new("."))
    }

    fn config(imported: &Imported) -> TrainConfig {
        let c: TrainConfig = toml::Value::Table(imported.table.clone()).try_into().unwrap();
        c.validate().unwrap_or_else(|e| panic!("{e}"));
        c
    }

    /// A GUI config as the GUI saves it: every field, most at their defaults.
    fn gui(overrides: &[(&str, Value)]) -> String {
        let mut o: Map<String, Value> = serde_json::from_str(
            r#"{
  "LoRA_type": "Standard", "LyCORIS_preset": "full", "adaptive_noise_scale": 0, "additional_parameters": "",
  "block_alphas": "", "block_dims": "", "block_lr_zero_threshold": "", "bucket_no_upscale": true,
  "bucket_reso_steps": 64, "cache_latents": true, "cache_latents_to_disk": false,
  "caption_dropout_every_n_epochs": 0.0, "caption_dropout_rate": 0.05, "caption_extension": ".txt",
  "clip_skip": 2, "color_aug": false, "constrain": 0.0, "conv_alpha": 1, "conv_block_alphas": "",
  "conv_block_dims": "", "conv_dim": 1, "dataset_config": "", "debiased_estimation_loss": false,
  "decompose_both": false, "dim_from_weights": false, "down_lr_weight": "", "enable_bucket": true,
  "epoch": 1, "factor": -1, "flip_aug": false, "fp8_base": false, "full_bf16": false, "full_fp16": false,
  "gpu_ids": "", "gradient_accumulation_steps": 1, "gradient_checkpointing": false, "keep_tokens": "0",
  "learning_rate": 0.0005, "logging_dir": "./logs", "lora_network_weights": "", "lr_scheduler": "constant",
  "lr_scheduler_args": "", "lr_scheduler_num_cycles": "", "lr_scheduler_power": "", "lr_warmup": 0,
  "max_bucket_reso": 2048, "max_data_loader_n_workers": "0", "max_grad_norm": 1, "max_resolution": "512,512",
  "max_timestep": 1000, "max_token_length": "75", "max_train_epochs": "", "max_train_steps": "",
  "mem_eff_attn": false, "mid_lr_weight": "", "min_bucket_reso": 256, "min_snr_gamma": 0, "min_timestep": 0,
  "mixed_precision": "bf16", "model_list": "runwayml/stable-diffusion-v1-5", "module_dropout": 0,
  "multi_gpu": false, "multires_noise_discount": 0.3, "multires_noise_iterations": 6, "network_alpha": 1,
  "network_dim": 8, "network_dropout": 0, "noise_offset": 0.05, "noise_offset_type": "Original",
  "num_cpu_threads_per_process": 2, "num_machines": 1, "num_processes": 1, "optimizer": "AdamW8bit",
  "optimizer_args": "", "output_dir": "./out", "output_name": "gui-lora", "persistent_data_loader_workers": false,
  "pretrained_model_name_or_path": "/m/sd15.safetensors", "prior_loss_weight": 1.0, "random_crop": false,
  "rank_dropout": 0, "rank_dropout_scale": false, "reg_data_dir": "", "rescaled": false, "resume": "",
  "sample_every_n_epochs": 0, "sample_every_n_steps": 0, "sample_prompts": "", "sample_sampler": "euler_a",
  "save_every_n_epochs": 1, "save_every_n_steps": 0, "save_last_n_steps": 0, "save_last_n_steps_state": 0,
  "save_model_as": "safetensors", "save_precision": "fp16", "save_state": false, "scale_v_pred_loss_like_noise_pred": false,
  "scale_weight_norms": 0, "sdxl": false, "sdxl_cache_text_encoder_outputs": false, "sdxl_no_half_vae": true,
  "seed": "1234", "shuffle_caption": false, "stop_text_encoder_training": 0, "text_encoder_lr": 0.0,
  "train_batch_size": 4, "train_data_dir": "/nowhere/img", "train_norm": false, "train_on_input": true,
  "training_comment": "", "unet_lr": 0.0, "unit": 1, "up_lr_weight": "", "use_cp": false, "use_scalar": false,
  "use_tucker": false, "use_wandb": false, "v2": false, "v_parameterization": false, "v_pred_like_loss": 0,
  "vae": "", "vae_batch_size": 0, "wandb_api_key": "", "wandb_run_name": "", "weighted_captions": false,
  "xformers": "xformers", "flux1_checkbox": false, "sd3_checkbox": false, "guidance_scale": 3.5,
  "t5xxl_max_token_length": 512, "discrete_flow_shift": 3.0, "timestep_sampling": "sigma", "t5xxl_lr": 0
}"#,
        )
        .unwrap();
        for (k, v) in overrides {
            o.insert(k.to_string(), v.clone());
        }
        serde_json::to_string(&o).unwrap()
    }

    fn level_of(imported: &Imported, key: &str) -> Option<NoteLevel> {
        imported.notes.iter().find(|n| n.key == key).map(|n| n.level)
    }

    #[test]
    fn a_standard_gui_config_trains_what_the_gui_would_run() {
        let imp = import(&gui(&[])).unwrap();
        let c = config(&imp);
        assert_eq!(c.network.network_module, "networks.lora");
        assert_eq!(c.network.conv_dim, None, "Standard passes no conv_dim even though the field holds 1");
        assert_eq!(c.network.network_dim, 8);
        assert_eq!(c.model.model_family.as_deref(), Some("sd1"));
        assert_eq!(c.model.clip_skip, Some(2));
        assert_eq!(c.training.seed, 1234);
        assert_eq!(c.optimizer.optimizer_type, "AdamW8bit");
        assert_eq!(c.optimizer.unet_lr, None);
        assert_eq!(c.optimizer.text_encoder_lr, None);
        assert!(c.trains_unet() && c.trains_text_encoder(), "both LRs 0: both train at learning_rate");
        assert_eq!(c.loss.noise_offset, Some(0.05));
        assert_eq!(c.loss.multires_noise_iterations, None, "Original noise type: no pyramid noise");
        assert_eq!(c.loss.min_snr_gamma, None);
        assert_eq!(c.network.scale_weight_norms, None, "0 means not set");
        assert_eq!(c.dataset.caption_extension, ".txt");
        assert_eq!(c.dataset.resolution, "512,512");
        // The folder cannot be read here: the GUI's step count is unknown, so epochs are used.
        assert_eq!(c.training.max_train_epochs, 1);
        assert_eq!(level_of(&imp, "epoch"), Some(NoteLevel::Info));
        assert_eq!(c.optimizer.lr_scheduler_num_cycles, 1, "empty cycles: the GUI passes epoch");
        // Flux fields with values in an SD 1.5 config are not mistaken for a Flux config.
        assert!(imp.notes.iter().all(|n| n.level != NoteLevel::ChangesRun), "{:?}", imp.notes);
        // Fields the GUI saves for other types are known, not "unknown fields".
        let keys = imp.unmapped_keys();
        assert!(
            !keys.contains(&"conv_dim") && !keys.contains(&"factor") && !keys.contains(&"guidance_scale"),
            "{keys:?}"
        );
    }

    #[test]
    fn lora_types_map_or_are_refused_and_dims_are_never_reused() {
        let c = config(&import(&gui(&[("LoRA_type", "Kohya LoCon".into()), ("conv_dim", 4.into())])).unwrap());
        assert_eq!((c.network.conv_dim, c.network.conv_alpha), (Some(4), Some(1.0)));
        let imp = import(&gui(&[
            ("LoRA_type", "LyCORIS/LoKr".into()),
            ("network_dim", 100000.into()),
            ("conv_dim", 100000.into()),
            ("factor", 6.into()),
        ]))
        .unwrap();
        let n = imp.table["network"].as_table().unwrap();
        assert_eq!(n["network_module"].as_str(), Some("lycoris.kohya"));
        assert_eq!(n["algo"].as_str(), Some("lokr"));
        assert_eq!(n["factor"].as_integer(), Some(6));
        let imp = import(&gui(&[("LoRA_type", "LyCORIS/LoHa".into())])).unwrap();
        assert_eq!(imp.table["network"]["algo"].as_str(), Some("loha"));
        for t in [
            "LyCORIS/iA3",
            "LyCORIS/DyLoRA",
            "LyCORIS/Diag-OFT",
            "LyCORIS/BOFT",
            "LyCORIS/GLoRA",
            "Kohya DyLoRA",
            "LoRA-FA",
            "LyCORIS/Native Fine-Tuning",
        ] {
            let err = import(&gui(&[("LoRA_type", t.into())])).unwrap_err();
            assert!(err.contains(t), "{t}: {err}");
        }
        // Flux1 without the Flux.1 box: the GUI would run train_network.py with lora_flux.
        let err = import(&gui(&[("LoRA_type", "Flux1".into())])).unwrap_err();
        assert!(err.contains("flux1_checkbox is off") && err.contains("train_network.py"), "{err}");
        let err = import(&gui(&[("LoRA_type", "Kohya LoHa".into())])).unwrap_err();
        assert!(err.contains("SDXL"), "{err}");
        let err = import(&gui(&[("LoRA_type", "LyCORIS/LoHa".into()), ("use_tucker", true.into())])).unwrap_err();
        assert!(err.contains("use_tucker"), "{err}");
    }

    #[test]
    fn families_are_refused_at_import_with_the_family_named() {
        for (key, family) in
            [("hunyuan_image_checkbox", "HunyuanImage"), ("anima_checkbox", "Anima"), ("lumina_checkbox", "Lumina")]
        {
            // Even with the SDXL box checked too: the GUI runs the other family's script first.
            let err = import(&gui(&[(key, true.into()), ("sdxl", true.into())])).unwrap_err();
            assert!(err.contains(family) && err.contains("SD 1.x, SD 2.x, SDXL"), "{key}: {err}");
        }
        // SD3 with SDXL or Flux.1: the GUI runs the other script with SD3's network or files.
        let err = import(&gui(&[("sd3_checkbox", true.into()), ("sdxl", true.into())])).unwrap_err();
        assert!(err.contains("sdxl and sd3_checkbox are both checked"), "{err}");
        let err = import(&gui(&[
            ("sd3_checkbox", true.into()),
            ("flux1_checkbox", true.into()),
            ("LoRA_type", "Flux1".into()),
        ]))
        .unwrap_err();
        assert!(err.contains("flux1_checkbox and sd3_checkbox are both checked"), "{err}");
        // Flux.1 and SDXL together: the GUI runs sdxl_train_network.py with lora_flux, which fails.
        let err =
            import(&gui(&[("flux1_checkbox", true.into()), ("LoRA_type", "Flux1".into()), ("sdxl", true.into())]))
                .unwrap_err();
        assert!(err.contains("sdxl and flux1_checkbox are both checked"), "{err}");
        let c = config(&import(&gui(&[("v2", true.into()), ("v_parameterization", true.into())])).unwrap());
        assert_eq!(c.model.model_family.as_deref(), Some("sd2"));
        assert!(c.model.v_parameterization);
    }

    /// A GUI config with the Flux.1 box and LoRA type, as the GUI saves it (its Flux defaults).
    fn flux(overrides: &[(&str, Value)]) -> Result<Imported, String> {
        let mut all = vec![
            ("flux1_checkbox", Value::from(true)),
            ("LoRA_type", "Flux1".into()),
            ("pretrained_model_name_or_path", "/m/flux1-dev.safetensors".into()),
            ("ae", "/m/ae.safetensors".into()),
            ("clip_l", "/m/clip_l.safetensors".into()),
            ("t5xxl", "/m/t5xxl_fp16.safetensors".into()),
            ("model_prediction_type", "sigma_scaled".into()),
            ("timestep_sampling", "sigma".into()),
            ("discrete_flow_shift", 3.0.into()),
            ("guidance_scale", 3.5.into()),
            ("t5xxl_max_token_length", 512.into()),
            ("apply_t5_attn_mask", false.into()),
            ("train_blocks", "all".into()),
            ("split_mode", false.into()),
            ("split_qkv", false.into()),
            ("train_t5xxl", false.into()),
            ("cpu_offload_checkpointing", false.into()),
            ("blocks_to_swap", 0.into()),
            ("single_blocks_to_swap", 0.into()),
            ("double_blocks_to_swap", 0.into()),
            ("mem_eff_save", false.into()),
            ("flux1_cache_text_encoder_outputs", false.into()),
            ("flux1_cache_text_encoder_outputs_to_disk", false.into()),
            ("img_attn_dim", "".into()),
            ("single_dim", "".into()),
            ("in_dims", "".into()),
            ("train_double_block_indices", "all".into()),
            ("train_single_block_indices", "all".into()),
            ("max_resolution", "1024,1024".into()),
            ("clip_skip", 1.into()),
        ];
        all.extend(overrides.iter().cloned());
        import(&gui(&all))
    }

    #[test]
    fn flux_gui_configs_import_what_flux_train_network_would_run() {
        let imp = flux(&[("unet_lr", 1e-4.into()), ("text_encoder_lr", 0.into())]).unwrap();
        let c = config(&imp);
        assert_eq!(c.model.model_family.as_deref(), Some("flux"));
        assert_eq!(c.network.network_module, "networks.lora");
        assert_eq!(c.model.ae.as_deref(), Some(Path::new("/m/ae.safetensors")));
        assert_eq!(c.model.t5xxl_max_token_length, Some(512));
        // The GUI's own Flux defaults are taken as given.
        assert_eq!(c.flow.model_prediction_type, Some(crate::objective::ModelPredictionType::SigmaScaled));
        assert_eq!((c.flow.guidance_scale, c.flow.discrete_flow_shift), (3.5, 3.0));
        assert_eq!(c.flow.timestep_sampling, crate::objective::TimestepSampling::Sigma);
        assert_eq!(level_of(&imp, "guidance_scale"), None, "set in the file: no default note");
        // The block indices "all" are passed as the GUI passes them; train_blocks "all" is not.
        assert_eq!(c.network.train_double_block_indices.as_deref(), Some("all"));
        assert_eq!(c.network.train_blocks, None);
        // SD options the GUI passes to flux_train_network.py, which ignores them.
        assert_eq!(c.model.clip_skip, None);
        assert_eq!(level_of(&imp, "clip_skip"), Some(NoteLevel::Info));
        assert_eq!(c.loss.noise_offset, None);
        assert_eq!(level_of(&imp, "noise_offset"), Some(NoteLevel::Info));
        assert_eq!(c.training.max_token_length, crate::config::TrainingSection::default().max_token_length);
        assert!(imp.notes.iter().all(|n| n.level >= NoteLevel::Info), "{:?}", imp.notes);
        assert!(c.network.network_train_unet_only);

        // Rank fields, T5 training with its own rate, caching, memory options.
        let imp = flux(&[
            ("img_attn_dim", "8".into()),
            ("single_dim", "0".into()),
            ("in_dims", "[4,0,0,0,4]".into()),
            ("train_single_block_indices", "0-5,9".into()),
            ("train_t5xxl", true.into()),
            ("text_encoder_lr", 1e-5.into()),
            ("t5xxl_lr", 2e-5.into()),
            ("unet_lr", 1e-4.into()),
            ("rank_dropout", 0.1.into()),
            ("loraplus_lr_ratio", 4.into()),
            ("blocks_to_swap", 10.into()),
            ("fp8_base", true.into()),
            ("fp8_base_unet", true.into()),
            ("apply_t5_attn_mask", true.into()),
            ("train_blocks", "double".into()),
        ])
        .unwrap();
        let c = config(&imp);
        let n = &c.network;
        assert_eq!((n.img_attn_dim, n.single_dim), (Some(8), Some(0)), "\"0\" is a non-empty text: passed");
        assert_eq!(n.in_dims.as_deref(), Some("[4,0,0,0,4]"));
        assert_eq!(n.train_single_block_indices.as_deref(), Some("0-5,9"));
        assert!(n.train_t5xxl && c.trains_text_encoder());
        assert_eq!(c.text_encoder_lrs(), vec![1e-5, 2e-5], "[CLIP-L, T5-XXL] as the GUI passes them");
        assert_eq!((n.rank_dropout, n.loraplus_lr_ratio), (Some(0.1), Some(4.0)));
        assert!(c.accelerate.fp8_base && c.accelerate.fp8_base_unet && c.model.apply_t5_attn_mask);
        // blocks_to_swap without gradient checkpointing (the template's): lorakit cannot swap.
        assert_eq!(level_of(&imp, "blocks_to_swap"), Some(NoteLevel::Memory));
        assert_eq!(c.accelerate.blocks_to_swap, None);
        // The GUI does not pass train_blocks (only split_mode forces "single"): said so.
        assert_eq!(n.train_blocks, None);
        assert_eq!(level_of(&imp, "train_blocks"), Some(NoteLevel::Info));
        let c = config(&flux(&[("split_mode", true.into()), ("gradient_checkpointing", true.into())]).unwrap());
        assert_eq!(c.network.train_blocks.as_deref(), Some("single"));
        assert_eq!(c.accelerate.blocks_to_swap, Some(18), "split_mode: sd-scripts swaps 18 blocks");

        // Cached text-encoder outputs (U-Net only, fixed captions) carry over; guidance 0 is
        // "not set": sd-scripts' 3.5.
        let err = flux(&[("flux1_cache_text_encoder_outputs", true.into())]).unwrap_err();
        assert!(err.contains("caption_dropout_rate"), "the template's 0.05 caption dropout: {err}");
        let imp = flux(&[
            ("caption_dropout_rate", 0.into()),
            ("flux1_cache_text_encoder_outputs", true.into()),
            ("flux1_cache_text_encoder_outputs_to_disk", true.into()),
            ("text_encoder_lr", 0.into()),
            ("unet_lr", 1e-4.into()),
            ("guidance_scale", 0.into()),
        ])
        .unwrap();
        let c = config(&imp);
        assert!(c.training.cache_text_encoder_outputs && c.training.cache_text_encoder_outputs_to_disk);
        assert_eq!(c.flow.guidance_scale, 3.5);
        assert_eq!(level_of(&imp, "guidance_scale"), Some(NoteLevel::Info));
    }

    #[test]
    fn flux_gui_configs_are_refused_where_kohya_or_lorakit_would_not_run_them() {
        for (overrides, says) in [
            (vec![("LoRA_type", Value::from("Standard"))], "LoRA type must be set to 'Flux1'"),
            (vec![("LoRA_type", "LyCORIS/LoKr".into())], "LyCORIS on Flux.1"),
            (vec![("LoRA_type", "Flux1 OFT".into())], "Flux OFT"),
            (vec![("train_lora_ggpo", true.into()), ("ggpo_beta", 0.01.into()), ("ggpo_sigma", 0.03.into())], "GGPO"),
            (vec![("model_type", "chroma".into())], "Chroma"),
            (vec![("t5xxl_lr", 1e-5.into()), ("text_encoder_lr", 0.into())], "T5XXL learning rate"),
            (vec![("train_t5xxl", true.into()), ("flux1_cache_text_encoder_outputs", true.into())], "T5XXL is trained"),
            (
                vec![("blocks_to_swap", 4.into()), ("cpu_offload_checkpointing", true.into())],
                "cpu_offload_checkpointing",
            ),
            (vec![("bucket_reso_steps", 16.into())], "divisible by 32"),
        ] {
            let err = flux(&overrides).unwrap_err();
            assert!(err.contains(says), "{overrides:?}: {err}");
        }
    }

    /// A GUI config with the SDXL checkbox: what `sdxl_train_network.py` would get.
    fn sdxl(overrides: &[(&str, Value)]) -> Result<Imported, String> {
        let mut all = vec![("sdxl", Value::from(true)), ("max_resolution", "1024,1024".into())];
        all.extend(overrides.iter().cloned());
        import(&gui(&all))
    }

    #[test]
    fn sdxl_configs_import_as_sdxl() {
        let imp = sdxl(&[("text_encoder_lr", 5e-5.into()), ("unet_lr", 1e-4.into())]).unwrap();
        let c = config(&imp);
        assert_eq!(c.model.model_family.as_deref(), Some("sdxl"));
        assert!(!c.model.v2);
        // The GUI's [te, te] list: both encoders at one rate, nothing to say.
        assert_eq!(c.optimizer.text_encoder_lr, Some(crate::config::TextEncoderLr::All(5e-5)));
        assert_eq!(level_of(&imp, "text_encoder_lr"), None);
        // sdxl_no_half_vae (true in the template) is passed with the SDXL box.
        assert!(c.accelerate.no_half_vae);
        assert!(!c.caches_text_encoder_outputs());
        // clip_skip 2 is what SDXL always does: dropped, with the reason.
        assert_eq!(c.model.clip_skip, None);
        let note = imp.notes.iter().find(|n| n.key == "clip_skip").expect("a clip_skip note");
        assert_eq!(note.level, NoteLevel::Info);
        assert!(note.text.starts_with("2: ") && note.text.contains("penultimate"), "{note:?}");
        assert!(imp.notes.iter().all(|n| n.level != NoteLevel::ChangesRun), "{:?}", imp.notes);
        // The same fields without the SDXL box are not passed (an SD 1.x run keeps a half VAE).
        let c = config(&import(&gui(&[("sdxl_cache_text_encoder_outputs", true.into())])).unwrap());
        assert!(!c.accelerate.no_half_vae && !c.caches_text_encoder_outputs());
        assert_eq!(c.model.clip_skip, Some(2));
        // v-prediction SDXL (NoobAI-XL v-pred): the GUI's checkbox and zero terminal SNR from
        // additional_parameters.
        let c = config(
            &sdxl(&[
                ("v_parameterization", true.into()),
                ("additional_parameters", "--zero_terminal_snr".into()),
                ("clip_skip", 1.into()),
            ])
            .unwrap(),
        );
        assert!(c.model.v_parameterization && c.loss.zero_terminal_snr);
    }

    #[test]
    fn sdxl_text_encoder_caching_follows_sd_scripts() {
        // U-Net only (text_encoder_lr 0): cached.
        let imp = sdxl(&[
            ("sdxl_cache_text_encoder_outputs", true.into()),
            ("unet_lr", 1e-4.into()),
            ("text_encoder_lr", 0.into()),
        ])
        .unwrap();
        let c = config(&imp);
        assert!(c.training.cache_text_encoder_outputs && c.network.network_train_unet_only);
        assert!(!c.training.cache_text_encoder_outputs_to_disk, "the GUI has no to-disk box for SDXL");
        // --network_train_unet_only in additional_parameters does it too.
        let c = config(
            &sdxl(&[
                ("sdxl_cache_text_encoder_outputs", true.into()),
                ("additional_parameters", "--network_train_unet_only".into()),
            ])
            .unwrap(),
        );
        assert!(c.caches_text_encoder_outputs() && c.network.network_train_unet_only);
        // Text encoders trained: sd-scripts refuses to start.
        let err = sdxl(&[("sdxl_cache_text_encoder_outputs", true.into())]).unwrap_err();
        assert!(err.contains("network_train_unet_only") && err.contains("sd-scripts refuses"), "{err}");
    }

    #[test]
    fn sdxl_refusals_name_the_reason() {
        let err = sdxl(&[("v2", true.into())]).unwrap_err();
        assert!(err.contains("v2 cannot be enabled in SDXL training"), "{err}");
        let err = sdxl(&[("additional_parameters", "--v2".into())]).unwrap_err();
        assert!(err.contains("v2"), "{err}");
        // sdxl_train_network.py asserts bucket_reso_steps % 32 == 0 (with buckets on).
        let err = sdxl(&[("bucket_reso_steps", 48.into())]).unwrap_err();
        assert!(err.contains("bucket_reso_steps = 48") && err.contains("multiple of 32"), "{err}");
        let c = config(&sdxl(&[("bucket_reso_steps", 32.into())]).unwrap());
        assert_eq!(c.dataset.bucket_reso_steps, 32);
        let c = config(&sdxl(&[("bucket_reso_steps", 48.into()), ("enable_bucket", false.into())]).unwrap());
        assert!(!c.dataset.enable_bucket, "without buckets sd-scripts does not check the step");
        // sd-scripts' native LoHa/LoKr (the GUI offers them for SDXL): not trained, LyCORIS' are.
        for (t, module) in [("Kohya LoHa", "networks.loha"), ("Kohya LoKr", "networks.lokr")] {
            let err = sdxl(&[("LoRA_type", t.into())]).unwrap_err();
            assert!(err.contains(module) && err.contains(&format!("LyCORIS/{}", &t[6..])), "{t}: {err}");
        }
        let c = config(&sdxl(&[("LoRA_type", "LyCORIS/LoHa".into())]).unwrap());
        assert_eq!((c.network.network_module.as_str(), c.network.algo.as_deref()), ("lycoris.kohya", Some("loha")));
    }

    #[test]
    fn steps_epochs_and_warmup_follow_the_gui() {
        // max_train_steps wins over epoch; warmup percent becomes a fraction.
        let c = config(
            &import(&gui(&[("max_train_steps", 500.into()), ("epoch", 10.into()), ("lr_warmup", 10.into())])).unwrap(),
        );
        assert_eq!((c.training.max_train_steps, c.training.max_train_epochs), (500, 0));
        assert_eq!(c.optimizer.lr_warmup_steps, 0.1);
        // An absolute warmup wins over the percentage.
        let c = config(&import(&gui(&[("lr_warmup", 10.into()), ("lr_warmup_steps", 30.into())])).unwrap());
        assert_eq!(c.optimizer.lr_warmup_steps, 30.0);
        // With a dataset config and steps, the percentage becomes steps.
        let c = config(
            &import(&gui(&[
                ("dataset_config", "/d.toml".into()),
                ("max_train_steps", 400.into()),
                ("lr_warmup", 5.into()),
            ]))
            .unwrap(),
        );
        assert_eq!(c.optimizer.lr_warmup_steps, 20.0);
        // With a dataset config and no steps, epoch is not passed: sd-scripts' 1600 steps, said loudly.
        let imp = import(&gui(&[("dataset_config", "/d.toml".into()), ("epoch", 8.into())])).unwrap();
        let c = config(&imp);
        assert_eq!((c.training.max_train_steps, c.training.max_train_epochs), (0, 0));
        assert_eq!(level_of(&imp, "epoch"), Some(NoteLevel::ChangesRun));
        // There the GUI zeroes lr_warmup_steps: only the percentage counts.
        let c = config(
            &import(&gui(&[
                ("dataset_config", "/d.toml".into()),
                ("lr_warmup", 10.into()),
                ("lr_warmup_steps", 30.into()),
            ]))
            .unwrap(),
        );
        assert_eq!(c.optimizer.lr_warmup_steps, 0.1);
        // max_train_epochs (its own GUI field) is passed as is.
        let c = config(&import(&gui(&[("max_train_epochs", 3.into()), ("epoch", 10.into())])).unwrap());
        assert_eq!(c.training.max_train_epochs, 3);
    }

    #[test]
    fn the_gui_step_count_is_computed_from_the_folders() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        for (folder, n) in [("10_cat", 3), ("5_dog", 2), ("nounderscore", 4)] {
            std::fs::create_dir_all(img.join(folder)).unwrap();
            for i in 0..n {
                std::fs::write(img.join(folder).join(format!("{i}.PNG")), b"x").unwrap();
            }
            std::fs::write(img.join(folder).join("caption.txt"), b"x").unwrap();
        }
        let imp = import(&gui(&[
            ("train_data_dir", img.display().to_string().into()),
            ("epoch", 3.into()),
            ("train_batch_size", 4.into()),
            ("reg_data_dir", "/r".into()),
        ]))
        .unwrap();
        // (30 + 10) / 4 / 1 × 3 × 2 = 60
        assert_eq!(config(&imp).training.max_train_steps, 60);
        assert!(imp.notes.iter().any(|n| n.key == "epoch" && n.text.contains("40 / 4 / 1 × 3 × 2")), "{:?}", imp.notes);
    }

    #[test]
    fn zero_means_not_set_and_learning_rates_pick_the_networks() {
        let c = config(&import(&gui(&[("max_grad_norm", 0.into()), ("seed", 0.into())])).unwrap());
        assert_eq!(c.training.max_grad_norm, 1.0, "0 is dropped: sd-scripts' default 1.0 applies");
        let imp = import(&gui(&[("unet_lr", 1e-4.into()), ("text_encoder_lr", 0.into())])).unwrap();
        let c = config(&imp);
        assert!(c.trains_unet() && !c.trains_text_encoder());
        assert_eq!(c.optimizer.unet_lr, Some(1e-4));
        assert_eq!(level_of(&imp, "text_encoder_lr"), Some(NoteLevel::Info));
        let c = config(&import(&gui(&[("unet_lr", 0.into()), ("text_encoder_lr", 5e-5.into())])).unwrap());
        assert!(!c.trains_unet() && c.trains_text_encoder());
        assert_eq!(c.optimizer.text_encoder_lr, Some(crate::config::TextEncoderLr::All(5e-5)));
        let err = import(&gui(&[("learning_rate", 0.into())])).unwrap_err();
        assert!(err.contains("all 0"), "{err}");
    }

    #[test]
    fn noise_type_prompts_optimizer_args_and_additional_parameters() {
        let imp = import(&gui(&[
            ("noise_offset_type", "Multires".into()),
            ("sample_prompts", "a cat --n blurry\na dog".into()),
            ("sample_every_n_epochs", 1.into()),
            ("optimizer_args", "\"weight_decay=0.01\" \"betas=0.9,0.99\"".into()),
            (
                "additional_parameters",
                "--max_grad_norm 0.5 --lr_scheduler_args \"T_max=10\" 'eta_min=0' --network_train_unet_only".into(),
            ),
            ("use_wandb", true.into()),
        ]))
        .unwrap();
        let c = config(&imp);
        assert_eq!(c.loss.noise_offset, None);
        assert_eq!((c.loss.multires_noise_iterations, c.loss.multires_noise_discount), (Some(6), 0.3));
        let (path, text) = imp.prompt_file.clone().unwrap();
        assert_eq!(path, Path::new("./out/sample/prompt.txt"));
        assert_eq!(text, "a cat --n blurry\na dog");
        assert_eq!(c.samples.sample_prompts.as_deref(), Some(path.as_path()));
        assert_eq!(c.optimizer.optimizer_args, vec!["weight_decay=0.01", "betas=0.9,0.99"]);
        assert_eq!(c.training.max_grad_norm, 0.5);
        assert_eq!(c.optimizer.lr_scheduler_args, vec!["T_max=10", "eta_min=0"]);
        assert!(c.network.network_train_unet_only);
        assert_eq!(c.logging.log_with, "tensorboard");
        assert_eq!(level_of(&imp, "log_with"), Some(NoteLevel::Info));
        let err =
            import(&gui(&[("additional_parameters", "--lr_scheduler_type CosineAnnealingLR".into())])).unwrap_err();
        assert!(err.contains("lr_scheduler_type"), "{err}");
        let err = import(&gui(&[("additional_parameters", "--vae \"unclosed".into())])).unwrap_err();
        assert!(err.contains("unclosed"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_reported() {
        let imp = import(&gui(&[("my_new_field", 3.into()), ("vae", "/m/sdxl_vae.safetensors".into())])).unwrap();
        assert_eq!(level_of(&imp, "my_new_field"), Some(NoteLevel::Info));
        assert_eq!(imp.table["model"]["vae"].as_str(), Some("/m/sdxl_vae.safetensors"));
        let err = import(&gui(&[("network_dim", "lots".into())])).unwrap_err();
        assert!(err.contains("network_dim"), "{err}");
        let err = import(&gui(&[("train_inpainting", true.into())])).unwrap_err();
        assert!(err.contains("inpainting"), "{err}");
    }
}
