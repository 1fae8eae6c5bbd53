//! LoRA files: one format layer (safetensors, key schemes, metadata, hashes)
//! under every tool that reads or writes LoRAs — inspect, resize, merge,
//! convert, and the trainer's own saves.

pub mod blocks;
pub mod convert;
mod dit_convert;
mod dit_names;
pub mod flux;
mod flux_convert;
pub mod inspect;
pub mod keys;
pub mod lycoris;
pub mod merge;
pub mod metadata;
pub mod peft_metadata;
pub mod resize;
pub mod resize_file;
pub mod safetensors_file;
pub mod sd3;
mod sd3_convert;
