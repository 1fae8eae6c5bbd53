#!/usr/bin/env python3
"""Reference fixture for lorakit-nn's Adafactor (`transformers.optimization.Adafactor` as sd-scripts uses it).

Everything comes from the code sd-scripts itself runs, not from re-derived formulas:

* sd-scripts' `train_util.get_optimizer` builds the optimizer from `--optimizer_type Adafactor` and the
  `--optimizer_args` of each run; its Adafactor rules are recorded as they act: the optimizer kwargs it
  ends up passing (`relative_step` filled in / forced), `ss_optimizer`, what it does to
  `args.learning_rate`, `args.unet_lr`, `args.text_encoder_lr` and `args.lr_scheduler`, and the log
  messages it prints (level + English half of each message);
* `train_util.get_scheduler_fix` builds the scheduler (transformers' `AdafactorSchedule` when
  relative_step forces `adafactor:<lr>`, the configured LambdaLR otherwise);
* each run steps 6 times over two param groups holding a 2-D, a 4-D (conv, factored over its last two
  dims), a 1-D and a zero-initialised 2-D parameter (a LoRA `up` matrix: RMS 0, so the parameter scale
  falls back to eps[1]), with one or two gradients missing. Recorded per step: the group lrs handed to
  the optimizer, the gradients, the parameters after the step and the scheduler's `get_last_lr()`
  (Adafactor's own relative-step lr under AdafactorSchedule); at the end every parameter's state
  (step, RMS, factored row/col or full second moment, first moment).

Writes tests/fixtures/reference/optim/adafactor.json, read by crates/lorakit-nn/tests/optim_adafactor.rs.
Deterministic (fixed seeds, float32 CPU, one thread). float32 values are written with numpy's shortest
float32 repr (exact after parsing as f64 and rounding to f32), other floats with Python's repr.

Run:  /work/bench/venv/bin/python tools/reference/optim_adafactor_fixture.py
(torch 2.6.0 CPU, transformers 4.54.1, numpy 2.4.6, sd-scripts 48d368fa at /work/bench/sd-scripts or
$SD_SCRIPTS; about 10 s.)
"""

import argparse
import json
import logging
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from library import train_util  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "reference", "optim")

# param 3 starts at zero like a LoRA `up` weight
SHAPES = [[4, 3], [2, 2, 3, 3], [5], [6, 4]]
ZERO_INIT = {3}
STEPS = 6


class Capture(logging.Handler):
    """Collects sd-scripts' log records (instead of printing them)."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        text = record.getMessage()
        self.records.append({"level": record.levelname, "message": text.split(" / ")[0]})


CAPTURE = Capture()
train_util.logger.addHandler(CAPTURE)
train_util.logger.propagate = False
train_util.logger.setLevel(logging.INFO)


def sd_args(argv):
    """sd-scripts' own argparse definitions for the optimizer/scheduler flags."""
    parser = argparse.ArgumentParser()
    train_util.add_optimizer_arguments(parser)
    return parser.parse_args(argv)


def f32(x):
    """A float32 value (0-d tensor or Python float) as the shortest decimal that round-trips."""
    return float(str(np.float32(float(x))))


def flat(t):
    return [f32(x) for x in t.detach().reshape(-1).tolist()]


def randn(shape, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).contiguous()


def as_float(x):
    return float(x.item()) if torch.is_tensor(x) else x


