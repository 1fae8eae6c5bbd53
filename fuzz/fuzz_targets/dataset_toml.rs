//! Any text as a dataset config: an error or a plan, never a panic.
//! The body lives in `lorakit_fuzz_targets::dataset_toml`, shared with the stable-Rust harness.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lorakit_fuzz_targets::dataset_toml(data));
