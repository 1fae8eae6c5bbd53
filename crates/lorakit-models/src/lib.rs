//! The Stable Diffusion model stack on candle, written to be trained through: every frozen
//! layer uses `lorakit-nn`'s dX-only ops and every LoRA target is named by its diffusers path,
//! so kohya key names fall out of the module tree.
//!
//! One file per component, config structs named as in diffusers, weight paths that mirror the
//! diffusers checkpoint keys (single-file LDM checkpoints are renamed on load by `checkpoint`).

pub mod checkpoint;
pub mod clip;
pub mod clip_tokenizer;
pub mod dit;
mod error;
pub mod flux_pipeline;
pub mod grid;
pub mod lora_inject;
pub mod pipeline;
pub mod resnet;
pub mod samplers;
pub mod schedule;
pub mod sd3_pipeline;
pub mod sd3_text;
pub mod sdxl_text;
pub mod t5;
pub mod t5_tokenizer;
mod token_ids;
pub mod transformer_2d;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;
pub mod weights;

pub use error::{Error, Result};
pub use weights::{WeightProblem, Weights, WeightsView};
