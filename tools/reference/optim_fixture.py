#!/usr/bin/env python3
"""Reference fixture for lorakit-nn's optimizers, gradient clipping, optimizer_args parsing and LR schedulers.

Everything is computed by the code sd-scripts itself runs, not by re-derived formulas:

* AdamW runs: the optimizer is built by sd-scripts' `train_util.get_optimizer` (torch.optim.AdamW with
  the `--optimizer_args` given), the per-step learning rates come from sd-scripts'
  `train_util.get_scheduler_fix`, and the params after every step are recorded (plus the final moments);
* `torch.nn.utils.clip_grad_norm_` inputs, returned total norm and clipped gradients;
* `--optimizer_args` items through sd-scripts' own parsing rule (`key, value = arg.split("=")`,
  `ast.literal_eval(value)`) and the `f"{k}={v}"` text `ss_optimizer` is built from;
* every scheduler through `train_util.get_scheduler_fix` with arguments parsed by sd-scripts' own
  argparse definitions (`add_optimizer_arguments`): the LambdaLR factor for steps 0..T+3, checked
  against `get_last_lr()` while stepping, and the argument combinations sd-scripts rejects.

Writes tests/fixtures/reference/optim/{adamw,clip_grad_norm,optimizer_args,lr_schedulers}.json, read by
crates/lorakit-nn/tests/optim.rs and tests/lr_scheduler.rs. Deterministic (fixed seeds, float32 CPU,
one thread); floats are written with Python's repr, so every float32 value round-trips exactly.

Run:  PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/optim_fixture.py
(torch 2.6.0 CPU, transformers 4.54.1, diffusers 0.32.1, sd-scripts 48d368fa; about 10 s.)
"""

import argparse
import ast
import json
import logging
import math
import os
import re
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts"))

import torch  # noqa: E402
from library import train_util  # noqa: E402

warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "reference", "optim")

SHAPES = [[4, 3], [2, 2, 3, 3], [5]]


def sd_args(argv):
    """sd-scripts' own argparse definitions for the optimizer/scheduler flags."""
    parser = argparse.ArgumentParser()
    train_util.add_optimizer_arguments(parser)
    return parser.parse_args(argv)


def flat(t):
    return t.detach().reshape(-1).tolist()


def randn(shape, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).contiguous()


# ---------------------------------------------------------------------------------------------- AdamW


