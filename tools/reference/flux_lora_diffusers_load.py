#!/usr/bin/env python3
"""Do Flux LoRAs that `lorakit convert --to diffusers` writes load in diffusers, whole and right?

For every layout of tests/fixtures/reference/flux_lora (see flux_lora_layouts_fixture.py) the
lorakit binary converts the file to diffusers names and `lorakit resize --rank 8` gives every module
rank 8 (exact here: no module has a larger rank; see "Ranks" below); the result is loaded the way
`FluxPipeline.load_lora_weights` loads it (`FluxPipeline.lora_state_dict`,
`load_lora_into_transformer`, `load_lora_into_text_encoder`) into a tiny `FluxTransformer2DModel`
(hidden 48 = 2 heads × 24, 2 double + 3 single blocks, in/out channels 12, context 20, pooled 16,
guidance embedding) and a tiny `CLIPTextModel` (32 wide, 2 layers, MLP 37) — the fixture's
shapes. Checked, per layout:

* every transformer / CLIP-L module of the file became a PEFT LoRA layer of the model (nothing
  unused), and every other LoRA layer PEFT made has ΔW = 0 (PEFT targets modules by name suffix,
  so a top-level `proj_out` also puts zero layers on the single blocks' `proj_out`s);
* each layer's ΔW (`get_delta_weight`) equals diffusers' own conversion of the original file
  (`expected.safetensors`) to ≤1e-5.

T5 modules (`text_encoder_2.…`, from the kohya layout's `lora_te3_`) are counted and reported:
FluxPipeline does not load T5 LoRAs. Exits 1 on any mismatch.

Ranks: diffusers 0.32.1 gives PEFT one rank per file plus a `rank_pattern` of module names, and
peft 0.14 matches a pattern only behind a `.` (`.*\.{key}$`), so top-level modules
(`transformer_blocks.0.attn.to_q`, `proj_out`) never match and a file whose ranks differ between
modules fails to load (size mismatch); `proj_out` is also ambiguous with the single blocks'
`proj_out`. The fixture's ranks vary on purpose, hence the uniform-rank resize; the script also
tries the converted file as is and reports whether diffusers took it.

Run (after `cargo build -p lorakit`):
    /work/bench/venv/bin/python tools/reference/flux_lora_diffusers_load.py [--lorakit target/debug/lorakit]
(torch 2.6.0 CPU, diffusers 0.32.1, peft 0.14.0, transformers 4.54.1; a few seconds.)
"""

import argparse
import logging
import pathlib
import subprocess
import sys
import tempfile

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests/fixtures/reference/flux_lora"
LAYOUTS = ["kohya", "kohya_split_qkv", "comfy", "diffusers", "diffusers_variants", "xlabs", "bfl", "kohya_diffusers_names"]


def tiny_models():
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=12, num_layers=2, num_single_layers=3, attention_head_dim=24,
        num_attention_heads=2, joint_attention_dim=20, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(4, 10, 10),
    )
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=32,
    ))
    return transformer.eval(), clip.eval()


def expected(layout):
    """diffusers' ΔW of each module of the original file (flux_lora_layouts_fixture.py)."""
    out = {}
    with safe_open(FIXTURE / "expected.safetensors", "pt") as f:
        keys = [k for k in f.keys() if k.startswith(f"{layout}:")]
        for key in keys:
            if not key.endswith(".lora_A.weight"):
                continue
            module = key[len(layout) + 1: -len(".lora_A.weight")]
            a = f.get_tensor(key).double()
            b = f.get_tensor(f"{layout}:{module}.lora_B.weight").double()
            delta = b @ a
            alpha_key = f"{layout}:{module}.alpha"
            if alpha_key in keys:
                delta = delta * (float(f.get_tensor(alpha_key)) / a.shape[0])
            out[module] = delta
    return out


def lora_layers(model, prefix):
    return {f"{prefix}.{n}": m for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0}


