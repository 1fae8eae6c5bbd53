//! Any bytes as a .safetensors LoRA: results or errors, never a panic; at least as strict as `safetensors`.
//! The body lives in `lorakit_fuzz_targets::lora_header`, shared with the stable-Rust harness.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lorakit_fuzz_targets::lora_header(data));
