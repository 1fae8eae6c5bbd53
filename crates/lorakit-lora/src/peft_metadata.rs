//! diffusers' `lora_adapter_metadata`: the PEFT `LoraConfig` a diffusers LoRA is saved with (JSON
//! in the safetensors metadata, keys prefixed by component: `transformer.lora_alpha`,
//! `transformer.alpha_pattern`, `transformer.use_rslora`, …; unprefixed when a model saved its
//! own adapter). diffusers builds the adapter from it, so a module's scale is
//! `alpha / rank` (rsLoRA: `alpha / √rank`) with `alpha` from `alpha_pattern` or `lora_alpha` —
//! the only place such a file records its alpha.

use std::collections::BTreeMap;

/// The metadata key diffusers writes.
pub const KEY: &str = "lora_adapter_metadata";

/// The effective alpha (scale × rank) the adapter metadata gives `module` (a PEFT module name such
/// as `transformer.single_transformer_blocks.0.proj_out`) of rank `rank`; `None` when the file
/// has no such metadata, it does not parse, or it names no alpha for the module's component.
pub fn adapter_alpha(metadata: &BTreeMap<String, String>, module: &str, rank: usize) -> Option<f32> {
    let config: serde_json::Value = serde_json::from_str(metadata.get(KEY)?).ok()?;
    let config = config.as_object()?;
    let module = module.strip_prefix("base_model.model.").unwrap_or(module);
    // `transformer.x.y` reads `transformer.lora_alpha`; unprefixed configs apply to every module.
    let (prefix, path) = match module.split_once('.') {
        Some((p, rest)) if config.contains_key(&format!("{p}.lora_alpha")) => (format!("{p}."), rest),
        _ => (String::new(), module),
    };
    let get = |key: &str| config.get(&format!("{prefix}{key}"));
    let mut alpha = get("lora_alpha")?.as_f64()?;
    if let Some(patterns) = get("alpha_pattern").and_then(|p| p.as_object()) {
        // PEFT's `get_pattern_key`: `(.*\.)?(<key>)$` matched from the start of the module path.
        let matched = patterns.iter().find(|(key, _)| path == key.as_str() || path.ends_with(&format!(".{key}")));
        if let Some(a) = matched.and_then(|(_, a)| a.as_f64()) {
            alpha = a;
        }
    }
    let rslora = get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false);
    let scale = if rslora { alpha / (rank as f64).sqrt() } else { alpha / rank as f64 };
    let effective = (scale * rank as f64) as f32;
    effective.is_finite().then_some(effective)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(json: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(KEY.to_string(), json.to_string())])
    }

    #[test]
    fn alpha_from_lora_alpha_pattern_and_rslora() {
        let m = meta(
            r#"{"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.use_rslora": false,
                "transformer.alpha_pattern": {"single_transformer_blocks.0.proj_out": 2},
                "text_encoder.r": 4, "text_encoder.lora_alpha": 16, "text_encoder.use_rslora": true}"#,
        );
        assert_eq!(adapter_alpha(&m, "transformer.transformer_blocks.0.attn.to_q", 4), Some(8.0));
        assert_eq!(adapter_alpha(&m, "transformer.single_transformer_blocks.0.proj_out", 4), Some(2.0));
        assert_eq!(adapter_alpha(&m, "transformer.single_transformer_blocks.10.proj_out", 4), Some(8.0));
        // rsLoRA: scale 16/√4 = 8, i.e. alpha 32 at rank 4.
        assert_eq!(adapter_alpha(&m, "text_encoder.text_model.encoder.layers.0.mlp.fc1", 4), Some(32.0));
        assert_eq!(adapter_alpha(&m, "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q", 4), None);
        let bare = meta(r#"{"r": 2, "lora_alpha": 1.5}"#);
        assert_eq!(adapter_alpha(&bare, "transformer_blocks.0.attn.to_q", 2), Some(1.5));
        assert_eq!(adapter_alpha(&meta("not json"), "x", 2), None);
        assert_eq!(adapter_alpha(&BTreeMap::new(), "x", 2), None);
    }
}
