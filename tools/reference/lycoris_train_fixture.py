#!/usr/bin/env python3
"""Reference data for training LyCORIS LoHa/LoKr modules and LyCORIS' own LoCon
(crates/lorakit-nn/src/lycoris.rs, crates/lorakit-models/src/lora_inject.rs; tested by
crates/lorakit-models/tests/lycoris_train.rs).

For small Linear and Conv2d layers, LyCORIS' own module classes (lycoris-lora 3.1.0, default
rebuild mode, module.train(), no dropout) with every factor set to random values give:

* the layer's output with the module applied at multiplier 0.7 (`<case>.y`), for input `<case>.x`;
* for the upstream gradient `<case>.g` of that output, the gradient of every factor
  (`<case>.grad.<factor>`) and of the input (`<case>.grad.x`);
* the state dict LyCORIS saves (`<case>.sd.<key>`: factors and `alpha`, LyCORIS'
  `custom_state_dict`, before any dtype cast) with the factors it was made from (`<case>.p.<factor>`);
* LyCORIS' `apply_max_norm(max_norm)` result: the state dict afterwards (`<case>.maxnorm.<key>`)
  and the returned (scaled, norm) in cases.json;
* for a fresh module (LyCORIS' initialisation, seeded): the keys, shapes, alpha and dtype of
  its state dict (cases.json "fresh");
* the modules LyCORIS' `kohya.create_network` makes for the tiny SD1.5 model
  (tests/fixtures/reference/sd15_tiny/diffusers) with algo=loha, network_dim 4, for the presets
  full, full-lin and attn-mlp, with conv_dim 2, 0 (conv modules off) and without (network.json: name → dim).

Writes tests/fixtures/reference/lycoris_train/{cases.safetensors, cases.json, network.json}. Run from the
repository root (seconds, no network; versions in tools/reference/requirements.txt):

    python tools/reference/lycoris_train_fixture.py
"""
import json
import os

import torch
from safetensors.torch import save_file
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule
from lycoris.modules.locon import LoConModule

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests/fixtures/reference/lycoris_train")
MULTIPLIER = 0.7

# (case name, algo, layer kind + geometry, LyCORIS arguments, max_norm)
CASES = [
    ("loha_linear", LohaModule, ("linear", 12, 10), dict(lora_dim=4, alpha=2.0), 0.05),
    ("loha_conv3", LohaModule, ("conv", 6, 5, 3, 1, 1), dict(lora_dim=3, alpha=1.5), 0.05),
    ("loha_conv3_s2", LohaModule, ("conv", 4, 6, 3, 2, 1), dict(lora_dim=2, alpha=0.0), 0.05),
    ("loha_conv1", LohaModule, ("conv", 8, 6, 1, 1, 0), dict(lora_dim=2, alpha=1.0), 0.05),
    ("lokr_linear_f-1", LokrModule, ("linear", 24, 16), dict(lora_dim=2, alpha=1.0, factor=-1), 0.05),
    ("lokr_linear_f4", LokrModule, ("linear", 32, 24), dict(lora_dim=2, alpha=1.0, factor=4), 0.05),
    ("lokr_linear_both", LokrModule, ("linear", 64, 48), dict(lora_dim=1, alpha=0.5, factor=16, decompose_both=True), 0.05),
    ("lokr_linear_full", LokrModule, ("linear", 20, 12), dict(lora_dim=100000, alpha=1.0, factor=4), 0.05),
    ("lokr_linear_fullmatrix", LokrModule, ("linear", 16, 16), dict(lora_dim=2, alpha=1.0, factor=4, full_matrix=True), 0.05),
    ("lokr_conv3_f4", LokrModule, ("conv", 16, 8, 3, 1, 1), dict(lora_dim=1, alpha=1.0, factor=4), 0.05),
    ("lokr_conv3_full", LokrModule, ("conv", 8, 4, 3, 1, 1), dict(lora_dim=100000, alpha=1.0, factor=2), 0.05),
    ("lokr_conv1_full", LokrModule, ("conv", 8, 6, 1, 1, 0), dict(lora_dim=100000, alpha=1.0), 0.05),
    ("locon_linear", LoConModule, ("linear", 12, 10), dict(lora_dim=3, alpha=1.5), 0.05),
    ("locon_conv3_s2", LoConModule, ("conv", 6, 5, 3, 2, 1), dict(lora_dim=2, alpha=1.0), 0.05),
    ("locon_conv1", LoConModule, ("conv", 8, 6, 1, 1, 0), dict(lora_dim=2, alpha=0.0), 0.05),
]


