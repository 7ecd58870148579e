"""Flow matching (rectified flow): the straight path from data to noise, beside diffusion.

    x_t = (1 - t) x_0 + t eps,   t in [0, 1]          (Liu et al. 2022, eq. 1; Lipman et al. 2022)
    u_t = dx_t / dt = eps - x_0                        (the velocity the network predicts)

Given x_t and a predicted velocity v, the clean image and the noise follow exactly:
    x_0 = x_t - t v,   eps = x_t + (1 - t) v.
The signal and noise coefficients are (1 - t, t); log-SNR = 2 log((1 - t) / t).

The network sees t scaled to the diffusion models' timestep range, `t * num_timesteps` (as
diffusers' FlowMatchEulerDiscreteScheduler: timestep = sigma * num_train_timesteps), so the same
UNet and MLP serve both objectives. Where the app shows a timestep index k = 0 .. T-1 (the
Forward slider, a table's rows), a flow path stands at t = (k + 1) / T: k = T-1 is pure noise,
like the last step of a diffusion schedule, and k = 0 is the least noise.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig

Objective = Literal["diffusion", "flow"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
FlowTimeSampling = Literal["logit-normal", "uniform"]
FLOW_TIME_SAMPLINGS: tuple[str, ...] = get_args(FlowTimeSampling)
# What a flow network's output is: the velocity eps - x_0 (a checkpoint's prediction_type).
FLOW_PREDICTION_TYPE = "velocity"
# Logit-normal t: sigmoid(N(m, s^2)), m = 0, s = 1 (Esser et al. 2024, sec. 3.1, "lognorm(0, 1)").
LOGIT_NORMAL_MEAN = 0.0
LOGIT_NORMAL_STD = 1.0


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


class FlowPath:
    """The rectified-flow path on a grid of T points t_k = (k + 1) / T, k = 0 .. T-1.

    Tables (float64 CPU tensors, shape (T,)), named as NoiseSchedule's shared ones:
    `times` t_k, `signal_coefficients` 1 - t_k, `noise_coefficients` t_k, `log_snr`.
    """

    objective: Objective = "flow"

    def __init__(self, num_timesteps: int = 1000) -> None:
        if not isinstance(num_timesteps, int) or num_timesteps < 2:
            raise ConfigError(f"a flow path needs at least 2 timesteps, got {num_timesteps!r}")
        self._num_timesteps = num_timesteps
        k = torch.arange(num_timesteps, dtype=torch.float64)
        self.times: torch.Tensor = (k + 1) / num_timesteps
        self.signal_coefficients: torch.Tensor = 1.0 - self.times
        self.noise_coefficients: torch.Tensor = self.times.clone()
        # log((1 - t)^2 / t^2); -inf at t = 1 (pure noise)
        self.log_snr: torch.Tensor = 2.0 * (
            torch.log(self.signal_coefficients) - torch.log(self.times)
        )

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    def __len__(self) -> int:
        return self._num_timesteps

    def __repr__(self) -> str:
        return f"FlowPath({self._num_timesteps})"

    # ---- indices and times

    def time_of_index(self, k: torch.Tensor | int) -> torch.Tensor:
        """t = (k + 1) / T for grid indices k (long, 0 .. T-1). Returns float64."""
        k = torch.as_tensor(k, dtype=torch.long)
        if k.numel() and (int(k.min()) < 0 or int(k.max()) >= self._num_timesteps):
            raise ConfigError(
                f"timestep out of range: got {int(k.min())}..{int(k.max())}, "
                f"valid are 0..{self._num_timesteps - 1}"
            )
        return (k.to(torch.float64) + 1) / self._num_timesteps

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is given for times t in [0, 1]: t * T (float, like diffusers)."""
        return t * self._num_timesteps

    # ---- the path (t: (B,) float times in [0, 1], or a scalar for all)

    @staticmethod
    def _broadcast(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
        return t.reshape(t.shape + (1,) * (like.dim() - t.dim()))

    def add_noise(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float
    ) -> torch.Tensor:
        """x_t = (1 - t) x_0 + t eps. x0, noise: (B, ...); t: (B,) in [0, 1]. Returns (B, ...)."""
        tt = self._broadcast(t, x0)
        return (1.0 - tt) * x0 + tt * noise

    @staticmethod
    def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The training target u = eps - x_0 (B, ...)."""
        return noise - x0

    def split_velocity(
        self, x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) from x_t and a velocity at times t: x_0 = x_t - t v, eps = x_t + (1 - t) v."""
        tt = self._broadcast(t, x_t)
        return x_t - tt * velocity, x_t + (1.0 - tt) * velocity

    def table(self) -> dict[str, np.ndarray]:
        """The path's curves as float64 numpy arrays (T,): t, signal, noise, log_snr."""
        return {
            "t": self.times.numpy().copy(),
            "signal": self.signal_coefficients.numpy().copy(),
            "noise": self.noise_coefficients.numpy().copy(),
            "log_snr": self.log_snr.numpy().copy(),
        }


def draw_flow_times(
    batch: int, generator: torch.Generator, sampling: FlowTimeSampling = "logit-normal"
) -> torch.Tensor:
    """Training times t (batch,) float32 in (0, 1), from `generator` (on the CPU).

    uniform: t ~ U(0, 1). logit-normal: t = sigmoid(n), n ~ N(m, s^2) (Esser et al. 2024,
    eq. 19), which puts more steps at middle t, where the velocity is hardest to predict.
    """
    if sampling == "uniform":
        return torch.rand(batch, generator=generator)
    if sampling == "logit-normal":
        n = torch.randn(batch, generator=generator) * LOGIT_NORMAL_STD + LOGIT_NORMAL_MEAN
        return torch.sigmoid(n)
    raise ConfigError(
        f"unknown flow time sampling {sampling!r}; choose one of {', '.join(FLOW_TIME_SAMPLINGS)}"
    )


ForwardPath = NoiseSchedule | FlowPath


def forward_path(objective: str, schedule_config: ScheduleConfig) -> ForwardPath:
    """The path a model of `objective` was trained on: its noise schedule for diffusion, the
    flow path on the schedule's T grid points for flow (only T is read from the config)."""
    check_objective(objective)
    if objective == "flow":
        return FlowPath(schedule_config.num_timesteps)
    return NoiseSchedule(schedule_config)


def index_noise_levels(path: ForwardPath) -> tuple[np.ndarray, np.ndarray]:
    """(signal, noise) coefficients (T,) at each timestep index of either path:
    diffusion: (sqrt(alphabar_t), sqrt(1 - alphabar_t)); flow: (1 - t_k, t_k)."""
    if isinstance(path, FlowPath):
        return path.signal_coefficients.numpy(), path.noise_coefficients.numpy()
    return path.sqrt_alphas_cumprod.numpy(), path.sqrt_one_minus_alphas_cumprod.numpy()
