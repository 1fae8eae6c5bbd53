//! lorakit-train's integration tests, one module per file beside this one.
//!
//! They build as one test binary: every binary links candle, tokenizers and image (tens of MB
//! each), and one per file (140 across the workspace) filled CI's disk and spent minutes linking.
//! Run one file's tests with `cargo test -p lorakit-train --test integration diffusers_compat::`.

mod common;

mod diffusers_compat;
mod dim_from_weights;
mod external_vae;
mod key_families;
mod kohya_import_flux;
mod kohya_import_sd3;
mod kohya_import_sdxl;
mod logging;
mod loss_noise;
mod model_prediction;
mod network_args;
mod objective;
mod options_doc;
mod precision_sampling;
mod preflight;
mod sample_prompts;
mod text_cache;
mod train_e2e;
mod train_flow;
mod train_flux;
mod train_lycoris;
mod train_sd2;
mod train_sd3;
mod train_sdxl;
mod validation;
mod weighted_captions;
