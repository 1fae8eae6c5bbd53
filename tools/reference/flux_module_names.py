#!/usr/bin/env python3
"""sd-scripts' Flux.1 LoRA module names for the full-size architecture, from sd-scripts' own code.

Builds sd-scripts' `library/flux_models.Flux` with the full FLUX.1-dev config (19 double, 38
single blocks, hidden 3072), HF `CLIPTextModel` (CLIP-L: 12 layers, 768 wide) and HF
`T5EncoderModel` (T5-XXL v1.1: 24 blocks, d_model 4096, gated GELU) on `torch.device("meta")`, so no
weight is allocated, then runs `networks/lora_flux.py`'s `create_network` (and `LoRANetwork` for
the schnell variant) with several argument sets and records the module names in creation order,
each module as [name, in features, out features, rank]:

* `default`: network_dim 4 → the 304 DiT modules + 72 CLIP-L modules (`lora_te1_…`);
* `unet_only`: the 304 DiT modules alone (what `--network_train_unet_only` trains);
* `train_blocks_single`, `train_blocks_double`;
* `in_dims`: `in_dims=[4,4,4,4,4]` (img_in, time_in, vector_in, guidance_in, txt_in added);
* `in_dims_schnell`: the same on FLUX.1-schnell (no guidance_in);
* `train_t5xxl`: + the 168 T5-XXL modules (`lora_te3_…`);
* `split_qkv_single`: `split_qkv=True, train_blocks=single`: the names and saved shapes after
  `LoRANetwork.state_dict` fuses the parts back (linear1: down (4·rank, in), up (out, 4·rank),
  block-diagonal). `split_qkv=True` on double blocks raises in this sd-scripts snapshot (spec §13.1);
  the error is recorded as `split_qkv_double_error`.

Writes tests/fixtures/reference/flux_lora/module_names.json. The Rust tests in
crates/lorakit-lora check that every name is a Flux module lorakit recognises, with the right
block label; the Flux model code tests its trainer's names against the same lists.

Run:  PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/flux_module_names.py
(torch 2.6.0 CPU, transformers 4.54.1, sd-scripts 48d368fa; a few seconds.)
"""

import argparse
import json
import logging
import os
import re
import subprocess
import sys

sys.path.insert(0, os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
logging.disable(logging.CRITICAL)

import torch  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel  # noqa: E402

from library import flux_models  # noqa: E402
from networks import lora_flux  # noqa: E402


# The snapshot in /work/bench/sd-scripts (a copy without .git; see make_sdxl_tiny.py).
SD_SCRIPTS_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"


def clip_l():
    # openai/clip-vit-large-patch14's text config.
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    )
    return CLIPTextModel(cfg)


def t5_xxl():
    # google/t5-v1_1-xxl's encoder config.
    cfg = T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        use_cache=False,
    )
    return T5EncoderModel(cfg)


def flux(variant):
    params = flux_models.configs[variant].params
    return flux_models.Flux(params)


def names(network):
    out = []
    for lora in network.text_encoder_loras + network.unet_loras:
        org = lora.org_module
        out.append([lora.lora_name, org.in_features, org.out_features, lora.lora_dim])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/reference/flux_lora/module_names.json")
    args = ap.parse_args()

    with torch.device("meta"):
        dev, schnell = flux("dev"), flux("schnell")
        clip, t5 = clip_l(), t5_xxl()
    te = [clip, t5]

    def create(model, **kwargs):
        return lora_flux.create_network(1.0, 4, 4, None, te, model, **kwargs)

    variants = {
        "default": create(dev),
        "train_blocks_single": create(dev, train_blocks="single"),
        "train_blocks_double": create(dev, train_blocks="double"),
        "in_dims": create(dev, in_dims="[4,4,4,4,4]"),
        "in_dims_schnell": create(schnell, in_dims="[4,4,4,4,4]"),
        "train_t5xxl": create(dev, train_t5xxl="True"),
        "split_qkv_single": create(dev, split_qkv="True", train_blocks="single"),
    }
    result = {k: names(v) for k, v in variants.items()}
    result["unet_only"] = [m for m in result["default"] if m[0].startswith("lora_unet_")]

    # split_qkv keeps the names of the fused layers on save (LoRANetwork.state_dict) and fuses the
    # parts: record the saved shapes.
    split_net = variants["split_qkv_single"]
    split_net.apply_to(te, dev, apply_text_encoder=True, apply_unet=True)
    saved = split_net.state_dict()
    split_saved = {k: list(v.shape) for k, v in saved.items() if "single_blocks_0_" in k}
    split_names = sorted({k.split(".")[0] for k in saved.keys()})
    assert split_names == sorted(m[0] for m in result["split_qkv_single"]), "split_qkv saved names differ"
    try:
        create(dev, split_qkv="True")
        double_error = None
    except Exception as e:  # noqa: BLE001 - the snapshot's known bug, recorded
        double_error = f"{type(e).__name__}: {e}"

    try:
        commit = subprocess.run(
            ["git", "-C", os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts"), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except Exception:  # noqa: BLE001 - /work/bench/sd-scripts is a copy without .git
        commit = SD_SCRIPTS_COMMIT
    counts = {k: len(v) for k, v in result.items()}
    doc = {
        "source": "sd-scripts networks/lora_flux.py create_network on library/flux_models.Flux (meta device)",
        "sd_scripts_commit": commit,
        "torch": torch.__version__,
        "counts": counts,
        "split_qkv_single_saved_shapes": split_saved,
        "split_qkv_double_error": double_error,
        "variants": result,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    # One module per line: small diffs, readable.
    text = json.dumps(doc, indent=1)
    text = re.sub(r"\[\n\s+(\"lora_[^\"]+\"),\n\s+(\d+),\n\s+(\d+),\n\s+(\d+)\n\s+\]", r"[\1, \2, \3, \4]", text)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
