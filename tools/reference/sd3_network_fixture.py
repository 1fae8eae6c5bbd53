#!/usr/bin/env python3
"""sd-scripts reference for SD3's LoRA module choice and the MMDiT's training-side position options.

Makes tests/fixtures/reference/sd3_network/ for crates/lorakit-models/tests/sd3_network.rs:

* `modules.json`
  - `tiny`: sd-scripts' `networks/lora_sd3.create_network` on tiny MMDiTs with the structure of
    tests/fixtures/reference/sd3_tiny/ (`sd3m`: SD3 Medium's layout; `sd35m`: q/k norms and a
    second attention in block 0), for many argument sets (`type_dims`, `emb_dims`, `conv_dim`,
    `train_block_indices`, `split_qkv`, network_dim/alpha): every module as
    [name, in, out, kernel (0: linear), dim, alpha, split_dims or null], in creation order.
  - `full`: the same for the full-size SD3 Medium, SD3.5 Medium and SD3.5 Large (built on the
    meta device, no weights) for a few argument sets, and `parameters`: every state-dict key and
    shape of each.
* `pos_embed.safetensors` + `pos_embed.json`: sd-scripts' `get_scaled_2d_sincos_pos_embed`
  tables; `enable_scaled_pos_embed`'s `resolution_area_to_latent_size` for several latent-size
  lists; `sd3_train_network.load_target_model`'s latent sizes from resolutions
  (`round(sqrt(w*h)) // 8`, the expression copied from there); a sequence of
  `cropped_scaled_pos_embed` calls on one model (centre and seeded random crops, including
  images too tall for their table, which add tables) with the area list after each; seeded
  random crops of the learned table (`cropped_pos_embed(random_crop=True)`). For each seeded
  crop the top/left torch drew (recorded from its `torch.randint` calls) is stored.
* `forward.safetensors` + `forward.json`: sd-scripts' `MMDiT.forward` on the sd3_tiny weights
  (read from tests/fixtures/reference/sd3_tiny/, f16 values in f32) with
  `pos_emb_random_crop_rate = 1` (seeded; the drawn top/left recorded), with
  `enable_scaled_pos_embed` (latent sizes [4, 6, 10]: the 3x2-patch input picks the 3x3 table
  of size 2), and both (latent sizes [6, 10]: the 4x4 table of size 3, room to crop; seeds
  whose crop is off-centre); and with a LoRA on every default module plus every `emb_dims`
  layer (incl. the x_embedder conv: down p x p stride p, up 1x1), up weights random so it
  matters (`lora_sd3m.safetensors`: the factors in f16, exact, and the alphas), with the
  gradients of the emb_dims modules' factors for sum(out * probe).
* `block_grads.safetensors` + `block_grads.json`: sd-scripts' LoRA on the joint blocks' modules
  (attn qkv / proj, mlp fc1 / fc2, adaLN modulation; SD3.5 Medium's attn2; the last block's
  pre-only context side) of the tiny models, for several argument sets (`split_qkv` on and
  off), rank 2 so the fixture stays small: the factors (`<run>:<module>.lora_down[.i].weight`,
  f16 values, exact), alphas, the output and the gradient of every factor for sum(out * probe)
  (`<run>:grad:<factor key>`). The JSON lists each run's variant, dim, alpha, kwargs and
  modules in sd-scripts' order.
  sd35m runs with sd-scripts' second-attention head split corrected (`attn2.num_heads` set to
  the head width, which is what its `attention()` call passes as head width; see
  make_sd3_tiny.py), so only the option under test differs from the published model.

Versions: sd-scripts 48d368f (/work/bench/sd-scripts), torch 2.6 CPU, numpy 2.x. Run from the
repository root:

    PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/sd3_network_fixture.py

Deterministic: fixed seeds, float32 CPU compute.
"""
import json
import logging
import math
import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from library import sd3_models
from networks import lora_sd3

logging.disable(logging.CRITICAL)
torch.set_num_threads(1)

OUT = os.path.join("tests", "fixtures", "reference", "sd3_network")
TINY = os.path.join("tests", "fixtures", "reference", "sd3_tiny")


def params(depth, pos_max, adm, ctx, qk_norm, attn2, model_type):
    return sd3_models.SD3Params(
        patch_size=2,
        depth=depth,
        num_patches=pos_max * pos_max,
        pos_embed_max_size=pos_max,
        adm_in_channels=adm,
        qk_norm=qk_norm,
        x_block_self_attn_layers=attn2,
        context_embedder_in_features=ctx,
        context_embedder_out_features=64 * depth,
        model_type=model_type,
    )


