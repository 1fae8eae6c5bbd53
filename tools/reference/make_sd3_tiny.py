#!/usr/bin/env python3
"""PyTorch reference fixtures for lorakit's SD3 / SD3.5 MMDiT (tiny widths, SD3 structure).

Three variants of the transformer, as sd-scripts detects them from the keys (spec §13.4):

* sd3m  - SD3 Medium: no q/k norm, no second attention;
* sd35l - SD3.5 Large: RMS q/k norm (`ln_q` / `ln_k`);
* sd35m - SD3.5 Medium (MMDiT-X): RMS q/k norm and a second self-attention (`attn2`) in the
  x blocks of the first layers (here layer 0).

The weights are in SAI's single-file layout (`joint_blocks.N.{context,x}_block.attn.qkv`, the
key paths sd-scripts' LoRA names come from), built with sd-scripts' `library/sd3_models.MMDiT`;
diffusers' `SD3Transformer2DModel` runs the same weights after diffusers' own single-file
converter. For sd3m and sd35l both must agree before anything is written. For sd35m they do
not: sd-scripts' `MMDiTBlock._forward` passes `attn2.num_heads` where its `attention()` expects
the head width, so its second attention splits the features into hidden/num_heads heads of
num_heads features (here 2 heads of 64 become 64 heads of 2) — SAI's reference `mmditx.py` and
diffusers use num_heads heads. The reference for sd35m is diffusers (the model as published and as
ComfyUI runs it); sd-scripts' output is stored beside it (`sd35m.out_sd_scripts`) to show the
difference.

Sizes: sd-scripts ties the width to the depth (hidden = 64·depth, heads = depth), so depth 2 gives
hidden 128, 2 heads of 64 (the last block's context side is "pre_only", as in every SD3); patch 2, pos_embed_max_size 7 (an odd grid, so centre cropping is
checked off-centre), context width 36 (T5's 4096), pooled width 40 (CLIP-L + G's 2048). Inputs: a
(2, 16, 6, 4) latent (3 x 2 patches), timesteps (2) on sd-scripts' 0..1000 scale, pooled (2, 40),
context (2, 5, 36).

The weights are rounded to f16 before anything runs and stored in f16 (half the size; the
computation is f32 on those values). Writes tests/fixtures/reference/sd3_tiny/:
`<variant>.safetensors` (SAI layout, f16) and
`io.safetensors` (inputs; `<variant>.out` outputs; `<variant>.c`, the conditioning vector;
`<variant>.block<N>.x` / `.context`, every joint block's outputs from sd-scripts (sd3m, sd35l)).

Run from the repository root (sd-scripts at 48d368f on PYTHONPATH, diffusers 0.32.1):

    PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/make_sd3_tiny.py

Deterministic: fixed seeds, float32 CPU compute, one thread.
"""
import os

import torch
from safetensors.torch import save_file

from diffusers import SD3Transformer2DModel
from diffusers.loaders import single_file_utils as sfu
from library import sd3_models

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

OUT = os.path.join("tests", "fixtures", "reference", "sd3_tiny")
DEPTH, PATCH, POS_MAX = 2, 2, 7
CTX_DIM, POOLED_DIM = 36, 40
VARIANTS = {"sd3m": (None, []), "sd35l": ("rms", []), "sd35m": ("rms", [0])}


def make(name: str, seed: int) -> sd3_models.MMDiT:
    qk_norm, attn2 = VARIANTS[name]
    params = sd3_models.SD3Params(
        patch_size=PATCH,
        depth=DEPTH,
        num_patches=POS_MAX * POS_MAX,
        pos_embed_max_size=POS_MAX,
        adm_in_channels=POOLED_DIM,
        qk_norm=qk_norm,
        x_block_self_attn_layers=attn2,
        context_embedder_in_features=CTX_DIM,
        context_embedder_out_features=64 * DEPTH,
        model_type=name,
    )
    torch.manual_seed(seed)
    model = sd3_models.create_sd3_mmdit(params, attn_mode="torch").float().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("ln_q.weight") or pname.endswith("ln_k.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                # Zero-initialised layers (adaLN, final) must matter: random everywhere.
                p.copy_(torch.randn_like(p) * (0.5 / max(p.shape[-1], 1) ** 0.5 if p.dim() > 1 else 0.1))
        model.pos_embed.copy_(torch.randn_like(model.pos_embed) * 0.5)
        for t in list(model.parameters()) + list(model.buffers()):
            t.copy_(t.half().float())
    return model


def to_diffusers(model: sd3_models.MMDiT, name: str) -> SD3Transformer2DModel:
    qk_norm, attn2 = VARIANTS[name]
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    converted = sfu.convert_sd3_transformer_checkpoint_to_diffusers(sd)
    dm = SD3Transformer2DModel(
        sample_size=POS_MAX * PATCH,
        patch_size=PATCH,
        in_channels=16,
        num_layers=DEPTH,
        attention_head_dim=64,
        num_attention_heads=DEPTH,
        joint_attention_dim=CTX_DIM,
        caption_projection_dim=64 * DEPTH,
        pooled_projection_dim=POOLED_DIM,
        out_channels=16,
        pos_embed_max_size=POS_MAX,
        dual_attention_layers=tuple(attn2),
        qk_norm="rms_norm" if qk_norm else None,
    ).float().eval()
    dm.load_state_dict(converted, strict=True)
    return dm


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    inputs = {
        "x": torch.randn(2, 16, 6, 4, generator=g),
        "t": torch.tensor([250.0, 937.5]),
        "y": torch.randn(2, POOLED_DIM, generator=g),
        "context": torch.randn(2, 5, CTX_DIM, generator=g),
    }
    io = dict(inputs)
    for seed, name in enumerate(VARIANTS, start=1):
        model = make(name, seed)
        captured = {}

        def grab(i):
            def hook(_m, _args, output):
                ctx, x = output
                captured[f"{name}.block{i}.x"] = x.detach()
                if ctx is not None:
                    captured[f"{name}.block{i}.context"] = ctx.detach()

            return hook

        handles = [b.register_forward_hook(grab(i)) for i, b in enumerate(model.joint_blocks)]
        with torch.no_grad():
            out_sd = model(inputs["x"], inputs["t"], y=inputs["y"], context=inputs["context"])
            c = model.t_embedder(inputs["t"], dtype=torch.float32) + model.y_embedder(inputs["y"])
        for h in handles:
            h.remove()
        dm = to_diffusers(model, name)
        with torch.no_grad():
            out_dm = dm(
                hidden_states=inputs["x"],
                encoder_hidden_states=inputs["context"],
                pooled_projections=inputs["y"],
                timestep=inputs["t"],
            ).sample
        diff = (out_sd - out_dm).abs().max().item()
        print(f"{name}: sd-scripts vs diffusers max diff {diff:.3e}, |out| max {out_dm.abs().max().item():.3f}")
        if name == "sd35m":
            assert diff > 1e-3, "sd-scripts' attn2 head split was expected to differ"
            io[f"{name}.out_sd_scripts"] = out_sd
        else:
            assert diff < 1e-5, diff
            io.update(captured)
        io[f"{name}.out"] = out_dm
        io[f"{name}.c"] = c
        save_file({k: v.contiguous().half() for k, v in model.state_dict().items()}, os.path.join(OUT, f"{name}.safetensors"))
    save_file({k: v.contiguous().float() for k, v in io.items()}, os.path.join(OUT, "io.safetensors"))


if __name__ == "__main__":
    main()
