"""Builds examples/quickstart/tiny-sd15: the tiny SD1.5-shaped fixture model
(tests/fixtures/reference/sd15_tiny/diffusers, random weights) with its text encoder's
vocabulary widened to CLIP's 49,408 tokens so real captions tokenise to valid ids, stored in
float16 to keep the repository small. It only exists so `lorakit train examples/quickstart.toml`
runs end to end in minutes on a CPU; its images are noise, not art.

Run: /work/bench/venv/bin/python tools/reference/make_quickstart_model.py
"""
import json
import pathlib
import shutil

import torch
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
SRC = ROOT / "tests/fixtures/reference/sd15_tiny/diffusers"
DST = ROOT / "examples/quickstart/tiny-sd15"

if DST.exists():
    shutil.rmtree(DST)
for sub in ["unet", "vae", "text_encoder", "scheduler"]:
    (DST / sub).mkdir(parents=True)
shutil.copy(SRC / "model_index.json", DST / "model_index.json")
shutil.copy(SRC / "scheduler/scheduler_config.json", DST / "scheduler/scheduler_config.json")
for sub, name in [("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors")]:
    shutil.copy(SRC / sub / "config.json", DST / sub / "config.json")
    tensors = {k: v.to(torch.float16).contiguous() for k, v in load_file(SRC / sub / name).items()}
    save_file(tensors, DST / sub / name, metadata={"format": "pt"})

te = load_file(SRC / "text_encoder/model.safetensors")
key = "text_model.embeddings.token_embedding.weight"
small = te[key].float()
gen = torch.Generator().manual_seed(0)
extra = torch.randn(49408 - small.shape[0], small.shape[1], generator=gen) * small.std()
te[key] = torch.cat([small, extra], 0)
te = {k: v.to(torch.float16).contiguous() for k, v in te.items()}
save_file(te, DST / "text_encoder/model.safetensors", metadata={"format": "pt"})
config = json.loads((SRC / "text_encoder/config.json").read_text())
config.update(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
(DST / "text_encoder/config.json").write_text(json.dumps(config, indent=2) + "\n")
print("wrote", DST)
