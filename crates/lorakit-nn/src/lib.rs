//! candle extensions that make LoRA training correct and affordable.
//!
//! candle records a backward pass for every op and computes gradients for every weight it
//! touches, frozen or not, and several of its fused ops silently record none. This crate keeps
//! the frozen model out of the autograd graph except for what a LoRA run needs — the gradient
//! with respect to activations — through one primitive, [`custom_backward::attach`]: a forward
//! value computed without tracking, paired with a closure that produces the input gradient.
//! Frozen linears and convs, memory-efficient attention and block-level gradient checkpointing
//! are built on it; LoRA adapters are ordinary candle `Var`s hooked into named layers.

pub mod activation;
pub mod attention;
pub mod checkpoint;
mod cpu;
pub mod custom_backward;
pub mod dit;
pub mod frozen;
pub mod gradcheck;
pub mod infer;
pub mod layers;
pub mod lora;
pub mod lr_scheduler;
pub mod lycoris;
pub mod norm;
pub mod optim;
pub mod profile;
pub mod runtime;

pub use custom_backward::{attach, attach_many};
pub use frozen::{FrozenConv2d, FrozenLinear};
pub use layers::{Conv2d, ForwardCtx, Linear};
pub use lora::{LoraDropout, LoraKind, LoraModule, LoraPart, LoraSet};
pub use lycoris::{LokrOptions, LycorisAlgo, LycorisModule};
pub use norm::{GroupNorm, LayerNorm};

/// The dtype reductions (softmax, norm statistics) run in: f32 for f32/f16/bf16 activations,
/// f64 for f64 ones (gradient checks), so low-precision activations never lose the statistics.
pub(crate) fn stat_dtype(dtype: candle_core::DType) -> candle_core::DType {
    if dtype == candle_core::DType::F64 {
        candle_core::DType::F64
    } else {
        candle_core::DType::F32
    }
}

/// Locks a mutex, recovering the data after a panic elsewhere (the RNG and gradient maps stay
/// usable; a poisoned lock must not turn into a second panic).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
