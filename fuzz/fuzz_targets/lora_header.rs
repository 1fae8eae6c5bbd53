//! Any bytes as a .safetensors LoRA: header validation, tensor decoding, module
//! grouping, family guess and metadata parsing must return results, never panic.
//! A header lorakit accepts must also be accepted by the reference `safetensors`
//! reader (lorakit is at least as strict).
#![no_main]
use libfuzzer_sys::fuzz_target;
use lorakit_lora::{keys, metadata::LoraMetadata, safetensors_file};

fuzz_target!(|data: &[u8]| {
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
});
