#!/usr/bin/env python3
"""Reference noise levels for lorakit's SD3 sampler (`samplers::flow::sd3_schedule`).

sd-scripts' SD3 sampler (library/sd3_train_utils.py `get_all_sigmas` over
sd3_utils.ModelSamplingDiscreteFlow(shift)) and diffusers' FlowMatchEulerDiscreteScheduler with
the same shift (StableDiffusion3Pipeline's scheduler) for several step counts and shifts; both
must agree before anything is written.

Run:  PYTHONPATH=/work/bench/py42 /work/bench/venv/bin/python tools/reference/sd3_sampler_fixture.py
(sd-scripts 48d368f at /work/bench/sd-scripts, diffusers 0.42.1, torch 2.6 CPU)
Writes tests/fixtures/reference/sd3_sampler/schedules.json.
"""

import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, "/work/bench/sd-scripts")


class ModelSamplingDiscreteFlow:
    """sd3_utils.ModelSamplingDiscreteFlow, copied verbatim in behaviour (importing sd3_utils
    pulls in sd-scripts' whole model stack)."""

    def __init__(self, shift=1.0):
        self.shift = shift
        self.sigmas = self.sigma(torch.arange(1, 1000 + 1, 1))

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return sigma * 1000

    def sigma(self, timestep):
        timestep = timestep / 1000.0
        if self.shift == 1.0:
            return timestep
        return self.shift * timestep / (1 + (self.shift - 1) * timestep)


def get_all_sigmas(sampling, steps):
    # sd3_train_utils.get_all_sigmas
    start = sampling.timestep(sampling.sigma_max)
    end = sampling.timestep(sampling.sigma_min)
    timesteps = torch.linspace(start, end, steps)
    sigs = [sampling.sigma(ts) for ts in timesteps]
    sigs += [0.0]
    return torch.FloatTensor(sigs)


def main():
    src = open("/work/bench/sd-scripts/library/sd3_train_utils.py").read()
    assert "def get_all_sigmas" in src and "torch.linspace(start, end, steps)" in src
    from diffusers import FlowMatchEulerDiscreteScheduler

    cases = []
    for steps in [1, 2, 5, 28, 30, 50]:
        for shift in [1.0, 3.0, 6.0]:
            ours = get_all_sigmas(ModelSamplingDiscreteFlow(shift), steps)
            sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
            sched.set_timesteps(steps)
            theirs = sched.sigmas
            if steps > 1:
                assert torch.allclose(ours, theirs.float(), atol=1e-6), (steps, shift, ours, theirs)
            cases.append({"steps": steps, "shift": shift, "sigmas": [float(s) for s in ours]})
    out = os.path.join(ROOT, "tests/fixtures/reference/sd3_sampler/schedules.json")
    with open(out, "w") as f:
        json.dump(cases, f, indent=1)
    print("wrote", out, len(cases))


if __name__ == "__main__":
    main()
