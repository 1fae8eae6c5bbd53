#!/usr/bin/env python3
"""CLIP's padding mask (sd-scripts' SD3 `--apply_lg_attn_mask`) in transformers 4.54 and 5.25.

lorakit's CLIP text encoder (crates/lorakit-models/src/clip.rs, `forward_with_mask`) hides padded
keys from every query on top of the causal mask. transformers builds that mask differently per
release: 4.54 (sd-scripts 48d368f pins 4.54.1) adds `_prepare_4d_attention_mask` (finfo.min on
padded keys) to the causal mask; 5.x and-s both in `masking_utils.create_causal_mask`. This
script runs the tiny CLIP-L / CLIP-G of tests/fixtures/reference/sd3_text/ (made by
sd3_text_fixture.py with transformers 5.25) on that fixture's tokens and masks, under both
releases and both attention paths (eager, sdpa), as sd-scripts' `Sd3TextEncodingStrategy.
encode_tokens(..., apply_lg_attn_mask=True)` calls them, and checks that all four agree
(<= 1e-6) for tokenizer masks (1 on BOS, text, EOS; 0 on padding). It also records what each
gives for a row whose first token is masked (a query with no visible key): there the releases
and paths disagree, which is why lorakit refuses such masks.

Writes tests/fixtures/reference/clip_attn_mask/ (rewritten on every run):
  io.safetensors  t4_54.lg_out (B, 77, 16 + 24)   hidden_states[-2] of CLIP-L and CLIP-G side by
                                                 side, transformers 4.54.1, its default (sdpa)
                  t4_54.lg_pooled (B, 16 + 24)   their text_embeds, the same run
  cases.json      versions, the agreement found, the fully-masked-row differences

Run from the repository root (CPU, no network); the script runs itself once per release:

    /work/bench/venv/bin/python tools/reference/clip_attn_mask_fixture.py

(/work/bench/venv: torch 2.6, transformers 4.54.1; PYTHONPATH=/work/bench/py42 puts
transformers 5.25 first.) Deterministic: no random numbers, float32 CPU compute, one thread.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SRC = os.path.join(ROOT, "tests", "fixtures", "reference", "sd3_text")
OUT = os.path.join(ROOT, "tests", "fixtures", "reference", "clip_attn_mask")
PYTHON = os.environ.get("BENCH_PYTHON", "/work/bench/venv/bin/python")
PY42 = os.environ.get("PY42", "/work/bench/py42")


def child(out_path):
    """Runs both CLIPs with the fixture's masks under the transformers on the path."""
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.set_num_threads(1)
    io = load_file(os.path.join(SRC, "io.safetensors"))
    res = {}
    for name, ids_key, mask_key in (("clip_l", "l_ids", "l_mask"), ("clip_g", "g_ids", "g_mask")):
        cfg = CLIPTextConfig.from_json_file(os.path.join(SRC, name, "config.json"))
        model = CLIPTextModelWithProjection(cfg).eval()
        sd = {k: v.float() for k, v in load_file(os.path.join(SRC, name, "model.safetensors")).items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
        ids, mask = io[ids_key], io[mask_key]
        bos_masked = mask.clone()
        bos_masked[:, 0] = 0
        for impl in ("eager", "sdpa"):
            model.config._attn_implementation = impl
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(impl)
            with torch.no_grad():
                # sd-scripts: clip(tokens, attn_mask, output_hidden_states=True)
                o = model(ids, mask, output_hidden_states=True)
                res[f"{name}.{impl}.out"] = o.hidden_states[-2].contiguous()
                res[f"{name}.{impl}.pooled"] = o[0].contiguous()
                res[f"{name}.{impl}.bos_masked"] = model(ids, bos_masked, output_hidden_states=True).hidden_states[-2]
    save_file({k: v.contiguous() for k, v in res.items()}, out_path)
    print(json.dumps(dict(transformers=transformers.__version__, torch=torch.__version__)))


def run_child(pythonpath, out_path):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run([PYTHON, __file__, "--child", out_path], env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    import torch
    from safetensors.torch import load_file, save_file

    tmp = tempfile.mkdtemp()
    runs = {}
    for tag, path in (("4", None), ("5", PY42)):
        f = os.path.join(tmp, f"t{tag}.safetensors")
        versions = run_child(path, f)
        runs[versions["transformers"]] = (versions, load_file(f))
    assert sorted(v.split(".")[0] for v in runs) == ["4", "5"], list(runs)
    v4 = next(v for v in runs if v.startswith("4."))
    io = load_file(os.path.join(SRC, "io.safetensors"))

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))

    ref = runs[v4][1]
    agreement, bos_rows = {}, {}
    for version, (_, res) in runs.items():
        for name in ("clip_l", "clip_g"):
            for impl in ("eager", "sdpa"):
                for part in ("out", "pooled"):
                    e = rel(res[f"{name}.{impl}.{part}"], ref[f"{name}.sdpa.{part}"])
                    agreement[f"{version}.{name}.{impl}.{part}"] = e
                    assert e <= 1e-6, (version, name, impl, part, e)
            bos_rows[f"{version}.{name}.eager_vs_sdpa"] = rel(
                res[f"{name}.eager.bos_masked"], res[f"{name}.sdpa.bos_masked"])
    # The BOS-masked rows: not one answer across releases and paths.
    assert max(bos_rows.values()) > 1e-2, bos_rows
    lg_out = torch.cat([ref["clip_l.sdpa.out"], ref["clip_g.sdpa.out"]], dim=-1)
    lg_pooled = torch.cat([ref["clip_l.sdpa.pooled"], ref["clip_g.sdpa.pooled"]], dim=-1)
    # sd3_text_fixture.py's sd-scripts run under transformers 5.25 agrees.
    assert rel(lg_out, io["lg1t50.lg_out"]) <= 1e-6 and rel(lg_pooled, io["lg1t50.lg_pooled"]) <= 1e-6

    os.makedirs(OUT, exist_ok=True)
    save_file({"t4_54.lg_out": lg_out.contiguous(), "t4_54.lg_pooled": lg_pooled.contiguous()},
              os.path.join(OUT, "io.safetensors"))
    cases = dict(
        source="tests/fixtures/reference/sd3_text (weights, l_ids/g_ids, l_mask/g_mask)",
        versions={v: r[0] for v, r in runs.items()},
        saved_from=f"transformers {v4}, sdpa (its default)",
        max_relative_difference_to_saved=agreement,
        bos_masked_rows_eager_vs_sdpa=bos_rows,
        note="Tokenizer masks: every release and attention path agrees. Rows whose first token is masked "
             "(a query with no visible key) differ between 5.x's eager and sdpa paths, so lorakit refuses them.",
    )
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1, sort_keys=True)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
