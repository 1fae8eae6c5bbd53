#!/usr/bin/env python3
"""Reference data for the WD v3 tagger backbones SwinV2 and EVA02 (crates/lorakit-caption/src/wd14/
{swinv2,eva02}.rs, tested by crates/lorakit-caption/tests/wd14_swinv2_eva02.rs).

Builds tiny timm models the way timm's hub loader builds the WD v3 taggers — `timm.create_model(
architecture, num_classes=..., **model_args)` with the architecture of the real file
(`swinv2_base_window8_256`, `eva02_large_patch14_448`) and small sizes in `model_args` — and writes,
per model, under tests/fixtures/reference/wd14_swinv2_eva02/<name>/:

* `config.json`: the WD layout (`architecture`, `num_classes`, `model_args`, `pretrained_cfg`);
* `model.safetensors`: the state dict with timm's key names (float32);
* `reference.safetensors`: inputs `x` (2, 3, S, S) and timm's logits `logits` (2, num_classes);
  `bgr_u8` (2, S, S, 3) byte images and `probs`, their sigmoid probabilities through the WD
  interface (`x/127.5 − 1`, channels first), for the whole-tagger test.

Models:

* `swinv2`: swinv2_base_window8_256 with img 64, patch 4, window 4, embed 16, depths (2, 2, 2, 1),
  heads (1, 2, 2, 4), gelu_tanh. Stage grids 16, 8, 4, 2: stages 0 and 1 have a shifted block (the
  attention mask), stage 2's window equals its grid (no shift), stage 3's window is clamped to 2.
  `config_dynamic.json` is the same model with `dynamic_img_size: true`; `reference.safetensors`
  also holds `x_80` / `logits_80`, an 80×80 input through it (grids 20, 10, 5, 3: padded windows,
  padded patch merging, masks built for the padded maps).
* `eva02`: eva02_large_patch14_448 (unfused q/k/v, SwiGLU with the scale_mlp sub-LN, RoPE,
  class token, avg pool + fc_norm) with img 56, patch 14, embed 32, depth 2, heads 2 and
  ref_feat_shape (2, 2) (grid 4: the RoPE coordinates are rescaled, as WD's [32, 32] rescales).

Every parameter is re-initialised: timm zero-initialises SwinV2's post-norm weights (dead residual
branches would hide bugs) and EVA's head (init scale 0.001). Norm weights `1 + 0.1·randn`, biases
`0.1·randn`, linear/conv weights `randn/√fan_in`, `logit_scale` around log 10 with one head above the
log(100) clamp, class token / position embedding `0.5·randn`.

Run from the repository root (a few seconds, CPU, no network):

    /work/bench/venv/bin/python tools/reference/wd14_swinv2_eva02.py

Versions: Python 3.11, torch 2.6.0, timm 1.0.31, safetensors 0.8.0, numpy 2.4.6.
"""

import copy
import json
import math
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import timm
from safetensors.torch import save_file

OUT = "tests/fixtures/reference/wd14_swinv2_eva02"
PRETRAINED_CFG = {
    "custom_load": False,
    "input_size": None,
    "fixed_input_size": True,
    "interpolation": "bicubic",
    "crop_pct": 1.0,
    "crop_mode": "center",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "num_classes": None,
    "pool_size": None,
    "first_conv": None,
    "classifier": None,
}


def reinit(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("logit_scale"):
                v = math.log(10.0) + 0.5 * torch.randn(shape, generator=gen)
                v.view(-1)[0] = 5.0  # above the clamp at log(1/0.01) ≈ 4.605
            elif name in ("cls_token", "pos_embed"):
                v = 0.5 * torch.randn(shape, generator=gen)
            elif "norm" in name and leaf == "weight":
                v = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            elif leaf == "weight" and p.dim() >= 2:
                fan_in = math.prod(shape[1:])
                v = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
            else:  # biases, q_bias / v_bias
                v = 0.1 * torch.randn(shape, generator=gen)
            p.copy_(v)


def config_json(architecture: str, num_classes: int, model_args: dict, size: int) -> dict:
    pcfg = copy.deepcopy(PRETRAINED_CFG)
    pcfg["input_size"] = [3, size, size]
    pcfg["num_classes"] = num_classes
    return {
        "architecture": architecture,
        "num_classes": num_classes,
        "num_features": None,
        "global_pool": "avg",
        "model_args": model_args,
        "pretrained_cfg": pcfg,
    }


def build(architecture: str, num_classes: int, model_args: dict, seed: int) -> torch.nn.Module:
    model = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **model_args)
    reinit(model, torch.Generator().manual_seed(seed))
    return model.eval()


def write(name: str, model: torch.nn.Module, cfg: dict, tensors: dict, extra_configs: dict) -> None:
    d = os.path.join(OUT, name)
    os.makedirs(d)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(d, "model.safetensors"))
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "reference.safetensors"))
    for fname, c in {"config.json": cfg, **extra_configs}.items():
        with open(os.path.join(d, fname), "w") as f:
            json.dump(c, f, indent=2)
            f.write("\n")
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n} params, {len(state)} tensors, logits std {tensors['logits'].std():.3f}")


def wd_interface(model: torch.nn.Module, size: int, gen: torch.Generator) -> dict:
    """The WD pipeline's model step on two byte images (N, S, S, 3, BGR, 0..255): `x/127.5 − 1`,
    channels first, model, sigmoid (wdv3-timm; the ONNX files have the same steps inside)."""
    bgr = torch.randint(0, 256, (2, size, size, 3), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        probs = torch.sigmoid(model(bgr.permute(0, 3, 1, 2).float() / 127.5 - 1.0))
    return {"bgr_u8": bgr, "probs": probs}


def check(logits: torch.Tensor) -> None:
    assert torch.isfinite(logits).all()
    s = logits.std().item()
    assert 0.05 < s < 50, s


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)

    # SwinV2
    args = dict(img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=[2, 2, 2, 1],
                num_heads=[1, 2, 2, 4], act_layer="gelu_tanh")
    model = build("swinv2_base_window8_256", 10, args, seed=1)
    dyn_args = dict(args, dynamic_img_size=True)
    dyn = build("swinv2_base_window8_256", 10, dyn_args, seed=1)
    dyn.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 64, 64, generator=gen)
    x80 = torch.randn(2, 3, 80, 80, generator=gen)
    with torch.no_grad():
        logits = model(x)
        logits_dyn64 = dyn(x)
        logits80 = dyn(x80)
    assert torch.allclose(logits, logits_dyn64, atol=1e-5)
    for t in (logits, logits80):
        check(t)
    write("swinv2", model, config_json("swinv2_base_window8_256", 10, args, 64),
          {"x": x, "logits": logits, "x_80": x80, "logits_80": logits80, **wd_interface(model, 64, gen)},
          {"config_dynamic.json": config_json("swinv2_base_window8_256", 10, dyn_args, 64)})

    # EVA02
    args = dict(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, ref_feat_shape=[2, 2])
    model = build("eva02_large_patch14_448", 10, args, seed=3)
    assert model.blocks[0].attn.q_proj is not None  # unfused q/k/v, as the WD file
    assert type(model.blocks[0].mlp).__name__ == "SwiGLU" and not isinstance(model.blocks[0].mlp.norm, torch.nn.Identity)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 56, 56, generator=gen)
    with torch.no_grad():
        logits = model(x)
    check(logits)
    write("eva02", model, config_json("eva02_large_patch14_448", 10, args, 56), {"x": x, "logits": logits, **wd_interface(model, 56, gen)}, {})


if __name__ == "__main__":
    main()
