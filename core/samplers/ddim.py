"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models").

Timestep bookkeeping follows diffusers' DDIMScheduler exactly (the previous timestep is
t - T // n, alphabar = 1 before the first step: "set_alpha_to_one").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.samplers.base import (
    PredictionType,
    Sampler,
    SamplerSpec,
    StepOutput,
    noise_like,
    option,
    register,
)
from diffusion_studio.core.schedule import NoiseSchedule


@dataclass(frozen=True)
class DDIMOptions:
    """eta: how much fresh noise each step adds (DDIM eq. 16)."""

    eta: float = option(
        0.0, "noise per step: 0 = deterministic, 1 = as much as DDPM", minimum=0, maximum=1
    )


class DDIMSampler(Sampler):
    """DDIM, Song et al. eq. 12; eta = 0 is deterministic, eta = 1 matches DDPM's variance."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        eta: float = 0.0,
        clip_sample: bool = False,
        clip_range: float = 1.0,
    ) -> None:
        super().__init__(schedule, prediction_type, clip_sample, clip_range)
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"DDIM eta = {eta!r} is out of range: it must lie in [0, 1]")
        self.eta = float(eta)

    @classmethod
    def options_from_diffusers(cls, scheduler_config: dict[str, Any]) -> dict[str, Any]:
        return {}  # eta is an argument of diffusers' step(), not of its config: 0 by default

    @property
    def is_deterministic(self) -> bool:
        return self.eta == 0.0

    def previous_timestep(self, t: int) -> int:
        """t - T // n, as diffusers' DDIMScheduler does (-1 or below means "x_0")."""
        return int(t) - self.schedule.num_timesteps // self.num_inference_steps

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """x_t -> x_{t_prev} at step i (DDIM eq. 12). Noise is only drawn when eta > 0."""
        t = int(self.timesteps[i])
        t_prev = self.previous_timestep(t)
        # 1. alphabar at t and t_prev (alphabar = 1 before the first step, "set_alpha_to_one")
        ab_t = self._alphabar(t)
        ab_prev = self._alphabar(t_prev) if t_prev >= 0 else 1.0
        # 2. predicted x_0 and eps ("predicted x_0" term of eq. 12); when x_0 is clipped, eps
        #    is recomputed from it (`Sampler.denoise`)
        pred_x0, pred_eps = self.denoise(model_output, ab_t, x)
        # 3. sigma_t(eta) (DDIM eq. 16)
        variance = (1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)
        sigma = self.eta * math.sqrt(variance)
        # 4. "direction pointing to x_t" and x_{t_prev} (DDIM eq. 12)
        direction = math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * pred_eps
        prev_sample = math.sqrt(ab_prev) * pred_x0 + direction
        # 5. random noise sigma_t * eps_t
        if self.eta > 0:
            if noise is None:
                noise = noise_like(model_output, generator)
            prev_sample = prev_sample + sigma * noise
        return StepOutput(prev_sample, pred_x0)


DDIM = register(
    SamplerSpec(
        name="ddim",
        label="DDIM",
        help="deterministic at eta = 0, good with fewer steps (Song et al. 2021)",
        sampler_class=DDIMSampler,
        options_class=DDIMOptions,
        diffusers_classes=("DDIMScheduler",),
        deterministic=True,
        default_steps=50,
        diffusers_clip_default=True,
        diffusers_spacing="leading",
        paper="Song et al. 2021, Denoising Diffusion Implicit Models",
    )
)
