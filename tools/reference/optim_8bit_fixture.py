#!/usr/bin/env python3
"""Reference fixture for lorakit-nn's Lion, SGD (Nesterov), AdEMAMix and bitsandbytes 8-bit optimizers.

What is computed, and by what:

* Lion (`lion_pytorch.Lion`) and SGDNesterov (`torch.optim.SGD(nesterov=True)`): built by sd-scripts'
  own `train_util.get_optimizer` and stepped by those libraries; the lrs come from sd-scripts'
  `get_scheduler_fix`. Exact reference numbers (as `optim_fixture.py` does for AdamW).
* bitsandbytes optimizers (AdEMAMix, AdEMAMix8bit, AdamW8bit, Lion8bit, SGDNesterov8bit): built by
  sd-scripts' `get_optimizer` too (class path for `ss_optimizer`, resolved hyperparameters,
  `min_8bit_size`). Their CUDA kernels cannot run here (no GPU), and bitsandbytes' CPU backend is
  *not* the CUDA kernel (it applies weight decay before the update, places eps differently and
  quantises with another routine), so the reference numbers come from `Mirror` below: a NumPy
  float32 transcription, statement by statement, of bitsandbytes' CUDA kernels
  (csrc/kernels.cu @ 0.50.x: `kOptimizer32bit2State`, `kOptimizer32bit1State`,
  `kOptimizerStatic8bit2StateBlockwise`, `kOptimizerStatic8bit1StateBlockwise`, `quantize_2D`;
  launch constants from csrc/ops.cu: BLOCKSIZE_2STATE = BLOCKSIZE_1STATE = 256, one value per
  thread) and of the Python side that feeds them (bitsandbytes/optim/optimizer.py
  `Optimizer2State`/`Optimizer1State.init_state/update_step`, optim/ademamix.py
  `AdEMAMix.update_step` with its alpha/beta3 schedulers). Every hyperparameter is rounded to
  float32 as `ct.c_float` does. Known, unavoidable differences to a real GPU run: the library is
  built with `--use_fast_math` (approximate `/`, `sqrtf`, `__powf`, FMA contraction), so a GPU run
  differs from this mirror by float32 rounding (and, rarely, by one quantisation code).
  The AdEMAMix 8-bit kernel addresses the slow EMA's block maxima at `absmax1[(n + i) / 256]`,
  which only equals the `(2, blocks)` layout bitsandbytes allocates when n is a multiple of 256
  (otherwise two CUDA blocks race on one entry); the mirror (and lorakit) use the allocated layout
  `absmax1[1][block]`, as bitsandbytes' CPU backend does.
  The mirror is cross-checked against bitsandbytes' own code where it can run on CPU: the
  quantisation maps are `bitsandbytes.functional.create_dynamic_map` itself, the mirror's
  quantiser is compared with `quantize_blockwise`, and every run is also stepped by the real
  optimizer on bitsandbytes' CPU backend; the largest deviations are recorded (`bnb_cpu_check`) and
  asserted small. (For the 32-bit AdEMAMix run with weight decay the whole deviation is the CPU
  backend's decay-before-update order: the mirror with that order agrees with it to 6e-8. For the
  8-bit runs it is mostly the CPU backend's quantiser, which is not an exact nearest-code search.)
  bitsandbytes before 0.50 applied Lion's decay to the gradient in the 32-bit kernel (used for
  Lion8bit parameters below min_8bit_size); 0.50 made it decoupled, as mirrored here.

Data: the 32-bit runs store their random init/gradients; the 8-bit runs (tensors of a few thousand
elements) generate them with a splitmix64 generator the Rust test reimplements (`det_values`), and
store per-step samples, the full final parameters (float32 hex) and the full final 8-bit state.

Writes tests/fixtures/reference/optim/{lion,sgd,ademamix,quant8,adamw8bit,lion8bit,sgd8bit,ademamix8bit}.json,
read by crates/lorakit-nn/tests/optim_8bit.rs.

Run:  /work/bench/venv/bin/python tools/reference/optim_8bit_fixture.py
(torch 2.6.0 CPU, bitsandbytes 0.50.2, lion-pytorch 0.2.3 (sd-scripts' pin), numpy 2.4, sd-scripts
48d368fa; about 20 s.) Deterministic: fixed seeds, float32, one thread.
"""

import argparse
import json
import logging
import math
import os
import struct
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

logging.disable(logging.CRITICAL)
warnings.filterwarnings("ignore")

import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as BF  # noqa: E402
import lion_pytorch  # noqa: E402
from library import train_util  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "reference", "optim")

