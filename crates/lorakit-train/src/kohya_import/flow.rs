//! sd-scripts' rectified-flow DiT trainers as the import reads their arguments:
//! `flux_train_network.py` (Flux.1, `networks.lora_flux`) and `sd3_train_network.py` (SD3 Medium,
//! SD3.5 Medium / Large, `networks.lora_sd3`). Both share `train_network.py`'s loop with their own
//! noise, loss and text encoding, so the SD options they read but never use are one table, with
//! per-script wording only where the reason differs; each script's own arguments, network
//! arguments, text-encoder rates and refusals are described by one [`FlowScript`] each.

use std::collections::BTreeMap;

use super::args::{check_bucket_reso_steps, coerce, flag, shown, Family, Table};
use super::key_lists::is_unset;
use super::ImportNote;

/// What differs between sd-scripts' two flow LoRA scripts.
#[derive(Debug)]
pub(super) struct FlowScript {
    /// The family the script trains.
    pub family: Family,
    /// The script's file name.
    pub script: &'static str,
    /// The network module its LoRAs need (lorakit's `networks.lora` on that family's model).
    pub module: &'static str,
    /// Arguments only this script takes: a set value marks a config for it.
    pub own_keys: &'static [&'static str],
    /// The text encoders, in the order `text_encoder_lr` lists their rates.
    pub encoders: &'static [&'static str],
    /// The model files a single-file checkpoint may need besides itself.
    pub parts: &'static str,
    /// The `network_args` ranks per layer type, read as `int(...)`.
    pub dim_args: &'static [&'static str],
    /// The `network_args` kept as text (block lists, parsed when the network is built).
    pub text_args: &'static [&'static str],
    /// What `split_qkv` splits, and how strong sd-scripts' own files then load.
    pub split_qkv: &'static str,
    /// The kohya_ss GUI's LoRA type for it.
    pub gui_type: &'static str,
}

/// `flux_train_network.py`.
pub(super) const FLUX: FlowScript = FlowScript {
    family: Family::Flux1,
    script: "flux_train_network.py",
    module: "networks.lora_flux",
    own_keys: &[
        "ae",
        "guidance_scale",
        "model_prediction_type",
        "discrete_flow_shift",
        "timestep_sampling",
        "sigmoid_scale",
        "split_mode",
        "model_type",
    ],
    encoders: &["CLIP-L", "T5-XXL"],
    parts: "its ae, clip_l and t5xxl when the checkpoint is a single file",
    dim_args: &[
        "img_attn_dim",
        "txt_attn_dim",
        "img_mlp_dim",
        "txt_mlp_dim",
        "img_mod_dim",
        "txt_mod_dim",
        "single_dim",
        "single_mod_dim",
    ],
    text_args: &["train_blocks", "in_dims", "train_double_block_indices", "train_single_block_indices"],
    split_qkv: "a q, k, v [and MLP] pair per fused layer); the saved file's fused layers carry alpha × parts, so ComfyUI/Forge/diffusers apply the trained strength — sd-scripts keeps alpha, and its files load 1/3 (qkv) or 1/4 (linear1) as strong",
    gui_type: "Flux1",
};

/// `sd3_train_network.py`.
pub(super) const SD3: FlowScript = FlowScript {
    family: Family::Sd3,
    script: "sd3_train_network.py",
    module: "networks.lora_sd3",
    own_keys: &[
        "clip_g",
        "save_clip",
        "save_t5xxl",
        "t5xxl_device",
        "t5xxl_dtype",
        "t5_dropout_rate",
        "clip_g_dropout_rate",
        "clip_l_dropout_rate",
        "enable_scaled_pos_embed",
        "apply_lg_attn_mask",
        "pos_emb_random_crop_rate",
        "training_shift",
    ],
    encoders: &["CLIP-L", "CLIP-G", "T5-XXL"],
    parts: "clip_l, clip_g and t5xxl when the checkpoint does not hold its text encoders",
    dim_args: &["context_attn_dim", "context_mlp_dim", "context_mod_dim", "x_attn_dim", "x_mlp_dim", "x_mod_dim"],
    text_args: &["emb_dims", "train_block_indices"],
    split_qkv: "a q, k, v pair per joint block's fused qkv); the saved file's fused layers carry alpha × 3, so ComfyUI/Forge/diffusers apply the trained strength — sd-scripts keeps alpha, and its files load 1/3 as strong",
    gui_type: "Standard",
};

