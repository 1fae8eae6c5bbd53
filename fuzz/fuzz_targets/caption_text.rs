//! Any caption bytes: decoding, line splitting and tag parsing must not panic.
//! The body lives in `lorakit_fuzz_targets::caption_text`, shared with the stable-Rust harness.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lorakit_fuzz_targets::caption_text(data));