# The sd3_tiny fixture's shapes (make_sd3_tiny.py).
TINY_PARAMS = {
    "sd3m": params(2, 7, 40, 36, None, [], "sd3m"),
    "sd35l": params(2, 7, 40, 36, "rms", [], "sd35l"),
    "sd35m": params(2, 7, 40, 36, "rms", [0], "sd35m"),
}
# The released models, as sd3_utils.analyze_state_dict_state reads their files.
FULL_PARAMS = {
    "sd3_medium": params(24, 192, 2048, 4096, None, [], "medium"),
    "sd35_medium": params(24, 384, 2048, 4096, "rms", list(range(13)), "5-medium"),
    "sd35_large": params(38, 192, 2048, 4096, "rms", [], "5-large"),
}

# (name, network_dim, network_alpha, kwargs) for the tiny models.
TINY_SETS = [
    ("default", 4, 1.0, {}),
    ("dim8_alpha4", 8, 4.0, {}),
    ("type_dims", 4, 1.0, {"context_attn_dim": "8", "x_mlp_dim": "0", "x_mod_dim": "2"}),
    ("x_attn_dim", 4, 1.0, {"x_attn_dim": "3"}),
    ("context_off", 4, 1.0, {"context_attn_dim": "0", "context_mlp_dim": "0", "context_mod_dim": "0"}),
    ("emb_dims", 4, 2.0, {"emb_dims": "[4,0,2,3,0,5]"}),
    ("emb_dims_all", 4, 1.0, {"emb_dims": "4,4,4,4,4,4"}),
    ("emb_conv_dim", 4, 1.0, {"emb_dims": "[4,4,4,4,4,4]", "conv_dim": "6", "conv_alpha": "2"}),
    ("emb_conv_dim_x0", 4, 1.0, {"emb_dims": "[4,4,0,4,4,4]", "conv_dim": "6"}),
    ("emb_conv_dim0", 4, 1.0, {"emb_dims": "[4,4,4,4,4,4]", "conv_dim": "0"}),
    ("conv_dim_only", 4, 1.0, {"conv_dim": "6"}),
    ("blocks_1", 4, 1.0, {"train_block_indices": "1"}),
    ("blocks_0_1", 4, 1.0, {"train_block_indices": "0-1"}),
    ("blocks_none", 4, 1.0, {"train_block_indices": "none"}),
    ("blocks_all", 4, 1.0, {"train_block_indices": "all"}),
    ("blocks_past_depth", 4, 1.0, {"train_block_indices": "5-900"}),
    ("split_qkv", 4, 1.0, {"split_qkv": "True"}),
    ("split_qkv_lowercase", 4, 1.0, {"split_qkv": "true"}),
    ("combined", 4, 1.0, {
        "train_block_indices": "0", "context_attn_dim": "0", "x_attn_dim": "2",
        "emb_dims": "[1,1,1,1,1,1]", "split_qkv": "True",
    }),
]
FULL_SETS = [
    ("default", 4, 1.0, {}),
    ("emb_split", 4, 1.0, {"emb_dims": "[4,4,4,4,4,4]", "split_qkv": "True", "train_block_indices": "0-3,20"}),
]


def rows(network):
    out = []
    for lora in network.unet_loras:
        org = lora.org_module
        if org.__class__.__name__ == "Conv2d":
            i, o, k = org.in_channels, org.out_channels, org.kernel_size[0]
        else:
            i, o, k = org.in_features, org.out_features, 0
        alpha = float(lora.alpha.item())
        out.append([lora.lora_name, i, o, k, lora.lora_dim, alpha, lora.split_dims])
    return out


def create(model, dim, alpha, kwargs):
    return lora_sd3.create_network(1.0, dim, alpha, None, [], model, **kwargs)


