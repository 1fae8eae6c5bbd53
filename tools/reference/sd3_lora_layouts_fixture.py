#!/usr/bin/env python3
"""SD3 / SD3.5 LoRA files in the layouts people publish, and what diffusers makes of each.

A tiny SD3-shaped MMDiT (hidden 16 = 2 heads × 8, 3 joint blocks — the last one pre-only, block 0
with SD3.5 Medium's second x-block attention `attn2` — patch 2, 4 latent channels, context width
12, pooled width 10, timestep embedding 256), a CLIP-L-shaped encoder (16 wide, 2 layers, MLP 20),
a CLIP-G-shaped one (24 wide, 2 layers, MLP 28) and a T5-shaped one (d_model 16, inner 8, d_ff 20,
2 blocks) get a random LoRA (ranks 2–4, mixed alphas, seed 0) in each layout:

* `kohya.safetensors` — sd-scripts' networks/lora_sd3.py names (`lora_unet_joint_blocks_0_x_block_attn_qkv`,
  the `emb_dims` layers incl. the patch-embedding conv `lora_unet_x_embedder_proj` (down
  (r, 4, 2, 2), up (16, r, 1, 1)), `lora_te1_` CLIP-L, `lora_te2_` CLIP-G, `lora_te3_` T5),
  `.alpha` per module (one without);
* `kohya_split_qkv.safetensors` — sd-scripts' `split_qkv=True` save (LoRANetwork.state_dict):
  every joint-block qkv (attn and attn2) holds three per-part pairs, down = the downs
  concatenated (3·rank rows), up block-diagonal, alpha unchanged;
* `comfy.safetensors` — SAI paths as ComfyUI reads them: `diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_down.weight` + `.alpha`;
* `diffusers.safetensors` — PEFT names as diffusers' SD3 training saves them
  (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, q/k/v with their own downs, one
  block without `to_k`, `attn2.*`, `norm1_context.linear` of the last block, `norm_out.linear`,
  `pos_embed.proj`), `text_encoder.` / `text_encoder_2.`, no alpha;
* `onetrainer.safetensors` — kohya-style keys over diffusers paths, as OneTrainer writes and
  ComfyUI reads them (`lora_transformer_transformer_blocks_0_attn_to_q.lora_down.weight` + `.alpha`).

diffusers (0.42.1 here) has no converter for SD3 LoRAs in other layouts (SD3LoraLoaderMixin
loads PEFT names only), so the reference for what each SAI layer is in diffusers is diffusers'
own SD3 checkpoint converter, `single_file_utils.convert_sd3_transformer_checkpoint_to_diffusers`
(q/k/v split; the halves of `final_layer.adaLN_modulation.1` and of the last block's
`context_block.adaLN_modulation.1` swapped). For the SAI-named layouts each module's ΔW =
alpha/rank · up · down goes through it twice: the dense ΔW of every layer (zeros elsewhere) in
one SAI state dict, and `alpha/rank · up` (row operations only) with `down` beside it; both give
the same diffusers ΔW (checked, ≤1e-6), and the factored form is stored. The converted dict is
also loaded into diffusers' `SD3Transformer2DModel` of these shapes (strict), so the SAI key set is
the model's. Text-encoder modules keep their HF paths under `text_encoder.` (CLIP-L),
`text_encoder_2.` (CLIP-G), `text_encoder_3.` (T5, which StableDiffusion3Pipeline does not load).
The diffusers-named layouts are their own diffusers view (ΔW = alpha/rank · B · A).

`expected.safetensors` holds `<layout>:<diffusers module>.lora_A.weight` / `.lora_B.weight`
(B with alpha/rank folded in) for every layout; `manifest.json` the shapes, versions and counts.
Read by crates/lorakit-lora/tests/sd3_layouts.rs, crates/lorakit/tests/cli_sd3_lora.rs and
tools/reference/sd3_lora_diffusers_load.py.

Run:  PYTHONPATH=/work/bench/py42 /work/bench/venv/bin/python tools/reference/sd3_lora_layouts_fixture.py
(torch 2.6.0 CPU, diffusers 0.42.1; a second.)
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

H, DEPTH, ATTN2 = 16, 3, (0,)
IN_CH, PATCH, CTX, POOLED, TIME = 4, 2, 12, 10, 256
CLIP_L = (16, 20, 2)  # width, MLP, layers
CLIP_G = (24, 28, 2)
T5_D, T5_INNER, T5_FF, T5_BLOCKS = 16, 8, 20, 2


def joint_children(i):
    """(SAI child, out, in, [diffusers parts]) of joint block i, in sd-scripts' order."""
    last, attn2 = i == DEPTH - 1, i in ATTN2
    out = [("context_block.attn.qkv", 3 * H, H, ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"])]
    if not last:
        out += [
            ("context_block.attn.proj", H, H, ["attn.to_add_out"]),
            ("context_block.mlp.fc1", 4 * H, H, ["ff_context.net.0.proj"]),
            ("context_block.mlp.fc2", H, 4 * H, ["ff_context.net.2"]),
        ]
    out.append(("context_block.adaLN_modulation.1", (2 if last else 6) * H, H, ["norm1_context.linear"]))
    out += [
        ("x_block.attn.qkv", 3 * H, H, ["attn.to_q", "attn.to_k", "attn.to_v"]),
        ("x_block.attn.proj", H, H, ["attn.to_out.0"]),
    ]
    if attn2:
        out += [
            ("x_block.attn2.qkv", 3 * H, H, ["attn2.to_q", "attn2.to_k", "attn2.to_v"]),
            ("x_block.attn2.proj", H, H, ["attn2.to_out.0"]),
        ]
    out += [
        ("x_block.mlp.fc1", 4 * H, H, ["ff.net.0.proj"]),
        ("x_block.mlp.fc2", H, 4 * H, ["ff.net.2"]),
        ("x_block.adaLN_modulation.1", (9 if attn2 else 6) * H, H, ["norm1.linear"]),
    ]
    return out


# (SAI path, out, in (conv: in_channels, kernel), [diffusers parts]) outside the blocks, sd-scripts' emb_dims order.
GLOBAL = [
    ("context_embedder", H, CTX, ["context_embedder"]),
    ("t_embedder.mlp.0", H, TIME, ["time_text_embed.timestep_embedder.linear_1"]),
    ("t_embedder.mlp.2", H, H, ["time_text_embed.timestep_embedder.linear_2"]),
    ("x_embedder.proj", H, (IN_CH, PATCH), ["pos_embed.proj"]),
    ("y_embedder.mlp.0", H, POOLED, ["time_text_embed.text_embedder.linear_1"]),
    ("y_embedder.mlp.2", H, H, ["time_text_embed.text_embedder.linear_2"]),
    ("final_layer.adaLN_modulation.1", 2 * H, H, ["norm_out.linear"]),
    ("final_layer.linear", PATCH * PATCH * IN_CH, H, ["proj_out"]),
]


def layers():
    """Every MMDiT layer: (SAI path, out, in, [diffusers part names])."""
    out = []
    for i in range(DEPTH):
        for child, o, n, parts in joint_children(i):
            out.append((f"joint_blocks.{i}.{child}", o, n, [f"transformer_blocks.{i}.{p}" for p in parts]))
    return out + GLOBAL


def clip_children(width, mlp):
    return [
        ("self_attn.q_proj", width, width), ("self_attn.k_proj", width, width),
        ("self_attn.v_proj", width, width), ("self_attn.out_proj", width, width),
        ("mlp.fc1", mlp, width), ("mlp.fc2", width, mlp),
    ]


T5_CHILDREN = [
    ("layer.0.SelfAttention.q", T5_INNER, T5_D), ("layer.0.SelfAttention.k", T5_INNER, T5_D),
    ("layer.0.SelfAttention.v", T5_INNER, T5_D), ("layer.0.SelfAttention.o", T5_D, T5_INNER),
    ("layer.1.DenseReluDense.wi_0", T5_FF, T5_D), ("layer.1.DenseReluDense.wi_1", T5_FF, T5_D),
    ("layer.1.DenseReluDense.wo", T5_D, T5_FF),
]


def text_layers():
    """(kohya prefix, diffusers prefix, HF path, out, in) of every text-encoder layer."""
    out = []
    for kp, dp, (w, mlp, n) in [("lora_te1", "text_encoder", CLIP_L), ("lora_te2", "text_encoder_2", CLIP_G)]:
        out += [(kp, dp, f"text_model.encoder.layers.{i}.{c}", o, m) for i in range(n) for c, o, m in clip_children(w, mlp)]
    out += [("lora_te3", "text_encoder_3", f"encoder.block.{i}.{c}", o, m) for i in range(T5_BLOCKS) for c, o, m in T5_CHILDREN]
    return out


def kohya(path, prefix="lora_unet"):
    return f"{prefix}_{path.replace('.', '_')}"


class Rng:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def pair(self, out, inn, rank):
        """(down, up): linear (rank, in) / (out, rank); conv (rank, c, k, k) / (out, rank, 1, 1)."""
        if isinstance(inn, tuple):
            c, k = inn
            return torch.randn(rank, c, k, k, generator=self.g) * 0.2, torch.randn(out, rank, 1, 1, generator=self.g) * 0.2
        return torch.randn(rank, inn, generator=self.g) * 0.2, torch.randn(out, rank, generator=self.g) * 0.2


def rank_alpha(i):
    return [4, 2, 3, 4][i % 4], [2.0, 8.0, 3.0, 4.0][i % 4]


def split_widths(out, parts):
    return [out // len(parts)] * len(parts)


def make_kohya(rng):
    sd = {}
    for i, (path, o, n, _) in enumerate(layers()):
        rank, alpha = rank_alpha(i)
        name = kohya(path)
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = rng.pair(o, n, rank)
        if path != "context_embedder":  # one module without alpha (= rank)
            sd[f"{name}.alpha"] = torch.tensor(alpha)
    for i, (kp, _, path, o, n) in enumerate(text_layers()):
        rank, alpha = rank_alpha(i + 1)
        name = kohya(path, kp)
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = rng.pair(o, n, rank)
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd


def make_split_qkv(rng):
    """sd-scripts' split_qkv save of the joint blocks (no emb_dims, no text encoders)."""
    sd = {}
    rank, alpha = 2, 4.0
    for path, o, n, parts in layers():
        if not path.startswith("joint_blocks"):
            continue
        name = kohya(path)
        if len(parts) == 1:
            down, up = rng.pair(o, n, rank)
        else:
            pairs = [rng.pair(w, n, rank) for w in split_widths(o, parts)]
            down = torch.cat([d for d, _ in pairs], dim=0)
            up = torch.zeros(o, rank * len(parts))
            row = 0
            for j, (_, u) in enumerate(pairs):
                up[row:row + u.shape[0], j * rank:(j + 1) * rank] = u
                row += u.shape[0]
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd


def make_comfy(rng):
    sd = {}
    for i, (path, o, n, _) in enumerate(layers()):
        rank, alpha = rank_alpha(i + 1)
        down, up = rng.pair(o, n, rank)
        sd[f"diffusion_model.{path}.lora_down.weight"], sd[f"diffusion_model.{path}.lora_up.weight"] = down, up
        sd[f"diffusion_model.{path}.alpha"] = torch.tensor(alpha)
    return sd


def make_diffusers(rng):
    sd = {}
    skip = {"transformer_blocks.1.attn.to_k", "transformer_blocks.0.attn.add_v_proj"}
    for i, (path, o, n, parts) in enumerate(layers()):
        for j, (part, w) in enumerate(zip(parts, split_widths(o, parts))):
            if part in skip:
                continue
            rank, _ = rank_alpha(i + j)
            down, up = rng.pair(w, n, rank)
            sd[f"transformer.{part}.lora_A.weight"], sd[f"transformer.{part}.lora_B.weight"] = down, up
    for i, (_, dp, path, o, n) in enumerate(text_layers()):
        if dp == "text_encoder_3":
            continue
        rank, _ = rank_alpha(i)
        down, up = rng.pair(o, n, rank)
        sd[f"{dp}.{path}.lora_A.weight"], sd[f"{dp}.{path}.lora_B.weight"] = down, up
    return sd


def make_onetrainer(rng):
    sd = {}
    for i, (path, o, n, parts) in enumerate(layers()):
        for j, (part, w) in enumerate(zip(parts, split_widths(o, parts))):
            rank, alpha = rank_alpha(i + j + 2)
            name = kohya(part, "lora_transformer")
            sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = rng.pair(w, n, rank)
            sd[f"{name}.alpha"] = torch.tensor(alpha)
    for i, (kp, _, path, o, n) in enumerate(text_layers()[:6]):
        rank, alpha = rank_alpha(i)
        name = kohya(path, kp)
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = rng.pair(o, n, rank)
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    return sd


def tiny_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=8, patch_size=PATCH, in_channels=IN_CH, num_layers=DEPTH, attention_head_dim=H // 2,
        num_attention_heads=2, joint_attention_dim=CTX, caption_projection_dim=H, pooled_projection_dim=POOLED,
        out_channels=IN_CH, pos_embed_max_size=8, dual_attention_layers=ATTN2,
    )


def sai_checkpoint(weights):
    """A full SAI-layout state dict of the tiny MMDiT: `weights[path]` for the layers given, zeros
    (shaped out × 1, or the conv's shape) elsewhere, zero biases, a zero pos_embed."""
    sd = {"pos_embed": torch.zeros(1, 16, H)}
    for path, o, n, _ in layers():
        if path in weights:
            w = weights[path]
        else:
            w = torch.zeros(o, IN_CH, PATCH, PATCH) if isinstance(n, tuple) else torch.zeros(o, 1)
        sd[f"{path}.weight"], sd[f"{path}.bias"] = w, torch.zeros(o)
    return sd


def diffusers_checkpoint_view(weights):
    """diffusers' own SD3 checkpoint conversion of a SAI dict holding `weights` (path → tensor),
    as diffusers module → tensor for the layers given."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    converted = convert_sd3_transformer_checkpoint_to_diffusers(sai_checkpoint(weights))
    wanted = {p for path, _, _, parts in layers() if path in weights for p in parts}
    return {k[: -len(".weight")]: v for k, v in converted.items() if k.endswith(".weight") and k[: -len(".weight")] in wanted}


def check_key_set():
    """The converted SAI dict fits diffusers' model of these shapes exactly (strict load)."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    model = tiny_transformer()
    full = {}
    for path, o, n, _ in layers():
        full[path] = torch.zeros(o, IN_CH, PATCH, PATCH) if isinstance(n, tuple) else torch.zeros(o, n)
    converted = convert_sd3_transformer_checkpoint_to_diffusers(sai_checkpoint(full))
    converted["pos_embed.pos_embed"] = model.pos_embed.pos_embed
    model.load_state_dict(converted, strict=True)


def sai_view(sd, prefix_of, suffixes):
    """(diffusers view, text modules) of a SAI-named file: each MMDiT module's factors through
    diffusers' checkpoint converter (checked against the dense conversion)."""
    down_s, up_s = suffixes
    scaled_up, downs, dense = {}, {}, {}
    text = {}
    for key in sd:
        if not key.endswith(down_s):
            continue
        module = key[: -len(down_s)]
        down, up = sd[key], sd[f"{module}{up_s}"]
        rank = down.shape[0]
        alpha = float(sd.get(f"{module}.alpha", torch.tensor(float(rank))))
        scale = alpha / rank
        path = prefix_of(module)
        if path is None:
            text[module] = (down, up * scale)
            continue
        u = up.reshape(up.shape[0], rank) * scale
        scaled_up[path], downs[path] = u, down
        dense[path] = (u @ down.reshape(rank, -1)).reshape(up.shape[0], *down.shape[1:])
    b = diffusers_checkpoint_view(scaled_up)
    full = diffusers_checkpoint_view(dense)
    view = {}
    for path, _, _, parts in layers():
        if path not in downs:
            continue
        for part in parts:
            down = downs[path]
            a = down.reshape(down.shape[0], -1)
            # A block-diagonal (split_qkv) up keeps every part's columns; B·A is still the part's ΔW.
            delta = (b[part] @ a).reshape(full[part].shape)
            assert (delta - full[part]).abs().max() <= 1e-6, f"{part}: factored and dense conversions differ"
            conv = down.dim() == 4
            view[f"transformer.{part}.lora_A.weight"] = down
            view[f"transformer.{part}.lora_B.weight"] = b[part].reshape(b[part].shape[0], -1, 1, 1) if conv else b[part]
    return view, text


def text_view(text):
    """kohya text-encoder modules under the pipeline's component names (T5 included)."""
    out = {}
    for kp, dp, path, _, _ in text_layers():
        module = kohya(path, kp)
        if module in text:
            down, up = text[module]
            out[f"{dp}.{path}.lora_A.weight"], out[f"{dp}.{path}.lora_B.weight"] = down, up
    return out


def own_view(sd, names):
    """A diffusers-named file's own view: `names(module)` → diffusers module, B × alpha/rank."""
    out = {}
    for key in sd:
        for down_s, up_s in [(".lora_A.weight", ".lora_B.weight"), (".lora_down.weight", ".lora_up.weight")]:
            if key.endswith(down_s):
                module = key[: -len(down_s)]
                down, up = sd[key], sd[f"{module}{up_s}"]
                rank = down.shape[0]
                scale = float(sd.get(f"{module}.alpha", torch.tensor(float(rank)))) / rank
                target = names(module)
                out[f"{target}.lora_A.weight"], out[f"{target}.lora_B.weight"] = down, up * scale
    return out


def onetrainer_name(module):
    if module.startswith("lora_transformer_"):
        flat = module[len("lora_transformer_"):]
        for path, _, _, parts in layers():
            for p in parts:
                if p.replace(".", "_") == flat:
                    return f"transformer.{p}"
        raise KeyError(module)
    for kp, dp, path, _, _ in text_layers():
        if kohya(path, kp) == module:
            return f"{dp}.{path}"
    raise KeyError(module)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/reference/sd3_lora")
    args = ap.parse_args()
    import diffusers

    check_key_set()
    kohya_prefix = lambda m: m[len("lora_unet_"):] if m.startswith("lora_unet_") else None  # noqa: E731
    unet_paths = {kohya(p)[len("lora_unet_"):]: p for p, _, _, _ in layers()}
    files = {
        "kohya": make_kohya(Rng(0)),
        "kohya_split_qkv": make_split_qkv(Rng(1)),
        "comfy": make_comfy(Rng(2)),
        "diffusers": make_diffusers(Rng(3)),
        "onetrainer": make_onetrainer(Rng(4)),
    }
    os.makedirs(args.out, exist_ok=True)
    expected, manifest = {}, {"layouts": {}}
    for layout, sd in files.items():
        metadata = {"ss_base_model_version": "sd3"} if layout.startswith("kohya") else {}
        if layout == "comfy":
            metadata = {"modelspec.architecture": "stable-diffusion-3-5-medium/lora"}
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(args.out, f"{layout}.safetensors"), metadata)
        if layout in ("kohya", "kohya_split_qkv"):
            view, text = sai_view(sd, lambda m: unet_paths[kohya_prefix(m)] if kohya_prefix(m) else None,
                                  (".lora_down.weight", ".lora_up.weight"))
            view.update(text_view(text))
        elif layout == "comfy":
            view, _ = sai_view(sd, lambda m: m[len("diffusion_model."):], (".lora_down.weight", ".lora_up.weight"))
        elif layout == "diffusers":
            view = own_view(sd, lambda m: m)
        else:
            view = own_view(sd, onetrainer_name)
        for key, t in view.items():
            expected[f"{layout}:{key}"] = t.float().contiguous().clone()
        manifest["layouts"][layout] = {
            "tensors": len(sd),
            "diffusers_modules": len({k.rsplit(".lora_", 1)[0] for k in view}),
        }
    save_file(expected, os.path.join(args.out, "expected.safetensors"))
    manifest.update({
        "config": {"hidden": H, "depth": DEPTH, "attn2_blocks": list(ATTN2), "in_channels": IN_CH, "patch": PATCH,
                   "context": CTX, "pooled": POOLED, "time": TIME, "clip_l": list(CLIP_L), "clip_g": list(CLIP_G),
                   "t5": [T5_D, T5_INNER, T5_FF, T5_BLOCKS]},
        "reference": "diffusers.loaders.single_file_utils.convert_sd3_transformer_checkpoint_to_diffusers",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
    })
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(manifest["layouts"], indent=1))


if __name__ == "__main__":
    sys.exit(main())
