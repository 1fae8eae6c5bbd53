#!/usr/bin/env python3
"""Flux.1 LoRA files in every published layout, and what diffusers makes of each.

A tiny Flux-shaped model (hidden 48, 2 double + 3 single blocks, mlp ratio 4 → 192, in_channels
12, context 20, pooled vector 16, timestep/guidance embedding 256; CLIP-L-shaped text encoder 32
wide with 2 layers and MLP 37; T5-shaped encoder d_model 24, inner 16, d_ff 40, 2 blocks) gets a
random LoRA (ranks 2–4, mixed alphas, seed 0) in each layout:

* `kohya.safetensors` — sd-scripts names (`lora_unet_double_blocks_0_img_attn_qkv`, in_dims input
  layers, `lora_te1_` CLIP-L, `lora_te3_` T5) and a final layer, `.alpha` per module (one module
  without alpha); final-layer modules have alpha = rank (diffusers drops their alpha);
* `kohya_split_qkv.safetensors` — sd-scripts' `split_qkv=True` save: per part down/up fused as
  `LoRANetwork.state_dict` does (down = concat of the parts' downs, rank·parts rows; up =
  block-diagonal; alpha unchanged, so loaders use alpha/(rank·parts));
* `comfy.safetensors` — ComfyUI's form: `diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight`
  + `.alpha`;
* `diffusers.safetensors` — ai-toolkit / diffusers PEFT: `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`
  (q, k, v with their own downs; a double block without `to_k`, a single block without `proj_mlp`),
  `text_encoder.text_model…`, no alpha;
* `diffusers_variants.safetensors` — the same kind without the `transformer.` prefix, with the
  older `.lora.down.weight` / `.lora.up.weight` names and `.alpha` keys (network alphas) on some
  modules;
* `xlabs.safetensors` — XLabs' `double_blocks.0.processor.qkv_lora1.down.weight` (+ single-block
  `qkv_lora` / `proj_lora`);
* `bfl.safetensors` — BFL names with lora_A/lora_B under `diffusion_model.` (every layer, as
  BFL's control LoRAs have);
* `diffusers_adapter_metadata.safetensors` — diffusers' own save (≥ 0.34): no alpha keys, the
  PEFT LoraConfig per component in the `lora_adapter_metadata` JSON (transformer lora_alpha 8 at
  rank 4 with an `alpha_pattern` entry; text encoder with rsLoRA). diffusers 0.32.1 predates that
  metadata, so its expected ΔW is PEFT's: the LoraConfig built from the metadata injected into
  diffusers' FluxTransformer2DModel / transformers' CLIPTextModel in the fixture's shapes, lora_B ×
  the scaling each PEFT layer computed;
* `kohya_diffusers_names.safetensors` — kohya-style keys over diffusers paths
  (`lora_transformer_transformer_blocks_0_attn_to_q.lora_down.weight` + `.alpha`, diffusers'
  "mixture" form; attention and global layers, which are what its converter maps), with
  `lora_te1_` CLIP-L modules.

diffusers' own conversion functions (`_convert_kohya_flux_lora_to_diffusers`,
`_convert_xlabs_flux_lora_to_diffusers`, `_convert_bfl_flux_control_lora_to_diffusers`, dispatched as
`FluxLoraLoaderMixin.lora_state_dict` does; the other layouts pass through with their `.alpha`
keys taken out as network alphas) turn each file into diffusers' state dict: `expected.safetensors`
holds it per layout (`<layout>:transformer.….lora_A.weight`, `…lora_B.weight`,
`<layout>:<module>.alpha` for network alphas, applied as PEFT does: ΔW = alpha/rank·B·A, else B·A;
names as diffusers' loader ends up with them, see `peft_names`).
Where diffusers takes a file only in another spelling (the bare / `lora.down` names of
`diffusers_variants`; the bare BFL names + norm scales its control-LoRA converter requires for
`bfl`), diffusers is given that spelling of the same tensors. diffusers drops T5 (`lora_te3_`)
modules, so there is nothing of diffusers' to compare them with. For `bfl`'s final modulation the
expected value is the kohya converter's (lora_B's halves swapped): the control-LoRA converter also
swaps the halves of lora_A, i.e. its rank rows, which changes ΔW. `manifest.json` records versions
and what each layout holds.

Read by crates/lorakit-lora/tests/flux_layouts.rs and crates/lorakit/tests/cli_flux_lora.rs.

Run:  /work/bench/venv/bin/python tools/reference/flux_lora_layouts_fixture.py \\
        [--diffusers-src PATH/TO/diffusers/src/diffusers/loaders/lora_conversion_utils.py]
(the installed diffusers' file by default; the checked-in fixture used GitHub main's, commit
58eb52c0 (in manifest.json) — 0.32.1's kohya converter raises "Incompatible keys" on the in_dims
input layers, the final layer and T5 modules, which main converts (T5 dropped with a warning).
torch 2.6.0, peft 0.14.0, transformers 4.54.1, diffusers 0.32.1 for the models; a few seconds.)
"""

