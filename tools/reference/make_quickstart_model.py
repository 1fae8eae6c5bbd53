"""Builds examples/quickstart/tiny-sd15 and examples/quickstart/tiny-sdxl: the tiny SD1.5- and
SDXL-shaped fixture models (tests/fixtures/reference/{sd15,sdxl}_tiny/diffusers, random weights)
with their text encoders' vocabularies widened to CLIP's 49,408 tokens so real captions tokenise
to valid ids, stored in float16 to keep the repository small. They only exist so the quickstart
configs and the CLI tests run end to end in minutes on a CPU; their images are noise, not art.

Run: /work/bench/venv/bin/python tools/reference/make_quickstart_model.py
"""
import json
import pathlib
import shutil

import torch
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]


def widen_text_encoder(src, dst, seed, pad_token_id):
    """Copies a text encoder with its token embedding grown to 49,408 rows (new rows random
    with the old rows' spread) and CLIP's real BOS/EOS ids."""
    te = load_file(src / "model.safetensors")
    key = "text_model.embeddings.token_embedding.weight"
    small = te[key].float()
    gen = torch.Generator().manual_seed(seed)
    extra = torch.randn(49408 - small.shape[0], small.shape[1], generator=gen) * small.std()
    te[key] = torch.cat([small, extra], 0)
    te = {k: v.to(torch.float16).contiguous() for k, v in te.items()}
    save_file(te, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config.update(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=pad_token_id)
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def build(src, dst, models, text_encoders):
    if dst.exists():
        shutil.rmtree(dst)
    for sub in models + [te for te, _ in text_encoders] + ["scheduler"]:
        (dst / sub).mkdir(parents=True)
    shutil.copy(src / "model_index.json", dst / "model_index.json")
    shutil.copy(src / "scheduler/scheduler_config.json", dst / "scheduler/scheduler_config.json")
    for sub in models:
        name = "diffusion_pytorch_model.safetensors"
        shutil.copy(src / sub / "config.json", dst / sub / "config.json")
        tensors = {k: v.to(torch.float16).contiguous() for k, v in load_file(src / sub / name).items()}
        save_file(tensors, dst / sub / name, metadata={"format": "pt"})
    for seed, (sub, pad) in enumerate(text_encoders):
        widen_text_encoder(src / sub, dst / sub, seed, pad)
    print("wrote", dst)


# SD1 pads with EOS; SDXL's second encoder pads with "!" (id 0).
build(ROOT / "tests/fixtures/reference/sd15_tiny/diffusers", ROOT / "examples/quickstart/tiny-sd15",
      ["unet", "vae"], [("text_encoder", 49407)])
build(ROOT / "tests/fixtures/reference/sdxl_tiny/diffusers", ROOT / "examples/quickstart/tiny-sdxl",
      ["unet", "vae"], [("text_encoder", 49407), ("text_encoder_2", 0)])
