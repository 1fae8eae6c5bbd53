//! Diffusion transformers: Flux.1 (`flux`) and SD3 / SD3.5's MMDiT (`mmdit`), with the
//! sd-scripts network arguments that choose their LoRA modules (`flux_network`, `sd3_network`).

pub mod block_selection;
pub mod flux;
pub mod flux_network;
pub mod mmdit;
pub mod sd3_network;
