//! lorakit-lora's integration tests, one module per file beside this one.
//!
//! They build as one test binary: every binary links candle, tokenizers and image (tens of MB
//! each), and one per file (140 across the workspace) filled CI's disk and spent minutes linking.
//! Run one file's tests with `cargo test -p lorakit-lora --test integration blocks_sdxl::`.

mod blocks_sdxl;
mod convert;
mod flux_layouts;
mod flux_resize_merge;
mod format;
mod lycoris;
mod merge;
mod resize_fixture;
mod resize_lycoris;
mod sd3_layouts;
