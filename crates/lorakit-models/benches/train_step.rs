//! One LoRA training step of the full-size SD1.5 UNet (random weights), the benchmark:
//! rank 16 on attention and conv layers, batch 1, 64×64 latent, f32, forward + MSE loss +
//! backward. Prints one JSON line per measured step; `tools/bench/train_step/run.sh`
//! interleaves it with the PyTorch equivalent and reports both.
//!
//! `cargo bench -p lorakit-models --bench train_step -- [steps] [--checkpointing] [--live-memory] [--profile]
//!  [--device cpu|cuda] [--dtype f32|bf16|f16]`
//!
//! `--profile` prints where the last step's time went, kernel by kernel (`lorakit_nn::profile`).
//! `--device cuda` needs a `--features cuda` build (`tools/bench/train_step/gpu.sh`); `--dtype`
//! is the frozen UNet's dtype (as `mixed_precision`), the LoRA keeps f32 master weights as in
//! training. GPU memory is measured from outside (nvidia-smi), not here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lorakit_models::lora_inject::{create_network, NetworkSpec, UNET_PREFIX};
use lorakit_models::unet_2d::{UNet2DConditionModel, UNet2DConditionModelConfig};
use lorakit_models::Weights;
use lorakit_nn::ForwardCtx;

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident memory now (not the peak), in MB.
fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<f64>().unwrap_or(0.0))
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn main() -> anyhow::Result<()> {
    if std::env::args().all(|a| a != "--default-allocator") {
        lorakit_nn::runtime::init_cpu_runtime();
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench" && a != "--default-allocator").collect();
    // The first bare number (an option's value such as `--dtype f32` never parses as one).
    let steps: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(3);
    let checkpointing = args.iter().any(|a| a == "--checkpointing");
    let live_memory = args.iter().any(|a| a == "--live-memory");
    let profile = args.iter().any(|a| a == "--profile");
    if profile {
        lorakit_nn::profile::enable();
    }
    let option = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str);
    let device = match option("--device").unwrap_or("cpu") {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => anyhow::bail!("--device {other}: expected cpu or cuda"),
    };
    let dtype_name = option("--dtype").unwrap_or("f32");
    let dtype = match dtype_name {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => anyhow::bail!("--dtype {other}: expected f32, bf16 or f16"),
    };
    let cfg = UNet2DConditionModelConfig::sd15();
    let t0 = Instant::now();
    let mut tensors = HashMap::new();
    let mut params = 0usize;
    for (name, shape) in cfg.parameter_shapes() {
        params += shape.iter().product::<usize>();
        let t = if name.contains("norm") && name.ends_with("weight") {
            Tensor::ones(shape.as_slice(), dtype, &device)?
        } else {
            Tensor::randn(0f32, 0.02, shape.as_slice(), &device)?.to_dtype(dtype)?
        };
        tensors.insert(name, t);
    }
    let weights = Weights::new(tensors, "random SD1.5 UNet");
    let unet = UNet2DConditionModel::new(weights.view(""), &cfg)?;
    weights.check_complete()?;
    drop(weights);
    // --attention-only: no conv LoRA (sd-scripts without conv_dim), to see what LoCon costs.
    let conv_rank = if args.iter().any(|a| a == "--attention-only") { None } else { Some(16) };
    let spec = NetworkSpec { rank: 16, alpha: 16.0, conv_rank, conv_alpha: 16.0, ..Default::default() };
    let lora = Arc::new(create_network(&unet.lora_targets(), UNET_PREFIX, &spec, DType::F32, &device, 0)?);
    // Non-zero up weights so every LoRA branch carries gradient as in a running training.
    for m in lora.modules() {
        m.up().set(&Tensor::randn(0f32, 0.01, m.up().dims(), &device)?)?;
    }
    eprintln!(
        "setup {:.1}s, {params} UNet parameters, {} LoRA modules, peak RSS after setup {:.0} MB",
        t0.elapsed().as_secs_f64(),
        lora.len(),
        peak_rss_mb()
    );
    let ctx = ForwardCtx { lora: Some(lora.clone()), train: true, gradient_checkpointing: checkpointing };
    let latents = Tensor::randn(0f32, 1.0, (1, 4, 64, 64), &device)?.to_dtype(dtype)?;
    let target = Tensor::randn(0f32, 1.0, (1, 4, 64, 64), &device)?;
    let context = Tensor::randn(0f32, 1.0, (1, 77, 768), &device)?.to_dtype(dtype)?;
    let timesteps = Tensor::new(&[500u32], &device)?;
    for step in 0..=steps {
        // Only the last step's profile is printed.
        lorakit_nn::profile::take();
        let t = Instant::now();
        let forward_scope = lorakit_nn::profile::scope("model forward outside the kernels");
        let pred = unet.forward(&latents, &timesteps, &context, &ctx)?;
        drop(forward_scope);
        // The loss in f32, as training computes it.
        let loss = (pred.to_dtype(DType::F32)? - &target)?.sqr()?.mean_all()?;
        device.synchronize()?;
        let forward_secs = t.elapsed().as_secs_f64();
        // --live-memory: return freed heap pages first so the number is live memory (costs the
        // next step page faults, so timings are not comparable with it on).
        if live_memory {
            lorakit_nn::runtime::release_free_memory();
        }
        let after_forward = rss_mb();
        let backward_scope = lorakit_nn::profile::scope("candle backprop outside the kernels");
        let grads = loss.backward()?;
        drop(backward_scope);
        let mut norm = 0f32;
        for var in lora.trainable_vars() {
            if let Some(g) = lora.grad(&grads, &var)? {
                norm += g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            }
        }
        lora.clear_side_grads();
        device.synchronize()?;
        let secs = t.elapsed().as_secs_f64();
        if step > 0 {
            // Step 0 is warm-up (allocator, page faults).
            println!(
                "{{\"impl\":\"lorakit\",\"step\":{step},\"seconds\":{secs:.3},\"forward_seconds\":{forward_secs:.3},\"loss\":{:.5},\"grad_norm\":{:.5},\"peak_rss_mb\":{:.0},\"rss_after_forward_mb\":{after_forward:.0},\"checkpointing\":{checkpointing},\"device\":\"{}\",\"dtype\":\"{dtype_name}\"}}",
                loss.to_scalar::<f32>()?,
                norm.sqrt(),
                peak_rss_mb(),
                if device.is_cpu() { "cpu" } else { "cuda" }
            );
        }
        if profile && step == steps {
            for e in lorakit_nn::profile::take() {
                eprintln!(
                    "{:40} {:6} calls {:7.3} s  {:5.1}%",
                    e.label,
                    e.calls,
                    e.self_seconds,
                    100.0 * e.self_seconds / secs
                );
            }
        }
    }
    Ok(())
}
