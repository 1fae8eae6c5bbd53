#!/usr/bin/env python3
"""sd-scripts' SD3 / SD3.5 LoRA module names for the full-size architectures, from sd-scripts' own code.

Builds sd-scripts' `library/sd3_models.MMDiT` (via `create_sd3_mmdit`, with the parameters
`sd3_utils.analyze_state_dict_state` reads from the published checkpoints) for SD3 Medium (24
blocks, hidden 1536), SD3.5 Medium (24 blocks, RMS q/k norm, second x-block attention in blocks
0–12, pos_embed_max_size 384) and SD3.5 Large (38 blocks, hidden 2432, RMS q/k norm), plus HF
`CLIPTextModelWithProjection` CLIP-L (12 layers, 768) and CLIP-G (32 layers, 1280) and
`T5EncoderModel` T5-XXL v1.1 (24 blocks) on `torch.device("meta")`, so no weight is allocated, then
runs `networks/lora_sd3.py`'s `create_network` (network_dim 4) and records the module names in
creation order, each as [name, in features, out features, rank] (the patch-embedding conv's "in"
is in_channels × kh × kw, as LoRA files flatten it):

* `text_encoders`: the CLIP-L (`lora_te1_`), CLIP-G (`lora_te2_`) and, with `train_t5xxl=True`,
  T5-XXL (`lora_te3_`) modules — the same for every architecture (checked);
* per architecture, `unet`: the MMDiT modules of the default network; `emb_dims`: the modules
  `emb_dims=[4,4,4,4,4,4]` adds (context / t / x / y embedders, final modulation and linear);
* `split_qkv_saved_shapes`: SD3.5 Medium with `split_qkv=True`: the shapes
  `LoRANetwork.state_dict` saves for joint block 0 (qkv: down (3·rank, in), up (out, 3·rank),
  block-diagonal; attn2's qkv too).

Writes tests/fixtures/reference/sd3_lora/module_names.json. crates/lorakit-lora/tests/sd3_layouts.rs
checks that lorakit's names for each architecture (`sd3::Site::all`) are exactly these, with the
right widths and block labels.

Run:  PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/sd3_module_names.py
(torch 2.6.0 CPU, transformers 4.54.1, sd-scripts 48d368fa; a few seconds.)
"""

import argparse
import json
import logging
import os
import re
import sys

sys.path.insert(0, os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
logging.disable(logging.CRITICAL)

import torch  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel  # noqa: E402

from library import sd3_models  # noqa: E402
from networks import lora_sd3  # noqa: E402

# The snapshot in /work/bench/sd-scripts (a copy without .git; see make_sdxl_tiny.py).
SD_SCRIPTS_COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"

# What sd3_utils.analyze_state_dict_state reads from the published checkpoints.
ARCHS = {
    "sd3_medium": dict(depth=24, pos_embed_max_size=192, qk_norm=None, x_block_self_attn_layers=[], model_type="medium"),
    "sd35_medium": dict(
        depth=24, pos_embed_max_size=384, qk_norm="rms", x_block_self_attn_layers=list(range(13)), model_type="5-medium"
    ),
    "sd35_large": dict(depth=38, pos_embed_max_size=192, qk_norm="rms", x_block_self_attn_layers=[], model_type="5-large"),
}


def mmdit(depth, pos_embed_max_size, qk_norm, x_block_self_attn_layers, model_type):
    params = sd3_models.SD3Params(
        patch_size=2, depth=depth, num_patches=pos_embed_max_size**2, pos_embed_max_size=pos_embed_max_size,
        adm_in_channels=2048, qk_norm=qk_norm, x_block_self_attn_layers=x_block_self_attn_layers,
        context_embedder_in_features=4096, context_embedder_out_features=64 * depth, model_type=model_type,
    )
    return sd3_models.create_sd3_mmdit(params)


def clip(hidden, layers, heads, mlp, act):
    # openai/clip-vit-large-patch14 and laion CLIP-ViT-bigG-14's text configs, as sd3_utils builds them.
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, projection_dim=hidden,
    ))


def t5_xxl():
    return T5EncoderModel(T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
    ))


def names(loras):
    out = []
    for lora in loras:
        org = lora.org_module
        if isinstance(org, torch.nn.Conv2d):
            inn, out_f = org.in_channels * org.kernel_size[0] * org.kernel_size[1], org.out_channels
        else:
            inn, out_f = org.in_features, org.out_features
        out.append([lora.lora_name, inn, out_f, lora.lora_dim])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/reference/sd3_lora/module_names.json")
    args = ap.parse_args()

    with torch.device("meta"):
        models = {name: mmdit(**cfg) for name, cfg in ARCHS.items()}
        te = [clip(768, 12, 12, 3072, "quick_gelu"), clip(1280, 32, 20, 5120, "gelu"), t5_xxl()]

    def create(model, **kwargs):
        return lora_sd3.create_network(1.0, 4, 4, None, te, model, **kwargs)

    doc = {"architectures": {}}
    text = None
    for arch, model in models.items():
        default = create(model)
        with_emb = create(model, emb_dims="[4,4,4,4,4,4]")
        with_t5 = create(model, train_t5xxl="True")
        unet = names(default.unet_loras)
        extra = [m for m in names(with_emb.unet_loras) if m not in unet]
        assert names(with_emb.unet_loras)[: len(unet)] == unet
        te_names = names(with_t5.text_encoder_loras)
        assert names(default.text_encoder_loras) == [m for m in te_names if not m[0].startswith("lora_te3_")]
        if text is None:
            text = te_names
        assert text == te_names, f"{arch}: text-encoder modules differ"
        cfg = ARCHS[arch]
        doc["architectures"][arch] = {
            "config": {"depth": cfg["depth"], "hidden": 64 * cfg["depth"], "attn2_blocks": cfg["x_block_self_attn_layers"]},
            "model_type": model.model_type,
            "unet": unet,
            "emb_dims": extra,
        }

    # split_qkv: names kept, the three parts of each qkv fused on save (sd3.5 medium: attn2 too).
    split = create(models["sd35_medium"], split_qkv="True")
    split.apply_to(te, models["sd35_medium"], apply_text_encoder=False, apply_unet=True)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # state_dict prints every merged key
        saved = split.state_dict()
    doc["split_qkv_saved_shapes"] = {k: list(v.shape) for k, v in saved.items() if k.startswith("lora_unet_joint_blocks_0_")}
    doc.update({
        "source": "sd-scripts networks/lora_sd3.py create_network on library/sd3_models.MMDiT (meta device)",
        "sd_scripts_commit": SD_SCRIPTS_COMMIT,
        "torch": torch.__version__,
        "text_encoders": text,
        "counts": {a: {"unet": len(v["unet"]), "emb_dims": len(v["emb_dims"])} for a, v in doc["architectures"].items()}
        | {"text_encoders": len(text)},
    })
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    # One module per line: small diffs, readable.
    out = json.dumps(doc, indent=1)
    out = re.sub(r"\[\n\s+(\"lora_[^\"]+\"),\n\s+(\d+),\n\s+(\d+),\n\s+(\d+)\n\s+\]", r"[\1, \2, \3, \4]", out)
    with open(args.out, "w") as f:
        f.write(out + "\n")
    print(json.dumps(doc["counts"]))


if __name__ == "__main__":
    main()