/// Arguments both flow scripts take (no family on their own).
pub(super) const SHARED_KEYS: &[&str] = &[
    "clip_l",
    "t5xxl",
    "t5xxl_max_token_length",
    "apply_t5_attn_mask",
    "weighting_scheme",
    "logit_mean",
    "logit_std",
    "mode_scale",
];

impl FlowScript {
    /// The script that trains `family`, if it is a flow family.
    pub(super) fn of(family: Option<Family>) -> Option<&'static FlowScript> {
        match family? {
            Family::Flux1 => Some(&FLUX),
            Family::Sd3 => Some(&SD3),
            _ => None,
        }
    }

    /// The family's name.
    pub(super) fn name(&self) -> &'static str {
        self.family.name()
    }

    fn is_sd3(&self) -> bool {
        self.family == Family::Sd3
    }

    /// The other flow script (for its arguments in this one's config).
    fn other(&self) -> &'static FlowScript {
        if self.is_sd3() {
            &FLUX
        } else {
            &SD3
        }
    }

    /// Why lorakit does not import LyCORIS for this family.
    pub(super) fn lycoris_refusal(&self) -> String {
        format!(
            "LyCORIS on {name} (lycoris.kohya picks its own layers) is not supported by lorakit yet — it trains {name} LoRAs as sd-scripts' {module} does (kohya_ss GUI: LoRA_type {gui}); it will not train LyCORIS' network as that LoRA",
            name = self.name(),
            module = self.module,
            gui = self.gui_type,
        )
    }

    /// Why another network module is refused for this family.
    pub(super) fn wrong_module(&self) -> String {
        format!(
            "sd-scripts trains {} LoRAs with {} (networks.lora finds no layer of its transformer)",
            self.name(),
            self.module
        )
    }
}

/// Whether `key` is an argument of either flow script only (ignored in an SD-family config,
/// whose family detection has already refused it when set).
pub(super) fn is_flow_key(key: &str) -> bool {
    FLUX.own_keys.contains(&key) || SD3.own_keys.contains(&key) || SHARED_KEYS.contains(&key)
}

const NO_SNR: &str = "its loss has no SNR weighting: post_process_loss returns the loss as is";
const PLAIN_NOISE: &str = "it draws plain Gaussian noise: no offset or pyramid noise";
const NO_DDPM: &str = "a flow model has no DDPM noise schedule to rescale";
const SD2_SWITCH: &str = "it is an SD 2.x switch";
const FLUX_ONLY: &str = "it is an argument of sd-scripts' Flux.1 scripts";

/// Arguments of the SD scripts (and a few Flux.1 extras) that sd-scripts' flow scripts read but
/// never use, with why: (key, why `flux_train_network.py` does not, why `sd3_train_network.py`
/// does not). `None`: that script uses it. Dropped with a note.
const FLOW_IGNORES: &[(&str, Option<&str>, Option<&str>)] = &[
    ("min_snr_gamma", Some(NO_SNR), Some(NO_SNR)),
    ("scale_v_pred_loss_like_noise_pred", Some(NO_SNR), Some(NO_SNR)),
    ("v_pred_like_loss", Some(NO_SNR), Some(NO_SNR)),
    ("debiased_estimation_loss", Some(NO_SNR), Some(NO_SNR)),
    ("zero_terminal_snr", Some(NO_DDPM), Some(NO_DDPM)),
    (
        "v_parameterization",
        Some("the target is always the velocity ε − x₀"),
        Some("the model predicts the velocity, and the loss compares its x₀ estimate x_σ − σ·pred with x₀"),
    ),
    ("v2", Some(SD2_SWITCH), Some(SD2_SWITCH)),
    ("noise_offset", Some(PLAIN_NOISE), Some(PLAIN_NOISE)),
    ("noise_offset_random_strength", Some(PLAIN_NOISE), Some(PLAIN_NOISE)),
    ("adaptive_noise_scale", Some(PLAIN_NOISE), Some(PLAIN_NOISE)),
    ("multires_noise_iterations", Some(PLAIN_NOISE), Some(PLAIN_NOISE)),
    ("multires_noise_discount", Some(PLAIN_NOISE), Some(PLAIN_NOISE)),
    ("ip_noise_gamma", None, Some("its noisy input x_σ = σ·ε + (1 − σ)·x₀ has no input perturbation")),
    ("ip_noise_gamma_random_strength", None, Some("its noisy input has no input perturbation")),
    ("min_timestep", Some("σ comes from timestep_sampling"), None),
    ("max_timestep", Some("σ comes from timestep_sampling"), None),
    (
        "clip_skip",
        Some("Flux conditions on CLIP-L's pooled output and T5-XXL's last layer"),
        Some("SD3 conditions on CLIP-L's and CLIP-G's penultimate layers and pooled outputs and T5-XXL's last layer"),
    ),
    (
        "max_token_length",
        Some("T5-XXL's length is t5xxl_max_token_length (\"max_token_length is not used in Flux training\")"),
        Some("CLIP-L and CLIP-G take 77 tokens and T5-XXL t5xxl_max_token_length (it warns \"max_token_length is not used in Flux training\")"),
    ),
    ("no_half_vae", Some("lorakit runs Flux's autoencoder in f32 anyway, which is what it asks for"), None),
    ("vae", Some("its autoencoder is ae; flux_train_network.py never reads vae"), None),
    ("controlnet_model_name_or_path", Some("only flux_train_control_net.py uses a ControlNet"), Some(FLUX_ONLY)),
    ("mem_eff_save", Some("it is flux_train.py's (full fine-tuning) save option; a LoRA file is small"), Some(FLUX_ONLY)),
    ("single_blocks_to_swap", Some("current sd-scripts replaced it with blocks_to_swap"), Some(FLUX_ONLY)),
    ("double_blocks_to_swap", Some("current sd-scripts replaced it with blocks_to_swap"), Some(FLUX_ONLY)),
];

