#!/usr/bin/env python3
"""Reference fixture for sd-scripts' block-wise network arguments, LoRA+ param groups and max-norm.

Everything comes from sd-scripts' own `networks/lora.py` functions:

* `parse_block_lr_kwargs` + `get_block_dims_and_alphas` + `remove_block_dims_and_alphas` (as
  `create_network` chains them) for SD1.x and SDXL argument sets: the per-slot lr weights, dims,
  alphas, conv dims and conv alphas;
* `LoRANetwork.prepare_optimizer_params` on stand-in networks (objects with the attributes it
  reads: text_encoder_loras, unet_loras with lora_name/named_parameters, block_lr, loraplus
  ratios): the group descriptions, lrs and parameter names in order;
* `LoRANetwork.apply_max_norm_regularization` on a stand-in state dict: keys scaled, mean and max
  norm, and the scaled tensors.

Writes tests/fixtures/reference/network/network_args.json, read by
crates/lorakit-train/tests/network_args.rs.

Run:  PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/network_args_fixture.py
(torch 2.6.0 CPU, sd-scripts 48d368fa; a second.)
"""

import json
import logging
import os
import sys
import types

sys.path.insert(0, os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts"))
logging.disable(logging.CRITICAL)

import torch  # noqa: E402
from networks import lora  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "reference", "network", "network_args.json")

# ------------------------------------------------------------------------------- block arguments

BLOCK_CASES = [
    ("sd", {"down_lr_weight": "1,0.5,0,,1,1,1,1,1,1,1,1", "mid_lr_weight": "2", "up_lr_weight": "sine"}, 8, 4.0, None, None),
    ("sd", {"down_lr_weight": "cosine+0.25", "up_lr_weight": "0.1,0.2", "block_lr_zero_threshold": "0.15"}, 16, 8.0, None, None),
    ("sd", {"up_lr_weight": "reverse_linear"}, 4, 1.0, 8, 2.0),
    ("sd", {"mid_lr_weight": "0", "down_lr_weight": "linear+0.1"}, 4, 1.0, None, None),
    ("sd", {"down_lr_weight": "zeros+0.5", "up_lr_weight": "1,1,1,1,1,1,1,1,1,1,1,1,1,1"}, 4, 1.0, None, None),
    ("sd", {"block_dims": ",".join(str(2 + i % 5) for i in range(25)), "block_alphas": ",".join(str(1 + (i % 3) * 0.5) for i in range(25))}, 4, 1.0, None, None),
    ("sd", {"block_dims": ",".join(str(4) for i in range(25)), "conv_block_dims": ",".join(str(i % 4) for i in range(25))}, 4, 1.0, 8, 3.0),
    ("sd", {"block_dims": ",".join(str(8) for _ in range(25)), "conv_block_dims": ",".join(str(2) for _ in range(25)), "conv_block_alphas": ",".join(str(0.5 * (i % 2 + 1)) for i in range(25)), "down_lr_weight": "0,1,1,1,1,1,1,1,1,1,1,0"}, 4, 1.0, None, None),
    ("sdxl", {"down_lr_weight": "1,1,0.5,0.5,0,0,1,1,1", "mid_lr_weight": "1,0.5", "up_lr_weight": "linear"}, 8, 4.0, None, None),
    ("sdxl", {"block_dims": ",".join(str(1 + i % 7) for i in range(23))}, 8, 4.0, 4, 1.0),
]


def block_case(layout, kwargs, dim, alpha, conv_dim, conv_alpha):
    is_sdxl = layout == "sdxl"
    block_dims = kwargs.get("block_dims")
    lr_weight = lora.parse_block_lr_kwargs(is_sdxl, kwargs)
    out = {"layout": layout, "args": kwargs, "network_dim": dim, "network_alpha": alpha, "conv_dim": conv_dim,
           "conv_alpha": conv_alpha, "lr_weights": lr_weight}
    if block_dims is not None or lr_weight is not None:
        bd, ba, cbd, cba = lora.get_block_dims_and_alphas(
            is_sdxl, block_dims, kwargs.get("block_alphas"), dim, alpha, kwargs.get("conv_block_dims"),
            kwargs.get("conv_block_alphas"), conv_dim, conv_alpha)
        bd, ba, cbd, cba = lora.remove_block_dims_and_alphas(is_sdxl, bd, ba, cbd, cba, lr_weight)
        out.update({"dims": bd, "alphas": [float(a) for a in ba], "conv_dims": cbd,
                    "conv_alphas": None if cba is None else [float(a) for a in cba]})
    return out


# ---------------------------------------------------------------------------------- param groups


class FakeLora(torch.nn.Module):
    def __init__(self, name):
        super().__init__()
        self.lora_name = name
        self.lora_down = torch.nn.Linear(2, 1, bias=False)
        self.lora_up = torch.nn.Linear(1, 2, bias=False)