def run(name, optimizer_args, groups, scheduler_argv, grad_scales, none_grads, seed, lr=1e-3):
    """groups: [(group name, lr, [param indices])]; none_grads: {(step, param index)} left without grad."""
    gen = torch.Generator().manual_seed(seed)
    params = [
        torch.nn.Parameter(torch.zeros(s) if i in ZERO_INIT else randn(s, gen)) for i, s in enumerate(SHAPES)
    ]
    init = [flat(p) for p in params]
    argv = ["--optimizer_type", "Adafactor", "--learning_rate", repr(lr)]
    if optimizer_args:
        argv += ["--optimizer_args", *optimizer_args]
    args = sd_args(argv + scheduler_argv)
    args.max_train_steps = STEPS
    # the flags sd-scripts' Adafactor branch reads or clears that add_optimizer_arguments does not define
    args.unet_lr = groups[-1][1]
    args.text_encoder_lr = groups[0][1]
    configured_scheduler = args.lr_scheduler
    trainable = [{"params": [params[i] for i in idx], "lr": glr} for (_, glr, idx) in groups]
    CAPTURE.records = []
    opt_name, opt_args, opt = train_util.get_optimizer(args, trainable)
    notices = list(CAPTURE.records)
    assert type(opt) is transformers.optimization.Adafactor
    sched = train_util.get_scheduler_fix(args, opt, 1)
    hp = opt.param_groups[0]
    resolved = {k: hp[k] for k in ("eps", "clip_threshold", "decay_rate", "beta1", "weight_decay")}
    resolved["eps"] = list(resolved["eps"])
    resolved.update({k: hp[k] for k in ("scale_parameter", "relative_step", "warmup_init")})

    initial_reported = [as_float(x) for x in sched.get_last_lr()]
    grads_log, lrs_log, after, reported = [], [], [], []
    for step in range(STEPS):
        lrs = [as_float(g["lr"]) for g in opt.param_groups]
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
        reported.append([as_float(x) for x in sched.get_last_lr()])

    state = []
    for p in params:
        st = opt.state[p]
        entry = {"step": st["step"], "RMS": f32(st["RMS"])}
        for key in ("exp_avg", "exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col"):
            if key in st:
                entry[key] = {"shape": list(st[key].shape), "values": flat(st[key])}
        state.append(entry)
    return {
        "name": name,
        "optimizer_args": optimizer_args,
        "learning_rate": lr,
        "max_grad_norm": args.max_grad_norm,
        "configured_scheduler": configured_scheduler,
        "ss_optimizer": opt_name + (f"({opt_args})" if len(opt_args) > 0 else ""),
        "sd_scripts": {
            "notices": notices,
            "learning_rate": args.learning_rate,
            "unet_lr": args.unet_lr,
            "text_encoder_lr": args.text_encoder_lr,
            "lr_scheduler": args.lr_scheduler,
        },
        "resolved": resolved,
        "groups": [{"name": n, "lr": glr, "params": idx} for (n, glr, idx) in groups],
        "shapes": SHAPES,
        "init": init,
        "grads": grads_log,
        "lrs": lrs_log,
        "params_after": after,
        "initial_reported_lrs": initial_reported,
        "reported_lrs": reported,
        "final_state": state,
    }


TWO_GROUPS = [("textencoder", 5e-5, [0, 3]), ("unet", 1e-4, [1, 2])]


def fixture():
    runs = [
        # sd-scripts' default: relative_step filled in as True, learning rates ignored, scheduler forced.
        # The unet group's first parameter has no gradient at step 2 (its reported lr keeps the last one).
        run("relative_step_default", [], TWO_GROUPS, ["--lr_scheduler", "cosine"], [1.0, 0.5, 2.0, 0.1],
            {(2, 1), (4, 3)}, 1, lr=1e-4),
        # external lr (linear decay), parameter scale on, decoupled-from-nothing L2 weight decay
        run("external_lr_scale_parameter", ["relative_step=False", "weight_decay=0.05"], TWO_GROUPS,
            ["--lr_scheduler", "linear"], [1.0, 0.5, 2.0, 0.1], {(3, 2)}, 2),
        # external lr without parameter scale (the float lr path), other clip/decay rates
        run("external_lr_no_scale",
            ["relative_step=False", "scale_parameter=False", "clip_threshold=0.5", "decay_rate=-0.6",
             "weight_decay=0.1"],
            [("textencoder", 2e-3, [0, 3]), ("unet", 5e-3, [1, 2])],
            ["--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "1"], [3.0, 1.0, 0.01, 1.0],
            {(1, 0)}, 3),
        # warmup_init forces relative_step back to True
        run("warmup_init_forces_relative", ["relative_step=False", "warmup_init=True"], TWO_GROUPS,
            ["--lr_scheduler", "adafactor"], [1.0, 0.5, 2.0, 0.1], {(4, 1)}, 4),
        # first moment, and a larger eps[1] (parameter-scale floor)
        run("beta1_eps", ["beta1=0.9", "eps=(1e-30, 2e-3)"], TWO_GROUPS, ["--lr_scheduler", "constant"],
            [1.0, 0.5, 2.0, 0.1], {(3, 0)}, 5, lr=0.0),
        # weight decay with relative steps, one group, scale_parameter given explicitly
        run("relative_weight_decay", ["scale_parameter=True", "weight_decay=0.01", "relative_step=True"],
            [("unet", 1e-4, [0, 1, 2, 3])], ["--lr_scheduler", "adafactor:0.5"], [1.0, 0.5, 2.0, 0.1],
            {(2, 2)}, 6),
        # external lr with a first moment and parameter scale off
        run("external_lr_beta1", ["relative_step=False", "scale_parameter=False", "beta1=0.5"], TWO_GROUPS,
            ["--lr_scheduler", "cosine", "--max_grad_norm", "0"], [1.0, 0.5, 2.0, 0.1], set(), 7),
    ]
    return {"runs": runs}


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }
    data = {"generator": "tools/reference/optim_adafactor_fixture.py", "versions": versions, **fixture()}
    path = os.path.join(OUT_DIR, "adafactor.json")
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")
    print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
