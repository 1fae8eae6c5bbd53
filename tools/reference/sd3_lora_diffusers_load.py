#!/usr/bin/env python3
"""Do the SD3 LoRAs `lorakit convert --to diffusers` writes load in diffusers, whole and right?

For every layout of tests/fixtures/reference/sd3_lora (see sd3_lora_layouts_fixture.py) but the
diffusers one, the lorakit binary converts the file to diffusers names; the result (and the
fixture's own diffusers file) is loaded with `StableDiffusion3Pipeline.load_lora_weights` into a
tiny pipeline of the fixture's shapes (SD3Transformer2DModel hidden 16, 3 blocks, attn2 in block
0; CLIP-L- and CLIP-G-shaped `CLIPTextModelWithProjection`s; a T5-shaped encoder). Checked per file:

* diffusers and PEFT log no warning (unexpected / missing keys, …) while loading, but the
  "No LoRA keys associated to … with the prefix='text_encoder'" note for a component the file
  has no module of;
* every transformer / CLIP-L / CLIP-G module of the file became a PEFT LoRA layer of the
  pipeline's models, and every other LoRA layer PEFT made (it targets modules by name suffix)
  has ΔW = 0;
* each layer's ΔW (`get_delta_weight`) equals the fixture's expected.safetensors (diffusers' SD3
  checkpoint conversion of the original file's deltas) to ≤1e-6.

T5 modules (`text_encoder_3.…`) are counted: StableDiffusion3Pipeline does not load T5 LoRAs.
The kohya file is also given to `load_lora_weights` as published, to record what diffusers does
with it (diffusers has no SD3 kohya converter: nothing is loaded).

Writes tests/fixtures/reference/sd3_lora/diffusers_load.json with the sha256 of every file that
was loaded; crates/lorakit-lora/tests/sd3_layouts.rs converts the fixtures again and checks that
lorakit still writes exactly those files (regenerate with this script when the output changes on
purpose). Exits 1 on any problem.

Run (after `cargo build -p lorakit`):
    PYTHONPATH=/work/bench/py42 /work/bench/venv/bin/python tools/reference/sd3_lora_diffusers_load.py \\
        [--lorakit target/debug/lorakit]
(torch 2.6.0 CPU, diffusers 0.42.1, peft 0.21.2, transformers 5.25; a few seconds.)
"""

import argparse
import hashlib
import json
import logging
import pathlib
import re
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests/fixtures/reference/sd3_lora"
sys.path.insert(0, str(ROOT / "tools/reference"))
import sd3_lora_layouts_fixture as fx  # noqa: E402

LAYOUTS = ["kohya", "kohya_split_qkv", "comfy", "onetrainer", "diffusers"]

warnings = []


class Capture(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())


def pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(0)

    def clip(width, mlp, layers):
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=100, hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=2,
            max_position_embeddings=16, projection_dim=width,
        )).eval()

    t5 = T5EncoderModel(T5Config(
        vocab_size=100, d_model=fx.T5_D, d_kv=fx.T5_INNER // 2, d_ff=fx.T5_FF, num_layers=fx.T5_BLOCKS, num_heads=2,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
    )).eval()
    return StableDiffusion3Pipeline(
        transformer=fx.tiny_transformer().eval(), scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
        text_encoder=clip(*fx.CLIP_L), tokenizer=None, text_encoder_2=clip(*fx.CLIP_G), tokenizer_2=None,
        text_encoder_3=t5, tokenizer_3=None,
    )


def expected(layout):
    out = {}
    with safe_open(FIXTURE / "expected.safetensors", "pt") as f:
        for key in f.keys():
            if key.startswith(f"{layout}:") and key.endswith(".lora_A.weight"):
                module = key[len(layout) + 1: -len(".lora_A.weight")]
                a = f.get_tensor(key).double()
                b = f.get_tensor(f"{layout}:{module}.lora_B.weight").double()
                out[module] = b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)
    return out


def lora_layers(pipe):
    out = {}
    for prefix in ["transformer", "text_encoder", "text_encoder_2", "text_encoder_3"]:
        for name, module in getattr(pipe, prefix).named_modules():
            if hasattr(module, "lora_A") and "lorakit" in module.lora_A:
                out[f"{prefix}.{name}"] = module
    return out


