"""Euler and Euler ancestral (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models"), in the sigma scale.

The state is x = x_t / sqrt(alphabar_t) = x_0 + sigma eps, sigma = sqrt((1 - alphabar) / alphabar)
(`core.samplers.base`). In it the probability-flow ODE is

    dx / dsigma = (x - D(x; sigma)) / sigma         (Karras et al. eq. 1 with sigma(t) = t, eq. 3)

with D the denoiser: the network's estimate of x_0 (from x_t = x / sqrt(sigma^2 + 1), their
Table 1's c_in; `scale_model_input`). The slope (x - D) / sigma is the noise estimate eps, so an
Euler step from sigma to sigma' (their Algorithm 1, lines 4-5) is x' = x_0 + sigma' eps, DDIM's
update in this scale; Heun (`core.samplers.heun`) adds the correction.

Euler ancestral steps down to sigma_down with the ODE and adds fresh noise of sigma_up,
sigma_up^2 = sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2, sigma_down^2 = sigma_to^2 -
sigma_up^2: DDPM's posterior (Ho et al. 2020 eq. 7, fixed_small) written in the sigma scale, so
it is DDIM with eta = 1 (tests/core/test_sampler_euler.py checks both against DDIM).

Timesteps, sigmas, `init_noise_sigma` and `add_noise` follow diffusers' EulerDiscreteScheduler
and EulerAncestralDiscreteScheduler (0.42): the "linspace" spacing keeps its fractional
timesteps (np.linspace(0, T-1, n), unrounded), sigmas are interpolated linearly in sigma between
the schedule's integer timesteps, and Karras sigmas (eq. 5, rho = 7) run from the first to the
last spaced sigma, their timesteps interpolated in log sigma. Frames show the rounded timestep.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.samplers.base import (
    PredictionType,
    Sampler,
    SamplerSpec,
    StepOutput,
    TimestepSpacing,
    make_timesteps,
    noise_like,
    register,
    unsupported_settings,
)
from diffusion_studio.core.samplers.sigmas import karras_sigmas, schedule_sigmas, sigma_to_t
from diffusion_studio.core.schedule import NoiseSchedule


class SigmaSampler(Sampler):
    """What the samplers in the sigma scale share: sigmas, timesteps, input scaling, noising.

    After `set_timesteps(n, spacing)`: `sigmas` float64 (n + 1,), descending, the last 0;
    `timesteps` (n,) int64, or float64 when fractional (linspace spacing, Karras sigmas).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        clip_sample: bool = False,
        clip_range: float = 1.0,
        karras: bool = False,
    ) -> None:
        super().__init__(schedule, prediction_type, clip_sample, clip_range)
        if karras and not self.spec.karras:
            raise ConfigError(f"{self.spec.label} has no Karras sigma spacing (--karras)")
        self.karras = bool(karras)
        self.spacing: TimestepSpacing = "linspace"
        self.sigmas = np.zeros(1)
        self.set_timesteps(schedule.num_timesteps, "linspace")

    # ---- timesteps and sigmas

    def set_timesteps(self, num_inference_steps: int, spacing: TimestepSpacing = "leading") -> None:
        """Choose n timesteps and their sigmas (diffusers' Euler family's set_timesteps)."""
        T = self.schedule.num_timesteps
        # make_timesteps checks n and the spacing; linspace is then redone without rounding
        steps = make_timesteps(T, num_inference_steps, spacing).astype(np.float64)
        if spacing == "linspace":
            steps = np.linspace(0.0, T - 1, num_inference_steps)[::-1].copy()
        table = schedule_sigmas(self.schedule)
        sigmas = np.interp(steps, np.arange(T), table)  # linear in sigma between timesteps
        if self.karras:
            # Karras et al. eq. 5 between the spaced sigmas' ends; t interpolated in log sigma
            sigmas = karras_sigmas(float(sigmas[-1]), float(sigmas[0]), num_inference_steps)
            steps = sigma_to_t(sigmas, np.log(table))
        self.num_inference_steps = num_inference_steps
        self.spacing = spacing
        self.sigmas = np.append(sigmas, 0.0)
        whole = bool(np.all(steps == np.round(steps)))
        self.timesteps = torch.from_numpy(steps.astype(np.int64) if whole else steps.copy())

    def sigma(self, i: int) -> float:
        """sigma at step i (0 at i = n, after the last step)."""
        return float(self.sigmas[i])

    # ---- the sampling loop's interface

    @property
    def init_noise_sigma(self) -> float:
        """sigma_max for linspace and trailing spacing, sqrt(sigma_max^2 + 1) for leading (as
        diffusers: then x / sqrt(sigma^2 + 1), the first x_t, is exactly N(0, I))."""
        sigma_max = float(self.sigmas.max())
        if self.spacing in ("linspace", "trailing"):
            return sigma_max
        return math.sqrt(sigma_max**2 + 1.0)

    def scale_model_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """x_t = x / sqrt(sigma_i^2 + 1) (= sqrt(alphabar) x; Karras et al. Table 1's c_in)."""
        return x / math.sqrt(self.sigma(i) ** 2 + 1.0)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """x = x_0 + sigma_i noise: a clean x_0 (B, ...) at step i's noise level."""
        return x0 + self.sigma(i) * noise

    # ---- the denoiser

    def denoise_sigma(
        self, model_output: torch.Tensor, sigma: float, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) with x = x_0 + sigma eps, from the network's output at the state x (B, ...).

        Each as directly as the prediction type allows (x_0 as diffusers computes it):
          epsilon: eps as given,               x_0 = x - sigma eps
          v:       x_0 = x / (sigma^2 + 1) - sigma v / sqrt(sigma^2 + 1),
                   eps = v / sqrt(sigma^2 + 1) + sigma x / (sigma^2 + 1)
          x0:      x_0 as given,               eps = (x - x_0) / sigma
        (`split_prediction_at`'s formulas with x_t = x / sqrt(sigma^2 + 1)). With `clip_sample`,
        x_0 is clamped to [-r, r] and eps recomputed from it: one consistent pair, as
        `Sampler.denoise`.
        """
        if self.prediction_type == "epsilon":
            pred_eps = model_output
            pred_x0 = x - sigma * model_output
        elif self.prediction_type == "v":
            scale = math.sqrt(sigma**2 + 1.0)
            pred_x0 = x / scale**2 - (sigma / scale) * model_output
            pred_eps = model_output / scale + (sigma / scale**2) * x
        else:
            pred_x0 = model_output
            pred_eps = (x - model_output) / sigma
        if self.clip_sample:
            pred_x0 = pred_x0.clamp(-self.clip_range, self.clip_range)
            pred_eps = (x - pred_x0) / sigma
        return pred_x0, pred_eps


class EulerSampler(SigmaSampler):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 lines 4-5,
    without the second-order correction); deterministic. DDIM (eta = 0) is the same method in
    the x_t scale: both give identical samples on the same timesteps."""

    @classmethod
    def diffusers_notes(cls, scheduler_config: dict[str, Any]) -> list[str]:
        """EulerDiscreteScheduler settings other than its defaults (Karras sigmas aside)."""
        return unsupported_settings(
            scheduler_config,
            {
                "interpolation_type": ("linear",),
                "use_exponential_sigmas": (False,),
                "use_beta_sigmas": (False,),
                "sigma_min": (None,),
                "sigma_max": (None,),
                "timestep_type": ("discrete",),
                "final_sigmas_type": ("zero",),
            },
        )

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """x at sigma_i -> x at sigma_{i+1}. model_output, x: (B, ...). No noise is drawn."""
        sigma_next = self.sigma(i + 1)
        # 1. the denoiser D(x; sigma) and the slope d = (x - D) / sigma = eps (Algorithm 1 line 4)
        pred_x0, pred_eps = self.denoise_sigma(model_output, self.sigma(i), x)
        # 2. x + (sigma' - sigma) d = x_0 + sigma' eps (line 5): exactly x_0 at sigma' = 0
        return StepOutput(pred_x0 + sigma_next * pred_eps, pred_x0)


class EulerAncestralSampler(SigmaSampler):
    """Euler down to sigma_down, then fresh noise of sigma_up (DDPM's posterior in the sigma
    scale; see the module docstring). Stochastic."""

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        clip_sample: bool = False,
        clip_range: float = 1.0,
    ) -> None:
        super().__init__(schedule, prediction_type, clip_sample, clip_range)

    @staticmethod
    def ancestral_sigmas(sigma_from: float, sigma_to: float) -> tuple[float, float]:
        """(sigma_down, sigma_up): the deterministic target and the added noise's sigma, with
        sigma_down^2 + sigma_up^2 = sigma_to^2."""
        sigma_up = math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2)
        sigma_down = math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0))
        return sigma_down, sigma_up

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """x at sigma_i -> x at sigma_{i+1}. Noise (B, ...) is drawn from `generator` unless
        given; none at the last step (sigma_up = 0 there)."""
        sigma, sigma_next = self.sigma(i), self.sigma(i + 1)
        # 1. the denoiser D(x; sigma) and the noise estimate
        pred_x0, pred_eps = self.denoise_sigma(model_output, sigma, x)
        # 2. Euler down to sigma_down, then noise up to sigma_next's total variance
        sigma_down, sigma_up = self.ancestral_sigmas(sigma, sigma_next)
        prev_sample = pred_x0 + sigma_down * pred_eps
        if sigma_up > 0:
            if noise is None:
                noise = noise_like(model_output, generator)
            prev_sample = prev_sample + sigma_up * noise
        return StepOutput(prev_sample, pred_x0)


EULER = register(
    SamplerSpec(
        name="euler",
        label="Euler",
        help="deterministic first-order ODE steps in the sigma scale, as DDIM; optional Karras "
        "sigmas (Karras et al. 2022)",
        sampler_class=EulerSampler,
        diffusers_classes=("EulerDiscreteScheduler",),
        deterministic=True,
        karras=True,
        default_steps=50,
        paper="Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative "
        "Models",
    )
)

EULER_ANCESTRAL = register(
    SamplerSpec(
        name="euler-ancestral",
        label="Euler ancestral",
        help="Euler steps that add fresh noise each step (DDPM's noise in the sigma scale); "
        "varied samples, robust with few steps",
        sampler_class=EulerAncestralSampler,
        diffusers_classes=("EulerAncestralDiscreteScheduler",),
        deterministic=False,
        karras=False,  # diffusers' EulerAncestralDiscreteScheduler has no use_karras_sigmas
        default_steps=50,
        paper="Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative "
        "Models; Ho et al. 2020, Denoising Diffusion Probabilistic Models",
    )
)