F32 = np.float32
BLOCK = 256  # csrc/ops.cu BLOCKSIZE_2STATE / BLOCKSIZE_1STATE
SHAPES = [[4, 3], [2, 2, 3, 3], [5]]


def sd_args(argv):
    parser = argparse.ArgumentParser()
    train_util.add_optimizer_arguments(parser)
    return parser.parse_args(argv)


def sd_build(optimizer_type, optimizer_args, scheduler_argv, steps, trainable):
    argv = ["--optimizer_type", optimizer_type, "--learning_rate", "1e-3"]
    if optimizer_args:
        argv += ["--optimizer_args", *optimizer_args]
    args = sd_args(argv + scheduler_argv)
    args.max_train_steps = steps
    name, opt_args, opt = train_util.get_optimizer(args, trainable)
    sched = train_util.get_scheduler_fix(args, opt, 1)
    return name + (f"({opt_args})" if len(opt_args) > 0 else ""), opt, sched


def flat(t):
    return np.asarray(t.detach() if torch.is_tensor(t) else t, dtype=F32).reshape(-1).tolist()


def randn(shape, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).contiguous()


def f32_hex(a):
    """float32 values as little-endian hex (8 characters each): exact and compact."""
    return np.asarray(a, dtype="<f4").tobytes().hex()


def u8_hex(a):
    return np.asarray(a, dtype=np.uint8).tobytes().hex()


# ------------------------------------------------------------------------------ deterministic data


MASK = (1 << 64) - 1