def dump_rows(doc):
    """JSON with one module or parameter row per line (small diffs, readable)."""

    def fmt(v, indent):
        pad = " " * indent
        if isinstance(v, dict):
            items = [f'{pad} {json.dumps(k)}: {fmt(x, indent + 1)}' for k, x in v.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(v, list) and v and all(isinstance(x, list) for x in v):
            return "[\n" + ",\n".join(pad + " " + json.dumps(x) for x in v) + "\n" + pad + "]"
        return json.dumps(v)

    return fmt(doc, 0)


def modules():
    tiny = {}
    for variant in ("sd3m", "sd35m"):
        with torch.device("meta"):
            model = sd3_models.create_sd3_mmdit(TINY_PARAMS[variant])
        tiny[variant] = {name: rows(create(model, d, a, kw)) for name, d, a, kw in TINY_SETS}
    full, parameters = {}, {}
    for variant, p in FULL_PARAMS.items():
        with torch.device("meta"):
            model = sd3_models.create_sd3_mmdit(p)
        full[variant] = {name: rows(create(model, d, a, kw)) for name, d, a, kw in FULL_SETS}
        parameters[variant] = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    doc = {
        "source": "sd-scripts networks/lora_sd3.create_network(1.0, dim, alpha, None, [], mmdit, **kwargs)",
        "row": "[name, in, out, kernel (0: linear), dim, alpha, split_dims]",
        "tiny_sets": [[n, d, a, kw] for n, d, a, kw in TINY_SETS],
        "full_sets": [[n, d, a, kw] for n, d, a, kw in FULL_SETS],
        "tiny": tiny,
        "full": full,
        "parameters": parameters,
    }
    with open(os.path.join(OUT, "modules.json"), "w") as f:
        f.write(dump_rows(doc) + "\n")


class Draws:
    """Records what sd-scripts' `torch.randint` calls draw (the crop's top and left)."""

    def __enter__(self):
        self.values, self._orig = [], torch.randint

        def randint(low, high, size, *a, **k):
            out = self._orig(low, high, size, *a, **k)
            self.values.append(out.item())
            return out

        torch.randint = randint
        return self

    def __exit__(self, *exc):
        torch.randint = self._orig


def pos_embed():
    tensors, doc = {}, {}
    tables = [(48, 15, 10), (128, 3, 2), (128, 7, 5), (32, 9, 6)]
    for dim, grid, size in tables:
        t = sd3_models.get_scaled_2d_sincos_pos_embed(dim, grid, sample_size=size)
        tensors[f"scaled.{dim}.{grid}.{size}"] = torch.from_numpy(t).float()
    doc["scaled_tables"] = tables

    area_lists = [[64], [128, 96, 128, 64], [4, 6, 10], [65, 64, 100], [128, 136, 144, 160, 192]]
    doc["area_to_size"] = []
    for sizes in area_lists:
        with torch.device("meta"):
            m = sd3_models.create_sd3_mmdit(TINY_PARAMS["sd3m"])
        m.pos_embed = torch.zeros(1, 49, 128)
        m.enable_scaled_pos_embed(True, sizes)
        doc["area_to_size"].append([sizes, [list(x) for x in m.resolution_area_to_latent_size]])

    resolutions = [[(1024, 1024)], [(512, 768), (1024, 1024), (1023, 1025)], [(640, 640), (768, 512)], [(100, 50)]]
    doc["latent_sizes"] = [
        [r, sorted(set(round(math.sqrt(w * h)) // 8 for w, h in r))] for r in resolutions
    ]

    # One model, a sequence of calls (state carries over: new tables join the list).
    model = sd3_models.create_sd3_mmdit(TINY_PARAMS["sd3m"]).float()
    model.enable_scaled_pos_embed(True, [4, 6, 10])
    calls = [
        # (H, W in latent pixels, seed or None for centre)
        (6, 4, None),
        (6, 4, 11),
        (10, 10, None),
        (12, 2, None),  # 6x1 patches: area 6 picks size 2 (3x3 table), too tall -> adds size 6 (9x9)
        (14, 8, None),  # 7x4 = 28 <= 56 -> size 5 (7x7) fits
        (16, 8, None),  # 8x4 = 32 -> size 5, 8 > 7 -> adds size 8 (12x12)
        (16, 8, 5),
        (18, 8, None),  # 9x4 = 36 -> size 5 (7x7), 9 > 7 -> adds size 9 (13x13)
        (2, 14, 3),  # 1x7 = 7 -> size 5? (7 <= 17) fits 7
        (16, 16, None),  # 8x8 = 64 -> picks size 6 (area 81) since the list grew: 9x9 table
    ]
    doc["scaled_calls"] = []
    for i, (hh, ww, seed) in enumerate(calls):
        top_left = None
        if seed is None:
            out = model.cropped_scaled_pos_embed(hh, ww, device="cpu", dtype=torch.float32)
        else:
            torch.manual_seed(seed)
            with Draws() as d:
                out = model.cropped_scaled_pos_embed(hh, ww, device="cpu", dtype=torch.float32, random_crop=True)
            top_left = d.values
        tensors[f"scaled_call.{i}"] = out[0].float()
        doc["scaled_calls"].append([hh, ww, top_left, [list(x) for x in model.resolution_area_to_latent_size]])

    # The learned table, random crops.
    weights = load_file(os.path.join(TINY, "sd3m.safetensors"))
    model = sd3_models.create_sd3_mmdit(TINY_PARAMS["sd3m"]).float()
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    doc["learned_calls"] = []
    for i, (hh, ww, seed) in enumerate([(6, 4, 1), (6, 4, 2), (14, 2, 3), (2, 14, 4), (14, 14, 5)]):
        torch.manual_seed(seed)
        with Draws() as d:
            out = model.cropped_pos_embed(hh, ww, device="cpu", random_crop=True)
        tensors[f"learned_call.{i}"] = out[0].float()
        doc["learned_calls"].append([hh, ww, d.values])

    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, os.path.join(OUT, "pos_embed.safetensors"))
    with open(os.path.join(OUT, "pos_embed.json"), "w") as f:
        json.dump(doc, f)
        f.write("\n")


def tiny_model(variant):
    model = sd3_models.create_sd3_mmdit(TINY_PARAMS[variant], attn_mode="torch").float().eval()
    weights = load_file(os.path.join(TINY, f"{variant}.safetensors"))
    model.load_state_dict({k: v.float() for k, v in weights.items()})
    if variant == "sd35m":
        for block in model.joint_blocks:
            if block.x_block.x_block_self_attn:
                # sd-scripts passes attn2.num_heads where attention() takes the head width.
                block.x_block.attn2.num_heads = block.x_block.attn2.head_dim
    return model


def forward():
    io = load_file(os.path.join(TINY, "io.safetensors"))
    inputs = (io["x"], io["t"])
    kw = {"y": io["y"], "context": io["context"]}
    tensors, doc = {}, {"runs": []}
    runs = [
        # (variant, random crop seed or None, scaled latent sizes or None)
        ("sd3m", 21, None),
        ("sd3m", None, [4, 6, 10]),
        ("sd35l", 26, [6, 10]),
        ("sd35m", None, None),
        ("sd35m", 23, None),
        ("sd35m", None, [4, 6, 10]),
        ("sd35m", 28, [6, 10]),
    ]
    for variant, seed, sizes in runs:
        model = tiny_model(variant)
        name = f"{variant}.{'crop' if seed is not None else 'centre'}.{'scaled' if sizes else 'learned'}"
        if sizes:
            model.enable_scaled_pos_embed(True, sizes)
        if seed is not None:
            model.set_pos_emb_random_crop_rate(1.0)
            torch.manual_seed(seed)
        with torch.no_grad(), Draws() as d:
            tensors[name] = model(*inputs, **kw)
        top_left = d.values or None
        assert (top_left is None) == (seed is None)
        if top_left is not None:
            # A crop away from the centre, so the run tests the crop. The 3x2-patch input takes
            # the 7x7 learned grid, or with latent sizes [6, 10] the 4x4 table of size 3.
            side = 4 if sizes else 7
            assert top_left != [(side - 3) // 2, (side - 2) // 2], (name, top_left)
        doc["runs"].append([name, variant, top_left, sizes])
    # sd35m with centred learned table must equal diffusers' (the published model).
    err = (tensors["sd35m.centre.learned"] - io["sd35m.out"]).abs().max().item()
    assert err < 1e-5, f"corrected sd-scripts sd35m differs from diffusers by {err}"

    # LoRA on the default modules and every emb_dims layer (sd3m).
    model = tiny_model("sd3m")
    network = create(model, 4, 2.0, {"emb_dims": "[4,4,4,4,4,4]"})
    network.apply_to([], model, apply_text_encoder=False, apply_unet=True)
    g = torch.Generator().manual_seed(31)
    lora = {}
    with torch.no_grad():
        for m in network.unet_loras:
            for part in ("lora_down", "lora_up"):
                w = getattr(m, part).weight
                w.copy_((torch.randn(w.shape, generator=g) * 0.3).half().float())
                lora[f"{m.lora_name}.{part}.weight"] = w.clone()
            lora[f"{m.lora_name}.alpha"] = m.alpha.clone().float()
        tensors["lora.sd3m"] = model(*inputs, **kw)
    # Gradients of the emb_dims modules for sum(out * probe) (the training path).
    probe = torch.randn(tensors["lora.sd3m"].shape, generator=g)
    (model(*inputs, **kw) * probe).sum().backward()
    tensors["lora.probe"] = probe
    for m in network.unet_loras:
        if "joint_blocks" not in m.lora_name:
            for part in ("lora_down", "lora_up"):
                tensors[f"grad.{m.lora_name}.{part}"] = getattr(m, part).weight.grad.clone()
    # f16 holds the (f16-rounded) factors exactly; the alphas stay f32.
    save_file(
        {k: v.contiguous() if k.endswith("alpha") else v.contiguous().half() for k, v in lora.items()},
        os.path.join(OUT, "lora_sd3m.safetensors"),
    )
    doc["lora_modules"] = [m.lora_name for m in network.unet_loras]
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "forward.safetensors"))
    with open(os.path.join(OUT, "forward.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


# (run, variant, network_dim, network_alpha, kwargs): the joint blocks' LoRA whose factor
# gradients are checked: every block module of SD3.5 Medium's layout (q/k norms, attn2), and
# split_qkv (attn / attn2 qkv as q, k, v pairs) on it and on SD3 Medium's (no norms). The
# split_qkv runs keep the attention modules only (the others are those of the first run), which
# keeps the file small.
ATTN_ONLY = {"context_mlp_dim": "0", "context_mod_dim": "0", "x_mlp_dim": "0", "x_mod_dim": "0"}
GRAD_RUNS = [
    ("sd35m", "sd35m", 2, 1.0, {}),
    ("sd35m.split_qkv", "sd35m", 2, 3.0, {"split_qkv": "True", **ATTN_ONLY}),
    ("sd3m.split_qkv", "sd3m", 2, 1.0, {"split_qkv": "True", **ATTN_ONLY}),
]


def block_gradients():
    io = load_file(os.path.join(TINY, "io.safetensors"))
    inputs = (io["x"], io["t"])
    kw = {"y": io["y"], "context": io["context"]}
    tensors, doc = {}, {"source": "sd-scripts networks/lora_sd3 on MMDiT.forward; gradients of sum(out * probe)",
                        "runs": []}
    for run, variant, dim, alpha, kwargs in GRAD_RUNS:
        model = tiny_model(variant)
        network = create(model, dim, alpha, kwargs)
        network.apply_to([], model, apply_text_encoder=False, apply_unet=True)
        assert all("joint_blocks" in m.lora_name for m in network.unet_loras)
        g = torch.Generator().manual_seed(41)
        params = {}
        with torch.no_grad():
            for m in network.unet_loras:
                for key, p in m.named_parameters():
                    # lora_down.weight, or lora_down.<i>.weight for split_qkv's parts.
                    p.copy_((torch.randn(p.shape, generator=g) * 0.3).half().float())
                    params[f"{m.lora_name}.{key}"] = p
                tensors[f"{run}:{m.lora_name}.alpha"] = m.alpha.clone().float()
        out = model(*inputs, **kw)
        probe = torch.randn(out.shape, generator=g)
        (out * probe).sum().backward()
        tensors[f"{run}:out"] = out.detach()
        tensors[f"{run}:probe"] = probe
        for key, p in params.items():
            tensors[f"{run}:{key}"] = p.detach().clone().half()
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            # The last block's context side is pre-only: its outputs are dropped after the joint
            # attention, so the context queries (split_qkv's part 0) get no gradient at all.
            last_q = f"joint_blocks_{len(model.joint_blocks) - 1}_context_block_attn_qkv.lora_"
            assert (grad.abs().max() > 0) != (last_q in key and key.endswith(".0.weight")), (run, key)
            tensors[f"{run}:grad:{key}"] = grad.clone()
        if kwargs.get("split_qkv") == "True":
            assert any(m.split_dims for m in network.unet_loras), run
        doc["runs"].append([run, variant, dim, alpha, kwargs, [m.lora_name for m in network.unet_loras]])
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "block_grads.safetensors"))
    with open(os.path.join(OUT, "block_grads.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    np.seterr(all="raise")
    modules()
    pos_embed()
    forward()
    block_gradients()
    print("wrote", OUT, sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