def make_layer(spec):
    if spec[0] == "linear":
        return torch.nn.Linear(spec[1], spec[2])
    _, cin, cout, k, stride, pad = spec
    return torch.nn.Conv2d(cin, cout, k, stride=stride, padding=pad)


def make_input(spec):
    if spec[0] == "linear":
        return torch.randn(2, 3, spec[1])
    return torch.randn(2, spec[1], 7, 6)


def fresh_info(cls, spec, kwargs):
    torch.manual_seed(1)
    module = cls("m", make_layer(spec), **kwargs)
    sd = module.state_dict()
    return dict(
        keys=sorted(sd),
        shapes={k: list(v.shape) for k, v in sd.items()},
        alpha=float(sd["alpha"]),
        alpha_dtype=str(sd["alpha"].dtype),
        scale=float(module.scale),
    )


def network_modules():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel
    from lycoris import kohya

    tiny = os.path.join(ROOT, "tests/fixtures/reference/sd15_tiny/diffusers")
    unet = UNet2DConditionModel.from_pretrained(tiny, subfolder="unet")
    te = CLIPTextModel.from_pretrained(tiny, subfolder="text_encoder")
    out = {}
    for preset in ["full", "full-lin", "attn-mlp"]:
        for conv in [None, 2, 0]:
            extra = {} if conv is None else {"conv_dim": str(conv)}
            # As sd-scripts passes network_args: strings; bypass_mode as 3.2's default.
            net = kohya.create_network(1.0, 4, 1.0, None, te, unet, algo="loha", preset=preset, bypass_mode="False", **extra)
            out[f"{preset}/conv_dim={conv}"] = {m.lora_name: m.lora_dim for m in net.loras}
    return out


def main():
    network = network_modules()
    with open(os.path.join(OUT, "network.json"), "w") as f:
        json.dump(network, f, indent=1, sort_keys=True)
        f.write("\n")
    torch.manual_seed(0)
    tensors, cases = {}, {}
    for name, cls, spec, kwargs, max_norm in CASES:
        layer = make_layer(spec)
        module = cls(name, layer, multiplier=MULTIPLIER, **kwargs)
        factors = [n for n, _ in module.named_parameters()]
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(0.3 * torch.randn_like(p))
        module.apply_to()
        module.train()
        x = make_input(spec).requires_grad_(True)
        y = layer(x)
        g = torch.randn_like(y)
        (y * g).sum().backward()
        tensors[f"{name}.x"] = x.detach().clone()
        tensors[f"{name}.y"] = y.detach().clone()
        tensors[f"{name}.g"] = g
        tensors[f"{name}.grad.x"] = x.grad.clone()
        tensors[f"{name}.weight"] = layer.weight.detach().clone()
        tensors[f"{name}.bias"] = layer.bias.detach().clone()
        for n, p in module.named_parameters():
            tensors[f"{name}.p.{n}"] = p.detach().clone()
            tensors[f"{name}.grad.{n}"] = p.grad.clone()
        sd = module.state_dict()
        for k, v in sd.items():
            tensors[f"{name}.sd.{k}"] = v.detach().float().clone().reshape(v.shape)
        scaled, norm = module.apply_max_norm(max_norm)
        sd_after = module.state_dict()
        for k, v in sd_after.items():
            tensors[f"{name}.maxnorm.{k}"] = v.detach().float().clone().reshape(v.shape)
        cases[name] = dict(
            algo=cls.name,
            layer=list(spec),
            args=kwargs,
            multiplier=MULTIPLIER,
            factors=factors,
            saved_keys=sorted(sd),
            alpha_dtype=str(sd["alpha"].dtype),
            scale=float(module.scale),
            max_norm=max_norm,
            max_norm_scaled=bool(scaled),
            max_norm_norm=float(norm),
            fresh=fresh_info(cls, spec, kwargs),
        )
        print(name, factors, cases[name]["scale"], bool(scaled), float(norm))
    os.makedirs(OUT, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(OUT, "cases.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