def det_values(seed, n, scale):
    """splitmix64 → 24-bit integers → float32 in [-1, 1), times a power of two that changes every
    97 elements (so 256-element blocks have different maxima), times `scale` (float32)."""
    out = np.empty(n, dtype=F32)
    state = seed & MASK
    for i in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        z ^= z >> 31
        v = F32(z >> 40) * F32(2.0**-23) - F32(1.0)
        out[i] = v * F32(2.0 ** (((i // 97) % 5) - 2))
    return out * F32(scale)


def det_seed(run_seed, step, index):
    """step = -1 for the initial parameters."""
    return run_seed * 1_000_000 + (step + 1) * 1000 + index


# ============================================================================ exact torch runs


def torch_run(optimizer_type, name, optimizer_args, groups, scheduler_argv, steps, grad_scales, none_grads, seed,
              expect_class, state_key):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(randn(s, gen)) for s in SHAPES]
    init = [flat(p) for p in params]
    trainable = [{"params": [params[i] for i in idx], "lr": lr} for (_, lr, idx) in groups]
    ss, opt, sched = sd_build(optimizer_type, optimizer_args, scheduler_argv, steps, trainable)
    assert type(opt) is expect_class, type(opt)
    grads_log, lrs_log, after, updates = [], [], [], [0] * len(params)
    for step in range(steps):
        lrs_log.append([g["lr"] for g in opt.param_groups])
        step_grads = []
        for i, p in enumerate(params):
            if (step, i) in none_grads:
                p.grad = None
                step_grads.append(None)
            else:
                g = randn(SHAPES[i], gen, grad_scales[i])
                p.grad = g.clone()
                step_grads.append(flat(g))
                updates[i] += 1
        opt.step()
        sched.step()
        grads_log.append(step_grads)
        after.append([flat(p) for p in params])
    hp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in opt.param_groups[0].items() if k not in ("params", "lr", "initial_lr")}
    return {
        "name": name,
        "optimizer_type": optimizer_type,
        "optimizer_args": optimizer_args,
        "ss_optimizer": ss,
        "resolved": hp,
        "groups": [{"name": n, "lr": lr, "params": idx} for (n, lr, idx) in groups],
        "scheduler_argv": scheduler_argv,
        "shapes": SHAPES,
        "init": init,
        "grads": grads_log,
        "lrs": lrs_log,
        "params_after": after,
        "final_state": [{"updates": updates[i], state_key: flat(opt.state[p][state_key])} for i, p in enumerate(params)],
    }


def lion_fixture():
    L = lion_pytorch.Lion
    return {
        "runs": [
            torch_run("Lion", "defaults_two_groups_warmup", [], [("textencoder", 5e-4, [0]), ("unet", 1e-3, [1, 2])],
                      ["--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "2"], 6, [1.0, 0.5, 2.0],
                      {(3, 2)}, 21, L, "exp_avg"),
            torch_run("Lion", "betas_wd", ["betas=0.95,0.98", "weight_decay=0.1"],
                      [("textencoder", 2e-3, [0, 2]), ("unet", 1e-3, [1])], ["--lr_scheduler", "cosine"], 6,
                      [1.0, 0.1, 1e-3], {(0, 1), (4, 0)}, 22, L, "exp_avg"),
            torch_run("lion_pytorch.Lion", "class_path_use_triton_false", ["use_triton=False", "weight_decay=0.01"],
                      [("unet", 3e-3, [0, 1, 2])], [], 6, [3.0, 1.0, 0.01], set(), 23, L, "exp_avg"),
        ]
    }


def sgd_fixture():
    S = torch.optim.SGD
    return {
        "runs": [
            torch_run("SGDNesterov", "defaults_momentum_added", [], [("textencoder", 5e-2, [0]), ("unet", 1e-1, [1, 2])],
                      ["--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "2"], 6, [1.0, 0.5, 2.0],
                      {(3, 2)}, 31, S, "momentum_buffer"),
            torch_run("SGDNesterov", "momentum_wd", ["momentum=0.8", "weight_decay=0.01"],
                      [("textencoder", 2e-2, [0, 2]), ("unet", 1e-2, [1])], ["--lr_scheduler", "cosine"], 6,
                      [1.0, 0.1, 1e-3], {(0, 1), (4, 0)}, 32, S, "momentum_buffer"),
            torch_run("SGDNesterov", "dampening_zero_foreach", ["weight_decay=0.001", "dampening=0", "foreach=False"],
                      [("unet", 3e-2, [0, 1, 2])], [], 6, [3.0, 1.0, 0.01], set(), 33, S, "momentum_buffer"),
        ]
    }


# ========================================================================= bitsandbytes mirror

QMAP_SIGNED = BF.create_dynamic_map(signed=True).numpy().astype(F32)  # state1 (and AdEMAMix's slow EMA)
QMAP_UNSIGNED = BF.create_dynamic_map(signed=False).numpy().astype(F32)  # state2 (second moment)


def quantize_2d(code, x, signed):
    """kernels.cu `quantize_2D<SIGNED>`: 7-step binary search from pivot 127 (the first probe reads
    `quadrants[1] = code[127]`, the second `quadrants[0|2] = code[63|191]`, which are the same
    entries), then the nearer neighbour by midpoint; ties stay on the searched pivot. NaN
    compares false everywhere and lands on code 0."""
    x = np.asarray(x, dtype=F32)
    pivot = np.full(x.shape, 127, dtype=np.int64)
    upper_pivot = np.full(x.shape, 255, dtype=np.int64)
    lower_pivot = np.zeros(x.shape, dtype=np.int64)
    lower = np.full(x.shape, F32(-1.0) if signed else F32(0.0), dtype=F32)
    upper = np.full(x.shape, F32(1.0), dtype=F32)
    val = code[pivot]
    i = 64
    while i > 0:
        gt = x > val
        lower_pivot = np.where(gt, pivot, lower_pivot)
        lower = np.where(gt, val, lower)
        upper_pivot = np.where(gt, upper_pivot, pivot)
        upper = np.where(gt, upper, val)
        pivot = np.where(gt, pivot + i, pivot - i)
        val = code[pivot]
        i >>= 1
    gt = x > val
    mid_up = (upper + val) * F32(0.5)
    mid_lo = (lower + val) * F32(0.5)
    res = np.where(gt, np.where(x > mid_up, upper_pivot, pivot), np.where(x < mid_lo, lower_pivot, pivot))
    return res.astype(np.int64)


def sign_fix(code, c, s):
    """'make sure state1 term has still the same sign after quantization' (unsigned char wraps)."""
    mism = np.signbit(code[c]) != np.signbit(s)
    c = np.where(mism, np.where(s > F32(0.0), c + 1, c - 1), c)
    return (c & 0xFF).astype(np.int64)


def sgn(x):
    return ((F32(0.0) < x).astype(F32) - (x < F32(0.0)).astype(F32)).astype(F32)


def padded(a, n_full, fill, dtype):
    out = np.full(n_full, fill, dtype=dtype)
    out[: a.size] = a
    return out


class MirrorSlot:
    """One parameter's bitsandbytes state: float32 arrays (32-bit path) or codes + block maxima."""

    def __init__(self, n, kind, eight_bit):
        self.step = 0
        self.eight = eight_bit
        blocks = (n // BLOCK) + bool(n % BLOCK)
        two = kind in ("adam", "ademamix")
        if eight_bit:
            self.c = {"state1": np.zeros(n, np.int64)}  # torch.zeros(uint8): code 0, absmax 0
            self.a = {"absmax1": np.zeros(blocks, F32)}
            if two:
                self.c["state2"] = np.zeros(n, np.int64)
                self.a["absmax2"] = np.zeros(blocks, F32)
            if kind == "ademamix":
                self.c["state3"] = np.zeros(n, np.int64)  # state1[1] in bitsandbytes' (2, *shape) buffer
                self.a["absmax3"] = np.zeros(blocks, F32)  # absmax1[1]
        else:
            self.s = {"state1": np.zeros(n, F32)}
            if two:
                self.s["state2"] = np.zeros(n, F32)
            if kind == "ademamix":
                self.s["state3"] = np.zeros(n, F32)


def hyper(kind, cfg, lr, step):
    """Optimizer2State/Optimizer1State.update_step (+ AdEMAMix.update_step): what reaches the kernel, as
    c_float."""
    betas = cfg["betas"]
    beta1, beta2 = betas[0], betas[1]
    beta3 = betas[2] if len(betas) >= 3 else 0.0
    alpha = cfg.get("alpha", 0.0)
    if kind == "ademamix" and (cfg.get("t_alpha") or cfg.get("t_beta3")):
        if cfg.get("t_alpha"):
            alpha = min(step * alpha / cfg["t_alpha"], alpha)
        if cfg.get("t_beta3"):
            ln_beta1, ln_beta3 = math.log(beta1), math.log(betas[2])
            s = step / cfg["t_beta3"]
            beta3 = min(math.exp((ln_beta1 * ln_beta3) / (((1 - s) * ln_beta3) + (s * ln_beta1))), betas[2])
    return {
        "beta1": F32(beta1), "beta2": F32(beta2), "beta3": F32(beta3), "alpha": F32(alpha),
        "eps": F32(cfg["eps"]), "lr": F32(lr), "wd": F32(cfg["weight_decay"]), "step": step,
    }


def powf(base, step):
    """The kernels' `__powf(beta, step)` is a fast approximation; the mirror (and lorakit) use the
    float32 rounding of libm's double `pow`, which is portable and reproducible."""
    return F32(math.pow(float(base), float(step)))


def corrections(h):
    c1 = F32(F32(1.0) - powf(h["beta1"], h["step"]))
    c2 = F32(np.sqrt(F32(F32(1.0) - powf(h["beta2"], h["step"])), dtype=F32))
    return c1, c2


def k32_2state(kind, p, g, st, h):
    """kOptimizer32bit2State<ADAM|ADEMAMIX> (update_scale = 1, gnorm_scale = 1)."""
    b1, b2, b3, alpha, eps, lr, wd = (h[k] for k in ("beta1", "beta2", "beta3", "alpha", "eps", "lr", "wd"))
    c1, c2 = corrections(h)
    one = F32(1.0)
    g = F32(1.0) * g
    s1, s2 = st["state1"], st["state2"]
    if kind == "ademamix":
        s3 = st["state3"]
        s1 = (s1 * b1) + ((one - b1) * g)
        s3 = (s3 * b3) + ((one - b3) * g)
        s2 = (s2 * b2) + ((one - b2) * g * g)
        p = p - lr * (((s1 / c1) + (alpha * s3)) / ((np.sqrt(s2) / c2) + eps))
        st["state3"] = s3
    else:
        step_size = F32(F32(-lr * c2) / c1)
        s1 = s1 * b1 + ((one - b1) * g)
        s2 = s2 * b2 + ((one - b2) * (g * g))
        p = p + (F32(one * step_size) * (s1 / (np.sqrt(s2) + (eps * c2))))
    if wd > 0:
        p = p * (one - (lr * wd))
    st["state1"], st["state2"] = s1, s2
    return p


def k32_1state(kind, p, g, st, h):
    """kOptimizer32bit1State<MOMENTUM|LION> (update_scale = 1, skip_zeros off)."""
    b1, b2, lr, wd = h["beta1"], h["beta2"], h["lr"], h["wd"]
    one = F32(1.0)
    g = F32(1.0) * g
    if wd > 0 and kind != "lion":
        g = g + (p * wd)
    s1 = st["state1"]
    if kind == "momentum":
        s1 = g.copy() if h["step"] == 1 else s1 * b1 + g
        p = p + one * (-lr * s1)
    else:
        if wd > 0:
            p = p * (one - lr * wd)
        p = p - one * (lr * sgn(s1 * b1 + ((one - b1) * g)))
        s1 = s1 * b2 + ((one - b2) * g)
    st["state1"] = s1
    return p


def k8_2state(kind, p, g, sl, h):
    """kOptimizerStatic8bit2StateBlockwise<ADAM|ADEMAMIX, 256, 1>: dequantise (code × block absmax),
    update in float32, new block absmax over the padded block, update the parameter, requantise
    s/absmax with quantize_2D (+ sign fix for the signed states)."""
    b1, b2, b3, alpha, eps, lr, wd = (h[k] for k in ("beta1", "beta2", "beta3", "alpha", "eps", "lr", "wd"))
    c1, c2 = corrections(h)
    step_size = F32(F32(-lr * c2) / c1)
    one = F32(1.0)
    n = p.size
    blocks = sl.a["absmax1"].size
    nf = blocks * BLOCK
    blk = np.arange(nf) // BLOCK
    gv = padded(g, nf, 0.0, F32)  # Load(..., (T)0.0f) beyond n
    cs1 = padded(sl.c["state1"], nf, 128, np.int64)  # LoadChar(..., 128)
    cs2 = padded(sl.c["state2"], nf, 0, np.int64)  # LoadChar(..., 0)
    finite = np.isfinite(gv)
    gz = np.where(finite, gv, F32(0.0)) * F32(1.0)
    s2 = QMAP_UNSIGNED[cs2] * sl.a["absmax2"][blk]
    s2 = (s2 * b2) + (((one - b2) * gz * gz))
    s1 = QMAP_SIGNED[cs1] * sl.a["absmax1"][blk]
    s1 = (s1 * b1) + (((one - b1) * gz))
    s1 = np.where(finite, s1, F32(0.0))
    s2 = np.where(finite, s2, F32(0.0))
    if kind == "ademamix":
        cs3 = padded(sl.c["state3"], nf, 128, np.int64)
        s3 = QMAP_SIGNED[cs3] * sl.a["absmax3"][blk]
        s3 = (s3 * b3) + (((one - b3) * gz))
        s3 = np.where(finite, s3, F32(0.0))
    m1 = np.abs(s1).reshape(blocks, BLOCK).max(axis=1)
    m2 = np.abs(s2).reshape(blocks, BLOCK).max(axis=1)
    pv = p.copy()
    fin = finite[:n]
    if kind == "ademamix":
        m3 = np.abs(s3).reshape(blocks, BLOCK).max(axis=1)
        new = pv - lr * (((s1[:n] / c1) + (alpha * s3[:n])) / ((np.sqrt(s2[:n]) / c2) + eps))
    else:
        new = pv + ((step_size * ((s1[:n] / (np.sqrt(s2[:n]) + (c2 * eps))))))
    if wd > 0:
        new = new * (one - (lr * wd))
    pv = np.where(fin, new, pv)
    q1 = sign_fix(QMAP_SIGNED, quantize_2d(QMAP_SIGNED, s1 / m1[blk], True), s1)
    q2 = quantize_2d(QMAP_UNSIGNED, s2 / m2[blk], False)
    sl.c["state1"], sl.c["state2"] = q1[:n], q2[:n]
    sl.a["absmax1"], sl.a["absmax2"] = m1.astype(F32), m2.astype(F32)
    if kind == "ademamix":
        q3 = sign_fix(QMAP_SIGNED, quantize_2d(QMAP_SIGNED, s3 / m3[blk], True), s3)
        sl.c["state3"], sl.a["absmax3"] = q3[:n], m3.astype(F32)
    return pv


def k8_1state(kind, p, g, sl, h):
    """kOptimizerStatic8bit1StateBlockwise<MOMENTUM|LION, 256, 1> (skip_zeros off)."""
    b1, b2, lr, wd = h["beta1"], h["beta2"], h["lr"], h["wd"]
    one = F32(1.0)
    n = p.size
    blocks = sl.a["absmax1"].size
    nf = blocks * BLOCK
    blk = np.arange(nf) // BLOCK
    gv = padded(g, nf, 0.0, F32) * F32(1.0)
    cs1 = padded(sl.c["state1"], nf, 128, np.int64)
    pv = padded(p, nf, 0.0, F32)
    if wd > 0:
        if kind == "momentum":
            gv = gv + (pv * wd)
        else:
            pv = pv * (one - lr * wd)
    s1 = QMAP_SIGNED[cs1] * sl.a["absmax1"][blk]
    if kind == "momentum":
        s1 = gv.copy() if h["step"] == 1 else (s1 * b1) + gv
    else:
        upd = lr * sgn((s1 * b1) + ((one - b1) * gv))
        s1 = s1 * b2 + ((one - b2) * gv)
    m1 = np.abs(s1).reshape(blocks, BLOCK).max(axis=1)
    pv = pv - lr * s1 if kind == "momentum" else pv - upd
    q1 = sign_fix(QMAP_SIGNED, quantize_2d(QMAP_SIGNED, s1 / m1[blk], True), s1)
    sl.c["state1"], sl.a["absmax1"] = q1[:n], m1.astype(F32)
    return pv[:n]


class Mirror:
    """bitsandbytes' Optimizer8bit.step over numpy parameters."""

    def __init__(self, kind, cfg, optim_bits, min_8bit_size):
        self.kind, self.cfg, self.bits, self.min8 = kind, cfg, optim_bits, min_8bit_size
        self.slots = {}

    def update(self, key, p, g, lr):
        if key not in self.slots:
            self.slots[key] = MirrorSlot(p.size, self.kind, self.bits == 8 and p.size >= self.min8)
        sl = self.slots[key]
        sl.step += 1
        h = hyper(self.kind, self.cfg, lr, sl.step)
        two = self.kind in ("adam", "ademamix")
        if sl.eight:
            return (k8_2state if two else k8_1state)(self.kind, p, g, sl, h)
        return (k32_2state if two else k32_1state)(self.kind, p, g, sl.s, h)


def check_quantizer():
    """The mirror's quantize_2D against bitsandbytes' own CPU quantize_blockwise. Dequantisation is
    the same (code × block absmax). bitsandbytes' CPU routine is not an exact nearest-code search (it
    picks a farther code for a few values), so the check is that wherever the two differ the
    mirror's code is at least as near to the value as bitsandbytes' (CUDA's quantize_2D is nearest,
    ties aside)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16 * BLOCK, generator=gen) * torch.linspace(1e-4, 3.0, 16 * BLOCK)
    out = {}
    for signed, code in ((True, QMAP_SIGNED), (False, QMAP_UNSIGNED)):
        xs = x if signed else x.abs()
        q, state = BF.quantize_blockwise(xs, code=torch.from_numpy(code), blocksize=BLOCK)
        absmax = state.absmax.numpy()
        xv = xs.numpy().astype(F32)
        blk = np.arange(xv.size) // BLOCK
        norm = xv / absmax[blk]
        mine = quantize_2d(code, norm, signed)
        theirs = q.numpy().astype(np.int64)
        differ = mine != theirs
        assert np.all(np.abs(norm - code[mine]) <= np.abs(norm - code[theirs])), "mirror is the nearest code"
        assert differ.mean() < 0.01, differ.mean()
        deq = BF.dequantize_blockwise(q, state).numpy()
        assert np.array_equal(deq, code[theirs] * absmax[blk]), "dequantise = code × absmax"
        out["signed" if signed else "unsigned"] = {
            "elements": int(xv.size),
            "codes_differing": int(differ.sum()),
            "mirror_never_farther": True,
        }
    return out


def quant8_fixture():
    cases = []
    for signed, code in ((True, QMAP_SIGNED), (False, QMAP_UNSIGNED)):
        mids = ((code[:-1] + code[1:]) * F32(0.5)).astype(F32)
        just = np.nextafter(mids, np.float32(np.inf)).astype(F32)
        below = np.nextafter(mids, np.float32(-np.inf)).astype(F32)
        lo = -1.0 if signed else 0.0
        grid = np.linspace(lo, 1.0, 301).astype(F32)
        special = np.array([0.0, -0.0, 1.0, lo, 1e-9, -1e-9, 5.5e-7, 1.5, -1.5, np.nan], dtype=F32)
        xs = np.concatenate([code, mids, just, below, grid, special]).astype(F32)
        q = quantize_2d(code, xs, signed)
        cases.append({
            "signed": signed,
            "inputs_hex": f32_hex(xs),
            "codes_hex": u8_hex(q),
            # the signed states' sign fix, for the same inputs taken as the state values themselves
            "sign_fixed_hex": u8_hex(sign_fix(code, q, xs)) if signed else None,
        })
    return {
        "blocksize": BLOCK,
        "signed_map": QMAP_SIGNED.tolist(),
        "unsigned_map": QMAP_UNSIGNED.tolist(),
        "cases": cases,
        "bnb_quantize_blockwise_check": check_quantizer(),
    }


# ----------------------------------------------------------------------------------- bnb runs


def bnb_run(optimizer_type, name, optimizer_args, groups, scheduler_argv, steps, shapes, grad_scales, none_grads,
            seed, expect_class, store_grads, cpu_tol):
    """Builds the optimizer through sd-scripts, steps the CUDA mirror and (cross-check) the real
    optimizer on bitsandbytes' CPU backend with the same gradients."""
    if store_grads:
        gen = torch.Generator().manual_seed(seed)
        init = [randn(s, gen).numpy() for s in shapes]
    else:
        init = [det_values(det_seed(seed, -1, i), int(np.prod(s)), 1.0) for i, s in enumerate(shapes)]
    params = [torch.nn.Parameter(torch.from_numpy(a.copy()).reshape(s)) for a, s in zip(init, shapes)]
    trainable = [{"params": [params[i] for i in idx], "lr": lr} for (_, lr, idx) in groups]
    ss, opt, sched = sd_build(optimizer_type, optimizer_args, scheduler_argv, steps, trainable)
    assert type(opt) is expect_class, type(opt)
    hp = opt.param_groups[0]
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in hp.items() if k not in ("params", "lr", "initial_lr")}
    mirror = Mirror(opt.optimizer_name, cfg, opt.args.optim_bits, opt.args.min_8bit_size)
    where = {}
    for gi, (_, _, idx) in enumerate(groups):
        for pos, i in enumerate(idx):
            where[i] = (gi, pos)
    cur = [a.reshape(-1).astype(F32).copy() for a in init]
    small = [int(np.prod(s)) <= 64 for s in shapes]
    sample = [None if small[i] else sample_indices(int(np.prod(s))) for i, s in enumerate(shapes)]

    grads_log, lrs_log, after = [], [], []
    for step in range(steps):
        lrs = [g["lr"] for g in opt.param_groups]
        lrs_log.append(lrs)
        step_grads = []
        for i, p in enumerate(params):
            if (step, i) in none_grads:
                p.grad = None
                step_grads.append(None)
                continue
            n = int(np.prod(shapes[i]))
            if store_grads:
                g = randn(shapes[i], gen, grad_scales[i]).numpy().reshape(-1)
                step_grads.append(g.tolist())
            else:
                g = det_values(det_seed(seed, step, i), n, grad_scales[i])
            p.grad = torch.from_numpy(g.copy()).reshape(shapes[i])
            gi, _ = where[i]
            cur[i] = mirror.update(i, cur[i], g.astype(F32), lrs[gi]).astype(F32)
        opt.step()  # bitsandbytes' CPU backend, for the cross-check only
        sched.step()
        if store_grads:
            grads_log.append(step_grads)
        after.append([f32_hex(c if sample[i] is None else c[sample[i]]) for i, c in enumerate(cur)])

    # cross-check against bitsandbytes' CPU backend
    worst = 0.0
    for i, p in enumerate(params):
        worst = max(worst, float(np.abs(p.detach().numpy().reshape(-1) - cur[i]).max()))
    print(f"  {optimizer_type} {name}: largest |mirror - bnb CPU backend| = {worst:.3g}")
    assert worst <= cpu_tol, (name, worst)

    final_state = []
    for i in range(len(shapes)):
        sl = mirror.slots.get(i)
        if sl is None:
            final_state.append(None)
            continue
        entry = {"step": sl.step, "eight_bit": sl.eight}
        if sl.eight:
            for k, v in sl.c.items():
                entry[k + "_hex"] = u8_hex(v)
            for k, v in sl.a.items():
                entry[k] = v.astype(F32).tolist()
        else:
            for k, v in sl.s.items():
                entry[k + "_hex"] = f32_hex(v)
        final_state.append(entry)
    run = {
        "name": name,
        "optimizer_type": optimizer_type,
        "optimizer_args": optimizer_args,
        "ss_optimizer": ss,
        "bnb_kernel": opt.optimizer_name,
        "resolved": {**cfg, "optim_bits": opt.args.optim_bits, "min_8bit_size": opt.args.min_8bit_size},
        "groups": [{"name": n, "lr": lr, "params": idx} for (n, lr, idx) in groups],
        "scheduler_argv": scheduler_argv,
        "shapes": shapes,
        "data": "stored" if store_grads else {"generator": "splitmix64", "seed": seed, "grad_scales": grad_scales},
        "lrs": lrs_log,
        "none_grads": sorted([list(x) for x in none_grads]),
        "samples": [s.tolist() if s is not None else None for s in sample],
        "params_after_hex": after,
        "final_params_hex": [f32_hex(c) for c in cur],
        "final_state": final_state,
        "bnb_cpu_check": {"max_abs_param_diff": worst},
    }
    if store_grads:
        run["init"] = [a.reshape(-1).tolist() for a in init]
        run["grads"] = grads_log
    return run


def sample_indices(n):
    """Every 23rd element plus the last 12: what is compared after every step (the final
    parameters are stored whole)."""
    idx = set(range(0, n, 23)) | set(range(max(0, n - 12), n))
    return np.array(sorted(idx), dtype=np.int64)


BIG = [[41, 100], [4, 3], [5], [6, 10]]  # 4100 ≥ 4096: 8-bit by default (16 blocks + 4); others below
MID = [[20, 30], [4, 3], [256], [2, 2, 3, 3]]  # with min_8bit_size=256: 600 (2 blocks + 88) and 256 go 8-bit


def eight_bit_runs(optimizer_type, cls, extra_args, cpu_tol, scale=1.0):
    return [
        bnb_run(optimizer_type, "defaults_4100", [], [("textencoder", 2e-3, [1, 3]), ("unet", 1e-3, [0, 2])],
                ["--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "2"], 6, BIG,
                [scale, scale, 2 * scale, 0.5 * scale], {(3, 1)}, 41, cls, False, cpu_tol),
        bnb_run(optimizer_type, "min_8bit_size_256_args", ["min_8bit_size=256", *extra_args],
                [("textencoder", 3e-3, [0, 1]), ("unet", 2e-3, [2, 3])], ["--lr_scheduler", "cosine"], 6, MID,
                [scale, 0.1 * scale, scale, 1e-3 * scale], {(0, 2), (4, 0)}, 42, cls, False, cpu_tol),
    ]


def ademamix_fixture():
    A = bnb.optim.AdEMAMix
    return {
        "runs": [
            bnb_run("bitsandbytes.optim.AdEMAMix", "defaults_two_groups_warmup", [],
                    [("textencoder", 5e-4, [0]), ("unet", 1e-3, [1, 2])],
                    ["--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "2"], 6, SHAPES, [1.0, 0.5, 2.0],
                    {(3, 2)}, 51, A, True, 1e-6),
            bnb_run("bitsandbytes.optim.AdEMAMix", "schedulers_betas_wd",
                    ["betas=(0.8, 0.99, 0.999)", "alpha=8.0", "t_alpha=4", "t_beta3=5", "eps=1e-6", "weight_decay=0.1"],
                    [("textencoder", 2e-2, [0, 2]), ("unet", 1e-2, [1])], ["--lr_scheduler", "cosine"], 6, SHAPES,
                    [1.0, 0.1, 1e-6], {(0, 1), (4, 0)}, 52, A, True, 5e-4),  # decay order: lr²·wd·|update|
            bnb_run("bitsandbytes.optim.AdEMAMix", "two_betas_no_decay", ["betas=(0.9, 0.95)", "weight_decay=0"],
                    [("unet", 5e-2, [0, 1, 2])], [], 6, SHAPES, [3.0, 1.0, 0.01], set(), 53, A, True, 1e-6),
        ]
    }


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    outputs = {
        "lion.json": lion_fixture(),
        "sgd.json": sgd_fixture(),
        "ademamix.json": ademamix_fixture(),
        "quant8.json": quant8_fixture(),
        "adamw8bit.json": {"runs": eight_bit_runs("AdamW8bit", bnb.optim.AdamW8bit, ["betas=0.8,0.99", "eps=1e-6", "weight_decay=0.1"], 1e-3)},
        "lion8bit.json": {"runs": eight_bit_runs("Lion8bit", bnb.optim.Lion8bit, ["betas=0.95,0.98", "weight_decay=0.1"], 1e-3)},
        "sgd8bit.json": {"runs": eight_bit_runs("SGDNesterov8bit", bnb.optim.SGD8bit, ["momentum=0.8", "weight_decay=0.01"], 1e-3)},
        "ademamix8bit.json": {"runs": eight_bit_runs(
            "bitsandbytes.optim.AdEMAMix8bit", bnb.optim.AdEMAMix8bit,
            ["betas=(0.8, 0.99, 0.999)", "alpha=8.0", "t_alpha=4", "t_beta3=5", "weight_decay=0.1"], 1e-3)},
    }
    versions = {
        "torch": torch.__version__, "bitsandbytes": bnb.__version__, "numpy": np.__version__,
        "lion_pytorch": "0.2.3", "python": sys.version.split()[0],
    }
    for name, data in outputs.items():
        data = {"generator": "tools/reference/optim_8bit_fixture.py", "versions": versions, **data}
        path = os.path.join(OUT_DIR, name)
        with open(path, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
