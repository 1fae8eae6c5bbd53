#!/usr/bin/env python3
"""Reference fixture for lorakit-models' noise schedule and samplers.

Runs diffusers' schedulers, configured as SD1.5's scheduler_config.json configures them, with a
deterministic fake model, and saves timesteps, final latents, the ancestral noise and the schedule
tables to tests/fixtures/reference/samplers/samplers.safetensors. The Rust test
crates/lorakit-models/tests/samplers.rs replays the same runs and compares.

Run:  /work/bench/venv/bin/python tools/reference/samplers_fixture.py
(diffusers 0.32.1, torch CPU; no hub access: schedulers are built from the config dict below.)
"""

import json
import os
import sys

import diffusers
import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_a_mod
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "reference", "samplers")

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (PNDMScheduler keys dropped:
# skip_prk_steps). timestep_spacing is absent there, so each scheduler uses its own default.
SD15_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

KINDS = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
}
PREDICTIONS = {"eps": "epsilon", "v": "v_prediction"}
STEPS = [1, 2, 5, 20, 50]
# Zero-terminal-SNR runs (v-prediction only, the combination that is used in practice).
ZTSNR_STEPS = [5, 20]
SHAPE = (1, 4, 8, 8)


def fake_model(x, t):
    """Deterministic stand-in for a UNet: depends on the input and (continuously) on t."""
    t = torch.as_tensor(t)
    return 0.3 * torch.tanh(x) + 0.05 * x * torch.cos(t / 300)


class NoiseBank:
    """Replaces randn_tensor in the Euler-ancestral module: hands out pre-generated noise in order."""

    def __init__(self, bank):
        self.bank = bank
        self.used = 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        n = self.bank[self.used].reshape(shape).to(dtype=dtype or torch.float32)
        self.used += 1
        return n


def make(kind, pred, ztsnr=False):
    cls, extra = KINDS[kind]
    cfg = dict(SD15_CONFIG)
    cfg.update(extra)
    cfg["prediction_type"] = pred
    if ztsnr:
        cfg["rescale_betas_zero_snr"] = True
    return cls.from_config(cfg)


def run(kind, pred, steps, init, bank, ztsnr=False):
    sched = make(kind, pred, ztsnr)
    sched.set_timesteps(steps)
    noise = NoiseBank(bank)
    saved = euler_a_mod.randn_tensor
    euler_a_mod.randn_tensor = noise
    try:
        lat = init * sched.init_noise_sigma
        for t in sched.timesteps:
            x_in = sched.scale_model_input(lat, t)
            out = fake_model(x_in, t)
            lat = sched.step(out, t, lat).prev_sample
    finally:
        euler_a_mod.randn_tensor = saved
    if kind != "euler_a":
        assert noise.used == 0
    else:
        assert noise.used == steps
    return sched.timesteps.to(torch.float64), lat.to(torch.float32).contiguous(), float(
        torch.as_tensor(sched.init_noise_sigma)
    )


def rescale_zero_terminal_snr_np(betas):
    """diffusers' rescale_zero_terminal_snr in numpy float32 (correctly rounded sqrt)."""
    f32 = np.float32
    acp = np.cumprod((f32(1) - betas).astype(np.float64)).astype(f32)  # torch: float64 accumulator
    sq = np.sqrt(acp)
    s0, st = sq[0], sq[-1]
    sq = (sq - st).astype(f32)
    sq = (sq * f32(s0 / f32(s0 - st))).astype(f32)
    bar = sq * sq
    alphas = np.concatenate([bar[:1], bar[1:] / bar[:-1]]).astype(f32)
    return (f32(1) - alphas).astype(f32)


def main():
    torch.manual_seed(1234)
    init = torch.randn(SHAPE, dtype=torch.float32)
    bank = torch.randn((max(STEPS),) + SHAPE, dtype=torch.float32)

    tensors = {"init_noise": init, "noise_bank": bank}
    index = []
    for kind in KINDS:
        for pname, pred in PREDICTIONS.items():
            for steps in STEPS:
                ts, lat, sigma = run(kind, pred, steps, init, bank)
                key = f"{kind}/{pname}/{steps}"
                assert torch.isfinite(lat).all(), key
                tensors[key + "/timesteps"] = ts
                tensors[key + "/latents"] = lat
                index.append({"key": key, "init_noise_sigma": sigma})
        for steps in ZTSNR_STEPS:
            ts, lat, sigma = run(kind, "v_prediction", steps, init, bank, ztsnr=True)
            key = f"{kind}/v_ztsnr/{steps}"
            assert torch.isfinite(lat).all(), key
            tensors[key + "/timesteps"] = ts
            tensors[key + "/latents"] = lat
            index.append({"key": key, "init_noise_sigma": sigma})

    # Training schedule as sd-scripts builds it (DDPMScheduler, SD1.5 betas).
    ddpm = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False
    )
    tensors["schedule/betas"] = ddpm.betas.clone()
    tensors["schedule/alphas_cumprod"] = ddpm.alphas_cumprod.clone()
    # sd-scripts prepare_scheduler_for_custom_training: all_snr, computed before any ZTSNR rescale.
    acp = ddpm.alphas_cumprod
    tensors["schedule/all_snr"] = ((torch.sqrt(acp) / torch.sqrt(1.0 - acp)) ** 2).clone()
    # Euler sigmas table (k-diffusion sigmas, increasing with t).
    tensors["schedule/sigmas"] = (((1 - acp) / acp) ** 0.5).clone()

    # add_noise / get_velocity with per-sample timesteps.
    torch.manual_seed(99)
    x0 = torch.randn((3, 4, 4, 4), dtype=torch.float32)
    eps = torch.randn((3, 4, 4, 4), dtype=torch.float32)
    t = torch.tensor([0, 500, 999], dtype=torch.int64)
    tensors["train/x0"] = x0
    tensors["train/noise"] = eps
    tensors["train/timesteps"] = t
    tensors["train/noisy"] = ddpm.add_noise(x0, eps, t)
    tensors["train/velocity"] = ddpm.get_velocity(x0, eps, t)

    ddpm_z = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        rescale_betas_zero_snr=True,
    )
    tensors["schedule_ztsnr/betas"] = ddpm_z.betas.clone()
    # The same rescale with correctly rounded float32 sqrt (torch's CPU sqrt goes through MKL
    # and is off by one ulp on ~18% of these entries; the tail of the rescaled table amplifies
    # that, so the Rust port is compared bit for bit against this one and loosely against torch).
    betas_cr = rescale_zero_terminal_snr_np(ddpm.betas.numpy())
    tensors["schedule_ztsnr/betas_cr"] = torch.from_numpy(betas_cr)
    acp_cr = np.cumprod((np.float32(1) - betas_cr).astype(np.float64)).astype(np.float32)
    tensors["schedule_ztsnr/alphas_cumprod_cr"] = torch.from_numpy(acp_cr)
    tensors["schedule_ztsnr/alphas_cumprod"] = ddpm_z.alphas_cumprod.clone()
    tensors["train_ztsnr/noisy"] = ddpm_z.add_noise(x0, eps, t)
    tensors["train_ztsnr/velocity"] = ddpm_z.get_velocity(x0, eps, t)

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    meta = {
        "generator": "tools/reference/samplers_fixture.py",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "config": json.dumps(SD15_CONFIG),
        "model": "0.3*tanh(x) + 0.05*x*cos(t/300)",
        "runs": json.dumps(index),
    }
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, "samplers.safetensors")
    save_file(tensors, path, metadata=meta)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)", file=sys.stderr)


if __name__ == "__main__":
    main()
