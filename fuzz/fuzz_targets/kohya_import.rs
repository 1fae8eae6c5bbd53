//! Any bytes as a kohya config (`lorakit train --from-kohya`): an error or a config, never a panic.
//! The body lives in `lorakit_fuzz_targets::kohya_import`, shared with the stable-Rust harness.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lorakit_fuzz_targets::kohya_import(data));
