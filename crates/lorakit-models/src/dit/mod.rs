//! Diffusion transformers: Flux.1 (`flux`) and SD3 / SD3.5's MMDiT (`mmdit`).

pub mod flux;
pub mod flux_network;
pub mod mmdit;
