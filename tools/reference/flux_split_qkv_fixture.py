#!/usr/bin/env python3
"""PyTorch reference for lorakit's Flux `split_qkv` LoRA: sd-scripts' `networks/lora_flux.py` with
`split_qkv=True` on the tiny dev transformer of make_flux_tiny.py.

sd-scripts splits a double block's `img_attn.qkv` / `txt_attn.qkv` into q, k, v and a single
block's `linear1` into q, k, v and the MLP input (`split_dims`), one down/up pair per part, and its
`state_dict()` fuses them back: down stacked, up block-diagonal, alpha unchanged. Two things are
patched for the tiny model, both only in this script:

* `get_qkv_mlp_split_dims` returns FLUX.1's widths (3072, 12288) hard-coded; here the tiny
  model's (48 x 3 + 192);
* the snapshot's `create_modules` unpacks a list into one name for double blocks
  (`(split_dims,) = ...[:3]`, the crash fixed upstream in PR #2396): the returned list answers
  `[:3]` with a one-element list holding the q/k/v widths while the modules are made, so the
  code runs as upstream's fix (state_dict() then gets the plain list).

Writes tests/fixtures/reference/flux_tiny/lora_split_qkv.safetensors: per part the factors
(`<module>.lora_down.<i>.weight`, `.lora_up.<i>.weight`, rank 4, alpha 2, random up weights) and
the gradients of sum(output * probe) (`.lora_down.<i>.grad`, `.lora_up.<i>.grad`), the output,
the probe, and sd-scripts' fused `state_dict()` under `saved.<key>`.

Run from the repository root after make_flux_tiny.py:

    PYTHONPATH=/work/bench/sd-scripts:tools/reference /work/bench/venv/bin/python tools/reference/flux_split_qkv_fixture.py
"""
import os

import torch
from safetensors.torch import load_file, save_file

import make_flux_tiny as tiny
from networks import lora_flux

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


class SplitDims(list):
    """[h, h, h, mlp] whose `[:3]` is `[[h, h, h]]` (see the docstring)."""

    def __getitem__(self, index):
        if isinstance(index, slice) and index == slice(None, 3, None):
            return [list(super().__getitem__(index))]
        return super().__getitem__(index)


def main():
    hidden, mlp = tiny.HIDDEN, 4 * tiny.HIDDEN
    lora_flux.LoRANetwork.get_qkv_mlp_split_dims = classmethod(lambda cls: SplitDims([hidden] * 3 + [mlp]))
    dev = tiny.flux_models.Flux(tiny.params(True)).float()
    dev.load_state_dict(load_file(os.path.join(tiny.OUT, "dev_bfl.safetensors")))
    io = load_file(os.path.join(tiny.OUT, "io_transformer.safetensors"))
    inputs = {k: io[k] for k in ["img", "img_ids", "txt", "txt_ids", "timesteps", "y", "guidance"]}

    torch.manual_seed(13)
    network = lora_flux.LoRANetwork([None], dev, multiplier=1.0, lora_dim=4, alpha=2.0, split_qkv=True)
    # state_dict() slices [:3] as a flat list, as it should.
    lora_flux.LoRANetwork.get_qkv_mlp_split_dims = classmethod(lambda cls: [hidden] * 3 + [mlp])
    network.apply_to([None], dev, apply_text_encoder=False, apply_unet=True)
    split = [l for l in network.unet_loras if l.split_dims is not None]
    assert len(split) == 2 * tiny.DEPTH + tiny.DEPTH_SINGLE, len(split)
    with torch.no_grad():
        for p in network.parameters():
            if p.dim() == 2 and p.shape[1] == 4:  # every lora_up (rank 4 inputs)
                p.normal_(0.0, 0.05)
    network.train()
    dev.train()
    g = torch.Generator().manual_seed(14)
    out = tiny.run_flux(dev, inputs, inputs["guidance"])
    probe = torch.randn(out.shape, generator=g)
    (out * probe).sum().backward()
    tensors = {"out": out.detach(), "probe": probe}
    for lora in network.unet_loras:
        tensors[f"{lora.lora_name}.alpha"] = torch.tensor(float(lora.alpha))
        if lora.split_dims is None:
            pairs = [("", lora.lora_down, lora.lora_up)]
        else:
            pairs = [(f".{i}", d, u) for i, (d, u) in enumerate(zip(lora.lora_down, lora.lora_up))]
        for suffix, down, up in pairs:
            tensors[f"{lora.lora_name}.lora_down{suffix}.weight"] = down.weight.detach().clone()
            tensors[f"{lora.lora_name}.lora_up{suffix}.weight"] = up.weight.detach().clone()
            tensors[f"{lora.lora_name}.lora_down{suffix}.grad"] = down.weight.grad.detach().clone()
            tensors[f"{lora.lora_name}.lora_up{suffix}.grad"] = up.weight.grad.detach().clone()
    for key, value in network.state_dict().items():
        tensors[f"saved.{key}"] = value.detach().clone()
    print(f"lora: {len(network.unet_loras)} modules, {len(split)} split")
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, os.path.join(tiny.OUT, "lora_split_qkv.safetensors"))


if __name__ == "__main__":
    main()
