//! Diffusion transformers: Flux.1 (`flux`); SD3's MMDiT arrives with its issue.

pub mod flux;
pub mod flux_network;
