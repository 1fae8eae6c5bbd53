#!/usr/bin/env python3
"""Reference fixture for lorakit-nn's adaptive / schedule-free optimizers.

Runs the optimizers sd-scripts builds for
  --optimizer_type Prodigy                             (prodigyopt.Prodigy)
  --optimizer_type AdamWScheduleFree                   (schedulefree.AdamWScheduleFree)
  --optimizer_type prodigyplus.ProdigyPlusScheduleFree (prodigyplus.ProdigyPlusScheduleFree)
through sd-scripts' own `train_util.get_optimizer` (so sd-scripts' argument handling, its initial
`optimizer.train()` and its `ss_optimizer` text are the ones checked), over a few small float32
parameters in two param groups, and records after every operation (a step, or a schedule-free
`eval()` / `train()` toggle) the parameters and the optimizer's group scalars (Prodigy's d, d_max,
d_numerator, k; the schedule-free k, weight_sum, lr_max, ...). Constructor and step errors the
libraries raise are recorded with their messages.

Inputs are not stored: parameters and gradients are built from `det_values(seed, n)` below (multiples
of 1/1024 in [-2, 2], scaled by powers of two: exact in float32), a rule the Rust test repeats; the
fixture carries one generated vector (`generator_check`) to prove both sides agree. Every gradient is
`scale * (det(seed_a) + det(seed_b))` with a per-parameter direction seed_a that stays the same from
step to step (so Prodigy's distance estimate actually grows) and a per-step noise seed_b.

Writes tests/fixtures/reference/optim/{prodigy,adamw_schedule_free,prodigy_plus_schedule_free}.json,
read by crates/lorakit-nn/tests/optim_adaptive.rs. Deterministic (float32 CPU, one thread).

Run:  /work/bench/venv/bin/python tools/reference/optim_adaptive_fixture.py   (about 20 s; needs
      `pip install prodigyopt==1.1.2 schedulefree==1.4.1 prodigy-plus-schedule-free==2.0.1`)
Versions: torch 2.6.0 (CPU), prodigyopt 1.1.2, schedulefree 1.4.1, prodigy-plus-schedule-free 2.0.1,
numpy 2.4.6, sd-scripts 48d368fa (from /work/bench/sd-scripts, or $SD_SCRIPTS). Note that torch's CPU
kernels fuse `a + alpha*b` (add/sub with alpha, addcmul, lerp) into one FMA on AVX2/AVX512 machines
(the Rust implementation reproduces that rounding), but its float32 `sqrt` goes through MKL's VML,
which is not correctly rounded (1 ulp off in some elements; CUDA's and Rust's sqrt are exact), and its
dot products / sums use MKL's summation order: the Rust test allows for these last-bit differences.
"""

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import warnings
from importlib.metadata import version

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from library import train_util  # noqa: E402  (it imports prodigyopt / schedulefree / prodigyplus itself)

warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "reference", "optim")

MASK = (1 << 64) - 1


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def det_values(seed, n):
    """n multiples of 1/1024 in [-2, 2]: element j is ((splitmix64(seed * 2^20 + j) >> 40) % 4097 - 2048) / 1024."""
    return [((splitmix64(((seed << 20) + j) & MASK) >> 40) % 4097 - 2048) / 1024 for j in range(n)]


def det_tensor(spec, shape):
    """spec: {"seeds": [a, ...], "scale": s} -> scale * sum(det(a)); or {"zeros": true}."""
    n = int(np.prod(shape))
    if spec.get("zeros"):
        return torch.zeros(shape, dtype=torch.float32)
    acc = torch.zeros(n, dtype=torch.float32)
    for s in spec["seeds"]:
        acc += torch.tensor(det_values(s, n), dtype=torch.float32)
    return (acc * spec["scale"]).reshape(shape).contiguous()


def f32_list(t):
    """Shortest decimal that reads back as the same float32."""
    return [float(str(np.float32(v))) for v in t.detach().reshape(-1).tolist()]


def sd_args(argv):
    parser = argparse.ArgumentParser()
    train_util.add_optimizer_arguments(parser)
    return parser.parse_args(argv)