def check(path, layout):
    pipe = pipeline()
    warnings.clear()
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="lorakit")
    layers = lora_layers(pipe)
    file_modules = {k.rsplit(".lora_", 1)[0] for k in load_file(path) if ".lora_" in k}
    t5 = sorted(m for m in file_modules if m.startswith("text_encoder_3."))
    wanted = file_modules - set(t5)
    # "No LoRA keys associated to <model> found with the prefix='<component>'" is expected for a
    # component the file has no module of; any other warning is a problem.
    benign, problems = [], []
    for w in warnings:
        prefix = re.search(r"found with the prefix='([a-z_0-9]+)'", w)
        if prefix and not any(m.startswith(prefix.group(1) + ".") for m in file_modules):
            benign.append(prefix.group(1))
        else:
            problems.append(f"warning: {w[:200]}")
    if wanted - set(layers):
        problems.append(f"not loaded: {sorted(wanted - set(layers))[:5]}")
    extra = sorted(set(layers) - wanted)
    exp = expected(layout)
    worst = 0.0
    for name, layer in layers.items():
        delta = layer.get_delta_weight("lorakit").double()
        delta = delta.reshape(delta.shape[0], -1)
        if name not in exp:
            if delta.abs().max() > 0:
                problems.append(f"{name}: a LoRA layer diffusers' view does not have, with nonzero ΔW")
            continue
        worst = max(worst, (delta - exp[name]).abs().max().item())
    missing = sorted(m for m in set(exp) - set(layers) if not m.startswith("text_encoder_3."))
    if missing:
        problems.append(f"diffusers' view has modules the loaded file lacks: {missing[:5]}")
    if worst > 1e-6:
        problems.append(f"ΔW differs by {worst:.3g}")
    return {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "lora_layers": len(layers) - len(extra),
        "zero_layers_added_by_name_suffix": len(extra),
        "t5_modules_not_loaded": len(t5),
        "max_abs_delta_diff": worst,
        "components_without_modules": benign,
        "problems": problems,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lorakit", default=str(ROOT / "target/debug/lorakit"))
    args = ap.parse_args()
    for name in ("diffusers", "peft"):
        logging.getLogger(name).addHandler(Capture())
    import diffusers
    import peft
    import transformers

    record = {"diffusers": diffusers.__version__, "peft": peft.__version__, "transformers": transformers.__version__,
              "torch": torch.__version__, "converted": {}}
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for layout in LAYOUTS:
            src = FIXTURE / f"{layout}.safetensors"
            if layout == "diffusers":
                path = src
            else:
                path = pathlib.Path(tmp) / f"{layout}.safetensors"
                run = subprocess.run([args.lorakit, "convert", str(src), str(path), "--to", "diffusers"],
                                     capture_output=True, text=True)
                if run.returncode != 0:
                    print(f"{layout}: lorakit convert failed: {run.stderr.strip()}")
                    failed = True
                    continue
            result = check(path, layout)
            result["file"] = "fixture as is" if layout == "diffusers" else "lorakit convert --to diffusers"
            record["converted"][layout] = result
            failed |= bool(result["problems"])
            status = "ok" if not result["problems"] else "FAIL: " + "; ".join(result["problems"])
            print(f"{layout:16} {result['lora_layers']:3} LoRA layers, max |ΔW - expected| "
                  f"{result['max_abs_delta_diff']:.2e}, {result['t5_modules_not_loaded']} T5 not loaded: {status}")
    # The kohya file as published.
    pipe = pipeline()
    warnings.clear()
    try:
        pipe.load_lora_weights(str(FIXTURE), weight_name="kohya.safetensors", adapter_name="lorakit")
        outcome = f"loaded {len(lora_layers(pipe))} LoRA layers"
    except Exception as e:  # noqa: BLE001 - recorded
        outcome = f"{type(e).__name__}: {str(e)[:200]}"
    record["kohya_as_published"] = {"outcome": outcome, "warnings": [w[:200] for w in warnings]}
    print(f"kohya as published: {outcome}; warnings: {record['kohya_as_published']['warnings']}")
    with open(FIXTURE / "diffusers_load.json", "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
