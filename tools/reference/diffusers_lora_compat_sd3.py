"""Does an SD3 LoRA trained by lorakit load in diffusers, and compute what lorakit computes?

Loads the tiny SD3 pipeline (tests/fixtures/reference/sd3_tiny/pipeline: SD3.5 Large-shaped
MMDiT, 2 joint blocks, the last one context-pre-only; CLIP-L- and CLIP-G-shaped encoders) as a
diffusers StableDiffusion3Pipeline in float32, and takes a kohya-format SD3 LoRA (`--lora`, default
the file `lorakit train` writes from tests/fixtures/reference/trained_lora/tiny_sd3_trained.toml:
transformer, CLIP-L and CLIP-G, rank 4, alpha 2).

1. The kohya file as lorakit writes it is given to `pipe.load_lora_weights`: diffusers has no
   converter for kohya SD3 names, so this records what diffusers does with it (how many PEFT
   layers it made, what it logged).
2. `lorakit convert --to diffusers` turns it into diffusers names; that file is loaded and
   checked like the Flux case (diffusers_lora_compat_flux.py):
   * diffusers and PEFT log no warning (unexpected / missing keys, …) while loading;
   * every module of the file became adapters and nothing else did: kohya's fused `attn_qkv`
     becomes to_q/to_k/to_v (add_*_proj in the context block), so the expected adapter count is
     3 per qkv and 1 per other module (CLIP-L's `lora_te1_…` and CLIP-G's `lora_te2_…` one each);
   then runs the transformer (with LoRA) on fixed inputs and both CLIPs (with LoRA) on fixed ids.

Saves inputs and outputs to `--out` (default
tests/fixtures/reference/trained_lora/diffusers_io_sd3.safetensors), with metadata: the versions,
the sha256 of the converted file diffusers loaded and what happened to the kohya file.
crates/lorakit-train/tests/diffusers_compat.rs compares lorakit's outputs with the kohya file
applied (<= 1e-4) and checks that lorakit's conversion still writes the file diffusers loaded.

Run (after `cargo build -p lorakit`) with the diffusers release users have (0.42.1 /
transformers 5.25 / peft 0.21.2 / torch 2.6.0 CPU here):
    PYTHONPATH=/work/bench/py42 /work/bench/venv/bin/python tools/reference/diffusers_lora_compat_sd3.py \\
        [--lorakit target/debug/lorakit]
"""
import argparse
import hashlib
import json
import logging
import pathlib
import subprocess
import sys
import tempfile

import torch
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests/fixtures/reference/sd3_tiny/pipeline"
TRAINED = ROOT / "tests/fixtures/reference/trained_lora"

parser = argparse.ArgumentParser()
parser.add_argument("--lora", type=pathlib.Path, default=TRAINED / "tiny_sd3_trained.safetensors")
parser.add_argument("--out", type=pathlib.Path, default=TRAINED / "diffusers_io_sd3.safetensors")
parser.add_argument("--lorakit", default=str(ROOT / "target/debug/lorakit"))
args = parser.parse_args()

warnings = []


class Capture(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())


for name in ("diffusers", "peft"):
    logging.getLogger(name).addHandler(Capture())

COMPONENTS = ["transformer", "text_encoder", "text_encoder_2"]


def pipeline():
    torch.manual_seed(0)
    return StableDiffusion3Pipeline.from_pretrained(
        MODEL, torch_dtype=torch.float32, tokenizer=None, tokenizer_2=None, tokenizer_3=None
    )


def lora_layers(model):
    return [n for n, m in model.named_modules() if hasattr(m, "lora_A") and "lorakit" in getattr(m, "lora_A", {})]


def counts(pipe):
    return {c: len(lora_layers(getattr(pipe, c))) for c in COMPONENTS}


lora = load_file(args.lora)
modules = sorted({k.split(".")[0] for k in lora})
assert all(m.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for m in modules), "modules outside unet/te1/te2"
expected = {c: 0 for c in COMPONENTS}
for m in modules:
    if m.startswith("lora_te1_"):
        expected["text_encoder"] += 1
    elif m.startswith("lora_te2_"):
        expected["text_encoder_2"] += 1
    elif m.endswith("_qkv"):
        expected["transformer"] += 3
    else:
        expected["transformer"] += 1
assert all(expected.values()), f"the file should train every component: {expected}"

# 1. The kohya file as lorakit writes it.
pipe = pipeline()
warnings.clear()
try:
    pipe.load_lora_weights(str(args.lora.parent), weight_name=args.lora.name, adapter_name="lorakit")
    kohya_outcome = f"loaded {sum(counts(pipe).values())} LoRA layers"
except Exception as e:  # noqa: BLE001 - recorded
    kohya_outcome = f"{type(e).__name__}: {str(e)[:200]}"
kohya_warnings = [w[:200] for w in warnings]
print("kohya file as written:", kohya_outcome, "; diffusers logged:", kohya_warnings)

# 2. lorakit's diffusers conversion.
with tempfile.TemporaryDirectory() as tmp:
    converted = pathlib.Path(tmp) / "tiny_sd3_trained_diffusers.safetensors"
    subprocess.run([args.lorakit, "convert", str(args.lora), str(converted), "--to", "diffusers"], check=True)
    converted_sha = hashlib.sha256(converted.read_bytes()).hexdigest()
    pipe = pipeline()
    warnings.clear()
    pipe.load_lora_weights(str(converted.parent), weight_name=converted.name, adapter_name="lorakit")
print("diffusers warnings:", warnings)
assert not warnings, "diffusers reported problems loading the converted file"
got = counts(pipe)
print("expected:", expected)
print("diffusers:", got)
assert got == expected, "modules missing or unexpected"

gen = torch.Generator().manual_seed(0)
cfg = pipe.transformer.config
latents = torch.randn(2, cfg.in_channels, 8, 6, generator=gen)
context = torch.randn(2, 7, cfg.joint_attention_dim, generator=gen)
pooled = torch.randn(2, cfg.pooled_projection_dim, generator=gen)
timesteps = torch.tensor([250.0, 900.0])
ids = torch.randint(0, 49406, (2, 77), generator=gen)
ids[:, 0] = 49406
ids[:, 12:] = 49407
with torch.no_grad():
    out = pipe.transformer(
        hidden_states=latents,
        encoder_hidden_states=context,
        pooled_projections=pooled,
        timestep=timesteps,
        return_dict=False,
    )[0]
    clips = {}
    for key, encoder in (("clip_l", pipe.text_encoder), ("clip_g", pipe.text_encoder_2)):
        o = encoder(ids, output_hidden_states=True)
        # What SD3 conditions on: the penultimate layer and the projected pooled vector.
        clips[f"{key}_penultimate"] = o.hidden_states[-2].contiguous()
        clips[f"{key}_text_embeds"] = o.text_embeds.contiguous()

import diffusers  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402

metadata = {
    "diffusers": diffusers.__version__,
    "peft": peft.__version__,
    "transformers": transformers.__version__,
    "torch": torch.__version__,
    "converted_sha256": converted_sha,
    "lora_layers": json.dumps(got, sort_keys=True),
    "kohya_as_written": kohya_outcome,
    "kohya_as_written_warnings": json.dumps(kohya_warnings),
}
save_file(
    {
        "latents": latents,
        "context": context,
        "pooled": pooled,
        "timesteps": timesteps,
        "out": out.contiguous(),
        "clip_ids": ids.to(torch.int64),
        **clips,
    },
    args.out,
    metadata=metadata,
)
print("wrote", args.out)
sys.exit(0)