/// One argument of a flow script's config that needs the script's own handling; `false` when
/// the general rules apply to it.
pub(super) fn flow_arg(
    s: &FlowScript,
    key: &str,
    raw_key: &str,
    value: &toml::Value,
    args: &BTreeMap<String, toml::Value>,
    t: &mut Table,
    notes: &mut Vec<ImportNote>,
) -> Result<bool, String> {
    use toml::Value as V;
    let text = || match value {
        V::String(s) => s.trim().to_string(),
        other => other.to_string(),
    };
    let sd3 = s.is_sd3();
    let flux = !sd3;
    match key {
        "clip_l" | "t5xxl" => {
            if !is_unset(value) {
                t.put("model", key, V::String(text()));
            }
        }
        "ae" if flux => {
            if !is_unset(value) {
                t.put("model", key, V::String(text()));
            }
        }
        "clip_g" if sd3 => {
            if !is_unset(value) {
                t.put("model", key, V::String(text()));
            }
        }
        "t5xxl_max_token_length" => {
            if !is_unset(value) {
                let n = coerce(value, &V::Integer(0)).map_err(|e| format!("{raw_key}: {e}"))?;
                t.put("model", key, n);
            }
        }
        "apply_t5_attn_mask" | "weighting_scheme" | "logit_mean" | "logit_std" | "mode_scale" => {
            t.put_typed(key, value, raw_key)?
        }
        "apply_lg_attn_mask"
        | "enable_scaled_pos_embed"
        | "clip_l_dropout_rate"
        | "clip_g_dropout_rate"
        | "t5_dropout_rate"
        | "pos_emb_random_crop_rate"
        | "training_shift"
            if sd3 =>
        {
            t.put_typed(key, value, raw_key)?
        }
        "save_clip" | "save_t5xxl" | "t5xxl_device" | "t5xxl_dtype" if sd3 => {
            if !is_unset(value) {
                notes.push(ImportNote::info(
                    raw_key,
                    format!(
                        "{}: sd-scripts marks it \"[DOES NOT WORK]\" — no effect in kohya's run, none here",
                        shown(value)
                    ),
                ));
            }
        }
        "fp8_base_unet" => {
            let b = coerce(value, &V::Boolean(false)).map_err(|e| format!("{raw_key}: {e}"))?;
            if flux {
                t.put("accelerate", key, b);
            } else if b.as_bool() == Some(true) {
                return Err(
                    "fp8_base_unet = true: lorakit stores the transformer in fp8 with the text encoders in the mixed-precision dtype for Flux.1 only so far; remove it (the SD3 transformer then stays in the mixed-precision dtype) or use fp8_base"
                        .into(),
                );
            }
        }
        "guidance_scale" | "timestep_sampling" | "sigmoid_scale" | "discrete_flow_shift" | "model_prediction_type"
            if flux =>
        {
            t.put_typed(key, value, raw_key)?
        }
        "model_type" if flux => {
            let m = text().to_ascii_lowercase();
            if m == "chroma" {
                return Err(format!(
                    "{raw_key} = \"chroma\": Chroma is another model (no CLIP-L, no guidance embedding, its own modulation); lorakit trains Flux.1 (dev, schnell) only — it will not train it as Flux.1"
                ));
            }
            if !m.is_empty() && m != "flux" {
                return Err(format!(
                    "{raw_key} = {value}: sd-scripts' flux_train_network.py takes \"flux\" or \"chroma\"; lorakit trains \"flux\""
                ));
            }
        }
        "blocks_to_swap" => {
            if !is_unset(value) {
                let n = coerce(value, &V::Integer(0)).map_err(|e| format!("{raw_key}: {e}"))?;
                block_swap(n, raw_key, &shown(value), args, t, notes)?;
            }
        }
        "split_mode" if flux => {
            if flag(args, key)? {
                if args.get("blocks_to_swap").is_some_and(|v| !is_unset(v)) {
                    notes.push(ImportNote::info(
                        raw_key,
                        "true: deprecated, and ignored by sd-scripts because blocks_to_swap is set",
                    ));
                } else {
                    // flux_train_network.py: "`--blocks_to_swap 18` is automatically set".
                    block_swap(
                        V::Integer(18),
                        raw_key,
                        "true (deprecated: sd-scripts swaps 18 blocks instead)",
                        args,
                        t,
                        notes,
                    )?;
                }
            }
        }
        "cpu_offload_checkpointing" => {
            if flag(args, key)? {
                if !flag(args, "gradient_checkpointing")? {
                    notes.push(ImportNote::info(
                        raw_key,
                        "true: without gradient_checkpointing sd-scripts does not use it, and neither does lorakit",
                    ));
                } else if flux {
                    t.put("accelerate", "cpu_offload_checkpointing", V::Boolean(true));
                } else if args.get("blocks_to_swap").is_none_or(is_unset) {
                    // (With blocks_to_swap the script's own assertion comes first: flow_checks.)
                    return Err(
                        "cpu_offload_checkpointing with gradient_checkpointing: sd-scripts' SD3 transformer has no offloaded checkpointing — sd3_train_network.py stops with \"enable_gradient_checkpointing() got an unexpected keyword argument 'cpu_offload'\"; remove cpu_offload_checkpointing"
                            .into(),
                    );
                }
            }
        }
        "weighted_captions" => {
            if flag(args, key)? {
                return Err(format!(
                    "weighted_captions = true: sd-scripts' {} tokenizer has no weighted tokenization (it raises NotImplementedError), and lorakit reads caption weights only for SD 1.x/2.x/SDXL; turn it off",
                    if flux { "Flux" } else { "SD3" }
                ));
            }
            t.put_typed(key, value, raw_key)?;
        }
        "no_half_vae" if sd3 => {
            if flag(args, key)? {
                notes.push(ImportNote::info(
                    raw_key,
                    "true: sd3_train_network.py keeps the VAE in f32 with it; lorakit has no such switch for SD3 (accelerate.no_half_vae is SD 1.x/2.x/SDXL's), its SD3 run picks the VAE's precision itself — dropped",
                ));
            }
        }
        _ => {
            let ignored =
                FLOW_IGNORES.iter().find(|(k, _, _)| *k == key).and_then(|(_, f, s3)| if sd3 { *s3 } else { *f });
            if let Some(why) = ignored {
                if !is_unset(value) {
                    notes.push(ImportNote::info(
                        raw_key,
                        format!(
                            "{}: {} does not use it ({why}) — no effect in kohya's run, none here",
                            shown(value),
                            s.script
                        ),
                    ));
                }
            } else if s.other().own_keys.contains(&key) {
                if !is_unset(value) {
                    notes.push(ImportNote::info(
                        raw_key,
                        format!(
                            "{}: an argument of sd-scripts' {} ({}); {} ignores it, and so does lorakit",
                            shown(value),
                            s.other().script,
                            s.other().name(),
                            s.script
                        ),
                    ));
                }
            } else {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// sd-scripts' `blocks_to_swap` (Flux and SD3; for Flux also `split_mode`'s 18) →
/// `accelerate.blocks_to_swap`, which lorakit runs only with gradient checkpointing (sd-scripts
/// also swaps without it): without checkpointing the config is imported without block swap, and
/// a memory warning says so. The model's own limits (SD3: depth − 2, as sd-scripts asserts) are
/// checked when it loads.
fn block_swap(
    n: toml::Value,
    raw_key: &str,
    shown_value: &str,
    args: &BTreeMap<String, toml::Value>,
    t: &mut Table,
    notes: &mut Vec<ImportNote>,
) -> Result<(), String> {
    let count = n.as_integer().unwrap_or(0);
    if count < 0 {
        return Err(format!("{raw_key} = {count}: a number of blocks is 0 or more"));
    }
    if flag(args, "gradient_checkpointing")? {
        if raw_key != "blocks_to_swap" {
            notes.push(ImportNote::info(raw_key, format!("{shown_value}: accelerate.blocks_to_swap = {count}")));
        }
        t.put("accelerate", "blocks_to_swap", n);
    } else {
        notes.push(ImportNote::memory(
            raw_key,
            format!("{shown_value}: lorakit swaps {count} blocks only with gradient checkpointing (it copies each swapped block to the card again for the backward recomputation), which this config leaves off; imported without block swap — set training.gradient_checkpointing = true and accelerate.blocks_to_swap = {count} to swap"),
        ));
    }
    Ok(())
}

/// What the flow scripts check (`assert_extra_args`, the Huber threshold, `post_process_network`)
/// or set before training, and sd-scripts' Flux defaults that differ from lorakit's, written out
/// so the imported run trains what sd-scripts would.
pub(super) fn flow_checks(
    s: &FlowScript,
    args: &BTreeMap<String, toml::Value>,
    t: &mut Table,
    notes: &mut Vec<ImportNote>,
) -> Result<(), String> {
    let set = |k: &str| args.get(k).is_some_and(|v| !is_unset(v));
    if set("blocks_to_swap") && flag(args, "cpu_offload_checkpointing")? {
        return Err(
            "blocks_to_swap with cpu_offload_checkpointing: sd-scripts refuses this (\"blocks_to_swap is not supported with cpu_offload_checkpointing\"); remove one"
                .into(),
        );
    }
    check_bucket_reso_steps(args, s.name(), s.script)?;
    // Huber's "snr" schedule (sd-scripts' default) needs a DDPM schedule.
    let loss_type = args.get("loss_type").and_then(toml::Value::as_str).map(str::trim).unwrap_or("l2");
    let schedule = args.get("huber_schedule").and_then(toml::Value::as_str).map(str::trim).unwrap_or("snr");
    if matches!(loss_type, "huber" | "smooth_l1") && schedule == "snr" {
        return Err(format!(
            "loss_type = {loss_type:?} with huber_schedule = \"snr\" (sd-scripts' default): sd-scripts' {} training stops with \"Huber schedule 'snr' is not supported with the current model\"; set huber_schedule = \"exponential\" or \"constant\"",
            s.name()
        ));
    }
    if s.family == Family::Flux1 {
        // sd-scripts' argparse defaults that differ from lorakit's: written out, with a note.
        for (key, value, ours) in [
            ("model_prediction_type", toml::Value::String("sigma_scaled".into()), "\"raw\""),
            ("guidance_scale", toml::Value::Float(3.5), "1.0"),
        ] {
            if !t.seen.contains(key) {
                notes.push(ImportNote::info(
                    key,
                    format!("not set: sd-scripts' default {} is written as flow.{key} (lorakit's own default is {ours}), so the run trains what flux_train_network.py would", shown(&value)),
                ));
                t.put_typed(key, &value, key)?;
            }
        }
    }
    // Text-encoder outputs: sd-scripts caches T5-XXL's (and the CLIPs' unless they train: then
    // they run at every step over the cached T5 outputs — lorakit does the same).
    let caching = flag(args, "cache_text_encoder_outputs")? || flag(args, "cache_text_encoder_outputs_to_disk")?;
    if caching && trains_t5xxl(t) {
        return Err(
            "cache_text_encoder_outputs with network_args train_t5xxl=True: sd-scripts refuses this (\"T5XXL is trained, so cache_text_encoder_outputs cannot be used\"); turn caching off or drop train_t5xxl"
                .into(),
        );
    }
    if caching {
        for key in ["shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate", "token_warmup_step"] {
            if set(key) {
                return Err(format!(
                    "cache_text_encoder_outputs with {key}: sd-scripts' {} refuses this (\"when caching Text Encoder output, either caption_dropout_rate, shuffle_caption, token_warmup_step or caption_tag_dropout_rate cannot be used\"); turn caching off or remove {key}",
                    s.script
                ));
            }
        }
    }
    Ok(())
}

/// Whether the imported network trains T5-XXL.
fn trains_t5xxl(t: &Table) -> bool {
    t.table.get("network").and_then(|n| n.get("train_t5xxl")).and_then(toml::Value::as_bool) == Some(true)
}

/// The flow network's `create_network` kwargs → lorakit's network keys, as `lora_flux` /
/// `lora_sd3` read them: `split_qkv` / `train_t5xxl` / `verbose` are on only for the exact text
/// "True"; ranks per layer type are `int(...)`; block lists stay text. `lora_flux`'s GGPO and
/// per-module regex ranks / learning rates are refused (lorakit has neither). What the network
/// does not read (U-Net block weights; conv ranks, except SD3's patch embedding that `emb_dims`
/// adds) is listed as ignored, as in kohya's run.
pub(super) fn flow_network(
    s: &FlowScript,
    kwargs: &[(String, String)],
    t: &mut Table,
    notes: &mut Vec<ImportNote>,
) -> Result<(), String> {
    let get = |k: &str| kwargs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let flux = s.family == Family::Flux1;
    if flux {
        if let (Some(beta), Some(sigma)) = (get("ggpo_beta"), get("ggpo_sigma")) {
            return Err(format!(
                "network_args ggpo_beta={beta} ggpo_sigma={sigma}: GGPO (gradient-guided perturbation of the LoRA weights, kohya_ss' train_lora_ggpo) changes every step and is not implemented by lorakit; remove both to train without it"
            ));
        }
        for key in ["network_reg_lrs", "network_reg_dims"] {
            if let Some(v) = get(key) {
                return Err(format!(
                    "network_args {key}={v}: per-module {} chosen by regular expression are not implemented by lorakit; remove it (use the *_dim type ranks, train_blocks and the block indices)",
                    if key == "network_reg_lrs" { "learning rates" } else { "ranks" }
                ));
            }
        }
    }
    // lora_sd3 reaches a conv (the patch embedding x_embedder) only through emb_dims.
    let conv_reached = !flux && get("emb_dims").is_some();
    let net = &s.module["networks.".len()..];
    for (key, value) in kwargs {
        let key = key.as_str();
        let source = format!("network_args {key}={value}");
        let exact_true = |what: &str, notes: &mut Vec<ImportNote>| {
            let on = value == "True";
            if !on && !value.eq_ignore_ascii_case("false") && !value.is_empty() {
                notes.push(ImportNote::info(
                    source.clone(),
                    format!(
                        "{net} reads only the exact text True as on: kohya's run has {what} off, and so does lorakit"
                    ),
                ));
            }
            on
        };
        match key {
            k if s.dim_args.contains(&k) => {
                let v = coerce(&toml::Value::String(value.clone()), &toml::Value::Integer(0))
                    .map_err(|e| format!("{source}: {e}"))?;
                if v.as_integer().is_some_and(|i| i < 0) {
                    return Err(format!("{source}: a rank is 0 (none) or more"));
                }
                t.put("network", key, v);
            }
            k if s.text_args.contains(&k) => t.put("network", key, toml::Value::String(value.trim().to_string())),
            "split_qkv" => {
                let on = exact_true("split_qkv", notes);
                t.put("network", "split_qkv", toml::Value::Boolean(on));
                if on {
                    notes.push(ImportNote::info(
                        "split_qkv",
                        format!("split_qkv: trained as sd-scripts does ({}", s.split_qkv),
                    ));
                }
            }
            "train_t5xxl" => {
                let on = exact_true("train_t5xxl", notes);
                t.put("network", "train_t5xxl", toml::Value::Boolean(on));
            }
            "verbose" => notes.push(ImportNote::cosmetic(source)),
            "rank_dropout"
            | "module_dropout"
            | "loraplus_lr_ratio"
            | "loraplus_unet_lr_ratio"
            | "loraplus_text_encoder_lr_ratio" => t.put_typed(key, &toml::Value::String(value.clone()), &source)?,
            "conv_dim" | "conv_alpha" if conv_reached => {
                t.put_typed(key, &toml::Value::String(value.clone()), &source)?;
                if key == "conv_dim" && get("conv_alpha").is_none() {
                    // lora_sd3: conv_alpha = 1.0 when conv_dim comes alone.
                    t.put("network", "conv_alpha", toml::Value::Float(1.0));
                }
            }
            "conv_dim" | "conv_alpha" => notes.push(ImportNote::info(
                source,
                if flux {
                    "the Flux transformer and its text encoders have no conv layer: no effect in kohya's run, none here"
                } else {
                    "SD3's only conv layer, the patch embedding, gets a module only with emb_dims: no effect in kohya's run, none here"
                },
            )),
            "ggpo_beta" | "ggpo_sigma" if flux => notes.push(ImportNote::info(
                source,
                "GGPO needs both ggpo_beta and ggpo_sigma: alone it does nothing in kohya's run, nor here",
            )),
            _ => notes.push(ImportNote::info(
                source,
                format!("{} does not read it: kohya's run ignores it, and so does lorakit", s.module),
            )),
        }
    }
    Ok(())
}

/// A flow family's `text_encoder_lr`: `train_network.py` hands the value whole to the network
/// (`prepare_optimizer_params_with_multiple_te_lrs`), which reads one rate per text encoder —
/// `[CLIP-L, T5-XXL]` for Flux.1, `[CLIP-L, CLIP-G, T5-XXL]` for SD3 — and repeats the last one
/// given for the rest (one value: all; SD3's two values `[a, b]`: `[a, b, b]`). Written out as
/// lorakit's per-encoder list in the same order (one number when all are equal).
pub(super) fn text_encoder_lr(
    s: &FlowScript,
    value: &toml::Value,
    t: &mut Table,
    notes: &mut Vec<ImportNote>,
) -> Result<(), String> {
    let number = |v: &toml::Value| {
        coerce(v, &toml::Value::Float(0.0))
            .map(|f| f.as_float().unwrap_or(0.0))
            .map_err(|e| format!("text_encoder_lr: {e}"))
    };
    let rates: Vec<f64> = match value {
        toml::Value::Array(items) => items.iter().map(number).collect::<Result<_, _>>()?,
        toml::Value::String(s) if s.trim().is_empty() => Vec::new(),
        other => vec![number(other)?],
    };
    let Some(&last) = rates.last() else { return Ok(()) };
    let n = s.encoders.len();
    let net = &s.module["networks.".len()..];
    let per: Vec<f64> = (0..n).map(|k| rates.get(k).copied().unwrap_or(last)).collect();
    let listed =
        |rates: &[f64]| rates.iter().map(|r| toml::Value::Float(*r).to_string()).collect::<Vec<_>>().join(", ");
    if rates.len() > n {
        notes.push(ImportNote::info(
            "text_encoder_lr",
            format!(
                "{value}: {net} reads the first {n} ({}); the rest are unused in kohya's run, and here",
                s.encoders.join(", ")
            ),
        ));
    } else if rates.len() > 1 && rates.len() < n {
        let names: Vec<String> =
            s.encoders.iter().zip(&per).map(|(e, r)| format!("{e} {}", toml::Value::Float(*r))).collect();
        notes.push(ImportNote::info(
            "text_encoder_lr",
            format!(
                "{value}: {net} repeats the last rate for the encoders the list leaves out, so kohya's run trains {} — written as optimizer.text_encoder_lr = [{}]",
                names.join(", "),
                listed(&per)
            ),
        ));
    }
    if rates.len() >= n && !per[..n - 1].contains(&per[n - 1]) && !trains_t5xxl(t) {
        notes.push(ImportNote::info(
            "text_encoder_lr",
            format!(
                "{value}: the last rate is T5-XXL's, which trains only with network_args train_t5xxl=True; {} train(s) at {}",
                s.encoders[..n - 1].join(", "),
                listed(&per[..n - 1])
            ),
        ));
    }
    let lr = if per.iter().all(|r| *r == per[0]) {
        toml::Value::Float(per[0])
    } else {
        toml::Value::Array(per.into_iter().map(toml::Value::Float).collect())
    };
    t.put("optimizer", "text_encoder_lr", lr);
    Ok(())
}
