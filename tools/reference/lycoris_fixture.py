#!/usr/bin/env python3
"""Reference data for lorakit-lora's LyCORIS support (crates/lorakit-lora/src/lycoris.rs, tested by
crates/lorakit-lora/tests/lycoris.rs): LoHa and LoKr modules built by LyCORIS' own module
classes (lycoris-lora 3.1.0, the last release that runs on torch 2.6) around small Linear and
Conv2d layers, every parameter set to random values, saved under kohya module names with
LyCORIS' `custom_state_dict` keys (`hada_w1_a`, `lokr_w1`, `lokr_w2_a`, `alpha`, …), plus each
module's ΔW (deltas.safetensors, out × in·k·k) and ‖ΔW‖_F from LyCORIS' `get_weight` — the weight change with alpha/rank applied once, as
A1111, Forge and ComfyUI apply these files. (LyCORIS' `get_diff_weight` multiplies by the scale a
second time; loaders do not.)

Writes tests/fixtures/reference/lycoris/{lycoris.safetensors, deltas.safetensors, modules.json}. Run from the
repository root (seconds, no network):

    /work/bench/venv/bin/python tools/reference/lycoris_fixture.py
"""
import json
import os

import torch
from safetensors.torch import save_file
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests/fixtures/reference/lycoris")

# (kohya name, algorithm, layer, LyCORIS arguments)
CASES = [
    ("lora_unet_down_blocks_0_attentions_0_proj_in", LohaModule, lambda: torch.nn.Linear(40, 24), dict(lora_dim=4, alpha=2)),
    ("lora_unet_down_blocks_0_resnets_0_conv1", LohaModule, lambda: torch.nn.Conv2d(8, 6, 3, padding=1), dict(lora_dim=3, alpha=1.5)),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", LohaModule, lambda: torch.nn.Linear(32, 64), dict(lora_dim=8, alpha=8)),
    ("lora_unet_mid_block_attentions_0_proj_out", LokrModule, lambda: torch.nn.Linear(48, 32), dict(lora_dim=4, alpha=2, factor=4)),
    ("lora_unet_up_blocks_1_resnets_0_conv2", LokrModule, lambda: torch.nn.Conv2d(64, 32, 3, padding=1), dict(lora_dim=2, alpha=1, factor=4)),
    ("lora_unet_up_blocks_1_attentions_0_proj_in", LokrModule, lambda: torch.nn.Linear(256, 256), dict(lora_dim=4, alpha=3, factor=16, decompose_both=True)),
    ("lora_unet_up_blocks_2_attentions_0_proj_out", LokrModule, lambda: torch.nn.Linear(24, 16), dict(lora_dim=100000, alpha=3, factor=4)),
]


def main():
    torch.manual_seed(0)
    tensors, deltas, modules = {}, {}, {}
    for name, cls, layer, kwargs in CASES:
        module = cls(name, layer(), **kwargs)
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                p.copy_(0.3 * torch.randn_like(p))
        with torch.no_grad():
            delta = module.get_weight(module.shape)
            state = module.custom_state_dict()
        keys = sorted(state)
        deltas[name] = delta.detach().float().reshape(delta.shape[0], -1).contiguous()
        for k in keys:
            tensors[f"{name}.{k}"] = state[k].detach().float().contiguous()
        modules[name] = dict(algo=cls.__name__, keys=keys, shape=list(module.shape), scale=float(module.scale),
                             alpha=float(state["alpha"]), norm=float(delta.double().norm()))
        print(name, cls.__name__, keys, round(float(module.scale), 4), modules[name]["norm"])
    os.makedirs(OUT, exist_ok=True)
    save_file(tensors, os.path.join(OUT, "lycoris.safetensors"), metadata={"ss_network_module": "lycoris.kohya"})
    save_file(deltas, os.path.join(OUT, "deltas.safetensors"))
    with open(os.path.join(OUT, "modules.json"), "w") as f:
        json.dump(modules, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