def adamw_run(name, optimizer_args, groups, scheduler_argv, steps, grad_scales, none_grads, seed):
    """groups: [(group name, lr, [param indices])]; none_grads: {(step, param index)} left without grad."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(randn(s, gen)) for s in SHAPES]
    init = [flat(p) for p in params]
    argv = ["--optimizer_type", "AdamW", "--learning_rate", "1e-3"]
    if optimizer_args:
        argv += ["--optimizer_args", *optimizer_args]
    args = sd_args(argv + scheduler_argv)
    args.max_train_steps = steps
    trainable = [{"params": [params[i] for i in idx], "lr": lr} for (_, lr, idx) in groups]
    opt_name, opt_args, opt = train_util.get_optimizer(args, trainable)
    assert type(opt) is torch.optim.AdamW
    sched = train_util.get_scheduler_fix(args, opt, 1)

    grads_log, lrs_log, after = [], [], []
    for step in range(steps):
        lrs = [g["lr"] for g in opt.param_groups]
        step_grads = []
        for i, p in enumerate(params):
            if (step, i) in none_grads:
                p.grad = None
                step_grads.append(None)
            else:
                g = randn(SHAPES[i], gen, grad_scales[i])
                p.grad = g.clone()
                step_grads.append(flat(g))
        opt.step()
        sched.step()
        grads_log.append(step_grads)
        lrs_log.append(lrs)
        after.append([flat(p) for p in params])

    state = []
    for p in params:
        st = opt.state[p]
        state.append({"step": int(st["step"].item()), "exp_avg": flat(st["exp_avg"]), "exp_avg_sq": flat(st["exp_avg_sq"])})
    hp = opt.param_groups[0]
    return {
        "name": name,
        "optimizer_args": optimizer_args,
        "ss_optimizer": opt_name + (f"({opt_args})" if len(opt_args) > 0 else ""),
        "resolved": {"betas": list(hp["betas"]), "eps": hp["eps"], "weight_decay": hp["weight_decay"]},
        "groups": [{"name": n, "lr": lr, "params": idx} for (n, lr, idx) in groups],
        "scheduler_argv": scheduler_argv,
        "shapes": SHAPES,
        "init": init,
        "grads": grads_log,
        "lrs": lrs_log,
        "params_after": after,
        "final_state": state,
    }


def adamw_fixture():
    return {
        "runs": [
            # torch defaults (wd 0.01), two groups, warmup (first update at lr 0), one missing gradient.
            adamw_run(
                "defaults_two_groups_warmup",
                [],
                [("textencoder", 5e-4, [0]), ("unet", 1e-3, [1, 2])],
                ["--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "2"],
                6,
                [1.0, 0.5, 2.0],
                {(3, 2)},
                1,
            ),
            # betas/eps/wd from optimizer_args; tiny gradients on the last param so eps matters.
            adamw_run(
                "betas_eps_wd_args",
                ["betas=0.8,0.99", "eps=1e-6", "weight_decay=0.1"],
                [("textencoder", 2e-2, [0, 2]), ("unet", 1e-2, [1])],
                ["--lr_scheduler", "cosine", "--lr_warmup_steps", "1"],
                6,
                [1.0, 0.1, 1e-6],
                {(0, 1), (4, 0)},
                2,
            ),
            # beta1 < 0.5 takes torch's other lerp branch; integer weight_decay=0 (no decay).
            adamw_run(
                "low_beta1_no_decay",
                ["betas=(0.3, 0.9)", "weight_decay=0"],
                [("unet", 5e-2, [0, 1, 2])],
                [],
                6,
                [3.0, 1.0, 0.01],
                set(),
                3,
            ),
        ]
    }


# ------------------------------------------------------------------------------------- clip_grad_norm


def clip_case(name, scales, max_norm, none_idx, seed, zero=False):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
    grads_in = []
    for i, p in enumerate(params):
        if i in none_idx:
            p.grad = None
            grads_in.append(None)
        else:
            g = torch.zeros(SHAPES[i]) if zero else randn(SHAPES[i], gen, scales[i])
            p.grad = g.clone()
            grads_in.append(flat(g))
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return {
        "name": name,
        "shapes": SHAPES,
        "max_norm": max_norm,
        "grads": grads_in,
        "total_norm": float(total),
        "grads_after": [None if p.grad is None else flat(p.grad) for p in params],
    }


def clip_fixture():
    return {
        "cases": [
            clip_case("clipped", [1.0, 2.0, 3.0], 1.0, set(), 10),
            clip_case("not_clipped", [0.01, 0.02, 0.01], 1.0, set(), 11),
            clip_case("missing_grad", [1.0, 1.0, 1.0], 0.5, {1}, 12),
            clip_case("large_max_norm", [5.0, 5.0, 5.0], 100.0, set(), 13),
            clip_case("all_zero", [1.0, 1.0, 1.0], 1.0, set(), 14, zero=True),
        ]
    }


# ------------------------------------------------------------------------------------- optimizer_args


def encode(v):
    """A Python literal as tagged JSON (so int/float/bool/tuple/list stay distinct)."""
    if v is None:
        return {"t": "none"}
    if isinstance(v, bool):
        return {"t": "bool", "v": v}
    if isinstance(v, int):
        return {"t": "int", "v": v}
    if isinstance(v, float):
        return {"t": "float", "v": v if math.isfinite(v) else repr(v)}
    if isinstance(v, str):
        return {"t": "str", "v": v}
    if isinstance(v, tuple):
        return {"t": "tuple", "v": [encode(x) for x in v]}
    if isinstance(v, list):
        return {"t": "list", "v": [encode(x) for x in v]}
    raise TypeError(type(v))


PARSE_INPUTS = [
    "weight_decay=0.01",
    "betas=0.9,0.999",
    "betas=(0.9, 0.999)",
    "betas=[0.9,0.999]",
    "decouple=True",
    "use_bias_correction=False",
    "safeguard_warmup=None",
    "d0=1e-6",
    "eps=1e-08",
    "x=1e-4",
    "x=0.0001",
    "x=1e16",
    "x=1e15",
    "x=100.0",
    "x=1.5e300",
    "x=1e999",
    "x=-1",
    "x=+2.5",
    "x=-0.0",
    "x=1_000",
    "x=0x1F",
    "x=0o17",
    "x=0b101",
    "x=.5",
    "x=5.",
    "x=1E5",
    "x=123456789012345678",
    "x=(1,)",
    "x=()",
    "x=[]",
    "x=1,",
    "x=(1)",
    "x='abc'",
    'x="a b"',
    "x='a' 'b'",
    "x='it\\'s'",
    "x='tab\\there'",
    "x=('a', 1, None, True)",
    "x=[0.1, [2, 3], (4,)]",
    "x= 0.5",
    "x=0.5 ",
    "x=3 # comment",
    "x=0.1+0.2",
    "mode=foo",
    "x=",
    "novalue",
    "a=b=c",
    "x=1+",
    "x=(1",
    "x=1.2.3",
    "x=--1",
    "x=-'a'",
    "x=-True",
    "x=inf",
    "x=01",
    "x=1__0",
    "x=[1,,2]",
]


def parse_fixture():
    cases = []
    for item in PARSE_INPUTS:
        case = {"arg": item}
        try:
            key, value = item.split("=")  # sd-scripts' exact rule
            value = ast.literal_eval(value)
            if isinstance(value, (dict, set, complex, bytes)):
                raise TypeError("not a value sd-scripts' optimizers take")
            case.update(ok=True, key=key, value=encode(value), text=f"{key}={value}")
        except Exception as e:  # noqa: BLE001 - we record that sd-scripts fails, and how
            # object addresses (`<ast.Name object at 0x…>`) would make the file differ run to run
            case.update(ok=False, error=re.sub(r" at 0x[0-9a-f]+", "", f"{type(e).__name__}: {e}"))
        cases.append(case)
    return {"cases": cases}


# ------------------------------------------------------------------------------------------ schedulers


def scheduler_case(name, argv, total, lr=1.0, extra_steps=3):
    args = sd_args(["--learning_rate", repr(lr)] + argv)
    args.max_train_steps = total
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([w], lr=lr)
    case = {
        "name": name,
        "argv": argv,
        "total_steps": total,
        "learning_rate": lr,
        # the values get_scheduler_fix receives, as sd-scripts' argparse types made them
        "params": {
            "lr_scheduler": args.lr_scheduler,
            "lr_warmup_steps": args.lr_warmup_steps,
            "lr_decay_steps": args.lr_decay_steps,
            "lr_scheduler_num_cycles": args.lr_scheduler_num_cycles,
            "lr_scheduler_power": args.lr_scheduler_power,
            "lr_scheduler_timescale": args.lr_scheduler_timescale,
            "lr_scheduler_min_lr_ratio": args.lr_scheduler_min_lr_ratio,
            "lr_scheduler_args": args.lr_scheduler_args or [],
        },
    }
    try:
        sched = train_util.get_scheduler_fix(args, opt, 1)
        factors = []
        for s in range(total + extra_steps + 1):
            f = float(sched.lr_lambdas[0](s))
            # LambdaLR semantics: the lr in force at step s is base_lr * f(s), starting at s = 0.
            assert math.isclose(sched.get_last_lr()[0], lr * f, rel_tol=1e-12, abs_tol=1e-300), (name, s)
            factors.append(f)
            opt.step()
            sched.step()
        case.update(ok=True, factors=factors)
    except Exception as e:  # noqa: BLE001 - the cases sd-scripts rejects are part of the fixture
        case.update(ok=False, error=f"{type(e).__name__}: {e}")
    return case


def scheduler_fixture():
    T = 50
    W = ["--lr_warmup_steps", "5"]
    cases = [
        scheduler_case("constant", ["--lr_scheduler", "constant"], T),
        scheduler_case("constant_with_warmup", ["--lr_scheduler", "constant_with_warmup", *W], T),
        scheduler_case("constant_with_warmup_w0", ["--lr_scheduler", "constant_with_warmup"], T),
        scheduler_case("linear", ["--lr_scheduler", "linear", *W], T),
        scheduler_case("linear_warmup_ratio", ["--lr_scheduler", "linear", "--lr_warmup_steps", "0.1"], T),
        scheduler_case("linear_warmup_ratio_rounding", ["--lr_scheduler", "linear", "--lr_warmup_steps", "0.29"], 100),
        scheduler_case("linear_warmup_percent", ["--lr_scheduler", "linear", "--lr_warmup_steps", "30%"], T),
        scheduler_case("cosine", ["--lr_scheduler", "cosine", *W], T),
        scheduler_case("cosine_w0", ["--lr_scheduler", "cosine"], T),
        scheduler_case(
            "cosine_num_cycles_arg", ["--lr_scheduler", "cosine", *W, "--lr_scheduler_args", "num_cycles=1.5"], T
        ),
        scheduler_case(
            "cosine_with_restarts", ["--lr_scheduler", "cosine_with_restarts", *W, "--lr_scheduler_num_cycles", "2"], T
        ),
        scheduler_case(
            "cosine_with_restarts_3_w0", ["--lr_scheduler", "cosine_with_restarts", "--lr_scheduler_num_cycles", "3"], T
        ),
        scheduler_case(
            "polynomial_power2",
            ["--lr_scheduler", "polynomial", *W, "--lr_scheduler_power", "2"],
            T,
            lr=1e-4,
        ),
        scheduler_case(
            "polynomial_lr_end",
            ["--lr_scheduler", "polynomial", *W, "--lr_scheduler_args", "lr_end=0.1"],
            T,
        ),
        scheduler_case("polynomial_power_half", ["--lr_scheduler", "polynomial", "--lr_scheduler_power", "0.5"], T, lr=2e-4),
        scheduler_case("inverse_sqrt", ["--lr_scheduler", "inverse_sqrt", *W], T),
        scheduler_case("inverse_sqrt_w0", ["--lr_scheduler", "inverse_sqrt"], T),
        scheduler_case("inverse_sqrt_timescale", ["--lr_scheduler", "inverse_sqrt", *W, "--lr_scheduler_timescale", "20"], T),
        scheduler_case(
            "cosine_with_min_lr",
            ["--lr_scheduler", "cosine_with_min_lr", *W, "--lr_scheduler_min_lr_ratio", "0.1"],
            T,
        ),
        scheduler_case(
            "cosine_with_min_lr_2_cycles",
            ["--lr_scheduler", "cosine_with_min_lr", *W, "--lr_scheduler_min_lr_ratio", "0.1", "--lr_scheduler_num_cycles", "2"],
            T,
        ),
        scheduler_case(
            "cosine_with_min_lr_min_lr_arg",
            ["--lr_scheduler", "cosine_with_min_lr", *W, "--lr_scheduler_args", "min_lr=1e-5"],
            T,
            lr=1e-4,
        ),
        scheduler_case(
            "warmup_stable_decay",
            ["--lr_scheduler", "warmup_stable_decay", *W, "--lr_decay_steps", "10", "--lr_scheduler_min_lr_ratio", "0.1"],
            T,
        ),
        scheduler_case(
            "warmup_stable_decay_ratios_no_min",
            ["--lr_scheduler", "warmup_stable_decay", "--lr_warmup_steps", "0.1", "--lr_decay_steps", "0.2"],
            T,
        ),
        scheduler_case(
            "warmup_stable_decay_linear_cosine",
            [
                "--lr_scheduler", "warmup_stable_decay", *W, "--lr_decay_steps", "10",
                "--lr_scheduler_args", "decay_type='linear'", "warmup_type='cosine'",
            ],
            T,
        ),
        scheduler_case(
            "warmup_stable_decay_1sqrt_2_cycles",
            [
                "--lr_scheduler", "warmup_stable_decay", *W, "--lr_decay_steps", "20", "--lr_scheduler_num_cycles", "2",
                "--lr_scheduler_min_lr_ratio", "0.05", "--lr_scheduler_args", "decay_type='1-sqrt'", "warmup_type='1-sqrt'",
            ],
            T,
        ),
        scheduler_case(
            "warmup_stable_decay_cosine_2_cycles",
            ["--lr_scheduler", "warmup_stable_decay", *W, "--lr_decay_steps", "20", "--lr_scheduler_num_cycles", "2"],
            T,
        ),
        scheduler_case(
            "piecewise_constant",
            ["--lr_scheduler", "piecewise_constant", "--lr_scheduler_args", "step_rules='1:10,0.1:20,0.01:30,0.005'"],
            T,
        ),
        # combinations sd-scripts rejects
        scheduler_case("constant_with_warmup_steps", ["--lr_scheduler", "constant", *W], T),
        scheduler_case("cosine_with_min_lr_no_ratio", ["--lr_scheduler", "cosine_with_min_lr", *W], T),
        scheduler_case(
            "cosine_with_min_lr_both",
            ["--lr_scheduler", "cosine_with_min_lr", "--lr_scheduler_min_lr_ratio", "0.1", "--lr_scheduler_args", "min_lr=1e-5"],
            T,
        ),
        scheduler_case(
            "cosine_with_min_lr_rate_arg",
            ["--lr_scheduler", "cosine_with_min_lr", "--lr_scheduler_args", "min_lr_rate=0.1"],
            T,
        ),
        scheduler_case(
            "cosine_with_restarts_num_cycles_arg",
            ["--lr_scheduler", "cosine_with_restarts", "--lr_scheduler_args", "num_cycles=2"],
            T,
        ),
        scheduler_case("polynomial_lr_end_too_big", ["--lr_scheduler", "polynomial", "--lr_scheduler_args", "lr_end=2.0"], T),
        scheduler_case("linear_unknown_arg", ["--lr_scheduler", "linear", "--lr_scheduler_args", "foo=1"], T),
        scheduler_case(
            "warmup_stable_decay_bad_type",
            ["--lr_scheduler", "warmup_stable_decay", "--lr_decay_steps", "10", "--lr_scheduler_args", "decay_type='exp'"],
            T,
        ),
        scheduler_case("unknown_name", ["--lr_scheduler", "cosine_annealing"], T),
        scheduler_case("reduce_lr_on_plateau", ["--lr_scheduler", "reduce_lr_on_plateau"], T),
    ]
    return {"cases": cases}


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    outputs = {
        "adamw.json": adamw_fixture(),
        "clip_grad_norm.json": clip_fixture(),
        "optimizer_args.json": parse_fixture(),
        "lr_schedulers.json": scheduler_fixture(),
    }
    versions = {"torch": torch.__version__, "python": sys.version.split()[0]}
    for name, data in outputs.items():
        data = {"generator": "tools/reference/optim_fixture.py", "versions": versions, **data}
        path = os.path.join(OUT_DIR, name)
        with open(path, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
