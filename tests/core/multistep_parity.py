"""Parity helpers for the VP multistep samplers (DPM-Solver++, UniPC) against diffusers.

diffusers keeps alphabar in float32 and rounds its `sigmas` to float32 at the end of
`set_timesteps`. The reference here is given our float64 alphabar before `set_timesteps` (so its
timesteps, Karras ones included, come from the same table), its float32 sigmas are checked
against ours, and then replaced by the same table in float64, recomputed with diffusers' own
functions, so that the step maths is compared on identical tables. Model outputs, samples and
noise stay float32 on both sides.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_studio.core.samplers.sigmas import ZERO_SNR_ALPHABAR
from diffusion_studio.core.sampling import first_step, sample
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig

DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}
DIFFUSERS_KIND = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
SHAPE = (3, 1, 4, 4)


def diffusers_scheduler(
    class_name: str,
    config: ScheduleConfig,
    prediction: str,
    spacing: str,
    karras: bool,
    steps: int,
    tables: str = "ours",
    **extra,
):
    """diffusers' scheduler `class_name` with `steps` timesteps set; on our float64 tables
    (tables = "ours") or its own float32 ones ("theirs")."""
    diffusers = pytest.importorskip("diffusers")
    ref = getattr(diffusers, class_name)(
        num_train_timesteps=config.num_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=DIFFUSERS_KIND[config.kind],
        rescale_betas_zero_snr=config.zero_terminal_snr,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        timestep_spacing=spacing,
        use_karras_sigmas=karras,
        **extra,
    )
    if tables == "ours":
        alphabar = NoiseSchedule(config).alphas_cumprod.clone()
        if config.zero_terminal_snr:
            alphabar[-1] = ZERO_SNR_ALPHABAR  # what diffusers does to its own table
        ref.alphas_cumprod = alphabar
    ref.set_timesteps(steps)
    if tables == "ours":
        table = ((1 - alphabar) / alphabar).sqrt().numpy()
        if karras:
            sigmas = ref._convert_to_karras(
                in_sigmas=np.flip(table).copy(), num_inference_steps=steps
            )
        else:
            sigmas = table[ref.timesteps.numpy()]
        sigmas = np.append(sigmas, 0.0)
        np.testing.assert_allclose(ref.sigmas.numpy(), sigmas, rtol=1e-6)
        ref.sigmas = torch.from_numpy(sigmas)
    ref.set_begin_index(0)
    return ref


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest |a - b| / (1 + |b|), after checking shapes and float32."""
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    return float(((a - b).abs() / (1 + b.abs())).max())


def step_by_step(ours, ref, seed: int = 0, stochastic: bool = False) -> float:
    """Both samplers through all their steps with the same model outputs, state and noise
    (fresh generators with equal seeds each step); the largest relative difference of
    prev_sample and of x_0 (diffusers' newest `model_outputs` entry)."""
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-12)
    data = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=data)
    ours.begin()
    worst = 0.0
    for i, t in enumerate(ours.timesteps.tolist()):
        model_output = torch.randn(SHAPE, generator=data)
        mine = ours.step(model_output, i, x, generator=torch.Generator().manual_seed(1000 + i))
        kwargs = {"generator": torch.Generator().manual_seed(1000 + i)} if stochastic else {}
        theirs = ref.step(model_output, t, x, **kwargs)
        worst = max(worst, relative(mine.prev_sample, theirs.prev_sample))
        worst = max(worst, relative(mine.pred_x0, ref.model_outputs[-1]))
        x = theirs.prev_sample
    return worst


class Net(torch.nn.Module):
    """A smooth deterministic stand-in for a network: (x (B, ...), t (B,)) -> (B, ...)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + t.float().view(-1, *([1] * (x.dim() - 1))) / 1000.0
        return torch.tanh(0.7 * x + 0.2 * torch.sin(3.0 * x)) * scale


def whole_run(ours, ref, seed: int = 0, x_start=None, t_start=None, stochastic=False):
    """A whole run of our sampling loop (`core.sampling.sample`) and of diffusers' pipeline loop
    with one generator each, seeded alike (initial noise, then each step's noise); from noise,
    or from x_start noised to t_start (diffusers: `set_begin_index`, `add_noise`). Returns the
    relative difference of the final samples."""
    model = Net()
    frames = list(
        sample(
            model,
            ours.schedule,
            ours,
            SHAPE[0],
            SHAPE[1:],
            torch.Generator().manual_seed(seed),
            x_start=x_start,
            t_start=t_start,
        )
    )
    generator = torch.Generator().manual_seed(seed)
    first = first_step(ours, t_start)
    x = torch.randn(SHAPE, generator=generator, dtype=torch.float32)
    ref.set_begin_index(first)
    if x_start is not None:
        t_first = ref.timesteps[first : first + 1].repeat(SHAPE[0])
        x = ref.add_noise(x_start.expand(SHAPE), x, t_first)
    with torch.no_grad():
        for t in ref.timesteps[first:].tolist():
            model_output = model(x, torch.full((SHAPE[0],), t))
            kwargs = {"generator": generator} if stochastic else {}
            x = ref.step(model_output, t, x, **kwargs).prev_sample
    assert len(frames) == len(ours.timesteps) - first + 1
    return relative(frames[-1].x_t, x)
