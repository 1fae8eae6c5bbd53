//! Any bytes named as an image: probing and decoding must return a result, never panic.
//! The body lives in `lorakit_fuzz_targets::image_probe`, shared with the stable-Rust harness.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lorakit_fuzz_targets::image_probe(data));
