//! What every fuzz target checks, in one place: the cargo-fuzz binaries in `fuzz/` (libFuzzer,
//! coverage-guided, nightly or `RUSTC_BOOTSTRAP=1`) and the deterministic mutation harness in
//! [`mutate`] (stable Rust, run by `cargo test` in CI) call the same functions, so a target
//! cannot drift between the two.
//!
//! Each target takes arbitrary bytes and must return without panicking; some also check an
//! invariant (stated on the function).

pub mod mutate;

use std::path::Path;

/// Any bytes as a kohya config (`lorakit train --from-kohya`): detection, the GUI conversion,
/// the sd-scripts mapping, then the lorakit config built and validated from the result — an
/// error or a config, never a panic. Paths in the input are not read (a base folder that does
/// not exist).
pub fn kohya_import(data: &[u8]) {
    let Ok(imported) = lorakit_train::kohya_import::import_bytes(data, Path::new("/nonexistent-fuzz-base")) else {
        return;
    };
    let _ = imported.report(Path::new("fuzz.json"));
    let _ = imported.unmapped_keys();
    if let Ok(config) = toml::Value::Table(imported.table).try_into::<lorakit_train::TrainConfig>() {
        let _ = config.validate();
        let _ = config.to_toml_string();
    }
}

/// Any text as a lorakit training config (with a `--set` override applied): an error or a
/// valid config; a config that validates prints as TOML that loads back to the same config.
pub fn training_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = lorakit_train::TrainConfig::from_toml_str(text, &["training.seed=1".into()]) {
        let printed = config.to_toml_string();
        let back = lorakit_train::TrainConfig::from_toml_str(&printed, &[])
            .unwrap_or_else(|e| panic!("a valid config printed as TOML that does not load: {e}\n{printed}"));
        assert_eq!(back, config, "a config changed through --print-config");
    }
}

/// Any text as an sd-scripts dataset config: an error or a plan, never a panic.
pub fn dataset_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lorakit_dataset::config::plan_from_toml_str(
            text,
            Path::new("."),
            "fuzz.toml",
            &lorakit_dataset::config::OptionLayer::default(),
        );
    }
}

/// Any caption bytes: decoding, line splitting and tag parsing must not panic.
pub fn caption_text(data: &[u8]) {
    let decoded = lorakit_dataset::caption::decode_text(data);
    let lines = lorakit_dataset::caption::universal_lines(&decoded.text);
    let mut freq = Default::default();
    if let Some(first) = lines.first() {
        lorakit_dataset::caption::count_tags(first, &mut freq);
    }
}

/// Any bytes named as an image: probing and decoding return a result, never panic; a file the
/// full decode accepts has a readable header with the same facts.
pub fn image_probe(data: &[u8]) {
    let header = lorakit_dataset::probe::probe_header_bytes(data);
    let full = lorakit_dataset::probe::decode_bytes(data);
    if let Ok(full) = full {
        assert_eq!(header.ok(), Some(full.probe));
    }
}

/// Any bytes as a `.safetensors` LoRA: header validation, tensor decoding, module grouping,
/// family guess and metadata parsing return results, never panic; a header lorakit accepts is
/// also accepted by the reference `safetensors` reader (lorakit is at least as strict).
pub fn lora_header(data: &[u8]) {
    use lorakit_lora::{keys, metadata::LoraMetadata, safetensors_file};
    let accepted = safetensors_file::parse_header(data).is_ok();
    if accepted {
        assert!(safetensors::SafeTensors::deserialize(data).is_ok(), "lorakit accepted a header safetensors rejects");
    }
    let Ok(file) = safetensors_file::LoraFile::from_bytes(data.to_vec(), "fuzz.safetensors") else {
        assert!(!accepted);
        return;
    };
    for name in file.tensor_names() {
        if let Ok(values) = file.tensor_f32(name) {
            assert_eq!(values.len(), file.info(name).map_or(0, |i| i.numel()));
        }
    }
    let _ = keys::modules(&file);
    let _ = keys::guess_family(&file);
    let _ = LoraMetadata::parse(file.metadata());
}

/// A fuzz target: arbitrary bytes in, a panic on failure.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/` and the harness know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("kohya_import", kohya_import),
    ("training_config", training_config),
    ("dataset_toml", dataset_toml),
    ("caption_text", caption_text),
    ("image_probe", image_probe),
    ("lora_header", lora_header),
];
