"""Reference numbers for lorakit's rectified-flow objective, computed by sd-scripts' own functions:
library/flux_train_utils.py (get_noisy_model_input_and_timesteps, apply_model_prediction_type,
compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3, get_sigmas, time_shift,
get_lin_function), library/sd3_train_utils.py (get_noisy_model_input_and_timesteps,
FlowMatchEulerDiscreteScheduler) and library/train_util.py (get_huber_threshold_if_needed,
conditional_loss), with the loss assembled as train_network.py's process_batch assembles it.

torch's RNG cannot be reproduced in Rust, so every random draw sd-scripts makes (torch.rand,
torch.randn, torch.normal, torch.randn_like) is made by a recording wrapper; lorakit is fed the
same draws and must produce the same sigmas, timesteps, noisy input, target, preconditioned
prediction, weighting and loss. torch.normal(mean, std) is drawn as `mean + std·z` and z is stored.

Also: the FlowMatchEulerDiscrete σ table from diffusers' FlowMatchEulerDiscreteScheduler (and
sd-scripts' copy of it, asserted equal here), and summary statistics of each sampling's σ over many
real torch draws, so lorakit's own draws can be checked to come from the same distributions.

Run: PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/flow_objective_fixture.py
"""
import json
import pathlib
import types

import torch
from diffusers import FlowMatchEulerDiscreteScheduler as DiffusersFlowMatch
from safetensors.torch import save_file

from library import flux_train_utils as ftu
from library import sd3_train_utils as s3u
from library import train_util

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests/fixtures/reference/flow_objective"
OUT.mkdir(parents=True, exist_ok=True)

g = torch.Generator().manual_seed(0)
B, C, H, W = 4, 16, 8, 12
latents = torch.randn(B, C, H, W, generator=g) * 0.7 + 0.1
noise = torch.randn(B, C, H, W, generator=g)
model_pred = torch.randn(B, C, H, W, generator=g)
loss_weights = torch.tensor([1.0, 0.5, 1.0, 0.25])
tensors = {"latents": latents, "noise": noise, "model_pred": model_pred, "loss_weights": loss_weights}

real = types.SimpleNamespace(rand=torch.rand, randn=torch.randn, normal=torch.normal, randn_like=torch.randn_like)


def shape_of(args, kw):
    if "size" in kw:
        return tuple(kw["size"])
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(args[0])
    return tuple(args)


