"""DDPM: ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models").

Timestep bookkeeping follows diffusers' DDPMScheduler exactly, so that a model played back here
gives the same samples as in diffusers for the same noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from diffusion_studio.core.samplers.base import (
    PredictionType,
    Sampler,
    SamplerSpec,
    StepOutput,
    check_choice,
    noise_like,
    option,
    register,
)
from diffusion_studio.core.schedule import NoiseSchedule

VarianceType = Literal["fixed_small", "fixed_large"]
VARIANCE_TYPES: tuple[str, ...] = get_args(VarianceType)


@dataclass(frozen=True)
class DDPMOptions:
    """variance_type: the variance of the added noise, beta~ (DDPM eq. 7) or beta."""

    variance_type: VarianceType = option(
        "fixed_small",
        "the added noise's variance: fixed_small = the posterior's beta~ (DDPM eq. 7), "
        "fixed_large = beta",
        choices=VARIANCE_TYPES,
    )


class DDPMSampler(Sampler):
    """Ancestral sampling, DDPM eq. 6-7, generalised to skipping timesteps."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        variance_type: VarianceType = "fixed_small",
        clip_sample: bool = False,
        clip_range: float = 1.0,
    ) -> None:
        super().__init__(schedule, prediction_type, clip_sample, clip_range)
        check_choice("DDPM variance type", variance_type, VARIANCE_TYPES)
        self.variance_type: VarianceType = variance_type

    @classmethod
    def options_from_diffusers(cls, scheduler_config: dict[str, Any]) -> dict[str, Any]:
        variance = scheduler_config.get("variance_type", "fixed_small")
        return {"variance_type": variance} if variance in VARIANCE_TYPES else {}

    def previous_timestep(self, i: int) -> int:
        """The timestep of step i + 1, or -1 after the last step."""
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """x_t -> x_{t_prev} at step i. model_output, x, noise: (B, ...). Noise is drawn from
        `generator` unless given; none is added at the last step (t = 0)."""
        t = int(self.timesteps[i])
        t_prev = self.previous_timestep(i)
        # 1. alphabar at t and t_prev; the effective alpha and beta of this (possibly long) step
        ab_t = self._alphabar(t)
        ab_prev = self._alphabar(t_prev) if t_prev >= 0 else 1.0
        alpha_step = ab_t / ab_prev
        beta_step = 1.0 - alpha_step
        # 2. the network's estimate of x_0 (DDPM eq. 15), optionally clipped
        pred_x0, _ = self.denoise(model_output, ab_t, x)
        # 3. the posterior mean mu~(x_t, x_0) (DDPM eq. 7)
        coeff_x0 = math.sqrt(ab_prev) * beta_step / (1.0 - ab_t)
        coeff_xt = math.sqrt(alpha_step) * (1.0 - ab_prev) / (1.0 - ab_t)
        prev_sample = coeff_x0 * pred_x0 + coeff_xt * x
        # 4. add noise with sigma^2 = beta~ (fixed_small, DDPM eq. 7) or beta (fixed_large)
        if t > 0:
            if self.variance_type == "fixed_small":
                variance = max((1.0 - ab_prev) / (1.0 - ab_t) * beta_step, 1e-20)
            else:
                variance = beta_step
            if noise is None:
                noise = noise_like(model_output, generator)
            prev_sample = prev_sample + math.sqrt(variance) * noise
        return StepOutput(prev_sample, pred_x0)


DDPM = register(
    SamplerSpec(
        name="ddpm",
        label="DDPM",
        help="ancestral: adds fresh noise every step; needs many steps, robust on small models "
        "(Ho et al. 2020)",
        sampler_class=DDPMSampler,
        options_class=DDPMOptions,
        diffusers_classes=("DDPMScheduler",),
        deterministic=False,
        default_steps=100,
        diffusers_clip_default=True,
        diffusers_spacing="leading",
        paper="Ho et al. 2020, Denoising Diffusion Probabilistic Models",
    )
)
