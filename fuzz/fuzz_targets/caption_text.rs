//! Any caption bytes: decoding, line splitting and tag parsing must not panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = lorakit_dataset::caption::decode_text(data);
    let lines = lorakit_dataset::caption::universal_lines(&decoded.text);
    let mut freq = Default::default();
    if let Some(first) = lines.first() {
        lorakit_dataset::caption::count_tags(first, &mut freq);
    }
});
