//! Any text as a lorakit training config: an error or a config that prints back unchanged.
//! The body lives in `lorakit_fuzz_targets::training_config`, shared with the stable-Rust harness.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lorakit_fuzz_targets::training_config(data));
