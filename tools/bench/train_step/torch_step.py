"""PyTorch side of the training-step benchmark: the same step as
crates/lorakit-models/benches/train_step.rs — a full-size UNet (diffusers, random weights),
sd-scripts' LoRA network, batch 1, f32, forward + MSE + backward. One JSON line per measured step.

usage: PYTHONPATH=/path/to/sd-scripts python torch_step.py [steps] [--model sd15|sdxl] [--latent N]
       [--conv-dim N | --attention-only] [--checkpointing] [--threads N] [--device cpu|cuda]
       [--dtype f32|bf16|f16]

--model sd15 (default): SD1.5's UNet, 77x768 context, rank 16 / alpha 16 plus conv_dim 16 /
conv_alpha 16 (278 modules). --model sdxl: SDXL base 1.0's UNet (diffusers' config, 2,567,463,684
parameters), 77x2048 context, text_embeds (1, 1280) and time_ids (1, 6), rank 16 / alpha 16 on
the Transformer2DModel linears only (722 modules; no conv_dim). --conv-dim N adds conv modules
(0: none, as --attention-only). --latent N: the latent's side (default 64 = 512 px).

--dtype is the frozen UNet's dtype with autocast, as sd-scripts' --mixed_precision runs it (the
LoRA keeps f32 weights; the loss is taken in f32). On CUDA the step is timed after a synchronize
and the JSON line adds torch's peak allocated/reserved GPU memory.
"""
import json, os, resource, sys, time

import torch
from diffusers import UNet2DConditionModel

args = sys.argv[1:]
VALUED = ("--threads", "--device", "--dtype", "--model", "--latent", "--conv-dim")
steps = next((int(a) for i, a in enumerate(args) if a.isdigit() and (i == 0 or args[i - 1] not in VALUED)), 3)
checkpointing = "--checkpointing" in args
threads = int(args[args.index("--threads") + 1]) if "--threads" in args else torch.get_num_threads()
torch.set_num_threads(threads)
device = args[args.index("--device") + 1] if "--device" in args else "cpu"
dtype_name = args[args.index("--dtype") + 1] if "--dtype" in args else "f32"
dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
model = args[args.index("--model") + 1] if "--model" in args else "sd15"
latent = int(args[args.index("--latent") + 1]) if "--latent" in args else 64
torch.manual_seed(0)

if model == "sd15":
    cfg = dict(sample_size=64, in_channels=4, out_channels=4, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
               up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, block_out_channels=[320, 640, 1280, 1280],
               layers_per_block=2, attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32)
    context_width, default_conv_dim = 768, 16
elif model == "sdxl":
    # stabilityai/stable-diffusion-xl-base-1.0/unet/config.json (sd-scripts' DIFFUSERS_SDXL_UNET_CONFIG)
    cfg = dict(sample_size=128, in_channels=4, out_channels=4, down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 2,
               up_block_types=["CrossAttnUpBlock2D"] * 2 + ["UpBlock2D"], block_out_channels=[320, 640, 1280],
               layers_per_block=2, attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
               cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
               addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32)
    context_width, default_conv_dim = 2048, None
else:
    sys.exit(f"--model {model}: expected sd15 or sdxl")
t0 = time.perf_counter()
if device == "cuda":
    # Built on the card in its dtype: no f32 copy of the weights in GPU memory (or minutes of
    # initialisation on the CPU); f32 is what a CPU run builds.
    torch.set_default_dtype(dtype)
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg)
    torch.set_default_dtype(torch.float32)
else:
    unet = UNet2DConditionModel(**cfg)
unet.requires_grad_(False)
unet.to(device, dtype=dtype)
if checkpointing:
    unet.enable_gradient_checkpointing()
    unet.train()

from networks import lora  # sd-scripts

class NoTE(torch.nn.Module):
    pass

# --attention-only / --conv-dim 0: no conv LoRA (sd-scripts without conv_dim), e.g. to see what
# LoCon costs.
conv_dim = int(args[args.index("--conv-dim") + 1]) or None if "--conv-dim" in args else default_conv_dim
if "--attention-only" in args:
    conv_dim = None
net = lora.create_network(1.0, 16, 16.0, None, [], unet, conv_dim=conv_dim, conv_alpha=16.0)
net.apply_to([], unet, apply_text_encoder=False, apply_unet=True)
for m in net.unet_loras:
    torch.nn.init.normal_(m.lora_up.weight, std=0.01)
net.to(device, dtype=torch.float32)
params = [p for p in net.parameters()]
for p in params:
    p.requires_grad_(True)
print(f"setup {time.perf_counter() - t0:.1f}s, {sum(p.numel() for p in unet.parameters())} UNet parameters, "
      f"{len(net.unet_loras)} LoRA modules, {threads} threads", file=sys.stderr)

latents = torch.randn(1, 4, latent, latent).to(device, dtype)
target = torch.randn(1, 4, latent, latent).to(device)
context = torch.randn(1, 77, context_width).to(device, dtype)
timesteps = torch.tensor([500], device=device)
added = None
if model == "sdxl":
    # SDXL's micro-conditioning: original size, crop top-left, target size (the latent's pixels).
    px = float(latent * 8)
    added = {"text_embeds": torch.randn(1, 1280).to(device, dtype),
             "time_ids": torch.tensor([[px, px, 0.0, 0.0, px, px]], device=device)}
autocast = torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32)


def cpu_seconds():
    """CPU seconds used by the whole machine and by this process so far: a step's difference of
    the two is the CPU time other processes took from the cores meanwhile (other_cpu_s)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = sum(v) - v[3] - v[4]  # all but idle and iowait
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


for step in range(steps + 1):
    cpu_before = cpu_seconds()
    t = time.perf_counter()
    with autocast:
        pred = unet(latents, timesteps, context, added_cond_kwargs=added).sample
    loss = torch.nn.functional.mse_loss(pred.float(), target)
    sync()
    forward_secs = time.perf_counter() - t
    loss.backward()
    norm = sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None) ** 0.5
    for p in params:
        p.grad = None
    sync()
    secs = time.perf_counter() - t
    cpu_after = cpu_seconds()
    other_cpu = max(0.0, (cpu_after[0] - cpu_before[0]) - (cpu_after[1] - cpu_before[1]))
    if step > 0:
        row = {"impl": "pytorch", "step": step, "seconds": round(secs, 3), "forward_seconds": round(forward_secs, 3), "loss": round(float(loss), 5),
               "grad_norm": round(norm, 5), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               "checkpointing": checkpointing, "device": device, "dtype": dtype_name, "model": model, "latent": latent,
               "lora_modules": len(net.unet_loras), "conv_dim": conv_dim or 0, "loadavg_1m": round(os.getloadavg()[0], 2),
               "other_cpu_s": round(other_cpu, 1)}
        if device == "cuda":
            row["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
            row["gpu_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20)
        print(json.dumps(row), flush=True)
