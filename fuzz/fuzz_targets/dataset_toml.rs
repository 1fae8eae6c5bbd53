//! Any text as a dataset config: an error or a plan, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lorakit_dataset::config::plan_from_toml_str(
            text,
            std::path::Path::new("."),
            "fuzz.toml",
            &lorakit_dataset::config::OptionLayer::default(),
        );
    }
});
