"""Reference numbers for lorakit's loss and noise options, computed by sd-scripts' own functions
(library/train_util.py: get_huber_threshold_if_needed, conditional_loss; library/
custom_train_functions.py: apply_snr_weight, scale_v_prediction_loss_like_noise_prediction,
add_v_prediction_like_loss, apply_debiased_estimation, apply_noise_offset, pyramid_noise_like)
on a diffusers DDPMScheduler configured as sd-scripts configures it.

Random draws inside sd-scripts' noise functions are recorded (random.random and torch.randn are
wrapped), so lorakit can be fed the same draws and must produce the same numbers.

Run: PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/loss_noise_fixture.py
"""
import json
import pathlib
import random
import types

import torch
from diffusers import DDPMScheduler
from safetensors.torch import save_file

from library import custom_train_functions as ctf
from library import train_util

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests/fixtures/reference/loss_noise"
OUT.mkdir(parents=True, exist_ok=True)

sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False)
ctf.prepare_scheduler_for_custom_training(sched, "cpu")

g = torch.Generator().manual_seed(0)
B = 6
timesteps = torch.tensor([0, 1, 10, 250, 500, 999])
pred = torch.randn(B, 4, 8, 8, generator=g)
target = torch.randn(B, 4, 8, 8, generator=g)
sample_weights = torch.tensor([1.0, 1.0, 0.5, 1.0, 0.25, 1.0])
tensors = {"pred": pred, "target": target, "timesteps": timesteps.to(torch.int64), "sample_weights": sample_weights}

cases = []
def case(name, loss_type="l2", huber_schedule="snr", huber_c=0.1, huber_scale=1.0, min_snr_gamma=None,
         scale_v=False, v_like=None, debiased=False, v_prediction=False):
    args = types.SimpleNamespace(loss_type=loss_type, huber_schedule=huber_schedule, huber_c=huber_c, huber_scale=huber_scale)
    c = train_util.get_huber_threshold_if_needed(args, timesteps, sched)
    loss = train_util.conditional_loss(pred, target, loss_type, "none", c)
    loss = loss.mean([1, 2, 3]) * sample_weights
    if min_snr_gamma:
        loss = ctf.apply_snr_weight(loss, timesteps, sched, min_snr_gamma, v_prediction)
    if scale_v:
        loss = ctf.scale_v_prediction_loss_like_noise_prediction(loss, timesteps, sched)
    if v_like:
        loss = ctf.add_v_prediction_like_loss(loss, timesteps, sched, v_like)
    if debiased:
        loss = ctf.apply_debiased_estimation(loss, timesteps, sched, v_prediction)
    cases.append(dict(name=name, loss_type=loss_type, huber_schedule=huber_schedule, huber_c=huber_c,
                      huber_scale=huber_scale, min_snr_gamma=min_snr_gamma, scale_v_pred_loss_like_noise_pred=scale_v,
                      v_pred_like_loss=v_like, debiased_estimation_loss=debiased, v_prediction=v_prediction,
                      per_sample=loss.tolist(), loss=loss.mean().item(),
                      huber_c_values=None if c is None else c.tolist()))

case("l2")
case("l1", loss_type="l1")
for sch in ["constant", "exponential", "snr"]:
    case(f"huber_{sch}", loss_type="huber", huber_schedule=sch, huber_c=0.2, huber_scale=1.5)
    case(f"smooth_l1_{sch}", loss_type="smooth_l1", huber_schedule=sch, huber_c=0.2, huber_scale=1.5)
case("min_snr_5", min_snr_gamma=5.0)
case("min_snr_5_v", min_snr_gamma=5.0, v_prediction=True)
case("scale_v_like_noise", scale_v=True, v_prediction=True)
case("v_pred_like_0.3", v_like=0.3)
case("debiased", debiased=True)
case("debiased_v", debiased=True, v_prediction=True)
case("all_eps", loss_type="huber", min_snr_gamma=5.0, v_like=0.2, debiased=True)
case("all_v", loss_type="smooth_l1", huber_schedule="exponential", min_snr_gamma=3.0, scale_v=True, debiased=True, v_prediction=True)

# Noise functions with recorded draws.
latents = torch.randn(2, 4, 16, 12, generator=g) * 0.8 + 0.3
noise = torch.randn(2, 4, 16, 12, generator=g)
tensors.update(latents=latents, noise=noise)

recorded = []
real_randn = torch.randn
def recording_randn(*shape, **kw):
    kw.pop("device", None)
    t = real_randn(*shape, generator=g)
    recorded.append(t.clone())
    return t
torch.randn = recording_randn
rs = []
real_random = ctf.random.random
def recording_random():
    v = real_random()
    rs.append(v)
    return v
ctf.random.random = recording_random

noise_cases = []
for name, offset, adaptive in [("offset", 0.1, None), ("offset_adaptive", 0.05, 0.3), ("offset_adaptive_negative", 0.05, -2.0)]:
    recorded.clear()
    out = ctf.apply_noise_offset(latents, noise.clone(), offset, adaptive)
    tensors[f"{name}_draw"] = recorded[0]
    tensors[f"{name}_out"] = out
    noise_cases.append(dict(name=name, kind="offset", offset=offset, adaptive=adaptive))
random.seed(5)
for name, iterations, discount in [("pyramid_6_0.3", 6, 0.3), ("pyramid_2_0.5", 2, 0.5)]:
    recorded.clear(); rs.clear()
    out = ctf.pyramid_noise_like(noise.clone(), "cpu", iterations, discount)
    for i, t in enumerate(recorded):
        tensors[f"{name}_level{i}"] = t
    tensors[f"{name}_out"] = out
    noise_cases.append(dict(name=name, kind="pyramid", iterations=iterations, discount=discount, r=[u * 2 + 2 for u in rs], levels=len(recorded)))
torch.randn = real_randn
ctf.random.random = real_random

save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "tensors.safetensors")
(OUT / "cases.json").write_text(json.dumps({"loss": cases, "noise": noise_cases}, indent=1) + "\n")
print(f"{len(cases)} loss cases, {len(noise_cases)} noise cases →", OUT)