def num(v):
    """Group scalars as exact decimal strings (inf/None survive; the Rust side parses with str::parse)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, int):
        return v
    return repr(float(v))


def grad_spec(i, step, scale, direction_weight=1):
    """Direction seed per parameter, noise seed per (step, parameter)."""
    seeds = [500 + i] * direction_weight + [1000 + 37 * step + i]
    return {"seeds": seeds, "scale": scale}


def run(name, optimizer_type, optimizer_args, learning_rate, shapes, inits, groups, ops, scalar_keys, check_every=True,
        check_toggles=True):
    """groups: [(name, base lr, [param indices])]; ops: list of dicts
    {"op": "step", "lrs": [...], "grads": [spec or None per param]} | {"op": "eval"} | {"op": "train"}.
    The parameters are recorded after every op, or (check_every=False, to keep the file small) after
    the schedule-free toggles (unless check_toggles=False) and the last op only; the group scalars after
    every op."""
    params = [torch.nn.Parameter(det_tensor(spec, s)) for spec, s in zip(inits, shapes)]
    argv = ["--optimizer_type", optimizer_type, "--learning_rate", repr(learning_rate)]
    if optimizer_args:
        argv += ["--optimizer_args", *optimizer_args]
    args = sd_args(argv)
    trainable = [{"params": [params[i] for i in idx], "lr": lr} for (_, lr, idx) in groups]
    out = {
        "name": name,
        "optimizer_type": optimizer_type,
        "optimizer_args": optimizer_args,
        "learning_rate": learning_rate,
        "shapes": shapes,
        "init": inits,
        "groups": [{"name": n, "lr": lr, "params": idx} for (n, lr, idx) in groups],
    }
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            opt_name, opt_args, opt = train_util.get_optimizer(args, trainable)
    except Exception as e:  # noqa: BLE001
        out["construct_error"] = str(e)
        return out
    out["ss_optimizer"] = opt_name + (f"({opt_args})" if len(opt_args) > 0 else "")
    out["is_schedule_free"] = train_util.is_schedulefree_optimizer(opt, args)
    recorded = []
    for n_op, op in enumerate(ops):
        rec = dict(op)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                if op["op"] == "step":
                    for g, lr in zip(opt.param_groups, op["lrs"]):
                        g["lr"] = lr
                    for i, p in enumerate(params):
                        spec = op["grads"][i]
                        p.grad = None if spec is None else det_tensor(spec, shapes[i])
                    opt.step()
                elif op["op"] == "eval":
                    opt.eval()
                elif op["op"] == "train":
                    opt.train()
        except Exception as e:  # noqa: BLE001
            rec["error"] = str(e)
            recorded.append(rec)
            break
        rec["scalars"] = [{k: num(g.get(k)) for k in scalar_keys} for g in opt.param_groups]
        if check_every or (op["op"] != "step" and check_toggles) or n_op == len(ops) - 1:
            rec["params"] = [f32_list(p) for p in params]
        recorded.append(rec)
    out["ops"] = recorded
    return out


def steps(n, lrs_for, grads_for):
    return [{"op": "step", "lrs": lrs_for(t), "grads": grads_for(t)} for t in range(n)]


# ------------------------------------------------------------------------------------------ Prodigy

P_SHAPES = [[4, 3], [2, 2, 3, 3], [5], [8, 6]]
P_INITS = [{"seeds": [1], "scale": 0.25}, {"seeds": [2], "scale": 0.5}, {"seeds": [3], "scale": 0.125}, {"zeros": True}]
P_SCALARS = ["lr", "d", "d_max", "d_numerator", "d_hat", "k"]
P_GROUPS = lambda lr: [("textencoder", lr, [0]), ("unet", lr, [1, 2, 3])]  # noqa: E731


def prodigy_grads(none=(), scales=(1.0, 0.5, 2.0, 0.25)):
    return lambda t: [None if (t, i) in none else grad_spec(i, t, scales[i]) for i in range(4)]


def prodigy_fixture():
    warmup = [0.0, 0.5, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4]
    runs = [
        # sd-scripts defaults (no optimizer_args), warmup: the first step runs at lr 0 (Prodigy returns
        # early after creating the state), one missing gradient, a zero-initialised LoRA `up`.
        run("defaults_warmup", "Prodigy", [], 1.0, P_SHAPES, P_INITS, P_GROUPS(1.0),
            steps(8, lambda t: [warmup[t]] * 2, prodigy_grads(none={(3, 2), (5, 0)})), P_SCALARS,
        ),
        # Every argument sd-scripts users pass; the unet group's lr drops to 0 at one step (allowed:
        # the group is left out of the d estimate but still moved by its old moments and decay).
        run("all_args_group_lr_zero", "Prodigy",
            ["betas=(0.95,0.99)", "beta3=0.9", "eps=1e-6", "weight_decay=0.01", "decouple=True",
             "use_bias_correction=True", "safeguard_warmup=True", "d0=1e-6", "d_coef=10.0",
             "growth_rate=1.5", "fsdp_in_use=False", "slice_p=3"],
            0.5, P_SHAPES, P_INITS, P_GROUPS(0.5),
            steps(7, lambda t: [0.5, 0.0 if t == 3 else 0.5], prodigy_grads(none={(2, 1)})), P_SCALARS,
        ),
        # Coupled (L2) weight decay and beta1 = 0 (no first moment: the raw gradient is applied).
        run("coupled_decay_beta1_zero", "Prodigy",
            ["betas=(0.0,0.99)", "weight_decay=0.1", "decouple=False", "d0=1e-3"],
            1.0, P_SHAPES, P_INITS, P_GROUPS(1.0),
            steps(6, lambda t: [1.0, 1.0], prodigy_grads()), P_SCALARS,
        ),
        # Large d: d0 big enough that the updates dominate the parameters' rounding.
        run("large_d0", "Prodigy", ["d0=0.01", "weight_decay=0.05"],
            1.0, P_SHAPES, P_INITS, P_GROUPS(1.0),
            steps(6, lambda t: [1.0, 1.0], prodigy_grads()), P_SCALARS,
        ),
        # prodigyopt >= 1.1 refuses groups with different non-zero lrs (at the first step).
        run("different_group_lrs", "Prodigy", [], 1.0, P_SHAPES, P_INITS,
            [("textencoder", 0.5, [0]), ("unet", 1.0, [1, 2, 3])],
            steps(1, lambda t: [0.5, 1.0], prodigy_grads()), P_SCALARS,
        ),
        run("bad_d0", "Prodigy", ["d0=0.0"], 1.0, P_SHAPES, P_INITS, P_GROUPS(1.0), [], P_SCALARS),
        run("bad_eps", "Prodigy", ["eps=0"], 1.0, P_SHAPES, P_INITS, P_GROUPS(1.0), [], P_SCALARS),
        run("bad_beta", "Prodigy", ["betas=(0.9,1.0)"], 1.0, P_SHAPES, P_INITS, P_GROUPS(1.0), [], P_SCALARS),
    ]
    return {"runs": runs}


# ---------------------------------------------------------------------------------- AdamWScheduleFree

SF_SCALARS = ["lr", "k", "train_mode", "weight_sum", "lr_max", "scheduled_lr"]


def sf_fixture():
    groups = [("textencoder", 1e-3, [0]), ("unet", 2e-3, [1, 2, 3])]
    g = prodigy_grads(none={(1, 3), (4, 0)})
    ops = (
        steps(3, lambda t: [1e-3, 2e-3], g)
        + [{"op": "eval"}, {"op": "eval"}, {"op": "train"}]
        + [{**o, "grads": g(t + 3)} for t, o in enumerate(steps(3, lambda t: [1e-3, 2e-3], g))]
        + [{"op": "eval"}]
    )
    ops_args = (
        steps(4, lambda t: [1e-2, 5e-3], g)
        + [{"op": "eval"}, {"op": "train"}]
        + [{**o, "grads": g(t + 4)} for t, o in enumerate(steps(3, lambda t: [1e-2, 5e-3] if t < 2 else [2e-2, 5e-3], g))]
        + [{"op": "eval"}, {"op": "step", "lrs": [1e-2, 5e-3], "grads": g(7)}]
    )
    runs = [
        # sd-scripts defaults (lr from --learning_rate, library defaults otherwise), two lrs, a
        # train -> eval -> eval -> train toggle mid-run, and the eval point at the end (what is saved).
        run("defaults_toggle", "AdamWScheduleFree", [], 1e-3, P_SHAPES, P_INITS, groups, ops, SF_SCALARS),
        # Every argument; warmup, polynomial weighting, a raised lr (lr_max), and a step in eval mode
        # (an error in the library).
        run("all_args", "AdamWScheduleFree",
            ["betas=(0.95,0.99)", "eps=1e-6", "weight_decay=0.01", "warmup_steps=3", "r=1.0",
             "weight_lr_power=1.0", "foreach=False"],
            1e-2, P_SHAPES, P_INITS, [("textencoder", 1e-2, [0]), ("unet", 5e-3, [1, 2, 3])], ops_args, SF_SCALARS,
        ),
    ]
    return {"runs": runs}


# --------------------------------------------------------------------------- ProdigyPlusScheduleFree

# [4, 32] / [2, 32, 2, 2]: factored with the row statistics over the large dim; [32, 4]: factored
# the other way round (the library's reduce_dc quirk); the others are too small to factor.
PP_SHAPES = [[4, 3], [2, 2, 3, 3], [5], [4, 32], [32, 4], [2, 32, 2, 2]]
PP_INITS = [
    {"seeds": [1], "scale": 0.25}, {"seeds": [2], "scale": 0.5}, {"seeds": [3], "scale": 0.125},
    {"seeds": [4], "scale": 0.0625}, {"zeros": True}, {"seeds": [6], "scale": 0.25},
]
PP_SCALARS = [
    "lr", "k", "train_mode", "d", "d_prev", "d_numerator", "d_denom", "prev_d_numerator", "max_d_numerator",
    "shared_d", "weight_sum", "effective_lr",
]
PP_TYPE = "prodigyplus.ProdigyPlusScheduleFree"


def pp_grads(none=()):
    scales = (1.0, 0.5, 2.0, 0.25, 0.125, 0.5)
    return lambda t: [None if (t, i) in none else grad_spec(i, t, scales[i]) for i in range(len(scales))]


def pp_ops(n, lrs, none=(), toggle_after=3):
    g = pp_grads(none)
    ops = []
    for t in range(n):
        ops.append({"op": "step", "lrs": lrs, "grads": g(t)})
        if t == toggle_after - 1:
            ops += [{"op": "eval"}, {"op": "train"}]
    ops.append({"op": "eval"})
    return ops


def pp_fixture():
    two = [("textencoder", 1.0, [0, 3]), ("unet", 1.0, [1, 2, 4, 5])]
    runs = [
        # Library defaults (factored second moment, StableAdamW clipping, per-group d, d limiter).
        run("defaults_two_groups", PP_TYPE, [], 1.0, PP_SHAPES, PP_INITS, two,
            pp_ops(8, [1.0, 1.0], none={(2, 2), (5, 3)}), PP_SCALARS, check_every=False),
        # One group: split_groups is switched off by the library.
        run("defaults_one_group", PP_TYPE, [], 1.0, PP_SHAPES, PP_INITS, [("unet", 1.0, [0, 1, 2, 3, 4, 5])],
            pp_ops(6, [1.0]), PP_SCALARS, check_every=False, check_toggles=False),
        # The arguments: d_coef, prodigy_steps (d frozen after step 4), plus decay, betas,
        # different group lrs.
        run("prodigy_steps_d_coef", PP_TYPE,
            ["d_coef=2.0", "prodigy_steps=4", "weight_decay=0.01", "betas=(0.95,0.99)", "d0=1e-5"],
            1.0, PP_SHAPES, PP_INITS, [("textencoder", 0.5, [0, 3]), ("unet", 1.0, [1, 2, 4, 5])],
            pp_ops(7, [0.5, 1.0]), PP_SCALARS, check_every=False, check_toggles=False),
        # RAdam-style bias correction, harmonic-mean d, Refined-SF averaging, decay not by lr,
        # unfactored second moment, no StableAdamW, beta3, eps.
        run("bias_correction_split_mean", PP_TYPE,
            ["use_bias_correction=True", "split_groups_mean=True", "schedulefree_c=10.0", "beta3=0.98",
             "d0=1e-4", "eps=1e-6", "factored=False", "use_stableadamw=False", "weight_decay=0.05",
             "weight_decay_by_lr=False", "d_limiter=False", "stochastic_rounding=False"],
            1.0, PP_SHAPES, PP_INITS, [("textencoder", 1.0, [0, 3]), ("unet", 0.5, [1, 2, 4, 5])],
            pp_ops(9, [1.0, 0.5], none={(6, 1)}, toggle_after=6), PP_SCALARS, check_every=False, check_toggles=False),
        # Plain Prodigy mode (first moment, no averaging) with all groups sharing one d.
        run("no_schedulefree_shared_d", PP_TYPE,
            ["use_schedulefree=False", "split_groups=False", "weight_decay=0.01", "factored_fp32=True"],
            1.0, PP_SHAPES, PP_INITS, two, pp_ops(6, [1.0, 1.0], none={(1, 0)}), PP_SCALARS, check_every=False,
            check_toggles=False),
        # Bias correction in Prodigy mode (the rectification scales dlr, no raw-gradient steps).
        run("no_schedulefree_bias_correction", PP_TYPE,
            ["use_schedulefree=False", "use_bias_correction=True", "d0=1e-4", "d_limiter=False"],
            1.0, PP_SHAPES, PP_INITS, two, pp_ops(7, [1.0, 1.0]), PP_SCALARS, check_every=False, check_toggles=False),
        run("bad_weight_decay", PP_TYPE, ["weight_decay=-0.1"], 1.0, PP_SHAPES, PP_INITS, two, [], PP_SCALARS),
        run("bad_beta3", PP_TYPE, ["beta3=1.0"], 1.0, PP_SHAPES, PP_INITS, two, [], PP_SCALARS),
    ]
    return {"runs": runs}


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "prodigyopt": version("prodigyopt"),
        "schedulefree": version("schedulefree"),
        "prodigy-plus-schedule-free": version("prodigy-plus-schedule-free"),
    }
    check = {"seed": 77, "n": 6, "values": det_values(77, 6)}
    outputs = {
        "prodigy.json": prodigy_fixture(),
        "adamw_schedule_free.json": sf_fixture(),
        "prodigy_plus_schedule_free.json": pp_fixture(),
    }
    for name, data in outputs.items():
        data = {"generator": "tools/reference/optim_adaptive_fixture.py", "versions": versions, "generator_check": check, **data}
        path = os.path.join(OUT_DIR, name)
        with open(path, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
