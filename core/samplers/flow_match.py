"""Samplers for flow-matching models (`core.flow`): Euler and Heun on the velocity ODE.

A flow model predicts the velocity v(x_t, t) ~ eps - x_0 of the straight path
x_t = (1 - t) x_0 + t eps (Liu et al. 2022, eq. 1), so sampling integrates

    dx / dt = v(x, t)        from t = 1 (pure noise, x ~ N(0, I)) down to t = 0 (data).

The times are called sigmas, as in diffusers' FlowMatchEulerDiscreteScheduler and
FlowMatchHeunDiscreteScheduler (0.36), which these follow step for step: sigmas
sigma_0 = 1 > sigma_1 > ... > sigma_{n-1} > sigma_n = 0, the network's timestep
sigma * T (T: the path's number of grid points, the network's time scale), and

    Euler:  x' = x + (sigma_{i+1} - sigma_i) v(x, sigma_i)
    Heun:   x~ = x + (sigma_{i+1} - sigma_i) v(x, sigma_i)                      (predictor)
            x' = x + (sigma_{i+1} - sigma_i) (v(x, sigma_i) + v(x~, sigma_{i+1})) / 2
            (Karras et al. 2022, Algorithm 1; the last step, to sigma = 0, is Euler's alone:
            2n - 1 evaluations for n steps)

Each step's x_0 estimate is x - sigma v (`FlowPath.split_velocity`). With `clip_sample`, that
estimate is clamped to [-r, r] and the velocity recomputed from it, v = (x - x_0) / sigma, so
every update uses one consistent pair (as `Sampler.denoise` does for diffusion).

Spacing, on the path's index grid t_k = (k + 1) / T (`core.flow`):
  linspace:  sigma_i = linspace(1, 1 / T, n)         (diffusers' schedule, its only one)
  trailing:  sigma_i = 1 - i / n                     (n equal steps from 1 to 0)
  leading:   sigma_i = (k_i + 1) / T, k_i = (n - 1 - i) (T // n)
Time shift (option `shift` s, Esser et al. 2024, sec. 5.3.2): sigma <- s sigma / (1 + (s - 1)
sigma); s > 1 spends more of the steps at high noise. For linspace the shift follows diffusers
exactly: its smallest sigma is the shifted 1 / T, which is shifted again with the others.

The registry entries name no diffusers scheduler classes (`SamplerSpec.diffusers_classes`)
yet: `core.diffusers_models` opens every diffusers folder as a diffusion model, so a folder
with a FlowMatch scheduler must first open as a flow model (objective "flow", prediction
"velocity"). `options_from_diffusers` and `diffusers_notes` are ready for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.flow import FLOW_PREDICTION_TYPE, FlowPath
from diffusion_studio.core.samplers.base import (
    ModelFn,
    Sampler,
    SamplerSpec,
    StepOutput,
    TimestepSpacing,
    make_timesteps,
    option,
    register,
    unsupported_settings,
)


@dataclass(frozen=True)
class FlowOptions:
    """The flow samplers' options."""

    shift: float = option(
        1.0,
        "time shift s: sigma -> s sigma / (1 + (s - 1) sigma); s > 1 puts more steps at high "
        "noise (Esser et al. 2024, sec. 5.3.2; diffusers' `shift`)",
        minimum=0.1,
        maximum=20.0,
    )


def shift_times(sigma: np.ndarray | float, shift: float) -> np.ndarray:
    """s sigma / (1 + (s - 1) sigma), elementwise (the identity at s = 1); keeps 0 and 1."""
    sigma = np.asarray(sigma, dtype=np.float64)
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


