//! lorakit-dataset's integration tests, one module per file beside this one.
//!
//! They build as one test binary: every binary links candle, tokenizers and image (tens of MB
//! each), and one per file (140 across the workspace) filled CI's disk and spent minutes linking.
//! Run one file's tests with `cargo test -p lorakit-dataset --test integration color_aug::`.

mod color_aug;
mod preprocess;
mod prompt_weights;
mod sd_scripts_parity;
mod tags;
