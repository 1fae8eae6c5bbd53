//! Importing sd-scripts configs: a `--config_file` TOML (any sections, flattened as sd-scripts
//! flattens them) or a kohya_ss GUI JSON. Every key with a lorakit equivalent is mapped (same
//! name, or the GUI's alias), values are converted to the type lorakit expects, keys that are
//! absent get sd-scripts' default rather than lorakit's (so the imported run trains what the
//! original would have), and every key that could not be mapped is listed.

use std::path::Path;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};

/// The result of an import: a lorakit config table plus what was not carried over.
#[derive(Debug, Clone)]
pub struct Imported {
    /// Sections → keys, ready for `--set` overrides and deserialisation.
    pub table: toml::Table,
    /// Keys with no lorakit equivalent (yet).
    pub unmapped: Vec<String>,
    /// Conversions worth telling the user about.
    pub notes: Vec<String>,
}

/// GUI and legacy names → lorakit (sd-scripts) names.
const ALIASES: &[(&str, &str)] = &[
    ("epoch", "max_train_epochs"),
    ("max_resolution", "resolution"),
    ("optimizer", "optimizer_type"),
    ("caption_extention", "caption_extension"),
    ("model_list", ""),
    ("save_model_as", "save_model_as"),
];

/// sd-scripts defaults that differ from lorakit's, applied when the imported file is silent.
fn sd_scripts_defaults() -> Vec<(&'static str, toml::Value)> {
    use toml::Value::{Boolean, Float, Integer, String as S};
    vec![
        ("learning_rate", Float(2e-6)),
        ("caption_extension", S(".caption".into())),
        ("save_every_n_epochs", Integer(0)),
        ("save_precision", S("float".into())),
        ("cache_latents", Boolean(false)),
        ("enable_bucket", Boolean(false)),
        ("sample_sampler", S("ddim".into())),
        ("log_with", S("none".into())),
        ("output_name", S("last".into())),
    ]
}

/// Reads an sd-scripts TOML or kohya_ss JSON file.
pub fn import_file(path: &Path) -> Result<Imported> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let flat =
        if is_json { flatten_json(&text) } else { flatten_toml(&text) }.map_err(|m| TrainError::config(path, m))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut imported = import_pairs(flat).map_err(|m| TrainError::config(path, m))?;
    resolve_relative(&mut imported.table, base);
    Ok(imported)
}

fn flatten_toml(text: &str) -> std::result::Result<Vec<(String, toml::Value)>, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let mut out = Vec::new();
    for (k, v) in table {
        match v {
            toml::Value::Table(inner) => out.extend(inner),
            other => out.push((k, other)),
        }
    }
    Ok(out)
}

fn flatten_json(text: &str) -> std::result::Result<Vec<(String, toml::Value)>, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let object = value.as_object().ok_or("a kohya_ss config is a JSON object")?;
    let mut out = Vec::new();
    for (k, v) in object {
        if let Some(tv) = json_to_toml(v) {
            out.push((k.clone(), tv));
        }
    }
    Ok(out)
}

fn json_to_toml(v: &serde_json::Value) -> Option<toml::Value> {
    Some(match v {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => toml::Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        serde_json::Value::String(s) => toml::Value::String(s.clone()),
        serde_json::Value::Array(a) => toml::Value::Array(a.iter().filter_map(json_to_toml).collect()),
        serde_json::Value::Object(_) => return None,
    })
}

/// What type each lorakit key holds (from a config with every option set).
fn key_types() -> Vec<(String, String, toml::Value)> {
    let full = toml::Value::try_from(TrainConfig::every_key_set()).expect("config serialises");
    let mut out = Vec::new();
    if let toml::Value::Table(sections) = full {
        for (section, keys) in sections {
            if let toml::Value::Table(keys) = keys {
                for (k, v) in keys {
                    out.push((section.clone(), k, v));
                }
            }
        }
    }
    out
}

