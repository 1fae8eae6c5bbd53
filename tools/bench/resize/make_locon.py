#!/usr/bin/env python3
"""Writes a synthetic SD1.5 LoCon LoRA (kohya names, rank/conv rank 16 by default) for the resize
benchmark: the module set sd-scripts' networks/lora.py creates with conv_dim set (Transformer2DModel
linears/1x1 convs, ResnetBlock2D/Downsample2D/Upsample2D convs, CLIP attention/MLP), built from the
SD1.5 architecture on torch's meta device (no weights needed). Each module's up·down gets singular
values decaying at one of five rates, so dynamic resizing picks different ranks.

    python make_locon.py OUT.safetensors [--rank 16] [--conv-rank 16] [--seed 0]
"""
import argparse

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

UNET_TARGETS = {"Transformer2DModel"}
UNET_CONV_TARGETS = {"ResnetBlock2D", "Downsample2D", "Upsample2D"}
TE_TARGETS = {"CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"}


def targets(model, prefix, classes, conv_rank, rank):
    out = []
    for name, module in model.named_modules():
        if module.__class__.__name__ not in classes:
            continue
        for child_name, child in module.named_modules():
            kind = child.__class__.__name__
            if kind not in ("Linear", "Conv2d"):
                continue
            is_1x1 = kind == "Conv2d" and tuple(child.kernel_size) == (1, 1)
            if kind == "Linear" or is_1x1:
                r = rank
            elif conv_rank:
                r = conv_rank
            else:
                continue
            full = f"{prefix}.{name}.{child_name}".replace(".", "_")
            out.append((full, child, r))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--conv-rank", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64, cross_attention_dim=768, attention_head_dim=8,
            block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        )
        te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12, max_position_embeddings=77))
    mods = targets(te, "lora_te", TE_TARGETS, None, a.rank)
    mods += targets(unet, "lora_unet", UNET_TARGETS | UNET_CONV_TARGETS, a.conv_rank, a.rank)
    tensors = {}
    rates = [0.3, 0.5, 0.7, 0.85, 0.95]
    for i, (name, m, r) in enumerate(mods):
        if m.__class__.__name__ == "Linear":
            out_f, in_f, k = m.out_features, m.in_features, (1, 1)
        else:
            out_f, in_f, k = m.out_channels, m.in_channels, tuple(m.kernel_size)
        flat_in = in_f * k[0] * k[1]
        s = torch.tensor([rates[i % 5] ** j for j in range(r)]) * 0.05
        u, _ = torch.linalg.qr(torch.randn(out_f, r))
        v, _ = torch.linalg.qr(torch.randn(flat_in, r))
        up = (u * s).contiguous()
        down = v.T.contiguous()
        if m.__class__.__name__ == "Linear":
            tensors[f"{name}.lora_up.weight"] = up
            tensors[f"{name}.lora_down.weight"] = down
        else:
            tensors[f"{name}.lora_up.weight"] = up.reshape(out_f, r, 1, 1)
            tensors[f"{name}.lora_down.weight"] = down.reshape(r, in_f, k[0], k[1])
        tensors[f"{name}.alpha"] = torch.tensor(float(r / 2))
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(a.rank), "ss_network_alpha": str(a.rank / 2),
            "ss_network_args": f'{{"conv_dim": "{a.conv_rank}", "conv_alpha": "{a.conv_rank / 2}"}}',
            "ss_base_model_version": "sd_v1"}
    save_file(tensors, a.out, metadata=meta)
    print(f"{len(mods)} modules, {len(tensors)} tensors -> {a.out}")


if __name__ == "__main__":
    main()
