//! sd-scripts arguments (a `--config_file` TOML, flattened as sd-scripts flattens it, or what the
//! kohya_ss GUI passes) → a lorakit config table. Every argument with a lorakit equivalent is
//! mapped and converted to the type lorakit expects; arguments that are absent get sd-scripts'
//! default rather than lorakit's (so the imported run trains what the original would have);
//! network types and model families lorakit cannot train are refused with the reason; everything
//! else is listed as an [`ImportNote`], ranked by whether it changes the run. The flow scripts'
//! (Flux.1, SD3) own arguments and rules are in [`super::flow`].

use std::collections::BTreeMap;

use super::flow::{self, FlowScript};
use super::key_lists::{is_cosmetic, is_sd_scripts_arg, is_unset};
use super::{ImportNote, Imported};

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

/// Model families sd-scripts trains LoRAs for, as a config shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Stable Diffusion 1.x.
    Sd1,
    /// Stable Diffusion 2.x (`v2`).
    Sd2,
    /// SDXL and its descendants (Pony, Illustrious, NoobAI).
    Sdxl,
    /// Flux.1.
    Flux1,
    /// SD3 / SD3.5.
    Sd3,
    /// HunyuanImage 2.1.
    HunyuanImage,
    /// Anima.
    Anima,
    /// Lumina Image 2.0.
    Lumina,
}

impl Family {
    /// The name users know.
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
            Family::Sdxl => "SDXL",
            Family::Flux1 => "Flux.1",
            Family::Sd3 => "SD3",
            Family::HunyuanImage => "HunyuanImage-2.1",
            Family::Anima => "Anima",
            Family::Lumina => "Lumina",
        }
    }

    /// lorakit's `model.model_family` value, for the families lorakit trains.
    pub fn config_value(self) -> Option<&'static str> {
        match self {
            Family::Sd1 => Some("sd1"),
            Family::Sd2 => Some("sd2"),
            Family::Sdxl => Some("sdxl"),
            Family::Flux1 => Some("flux"),
            Family::Sd3 => Some("sd3"),
            _ => None,
        }
    }

    /// The family a `model.model_family` value names.
    pub fn from_config_value(value: &str) -> Option<Family> {
        [Family::Sd1, Family::Sd2, Family::Sdxl, Family::Flux1, Family::Sd3]
            .into_iter()
            .find(|f| f.config_value() == Some(value))
    }
}

/// Refuses a family lorakit cannot train yet, naming what in the file showed it.
pub fn refuse_unsupported_family(family: Family, shown_by: &str) -> Result<(), String> {
    if family.config_value().is_some() {
        return Ok(());
    }
    Err(format!(
        "this is a LoRA config for {} ({shown_by}); lorakit trains SD 1.x, SD 2.x, SDXL (Pony, Illustrious, NoobAI), Flux.1 and SD3 LoRAs so far, {} support is planned — it will not train it as another family",
        family.name(),
        family.name()
    ))
}

/// sd-scripts network modules lorakit has no trainer for, with what they are.
const UNSUPPORTED_NETWORK_MODULES: &[(&str, &str)] = &[
    ("networks.dylora", "DyLoRA"),
    ("networks.lora_fa", "LoRA-FA"),
    ("networks.oft", "OFT"),
    ("networks.oft_flux", "Flux OFT"),
    ("networks.loha", "sd-scripts' native LoHa (for SDXL/Anima); lorakit trains LyCORIS' LoHa instead: network_module = \"lycoris.kohya\", algo=loha"),
    ("networks.lokr", "sd-scripts' native LoKr (for SDXL/Anima); lorakit trains LyCORIS' LoKr instead: network_module = \"lycoris.kohya\", algo=lokr"),
];

/// sd-scripts network modules that mark a model family.
const FAMILY_NETWORK_MODULES: &[(&str, Family)] = &[
    ("networks.lora_flux", Family::Flux1),
    ("networks.oft_flux", Family::Flux1),
    ("networks.lora_sd3", Family::Sd3),
    ("networks.lora_hunyuan_image", Family::HunyuanImage),
    ("networks.lora_anima", Family::Anima),
    ("networks.lora_lumina", Family::Lumina),
];

/// `network_args` lorakit maps for kohya's `networks.lora`, to `[network]` keys of the same name.
const LORA_NUMBER_ARGS: &[&str] = &[
    "conv_dim",
    "conv_alpha",
    "rank_dropout",
    "module_dropout",
    "block_lr_zero_threshold",
    "loraplus_lr_ratio",
    "loraplus_unet_lr_ratio",
    "loraplus_text_encoder_lr_ratio",
];
/// Block lists stay strings, parsed as sd-scripts parses them.
const LORA_LIST_ARGS: &[&str] = &[
    "down_lr_weight",
    "mid_lr_weight",
    "up_lr_weight",
    "block_dims",
    "block_alphas",
    "conv_block_dims",
    "conv_block_alphas",
];

/// Settings sd-scripts supports that lorakit does not, with what ignoring them means.
const UNSUPPORTED_WITH_REASON: &[(&str, &str)] = &[
    ("face_crop_aug_range", "face-centred random crops are not applied"),
    ("conditioning_data_dir", "loss masks from a conditioning folder are not applied"),
    ("base_weights", "these LoRAs are not merged into the base model before training"),
    ("base_weights_multiplier", "base weights are not merged"),
    ("in_json", "fine-tuning metadata is not read: use DreamBooth folders or a dataset config"),
    ("dataset_repeats", "fine-tuning repeats are not used"),
    ("initial_epoch", "training starts at epoch 1"),
    ("initial_step", "training starts at step 0"),
    ("skip_until_initial_step", "no steps are skipped"),
    ("fp16_master_weights_and_gradients", "LoRA weights keep f32 master copies"),
    ("fp8_base_unet", "fp8_base_unet is a Flux option"),
    ("enable_wildcard", "enable_wildcard is handled per dataset"),
];

/// `sdxl_train.py`'s (SDXL full fine-tuning) own arguments: `sdxl_train_network.py` does not take
/// them, so sd-scripts ignores them in a LoRA run; with what a LoRA config uses instead.
const SDXL_FINE_TUNING_ARGS: &[(&str, &str)] = &[
    ("block_lr", "for block-wise LoRA learning rates use network_args down_lr_weight / mid_lr_weight / up_lr_weight"),
    ("learning_rate_te1", "a LoRA's text encoders train at text_encoder_lr"),
    ("learning_rate_te2", "a LoRA's text encoders train at text_encoder_lr"),
    ("train_text_encoder", "a LoRA trains the text encoders unless network_train_unet_only is set"),
    ("fused_optimizer_groups", "a memory option of full fine-tuning"),
    ("diffusers_xformers", "an attention option of full fine-tuning"),
];

/// Why `clip_skip` is not carried over for SDXL.
const SDXL_CLIP_SKIP: &str = "SDXL always conditions on the penultimate layer of both text encoders (what A1111's \"clip skip 2\" means for SDXL models such as Pony); sd-scripts ignores clip_skip for SDXL with a warning, and lorakit has no clip_skip for SDXL — dropped";

/// Settings that change which files are kept or how they are labelled, not the weights.
const INFO_WITH_REASON: &[(&str, &str)] = &[
    ("save_last_n_steps", "step saves are not rotated: every step save is kept"),
    ("save_last_n_epochs_state", "states are not rotated separately from LoRA files"),
    ("save_last_n_steps_state", "states are not rotated separately from LoRA files"),
    ("save_n_epoch_ratio", "use save_every_n_epochs"),
    ("no_metadata", "lorakit always writes ss_*/modelspec metadata (loaders need it)"),
    ("metadata_usage_hint", "not written"),
    ("log_prefix", "logs go to a folder named with the run's start time"),
];

/// What `put` needs to place a key.
pub(super) struct Table<'t> {
    pub(super) table: toml::Table,
    types: &'t [(String, String, toml::Value)],
    pub(super) seen: std::collections::BTreeSet<String>,
}

impl Table<'_> {
    pub(super) fn put(&mut self, section: &str, key: &str, value: toml::Value) {
        self.table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("section is a table")
            .insert(key.to_string(), value);
        self.seen.insert(key.to_string());
    }

    /// Puts `value` under lorakit key `key` (its section found from the config), converted to
    /// the key's type; `source` names it in errors.
    pub(super) fn put_typed(&mut self, key: &str, value: &toml::Value, source: &str) -> Result<(), String> {
        let (section, example) = match self.types.iter().find(|(_, k, _)| k == key) {
            Some((s, _, e)) => (s.clone(), e.clone()),
            None => return Err(format!("{source}: internal: lorakit has no key {key}")),
        };
        let v = coerce(value, &example).map_err(|e| format!("{source}: {e}"))?;
        self.put(&section, key, v);
        Ok(())
    }
}

/// What type each lorakit key holds: (section, key, example value).
fn key_types() -> Vec<(String, String, toml::Value)> {
    crate::config::key_examples()
        .into_iter()
        .flat_map(|(section, keys)| keys.into_iter().map(move |(k, v)| (section.clone(), k, v)))
        .collect()
}

/// Converts `value` to the type of `example`, or explains why not. Whole numbers must fit
/// exactly: a value that would overflow or lose digits is an error, never clamped.
pub(super) fn coerce(value: &toml::Value, example: &toml::Value) -> Result<toml::Value, String> {
    use toml::Value as V;
    let text = || match value {
        V::String(s) => s.trim().trim_matches('"').to_string(),
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
            V::Float(f) => V::Integer(whole(*f).ok_or_else(|| format!("expected a whole number, got {value}"))?),
            _ => {
                let t = text();
                match t.parse::<i64>() {
                    Ok(i) => V::Integer(i),
                    Err(_) => V::Integer(
                        t.parse::<f64>()
                            .ok()
                            .and_then(whole)
                            .ok_or_else(|| format!("expected a whole number that fits in 64 bits, got {value}"))?,
                    ),
                }
            }
        },
        V::Float(_) => {
            let f = match value {
                V::Float(f) => *f,
                V::Integer(i) => *i as f64,
                _ => text().parse::<f64>().map_err(|_| format!("expected a number, got {value}"))?,
            };
            if !f.is_finite() {
                return Err(format!("expected a finite number, got {value}"));
            }
            V::Float(f)
        }
        V::Boolean(_) => match value {
            V::Boolean(b) => V::Boolean(*b),
            _ => match text().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => V::Boolean(true),
                "false" | "0" | "no" | "" => V::Boolean(false),
                _ => return Err(format!("expected true or false, got {value}")),
            },
        },
        V::Array(_) => match value {
            V::Array(a) => V::Array(
                a.iter()
                    .map(|i| V::String(unquote(&i.as_str().map_or_else(|| i.to_string(), str::to_string))))
                    .collect(),
            ),
            V::String(s) => V::Array(split_args(s).into_iter().map(V::String).collect()),
            other => V::Array(vec![V::String(other.to_string())]),
        },
        _ => value.clone(),
    })
}

