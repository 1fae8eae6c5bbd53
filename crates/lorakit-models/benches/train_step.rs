//! One LoRA training step of a full-size UNet (random weights), the benchmark: batch 1,
//! forward + MSE loss + backward (no optimizer step). Prints one JSON line per measured step;
//! `tools/bench/train_step/run.sh` interleaves it with the PyTorch equivalent
//! (`tools/bench/train_step/torch_step.py`, same options) and reports both.
//!
//! `cargo bench -p lorakit-models --bench train_step -- [steps] [--model sd15|sdxl] [--latent N]
//!  [--conv-dim N | --attention-only] [--checkpointing] [--live-memory] [--profile]
//!  [--device cpu|cuda] [--dtype f32|bf16|f16]`
//!
//! `--model sd15` (default): SD1.5's UNet (859,520,964 parameters), 77×768 context, kohya LoRA
//! rank 16 / alpha 16 on the attention-group layers plus conv_dim 16 / conv_alpha 16 on the
//! ResNet/sampler layers (278 modules). `--model sdxl`: SDXL base 1.0's UNet (2,567,463,684
//! parameters), 77×2048 context, `text_embeds` (1, 1280) and `time_ids` (1, 6), rank 16 / alpha
//! 16 on the attention-group layers only (722 modules, SGM-named as sd-scripts names SDXL's);
//! `--conv-dim N` adds conv modules to either (0: none, as `--attention-only`). `--latent N` is
//! the latent's side (default 64 = 512 px).
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
use lorakit_models::unet_2d::{AddedConditions, UNet2DConditionModel, UNet2DConditionModelConfig};
use lorakit_models::Weights;
use lorakit_nn::ForwardCtx;

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident memory now (not the peak), in MB.
fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// The machine's 1-minute load average (other work on the cores shows as load above the bench's
/// own threads).
fn loadavg_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(-1.0)
}

/// CPU seconds used by the whole machine and by this process so far (`/proc/stat`,
/// `/proc/self/stat`, at 100 ticks a second): a step's difference of the two is the CPU time
/// other processes took from the cores meanwhile (`other_cpu_s`).
fn cpu_seconds() -> (f64, f64) {
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let f: Vec<f64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal: all but idle and iowait.
            Some(f.iter().take(8).enumerate().filter(|&(i, _)| i != 3 && i != 4).map(|(_, x)| x).sum::<f64>())
        })
        .unwrap_or(0.0);
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let f: Vec<f64> =
                s.rsplit_once(')')?.1.split_whitespace().skip(11).take(2).filter_map(|x| x.parse().ok()).collect();
            Some(f.iter().sum::<f64>())
        })
        .unwrap_or(0.0);
    (machine / 100.0, own / 100.0)
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
    // The first bare number that is not an option's value (`--latent 64`, `--conv-dim 16`).
    const VALUED: [&str; 5] = ["--device", "--dtype", "--model", "--latent", "--conv-dim"];
    let steps: usize = args
        .iter()
        .enumerate()
        .filter(|&(i, _)| i == 0 || !VALUED.contains(&args[i - 1].as_str()))
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(3);
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
    let model = option("--model").unwrap_or("sd15");
    let (cfg, context_width, default_conv_rank) = match model {
        "sd15" => (UNet2DConditionModelConfig::sd15(), 768, Some(16)),
        "sdxl" => (UNet2DConditionModelConfig::sdxl(), 2048, None),
        other => anyhow::bail!("--model {other}: expected sd15 or sdxl"),
    };
    let latent: usize = match option("--latent") {
        Some(n) => n.parse().map_err(|_| anyhow::anyhow!("--latent {n}: expected a number"))?,
        None => 64,
    };
    let conv_rank = if args.iter().any(|a| a == "--attention-only") {
        None
    } else {
        match option("--conv-dim") {
            Some(n) => Some(n.parse::<usize>().map_err(|_| anyhow::anyhow!("--conv-dim {n}: expected a number"))?)
                .filter(|&r| r > 0),
            None => default_conv_rank,
        }
    };
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
    let weights = Weights::new(tensors, format!("random {model} UNet"));
    let unet = UNet2DConditionModel::new(weights.view(""), &cfg)?;
    weights.check_complete()?;
    drop(weights);
    // --attention-only / --conv-dim 0: no conv LoRA (sd-scripts without conv_dim), e.g. to see
    // what LoCon costs.
    let spec = NetworkSpec { rank: 16, alpha: 16.0, conv_rank, conv_alpha: 16.0, ..Default::default() };
    let targets = unet.lora_targets_in(unet.kohya_layout());
    let lora = Arc::new(create_network(&targets, UNET_PREFIX, &spec, DType::F32, &device, 0)?);
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
    let latents = Tensor::randn(0f32, 1.0, (1, 4, latent, latent), &device)?.to_dtype(dtype)?;
    let target = Tensor::randn(0f32, 1.0, (1, 4, latent, latent), &device)?;
    let context = Tensor::randn(0f32, 1.0, (1, 77, context_width), &device)?.to_dtype(dtype)?;
    let timesteps = Tensor::new(&[500u32], &device)?;
    // SDXL's micro-conditioning: original size, crop top-left, target size (the latent's pixels).
    let added = if unet.needs_added_conditions() {
        let px = (latent * 8) as f32;
        Some(AddedConditions {
            text_embeds: Tensor::randn(0f32, 1.0, (1, 1280), &device)?.to_dtype(dtype)?,
            time_ids: Tensor::new(&[[px, px, 0.0, 0.0, px, px]], &device)?,
        })
    } else {
        None
    };
    for step in 0..=steps {
        // Only the last step's profile is printed.
        lorakit_nn::profile::take();
        let cpu_before = cpu_seconds();
        let t = Instant::now();
        let forward_scope = lorakit_nn::profile::scope("model forward outside the kernels");
        let pred = unet.forward_with(&latents, &timesteps, &context, added.as_ref(), &ctx)?;
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
        let cpu_after = cpu_seconds();
        let other_cpu = ((cpu_after.0 - cpu_before.0) - (cpu_after.1 - cpu_before.1)).max(0.0);
        if step > 0 {
            // Step 0 is warm-up (allocator, page faults).
            println!(
                "{{\"impl\":\"lorakit\",\"step\":{step},\"seconds\":{secs:.3},\"forward_seconds\":{forward_secs:.3},\"loss\":{:.5},\"grad_norm\":{:.5},\"peak_rss_mb\":{:.0},\"rss_after_forward_mb\":{after_forward:.0},\"checkpointing\":{checkpointing},\"device\":\"{}\",\"dtype\":\"{dtype_name}\",\"model\":\"{model}\",\"latent\":{latent},\"lora_modules\":{},\"conv_dim\":{},\"loadavg_1m\":{},\"other_cpu_s\":{other_cpu:.1}}}",
                loss.to_scalar::<f32>()?,
                norm.sqrt(),
                peak_rss_mb(),
                if device.is_cpu() { "cpu" } else { "cuda" },
                lora.len(),
                conv_rank.unwrap_or(0),
                loadavg_1m()
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
