//! What an imported file is, by its content: JSON or TOML (a byte-order mark is allowed, the
//! extension is not trusted), and whether it is a LoRA training config at all. Files that are
//! something else — a dataset TOML, a DreamBooth / fine-tune / textual-inversion config, LECO
//! prompts, caption metadata, an empty file — are refused, saying what they look like.

/// A parsed LoRA training config.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// A kohya_ss GUI config (JSON with the GUI's field names).
    GuiJson(serde_json::Map<String, serde_json::Value>),
    /// sd-scripts arguments (a `--config_file` TOML, sections flattened as sd-scripts does).
    SdScriptsArgs(Vec<(String, toml::Value)>),
}

/// Keys only a LoRA (network) training config has.
const NETWORK_KEYS: &[&str] =
    &["LoRA_type", "network_module", "network_dim", "network_alpha", "network_args", "network_weights"];

/// Decodes and classifies a config file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let text = decode(bytes)?;
    if text.trim().is_empty() {
        return Err("the file is empty: expected an sd-scripts config TOML or a kohya_ss GUI config JSON".into());
    }
    if text.trim_start().starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("looks like JSON but is not valid JSON: {e}"))?;
        let object = value.as_object().ok_or("a kohya_ss config is a JSON object")?;
        return classify_json(object);
    }
    let table: toml::Table = text.parse().map_err(|e| {
        format!("not valid TOML ({e}); a kohya_ss GUI config would be a JSON object starting with `{{`")
    })?;
    classify_toml(table)
}

/// UTF-8 (with or without a BOM) or UTF-16 with a BOM, as editors on Windows write them.
fn decode(bytes: &[u8]) -> Result<String, String> {
    let utf16 = |le: bool| {
        if bytes.len() % 2 != 0 {
            return Err("the file starts with a UTF-16 byte-order mark but has an odd number of bytes".to_string());
        }
        let units: Vec<u16> = bytes[2..]
            .chunks_exact(2)
            .map(|c| if le { u16::from_le_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], c[1]]) })
            .collect();
        String::from_utf16(&units)
            .map_err(|_| "the file starts with a UTF-16 byte-order mark but is not valid UTF-16".to_string())
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => std::str::from_utf8(rest).map(str::to_string),
        [0xFF, 0xFE, ..] => return utf16(true),
        [0xFE, 0xFF, ..] => return utf16(false),
        _ => std::str::from_utf8(bytes).map(str::to_string),
    }
    .map_err(|e| format!("not UTF-8 text (byte {}): a config is a TOML or JSON text file", e.valid_up_to()))
}

fn has_any(keys: &[&str], present: impl Fn(&str) -> bool) -> Option<String> {
    keys.iter().find(|k| present(k)).map(|k| k.to_string())
}

fn classify_json(object: &serde_json::Map<String, serde_json::Value>) -> Result<Parsed, String> {
    let has = |k: &str| object.contains_key(k);
    if object.is_empty() {
        return Err("the JSON object is empty: no setting to import".into());
    }
    // sd-scripts' fine-tuning metadata: image path → {caption, tags, train_resolution}.
    let metadata_like = object.values().all(|v| {
        v.as_object().is_some_and(|o| ["caption", "tags", "train_resolution"].iter().any(|k| o.contains_key(*k)))
    });
    if metadata_like {
        return Err(format!(
            "this is caption/latent metadata (sd-scripts' fine-tuning `in_json`: {} image entries), not a training config",
            object.len()
        ));
    }
    if has_any(NETWORK_KEYS, has).is_some() {
        return Ok(if has("LoRA_type") || !has("network_module") {
            Parsed::GuiJson(object.clone())
        } else {
            // sd-scripts arguments written as JSON (what `--output_config` would hold).
            Parsed::SdScriptsArgs(object.iter().filter_map(|(k, v)| Some((k.clone(), json_to_toml(v)?))).collect())
        });
    }
    Err(not_a_lora_config(has))
}

fn classify_toml(table: toml::Table) -> Result<Parsed, String> {
    if table.get("datasets").is_some_and(toml::Value::is_array)
        || table.get("general").is_some_and(toml::Value::is_table) && !table.contains_key("network_arguments")
    {
        return Err(
            "this is a dataset config ([general] / [[datasets]]), not a training config: name it in your training config as dataset.dataset_config, or check it with `lorakit dataset check --config`"
                .into(),
        );
    }
    if let Some(prompts) = table.get("prompts").and_then(toml::Value::as_array) {
        if prompts.iter().any(|p| p.get("target").is_some() || p.get("action").is_some()) {
            return Err(
                "this is a LECO prompt file ([[prompts]] with target/action), not a LoRA training config; LECO training is not supported"
                    .into(),
            );
        }
    }
    // sd-scripts flattens one level of sections into one namespace.
    let mut pairs = Vec::new();
    for (k, v) in table {
        match v {
            toml::Value::Table(inner) => pairs.extend(inner),
            other => pairs.push((k, other)),
        }
    }
    let has = |k: &str| pairs.iter().any(|(p, _)| p == k);
    if has_any(NETWORK_KEYS, has).is_some() {
        return Ok(Parsed::SdScriptsArgs(pairs));
    }
    if pairs.is_empty() {
        return Err("the TOML holds no setting to import".into());
    }
    Err(not_a_lora_config(has))
}

