//! lorakit's integration tests, one module per file beside this one.
//!
//! They build as one test binary: every binary links candle, tokenizers and image (tens of MB
//! each), and one per file (140 across the workspace) filled CI's disk and spent minutes linking.
//! Run one file's tests with `cargo test -p lorakit --test integration cli_caption_api::`.

mod common;

mod cli_caption_api;
mod cli_caption_florence;
mod cli_caption_wd14;
mod cli_convert;
mod cli_dataset;
mod cli_flux_lora;
mod cli_generate;
mod cli_generate_flux;
mod cli_generate_sdxl;
mod cli_kohya_import_flux;
mod cli_lora;
mod cli_merge;
mod cli_sd3;
mod cli_sd3_lora;
mod cli_tags;
mod cli_train;
mod cli_train_lycoris;
mod cli_train_sdxl;
mod quickstart_learns;
