//! Hand-written f32 CPU kernels for the hot ops of a training step (convolutions, attention),
//! used when a tensor lives on the CPU in f32; other devices and dtypes take candle's ops.
//! Each is checked against candle's composed ops in `tests/gradients.rs`.

pub(crate) mod activation;
pub(crate) mod attention;
pub(crate) mod conv;
pub(crate) mod dit;
mod exp;
pub(crate) mod gemm;
pub(crate) mod linear;
pub(crate) mod lora;
pub(crate) mod norm;
mod winograd;

use candle_core::{DType, Result, Storage, Tensor};

/// Whether the CPU kernels handle `t`: f32 on the CPU.
pub(crate) fn handles(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f` on the elements of `t` (f32 on the CPU), made contiguous first, without copying
/// when it already is.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("CPU kernel given a tensor on another device") };
    let data = cpu.as_slice::<f32>()?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("tensor not contiguous after contiguous()")
    };
    Ok(f(&data[start..end]))
}
