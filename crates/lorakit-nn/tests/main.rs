//! lorakit-nn's integration tests, one module per file beside this one.
//!
//! They build as one test binary: every binary links candle, tokenizers and image (tens of MB
//! each), and one per file (140 across the workspace) filled CI's disk and spent minutes linking.
//! Run one file's tests with `cargo test -p lorakit-nn --test integration checkpoint_offload::`.

mod common;

mod checkpoint_offload;
mod dit_ops;
mod gradients;
mod lr_scheduler;
mod optim;
mod optim_8bit;
mod optim_adafactor;
mod optim_adaptive;