import argparse
import json
import os
import sys
import types

import torch
from safetensors.torch import save_file

H, MLP, DOUBLE, SINGLE = 48, 192, 2, 3
IN_CH, CTX, VEC, TIME = 12, 20, 16, 256
CLIP_W, CLIP_MLP, CLIP_LAYERS = 32, 37, 2
T5_D, T5_INNER, T5_FF, T5_BLOCKS = 24, 16, 40, 2

# (BFL child, out, in, diffusers parts) per double / single block, and the global layers.
DOUBLE_CHILDREN = [
    ("img_mod.lin", 6 * H, H, ["norm1.linear"]),
    ("img_attn.qkv", 3 * H, H, ["attn.to_q", "attn.to_k", "attn.to_v"]),
    ("img_attn.proj", H, H, ["attn.to_out.0"]),
    ("img_mlp.0", MLP, H, ["ff.net.0.proj"]),
    ("img_mlp.2", H, MLP, ["ff.net.2"]),
    ("txt_mod.lin", 6 * H, H, ["norm1_context.linear"]),
    ("txt_attn.qkv", 3 * H, H, ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
    ("txt_attn.proj", H, H, ["attn.to_add_out"]),
    ("txt_mlp.0", MLP, H, ["ff_context.net.0.proj"]),
    ("txt_mlp.2", H, MLP, ["ff_context.net.2"]),
]
SINGLE_CHILDREN = [
    ("linear1", 3 * H + MLP, H, ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]),
    ("linear2", H, H + MLP, ["proj_out"]),
    ("modulation.lin", 3 * H, H, ["norm.linear"]),
]
GLOBAL = [
    ("img_in", H, IN_CH, ["x_embedder"]),
    ("time_in.in_layer", H, TIME, ["time_text_embed.timestep_embedder.linear_1"]),
    ("time_in.out_layer", H, H, ["time_text_embed.timestep_embedder.linear_2"]),
    ("vector_in.in_layer", H, VEC, ["time_text_embed.text_embedder.linear_1"]),
    ("vector_in.out_layer", H, H, ["time_text_embed.text_embedder.linear_2"]),
    ("guidance_in.in_layer", H, TIME, ["time_text_embed.guidance_embedder.linear_1"]),
    ("guidance_in.out_layer", H, H, ["time_text_embed.guidance_embedder.linear_2"]),
    ("txt_in", H, CTX, ["context_embedder"]),
    ("final_layer.linear", IN_CH, H, ["proj_out"]),
    ("final_layer.adaLN_modulation.1", 2 * H, H, ["norm_out.linear"]),
]
CLIP_CHILDREN = [
    ("self_attn.q_proj", CLIP_W, CLIP_W), ("self_attn.k_proj", CLIP_W, CLIP_W),
    ("self_attn.v_proj", CLIP_W, CLIP_W), ("self_attn.out_proj", CLIP_W, CLIP_W),
    ("mlp.fc1", CLIP_MLP, CLIP_W), ("mlp.fc2", CLIP_W, CLIP_MLP),
]
T5_CHILDREN = [
    ("layer.0.SelfAttention.q", T5_INNER, T5_D), ("layer.0.SelfAttention.k", T5_INNER, T5_D),
    ("layer.0.SelfAttention.v", T5_INNER, T5_D), ("layer.0.SelfAttention.o", T5_D, T5_INNER),
    ("layer.1.DenseReluDense.wi_0", T5_FF, T5_D), ("layer.1.DenseReluDense.wi_1", T5_FF, T5_D),
    ("layer.1.DenseReluDense.wo", T5_D, T5_FF),
]


