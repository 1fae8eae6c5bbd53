//! lorakit-caption's integration tests, one module per file beside this one.
//!
//! They build as one test binary: every binary links candle, tokenizers and image (tens of MB
//! each), and one per file (140 across the workspace) filled CI's disk and spent minutes linking.
//! Run one file's tests with `cargo test -p lorakit-caption --test integration api::`.

mod mock_openai;

mod api;
mod florence2;
mod pil_decode;
mod wd14;
mod wd14_swinv2_eva02;
