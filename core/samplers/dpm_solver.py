"""DPM-Solver++ 2M and 2M SDE (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models"), and the multistep bookkeeping UniPC shares with them.

Notation (Lu et al. 2022, sec. 2): x_t = alpha_t x_0 + sigma_t eps with alpha_t = sqrt(alphabar_t)
and sigma_t = sqrt(1 - alphabar_t) (the variance-preserving scale: the state x is x_t itself,
init_noise_sigma = 1, no input scaling), and lambda_t = log(alpha_t / sigma_t), half the log-SNR.
As diffusers' DPMSolverMultistepScheduler does, the samplers keep a table of the Karras-style
noise level s_i = sigma_t / alpha_t of each step, s_n = 0 after the last one (diffusers'
final_sigmas_type "zero", so the last step lands on the x_0 estimate), and convert:
alpha_t = 1 / sqrt(s^2 + 1), sigma_t = s alpha_t, lambda_t = -log(s).

Timesteps follow diffusers' DPMSolverMultistepScheduler and UniPCMultistepScheduler, quirks
included: their "linspace" and "leading" spacings take n of n + 1 points (not DDIM's), and Karras
sigmas map back to the timesteps the network sees through `sigma_to_t`, rounded (DPM-Solver++
truncates instead on the cosine schedule; UniPC always rounds). Where diffusers would divide by
zero (two steps at the same timestep, which linspace gives when n is close to T) the step falls
back to first order instead; leading spacing with n = T (diffusers: every timestep 0) is refused.

The multistep history (the x_0 estimates of earlier steps) lives in the sampler and `begin()`
forgets it. A run that starts at a later step (from a noised image) starts with no history, so
its first step is first order, as diffusers' does after `set_begin_index`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.samplers.base import (
    TIMESTEP_SPACINGS,
    PredictionType,
    Sampler,
    SamplerSpec,
    StepOutput,
    TimestepSpacing,
    check_choice,
    make_timesteps,
    register,
    unsupported_settings,
)
from diffusion_studio.core.samplers.sigmas import karras_sigmas, schedule_sigmas, sigma_to_t
from diffusion_studio.core.schedule import NoiseSchedule


def multistep_timesteps(T: int, n: int, spacing: str) -> np.ndarray:
    """Descending int64 timesteps (n,) as diffusers' DPM-Solver and UniPC schedulers choose them.

    linspace: round(linspace(0, T-1, n+1)) reversed, the last (0) dropped
    leading:  0, k, ..., n k with k = T // (n+1), reversed, 0 dropped
    trailing: as DDIM's (`make_timesteps`): round(T, T - T/n, ...) - 1
    """
    steps = make_timesteps(T, n, spacing)  # checks n and the spacing; trailing as it is
    if spacing == "linspace":
        steps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ratio = T // (n + 1)
        if ratio == 0:
            raise ConfigError(
                f"leading spacing needs fewer than {T} steps here (diffusers' step T // (n + 1) "
                "would be 0, every timestep 0): choose fewer steps or another spacing"
            )
        steps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1]
    return steps.copy().astype(np.int64)


def draw_noise(
    shape: torch.Size, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """Standard normal noise (shape) drawn as diffusers' `randn_tensor` does for these schedulers
    (float32 on the generator's device), then moved to `like`'s device and dtype."""
    device = generator.device if generator is not None else like.device
    noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


@dataclass(frozen=True)
class Point:
    """One earlier step in the multistep history: its lambda and the x_0 estimate (B, ...)."""

    lam: float
    x0: torch.Tensor


class VPMultistepSampler(Sampler):
    """What DPM-Solver++ and UniPC share: the s_i table (n + 1,), timesteps, Karras spacing,
    add_noise at s_i, and the history of (lambda, x_0) of the steps taken."""

    # diffusers' DPM-Solver++ leaves Karras timesteps fractional on squaredcos_cap_v2 (then
    # truncates them to integers); UniPC rounds them on every schedule.
    round_karras_on_cosine: ClassVar[bool] = False
    history_length: int = 2

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        clip_sample: bool = False,
        clip_range: float = 1.0,
        karras: bool = False,
    ) -> None:
        super().__init__(schedule, prediction_type, clip_sample, clip_range)
        self.karras = bool(karras)
        self.table = schedule_sigmas(schedule)
        self.history: list[Point] = []
        self.set_timesteps(schedule.num_timesteps, "trailing")

    def set_timesteps(self, num_inference_steps: int, spacing: TimestepSpacing = "leading") -> None:
        """Timesteps (n,) int64 and the noise levels s_0 >= ... >= s_{n-1} > s_n = 0 (`sigmas`,
        float64 (n + 1,)), as diffusers' scheduler sets them."""
        T, n = self.schedule.num_timesteps, num_inference_steps
        if self.karras:
            make_timesteps(T, n, "trailing")  # checks n
            check_choice("timestep spacing", spacing, TIMESTEP_SPACINGS)  # unused with Karras
            # Karras et al. 2022 eq. 5 between the table's ends, then t(s) by interpolation
            sigmas = karras_sigmas(float(self.table[0]), float(self.table[-1]), n)
            timesteps = sigma_to_t(sigmas, np.log(self.table))
            if self.schedule.config.kind != "cosine" or self.round_karras_on_cosine:
                timesteps = timesteps.round()
            timesteps = timesteps.astype(np.int64)  # diffusers' cast (truncates on cosine)
        else:
            timesteps = multistep_timesteps(T, n, spacing)
            sigmas = self.table[timesteps]
        self.sigmas = np.append(sigmas, 0.0)
        self.timesteps = torch.from_numpy(timesteps)
        self.num_inference_steps = n
        self.begin()

    def begin(self) -> None:
        """Forget the multistep history (a new run starts with first-order steps)."""
        self.history = []

    def vp(self, i: int) -> tuple[float, float, float]:
        """(alpha_t, sigma_t, lambda_t) at noise level s_i (i = n: s = 0, lambda = inf)."""
        s = float(self.sigmas[i])
        alpha = 1.0 / math.sqrt(s * s + 1.0)
        sigma = s * alpha
        lam = math.log(alpha) - math.log(sigma) if s > 0 else math.inf
        return alpha, sigma, lam

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """x = alpha_t x_0 + sigma_t eps at step i's noise level (DDPM eq. 4; diffusers'
        add_noise at s_i, which with Karras sigmas lies between integer timesteps)."""
        alpha, sigma, _ = self.vp(i)
        return alpha * x0 + sigma * noise

    def remember(self, lam: float, x0: torch.Tensor) -> None:
        """Add a step's x_0 estimate to the history (replacing the newest when it sits at the
        same lambda, where a multistep formula would divide by zero)."""
        if self.history and self.history[-1].lam == lam:
            self.history.pop()
        self.history.append(Point(lam, x0))
        del self.history[: -self.history_length]


class DPMSolverPP2M(VPMultistepSampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): data prediction, multistep, second order
    with a first-order first step (no history yet) and last step (to s = 0)."""

    stochastic: ClassVar[bool] = False

    @classmethod
    def diffusers_notes(cls, scheduler_config: dict[str, Any]) -> list[str]:
        """DPMSolverMultistepScheduler settings other than diffusers' 2M defaults."""
        return unsupported_settings(
            scheduler_config,
            {
                "algorithm_type": ("dpmsolver++", "sde-dpmsolver++"),
                "solver_order": (2,),
                "solver_type": ("midpoint",),
                "lower_order_final": (True,),
                "euler_at_final": (False,),
                "final_sigmas_type": ("zero",),
                "use_lu_lambdas": (False,),
                "lambda_min_clipped": (float("-inf"),),
            },
        )

    @classmethod
    def diffusers_variant(cls, scheduler_config: dict[str, Any]) -> str:
        """Which of our samplers a DPMSolverMultistepScheduler config stands for."""
        if scheduler_config.get("algorithm_type") == "sde-dpmsolver++":
            return "dpmpp-2m-sde"
        return "dpmpp-2m"

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """x at s_i -> x at s_{i+1}. model_output, x, noise: (B, ...). The SDE variant draws its
        noise from `generator` (every step, the last included, as diffusers does) unless given."""
        alpha_s, sigma_s, lambda_s = self.vp(i)
        alpha_t, sigma_t, lambda_t = self.vp(i + 1)
        # the data prediction x_theta(x_s, s) (clipped when asked: `Sampler.denoise`)
        pred_x0, _ = self.denoise(model_output, alpha_s * alpha_s, x)
        if self.stochastic and noise is None:
            noise = draw_noise(model_output.shape, generator, x)
        h = lambda_t - lambda_s
        # Second order (Algorithm 2) once a previous estimate exists, except on the last step
        # (diffusers' lower_order_final): with r = h_prev / h, the 2M estimate is
        # (1 + 1/(2r)) x_0(s) - 1/(2r) x_0(s_prev) = D0 + D1 / 2, D1 = (x_0(s) - x_0(s_prev)) / r.
        last_step = i == len(self.timesteps) - 1
        previous = self.history[-1] if self.history and not last_step else None
        d1 = None
        if previous is not None and previous.lam != lambda_s and h != 0:  # (h = 0: a no-op)
            r = (lambda_s - previous.lam) / h
            d1 = (1.0 / r) * (pred_x0 - previous.x0)
        # (the terms in diffusers' order, so that float32 rounding agrees with it)
        if not self.stochastic:
            # x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D: the exact solution of the
            # diffusion ODE with x_theta held at D over [lambda_s, lambda_t] (Lu et al. 2022,
            # DPM-Solver++ first-order update, = DDIM; with the 2M estimate: Algorithm 2).
            # On the last step lambda_t = inf: e^{-h} = 0 and x_t = x_0 exactly.
            c = alpha_t * (math.exp(-h) - 1.0)
            prev_sample = (sigma_t / sigma_s) * x - c * pred_x0
            if d1 is not None:
                prev_sample = prev_sample - (0.5 * c) * d1
        else:
            # the same exponential integrator for the reverse SDE (diffusers' "sde-dpmsolver++"):
            # x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) D
            #       + sigma_t sqrt(1 - e^{-2h}) z
            c = alpha_t * (1.0 - math.exp(-2.0 * h))
            prev_sample = (sigma_t / sigma_s * math.exp(-h)) * x + c * pred_x0
            if d1 is not None:
                prev_sample = prev_sample + (0.5 * c) * d1
            if sigma_t > 0:
                assert noise is not None
                prev_sample = prev_sample + (sigma_t * math.sqrt(1.0 - math.exp(-2.0 * h))) * noise
        self.remember(lambda_s, pred_x0)
        return StepOutput(prev_sample, pred_x0)


class DPMSolverPP2MSDE(DPMSolverPP2M):
    """DPM-Solver++(2M) SDE: the 2M update for the reverse SDE, fresh noise every step."""

    stochastic: ClassVar[bool] = True


PAPER = (
    "Lu et al. 2022, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic "
    "Models"
)

DPMPP_2M = register(
    SamplerSpec(
        name="dpmpp-2m",
        label="DPM-Solver++ 2M",
        help="second-order multistep ODE solver on the x_0 estimates: good samples in 15-25 "
        "steps, deterministic (Lu et al. 2022)",
        sampler_class=DPMSolverPP2M,
        diffusers_classes=("DPMSolverMultistepScheduler",),
        deterministic=True,
        karras=True,
        default_steps=20,
        paper=PAPER,
    )
)

DPMPP_2M_SDE = register(
    SamplerSpec(
        name="dpmpp-2m-sde",
        label="DPM-Solver++ 2M SDE",
        help="DPM-Solver++ 2M for the reverse SDE: adds fresh noise every step, often more "
        "detail at 20-50 steps (Lu et al. 2022)",
        sampler_class=DPMSolverPP2MSDE,
        # diffusers names it DPMSolverMultistepScheduler with algorithm_type "sde-dpmsolver++":
        # that class maps to dpmpp-2m (`DPMSolverPP2M.diffusers_variant` picks this one)
        diffusers_classes=(),
        deterministic=False,
        karras=True,
        default_steps=20,
        paper=PAPER,
    )
)