class Recorder:
    """Replaces torch's samplers while sd-scripts runs, recording each draw in order."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)
        self.draws = []

    def rand(self, *args, **kw):
        t = real.rand(shape_of(args, kw), generator=self.g)
        self.draws.append(("uniform", t))
        return t

    def randn(self, *args, **kw):
        t = real.randn(shape_of(args, kw), generator=self.g)
        self.draws.append(("normal", t))
        return t

    def normal(self, mean=0.0, std=1.0, size=None, **kw):
        z = real.randn(tuple(size), generator=self.g)
        self.draws.append(("normal", z))
        return z * std + mean

    def randn_like(self, x, **kw):
        t = real.randn(x.shape, generator=self.g)
        self.draws.append(("normal", t))
        return t

    def __enter__(self):
        torch.rand, torch.randn, torch.normal, torch.randn_like = self.rand, self.randn, self.normal, self.randn_like
        return self

    def __exit__(self, *exc):
        torch.rand, torch.randn, torch.normal, torch.randn_like = real.rand, real.randn, real.normal, real.randn_like


def assembled_loss(args, pred, target, timesteps, weighting, scheduler):
    """train_network.py process_batch: conditional loss, × weighting, mean per sample, × loss weights, mean."""
    huber_c = train_util.get_huber_threshold_if_needed(args, timesteps, scheduler)
    loss = train_util.conditional_loss(pred.float(), target.float(), args.loss_type, "none", huber_c)
    if weighting is not None:
        loss = loss * weighting
    loss = loss.mean(dim=list(range(1, loss.ndim)))
    loss = loss * loss_weights
    return loss.mean(), huber_c


FLUX_DEFAULTS = dict(timestep_sampling="sigma", sigmoid_scale=1.0, discrete_flow_shift=3.0, model_prediction_type="raw",
                     weighting_scheme="uniform", logit_mean=0.0, logit_std=1.0, mode_scale=1.29, ip_noise_gamma=None,
                     ip_noise_gamma_random_strength=False, loss_type="l2", huber_schedule="exponential", huber_c=0.1,
                     huber_scale=1.0)
SD3_DEFAULTS = dict(weighting_scheme="uniform", logit_mean=0.0, logit_std=1.0, mode_scale=1.29, training_shift=1.0,
                    min_timestep=None, max_timestep=None, loss_type="l2", huber_schedule="exponential", huber_c=0.1,
                    huber_scale=1.0)

cases = []


def record_case(name, family, opts, draws, noisy, timesteps, sigmas, pred, target, weighting, loss, huber_c):
    kinds = [k for k, _ in draws]
    level = draws[0][1]
    tensors[f"{name}.level_draws"] = level
    entry = dict(name=name, family=family, options=opts, level_draw=kinds[0], loss=loss.item(),
                 huber_c=None if huber_c is None else huber_c.tolist(),
                 weighting=None if weighting is None else weighting.flatten().tolist())
    if len(draws) > 1:
        tensors[f"{name}.xi"] = draws[1][1]
        entry["ip_strength_draw"] = draws[2][1].item() if len(draws) > 2 else None
    tensors[f"{name}.sigmas"] = sigmas.flatten().float().contiguous()
    tensors[f"{name}.timesteps"] = timesteps.float().contiguous()
    tensors[f"{name}.noisy"] = noisy.contiguous()
    tensors[f"{name}.pred"] = pred.contiguous()
    tensors[f"{name}.target"] = target.contiguous()
    cases.append(entry)


def flux_case(name, seed, **kw):
    opts = dict(FLUX_DEFAULTS, **kw)
    args = types.SimpleNamespace(**opts)
    sched = s3u.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=args.discrete_flow_shift)
    with Recorder(seed) as rec:
        noisy, timesteps, sigmas = ftu.get_noisy_model_input_and_timesteps(args, sched, latents, noise, "cpu", torch.float32)
    pred, weighting = ftu.apply_model_prediction_type(args, model_pred, noisy, sigmas)
    target = noise - latents
    loss, huber_c = assembled_loss(args, pred, target, timesteps, weighting, sched)
    record_case(name, "flux", opts, rec.draws, noisy, timesteps, sigmas, pred, target, weighting, loss, huber_c)


def sd3_case(name, seed, **kw):
    opts = dict(SD3_DEFAULTS, **kw)
    args = types.SimpleNamespace(**opts)
    sched = s3u.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=args.training_shift)
    with Recorder(seed) as rec:
        noisy, timesteps, sigmas = s3u.get_noisy_model_input_and_timesteps(args, latents, noise, "cpu", torch.float32)
    # sd3_train_network.py get_noise_pred_and_target: preconditioning, weighting, target x0.
    pred = model_pred * (-sigmas) + noisy
    weighting = s3u.compute_loss_weighting_for_sd3(weighting_scheme=args.weighting_scheme, sigmas=sigmas)
    target = latents
    loss, huber_c = assembled_loss(args, pred, target, timesteps, weighting, sched)
    record_case(name, "sd3", opts, rec.draws, noisy, timesteps, sigmas, pred, target, weighting, loss, huber_c)


flux_case("flux_sigma_raw", 1)
flux_case("flux_sigma_sigma_scaled", 2, model_prediction_type="sigma_scaled")
flux_case("flux_sigma_logit_normal", 3, model_prediction_type="sigma_scaled", weighting_scheme="logit_normal",
          logit_mean=0.3, logit_std=1.2, loss_type="l1")
flux_case("flux_sigma_mode", 4, weighting_scheme="mode", discrete_flow_shift=3.1582, loss_type="huber")
flux_case("flux_sigma_sqrt", 5, model_prediction_type="sigma_scaled", weighting_scheme="sigma_sqrt")
flux_case("flux_cosmap", 6, model_prediction_type="sigma_scaled", weighting_scheme="cosmap", loss_type="smooth_l1",
          huber_schedule="constant", huber_c=0.2, huber_scale=1.5)
flux_case("flux_uniform_additive", 7, timestep_sampling="uniform", model_prediction_type="additive")
flux_case("flux_sigmoid", 8, timestep_sampling="sigmoid", sigmoid_scale=1.5, loss_type="smooth_l1", huber_c=0.3)
flux_case("flux_shift_ip", 9, timestep_sampling="shift", discrete_flow_shift=3.1582, ip_noise_gamma=0.1)
flux_case("flux_flux_shift_ip_random", 10, timestep_sampling="flux_shift", sigmoid_scale=0.8, ip_noise_gamma=0.2,
          ip_noise_gamma_random_strength=True, loss_type="huber", huber_c=0.05, huber_scale=2.0)
sd3_case("sd3_uniform", 11)
sd3_case("sd3_logit_normal_shift", 12, weighting_scheme="logit_normal", training_shift=3.0)
sd3_case("sd3_mode_range", 13, weighting_scheme="mode", min_timestep=100, max_timestep=900, loss_type="huber")
sd3_case("sd3_sigma_sqrt", 14, weighting_scheme="sigma_sqrt")
sd3_case("sd3_cosmap", 15, weighting_scheme="cosmap", loss_type="smooth_l1", huber_schedule="constant", huber_c=0.2)

# flux_shift's μ depends on the packed sequence length: large latents (64×48 → 32·24 = 768).
big = torch.zeros(3, 16, 64, 48)
args = types.SimpleNamespace(**dict(FLUX_DEFAULTS, timestep_sampling="flux_shift"))
with Recorder(16) as rec:
    _, big_t, big_s = ftu.get_noisy_model_input_and_timesteps(args, s3u.FlowMatchEulerDiscreteScheduler(1000, 3.0), big, torch.zeros_like(big), "cpu", torch.float32)
tensors["flux_shift_large.level_draws"] = rec.draws[0][1]
tensors["flux_shift_large.sigmas"] = big_s.flatten().contiguous()
tensors["flux_shift_large.timesteps"] = big_t.contiguous()

# The σ tables: diffusers' scheduler, and sd-scripts' copy (the one it trains with) must agree.
tables = []
for shift in [1.0, 3.0, 3.1582]:
    d = DiffusersFlowMatch(num_train_timesteps=1000, shift=shift)
    s = s3u.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    assert torch.equal(d.sigmas[:1000], s.sigmas) and torch.equal(d.timesteps, s.timesteps), shift
    tensors[f"table_{shift}.sigmas"] = d.sigmas[:1000].contiguous().float()
    tensors[f"table_{shift}.timesteps"] = d.timesteps.contiguous().float()
    tables.append(shift)

# Distributions: σ of each sampling over many real torch draws (sd-scripts' functions unpatched).
torch.manual_seed(1234)
N = 200_000
stats = []
dist_latents = torch.zeros(N, 1, 8, 12)


def dist(name, family, **kw):
    if family == "flux":
        args = types.SimpleNamespace(**dict(FLUX_DEFAULTS, **kw))
        sched = s3u.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=args.discrete_flow_shift)
        _, _, s = ftu.get_noisy_model_input_and_timesteps(args, sched, dist_latents, dist_latents, "cpu", torch.float32)
        opts = dict(FLUX_DEFAULTS, **kw)
    else:
        args = types.SimpleNamespace(**dict(SD3_DEFAULTS, **kw))
        _, _, s = s3u.get_noisy_model_input_and_timesteps(args, dist_latents, dist_latents, "cpu", torch.float32)
        opts = dict(SD3_DEFAULTS, **kw)
    s = s.flatten().double()
    q = torch.quantile(s.float(), torch.tensor([0.1, 0.5, 0.9])).tolist()
    stats.append(dict(name=name, family=family, options=opts, n=N, mean=s.mean().item(), std=s.std().item(),
                      quantiles=q))


dist("flux_sigma", "flux")
dist("flux_sigma_logit_normal", "flux", weighting_scheme="logit_normal", logit_mean=0.3, logit_std=1.2)
dist("flux_sigma_mode", "flux", weighting_scheme="mode")
dist("flux_uniform", "flux", timestep_sampling="uniform")
dist("flux_sigmoid", "flux", timestep_sampling="sigmoid", sigmoid_scale=1.5)
dist("flux_shift", "flux", timestep_sampling="shift", discrete_flow_shift=3.1582)
dist("flux_flux_shift", "flux", timestep_sampling="flux_shift")
dist("sd3_logit_normal_shift", "sd3", weighting_scheme="logit_normal", training_shift=3.0)

save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(OUT / "tensors.safetensors"))
with open(OUT / "cases.json", "w") as f:
    json.dump(dict(shape=[B, C, H, W], cases=cases, tables=tables, distributions=stats,
                   flux_shift_large=dict(shape=list(big.shape), level_draw=rec.draws[0][0])), f, indent=1)
print(f"wrote {len(cases)} cases, {len(tables)} tables, {len(stats)} distributions to {OUT}")