/// Arguments only `sdxl_train.py` (SDXL full fine-tuning) takes, and the kohya_ss GUI's fields for
/// them in its DreamBooth / Finetune tabs.
const SDXL_FINE_TUNING_KEYS: &[&str] =
    &["block_lr", "learning_rate_te1", "learning_rate_te2", "fused_optimizer_groups", "diffusers_xformers"];

/// Names what a config without any network key looks like.
fn not_a_lora_config(has: impl Fn(&str) -> bool) -> String {
    let kind = if has("token_string") || has("init_word") || has("num_vectors_per_token") {
        "a textual-inversion config (token_string / init_word)"
    } else if has("in_json") || has("image_folder") || has("train_dir") || has("caption_metadata_filename") {
        "a fine-tuning config (in_json / image_folder)"
    } else if let Some(key) = has_any(SDXL_FINE_TUNING_KEYS, &has) {
        return format!(
            "this looks like an SDXL DreamBooth / full fine-tuning config for sdxl_train.py (it sets {key}, and no network_* or LoRA_type key) — not a LoRA training config; lorakit trains LoRAs (for sdxl_train_network.py add network_module = \"networks.lora\" and a network_dim)"
        );
    } else if has("pretrained_model_name_or_path") || has("train_data_dir") {
        "a DreamBooth / full fine-tuning config (no network_* or LoRA_type key)"
    } else {
        "none of the kohya configs: it has none of the keys LoRA_type, network_module, network_dim, pretrained_model_name_or_path"
    };
    format!(
        "this looks like {kind} — not a LoRA training config; lorakit trains LoRAs (if it is meant for train_network.py, add network_module = \"networks.lora\")"
    )
}

/// A JSON value as TOML (`null` and nested objects have no TOML argument form: dropped).
pub(crate) fn json_to_toml(v: &serde_json::Value) -> Option<toml::Value> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(bytes: &[u8]) -> String {
        match parse(bytes) {
            Err(e) => e,
            Ok(p) => panic!("accepted: {p:?}"),
        }
    }

    #[test]
    fn json_is_told_by_content_and_boms_are_handled() {
        let json = br#"{"LoRA_type": "Standard", "network_dim": 8}"#;
        assert!(matches!(parse(json).unwrap(), Parsed::GuiJson(_)));
        let mut bom = vec![0xEF, 0xBB, 0xBF];
        bom.extend_from_slice(json);
        assert!(matches!(parse(&bom).unwrap(), Parsed::GuiJson(_)));
        let mut utf16 = vec![0xFF, 0xFE];
        for u in String::from_utf8_lossy(json).encode_utf16() {
            utf16.extend_from_slice(&u.to_le_bytes());
        }
        assert!(matches!(parse(&utf16).unwrap(), Parsed::GuiJson(_)));
        let toml = b"\xEF\xBB\xBF[additional_network_arguments]\nnetwork_module = \"networks.lora\"\n";
        assert!(matches!(parse(toml).unwrap(), Parsed::SdScriptsArgs(_)));
    }

    #[test]
    fn files_that_are_not_lora_configs_say_what_they_look_like() {
        assert!(refusal(b"").contains("empty"));
        assert!(refusal(b"  \n").contains("empty"));
        assert!(refusal(b"\xff\xfe\x00").contains("UTF-16"));
        assert!(refusal(b"\x80abc").contains("not UTF-8"));
        assert!(refusal(b"{ \"a\": ").contains("not valid JSON"));
        assert!(refusal(b"[1, 2]").contains("not valid TOML"));
        assert!(refusal(b"[general]\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"x\"\n")
            .contains("dataset config"));
        assert!(refusal(b"[[prompts]]\ntarget = \"van gogh\"\naction = \"erase\"\n").contains("LECO"));
        assert!(refusal(br#"{"img/a.jpg": {"caption": "a cat"}, "img/b.jpg": {"tags": "cat"}}"#)
            .contains("caption/latent metadata"));
        assert!(refusal(br#"{"pretrained_model_name_or_path": "m", "token_string": "sks", "init_word": "cat"}"#)
            .contains("textual-inversion"));
        assert!(refusal(br#"{"pretrained_model_name_or_path": "m", "image_folder": "img", "train_dir": "t"}"#)
            .contains("fine-tuning"));
        assert!(refusal(br#"{"pretrained_model_name_or_path": "m", "train_data_dir": "img", "epoch": 1}"#)
            .contains("DreamBooth"));
        assert!(refusal(b"pretrained_model_name_or_path = \"m\"\nlearning_rate = 1e-6\n").contains("DreamBooth"));
        let sdxl_fine_tuning = refusal(
            br#"{"pretrained_model_name_or_path": "m", "sdxl": true, "learning_rate_te1": 1e-5, "learning_rate_te2": 1e-5}"#,
        );
        assert!(
            sdxl_fine_tuning.contains("sdxl_train.py") && sdxl_fine_tuning.contains("learning_rate_te1"),
            "{sdxl_fine_tuning}"
        );
        assert!(refusal(b"pretrained_model_name_or_path = \"m\"\nblock_lr = \"1e-6\"\n").contains("sdxl_train.py"));
        assert!(refusal(b"{}").contains("empty"));
        assert!(refusal(b"[\"a\"]").contains("no setting"));
    }
}