class FlowSampler(Sampler):
    """What the flow samplers share: the sigmas, timesteps, frames and noising of a FlowPath.

    After `set_timesteps(n, spacing)`: `sigmas` float64 (n + 1,), descending from 1 (at shift
    1) to the final 0, each a float32 value as diffusers stores them; `timesteps` float64 (n,)
    = sigma * T, what the network is given. The state x is x_t itself.
    """

    def __init__(
        self,
        schedule: FlowPath,
        prediction_type: str = FLOW_PREDICTION_TYPE,
        clip_sample: bool = False,
        clip_range: float = 1.0,
        shift: float = 1.0,
    ) -> None:
        if not isinstance(schedule, FlowPath):
            raise ConfigError(f"{self.spec.label} samples flow models: it needs a FlowPath")
        if prediction_type != FLOW_PREDICTION_TYPE:
            raise ConfigError(
                f"{self.spec.label} samples flow models, whose network predicts the velocity, "
                f"not {prediction_type!r}"
            )
        super().__init__(schedule, "velocity", clip_sample, clip_range)  # type: ignore[arg-type]
        self.path = schedule
        self.shift = float(shift)
        self.spacing: TimestepSpacing = "linspace"
        self.sigmas = np.zeros(1)
        self.set_timesteps(schedule.num_timesteps, "linspace")

    # ---- timesteps and sigmas

    def set_timesteps(
        self, num_inference_steps: int, spacing: TimestepSpacing = "linspace"
    ) -> None:
        """Choose n sigmas from 1 towards 0 (the module docstring's spacings) and the network's
        timesteps sigma * T."""
        T = self.path.num_timesteps
        steps = make_timesteps(T, num_inference_steps, spacing)  # checks n and the spacing
        if spacing == "linspace":
            # diffusers: np.linspace(sigma_max T, sigma_min T, n) / T over its shifted training
            # sigmas (sigma_max = 1, sigma_min = shift(1 / T)), then shifted
            low = float(np.float32(shift_times(np.float32(1.0 / T), self.shift)))
            times = np.linspace(1.0, low, num_inference_steps)
        else:
            times = (steps.astype(np.float64) + 1.0) / T  # t_k = (k + 1) / T
        sigmas = shift_times(times, self.shift).astype(np.float32).astype(np.float64)
        self.num_inference_steps = num_inference_steps
        self.spacing = spacing
        self.sigmas = np.append(sigmas, 0.0)
        self.timesteps = torch.from_numpy(sigmas * T)

    def sigma(self, i: int) -> float:
        """sigma_i, the time t of the state at step i (sigma_n = 0)."""
        return float(self.sigmas[i])

    def frame_timestep(self, i: int) -> int:
        """The path index k of step i's time (t_k = (k + 1) / T, so k = round(sigma T) - 1),
        what frames show: T-1 at pure noise, like a diffusion sampler's first step."""
        return max(0, int(round(self.sigma(i) * self.path.num_timesteps)) - 1)

    # ---- the sampling loop's interface

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """x = (1 - sigma_i) x_0 + sigma_i eps (diffusers' `scale_noise`). x0, noise: (B, ...)."""
        return self.path.add_noise(x0, noise, self.sigma(i))

    def denoise_velocity(
        self, velocity: torch.Tensor, sigma: float, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred_x0, velocity) at time sigma > 0: x_0 = x - sigma v; with `clip_sample` x_0 is
        clamped to [-r, r] and v = (x - x_0) / sigma recomputed from it. All (B, ...)."""
        pred_x0, _ = self.path.split_velocity(x, velocity, sigma)
        if self.clip_sample:
            pred_x0 = pred_x0.clamp(-self.clip_range, self.clip_range)
            velocity = (x - pred_x0) / sigma
        return pred_x0, velocity

    @classmethod
    def options_from_diffusers(cls, scheduler_config: dict[str, Any]) -> dict[str, Any]:
        """The `shift` of a FlowMatch scheduler config."""
        shift = scheduler_config.get("shift")
        return {} if shift is None else {"shift": float(shift)}


class FlowEulerSampler(FlowSampler):
    """Euler on the velocity (diffusers' FlowMatchEulerDiscreteScheduler, deterministic)."""

    @classmethod
    def diffusers_notes(cls, scheduler_config: dict[str, Any]) -> list[str]:
        """FlowMatchEulerDiscreteScheduler settings other than the ones implemented here."""
        return unsupported_settings(
            scheduler_config,
            {
                "use_dynamic_shifting": (False,),
                "invert_sigmas": (False,),
                "shift_terminal": (None,),
                "use_karras_sigmas": (False,),
                "use_exponential_sigmas": (False,),
                "use_beta_sigmas": (False,),
                "stochastic_sampling": (False,),
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
        """x' = x + (sigma_{i+1} - sigma_i) v. model_output: the velocity at x, step i."""
        sigma, sigma_next = self.sigma(i), self.sigma(i + 1)
        pred_x0, velocity = self.denoise_velocity(model_output, sigma, x)
        return StepOutput(x + (sigma_next - sigma) * velocity, pred_x0)


class FlowHeunSampler(FlowSampler):
    """Heun on the velocity (diffusers' FlowMatchHeunDiscreteScheduler at s_churn = 0)."""

    def total_evaluations(self) -> int:
        """2n - 1: two per step, one at the last (to sigma = 0)."""
        return 2 * len(self.timesteps) - 1

    def advance(
        self,
        model_fn: ModelFn,
        i: int,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One whole step from x at sigma_i to sigma_{i+1}: the Euler predictor, then (unless
        sigma_{i+1} = 0) the corrector averaging the two velocities. Returns the state after the
        step and the predictor's x_0 estimate. `generator` is unused (deterministic)."""
        sigma, sigma_next = self.sigma(i), self.sigma(i + 1)
        dt = sigma_next - sigma
        output = model_fn(x, self.timesteps[i].item())
        pred_x0, velocity = self.denoise_velocity(output, sigma, x)
        x_euler = x + dt * velocity
        if sigma_next == 0:
            return StepOutput(x_euler, pred_x0)  # the last step: Euler alone
        output_next = model_fn(x_euler, self.timesteps[i + 1].item())
        _, velocity_next = self.denoise_velocity(output_next, sigma_next, x_euler)
        return StepOutput(x + dt * (0.5 * (velocity + velocity_next)), pred_x0)

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """Heun needs the network twice per step: it has no one-output step; use `advance`."""
        raise NotImplementedError(
            "flow Heun evaluates the network twice per step: call advance(model_fn, i, x)"
        )


FLOW_PAPER = (
    "Liu et al. 2022, Flow Straight and Fast; Lipman et al. 2022, Flow Matching for "
    "Generative Modeling"
)

FLOW_EULER = register(
    SamplerSpec(
        name="flow-euler",
        label="Flow Euler",
        help="Euler steps on a flow model's velocity, x <- x + (t' - t) v, deterministic "
        "(flow models only)",
        sampler_class=FlowEulerSampler,
        options_class=FlowOptions,
        # no diffusers_classes yet: a diffusers folder with a FlowMatch scheduler opens as a
        # diffusion model today (core.diffusers_models); it must open as a flow model first
        evaluations_per_step=1,
        deterministic=True,
        default_steps=50,
        paper=FLOW_PAPER,
        objective="flow",
    )
)

FLOW_HEUN = register(
    SamplerSpec(
        name="flow-heun",
        label="Flow Heun",
        help="second-order steps on a flow model's velocity (2 network evaluations per step, "
        "1 at the last), deterministic (flow models only)",
        sampler_class=FlowHeunSampler,
        options_class=FlowOptions,
        # no diffusers_classes yet: a diffusers folder with a FlowMatch scheduler opens as a
        # diffusion model today (core.diffusers_models); it must open as a flow model first
        evaluations_per_step=2,
        deterministic=True,
        default_steps=25,  # 49 evaluations: the cost of 50 Euler steps
        paper=FLOW_PAPER + "; Karras et al. 2022, Algorithm 1",
        objective="flow",
    )
)