SD_UNET = [
    "lora_unet_down_blocks_0_attentions_0_proj_in",
    "lora_unet_down_blocks_0_attentions_1_proj_out",
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
    "lora_unet_up_blocks_1_attentions_2_proj_in",
    "lora_unet_up_blocks_3_attentions_0_proj_out",
    "lora_unet_mid_block_attentions_0_proj_in",
    "lora_unet_down_blocks_0_attentions_0_proj_out",
]
SD_TE = ["lora_te_text_model_encoder_layers_0_self_attn_q_proj", "lora_te_text_model_encoder_layers_0_mlp_fc1"]

GROUP_CASES = [
    {"te_lr": 5e-5, "unet_lr": 1e-4, "default_lr": 1e-4, "ratio": None, "unet_ratio": None, "te_ratio": None, "block_lr": None},
    {"te_lr": 5e-5, "unet_lr": 1e-4, "default_lr": 1e-4, "ratio": 16.0, "unet_ratio": None, "te_ratio": 4.0, "block_lr": None},
    {"te_lr": 0.0, "unet_lr": 1e-4, "default_lr": 1e-4, "ratio": 8.0, "unet_ratio": None, "te_ratio": None, "block_lr": None},
    {"te_lr": 5e-5, "unet_lr": 2e-4, "default_lr": 1e-4, "ratio": None, "unet_ratio": 2.0, "te_ratio": None,
     "block_lr": {"down_lr_weight": "1,0.5,1,1,1,1,1,1,1,1,1,1", "mid_lr_weight": "0.25", "up_lr_weight": "1,1,1,1,0,1,1,1,1,1,1,0.75"}},
]


def group_case(case):
    net = types.SimpleNamespace()
    net.text_encoder_loras = [FakeLora(n) for n in SD_TE]
    net.unet_loras = [FakeLora(n) for n in SD_UNET]
    net.loraplus_lr_ratio = case["ratio"]
    net.loraplus_unet_lr_ratio = case["unet_ratio"]
    net.loraplus_text_encoder_lr_ratio = case["te_ratio"]
    net.requires_grad_ = lambda flag: None
    if case["block_lr"] is not None:
        net.block_lr = True
        net.block_lr_weight = lora.parse_block_lr_kwargs(False, case["block_lr"])
    else:
        net.block_lr = False
        net.block_lr_weight = None
    net.get_lr_weight = lambda idx: lora.LoRANetwork.get_lr_weight(net, idx)
    names = {}
    for m in net.text_encoder_loras + net.unet_loras:
        for pname, p in m.named_parameters():
            names[id(p)] = f"{m.lora_name}.{pname.split('.')[0]}"
    params, descriptions = lora.LoRANetwork.prepare_optimizer_params(net, case["te_lr"], case["unet_lr"], case["default_lr"])
    groups = [{"name": d, "lr": g["lr"], "params": [names[id(p)] for p in g["params"]]} for g, d in zip(params, descriptions)]
    return {"case": case, "groups": groups}


# -------------------------------------------------------------------------------------- max norm


def max_norm_case(max_norm, seed):
    gen = torch.Generator().manual_seed(seed)
    modules = [("lora_unet_a", [4, 6], [6, 4], 4.0, 3.0), ("lora_unet_b", [2, 5], [3, 2], 2.0, 0.2),
               ("lora_unet_c", [3, 2, 3, 3], [4, 3, 1, 1], 1.5, 2.0), ("lora_te_d", [2, 4, 1, 1], [5, 2, 1, 1], 2.0, 1.0)]
    sd = {}
    inputs = []
    for name, dshape, ushape, alpha, scale in modules:
        down = torch.randn(dshape, generator=gen) * scale
        up = torch.randn(ushape, generator=gen) * scale
        sd[f"{name}.lora_down.weight"] = down.clone()
        sd[f"{name}.lora_up.weight"] = up.clone()
        sd[f"{name}.alpha"] = torch.tensor(alpha)
        inputs.append({"name": name, "down": down.reshape(-1).tolist(), "down_shape": dshape, "up": up.reshape(-1).tolist(),
                       "up_shape": ushape, "alpha": alpha})
    net = types.SimpleNamespace(state_dict=lambda: sd)
    keys_scaled, mean, mx = lora.LoRANetwork.apply_max_norm_regularization(net, max_norm, "cpu")
    after = [{"name": m["name"], "down": sd[f"{m['name']}.lora_down.weight"].reshape(-1).tolist(),
              "up": sd[f"{m['name']}.lora_up.weight"].reshape(-1).tolist()} for m in inputs]
    return {"max_norm": max_norm, "modules": inputs, "keys_scaled": keys_scaled, "average_norm": mean, "max_key_norm": mx,
            "after": after}


def main():
    out = {
        "blocks": [block_case(*c) for c in BLOCK_CASES],
        "groups": [group_case(c) for c in GROUP_CASES],
        "max_norm": [max_norm_case(1.0, 1), max_norm_case(4.0, 2), max_norm_case(1000.0, 3)],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
