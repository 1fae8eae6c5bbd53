//! lorakit-models's integration tests, one module per file beside this one.
//!
//! They build as one test binary: every binary links candle, tokenizers and image (tens of MB
//! each), and one per file (140 across the workspace) filled CI's disk and spent minutes linking.
//! Run one file's tests with `cargo test -p lorakit-models --test integration checkpoint::`.

mod checkpoint;
mod clip;
mod clip_tokenizer;
mod flux;
mod flux_pipeline;
mod latent_factor;
mod lora_fidelity;
mod lycoris_train;
mod mmdit;
mod mmdit_block_swap;
mod samplers;
mod sd2;
mod sd3_checkpoint;
mod sd3_network;
mod sd3_pipeline;
mod sd3_text;
mod sdxl_checkpoint;
mod sdxl_text;
mod sdxl_unet;
mod t5;
mod t5_tokenizer;
mod unet;
mod vae;
mod vae_file;
mod weighted_captions;
