"""Reverse-process samplers: DDPM (ancestral) and DDIM.

Each sampler walks a descending list of timesteps. `step` takes the network's output at
timestep t and x_t, and returns x_{t_prev} together with the network's estimate of x_0.

Equations cited:
  DDPM = Ho et al. 2020, "Denoising Diffusion Probabilistic Models"
  DDIM = Song et al. 2021, "Denoising Diffusion Implicit Models"
  v    = Salimans & Ho 2022, "Progressive Distillation"

Timestep bookkeeping follows diffusers' DDPMScheduler / DDIMScheduler exactly, so that a model
played back here gives the same samples as in diffusers for the same noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch

from core.errors import ConfigError
from core.schedule import NoiseSchedule

PredictionType = Literal["epsilon", "v", "x0"]
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
SamplerKind = Literal["ddpm", "ddim"]
SAMPLER_KINDS: tuple[str, ...] = get_args(SamplerKind)
TimestepSpacing = Literal["leading", "trailing", "linspace"]
TIMESTEP_SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)
VarianceType = Literal["fixed_small", "fixed_large"]
VARIANCE_TYPES: tuple[str, ...] = get_args(VarianceType)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample. `eta` is used by DDIM only, `variance_type` by DDPM only."""

    kind: SamplerKind = "ddim"
    num_inference_steps: int = 50
    spacing: TimestepSpacing = "leading"
    eta: float = 0.0
    variance_type: VarianceType = "fixed_small"
    clip_sample: bool = False
    clip_range: float = 1.0

    def __post_init__(self) -> None:
        _check_choice("sampler", self.kind, SAMPLER_KINDS)
        _check_choice("timestep spacing", self.spacing, TIMESTEP_SPACINGS)
        _check_choice("DDPM variance type", self.variance_type, VARIANCE_TYPES)
        n = self.num_inference_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"number of sampling steps must be a whole number >= 1, got {n!r}")
        if not isinstance(self.eta, (int, float)) or not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"DDIM eta = {self.eta!r} is out of range: it must lie in [0, 1]")
        if not isinstance(self.clip_range, (int, float)) or not self.clip_range > 0:
            raise ConfigError(f"clip range must be > 0, got {self.clip_range!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown sampler setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def default_sampler_config(
    is_points: bool, model_defaults: dict[str, Any] | None = None
) -> SamplerConfig:
    """The sampler Playback, the CLI, training previews and the benchmarks start from.

    A model that names its own sampler (`model_defaults`, e.g. from a diffusers scheduler
    config) gets it. Otherwise DDPM, 100 steps, trailing spacing, with the x_0 estimate clipped
    to [-1, 1] for images (their data range, as diffusers' DDPMScheduler does by default) and
    not for 2-D points (which extend beyond it). Without the clip an epsilon-prediction model
    on the cosine schedule (alphabar_T ~ 2e-9) blows up in the first steps:
    pred_x0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t) multiplies the network's error
    by ~2e4 (measured: |x| up to 1.8e4 and pure-noise scores without the clip; recognizable
    digits with it). v- and x0-prediction models are unaffected (the same scores either way).
    """
    if model_defaults is not None:
        return SamplerConfig.from_dict(dict(model_defaults))
    return SamplerConfig("ddpm", 100, "trailing", clip_sample=not is_points)


class StepOutput(NamedTuple):
    """prev_sample: x_{t_prev}, shape of x_t; pred_x0: the model's estimate of x_0, same shape."""

    prev_sample: torch.Tensor
    pred_x0: torch.Tensor


