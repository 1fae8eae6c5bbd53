//! One LoRA training step of a full-size UNet, a Flux transformer or SD3's MMDiT (random or
//! shared weights), the issues' benchmark: batch 1, forward + MSE loss + backward (+ an AdamW
//! step with `--adamw`). Prints one JSON line per measured step; `tools/bench/train_step/run.sh`
//! interleaves it with the PyTorch equivalent (`tools/bench/train_step/torch_step.py`, same
//! options) and reports both.
//!
//! `cargo bench -p lorakit-models --bench train_step -- [steps] [--model sd15|sdxl|flux|sd3]
//!  [--latent N] [--conv-dim N | --attention-only] [--double N] [--single N] [--txt-len N] [--width N] [--fp8] [--block-swap N] [--offload]
//!  [--mmdit sd35l|sd3m] [--depth N] [--weights DIR] [--adamw]
//!  [--checkpointing] [--live-memory] [--profile] [--device cpu|cuda] [--dtype f32|bf16|f16]`
//!
//! `--model sd15` (default): SD1.5's UNet (859,520,964 parameters), 77×768 context, kohya LoRA
//! rank 16 / alpha 16 on the attention-group layers plus conv_dim 16 / conv_alpha 16 on the
//! ResNet/sampler layers (278 modules). `--model sdxl`: SDXL base 1.0's UNet (2,567,463,684
//! parameters), 77×2048 context, `text_embeds` (1, 1280) and `time_ids` (1, 6), rank 16 / alpha
//! 16 on the attention-group layers only (722 modules, SGM-named as sd-scripts names SDXL's);
//! `--conv-dim N` adds conv modules to either (0: none, as `--attention-only`). `--latent N` is
//! the latent's side (default 64 = 512 px).
//!
//! `--model flux`: FLUX.1-dev's transformer at full width (3072, 24 heads) with `--double N`
//! double-stream and `--single M` single-stream blocks (default 2 and 4; 19 and 38 is the full
//! 11.9 G-parameter model), a 16-channel `--latent N` latent packed into (N/2)² tokens of 64,
//! `--txt-len` T5 tokens of width 4096 (default 512, dev's length), pooled CLIP (1, 768), σ 0.5,
//! guidance 1.0, no text mask; kohya LoRA rank 16 / alpha 16 on sd-scripts' `lora_flux.py`
//! default modules (every linear of the double and single blocks: 10 per double block, 3 per
//! single block, fused qkv / linear1). `--fp8` stores every linear weight as F8E4M3 (as
//! `fp8_base`; cast to the compute dtype per use), everything else in `--dtype`: each weight is
//! made in f8 directly (windows of one N(0, 0.02) pool rounded to e4m3 once; generating 12 G
//! normals would take minutes), so the full-size model never exists in f32. On the CPU use
//! `--fp8` with `--checkpointing`: the fused CPU linear+LoRA op keeps each layer's f32 cast of
//! its weight for the backward, so a plain fp8 step ends up holding the f32 weights of every
//! LoRA layer (more than the f32 model; measured at width 1536, 2+2 blocks: 1.22 GB plain fp8,
//! 0.61 GB checkpointed fp8, 1.03 GB f32). `--block-swap N` (with `--checkpointing`) keeps the
//! last N/2 double and (N − N/2)·2 single blocks in host memory and streams them in as
//! `accelerate.blocks_to_swap` does; `--offload` (with `--checkpointing`) keeps the checkpointed
//! block inputs in host memory (`cpu_offload_checkpointing`). `--width N` (a multiple of 128) narrows the model for smoke
//! tests only.
//!
//! `--model sd3`: SD3's MMDiT (`MmditTransformer`) at a released model's full width — `--mmdit
//! sd35l` (default: SD3.5 Large, hidden 2432, 38 heads of 64, RMS q/k norms) or `sd3m` (SD3
//! Medium, 1536, 24 heads) — with `--depth N` joint blocks (default 2; 38 / 24 are the full
//! models), a 16-channel `--latent N` latent (2×2 patches), timestep 500, pooled (1, 2048) and
//! `--txt-len` text tokens of 4096 (default 333 = 77 CLIP + 256 T5); kohya LoRA rank 16 / alpha
//! 16 on `lora_sd3.py`'s default modules (every linear of the joint blocks). `--weights DIR` loads
//! the model, LoRA and inputs `torch_step.py --make-weights DIR` wrote (so both sides compute
//! the same loss); otherwise the weights are random as Flux's (`--fp8` and `--block-swap N`
//! with `--checkpointing` likewise: the last N joint blocks in host memory).
//!
//! `--adamw` ends each step with an AdamW update of the LoRA weights (lr 1e-4, torch's other
//! defaults). Each line has `cpu_s`, the process's own user + system CPU seconds in the step.
//!
//! `--profile` prints where the last step's time went, kernel by kernel (`lorakit_nn::profile`).
//! `--device cuda` needs a `--features cuda` build (`tools/bench/train_step/gpu.sh`); `--dtype`
//! is the frozen UNet's dtype (as `mixed_precision`), the LoRA keeps f32 master weights as in
//! training. GPU memory is measured from outside (nvidia-smi), not here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use lorakit_models::dit::flux::{image_ids, pack_latents, FluxConfig, FluxInputs, FluxTransformer};
use lorakit_models::dit::mmdit::{MmditConfig, MmditInputs, MmditTransformer};
use lorakit_models::lora_inject::{create_network, NetworkSpec, UNET_PREFIX};
use lorakit_models::unet_2d::{AddedConditions, UNet2DConditionModel, UNet2DConditionModelConfig};
use lorakit_models::Weights;
use lorakit_nn::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup};
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
    const VALUED: [&str; 13] = [
        "--device",
        "--dtype",
        "--model",
        "--latent",
        "--conv-dim",
        "--double",
        "--single",
        "--txt-len",
        "--width",
        "--mmdit",
        "--depth",
        "--weights",
        "--block-swap",
    ];
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
    let number = |name: &str, default: usize| -> anyhow::Result<usize> {
        match option(name) {
            Some(n) => n.parse().map_err(|_| anyhow::anyhow!("{name} {n}: expected a number")),
            None => Ok(default),
        }
    };
    let model = option("--model").unwrap_or("sd15");
    let latent = number("--latent", 64)?;
    let fp8 = args.iter().any(|a| a == "--fp8");
    let t0 = Instant::now();
    let (denoiser, targets, params, conv_rank, extra) = match model {
        "sd15" | "sdxl" => {
            if fp8 {
                anyhow::bail!("--fp8 is only wired for --model flux");
            }
            let (cfg, context_width, default_conv_rank) = if model == "sd15" {
                (UNet2DConditionModelConfig::sd15(), 768, Some(16))
            } else {
                (UNet2DConditionModelConfig::sdxl(), 2048, None)
            };
            let conv_rank = if args.iter().any(|a| a == "--attention-only") {
                None
            } else {
                match option("--conv-dim") {
                    Some(n) => {
                        Some(n.parse::<usize>().map_err(|_| anyhow::anyhow!("--conv-dim {n}: expected a number"))?)
                            .filter(|&r| r > 0)
                    }
                    None => default_conv_rank,
                }
            };
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
            let targets = unet.lora_targets_in(unet.kohya_layout());
            let context = Tensor::randn(0f32, 1.0, (1, 77, context_width), &device)?.to_dtype(dtype)?;
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
            let denoiser = Denoiser::Unet {
                latents: Tensor::randn(0f32, 1.0, (1, 4, latent, latent), &device)?.to_dtype(dtype)?,
                target: Tensor::randn(0f32, 1.0, (1, 4, latent, latent), &device)?,
                context,
                timesteps: Tensor::new(&[500u32], &device)?,
                added,
                unet: Box::new(unet),
            };
            (denoiser, targets, params, conv_rank, String::new())
        }
        "flux" => {
            let mut cfg = FluxConfig::dev();
            cfg.depth = number("--double", 2)?;
            cfg.depth_single_blocks = number("--single", 4)?;
            // --width: a narrower model for smoke tests (heads of 128 as Flux.1's); the
            // benchmark is at Flux.1's 3072.
            let width = number("--width", cfg.hidden_size)?;
            if width == 0 || width % cfg.head_dim() != 0 {
                anyhow::bail!("--width {width}: expected a multiple of the head width {}", cfg.head_dim());
            }
            cfg.num_heads = width / cfg.head_dim();
            cfg.hidden_size = width;
            let txt_len = number("--txt-len", 512)?;
            if latent % 2 != 0 {
                anyhow::bail!("--latent {latent}: Flux packs 2×2 patches, the latent side must be even");
            }
            if fp8 && device.is_cpu() && !checkpointing {
                eprintln!(
                    "warning: --fp8 without --checkpointing on the CPU keeps every LoRA layer's f32 weight until the \
                     backward (lorakit-nn's fused CPU linear+LoRA op), so it saves no memory"
                );
            }
            // --block-swap N: sd-scripts' blocks_to_swap — the model is made in host memory and
            // all but the last N/2 double and (N − N/2)·2 single blocks move to the device.
            let block_swap = number("--block-swap", 0)?;
            if block_swap > 0 && !checkpointing {
                anyhow::bail!("--block-swap needs --checkpointing (as accelerate.blocks_to_swap does)");
            }
            let build_on = if block_swap > 0 { Device::Cpu } else { device.clone() };
            let source =
                format!("random Flux transformer ({} double, {} single blocks)", cfg.depth, cfg.depth_single_blocks);
            let (weights, params) = random_weights(
                cfg.parameter_shapes(),
                |name| name.ends_with("norm.scale"),
                dtype,
                fp8,
                &build_on,
                source,
            )?;
            let flux = FluxTransformer::new(weights.view(""), &cfg)?;
            weights.check_complete()?;
            drop(weights);
            let flux = if block_swap > 0 { flux.with_block_swap(block_swap, &device)? } else { flux };
            // --offload: cpu_offload_checkpointing (the checkpointed block inputs in host memory).
            let offload = args.iter().any(|a| a == "--offload");
            if offload && (!checkpointing || block_swap > 0) {
                anyhow::bail!(
                    "--offload needs --checkpointing and no --block-swap (as cpu_offload_checkpointing does)"
                );
            }
            let flux = flux.with_checkpoint_offload(offload);
            let targets = flux.lora_targets();
            let latents = Tensor::randn(0f32, 1.0, (1, 16, latent, latent), &device)?;
            let img = pack_latents(&latents)?.to_dtype(dtype)?;
            let tokens = img.dim(1)?;
            let extra = format!(
                ",\"width\":{},\"double\":{},\"single\":{},\"tokens\":{tokens},\"txt_len\":{txt_len},\"block_swap\":{block_swap},\"cpu_offload\":{offload}",
                cfg.hidden_size, cfg.depth, cfg.depth_single_blocks
            );
            let denoiser = Denoiser::Flux {
                target: Tensor::randn(0f32, 1.0, (1, tokens, cfg.in_channels), &device)?,
                img,
                img_ids: image_ids(latent, latent, &device)?,
                txt: Tensor::randn(0f32, 1.0, (1, txt_len, cfg.context_in_dim), &device)?.to_dtype(dtype)?,
                txt_ids: Tensor::zeros((txt_len, 3), DType::F32, &device)?,
                timesteps: Tensor::new(&[0.5f32], &device)?,
                y: Tensor::randn(0f32, 1.0, (1, cfg.vec_in_dim), &device)?.to_dtype(dtype)?,
                guidance: Tensor::new(&[1.0f32], &device)?,
                flux: Box::new(flux),
            };
            (denoiser, targets, params, None, extra)
        }
        "sd3" => {
            // SD3's MMDiT at a released model's full width with --depth joint blocks (the last one's
            // context side pre-only, as in every MMDiT).
            let mut cfg = match option("--mmdit").unwrap_or("sd35l") {
                "sd35l" => MmditConfig::sd35_large(),
                "sd3m" => MmditConfig::sd3_medium(),
                other => anyhow::bail!("--mmdit {other}: expected sd35l (SD3.5 Large) or sd3m (SD3 Medium)"),
            };
            cfg.depth = number("--depth", 2)?;
            cfg.validate().map_err(anyhow::Error::msg)?;
            // --block-swap N: sd-scripts' blocks_to_swap — the model is made in host memory and
            // all but the last N joint blocks move to the device.
            let block_swap = number("--block-swap", 0)?;
            if block_swap > 0 && !checkpointing {
                anyhow::bail!("--block-swap needs --checkpointing (as accelerate.blocks_to_swap does)");
            }
            let build_on = if block_swap > 0 { Device::Cpu } else { device.clone() };
            let txt_len = number("--txt-len", 333)?;
            // --weights DIR: the model, LoRA and inputs torch_step.py --make-weights wrote, so both
            // sides compute the same loss; otherwise random weights made here.
            let shared = option("--weights").map(std::path::PathBuf::from);
            if shared.is_some() && fp8 {
                anyhow::bail!("--weights loads the shared f32 model as it is; --fp8 makes random weights only");
            }
            let (weights, params) = match &shared {
                Some(dir) => {
                    let path = dir.join("mmdit.safetensors");
                    let tensors = candle_core::safetensors::load(&path, &build_on).map_err(|e| {
                        anyhow::anyhow!("{}: {e} (make it with torch_step.py --make-weights)", path.display())
                    })?;
                    let params = tensors.values().map(|t| t.elem_count()).sum();
                    let tensors = tensors
                        .into_iter()
                        .map(|(k, t)| Ok((k, t.to_dtype(dtype)?)))
                        .collect::<candle_core::Result<HashMap<_, _>>>()?;
                    (Weights::new(tensors, path.display().to_string()), params)
                }
                None => random_weights(
                    cfg.parameter_shapes(),
                    |name| name.ends_with("ln_q.weight") || name.ends_with("ln_k.weight"),
                    dtype,
                    fp8,
                    &build_on,
                    format!("random MMDiT ({} blocks)", cfg.depth),
                )?,
            };
            let mmdit = MmditTransformer::new(weights.view(""), &cfg)?;
            weights.check_complete()?;
            drop(weights);
            let mmdit = if block_swap > 0 { mmdit.with_block_swap(block_swap, &device)? } else { mmdit };
            let targets = mmdit.lora_targets();
            let inputs = match &shared {
                Some(dir) => {
                    let path = dir.join("inputs.safetensors");
                    let mut t = candle_core::safetensors::load(&path, &device)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    let mut take = |k: &str| t.remove(k).ok_or_else(|| anyhow::anyhow!("{}: no `{k}`", path.display()));
                    [take("x")?, take("t")?, take("y")?, take("context")?, take("target")?]
                }
                None => [
                    Tensor::randn(0f32, 1.0, (1, cfg.in_channels, latent, latent), &device)?,
                    Tensor::new(&[500f32], &device)?,
                    Tensor::randn(0f32, 1.0, (1, cfg.pooled_dim), &device)?,
                    Tensor::randn(0f32, 1.0, (1, txt_len, cfg.context_dim), &device)?,
                    Tensor::randn(0f32, 1.0, (1, cfg.in_channels, latent, latent), &device)?,
                ],
            };
            let [x, timesteps, pooled, context, target] = inputs;
            let (txt_len, latent_side) = (context.dim(1)?, x.dim(3)?);
            if latent_side != latent {
                anyhow::bail!("--latent {latent}, but the shared inputs' latent is {latent_side} wide");
            }
            let extra = format!(
                ",\"mmdit\":\"{}\",\"width\":{},\"depth\":{},\"tokens\":{},\"txt_len\":{txt_len},\"shared_weights\":{},\"block_swap\":{block_swap}",
                cfg.model_type(),
                cfg.hidden_size,
                cfg.depth,
                (latent / cfg.patch_size).pow(2),
                shared.is_some()
            );
            let denoiser = Denoiser::Mmdit {
                x: x.to_dtype(dtype)?,
                timesteps,
                pooled: pooled.to_dtype(dtype)?,
                context: context.to_dtype(dtype)?,
                target,
                mmdit: Box::new(mmdit),
            };
            (denoiser, targets, params, None, extra)
        }
        other => anyhow::bail!("--model {other}: expected sd15, sdxl, flux or sd3"),
    };
    // --attention-only / --conv-dim 0: no conv LoRA (sd-scripts without conv_dim), e.g. to see
    // what LoCon costs.
    let spec = NetworkSpec { rank: 16, alpha: 16.0, conv_rank, conv_alpha: 16.0, ..Default::default() };
    let lora = Arc::new(create_network(&targets, UNET_PREFIX, &spec, DType::F32, &device, 0)?);
    // Non-zero up weights so every LoRA branch carries gradient as in a running training.
    for m in lora.modules() {
        m.up().set(&Tensor::randn(0f32, 0.01, m.up().dims(), &device)?)?;
    }
    // The shared LoRA (sd3 with --weights): lora_sd3's own down/up, by kohya name.
    if let (Some(dir), "sd3") = (option("--weights"), model) {
        let path = std::path::Path::new(dir).join("lora.safetensors");
        let file =
            candle_core::safetensors::load(&path, &device).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for m in lora.modules() {
            for (part, var) in [("lora_down", m.down()), ("lora_up", m.up())] {
                let key = format!("{}.{part}.weight", m.name());
                let t = file.get(&key).ok_or_else(|| anyhow::anyhow!("{}: no `{key}`", path.display()))?;
                var.set(t)?;
            }
        }
        if file.len() != 3 * lora.len() {
            anyhow::bail!(
                "{}: {} tensors for {} LoRA modules (down, up, alpha each)",
                path.display(),
                file.len(),
                lora.len()
            );
        }
    }
    // --adamw: the step ends with an AdamW update of the LoRA weights (torch's defaults, lr 1e-4, as
    // torch_step.py's torch.optim.AdamW).
    const ADAMW_LR: f64 = 1e-4;
    let mut optimizer = if args.iter().any(|a| a == "--adamw") {
        let group = ParamGroup { name: "unet".into(), vars: lora.trainable_vars(), lr: ADAMW_LR };
        Some(AdamW::new(vec![group], AdamWConfig::default())?)
    } else {
        None
    };
    let lora_params: usize = lora.trainable_vars().iter().map(|v| v.elem_count()).sum();
    eprintln!(
        "setup {:.1}s, {params} {model} parameters{}, {} LoRA modules ({lora_params} parameters), peak RSS after setup {:.0} MB",
        t0.elapsed().as_secs_f64(),
        if fp8 { " (linear weights in f8 e4m3)" } else { "" },
        lora.len(),
        peak_rss_mb()
    );
    let ctx = ForwardCtx { lora: Some(lora.clone()), train: true, gradient_checkpointing: checkpointing };
    for step in 0..=steps {
        // Only the last step's profile is printed.
        lorakit_nn::profile::take();
        let cpu_before = cpu_seconds();
        let t = Instant::now();
        let forward_scope = lorakit_nn::profile::scope("model forward outside the kernels");
        let pred = denoiser.forward(&ctx)?;
        drop(forward_scope);
        // The loss in f32, as training computes it.
        let loss = (pred.to_dtype(DType::F32)? - denoiser.target())?.sqr()?.mean_all()?;
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
        let mut step_grads = Vec::new();
        for var in lora.trainable_vars() {
            let g = lora.grad(&grads, &var)?;
            if let Some(g) = &g {
                norm += g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            }
            step_grads.push(g);
        }
        drop(grads);
        if let Some(opt) = optimizer.as_mut() {
            opt.step(&[step_grads], &[ADAMW_LR])?;
        }
        lora.clear_side_grads();
        device.synchronize()?;
        let secs = t.elapsed().as_secs_f64();
        let cpu_after = cpu_seconds();
        let other_cpu = ((cpu_after.0 - cpu_before.0) - (cpu_after.1 - cpu_before.1)).max(0.0);
        // This process's own user + system CPU seconds in the step.
        let own_cpu = cpu_after.1 - cpu_before.1;
        if step > 0 {
            // Step 0 is warm-up (allocator, page faults).
            println!(
                "{{\"impl\":\"lorakit\",\"step\":{step},\"seconds\":{secs:.3},\"forward_seconds\":{forward_secs:.3},\"loss\":{:.7},\"grad_norm\":{:.7},\"peak_rss_mb\":{:.0},\"rss_after_forward_mb\":{after_forward:.0},\"checkpointing\":{checkpointing},\"device\":\"{}\",\"dtype\":\"{dtype_name}\",\"fp8\":{fp8},\"model\":\"{model}\",\"latent\":{latent},\"params\":{params},\"lora_modules\":{},\"lora_params\":{lora_params},\"conv_dim\":{}{extra},\"cpu_s\":{own_cpu:.2},\"optimizer\":\"{}\",\"loadavg_1m\":{},\"other_cpu_s\":{other_cpu:.1}}}",
                loss.to_scalar::<f32>()?,
                norm.sqrt(),
                peak_rss_mb(),
                if device.is_cpu() { "cpu" } else { "cuda" },
                lora.len(),
                conv_rank.unwrap_or(0),
                if optimizer.is_some() { "adamw" } else { "none" },
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

/// The model under test with its fixed inputs and MSE target.
enum Denoiser {
    Unet {
        unet: Box<UNet2DConditionModel>,
        latents: Tensor,
        target: Tensor,
        context: Tensor,
        timesteps: Tensor,
        added: Option<AddedConditions>,
    },
    Mmdit {
        mmdit: Box<MmditTransformer>,
        x: Tensor,
        timesteps: Tensor,
        pooled: Tensor,
        context: Tensor,
        target: Tensor,
    },
    Flux {
        flux: Box<FluxTransformer>,
        img: Tensor,
        target: Tensor,
        img_ids: Tensor,
        txt: Tensor,
        txt_ids: Tensor,
        timesteps: Tensor,
        y: Tensor,
        guidance: Tensor,
    },
}

impl Denoiser {
    fn forward(&self, ctx: &ForwardCtx) -> candle_core::Result<Tensor> {
        match self {
            Denoiser::Unet { unet, latents, context, timesteps, added, .. } => {
                unet.forward_with(latents, timesteps, context, added.as_ref(), ctx)
            }
            Denoiser::Flux { flux, img, img_ids, txt, txt_ids, timesteps, y, guidance, .. } => {
                let inputs =
                    FluxInputs { img, img_ids, txt, txt_ids, timesteps, y, guidance: Some(guidance), txt_mask: None };
                flux.forward(&inputs, ctx)
            }
            Denoiser::Mmdit { mmdit, x, timesteps, pooled, context, .. } => {
                mmdit.forward(&MmditInputs::new(x, timesteps, pooled, context), ctx)
            }
        }
    }

    fn target(&self) -> &Tensor {
        match self {
            Denoiser::Unet { target, .. } | Denoiser::Flux { target, .. } | Denoiser::Mmdit { target, .. } => target,
        }
    }
}

/// Random weights of `shapes` and their parameter count: N(0, 0.02), the norm scales `is_norm`
/// names 1. With `fp8` every linear weight (the 2-D `.weight`s) is made as F8E4M3 directly:
/// a window of one pool of N(0, 0.02) values rounded to e4m3 once (at a different offset per
/// weight), copied into its own storage — no weight ever exists in f32, and 12 G normals are not
/// drawn one by one. Biases and norm scales are in `dtype`.
fn random_weights(
    shapes: Vec<(String, Vec<usize>)>,
    is_norm: impl Fn(&str) -> bool,
    dtype: DType,
    fp8: bool,
    device: &Device,
    source: String,
) -> anyhow::Result<(Weights, usize)> {
    let is_linear = |name: &str, shape: &[usize]| shape.len() == 2 && name.ends_with(".weight");
    let largest = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).max().unwrap_or(0);
    let pool_len = largest + (1 << 24);
    let pool =
        if fp8 { Some(Tensor::randn(0f32, 0.02, pool_len, &Device::Cpu)?.to_dtype(DType::F8E4M3)?) } else { None };
    let mut tensors = HashMap::new();
    let mut params = 0usize;
    // A fixed, cheap sequence of pool offsets (splitmix64).
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_offset = |span: usize| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % (span as u64 + 1)) as usize
    };
    for (name, shape) in shapes {
        let n = shape.iter().product::<usize>();
        params += n;
        let t = match &pool {
            Some(pool) if is_linear(&name, &shape) => pool
                .narrow(0, next_offset(pool_len - n), n)?
                .force_contiguous()?
                .reshape(shape.as_slice())?
                .to_device(device)?,
            _ if is_norm(&name) => Tensor::ones(shape.as_slice(), dtype, device)?,
            _ => Tensor::randn(0f32, 0.02, shape.as_slice(), device)?.to_dtype(dtype)?,
        };
        tensors.insert(name, t);
    }
    Ok((Weights::new(tensors, source), params))
}
