"""PyTorch side of the training-step benchmark: the same step as
crates/lorakit-models/benches/train_step.rs — full-size SD1.5 UNet (diffusers, random weights),
sd-scripts' LoRA network (rank 16, alpha 16, conv_dim 16, conv_alpha 16), batch 1, 64x64 latent,
77x768 context, f32, forward + MSE + backward. One JSON line per measured step.

usage: PYTHONPATH=/path/to/sd-scripts python torch_step.py [steps] [--checkpointing] [--threads N]
       [--device cpu|cuda] [--dtype f32|bf16|f16]

--dtype is the frozen UNet's dtype with autocast, as sd-scripts' --mixed_precision runs it (the
LoRA keeps f32 weights; the loss is taken in f32). On CUDA the step is timed after a synchronize
and the JSON line adds torch's peak allocated/reserved GPU memory.
"""
import json, resource, sys, time

import torch
from diffusers import UNet2DConditionModel

args = sys.argv[1:]
steps = next((int(a) for a in args if a.isdigit()), 3)
checkpointing = "--checkpointing" in args
threads = int(args[args.index("--threads") + 1]) if "--threads" in args else torch.get_num_threads()
torch.set_num_threads(threads)
device = args[args.index("--device") + 1] if "--device" in args else "cpu"
dtype_name = args[args.index("--dtype") + 1] if "--dtype" in args else "f32"
dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype_name]
torch.manual_seed(0)

cfg = dict(sample_size=64, in_channels=4, out_channels=4, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
           up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, block_out_channels=[320, 640, 1280, 1280],
           layers_per_block=2, attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32)
t0 = time.perf_counter()
unet = UNet2DConditionModel(**cfg)
unet.requires_grad_(False)
unet.to(device, dtype=dtype)
if checkpointing:
    unet.enable_gradient_checkpointing()
    unet.train()

from networks import lora  # sd-scripts

class NoTE(torch.nn.Module):
    pass

# --attention-only: no conv LoRA (sd-scripts without conv_dim), to see what LoCon costs.
conv_dim = None if "--attention-only" in args else 16
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

latents = torch.randn(1, 4, 64, 64).to(device, dtype)
target = torch.randn(1, 4, 64, 64).to(device)
context = torch.randn(1, 77, 768).to(device, dtype)
timesteps = torch.tensor([500], device=device)
autocast = torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32)


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


for step in range(steps + 1):
    t = time.perf_counter()
    with autocast:
        pred = unet(latents, timesteps, context).sample
    loss = torch.nn.functional.mse_loss(pred.float(), target)
    sync()
    forward_secs = time.perf_counter() - t
    loss.backward()
    norm = sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None) ** 0.5
    for p in params:
        p.grad = None
    sync()
    secs = time.perf_counter() - t
    if step > 0:
        row = {"impl": "pytorch", "step": step, "seconds": round(secs, 3), "forward_seconds": round(forward_secs, 3), "loss": round(float(loss), 5),
               "grad_norm": round(norm, 5), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               "checkpointing": checkpointing, "device": device, "dtype": dtype_name}
        if device == "cuda":
            row["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
            row["gpu_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20)
        print(json.dumps(row), flush=True)