def make_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str) -> np.ndarray:
    """Descending int64 timesteps for sampling (Lin et al. 2024, Table 2 names the spacings).

    leading:  0, k, 2k, ... with k = T // n        (then reversed)
    trailing: round(T, T - T/n, ...) - 1          (always starts at T-1)
    linspace: round(linspace(0, T-1, n))           (then reversed)
    """
    T, n = num_train_timesteps, num_inference_steps
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= T:
        raise ConfigError(
            f"number of sampling steps {n!r} is out of range: it must lie in 1..{T} "
            f"(the schedule's T)"
        )
    _check_choice("timestep spacing", spacing, TIMESTEP_SPACINGS)
    if spacing == "leading":
        steps = (np.arange(0, n) * (T // n)).round()[::-1]
    elif spacing == "trailing":
        # diffusers writes np.arange(T, 0, -T / n), which yields n + 1 values when rounding
        # leaves T - n * (T / n) a hair above 0 (e.g. T = 17, n = 7); same values, exactly n here.
        steps = np.round(T - np.arange(n) * (T / n)) - 1
    else:
        steps = np.linspace(0, T - 1, n).round()[::-1]
    return steps.copy().astype(np.int64)


def split_prediction(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    prediction_type: PredictionType,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn the network's output at timestep t into (pred_x0, pred_eps), both shaped like x_t.

    From x_t = sqrt(ab) x0 + sqrt(1-ab) eps (DDPM eq. 4) and v = sqrt(ab) eps - sqrt(1-ab) x0:
      epsilon: x0 = (x_t - sqrt(1-ab) eps) / sqrt(ab)               (DDPM eq. 15)
      v:       x0 = sqrt(ab) x_t - sqrt(1-ab) v,  eps = sqrt(ab) v + sqrt(1-ab) x_t
      x0:      eps = (x_t - sqrt(ab) x0) / sqrt(1-ab)
    """
    alphabar = float(schedule.alphas_cumprod[t])
    sqrt_ab, sqrt_1m_ab = math.sqrt(alphabar), math.sqrt(1.0 - alphabar)
    if prediction_type == "epsilon":
        pred_eps = model_output
        pred_x0 = (x_t - sqrt_1m_ab * model_output) / sqrt_ab
    elif prediction_type == "v":
        pred_x0 = sqrt_ab * x_t - sqrt_1m_ab * model_output
        pred_eps = sqrt_ab * model_output + sqrt_1m_ab * x_t
    elif prediction_type == "x0":
        pred_x0 = model_output
        pred_eps = (x_t - sqrt_ab * model_output) / sqrt_1m_ab
    else:
        raise ConfigError(
            f"unknown prediction type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}"
        )
    return pred_x0, pred_eps


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device (CPU by default)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


class _Sampler:
    """What DDPM and DDIM share: the schedule, the prediction type, the timesteps, x0 clipping."""

    kind: str = ""

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        clip_sample: bool = False,
        clip_range: float = 1.0,
    ) -> None:
        _check_choice("prediction type", prediction_type, PREDICTION_TYPES)
        self.schedule = schedule
        self.prediction_type: PredictionType = prediction_type
        self.clip_sample = clip_sample
        self.clip_range = clip_range
        self.num_inference_steps = schedule.num_timesteps
        self.timesteps = torch.arange(schedule.num_timesteps - 1, -1, -1, dtype=torch.long)

    def set_timesteps(self, num_inference_steps: int, spacing: TimestepSpacing = "leading") -> None:
        """Choose `num_inference_steps` timesteps out of 0..T-1 (1 <= n <= T)."""
        steps = make_timesteps(self.schedule.num_timesteps, num_inference_steps, spacing)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(steps)

    def _alphabar(self, t: int) -> float:
        return float(self.schedule.alphas_cumprod[t])

    def _predict_x0(
        self, model_output: torch.Tensor, t: int, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred_x0, pred_eps = split_prediction(
            self.schedule, model_output, x_t, t, self.prediction_type
        )
        if self.clip_sample:
            pred_x0 = pred_x0.clamp(-self.clip_range, self.clip_range)
        return pred_x0, pred_eps


class DDPMSampler(_Sampler):
    """Ancestral sampling, DDPM eq. 6-7, generalised to skipping timesteps."""

    kind = "ddpm"

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        variance_type: VarianceType = "fixed_small",
        clip_sample: bool = False,
        clip_range: float = 1.0,
    ) -> None:
        super().__init__(schedule, prediction_type, clip_sample, clip_range)
        _check_choice("DDPM variance type", variance_type, VARIANCE_TYPES)
        self.variance_type: VarianceType = variance_type

    def previous_timestep(self, t: int) -> int:
        """The timestep after t in self.timesteps, or -1 after the last one."""
        position = int((self.timesteps == t).nonzero()[0, 0])
        return int(self.timesteps[position + 1]) if position + 1 < len(self.timesteps) else -1

    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        x_t: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """x_t -> x_{t_prev}. model_output, x_t, noise: (B, ...). Noise is drawn from `generator`
        unless given; none is added at the last step (t = 0)."""
        t = int(t)
        t_prev = self.previous_timestep(t)
        # 1. alphabar at t and t_prev; the effective alpha and beta of this (possibly long) step
        ab_t = self._alphabar(t)
        ab_prev = self._alphabar(t_prev) if t_prev >= 0 else 1.0
        alpha_step = ab_t / ab_prev
        beta_step = 1.0 - alpha_step
        # 2. the network's estimate of x_0 (DDPM eq. 15), optionally clipped
        pred_x0, _ = self._predict_x0(model_output, t, x_t)
        # 3. the posterior mean mu~(x_t, x_0) (DDPM eq. 7)
        coeff_x0 = math.sqrt(ab_prev) * beta_step / (1.0 - ab_t)
        coeff_xt = math.sqrt(alpha_step) * (1.0 - ab_prev) / (1.0 - ab_t)
        prev_sample = coeff_x0 * pred_x0 + coeff_xt * x_t
        # 4. add noise with sigma^2 = beta~ (fixed_small, DDPM eq. 7) or beta (fixed_large)
        if t > 0:
            if self.variance_type == "fixed_small":
                variance = max((1.0 - ab_prev) / (1.0 - ab_t) * beta_step, 1e-20)
            else:
                variance = beta_step
            if noise is None:
                noise = _noise_like(model_output, generator)
            prev_sample = prev_sample + math.sqrt(variance) * noise
        return StepOutput(prev_sample, pred_x0)


class DDIMSampler(_Sampler):
    """DDIM, Song et al. eq. 12; eta = 0 is deterministic, eta = 1 matches DDPM's variance."""

    kind = "ddim"

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

    def previous_timestep(self, t: int) -> int:
        """t - T // n, as diffusers' DDIMScheduler does (-1 or below means "x_0")."""
        return int(t) - self.schedule.num_timesteps // self.num_inference_steps

    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        x_t: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """x_t -> x_{t_prev} (DDIM eq. 12). Noise is only drawn when eta > 0."""
        t = int(t)
        t_prev = self.previous_timestep(t)
        # 1. alphabar at t and t_prev (alphabar = 1 before the first step, "set_alpha_to_one")
        ab_t = self._alphabar(t)
        ab_prev = self._alphabar(t_prev) if t_prev >= 0 else 1.0
        # 2. predicted x_0 and eps ("predicted x_0" term of eq. 12), optionally clipped
        pred_x0, pred_eps = self._predict_x0(model_output, t, x_t)
        # 3. sigma_t(eta) (DDIM eq. 16)
        variance = (1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)
        sigma = self.eta * math.sqrt(variance)
        # 4. "direction pointing to x_t" and x_{t_prev} (DDIM eq. 12)
        direction = math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * pred_eps
        prev_sample = math.sqrt(ab_prev) * pred_x0 + direction
        # 5. random noise sigma_t * eps_t
        if self.eta > 0:
            if noise is None:
                noise = _noise_like(model_output, generator)
            prev_sample = prev_sample + sigma * noise
        return StepOutput(prev_sample, pred_x0)


Sampler = DDPMSampler | DDIMSampler


def make_sampler(
    config: SamplerConfig, schedule: NoiseSchedule, prediction_type: PredictionType
) -> Sampler:
    """Build the sampler `config` describes, with its timesteps already set."""
    _check_choice("prediction type", prediction_type, PREDICTION_TYPES)
    if schedule.config.zero_terminal_snr and prediction_type == "epsilon":
        raise ConfigError(
            "a zero-terminal-SNR schedule cannot be sampled with epsilon prediction "
            "(x_0 cannot be recovered from pure noise): train with v or x0 prediction"
        )
    sampler: Sampler
    if config.kind == "ddpm":
        sampler = DDPMSampler(
            schedule, prediction_type, config.variance_type, config.clip_sample, config.clip_range
        )
    else:
        sampler = DDIMSampler(
            schedule, prediction_type, config.eta, config.clip_sample, config.clip_range
        )
    sampler.set_timesteps(config.num_inference_steps, config.spacing)
    return sampler
