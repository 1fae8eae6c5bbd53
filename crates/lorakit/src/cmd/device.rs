//! `--device`: where a command runs its model (the CPU unless asked).

use anyhow::{Context, Result};
use candle_core::Device;
use clap::ValueEnum;

/// The device a command's model runs on.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum DeviceArg {
    /// The CPU (all cores).
    Cpu,
    /// The first NVIDIA GPU (a build with the `cuda` feature).
    Cuda,
    /// The Apple GPU (a build with the `metal` feature).
    Metal,
}

/// The device `arg` names, or why it cannot be used.
pub fn device(arg: DeviceArg) -> Result<Device> {
    Ok(match arg {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => {
            Device::new_cuda(0).context("CUDA device (this build needs the `cuda` feature and an NVIDIA driver)")?
        }
        DeviceArg::Metal => Device::new_metal(0).context("Metal device (this build needs the `metal` feature)")?,
    })
}