def layers():
    """Every DiT layer: (BFL path, out, in, [diffusers part names], [part widths])."""
    out = []
    for i in range(DOUBLE):
        for child, o, n, parts in DOUBLE_CHILDREN:
            out.append((f"double_blocks.{i}.{child}", o, n, [f"transformer_blocks.{i}.{p}" for p in parts]))
    for i in range(SINGLE):
        for child, o, n, parts in SINGLE_CHILDREN:
            out.append((f"single_blocks.{i}.{child}", o, n, [f"single_transformer_blocks.{i}.{p}" for p in parts]))
    for child, o, n, parts in GLOBAL:
        out.append((child, o, n, parts))
    return [(p, o, n, parts, widths(o, n, len(parts))) for p, o, n, parts in out]


def widths(out, inn, parts):
    if parts == 1:
        return [out]
    if parts == 3:
        return [out // 3] * 3
    return [inn, inn, inn, out - 3 * inn]


def text_layers():
    clip = [(f"text_model.encoder.layers.{i}.{c}", o, n) for i in range(CLIP_LAYERS) for c, o, n in CLIP_CHILDREN]
    t5 = [(f"encoder.block.{i}.{c}", o, n) for i in range(T5_BLOCKS) for c, o, n in T5_CHILDREN]
    return clip, t5


def kohya(path, prefix="lora_unet"):
    return f"{prefix}_{path.replace('.', '_')}"


class Rng:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def pair(self, out, inn, rank):
        down = torch.randn(rank, inn, generator=self.g) * 0.2
        up = torch.randn(out, rank, generator=self.g) * 0.2
        return down, up


def rank_alpha(i):
    """Ranks and alphas cycle so scales differ between modules."""
    rank = [4, 2, 3, 4][i % 4]
    alpha = [2.0, 8.0, 3.0, 4.0][i % 4]
    return rank, alpha


def make_kohya(rng):
    sd = {}
    for i, (path, o, n, parts, _) in enumerate(layers()):
        rank, alpha = rank_alpha(i)
        if path.startswith("final_layer"):
            alpha = float(rank)  # diffusers drops final-layer alphas
        down, up = rng.pair(o, n, rank)
        name = kohya(path)
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
        if path != "txt_in":  # one module without alpha (= rank)
            sd[f"{name}.alpha"] = torch.tensor(alpha)
    clip, t5 = text_layers()
    for i, (path, o, n) in enumerate(clip):
        rank, alpha = rank_alpha(i + 1)
        name = kohya(path, "lora_te1")
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = rng.pair(o, n, rank)
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    for i, (path, o, n) in enumerate(t5):
        rank, alpha = rank_alpha(i + 2)
        name = kohya(path, "lora_te3")
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = rng.pair(o, n, rank)
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd


def make_split_qkv(rng):
    """sd-scripts' split_qkv save: fused layers hold per-part pairs fused block-diagonally."""
    sd = {}
    rank, alpha = 2, 4.0
    for path, o, n, parts, ws in layers():
        if path.startswith(("final_layer", "time_in", "vector_in", "guidance_in", "txt_in", "img_in")):
            continue
        name = kohya(path)
        if len(parts) == 1:
            down, up = rng.pair(o, n, rank)
        else:
            pairs = [rng.pair(w, n, rank) for w in ws]
            down = torch.cat([d for d, _ in pairs], dim=0)
            up = torch.zeros(sum(ws), rank * len(ws))
            row = 0
            for j, (_, u) in enumerate(pairs):
                up[row:row + ws[j], j * rank:(j + 1) * rank] = u
                row += ws[j]
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd


def make_comfy(rng):
    sd = {}
    for i, (path, o, n, parts, _) in enumerate(layers()):
        if path.startswith("final_layer"):
            continue
        rank, alpha = rank_alpha(i + 1)
        down, up = rng.pair(o, n, rank)
        sd[f"diffusion_model.{path}.lora_down.weight"], sd[f"diffusion_model.{path}.lora_up.weight"] = down, up
        sd[f"diffusion_model.{path}.alpha"] = torch.tensor(alpha)
    return sd


def make_diffusers(rng):
    """ai-toolkit's form. Returns the state dict and the same modules as (name → (down, up, alpha))."""
    sd = {}
    skip = {"transformer_blocks.1.attn.to_k", "single_transformer_blocks.2.proj_mlp"}
    for i, (path, o, n, parts, ws) in enumerate(layers()):
        if path.startswith("final_layer"):
            continue
        for j, (part, w) in enumerate(zip(parts, ws)):
            if part in skip:
                continue
            rank, _ = rank_alpha(i + j)
            down, up = rng.pair(w, n, rank)
            sd[f"transformer.{part}.lora_A.weight"], sd[f"transformer.{part}.lora_B.weight"] = down, up
    clip, _ = text_layers()
    for i, (path, o, n) in enumerate(clip):
        rank, _ = rank_alpha(i)
        down, up = rng.pair(o, n, rank)
        sd[f"text_encoder.{path}.lora_A.weight"], sd[f"text_encoder.{path}.lora_B.weight"] = down, up
    return sd


def make_diffusers_variants(rng):
    """Bare names with lora.down/lora.up and some .alpha keys; also the prefixed lora_A spelling."""
    bare, prefixed = {}, {}
    for i, (path, o, n, parts, ws) in enumerate(layers()):
        if not path.startswith(("double_blocks.0.", "single_blocks.1.", "img_in")):
            continue
        for j, (part, w) in enumerate(zip(parts, ws)):
            rank, alpha = rank_alpha(i + j)
            down, up = rng.pair(w, n, rank)
            bare[f"{part}.lora.down.weight"], bare[f"{part}.lora.up.weight"] = down, up
            prefixed[f"transformer.{part}.lora_A.weight"], prefixed[f"transformer.{part}.lora_B.weight"] = down, up
            if (i + j) % 2 == 0:
                bare[f"{part}.alpha"] = torch.tensor(alpha)
                prefixed[f"transformer.{part}.alpha"] = torch.tensor(alpha)
    return bare, prefixed


def make_kohya_diffusers_names(rng):
    """kohya-style keys over diffusers paths (`lora_transformer_transformer_blocks_0_attn_to_q`),
    with alphas, + `lora_te1_` CLIP-L: what diffusers calls a "mixture" state dict."""
    sd = {}
    for i, (path, o, n, parts, ws) in enumerate(layers()):
        for j, (part, w) in enumerate(zip(parts, ws)):
            # diffusers' mixture converter maps attention layers and the global ones only.
            if ".attn." not in part and "blocks." in part:
                continue
            rank, alpha = rank_alpha(i + j + 2)
            down, up = rng.pair(w, n, rank)
            name = kohya(part, "lora_transformer")
            sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
            sd[f"{name}.alpha"] = torch.tensor(alpha)
    clip, _ = text_layers()
    for i, (path, o, n) in enumerate(clip[:6]):
        rank, alpha = rank_alpha(i)
        name = kohya(path, "lora_te1")
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = rng.pair(o, n, rank)
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd


ADAPTER_METADATA = {
    "transformer.r": 4, "transformer.lora_alpha": 8, "transformer.use_rslora": False,
    "transformer.alpha_pattern": {"single_transformer_blocks.0.proj_out": 2},
    "text_encoder.r": 4, "text_encoder.lora_alpha": 16, "text_encoder.use_rslora": True,
}


def make_diffusers_adapter_metadata(rng):
    """diffusers' own save (≥ 0.34): PEFT names, no alpha keys, the LoraConfig per component in
    the `lora_adapter_metadata` JSON (lora_alpha 8 at rank 4, an alpha_pattern entry; rsLoRA on
    the text encoder)."""
    sd = {}
    for path, o, n, parts, ws in layers():
        if not path.startswith(("double_blocks.1.", "single_blocks.0.", "txt_in")):
            continue
        for part, w in zip(parts, ws):
            down, up = rng.pair(w, n, 4)
            sd[f"transformer.{part}.lora_A.weight"], sd[f"transformer.{part}.lora_B.weight"] = down, up
    clip, _ = text_layers()
    for path, o, n in clip[:6]:
        down, up = rng.pair(o, n, 4)
        sd[f"text_encoder.{path}.lora_A.weight"], sd[f"text_encoder.{path}.lora_B.weight"] = down, up
    return sd


def tiny_models():
    """diffusers' FluxTransformer2DModel and transformers' CLIPTextModel in the fixture's shapes."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=IN_CH, num_layers=DOUBLE, num_single_layers=SINGLE, attention_head_dim=H // 2,
        num_attention_heads=2, joint_attention_dim=CTX, pooled_projection_dim=VEC, guidance_embeds=True,
        axes_dims_rope=(4, 10, 10),
    )
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=100, hidden_size=CLIP_W, intermediate_size=CLIP_MLP, num_hidden_layers=CLIP_LAYERS,
        num_attention_heads=2, max_position_embeddings=16, projection_dim=CLIP_W,
    ))
    return {"transformer": transformer, "text_encoder": clip}


def peft_view(sd, config):
    """What PEFT makes of a diffusers file with adapter metadata: the LoraConfig built from each
    component's metadata is injected into the tiny model, and each module's lora_A and
    lora_B · (the scaling PEFT's layer computed) are returned."""
    from peft import LoraConfig, inject_adapter_in_model

    out = {}
    for component, model in tiny_models().items():
        cfg = {k[len(component) + 1:]: v for k, v in config.items() if k.startswith(f"{component}.")}
        modules = sorted({k[len(component) + 1:].rsplit(".lora_", 1)[0] for k in sd if k.startswith(f"{component}.")})
        cfg.pop("r")
        lora_config = LoraConfig(r=config[f"{component}.r"], target_modules=modules, **cfg)
        model = inject_adapter_in_model(lora_config, model)
        layers = dict(model.named_modules())
        for module in modules:
            scaling = layers[module].scaling["default"]
            out[f"{component}.{module}.lora_A.weight"] = sd[f"{component}.{module}.lora_A.weight"]
            out[f"{component}.{module}.lora_B.weight"] = sd[f"{component}.{module}.lora_B.weight"] * scaling
    return out


def make_xlabs(rng):
    sd = {}
    for i in range(DOUBLE):
        for name, o, n in [("qkv_lora1", 3 * H, H), ("qkv_lora2", 3 * H, H), ("proj_lora1", H, H), ("proj_lora2", H, H)]:
            down, up = rng.pair(o, n, 4)
            sd[f"double_blocks.{i}.processor.{name}.down.weight"] = down
            sd[f"double_blocks.{i}.processor.{name}.up.weight"] = up
    for i in range(SINGLE):
        for name, o, n in [("qkv_lora", 3 * H, H), ("proj_lora", H, H + MLP)]:
            down, up = rng.pair(o, n, 4)
            sd[f"single_blocks.{i}.processor.{name}.down.weight"] = down
            sd[f"single_blocks.{i}.processor.{name}.up.weight"] = up
    return sd


def make_bfl(rng):
    """BFL names with lora_A/lora_B: the `diffusion_model.` file, and the bare spelling with the
    norm scales diffusers' control-LoRA converter requires."""
    prefixed, bare = {}, {}
    for i, (path, o, n, parts, _) in enumerate(layers()):
        rank, _ = rank_alpha(i + 3)
        down, up = rng.pair(o, n, rank)
        prefixed[f"diffusion_model.{path}.lora_A.weight"], prefixed[f"diffusion_model.{path}.lora_B.weight"] = down, up
        bare[f"{path}.lora_A.weight"], bare[f"{path}.lora_B.weight"] = down, up
    for i in range(DOUBLE):
        for s in ["img_attn", "txt_attn"]:
            for q in ["query_norm", "key_norm"]:
                bare[f"double_blocks.{i}.{s}.norm.{q}.scale"] = torch.ones(H // 2)
    for i in range(SINGLE):
        for q in ["query_norm", "key_norm"]:
            bare[f"single_blocks.{i}.norm.{q}.scale"] = torch.ones(H // 2)
    return prefixed, bare


def load_conversion_utils(path):
    """diffusers' lora_conversion_utils from its source (the installed package's by default), with
    Flux.1's sizes, which its converters hard-code, replaced by the tiny model's — the only change:
    `dims=[3072, 3072, 3072, 12288]` (linear1's split), `num_layers = 19`, `num_single_layers = 38`,
    `inner_dim = 3072`. Its relative imports (`logging`, `state_dict_all_zero`) are supplied here."""
    if path is None:
        import diffusers.loaders.lora_conversion_utils as installed
        path = installed.__file__
    src = open(path).read()
    replacements = [
        ("dims=[3072, 3072, 3072, 12288]", f"dims=[{H}, {H}, {H}, {MLP}]"),
        ("num_layers = 19", f"num_layers = {DOUBLE}"),
        ("num_single_layers = 38", f"num_single_layers = {SINGLE}"),
        ("inner_dim = 3072", f"inner_dim = {H}"),
    ]
    for old, new in replacements:
        assert old in src, f"{path}: `{old}` not found; the converter changed, check the substitutions"
        src = src.replace(old, new)
    src = src.replace("from ..utils import logging, state_dict_all_zero", "")
    src = src.replace("from ..utils import is_peft_version, logging", "")
    module = types.ModuleType("lora_conversion_utils_src")
    import logging as pylogging

    class _Logging:
        @staticmethod
        def get_logger(name):
            return pylogging.getLogger(name)

    def state_dict_all_zero(state_dict, filter_str=None):
        items = [v for k, v in state_dict.items() if filter_str is None or filter_str in k]
        return all(torch.all(v == 0) for v in items)

    module.__dict__.update({"logging": _Logging, "state_dict_all_zero": state_dict_all_zero})
    exec(compile(src, path, "exec"), module.__dict__)
    return module, path


def diffusers_view(lcu, sd):
    """FluxLoraLoaderMixin.lora_state_dict's dispatch; returns (state dict, network alphas)."""
    sd = {k: v.clone() for k, v in sd.items()}
    if any(".lora_down.weight" in k for k in sd):
        return lcu._convert_kohya_flux_lora_to_diffusers(sd), {}
    if any("processor" in k for k in sd):
        return lcu._convert_xlabs_flux_lora_to_diffusers(sd), {}
    if any("query_norm.scale" in k for k in sd):
        return lcu._convert_bfl_flux_control_lora_to_diffusers(sd), {}
    alphas = {k: sd.pop(k) for k in list(sd) if "alpha" in k}
    return sd, alphas


def peft_names(sd):
    """The names diffusers' loader ends up with: the kohya converter's text-encoder keys in the old
    attention-processor form (`self_attn.to_q_lora.down`, `mlp.fc1.lora_linear_layer.down`) as the
    PEFT names `convert_state_dict_to_peft` gives them, its in-layer and final-layer keys (emitted
    without a prefix) under `transformer.`; non-LoRA tensors (the control LoRA's norm scales) left out."""
    out = {}
    for key, value in sd.items():
        k = key
        for part in ["q", "k", "v", "out"]:
            proj = "out_proj" if part == "out" else f"{part}_proj"
            k = k.replace(f".self_attn.to_{part}_lora.down.weight", f".self_attn.{proj}.lora_A.weight")
            k = k.replace(f".self_attn.to_{part}_lora.up.weight", f".self_attn.{proj}.lora_B.weight")
        k = k.replace(".lora_linear_layer.down.weight", ".lora_A.weight")
        k = k.replace(".lora_linear_layer.up.weight", ".lora_B.weight")
        if not k.endswith((".lora_A.weight", ".lora_B.weight", ".alpha")):
            continue
        if not k.startswith(("transformer.", "text_encoder.")):
            k = f"transformer.{k}"
        out[k] = value
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/reference/flux_lora")
    ap.add_argument("--diffusers-src", default=None, help="a lora_conversion_utils.py to use instead of the installed one")
    ap.add_argument("--diffusers-commit", default=None, help="recorded in manifest.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    lcu, source = load_conversion_utils(args.diffusers_src)
    rng = Rng(0)

    diffusers_variants, diffusers_variants_prefixed = make_diffusers_variants(Rng(4))
    bfl, bfl_bare = make_bfl(Rng(6))
    files = {
        "kohya": (make_kohya(rng), None),
        "kohya_split_qkv": (make_split_qkv(Rng(1)), None),
        "comfy": (make_comfy(Rng(2)), None),
        "diffusers": (make_diffusers(Rng(3)), None),
        "diffusers_variants": (diffusers_variants, diffusers_variants_prefixed),
        "xlabs": (make_xlabs(Rng(5)), None),
        "kohya_diffusers_names": (make_kohya_diffusers_names(Rng(7)), None),
        "diffusers_adapter_metadata": (make_diffusers_adapter_metadata(Rng(8)), None),
        "bfl": (bfl, bfl_bare),
    }
    os.makedirs(args.out, exist_ok=True)
    expected, manifest = {}, {"layouts": {}}
    for layout, (sd, diffusers_input) in files.items():
        # One metadata key per file (safetensors writes several in a random order): sd-scripts'
        # base-model key on the kohya-made files, modelspec's dev architecture on others.
        if layout == "diffusers_adapter_metadata":
            metadata = {"lora_adapter_metadata": json.dumps(ADAPTER_METADATA, indent=2, sort_keys=True)}
        elif layout.startswith(("kohya", "comfy")):
            metadata = {"ss_base_model_version": "flux1"}
        elif layout == "diffusers":
            metadata = {}
        else:
            metadata = {"modelspec.architecture": "flux-1-dev/lora"}
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(args.out, f"{layout}.safetensors"), metadata)
        if layout == "diffusers_adapter_metadata":
            view, alphas = peft_view(sd, ADAPTER_METADATA), {}
        else:
            view, alphas = diffusers_view(lcu, diffusers_input if diffusers_input is not None else sd)
        view, alphas = peft_names(view), peft_names(alphas)
        if layout == "bfl":
            # diffusers' control-LoRA converter swaps the halves of lora_A as well as lora_B for the
            # final modulation (its kohya converter swaps lora_B only); swapping A's rank rows
            # changes ΔW, so the expected value is the kohya converter's: B's halves swapped, A kept.
            a = bfl["diffusion_model.final_layer.adaLN_modulation.1.lora_A.weight"]
            b = bfl["diffusion_model.final_layer.adaLN_modulation.1.lora_B.weight"]
            view["transformer.norm_out.linear.lora_A.weight"] = a
            view["transformer.norm_out.linear.lora_B.weight"] = lcu.swap_scale_shift(b)
        for key, t in view.items():
            expected[f"{layout}:{key}"] = t.float().clone().contiguous()
        for key, t in alphas.items():
            expected[f"{layout}:{key}"] = torch.tensor(float(t))
        modules = sorted({k.rsplit(".lora_", 1)[0] for k in view})
        manifest["layouts"][layout] = {
            "tensors": len(sd),
            "diffusers_modules": len(modules),
            "network_alphas": len(alphas),
            "diffusers_given": "this file" if diffusers_input is None else "the same tensors in the spelling diffusers reads",
        }
        if layout == "bfl":
            manifest["layouts"][layout]["norm_out.linear"] = (
                "kohya converter's swap (lora_B only); the control-LoRA converter also swaps lora_A's rank rows"
            )
    save_file(expected, os.path.join(args.out, "expected.safetensors"))
    manifest.update({
        "config": {"hidden": H, "mlp": MLP, "double": DOUBLE, "single": SINGLE, "in_channels": IN_CH,
                   "context": CTX, "vector": VEC, "time": TIME, "clip": [CLIP_W, CLIP_MLP, CLIP_LAYERS],
                   "t5": [T5_D, T5_INNER, T5_FF, T5_BLOCKS]},
        "diffusers_conversion_source": os.path.basename(os.path.dirname(os.path.dirname(source))) + "/loaders/lora_conversion_utils.py"
        if args.diffusers_src is None else "diffusers main: src/diffusers/loaders/lora_conversion_utils.py",
        "diffusers_substitutions": "Flux.1 sizes hard-coded in the converters replaced by the tiny model's",
        "diffusers_commit": args.diffusers_commit,
        "torch": torch.__version__,
    })
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(manifest["layouts"], indent=1))


if __name__ == "__main__":
    sys.exit(main())
