"""Does a LoRA trained by lorakit load in diffusers, and compute what lorakit computes?

Loads the tiny SD1.5-shaped model (examples/quickstart/tiny-sd15) as a diffusers
StableDiffusionPipeline in float32, applies tests/fixtures/reference/trained_lora/tiny_trained.safetensors
(written by `lorakit train`, kohya format, UNet + text encoder, conv_dim set) with
`pipe.load_lora_weights`, and checks:
  * every tensor of the file is consumed (no unexpected keys) and every module of the file got an
    adapter (no missing ones), by counting the PEFT LoRA layers diffusers created;
then runs the UNet (with LoRA) on fixed inputs and the text encoder (with LoRA) on fixed ids and
saves inputs and outputs to tests/fixtures/reference/trained_lora/diffusers_io.safetensors, which
crates/lorakit-train/tests/diffusers_compat.rs compares with lorakit's outputs (<= 1e-4).

Run: /work/bench/venv/bin/python tools/reference/diffusers_lora_compat.py
"""
import pathlib

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples/quickstart/tiny-sd15"
LORA = ROOT / "tests/fixtures/reference/trained_lora/tiny_trained.safetensors"
OUT = ROOT / "tests/fixtures/reference/trained_lora/diffusers_io.safetensors"

pipe = StableDiffusionPipeline.from_pretrained(
    MODEL, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False,
    tokenizer=None, feature_extractor=None,
)
lora = load_file(LORA)
modules = sorted({k.split(".")[0] for k in lora})
unet_modules = [m for m in modules if m.startswith("lora_unet_")]
te_modules = [m for m in modules if m.startswith("lora_te_")]

pipe.load_lora_weights(str(LORA), adapter_name="lorakit")

def lora_layers(model):
    return [n for n, m in model.named_modules() if hasattr(m, "lora_A") and "lorakit" in getattr(m, "lora_A", {})]

unet_layers = lora_layers(pipe.unet)
te_layers = lora_layers(pipe.text_encoder)
print(f"file: {len(unet_modules)} UNet + {len(te_modules)} text-encoder modules")
print(f"diffusers: {len(unet_layers)} UNet + {len(te_layers)} text-encoder LoRA layers")
assert len(unet_layers) == len(unet_modules), "UNet modules missing or unexpected"
assert len(te_layers) == len(te_modules), "text-encoder modules missing or unexpected"

gen = torch.Generator().manual_seed(0)
sample = torch.randn(2, 4, 8, 8, generator=gen)
timestep = torch.tensor([10.0, 700.0])
ids = torch.randint(0, 49408, (2, 77), generator=gen)
ids[:, 0] = 49406
ids[:, 20:] = 49407
with torch.no_grad():
    te_out = pipe.text_encoder(ids)[0]
    unet_out = pipe.unet(sample, timestep, encoder_hidden_states=te_out).sample
save_file(
    {
        "sample": sample.contiguous(),
        "timestep": timestep.contiguous(),
        "input_ids": ids.to(torch.int64).contiguous(),
        "text_encoder_out": te_out.contiguous(),
        "unet_out": unet_out.contiguous(),
    },
    OUT,
)
print("ok: no missing or unexpected keys; wrote", OUT)
