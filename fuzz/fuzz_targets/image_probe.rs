//! Any bytes named as an image: probing and decoding must return a result, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = lorakit_dataset::probe::probe_header_bytes(data);
    let full = lorakit_dataset::probe::decode_bytes(data);
    // A file the full decode accepts has a readable header with the same facts.
    if let Ok(full) = full {
        assert_eq!(header.ok(), Some(full.probe));
    }
});