/// Converts `value` to the type of `example`, or explains why not.
fn coerce(value: &toml::Value, example: &toml::Value) -> std::result::Result<toml::Value, String> {
    use toml::Value as V;
    let text = || match value {
        V::String(s) => s.trim().to_string(),
        other => other.to_string(),
    };
    Ok(match example {
        V::String(_) => match value {
            V::String(s) => V::String(s.clone()),
            V::Array(items) => V::String(
                items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            other => V::String(other.to_string()),
        },
        V::Integer(_) => match value {
            V::Integer(i) => V::Integer(*i),
            V::Float(f) if f.fract() == 0.0 => V::Integer(*f as i64),
            _ => V::Integer(text().parse::<i64>().map_err(|_| format!("expected a whole number, got {value}"))?),
        },
        V::Float(_) => match value {
            V::Float(f) => V::Float(*f),
            V::Integer(i) => V::Float(*i as f64),
            _ => V::Float(text().parse::<f64>().map_err(|_| format!("expected a number, got {value}"))?),
        },
        V::Boolean(_) => match value {
            V::Boolean(b) => V::Boolean(*b),
            _ => match text().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => V::Boolean(true),
                "false" | "0" | "no" => V::Boolean(false),
                _ => return Err(format!("expected true or false, got {value}")),
            },
        },
        V::Array(_) => match value {
            V::Array(a) => V::Array(a.clone()),
            V::String(s) if s.trim().is_empty() => V::Array(Vec::new()),
            // The GUI writes optimizer_args as one space-separated string.
            V::String(s) => V::Array(s.split_whitespace().map(|p| V::String(p.to_string())).collect()),
            other => V::Array(vec![other.clone()]),
        },
        _ => value.clone(),
    })
}

/// Maps flattened sd-scripts keys to a lorakit table.
pub fn import_pairs(pairs: Vec<(String, toml::Value)>) -> std::result::Result<Imported, String> {
    let types = key_types();
    let mut table = toml::Table::new();
    let mut unmapped = Vec::new();
    let mut notes = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let put = |table: &mut toml::Table, section: &str, key: &str, value: toml::Value| {
        table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("section is a table")
            .insert(key.to_string(), value);
    };
    for (raw_key, value) in pairs {
        // The GUI writes "" for unset options.
        if matches!(&value, toml::Value::String(s) if s.is_empty()) {
            continue;
        }
        let key = ALIASES.iter().find(|(a, _)| *a == raw_key).map_or(raw_key.as_str(), |(_, to)| *to);
        if key.is_empty() {
            continue;
        }
        match key {
            "lr_warmup" => {
                // GUI: warmup in percent of the steps.
                let pct = coerce(&value, &toml::Value::Float(0.0)).map_err(|e| format!("lr_warmup: {e}"))?;
                let ratio = pct.as_float().unwrap_or(0.0) / 100.0;
                if ratio > 0.0 {
                    put(&mut table, "optimizer", "lr_warmup_steps", toml::Value::Float(ratio));
                    seen.insert("lr_warmup_steps".to_string());
                }
                continue;
            }
            "network_args" => {
                let items = coerce(&value, &toml::Value::Array(Vec::new()))?;
                for item in items.as_array().cloned().unwrap_or_default() {
                    let text = item.as_str().map_or_else(|| item.to_string(), str::to_string);
                    match text.split_once('=') {
                        Some(("conv_dim", v)) => {
                            let v = v.trim().parse::<i64>().map_err(|_| format!("network_args conv_dim={v}"))?;
                            put(&mut table, "network", "conv_dim", toml::Value::Integer(v));
                        }
                        Some(("conv_alpha", v)) => {
                            let v = v.trim().parse::<f64>().map_err(|_| format!("network_args conv_alpha={v}"))?;
                            put(&mut table, "network", "conv_alpha", toml::Value::Float(v));
                        }
                        Some((
                            key @ ("rank_dropout"
                            | "module_dropout"
                            | "block_lr_zero_threshold"
                            | "loraplus_lr_ratio"
                            | "loraplus_unet_lr_ratio"
                            | "loraplus_text_encoder_lr_ratio"),
                            v,
                        )) => {
                            let v = v.trim().parse::<f64>().map_err(|_| format!("network_args {key}={v}"))?;
                            put(&mut table, "network", key, toml::Value::Float(v));
                        }
                        // Block lists stay strings, parsed as sd-scripts parses them.
                        Some((
                            key @ ("down_lr_weight" | "mid_lr_weight" | "up_lr_weight" | "block_dims" | "block_alphas"
                            | "conv_block_dims" | "conv_block_alphas"),
                            v,
                        )) => {
                            put(&mut table, "network", key, toml::Value::String(v.to_string()));
                        }
                        _ => unmapped.push(format!("network_args {text}")),
                    }
                }
                continue;
            }
            "LoRA_type" => {
                let t = value.as_str().unwrap_or_default();
                if !["Standard", "Kohya LoCon", "LoCon"].contains(&t) {
                    unmapped.push(format!("LoRA_type = {t:?} (only Standard LoRA and LoCon are trained so far)"));
                }
                continue;
            }
            "max_token_length" if matches!(&value, toml::Value::String(s) if s == "75") => {
                put(&mut table, "training", "max_token_length", toml::Value::Integer(75));
                continue;
            }
            _ => {}
        }
        match types.iter().find(|(_, k, _)| k == key) {
            Some((section, k, example)) => {
                let v = coerce(&value, example).map_err(|e| format!("{raw_key}: {e}"))?;
                put(&mut table, section, k, v);
                seen.insert(k.clone());
            }
            None => unmapped.push(raw_key.clone()),
        }
    }
    for (key, value) in sd_scripts_defaults() {
        if !seen.contains(key) {
            if let Some((section, _, _)) = types.iter().find(|(_, k, _)| k == key) {
                put(&mut table, section, key, value);
            }
        }
    }
    if !seen.contains("seed") {
        notes.push("no seed in the file (sd-scripts draws a random one): using training.seed = 42".into());
    }
    if seen.contains("logging_dir") && !seen.contains("log_with") {
        put(&mut table, "logging", "log_with", toml::Value::String("tensorboard".into()));
    }
    unmapped.sort();
    unmapped.dedup();
    Ok(Imported { table, unmapped, notes })
}

