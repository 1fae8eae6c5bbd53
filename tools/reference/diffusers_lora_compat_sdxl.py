"""Does an SDXL LoRA trained by lorakit load in diffusers, and compute what lorakit computes?

Loads the tiny SDXL-shaped model (examples/quickstart/tiny-sdxl) as a diffusers
StableDiffusionXLPipeline in float32, applies tests/fixtures/reference/trained_lora/tiny_sdxl_trained.safetensors
(written by `lorakit train tests/fixtures/reference/trained_lora/tiny_sdxl_trained.toml` with paths
adjusted: kohya format with SGM U-Net names, lora_te1 / lora_te2, conv_dim set, alpha = rank) with
`pipe.load_lora_weights`, and checks:
  * every module of the file got an adapter and nothing else did, by counting the PEFT LoRA layers
    diffusers created in the UNet and in each text encoder;
then runs both text encoders (with LoRA) on fixed ids and the UNet (with LoRA) on fixed inputs with
SDXL's added conditions, and saves inputs and outputs to
tests/fixtures/reference/trained_lora/diffusers_io_sdxl.safetensors, which
crates/lorakit-train/tests/diffusers_compat.rs compares with lorakit's outputs (<= 1e-4).

Run: /work/bench/venv/bin/python tools/reference/diffusers_lora_compat_sdxl.py
(`--out PATH` writes elsewhere, e.g. to compare another diffusers release with the committed file.)
"""
import pathlib
import sys

import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples/quickstart/tiny-sdxl"
LORA = ROOT / "tests/fixtures/reference/trained_lora/tiny_sdxl_trained.safetensors"
OUT = ROOT / "tests/fixtures/reference/trained_lora/diffusers_io_sdxl.safetensors"
if "--out" in sys.argv:
    OUT = pathlib.Path(sys.argv[sys.argv.index("--out") + 1])

torch.manual_seed(0)
pipe = StableDiffusionXLPipeline.from_pretrained(MODEL, torch_dtype=torch.float32, tokenizer=None, tokenizer_2=None)
lora = load_file(LORA)
modules = sorted({k.split(".")[0] for k in lora})
counts = {p: len([m for m in modules if m.startswith(p + "_")]) for p in ("lora_unet", "lora_te1", "lora_te2")}
assert sum(counts.values()) == len(modules), "modules outside lora_unet / lora_te1 / lora_te2"

pipe.load_lora_weights(str(LORA.parent), weight_name=LORA.name, adapter_name="lorakit")


def lora_layers(model):
    return [n for n, m in model.named_modules() if hasattr(m, "lora_A") and "lorakit" in getattr(m, "lora_A", {})]


got = {"lora_unet": len(lora_layers(pipe.unet)), "lora_te1": len(lora_layers(pipe.text_encoder)),
       "lora_te2": len(lora_layers(pipe.text_encoder_2))}
print("file:", counts)
print("diffusers:", got)
assert got == counts, "modules missing or unexpected"

gen = torch.Generator().manual_seed(0)
sample = torch.randn(2, 4, 8, 12, generator=gen)
timestep = torch.tensor([10.0, 700.0])
ids1 = torch.randint(0, 49406, (2, 77), generator=gen)
ids1[:, 0] = 49406
ids1[:, 20:] = 49407
ids2 = ids1.clone()
ids2[:, 21:] = 0  # the second tokenizer pads with "!" after the EOS
time_ids = torch.tensor([[48.0, 80.0, 0.0, 8.0, 32.0, 48.0], [64.0, 64.0, 0.0, 0.0, 32.0, 48.0]])
with torch.no_grad():
    te1 = pipe.text_encoder(ids1, output_hidden_states=True)
    te2 = pipe.text_encoder_2(ids2, output_hidden_states=True)
    context = torch.cat([te1.hidden_states[-2], te2.hidden_states[-2]], dim=-1)
    pooled = te2.text_embeds
    unet_out = pipe.unet(
        sample, timestep, encoder_hidden_states=context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
    ).sample
save_file(
    {
        "sample": sample.contiguous(),
        "timestep": timestep.contiguous(),
        "input_ids1": ids1.to(torch.int64).contiguous(),
        "input_ids2": ids2.to(torch.int64).contiguous(),
        "time_ids": time_ids.contiguous(),
        "context": context.contiguous(),
        "pooled": pooled.contiguous(),
        "unet_out": unet_out.contiguous(),
    },
    OUT,
)
print("ok: no missing or unexpected keys; wrote", OUT)