/// `f` as an integer when it is one and fits exactly.
fn whole(f: f64) -> Option<i64> {
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15).then_some(f as i64)
}

/// A value for a note: whole numbers as the user wrote them (the GUI's numbers arrive as `2.0`).
pub(super) fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::Float(f) => whole(*f).map_or_else(|| value.to_string(), |i| i.to_string()),
        other => other.to_string(),
    }
}

/// Strips one pair of surrounding quotes (`"weight_decay=0.1"` as the GUI writes it).
fn unquote(s: &str) -> String {
    let t = s.trim();
    t.strip_prefix('"').and_then(|r| r.strip_suffix('"')).unwrap_or(t).replace('"', "")
}

/// Splits a GUI argument string as the GUI does (`str(x).replace('"', "").split()`).
pub(super) fn split_args(s: &str) -> Vec<String> {
    s.replace('"', "").split_whitespace().map(str::to_string).collect()
}

/// Maps sd-scripts arguments (later pairs win, as in sd-scripts' namespace) to a lorakit table.
pub fn import_sd_scripts_args(pairs: Vec<(String, toml::Value)>) -> Result<Imported, String> {
    import_args(pairs, None)
}

/// [`import_sd_scripts_args`] knowing what the base checkpoint's own weights say its family is
/// (an sd-scripts TOML does not name the script it is for; the checkpoint does), with the path.
pub(crate) fn import_args(
    pairs: Vec<(String, toml::Value)>,
    checkpoint: Option<(Family, String)>,
) -> Result<Imported, String> {
    let mut args: BTreeMap<String, toml::Value> = BTreeMap::new();
    for (k, v) in pairs {
        args.insert(k, v);
    }
    let types = key_types();
    let mut t = Table { table: toml::Table::new(), types: &types, seen: Default::default() };
    let mut notes = Vec::new();

    let family = family_of(&args, checkpoint, &mut t, &mut notes)?;
    let sdxl = family == Some(Family::Sdxl);
    let flow = FlowScript::of(family);
    network_of(&args, family, &mut t, &mut notes)?;
    let lycoris = args.get("network_module").and_then(toml::Value::as_str).is_some_and(|m| m.trim() == "lycoris.kohya");

    for (raw_key, value) in &args {
        let key = match raw_key.as_str() {
            "caption_extention" => "caption_extension",
            k => k,
        };
        match key {
            // Handled above.
            "network_module" | "network_args" | "model_family" => continue,
            // Read by family_of; a Flux.1 or SD3 config lists it as ignored below.
            "v2" if flow.is_none() => continue,
            "network_dropout" if lycoris => continue,
            "text_encoder_lr" => {
                text_encoder_lr(value, family, &mut t, &mut notes)?;
                continue;
            }
            "clip_skip" if sdxl => {
                if !is_unset(value) {
                    notes.push(ImportNote::info(raw_key.clone(), format!("{}: {SDXL_CLIP_SKIP}", shown(value))));
                }
                continue;
            }
            "cache_text_encoder_outputs" | "cache_text_encoder_outputs_to_disk"
                if matches!(family, Some(Family::Sd1 | Family::Sd2)) =>
            {
                if !is_unset(value) {
                    notes.push(ImportNote::info(
                        raw_key.clone(),
                        format!("{value}: train_network.py (SD 1.x/2.x) has no such argument, so sd-scripts does not cache, and neither does the import (training.cache_text_encoder_outputs can be set by hand)"),
                    ));
                }
                continue;
            }
            "fused_backward_pass" if !is_unset(value) => {
                fused_backward_pass(&args)?;
                notes.push(ImportNote::cosmetic(raw_key.clone()));
                continue;
            }
            _ if !is_unset(value) && SDXL_FINE_TUNING_ARGS.iter().any(|(k, _)| *k == key) => {
                let instead = SDXL_FINE_TUNING_ARGS.iter().find(|(k, _)| *k == key).map_or("", |(_, i)| *i);
                notes.push(ImportNote::info(
                    raw_key.clone(),
                    format!("{value}: an sdxl_train.py (SDXL full fine-tuning) argument that sdxl_train_network.py does not take — sd-scripts ignores it in a LoRA run, and so does lorakit ({instead})"),
                ));
                continue;
            }
            "lr_scheduler_type" | "dataset_class" if !is_unset(value) => {
                let (what, instead) = if key == "dataset_class" {
                    ("dataset", "the built-in dataset")
                } else {
                    ("scheduler", "lr_scheduler")
                };
                return Err(format!(
                    "{key} = {value}: a custom Python class replaces sd-scripts' own {what} — lorakit cannot run it; remove it to use {instead}"
                ));
            }
            "log_with" => {
                let v = value.as_str().unwrap_or_default().trim().to_ascii_lowercase();
                if v == "wandb" || v == "all" {
                    notes.push(ImportNote::info(
                        key,
                        format!("{v:?}: Weights & Biases is not supported; logging to TensorBoard (and log.jsonl/csv)"),
                    ));
                    t.put("logging", "log_with", toml::Value::String("tensorboard".into()));
                    continue;
                }
            }
            "use_8bit_adam" | "use_lion_optimizer" => {
                if value.as_bool() == Some(true) {
                    let name = if key == "use_8bit_adam" { "AdamW8bit" } else { "Lion" };
                    if args.get("optimizer_type").is_none_or(is_unset) {
                        t.put("optimizer", "optimizer_type", toml::Value::String(name.into()));
                    }
                }
                continue;
            }
            "max_token_length" if flow.is_none() && matches!(value, toml::Value::String(s) if s.trim() == "75") => {
                t.put("training", "max_token_length", toml::Value::Integer(75));
                continue;
            }
            _ => {}
        }
        if let Some(script) = flow {
            if flow::flow_arg(script, key, raw_key, value, &args, &mut t, &mut notes)? {
                continue;
            }
        } else if flow::is_flow_key(key) {
            continue; // checked by family_of: unset here
        }
        if t.types.iter().any(|(_, k, _)| k == key) {
            t.put_typed(key, value, raw_key)?;
            continue;
        }
        if is_unset(value) {
            // An option left off (GUI-written files list many): nothing to carry over.
            continue;
        }
        if is_cosmetic(key) {
            notes.push(ImportNote::cosmetic(raw_key.clone()));
        } else if let Some((_, why)) = UNSUPPORTED_WITH_REASON.iter().find(|(k, _)| *k == key) {
            notes.push(ImportNote::changes_run(raw_key.clone(), format!("{value} is not supported: {why}")));
        } else if let Some((_, why)) = INFO_WITH_REASON.iter().find(|(k, _)| *k == key) {
            notes.push(ImportNote::info(raw_key.clone(), format!("{value}: {why}")));
        } else if is_sd_scripts_arg(key) {
            notes.push(ImportNote::changes_run(
                raw_key.clone(),
                format!("{value} is not supported by lorakit yet; ignored"),
            ));
        } else {
            notes.push(ImportNote::info(
                raw_key.clone(),
                "not an sd-scripts argument: sd-scripts ignores it, and so does lorakit".to_string(),
            ));
        }
    }

    // sd-scripts logs to TensorBoard when a logging_dir is given without log_with.
    if t.seen.contains("logging_dir") && !t.seen.contains("log_with") {
        t.put("logging", "log_with", toml::Value::String("tensorboard".into()));
    }
    for (key, value) in sd_scripts_defaults() {
        if !t.seen.contains(key) {
            if let Some((section, _, _)) = types.iter().find(|(_, k, _)| k == key) {
                let section = section.clone();
                t.put(&section, key, value);
            }
        }
    }
    if sdxl {
        sdxl_checks(&args)?;
    }
    if let Some(script) = flow {
        flow::flow_checks(script, &args, &mut t, &mut notes)?;
    }
    if !t.seen.contains("seed") {
        // sd-scripts draws a random seed when none is given; draw one too, but write it down so
        // the run can be repeated.
        let seed = rand::random::<u32>() as i64;
        t.put("training", "seed", toml::Value::Integer(seed));
        notes.push(ImportNote::info(
            "seed",
            format!("no seed in the file (sd-scripts draws a random one): drew training.seed = {seed}; it is in the printed config"),
        ));
    }
    Ok(Imported { table: t.table, notes, prompt_file: None })
}

/// A boolean argument as sd-scripts reads it (absent: false).
pub(super) fn flag(args: &BTreeMap<String, toml::Value>, key: &str) -> Result<bool, String> {
    match args.get(key) {
        None => Ok(false),
        Some(v) => coerce(v, &toml::Value::Boolean(false))
            .map(|b| b.as_bool() == Some(true))
            .map_err(|e| format!("{key}: {e}")),
    }
}