/// Relative paths in the imported file are taken from the current directory by sd-scripts;
/// keep them as they are when they exist there, else try the file's folder.
fn resolve_relative(table: &mut toml::Table, base: &Path) {
    for (section, key) in [
        ("model", "pretrained_model_name_or_path"),
        ("dataset", "train_data_dir"),
        ("dataset", "reg_data_dir"),
        ("dataset", "dataset_config"),
        ("samples", "sample_prompts"),
        ("network", "network_weights"),
    ] {
        if let Some(toml::Value::String(p)) = table.get_mut(section).and_then(|s| s.get_mut(key)) {
            let path = Path::new(p.as_str());
            if path.is_relative() && !path.exists() && base.join(path).exists() {
                *p = base.join(path).display().to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import_toml(text: &str) -> (TrainConfig, Imported) {
        let imported = import_pairs(flatten_toml(text).unwrap()).unwrap();
        let config: TrainConfig = toml::Value::Table(imported.table.clone()).try_into().unwrap();
        (config, imported)
    }

    #[test]
    fn sd_scripts_toml_sections_are_flattened_and_mapped() {
        let (c, imp) = import_toml(
            r#"
[model_arguments]
pretrained_model_name_or_path = "/models/sd15.safetensors"
v_parameterization = false
[additional_network_arguments]
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
network_args = ["conv_dim=8", "conv_alpha=4", "algo=locon", "down_lr_weight=sine+0.5", "block_dims=8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8", "loraplus_lr_ratio=16"]
scale_weight_norms = 1.0
network_multiplier = 0.8
unet_lr = 1e-4
text_encoder_lr = 5e-5
[optimizer_arguments]
optimizer_type = "AdamW"
learning_rate = 1e-4
lr_scheduler = "cosine"
lr_warmup_steps = 100
optimizer_args = ["weight_decay=0.1"]
[training_arguments]
max_train_epochs = 10
train_batch_size = 2
seed = 7
mixed_precision = "bf16"
xformers = true
save_every_n_epochs = 2
[dataset_arguments]
resolution = "768,512"
enable_bucket = true
shuffle_caption = true
"#,
        );
        assert_eq!(c.network.network_dim, 32);
        assert_eq!(c.network.network_alpha, 16.0);
        assert_eq!(c.network.conv_dim, Some(8));
        assert_eq!(c.network.conv_alpha, Some(4.0));
        assert_eq!(c.optimizer.lr_warmup_steps, 100.0);
        assert_eq!(c.optimizer.optimizer_args, vec!["weight_decay=0.1".to_string()]);
        assert_eq!(c.training.train_batch_size, 2);
        assert_eq!(c.accelerate.mixed_precision, "bf16");
        assert_eq!(c.dataset.resolution, "768,512");
        assert_eq!(c.save.save_every_n_epochs, 2);
        // Silent keys get sd-scripts' defaults, not lorakit's.
        assert_eq!(c.dataset.caption_extension, ".caption");
        assert!(!c.training.cache_latents);
        assert!(c.dataset.shuffle_caption);
        assert_eq!(imp.unmapped, vec!["network_args algo=locon", "xformers"]);
        assert_eq!(c.network.down_lr_weight.as_deref(), Some("sine+0.5"));
        assert_eq!(c.network.block_dims.as_deref().map(|d| d.split(',').count()), Some(25));
        assert_eq!(c.network.loraplus_lr_ratio, Some(16.0));
        assert_eq!(c.network.scale_weight_norms, Some(1.0));
        assert_eq!(c.network.network_multiplier, 0.8);
    }

    #[test]
    fn the_whole_training_surface_imports_without_loss() {
        let (c, imp) = import_toml(
            r#"
pretrained_model_name_or_path = "/m.safetensors"
network_module = "networks.lora"
network_args = ["conv_dim=4", "conv_alpha=2", "rank_dropout=0.1", "module_dropout=0.05", "down_lr_weight=cosine", "mid_lr_weight=0.5", "up_lr_weight=sine+0.25", "block_lr_zero_threshold=0.1", "loraplus_unet_lr_ratio=8", "loraplus_text_encoder_lr_ratio=2"]
network_dropout = 0.1
scale_weight_norms = 1.5
optimizer_type = "Prodigy"
optimizer_args = ["decouple=True", "weight_decay=0.01", "d_coef=2", "use_bias_correction=True", "safeguard_warmup=True", "betas=0.9,0.99"]
learning_rate = 1.0
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
lr_warmup_steps = 0.05
loss_type = "huber"
huber_schedule = "snr"
huber_c = 0.2
min_snr_gamma = 5
debiased_estimation_loss = true
noise_offset = 0.05
noise_offset_random_strength = true
adaptive_noise_scale = 0.01
multires_noise_iterations = 6
multires_noise_discount = 0.3
ip_noise_gamma = 0.1
min_timestep = 100
max_timestep = 900
shuffle_caption = true
keep_tokens = 1
keep_tokens_separator = "|||"
caption_dropout_rate = 0.05
caption_dropout_every_n_epochs = 3
caption_tag_dropout_rate = 0.1
token_warmup_min = 2
token_warmup_step = 0.2
max_token_length = 225
flip_aug = true
color_aug = true
random_crop = true
alpha_mask = true
masked_loss = true
cache_latents = false
mixed_precision = "fp16"
full_fp16 = true
fp8_base = true
no_half_vae = true
gradient_checkpointing = true
"#,
        );
        assert!(imp.unmapped.is_empty(), "unmapped: {:?}", imp.unmapped);
        assert_eq!(c.optimizer.optimizer_type, "Prodigy");
        assert_eq!(c.optimizer.optimizer_args.len(), 6);
        assert_eq!(c.network.up_lr_weight.as_deref(), Some("sine+0.25"));
        assert_eq!(c.network.loraplus_unet_lr_ratio, Some(8.0));
        assert_eq!(c.network.scale_weight_norms, Some(1.5));
        assert_eq!(c.loss.huber_c, 0.2);
        assert!(c.loss.masked_loss && c.dataset.alpha_mask && c.dataset.color_aug && c.dataset.random_crop);
        assert!(c.accelerate.full_fp16 && c.accelerate.fp8_base && c.accelerate.no_half_vae);
        assert_eq!(c.training.max_token_length, 225);
        c.validate().unwrap();
    }

    #[test]
    fn kohya_gui_json_is_mapped_with_its_aliases() {
        let json = r#"{
            "pretrained_model_name_or_path": "/m/sd15.safetensors",
            "train_data_dir": "/data/img", "reg_data_dir": "",
            "epoch": 4, "max_resolution": "512,512", "optimizer": "AdamW",
            "lr_warmup": 10, "learning_rate": 0.0001, "network_dim": 8, "network_alpha": 4,
            "max_token_length": "150", "save_precision": "fp16", "cache_latents": true,
            "LoRA_type": "Standard", "clip_skip": 2, "optimizer_args": "weight_decay=0.01 eps=1e-8",
            "sample_prompts": "", "use_wandb": false, "seed": 1234
        }"#;
        let imp = import_pairs(flatten_json(json).unwrap()).unwrap();
        let c: TrainConfig = toml::Value::Table(imp.table.clone()).try_into().unwrap();
        assert_eq!(c.training.max_train_epochs, 4);
        assert_eq!(c.dataset.resolution, "512,512");
        assert_eq!(c.optimizer.lr_warmup_steps, 0.1);
        assert_eq!(c.training.max_token_length, 150);
        assert_eq!(c.model.clip_skip, Some(2));
        assert_eq!(c.optimizer.optimizer_args.len(), 2);
        assert!(c.dataset.reg_data_dir.is_none());
        assert_eq!(imp.unmapped, vec!["use_wandb"]);
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = import_pairs(flatten_json(r#"{"network_dim": "lots"}"#).unwrap()).unwrap_err();
        assert!(err.contains("network_dim"), "{err}");
    }
}
