//! lorakit-gui's integration tests, one module per file beside this one.
//!
//! They build as one test binary: every binary links candle, tokenizers and image (tens of MB
//! each), and one per file (140 across the workspace) filled CI's disk and spent minutes linking.
//! Run one file's tests with `cargo test -p lorakit-gui --test integration captions::`.

mod captions;
mod datasets;
mod forms;
mod jobs;
mod library;
mod router;
mod tags;
mod tools;