/// The model family the arguments are for, as far as they (or the checkpoint) tell: refuses
/// families lorakit cannot train and records `model.model_family` for SD 2.x, SDXL, Flux.1 and
/// SD3.
///
/// sd-scripts does not detect the family: the script does (`sdxl_train_network.py` vs
/// `train_network.py`, with `--v2` for SD 2.x; `flux_train_network.py` with
/// `networks.lora_flux`; `sd3_train_network.py` with `networks.lora_sd3`). What shows it here,
/// in order: the kohya_ss GUI's model checkbox (passed on as `model_family`), the network module
/// (`networks.lora_flux`, `networks.lora_sd3`, …) and the arguments only one family's script
/// takes (`ae`, `guidance_scale`, … for Flux.1; `clip_g`, … for SD3; either's with another
/// module are refused), `v2`, the base checkpoint's weights when the file is there to read, and
/// `cache_text_encoder_outputs(_to_disk)`, which among the SD-family LoRA scripts only
/// `sdxl_train_network.py` takes. `None`: not known (the checkpoint decides at load).
fn family_of(
    args: &BTreeMap<String, toml::Value>,
    checkpoint: Option<(Family, String)>,
    t: &mut Table,
    notes: &mut Vec<ImportNote>,
) -> Result<Option<Family>, String> {
    let set = |k: &&&str| args.get(**k).is_some_and(|v| !is_unset(v));
    let module = args.get("network_module").and_then(toml::Value::as_str).map(str::trim).filter(|m| !m.is_empty());
    let module_family =
        module.and_then(|m| FAMILY_NETWORK_MODULES.iter().find(|(n, _)| *n == m)).map(|(n, f)| (*n, *f));
    if let Some((m, family)) = module_family {
        refuse_unsupported_family(family, &format!("network_module = \"{m}\""))?;
    }
    let stated = match args.get("model_family").and_then(toml::Value::as_str).map(str::trim) {
        None | Some("") => None,
        Some(name) => Some(
            Family::from_config_value(name)
                .ok_or_else(|| format!("model_family = {name:?}: lorakit trains sd1, sd2, sdxl, flux and sd3"))?,
        ),
    };
    if module_family.is_none() && stated.is_none() {
        let module = module.map_or_else(|| "no network_module".to_string(), |m| format!("network_module = \"{m}\""));
        let lycoris = module.contains("lycoris.kohya");
        for script in [&flow::SD3, &flow::FLUX] {
            if let Some(key) = script.own_keys.iter().find(set) {
                let what = format!("an argument of sd-scripts' {} ({})", script.script, script.name());
                if lycoris {
                    return Err(format!("it sets {key}, {what}, with {module}: {}", script.lycoris_refusal()));
                }
                return Err(format!(
                    "it sets {key}, {what}, but {module}: {}; set network_module = \"{}\" for {} {} LoRA, or remove {key}",
                    script.wrong_module(),
                    script.module,
                    article(script.name()),
                    script.name()
                ));
            }
        }
        if let Some(key) = flow::SHARED_KEYS.iter().find(set) {
            return Err(format!(
                "it sets {key}, an argument of sd-scripts' Flux.1 and SD3 scripts, but {module}: sd-scripts trains their LoRAs with networks.lora_flux and networks.lora_sd3 (networks.lora finds no layer of their transformers); set network_module = \"networks.lora_flux\" (Flux.1) or \"networks.lora_sd3\" (SD3), or remove {key}"
            ));
        }
    }
    let module_flow = module_family.and_then(|(_, f)| FlowScript::of(Some(f)));
    if let Some(script) = module_flow.or_else(|| FlowScript::of(stated)) {
        let name = script.name();
        if let Some((family, path)) = checkpoint.as_ref().filter(|(f, _)| *f != script.family) {
            return Err(format!(
                "this is {} {name} LoRA config ({}), but {path} is {} {} checkpoint: {} cannot load it; name {} {name} checkpoint or use the {} config",
                article(name),
                script.module,
                article(family.name()),
                family.name(),
                script.script,
                article(name),
                family.name()
            ));
        }
        if stated.is_some_and(|f| f != script.family) {
            return Err(format!(
                "model_family = {:?} with network_module = \"{}\" ({name}): they name different families",
                stated.and_then(Family::config_value).unwrap_or_default(),
                script.module
            ));
        }
        t.put("model", "model_family", toml::Value::String(script.family.config_value().unwrap_or_default().into()));
        return Ok(Some(script.family));
    }
    if let Some((family, path)) = &checkpoint {
        if let Some(script) = FlowScript::of(Some(*family)) {
            let module = module.unwrap_or("networks.lora");
            return Err(format!(
                "{path} is {} {} checkpoint, but network_module = \"{module}\": sd-scripts trains {} LoRAs with {} and {}; set network_module = \"{}\" (with {})",
                article(script.name()),
                script.name(),
                script.name(),
                script.script,
                script.module,
                script.module,
                script.parts
            ));
        }
    }
    let v2 = flag(args, "v2")?;
    if args.contains_key("v2") {
        t.put("model", "v2", toml::Value::Boolean(v2));
    }
    let caching = ["cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk"]
        .into_iter()
        .find(|k| args.get(*k).is_some_and(|v| !is_unset(v)));
    let checkpoint_sdxl = checkpoint.as_ref().filter(|(f, _)| *f == Family::Sdxl).map(|(_, p)| p.clone());
    let family = if let Some(family) = stated {
        Some(family)
    } else if v2 {
        Some(Family::Sd2)
    } else if let Some((family, path)) = &checkpoint {
        if *family == Family::Sdxl {
            notes.push(ImportNote::info(
                "pretrained_model_name_or_path",
                format!("{path} is an SDXL checkpoint: imported as a config for sdxl_train_network.py (model.model_family = \"sdxl\")"),
            ));
        }
        Some(*family)
    } else if let Some(key) = caching {
        notes.push(ImportNote::info(
            key,
            "among sd-scripts' SD LoRA scripts only sdxl_train_network.py takes it, so this is an SDXL config (model.model_family = \"sdxl\"; the checkpoint must be SDXL)",
        ));
        Some(Family::Sdxl)
    } else {
        None
    };
    if v2 && (family == Some(Family::Sdxl) || checkpoint_sdxl.is_some()) {
        let shown_by =
            checkpoint_sdxl.map_or_else(|| "an SDXL config".to_string(), |p| format!("{p} is an SDXL checkpoint"));
        return Err(format!(
            "v2 = true, but {shown_by}: sd-scripts' sdxl_train_network.py refuses it too (\"v2 cannot be enabled in SDXL training\"); remove v2"
        ));
    }
    // A checkpoint's SD 1.x/2.x reading is not written down: the checkpoint decides then, as before.
    if let Some(value) = family.filter(|f| stated.is_some() || v2 || *f == Family::Sdxl).and_then(Family::config_value)
    {
        t.put("model", "model_family", toml::Value::String(value.into()));
    }
    Ok(family)
}

/// "a" or "an" before a family's name as it is said ("an SDXL", "a Flux.1").
fn article(name: &str) -> &'static str {
    if name.starts_with('S') || name.starts_with('A') {
        "an"
    } else {
        "a"
    }
}

/// sd-scripts' `fused_backward_pass` has no effect on LoRA training (`train_network.py` never
/// reads it), but `get_optimizer` still refuses it unless the optimizer is Adafactor and there
/// is no gradient accumulation.
fn fused_backward_pass(args: &BTreeMap<String, toml::Value>) -> Result<(), String> {
    let text = |k: &str| args.get(k).and_then(toml::Value::as_str).map(|s| s.trim().to_ascii_lowercase());
    let optimizer = match text("optimizer_type").filter(|o| !o.is_empty()) {
        Some(o) => o,
        None if flag(args, "use_8bit_adam")? => "adamw8bit".into(),
        None if flag(args, "use_lion_optimizer")? => "lion".into(),
        None => "adamw".into(),
    };
    if optimizer != "adafactor" {
        return Err(format!(
            "fused_backward_pass with optimizer_type {optimizer:?}: sd-scripts refuses this (\"fused_backward_pass currently only works with optimizer_type Adafactor\"); remove fused_backward_pass (a LoRA run does not use it)"
        ));
    }
    let accumulation = match args.get("gradient_accumulation_steps") {
        None => 1,
        Some(v) => coerce(v, &toml::Value::Integer(1))?.as_integer().unwrap_or(1),
    };
    if accumulation > 1 {
        return Err(format!(
            "fused_backward_pass with gradient_accumulation_steps = {accumulation}: sd-scripts refuses this (\"fused_backward_pass does not work with gradient_accumulation_steps > 1\"); remove fused_backward_pass (a LoRA run does not use it)"
        ));
    }
    Ok(())
}

/// What `sdxl_train_network.py` refuses before training (`assert_extra_args`), as far as the
/// arguments show it: text-encoder outputs cached while the text encoders' LoRA trains, and
/// bucket sides that are not multiples of 32. (Captions that change from step to step with
/// caching, and the bucket step of a dataset config, are checked when the run starts.)
fn sdxl_checks(args: &BTreeMap<String, toml::Value>) -> Result<(), String> {
    let caching = flag(args, "cache_text_encoder_outputs")? || flag(args, "cache_text_encoder_outputs_to_disk")?;
    if caching && !flag(args, "network_train_unet_only")? {
        return Err(
            "cache_text_encoder_outputs with the text encoders' LoRA trained: sd-scripts refuses this too (\"network for Text Encoder cannot be trained with caching Text Encoder outputs\"); set network_train_unet_only (kohya_ss GUI: text_encoder_lr 0 with unet_lr set, or --network_train_unet_only in additional_parameters) or turn caching off"
                .into(),
        );
    }
    check_bucket_reso_steps(args, "SDXL", "sdxl_train_network.py")
}

/// `verify_bucket_reso_steps(32)` of the SDXL and Flux.1 scripts: with buckets on, the bucket
/// step must be a multiple of 32.
pub(super) fn check_bucket_reso_steps(
    args: &BTreeMap<String, toml::Value>,
    family: &str,
    script: &str,
) -> Result<(), String> {
    let steps = match args.get("bucket_reso_steps") {
        None => 64,
        Some(v) => coerce(v, &toml::Value::Integer(0))
            .map_err(|e| format!("bucket_reso_steps: {e}"))?
            .as_integer()
            .unwrap_or(64),
    };
    if flag(args, "enable_bucket")? && steps % 32 != 0 {
        return Err(format!(
            "bucket_reso_steps = {steps}: {family} needs a multiple of 32 — sd-scripts' {script} refuses it too (\"bucket_reso_steps is {steps}. it must be divisible by 32\"); use 32 or 64"
        ));
    }
    Ok(())
}