def check(path, layout):
    transformer, clip = tiny_models()
    state_dict, alphas = FluxPipeline.lora_state_dict(str(path), return_alphas=True)
    file_modules = {k.rsplit(".lora_", 1)[0] for k in load_file(path)}
    t5 = sorted(m for m in file_modules if m.startswith("text_encoder_2."))
    FluxPipeline.load_lora_into_transformer(state_dict, alphas, transformer, adapter_name="lorakit")
    if any(k.startswith("text_encoder.") for k in state_dict):
        FluxPipeline.load_lora_into_text_encoder(state_dict, alphas, clip, prefix="text_encoder", adapter_name="lorakit")
    layers = {**lora_layers(transformer, "transformer"), **lora_layers(clip, "text_encoder")}
    wanted = {m for m in file_modules if not m.startswith("text_encoder_2.")}
    problems = []
    if wanted - set(layers):
        problems.append(f"not loaded: {sorted(wanted - set(layers))[:5]}")
    # PEFT targets modules by name suffix: a top-level `proj_out` also gets (zero, B = 0) layers
    # on the single blocks' `proj_out`s; those must stay zero.
    extra = sorted(set(layers) - wanted)
    for name in extra:
        if layers[name].get_delta_weight("lorakit").abs().max() > 0:
            problems.append(f"{name}: a LoRA layer the file does not name, with nonzero ΔW")
    exp = expected(layout)
    worst = 0.0
    for name, layer in layers.items():
        delta = layer.get_delta_weight("lorakit").double()
        if name not in exp:
            if delta.abs().max() > 0:  # a part diffusers lacks is zero in the original's view
                problems.append(f"{name}: not in diffusers' conversion of the original but nonzero")
            continue
        worst = max(worst, (delta - exp[name]).abs().max().item())
    missing = sorted(set(exp) - set(layers))
    if missing:
        problems.append(f"diffusers' conversion has modules the lorakit file lacks: {missing[:5]}")
    if worst > 1e-5:
        problems.append(f"ΔW differs by {worst:.3g}")
    return len(layers) - len(extra), len(t5), worst, problems, len(extra)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lorakit", default=str(ROOT / "target/debug/lorakit"))
    args = ap.parse_args()
    logging.disable(logging.CRITICAL)  # the direct loads of mixed-rank files log their size mismatches
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for layout in LAYOUTS:
            src = FIXTURE / f"{layout}.safetensors"
            if layout == "diffusers":
                path = src
            else:
                path = pathlib.Path(tmp) / f"{layout}.safetensors"
                run = subprocess.run(
                    [args.lorakit, "convert", str(src), str(path), "--to", "diffusers"], capture_output=True, text=True,
                )
                if run.returncode != 0:
                    print(f"{layout}: lorakit convert failed: {run.stderr.strip()}")
                    failed = True
                    continue
            try:
                check(path, layout)
                direct = "as converted: loads"
            except RuntimeError as e:
                direct = "as converted: " + ("rank mismatch (mixed ranks)" if "size mismatch" in str(e) else str(e)[:80])
            uniform = pathlib.Path(tmp) / f"{layout}-r8.safetensors"
            run = subprocess.run(
                [args.lorakit, "resize", str(path), str(uniform), "--rank", "8"], capture_output=True, text=True,
            )
            if run.returncode != 0:
                print(f"{layout}: lorakit resize failed: {run.stderr.strip()}")
                failed = True
                continue
            loaded, t5, worst, problems, extra = check(uniform, layout)
            status = "ok" if not problems else "FAIL: " + "; ".join(problems)
            t5_note = f", {t5} T5 modules not loaded by FluxPipeline" if t5 else ""
            if extra:
                t5_note += f", {extra} zero layers PEFT added by name suffix"
            print(f"{layout:22} {loaded:3} LoRA layers, max |ΔW - diffusers'| {worst:.2e}{t5_note} [{direct}]: {status}")
            failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