/// `network_module` + `network_args` → the network keys; unsupported network types are refused.
fn network_of(
    args: &BTreeMap<String, toml::Value>,
    family: Option<Family>,
    t: &mut Table,
    notes: &mut Vec<ImportNote>,
) -> Result<(), String> {
    let module = args.get("network_module").and_then(toml::Value::as_str).map(str::trim).unwrap_or("networks.lora");
    let module = if module.is_empty() { "networks.lora" } else { module };
    if let Some((m, what)) = UNSUPPORTED_NETWORK_MODULES.iter().find(|(m, _)| *m == module) {
        return Err(format!(
            "network_module = \"{m}\" is {what}: lorakit does not train it; it would not train it as a LoRA instead"
        ));
    }
    if let Some(script) = FlowScript::of(family) {
        let name = script.name();
        if module == "lycoris.kohya" {
            return Err(format!("network_module = \"lycoris.kohya\" for {name}: {}", script.lycoris_refusal()));
        }
        if module != script.module {
            return Err(format!(
                "network_module = \"{module}\" in {} {name} config: {}; set network_module = \"{}\"",
                article(name),
                script.wrong_module(),
                script.module
            ));
        }
        // lorakit's networks.lora is sd-scripts' lora_flux / lora_sd3 on that family's model.
        t.put("network", "network_module", toml::Value::String("networks.lora".into()));
        return flow::flow_network(script, &network_kwargs(args, notes)?, t, notes);
    }
    if module != "networks.lora" && module != "lycoris.kohya" {
        return Err(format!(
            "network_module = \"{module}\": lorakit trains networks.lora (LoRA, LoCon) and lycoris.kohya (LoHa, LoKr)"
        ));
    }
    t.put("network", "network_module", toml::Value::String(module.to_string()));
    let kwargs = network_kwargs(args, notes)?;
    if module == "lycoris.kohya" {
        return lycoris_network(&kwargs, args, t, notes);
    }
    for (key, value) in kwargs {
        let key = key.as_str();
        let source = format!("network_args {key}={value}");
        if LORA_NUMBER_ARGS.contains(&key) {
            t.put_typed(key, &toml::Value::String(value.clone()), &source)?;
        } else if LORA_LIST_ARGS.contains(&key) {
            t.put("network", key, toml::Value::String(value));
        } else if key == "algo" || key == "preset" {
            notes.push(ImportNote::changes_run(
                source,
                "a LyCORIS argument with network_module = \"networks.lora\": sd-scripts ignores it too; set network_module = \"lycoris.kohya\" for LyCORIS",
            ));
        } else {
            notes.push(ImportNote::changes_run(source, "not supported by lorakit; ignored"));
        }
    }
    Ok(())
}

/// `network_args` as sd-scripts hands them to the network: each item split at its first `=`
/// into a dict of strings (the last one wins).
fn network_kwargs(
    args: &BTreeMap<String, toml::Value>,
    notes: &mut Vec<ImportNote>,
) -> Result<Vec<(String, String)>, String> {
    let items: Vec<String> = match args.get("network_args") {
        None => Vec::new(),
        Some(v) => coerce(v, &toml::Value::Array(Vec::new()))?
            .as_array()
            .map(|a| a.iter().filter_map(|i| i.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
    };
    let mut kwargs: Vec<(String, String)> = Vec::new();
    for item in items {
        match item.split_once('=') {
            Some((key, value)) => {
                let key = key.trim().to_string();
                kwargs.retain(|(k, _)| *k != key);
                kwargs.push((key, unquote(value)));
            }
            None => notes.push(ImportNote::changes_run(
                format!("network_args {item}"),
                "not a key=value network argument (sd-scripts stops at it)",
            )),
        }
    }
    Ok(kwargs)
}

/// Why a dropout given to LyCORIS is not carried over.
const LYCORIS_DROPOUT_NOT_APPLIED: &str =
    "LyCORIS applies this dropout only in bypass mode: kohya's run ignores it, and so does lorakit";

/// LyCORIS 3.2's `kohya.create_network` (the version the kohya_ss GUI pins), read as it reads
/// its string arguments: booleans are true unless the text is "false" (`str_bool`), but
/// `decompose_both` is passed on as text, so any non-empty text — "False" included — is true;
/// `conv_dim = 0` switches k×k conv modules off; `rank_dropout_scale` is never read.
fn lycoris_network(
    kwargs: &[(String, String)],
    args: &BTreeMap<String, toml::Value>,
    t: &mut Table,
    notes: &mut Vec<ImportNote>,
) -> Result<(), String> {
    let get = |k: &str| kwargs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let str_bool = |k: &str| get(k).is_some_and(|v| PyValue::Text(v).str_bool());
    let algo = get("algo").filter(|a| !a.is_empty()).unwrap_or("lora").to_ascii_lowercase();
    let algo = match algo.as_str() {
        "loha" | "lokr" => algo,
        "lora" | "locon" => "locon".to_string(),
        other => {
            return Err(format!(
                "network_args algo={other}: LyCORIS' {other} is not supported by lorakit (LoHa, LoKr and LoCon are); it will not train it as something else"
            ))
        }
    };
    if get("algo").is_none() {
        notes.push(ImportNote::info("network_args", "no algo: LyCORIS' default, its LoCon (\"lora\")"));
    }
    t.put("network", "algo", toml::Value::String(algo.clone()));
    // use_tucker = str_bool(not kwargs.get("disable_conv_cp", True) or kwargs.get("use_conv_cp",
    // False) or kwargs.get("use_cp", False) or kwargs.get("use_tucker", False)), evaluated as
    // Python does: `or` returns the first truthy operand (a non-empty text, or True), else the
    // last one; str_bool of True/False is itself, of a text "not 'false'".
    let operands = [
        PyValue::Bool(get("disable_conv_cp").is_some_and(str::is_empty)),
        get("use_conv_cp").map_or(PyValue::Bool(false), PyValue::Text),
        get("use_cp").map_or(PyValue::Bool(false), PyValue::Text),
        get("use_tucker").map_or(PyValue::Bool(false), PyValue::Text),
    ];
    let chosen = operands.iter().find(|v| v.truthy()).unwrap_or(&operands[3]);
    let mut refused: Vec<&str> = Vec::new();
    if chosen.str_bool() {
        refused.push("use_tucker / use_cp (Tucker decomposition)");
    }
    for (key, what) in [
        ("use_scalar", "use_scalar"),
        ("train_norm", "train_norm"),
        ("dora_wd", "dora_wd (DoRA)"),
        ("full_matrix", ""),
        ("bypass_mode", "bypass_mode (it trains LoKr without the alpha/dim scale and drops out differently)"),
        ("rs_lora", "rs_lora"),
        ("unbalanced_factorization", "unbalanced_factorization"),
    ] {
        if key == "full_matrix" {
            t.put("network", "full_matrix", toml::Value::Boolean(str_bool(key)));
        } else if str_bool(key) {
            refused.push(what);
        }
    }
    if !refused.is_empty() {
        return Err(format!(
            "network_args: LyCORIS option(s) {} switched on, which lorakit does not implement; switch them off to train without them",
            refused.join(", ")
        ));
    }
    if let Some(text) = get("decompose_both") {
        let on = !text.is_empty();
        t.put("network", "decompose_both", toml::Value::Boolean(on));
        if on && text.eq_ignore_ascii_case("false") && algo == "lokr" {
            notes.push(ImportNote::info(
                "network_args decompose_both=False",
                "LyCORIS 3.2 passes this text on unread and any text counts as true, so kohya's run decomposes LoKr's w1 too (for ranks below half its size); so does lorakit — set network.decompose_both = false to turn it off",
            ));
        }
    }
    for (key, value) in kwargs {
        let key = key.as_str();
        let source = format!("network_args {key}={value}");
        match key {
            "algo"
            | "decompose_both"
            | "full_matrix"
            | "disable_conv_cp"
            | "use_conv_cp"
            | "use_cp"
            | "use_tucker"
            | "use_scalar"
            | "train_norm"
            | "dora_wd"
            | "bypass_mode"
            | "rs_lora"
            | "unbalanced_factorization" => {}
            "preset" => t.put("network", "preset", toml::Value::String(value.clone())),
            "factor" => {
                let v = coerce(&toml::Value::String(value.clone()), &toml::Value::Integer(0))
                    .map_err(|e| format!("{source}: {e}"))?;
                t.put("network", "factor", v);
            }
            "conv_dim" | "conv_alpha" | "rank_dropout" | "module_dropout" => {
                t.put_typed(key, &toml::Value::String(value.clone()), &source)?
            }
            "dropout" => notes.push(ImportNote::info(source, LYCORIS_DROPOUT_NOT_APPLIED)),
            "loraplus_lr_ratio" | "loraplus_unet_lr_ratio" | "loraplus_text_encoder_lr_ratio" => {
                if algo == "locon" {
                    t.put_typed(key, &toml::Value::String(value.clone()), &source)?;
                } else {
                    notes.push(ImportNote::info(
                        source,
                        "LyCORIS applies LoRA+ to lora_up weights, which LoHa/LoKr do not have: no effect in kohya's run, none here",
                    ));
                }
            }
            _ => notes.push(ImportNote::info(
                source,
                "LyCORIS does not read it: kohya's run ignores it, and so does lorakit",
            )),
        }
    }
    // sd-scripts hands network_dropout to LyCORIS as `dropout` (when network_args has none).
    if args.get("network_dropout").is_some_and(|v| !is_unset(v)) {
        notes.push(ImportNote::info("network_dropout", LYCORIS_DROPOUT_NOT_APPLIED));
    }
    Ok(())
}

/// A value as LyCORIS sees a `network_args` entry: the text sd-scripts passed, or a default.
enum PyValue<'a> {
    Bool(bool),
    Text(&'a str),
}

impl PyValue<'_> {
    /// Python truthiness (`or` picks the first truthy operand).
    fn truthy(&self) -> bool {
        match self {
            PyValue::Bool(b) => *b,
            PyValue::Text(t) => !t.is_empty(),
        }
    }

    /// LyCORIS' `str_bool`: `str(val).lower() != "false"`.
    fn str_bool(&self) -> bool {
        match self {
            PyValue::Bool(b) => *b,
            PyValue::Text(t) => !t.eq_ignore_ascii_case("false"),
        }
    }
}

/// `text_encoder_lr`: one number, or sd-scripts' list (one per text encoder; an empty list is
/// unset). `train_network.py` passes a list whole only to networks with per-encoder rates
/// (`prepare_optimizer_params_with_multiple_te_lrs`: Flux, SD3, Lumina, Anima); `networks.lora`
/// and LyCORIS get its first value, for every text encoder — SDXL's two included.
fn text_encoder_lr(
    value: &toml::Value,
    family: Option<Family>,
    t: &mut Table,
    notes: &mut Vec<ImportNote>,
) -> Result<(), String> {
    if let Some(script) = FlowScript::of(family) {
        return flow::text_encoder_lr(script, value, t, notes);
    }
    let first = match value {
        toml::Value::Array(items) => {
            if items.len() > 1 && items.iter().any(|i| i != &items[0]) {
                let first = &items[0];
                let why = match family {
                    Some(Family::Sdxl) => format!(
                        "one value per text encoder, but sd-scripts' train_network.py hands networks.lora (and LyCORIS) only the first: both SDXL text encoders train at {first}, and so they do here — set optimizer.text_encoder_lr = {value} to give each its own rate"
                    ),
                    Some(Family::Sd1 | Family::Sd2) => {
                        format!("one value per text encoder; SD 1.x/2.x have one, so {first} is used")
                    }
                    _ => format!(
                        "one value per text encoder, but sd-scripts' train_network.py hands networks.lora (and LyCORIS) only the first: every text encoder trains at {first} (SD 1.x/2.x have one, SDXL's two both train at it), and so they do here"
                    ),
                };
                notes.push(ImportNote::info("text_encoder_lr", format!("{value}: {why}")));
            }
            match items.first() {
                None => return Ok(()),
                Some(v) => v.clone(),
            }
        }
        toml::Value::String(s) if s.trim().is_empty() => return Ok(()),
        other => other.clone(),
    };
    t.put_typed("text_encoder_lr", &first, "text_encoder_lr")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::kohya_import::detect::{parse, Parsed};
    use crate::kohya_import::NoteLevel;

    pub(crate) fn import_toml(text: &str) -> Result<Imported, String> {
        match parse(text.as_bytes())? {
            Parsed::SdScriptsArgs(pairs) => import_sd_scripts_args(pairs),
            Parsed::GuiJson(_) => panic!("not TOML"),
        }
    }

    fn config(imported: &Imported) -> TrainConfig {
        let c: TrainConfig = toml::Value::Table(imported.table.clone()).try_into().unwrap();
        c.validate().unwrap_or_else(|e| panic!("{e}"));
        c
    }

    fn level_of(imported: &Imported, key: &str) -> Option<NoteLevel> {
        imported.notes.iter().find(|n| n.key == key).map(|n| n.level)
    }

    #[test]
    fn sd_scripts_toml_sections_are_flattened_and_mapped() {
        let imp = import_toml(
            r#"
[model_arguments]
pretrained_model_name_or_path = "/models/sd15.safetensors"
v_parameterization = false
[additional_network_arguments]
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
network_args = ["conv_dim=8", "conv_alpha=4", "down_lr_weight=sine+0.5", "block_dims=8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8", "loraplus_lr_ratio=16"]
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
epoch = 4
[dataset_arguments]
resolution = "768,512"
enable_bucket = true
shuffle_caption = true
"#,
        )
        .unwrap();
        let c = config(&imp);
        assert_eq!(c.network.network_dim, 32);
        assert_eq!(c.network.network_alpha, 16.0);
        assert_eq!(c.network.conv_dim, Some(8));
        assert_eq!(c.network.conv_alpha, Some(4.0));
        assert_eq!(c.optimizer.lr_warmup_steps, 100.0);
        assert_eq!(c.optimizer.optimizer_args, vec!["weight_decay=0.1".to_string()]);
        assert_eq!(c.training.train_batch_size, 2);
        assert_eq!(c.training.seed, 7);
        assert_eq!(c.accelerate.mixed_precision, "bf16");
        assert_eq!(c.dataset.resolution, "768,512");
        assert_eq!(c.save.save_every_n_epochs, 2);
        // Silent keys get sd-scripts' defaults, not lorakit's.
        assert_eq!(c.dataset.caption_extension, ".caption");
        assert!(!c.training.cache_latents);
        assert!(c.dataset.shuffle_caption);
        assert_eq!(c.network.down_lr_weight.as_deref(), Some("sine+0.5"));
        assert_eq!(c.network.block_dims.as_deref().map(|d| d.split(',').count()), Some(25));
        assert_eq!(c.network.loraplus_lr_ratio, Some(16.0));
        assert_eq!(c.network.scale_weight_norms, Some(1.0));
        assert_eq!(c.network.network_multiplier, 0.8);
        // `epoch` is not an sd-scripts argument: listed, and the epochs stay max_train_epochs'.
        assert_eq!(c.training.max_train_epochs, 10);
        assert_eq!(level_of(&imp, "epoch"), Some(NoteLevel::Info));
        assert_eq!(level_of(&imp, "xformers"), Some(NoteLevel::Cosmetic));
        assert_eq!(imp.unmapped_keys(), vec!["epoch", "xformers"]);
    }

    #[test]
    fn the_whole_training_surface_imports_without_loss() {
        let imp = import_toml(
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
seed = 1
"#,
        )
        .unwrap();
        assert!(imp.notes.is_empty(), "notes: {:?}", imp.notes);
        let c = config(&imp);
        assert_eq!(c.optimizer.optimizer_type, "Prodigy");
        assert_eq!(c.optimizer.optimizer_args.len(), 6);
        assert_eq!(c.network.up_lr_weight.as_deref(), Some("sine+0.25"));
        assert_eq!(c.network.loraplus_unet_lr_ratio, Some(8.0));
        assert_eq!(c.network.scale_weight_norms, Some(1.5));
        assert_eq!(c.loss.huber_c, 0.2);
        assert!(c.loss.masked_loss && c.dataset.alpha_mask && c.dataset.color_aug && c.dataset.random_crop);
        assert!(c.accelerate.full_fp16 && c.accelerate.fp8_base && c.accelerate.no_half_vae);
        assert_eq!(c.training.max_token_length, 225);
    }

    #[test]
    fn text_encoder_lr_lists_and_quoted_optimizer_args() {
        let imp = import_toml(
            "network_module = \"networks.lora\"\ntext_encoder_lr = [5e-5, 5e-5]\noptimizer_args = ['\"weight_decay=0.1\"', '\"betas=0.9,0.99\"']\nseed = 1\n",
        )
        .unwrap();
        let c = config(&imp);
        assert_eq!(c.optimizer.text_encoder_lr, Some(crate::config::TextEncoderLr::All(5e-5)));
        assert_eq!(c.optimizer.optimizer_args, vec!["weight_decay=0.1", "betas=0.9,0.99"]);
        assert!(imp.notes.is_empty(), "{:?}", imp.notes);
        // An empty list is sd-scripts' "not set": the text encoder trains at learning_rate.
        let c = config(&import_toml("network_dim = 4\ntext_encoder_lr = []\nseed = 1\n").unwrap());
        assert_eq!(c.optimizer.text_encoder_lr, None);
        let imp = import_toml("network_dim = 4\ntext_encoder_lr = [1e-5, 2e-5]\nseed = 1\n").unwrap();
        assert_eq!(config(&imp).optimizer.text_encoder_lr, Some(crate::config::TextEncoderLr::All(1e-5)));
        assert_eq!(level_of(&imp, "text_encoder_lr"), Some(NoteLevel::Info));
    }

    #[test]
    fn unsupported_network_types_and_families_are_refused_by_name() {
        for (toml, says) in [
            ("network_module = \"networks.dylora\"\n", "DyLoRA"),
            ("network_module = \"networks.lora_fa\"\n", "LoRA-FA"),
            ("network_module = \"networks.loha\"\nnetwork_dim = 8\n", "native LoHa"),
            ("network_module = \"networks.oft_flux\"\n", "Flux OFT"),
            ("network_module = \"networks.lora_lumina\"\n", "Lumina"),
            ("network_module = \"networks.lora\"\nae = \"ae.safetensors\"\n", "Flux.1"),
            // SD3's own argument with another network: sd-scripts' SD3 LoRAs need lora_sd3.
            ("network_module = \"networks.lora\"\nclip_l = \"l\"\nclip_g = \"g\"\nt5xxl = \"t\"\n", "networks.lora_sd3"),
            ("network_module = \"networks.lora_anima\"\n", "Anima"),
            ("network_module = \"my.own.module\"\n", "my.own.module"),
            ("network_module = \"lycoris.kohya\"\nnetwork_args = [\"algo=ia3\"]\n", "ia3"),
            ("network_module = \"lycoris.kohya\"\nnetwork_args = [\"algo=diag-oft\"]\n", "diag-oft"),
            ("network_module = \"lycoris.kohya\"\nnetwork_args = [\"algo=loha\", \"use_tucker=True\"]\n", "use_tucker"),
            ("network_module = \"lycoris.kohya\"\nnetwork_args = [\"algo=lokr\", \"dora_wd=True\"]\n", "dora_wd"),
            (
                "network_module = \"lycoris.kohya\"\nnetwork_args = [\"algo=lokr\", \"bypass_mode=True\"]\n",
                "bypass_mode",
            ),
            ("network_module = \"lycoris.kohya\"\nnetwork_args = [\"algo=loha\", \"use_scalar=0\"]\n", "use_scalar"),
            // `not "True"` is False in LyCORIS' or-chain: use_tucker still decides.
            ("network_module = \"lycoris.kohya\"\nnetwork_args = [\"algo=loha\", \"disable_conv_cp=True\", \"use_tucker=True\"]\n", "use_tucker"),
            ("network_module = \"lycoris.kohya\"\nnetwork_args = [\"algo=loha\", \"disable_conv_cp=\"]\n", "use_tucker"),
            ("network_dim = 4\nlr_scheduler_type = \"CosineAnnealingLR\"\n", "lr_scheduler_type"),
        ] {
            let err = import_toml(toml).unwrap_err();
            assert!(err.contains(says), "{toml}: {err}");
        }
    }

    /// An sd-scripts `flux_train_network.py` TOML (fp8 base, cached text-encoder outputs, the
    /// transformer only, as sd-scripts' README's Flux example trains), plus `extra` lines.
    fn flux_toml(extra: &str) -> String {
        format!(
            r#"pretrained_model_name_or_path = "/m/flux1-dev.safetensors"
clip_l = "/m/clip_l.safetensors"
t5xxl = "/m/t5xxl_fp16.safetensors"
ae = "/m/ae.safetensors"
network_module = "networks.lora_flux"
network_dim = 4
network_train_unet_only = true
optimizer_type = "adamw8bit"
learning_rate = 1e-4
mixed_precision = "bf16"
fp8_base = true
gradient_checkpointing = true
cache_latents_to_disk = true
cache_text_encoder_outputs = true
cache_text_encoder_outputs_to_disk = true
sdpa = true
highvram = true
max_train_epochs = 4
save_every_n_epochs = 1
dataset_config = "/d/dataset_1024_bs2.toml"
output_dir = "/o"
output_name = "flux-lora-name"
seed = 42
{extra}"#
        )
    }

    #[test]
    fn flux_train_network_tomls_import_as_flux() {
        let imp = import_toml(&flux_toml(
            "timestep_sampling = \"shift\"\ndiscrete_flow_shift = 3.1582\nmodel_prediction_type = \"raw\"\nguidance_scale = 1.0\n",
        ))
        .unwrap();
        let c = config(&imp);
        assert_eq!(c.model.model_family.as_deref(), Some("flux"));
        assert_eq!(c.network.network_module, "networks.lora", "lorakit's LoRA is lora_flux on a Flux model");
        assert_eq!(c.model.clip_l.as_deref(), Some(std::path::Path::new("/m/clip_l.safetensors")));
        assert_eq!(c.model.t5xxl.as_deref(), Some(std::path::Path::new("/m/t5xxl_fp16.safetensors")));
        assert_eq!(c.model.ae.as_deref(), Some(std::path::Path::new("/m/ae.safetensors")));
        assert_eq!(c.flow.timestep_sampling, crate::objective::TimestepSampling::Shift);
        assert_eq!(c.flow.discrete_flow_shift, 3.1582);
        assert_eq!(c.flow.model_prediction_type, Some(crate::objective::ModelPredictionType::Raw));
        assert_eq!(c.flow.guidance_scale, 1.0);
        assert!(c.accelerate.fp8_base && c.training.gradient_checkpointing);
        assert!(c.caches_text_encoder_outputs() && c.training.cache_text_encoder_outputs_to_disk);
        assert!(c.network.network_train_unet_only);
        assert_eq!(c.optimizer.optimizer_type, "adamw8bit");
        assert!(imp.notes.iter().all(|n| n.level == NoteLevel::Cosmetic), "{:?}", imp.notes);

        // Left unset: sd-scripts' own defaults are written out (lorakit's are raw / 1.0).
        let imp = import_toml(&flux_toml("")).unwrap();
        let c = config(&imp);
        assert_eq!(c.flow.model_prediction_type, Some(crate::objective::ModelPredictionType::SigmaScaled));
        assert_eq!(c.flow.guidance_scale, 3.5);
        for key in ["model_prediction_type", "guidance_scale"] {
            let note = imp.notes.iter().find(|n| n.key == key).unwrap();
            assert_eq!(note.level, NoteLevel::Info);
            assert!(
                note.text.contains("sd-scripts' default") && note.text.contains("lorakit's own default"),
                "{note:?}"
            );
        }
    }

    #[test]
    fn flux_network_args_map_to_the_flux_network_keys() {
        let imp = import_toml(&flux_toml(
            "network_alpha = 2\nnetwork_dropout = 0.1\nnetwork_args = [\"train_blocks=single\", \"img_attn_dim=8\", \"txt_attn_dim=0\", \"single_dim=4\", \"single_mod_dim=2\", \"img_mlp_dim=3\", \"txt_mlp_dim=3\", \"img_mod_dim=1\", \"txt_mod_dim=1\", \"in_dims=[4,0,0,0,4]\", \"train_double_block_indices=0-3,7\", \"train_single_block_indices=none\", \"rank_dropout=0.1\", \"module_dropout=0.05\", \"loraplus_unet_lr_ratio=4\", \"verbose=True\", \"down_lr_weight=1,1,1\", \"conv_dim=4\"]\n",
        ))
        .unwrap();
        let c = config(&imp);
        let n = &c.network;
        assert_eq!(n.train_blocks.as_deref(), Some("single"));
        assert_eq!(
            (n.img_attn_dim, n.txt_attn_dim, n.single_dim, n.single_mod_dim),
            (Some(8), Some(0), Some(4), Some(2))
        );
        assert_eq!((n.img_mlp_dim, n.txt_mlp_dim, n.img_mod_dim, n.txt_mod_dim), (Some(3), Some(3), Some(1), Some(1)));
        assert_eq!(n.in_dims.as_deref(), Some("[4,0,0,0,4]"));
        assert_eq!(n.train_double_block_indices.as_deref(), Some("0-3,7"));
        assert_eq!(n.train_single_block_indices.as_deref(), Some("none"));
        assert_eq!((n.rank_dropout, n.module_dropout, n.network_dropout), (Some(0.1), Some(0.05), Some(0.1)));
        assert_eq!(n.loraplus_unet_lr_ratio, Some(4.0));
        assert_eq!((n.conv_dim, n.down_lr_weight.as_deref()), (None, None), "lora_flux reads neither");
        c.flux_network_args().unwrap();
        for key in ["network_args down_lr_weight=1,1,1", "network_args conv_dim=4"] {
            assert_eq!(level_of(&imp, key), Some(NoteLevel::Info), "{key}: {:?}", imp.notes);
        }
        assert_eq!(level_of(&imp, "network_args verbose=True"), Some(NoteLevel::Cosmetic));

        // train_t5xxl: only the exact text "True" switches it on (lora_flux's rule); caching is
        // off with it, as sd-scripts requires; text_encoder_lr is [CLIP-L, T5-XXL].
        let t5 = flux_toml("network_args = [\"train_t5xxl=True\"]\ntext_encoder_lr = [1e-5, 2e-5]\n")
            .replace("network_train_unet_only = true\n", "")
            .replace("cache_text_encoder_outputs = true\ncache_text_encoder_outputs_to_disk = true\n", "");
        let c = config(&import_toml(&t5).unwrap());
        assert!(c.network.train_t5xxl && c.trains_text_encoder());
        assert_eq!(c.text_encoder_lrs(), vec![1e-5, 2e-5]);
        let imp = import_toml(&t5.replace("train_t5xxl=True", "train_t5xxl=true")).unwrap();
        assert!(!config(&imp).network.train_t5xxl, "lora_flux: \"true\" is not \"True\"");
        assert_eq!(level_of(&imp, "network_args train_t5xxl=true"), Some(NoteLevel::Info));
        assert!(imp.notes.iter().any(|n| n.key == "text_encoder_lr" && n.text.contains("T5-XXL")), "{:?}", imp.notes);
        // One rate (or two equal ones): both encoders at it.
        let c = config(&import_toml(&t5.replace("[1e-5, 2e-5]", "[3e-5]")).unwrap());
        assert_eq!(c.text_encoder_lrs(), vec![3e-5]);
    }

    #[test]
    fn flux_memory_options_are_warned_about_and_ignored_sd_options_noted() {
        let imp = import_toml(&flux_toml(
            "blocks_to_swap = 18\nmem_eff_save = true\nmin_snr_gamma = 5\nnoise_offset = 0.05\nclip_skip = 2\nmax_timestep = 1000\nno_half_vae = true\nvae = \"/m/sdxl_vae.safetensors\"\nv2 = false\nsplit_mode = true\nfp8_base_unet = true\napply_t5_attn_mask = true\nt5xxl_max_token_length = 256\nweighting_scheme = \"logit_normal\"\nlogit_std = 1.5\nmodel_type = \"flux\"\n",
        ))
        .unwrap();
        let c = config(&imp);
        // Block swap with gradient checkpointing: lorakit's accelerate.blocks_to_swap.
        assert_eq!(c.accelerate.blocks_to_swap, Some(18));
        assert_eq!(level_of(&imp, "blocks_to_swap"), None);
        assert_eq!(level_of(&imp, "split_mode"), Some(NoteLevel::Info));
        assert!(imp.notes.iter().find(|n| n.key == "split_mode").unwrap().text.contains("blocks_to_swap is set"));
        for key in ["mem_eff_save", "min_snr_gamma", "noise_offset", "clip_skip", "max_timestep", "no_half_vae", "vae"]
        {
            let note = imp.notes.iter().find(|n| n.key == key).unwrap_or_else(|| panic!("{key}: {:?}", imp.notes));
            assert!(
                note.level == NoteLevel::Info && note.text.contains("flux_train_network.py does not use it"),
                "{note:?}"
            );
        }
        assert_eq!((c.loss.min_snr_gamma, c.loss.noise_offset, c.model.clip_skip), (None, None, None));
        assert_eq!(c.training.max_timestep, crate::config::TrainingSection::default().max_timestep);
        assert!(!c.accelerate.no_half_vae && !c.model.v2 && c.model.vae.is_none());
        assert!(c.accelerate.fp8_base_unet && c.model.apply_t5_attn_mask);
        assert_eq!(c.model.t5xxl_max_token_length, Some(256));
        assert_eq!((c.flow.weighting_scheme, c.flow.logit_std), (crate::objective::WeightingScheme::LogitNormal, 1.5));
        // Without gradient checkpointing lorakit cannot swap: imported without it, warned first.
        let no_ckpt =
            flux_toml("blocks_to_swap = 18\nmin_snr_gamma = 5\n").replace("gradient_checkpointing = true\n", "");
        let imp = import_toml(&no_ckpt).unwrap();
        assert_eq!(config(&imp).accelerate.blocks_to_swap, None);
        let report = imp.report(std::path::Path::new("flux.toml"));
        assert!(
            report[0].starts_with(
                "warning: flux.toml: `blocks_to_swap`: 18: lorakit swaps 18 blocks only with gradient checkpointing"
            ),
            "{report:?}"
        );
        assert!(report[0].contains("the run needs the memory `lorakit train --dry-run` reports"), "{report:?}");
        // split_mode alone: sd-scripts' 18 blocks.
        let c = config(&import_toml(&flux_toml("split_mode = true\n")).unwrap());
        assert_eq!(c.accelerate.blocks_to_swap, Some(18));
        // cpu_offload_checkpointing: with gradient checkpointing, carried over.
        let imp = import_toml(&flux_toml("cpu_offload_checkpointing = true\n")).unwrap();
        assert_eq!(level_of(&imp, "cpu_offload_checkpointing"), None);
        assert!(config(&imp).accelerate.cpu_offload_checkpointing);
        // Cached outputs with CLIP-L trained: T5-XXL's outputs are cached, as in sd-scripts.
        let imp = import_toml(&flux_toml("").replace("network_train_unet_only = true\n", "")).unwrap();
        let c = config(&imp);
        assert!(c.caches_text_encoder_outputs() && c.trains_text_encoder());
        assert_eq!(level_of(&imp, "cache_text_encoder_outputs"), None);
    }

    #[test]
    fn flux_configs_lorakit_or_sd_scripts_would_not_run_are_refused_with_the_reason() {
        for (extra, says) in [
            ("network_args = [\"ggpo_beta=0.01\", \"ggpo_sigma=0.03\"]\n", "GGPO"),
            ("network_args = [\"network_reg_lrs=double_blocks=1e-4\"]\n", "network_reg_lrs"),
            ("network_args = [\"network_reg_dims=single=8\"]\n", "network_reg_dims"),
            ("model_type = \"chroma\"\n", "Chroma"),
            ("weighted_captions = true\n", "weighted_captions"),
            (
                "blocks_to_swap = 8\ncpu_offload_checkpointing = true\n",
                "blocks_to_swap is not supported with cpu_offload_checkpointing",
            ),
            ("loss_type = \"huber\"\n", "huber_schedule"),
            ("enable_bucket = true\nbucket_reso_steps = 16\n", "divisible by 32"),
            ("shuffle_caption = true\n", "shuffle_caption"),
            ("network_args = [\"train_t5xxl=True\"]\n", "T5XXL is trained"),
            ("fused_backward_pass = true\n", "fused_backward_pass"),
        ] {
            let err = import_toml(&flux_toml(extra)).unwrap_err();
            assert!(err.contains(says), "{extra}: {err}");
        }
        let err = import_toml(&flux_toml("").replace("networks.lora_flux", "lycoris.kohya")).unwrap_err();
        assert!(err.contains("LyCORIS on Flux.1") && err.contains("it sets ae"), "{err}");
        let err = import_toml(&flux_toml("").replace("networks.lora_flux", "networks.lora")).unwrap_err();
        assert!(err.contains("networks.lora_flux") && err.contains("Flux.1"), "{err}");
        let err = import_toml("network_dim = 4\nweighting_scheme = \"mode\"\n").unwrap_err();
        assert!(err.contains("weighting_scheme") && err.contains("networks.lora_flux"), "{err}");
        // A Flux checkpoint named with networks.lora, or an SDXL one with lora_flux.
        let pairs = |text: &str| match parse(text.as_bytes()).unwrap() {
            Parsed::SdScriptsArgs(p) => p,
            Parsed::GuiJson(_) => unreachable!(),
        };
        let err = import_args(pairs("network_module = \"networks.lora\"\n"), Some((Family::Flux1, "/m/f".into())))
            .unwrap_err();
        assert!(err.contains("/m/f is a Flux.1 checkpoint") && err.contains("networks.lora_flux"), "{err}");
        let err = import_args(pairs(&flux_toml("")), Some((Family::Sdxl, "/m/x".into()))).unwrap_err();
        assert!(err.contains("/m/x is an SDXL checkpoint"), "{err}");
        let imp = import_args(pairs(&flux_toml("")), Some((Family::Flux1, "/m/f".into()))).unwrap();
        assert_eq!(config(&imp).model.model_family.as_deref(), Some("flux"));
    }

    #[test]
    fn lycoris_arguments_map_to_the_network_keys() {
        let imp = import_toml(
            "network_module = \"lycoris.kohya\"\nnetwork_dim = 100000\nnetwork_alpha = 1\nnetwork_args = [\"preset=full\", \"conv_dim=100000\", \"conv_alpha=1\", \"use_tucker=False\", \"rank_dropout=0\", \"rank_dropout_scale=True\", \"bypass_mode=False\", \"dora_wd=False\", \"module_dropout=0\", \"factor=6\", \"use_cp=False\", \"use_scalar=False\", \"decompose_both=False\", \"rank_dropout_scale=False\", \"algo=lokr\", \"train_norm=False\"]\nseed = 1\n",
        )
        .unwrap();
        let n = imp.table["network"].as_table().unwrap();
        assert_eq!(n["network_module"].as_str(), Some("lycoris.kohya"));
        assert_eq!(n["algo"].as_str(), Some("lokr"));
        assert_eq!(n["preset"].as_str(), Some("full"));
        assert_eq!(n["factor"].as_integer(), Some(6));
        assert_eq!(n["conv_dim"].as_integer(), Some(100000));
        assert_eq!(n["network_dim"].as_integer(), Some(100000));
        // LyCORIS 3.2 passes decompose_both on as text: "False" is a non-empty string, true.
        assert_eq!(n["decompose_both"].as_bool(), Some(true));
        assert_eq!(n["full_matrix"].as_bool(), Some(false));
        assert_eq!(
            imp.unmapped_keys(),
            vec!["network_args decompose_both=False", "network_args rank_dropout_scale=False"]
        );
        assert!(imp.notes.iter().all(|n| n.level == NoteLevel::Info), "{:?}", imp.notes);
        // use_tucker is LyCORIS' `or` over the texts: use_cp's "False" comes first and decides.
        let imp = import_toml(
            "network_module = \"lycoris.kohya\"\nnetwork_args = [\"algo=lokr\", \"use_cp=False\", \"use_tucker=True\", \"conv_dim=0\", \"dropout=0.1\"]\nseed = 1\n",
        )
        .unwrap();
        let n = imp.table["network"].as_table().unwrap();
        assert_eq!(n["conv_dim"].as_integer(), Some(0), "conv_dim 0: LyCORIS switches k×k convs off");
        assert!(n.get("decompose_both").is_none());
        assert!(n.get("network_dropout").is_none(), "LyCORIS ignores dropout outside bypass mode");
        let imp = import_toml("network_module = \"lycoris.kohya\"\nnetwork_dim = 4\nseed = 1\n").unwrap();
        assert_eq!(imp.table["network"]["algo"].as_str(), Some("locon"));
    }

    #[test]
    fn numbers_that_do_not_fit_are_errors_not_clamps() {
        for toml in [
            "network_dim = 1e30\n",
            "network_dim = \"99999999999999999999999\"\n",
            "network_dim = -1\n",
            "train_batch_size = 5000000000\n",
            "network_dim = 2.5\n",
            "learning_rate = \"nan\"\n",
            "learning_rate = \"inf\"\n",
        ] {
            let imp = import_toml(&format!("network_module = \"networks.lora\"\n{toml}"));
            let err = match imp {
                Err(e) => e,
                Ok(imp) => match toml::Value::Table(imp.table).try_into::<TrainConfig>() {
                    Err(e) => e.to_string(),
                    Ok(c) => c.validate().err().unwrap_or_else(|| panic!("{toml}: accepted")),
                },
            };
            let key = toml.split(' ').next().unwrap();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn dim_from_weights_is_carried_over() {
        let imp = import_toml("network_weights = \"/m/resized.safetensors\"\ndim_from_weights = true\n").unwrap();
        let c = config(&imp);
        assert!(c.network.dim_from_weights);
        assert_eq!(c.network.network_weights.as_deref(), Some(std::path::Path::new("/m/resized.safetensors")));
        assert_eq!(level_of(&imp, "dim_from_weights"), None, "{:?}", imp.notes);
    }

    #[test]
    fn validation_arguments_are_carried_over() {
        let imp = import_toml(
            "network_dim = 4\nvalidation_split = 0.1\nvalidation_seed = 7\nvalidate_every_n_steps = 50\nvalidate_every_n_epochs = 2\nmax_validation_steps = 10\n",
        )
        .unwrap();
        let c = config(&imp);
        assert_eq!((c.dataset.validation_split, c.dataset.validation_seed), (0.1, Some(7)));
        let t = &c.training;
        assert_eq!(
            (t.validate_every_n_steps, t.validate_every_n_epochs, t.max_validation_steps),
            (Some(50), Some(2), Some(10))
        );
        for key in ["validation_split", "validation_seed", "validate_every_n_steps", "validate_every_n_epochs"] {
            assert_eq!(level_of(&imp, key), None, "{key}: {:?}", imp.notes);
        }
    }

    #[test]
    fn unsupported_settings_are_ranked_by_whether_they_change_the_run() {
        let imp = import_toml(
            "network_dim = 4\nvae = \"/m/vae.safetensors\"\nbase_weights = \"/m/b.safetensors\"\nface_crop_aug_range = \"2.0,4.0\"\nsdpa = true\nsave_last_n_steps = 3\nnoise_offset_type = \"Original\"\nlog_with = \"wandb\"\nvae_batch_size = 4\nseed = 1\nxformers = false\nlogging_dir = \"logs\"\n",
        )
        .unwrap();
        assert_eq!(level_of(&imp, "vae"), None, "carried over as model.vae");
        assert_eq!(imp.table["model"]["vae"].as_str(), Some("/m/vae.safetensors"));
        assert_eq!(level_of(&imp, "face_crop_aug_range"), Some(NoteLevel::ChangesRun));
        assert_eq!(level_of(&imp, "sdpa"), Some(NoteLevel::Cosmetic));
        assert_eq!(level_of(&imp, "save_last_n_steps"), Some(NoteLevel::Info));
        assert_eq!(level_of(&imp, "noise_offset_type"), Some(NoteLevel::Info));
        assert_eq!(level_of(&imp, "log_with"), Some(NoteLevel::Info));
        assert_eq!(level_of(&imp, "xformers"), None, "an option that is off is not worth a note");
        assert_eq!(config(&imp).logging.log_with, "tensorboard");
        let report = imp.report(std::path::Path::new("cfg.toml"));
        assert!(report[0].starts_with("warning: cfg.toml: `base_weights`"), "{report:?}");
        assert!(report[1].starts_with("warning: cfg.toml: `face_crop_aug_range`"), "{report:?}");
        assert!(report.last().unwrap().ends_with("ignored: sdpa"), "{report:?}");
        assert_eq!(report.iter().filter(|l| l.starts_with("warning")).count(), 2, "{report:?}");
    }

    #[test]
    fn a_logging_dir_without_log_with_logs_to_tensorboard() {
        let c = config(&import_toml("network_dim = 4\nlogging_dir = \"logs\"\nseed = 1\n").unwrap());
        assert_eq!(c.logging.log_with, "tensorboard");
        let c = config(&import_toml("network_dim = 4\nseed = 1\n").unwrap());
        assert_eq!(c.logging.log_with, "none");
    }

    #[test]
    fn a_missing_seed_is_drawn_and_written_down() {
        let imp = import_toml("network_dim = 4\n").unwrap();
        let seed = imp.table["training"]["seed"].as_integer().unwrap();
        let note = imp.notes.iter().find(|n| n.key == "seed").unwrap();
        assert!(note.text.contains(&seed.to_string()), "{note:?}");
    }

    /// An sd-scripts TOML imported as if its checkpoint's weights said `family`.
    fn import_for(text: &str, family: Family) -> Result<Imported, String> {
        match parse(text.as_bytes())? {
            Parsed::SdScriptsArgs(pairs) => import_args(pairs, Some((family, "/m/base.safetensors".into()))),
            Parsed::GuiJson(_) => panic!("not TOML"),
        }
    }

    #[test]
    fn sdxl_only_arguments_make_an_sdxl_config() {
        let imp = import_toml(
            "network_module = \"networks.lora\"\ncache_text_encoder_outputs = true\nnetwork_train_unet_only = true\nno_half_vae = true\nclip_skip = 2\nv_parameterization = true\nzero_terminal_snr = true\nenable_bucket = true\nbucket_reso_steps = 32\nseed = 1\n",
        )
        .unwrap();
        let c = config(&imp);
        assert_eq!(c.model.model_family.as_deref(), Some("sdxl"));
        assert!(c.training.cache_text_encoder_outputs && c.caches_text_encoder_outputs());
        assert!(c.accelerate.no_half_vae && c.model.v_parameterization && c.loss.zero_terminal_snr);
        assert_eq!(c.model.clip_skip, None, "SDXL has no clip_skip");
        assert_eq!(c.dataset.bucket_reso_steps, 32);
        assert_eq!(level_of(&imp, "clip_skip"), Some(NoteLevel::Info));
        let why = imp.notes.iter().find(|n| n.key == "cache_text_encoder_outputs").unwrap();
        assert!(why.text.contains("sdxl_train_network.py"), "{why:?}");
        // `_to_disk` implies caching, as in sd-scripts.
        let c = config(
            &import_toml("network_dim = 4\ncache_text_encoder_outputs_to_disk = true\nnetwork_train_unet_only = true\nseed = 1\n")
                .unwrap(),
        );
        assert_eq!(c.model.model_family.as_deref(), Some("sdxl"));
        assert!(c.training.cache_text_encoder_outputs_to_disk && c.caches_text_encoder_outputs());
    }

    #[test]
    fn sdxl_text_encoder_lr_lists_train_as_sd_scripts_trains_them() {
        // train_network.py hands networks.lora text_encoder_lr[0]: both encoders at the first.
        let imp = import_for("network_dim = 4\ntext_encoder_lr = [1e-5, 2e-5]\nseed = 1\n", Family::Sdxl).unwrap();
        let c = config(&imp);
        assert_eq!(c.optimizer.text_encoder_lr, Some(crate::config::TextEncoderLr::All(1e-5)));
        assert_eq!(c.text_encoder_lrs(), vec![1e-5]);
        let note = imp.notes.iter().find(|n| n.key == "text_encoder_lr").unwrap();
        assert_eq!(note.level, NoteLevel::Info);
        assert!(note.text.contains("both SDXL text encoders train at 0.00001"), "{note:?}");
        assert!(note.text.contains("optimizer.text_encoder_lr = [0.00001, 0.00002]"), "{note:?}");
        // Unknown family: the note says what happens to either.
        let imp = import_toml("network_dim = 4\ntext_encoder_lr = [1e-5, 2e-5]\nseed = 1\n").unwrap();
        let note = imp.notes.iter().find(|n| n.key == "text_encoder_lr").unwrap();
        assert!(note.text.contains("SDXL's two both train at it"), "{note:?}");
        // Equal values, a single number or an empty list: nothing to say.
        let imp = import_for("network_dim = 4\ntext_encoder_lr = [3e-5, 3e-5]\nseed = 1\n", Family::Sdxl).unwrap();
        assert_eq!(config(&imp).optimizer.text_encoder_lr, Some(crate::config::TextEncoderLr::All(3e-5)));
        assert_eq!(level_of(&imp, "text_encoder_lr"), None);
    }

    #[test]
    fn the_checkpoint_tells_an_sd_scripts_toml_apart() {
        // An SDXL checkpoint: an sdxl_train_network.py config, clip_skip dropped.
        let imp = import_for("network_dim = 4\nclip_skip = 2\nseed = 1\n", Family::Sdxl).unwrap();
        let c = config(&imp);
        assert_eq!(c.model.model_family.as_deref(), Some("sdxl"));
        assert_eq!(c.model.clip_skip, None);
        let note = imp.notes.iter().find(|n| n.key == "pretrained_model_name_or_path").unwrap();
        assert!(note.text.contains("/m/base.safetensors is an SDXL checkpoint"), "{note:?}");
        // An SD 1.x checkpoint: clip_skip stays, the family is left to the checkpoint, and the
        // SDXL-only caching arguments are ignored as train_network.py ignores them.
        let imp =
            import_for("network_dim = 4\nclip_skip = 2\ncache_text_encoder_outputs = true\nseed = 1\n", Family::Sd1)
                .unwrap();
        let c = config(&imp);
        assert_eq!((c.model.model_family.as_deref(), c.model.clip_skip), (None, Some(2)));
        assert!(!c.caches_text_encoder_outputs());
        assert!(imp.notes.iter().any(|n| n.key == "cache_text_encoder_outputs" && n.text.contains("train_network.py")));
        // v2 with an SDXL checkpoint: neither script would run it.
        let err = import_for("network_dim = 4\nv2 = true\nseed = 1\n", Family::Sdxl).unwrap_err();
        assert!(err.contains("v2 cannot be enabled in SDXL training") && err.contains("/m/base.safetensors"), "{err}");
        // v2 wins over the caching arguments (train_network.py, which ignores them).
        let c =
            config(&import_toml("network_dim = 4\nv2 = true\ncache_text_encoder_outputs = true\nseed = 1\n").unwrap());
        assert_eq!(c.model.model_family.as_deref(), Some("sd2"));
        assert!(!c.caches_text_encoder_outputs());
    }

    #[test]
    fn sdxl_refusals_follow_sd_scripts_asserts() {
        for (toml, says) in [
            // assert_extra_args: no text-encoder LoRA with cached outputs.
            ("cache_text_encoder_outputs = true\n", "network for Text Encoder cannot be trained"),
            ("cache_text_encoder_outputs_to_disk = true\nnetwork_train_unet_only = false\n", "network_train_unet_only"),
            // verify_bucket_reso_steps(32), with buckets on.
            ("cache_text_encoder_outputs = true\nnetwork_train_unet_only = true\nenable_bucket = true\nbucket_reso_steps = 48\n", "divisible by 32"),
            // verify_sdxl_training_args.
            ("cache_text_encoder_outputs = true\nnetwork_train_unet_only = true\nv2 = \"true\"\nmodel_family = \"sdxl\"\n", "v2 cannot be enabled"),
        ] {
            let err = import_toml(&format!("network_dim = 4\nseed = 1\n{toml}")).unwrap_err();
            assert!(err.contains(says), "{toml}: {err}");
        }
        // Buckets off: sd-scripts does not check the step.
        let imp = import_for("network_dim = 4\nbucket_reso_steps = 48\nseed = 1\n", Family::Sdxl).unwrap();
        assert_eq!(config(&imp).dataset.bucket_reso_steps, 48);
        let err = import_for("network_dim = 4\nenable_bucket = true\nbucket_reso_steps = 1\nseed = 1\n", Family::Sdxl)
            .unwrap_err();
        assert!(err.contains("bucket_reso_steps = 1"), "{err}");
        // SD 1.x has no such rule (sd-scripts rounds the bucket sizes instead).
        let imp = import_for("network_dim = 4\nenable_bucket = true\nbucket_reso_steps = 48\nseed = 1\n", Family::Sd1);
        assert!(imp.is_ok());
    }

    #[test]
    fn full_fine_tuning_arguments_and_fused_backward_pass() {
        // sdxl_train.py's own arguments in a LoRA config: sd-scripts ignores them, said why.
        let imp = import_for(
            "network_dim = 4\nblock_lr = \"1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6,1e-6\"\nlearning_rate_te1 = 1e-6\ntrain_text_encoder = true\nseed = 1\n",
            Family::Sdxl,
        )
        .unwrap();
        for key in ["block_lr", "learning_rate_te1", "train_text_encoder"] {
            let note = imp.notes.iter().find(|n| n.key == key).unwrap_or_else(|| panic!("{key}: {:?}", imp.notes));
            assert_eq!(note.level, NoteLevel::Info);
            assert!(note.text.contains("sdxl_train.py"), "{note:?}");
        }
        assert!(imp.notes.iter().find(|n| n.key == "block_lr").unwrap().text.contains("down_lr_weight"));
        // fused_backward_pass: unused by LoRA training, but sd-scripts refuses it outside
        // Adafactor without accumulation.
        let imp = import_for(
            "network_dim = 4\nfused_backward_pass = true\noptimizer_type = \"Adafactor\"\nseed = 1\n",
            Family::Sdxl,
        )
        .unwrap();
        assert_eq!(level_of(&imp, "fused_backward_pass"), Some(NoteLevel::Cosmetic));
        for (toml, says) in [
            ("fused_backward_pass = true\n", "\"adamw\""),
            ("fused_backward_pass = true\nuse_8bit_adam = true\n", "\"adamw8bit\""),
            (
                "fused_backward_pass = true\noptimizer_type = \"Adafactor\"\ngradient_accumulation_steps = 2\n",
                "gradient_accumulation_steps = 2",
            ),
        ] {
            let err = import_for(&format!("network_dim = 4\nseed = 1\n{toml}"), Family::Sdxl).unwrap_err();
            assert!(err.contains(says) && err.contains("fused_backward_pass"), "{toml}: {err}");
        }
    }

    #[test]
    fn v2_configs_ask_for_an_sd2_checkpoint() {
        let c = config(&import_toml("network_dim = 4\nv2 = true\nv_parameterization = true\nseed = 1\n").unwrap());
        assert!(c.model.v2 && c.model.v_parameterization);
        assert_eq!(c.model.model_family.as_deref(), Some("sd2"));
        let c = config(&import_toml("network_dim = 4\nseed = 1\n").unwrap());
        assert_eq!(c.model.model_family, None, "an sd-scripts TOML does not say SD 1.x or SDXL");
    }
}
