"""The forward process on one image, for display: x_t at any t with fixed noise.

Either path the app trains on (core.flow.ForwardPath):
    diffusion: x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps   (DDPM eq. 4)
    flow:      x_t = (1 - t) x_0 + t eps, t = (k + 1) / T              (rectified flow)
both as x_t = a_t x_0 + s_t eps with (a_t, s_t) from `core.flow.index_noise_levels`.

Display convention shared by the GUI's slider and the CLI: `step` runs 0..T, where step 0 is
the clean image x_0 and step k >= 1 is the path's timestep index k - 1 (so step T is the
last, noisiest timestep). Everything that does not depend on t (the image, the noise) is
computed once, so a new t costs one fused multiply-add.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import forward_caption, select_frame_indices
from diffusion_studio.core.flow import FlowPath, ForwardPath, index_noise_levels
from diffusion_studio.core.schedule import NoiseSchedule

HIST_SAMPLES = 65536  # at most this many values in x_t_sample (a pixel-value histogram)


@dataclass(frozen=True)
class ForwardNumbers:
    """A path's numbers at a display step (step 0: the clean x_0, a = 1, s = 0).

    signal a_t and noise s_t: x_t = a_t x_0 + s_t eps. diffusion: a = sqrt(alphabar_t),
    s = sqrt(1 - alphabar_t), `time` None; flow: a = 1 - t, s = t, `time` t in [0, 1].
    """

    step: int
    objective: str  # "diffusion" or "flow"
    signal: float
    noise: float
    time: float | None = None

    @property
    def sqrt_alpha_bar(self) -> float:
        return self.signal

    @property
    def sqrt_one_minus_alpha_bar(self) -> float:
        return self.noise

    @property
    def alpha_bar(self) -> float:
        """a_t^2 (alphabar_t for diffusion; for flow it is (1 - t)^2, not a product of alphas)."""
        return self.signal * self.signal

    @property
    def snr(self) -> float:
        """SNR_t = a_t^2 / s_t^2 (inf at the clean step)."""
        return self.alpha_bar / (self.noise * self.noise) if self.noise > 0 else float("inf")

    @property
    def log_snr(self) -> float:
        """log SNR_t (inf at the clean step, -inf where a_t = 0)."""
        snr = self.snr
        if math.isinf(snr):
            return snr
        return math.log(snr) if snr > 0 else float("-inf")


def display_levels(path: ForwardPath) -> tuple[np.ndarray, np.ndarray]:
    """(a, s) float64 (T + 1,) at each display step: step 0 is the clean x_0 (a = 1, s = 0),
    step k >= 1 the path's timestep index k - 1 (core.flow.index_noise_levels)."""
    signal, noise = index_noise_levels(path)
    return (
        np.concatenate([[1.0], np.asarray(signal, dtype=np.float64)]),
        np.concatenate([[0.0], np.asarray(noise, dtype=np.float64)]),
    )


def path_numbers(path: ForwardPath, step: int) -> ForwardNumbers:
    """The path's numbers at display step `step` (0..T)."""
    step = check_step(path, step)
    objective = "flow" if isinstance(path, FlowPath) else "diffusion"
    if step == 0:
        return ForwardNumbers(0, objective, 1.0, 0.0, 0.0 if objective == "flow" else None)
    signal, noise = index_noise_levels(path)
    time = float(path.times[step - 1]) if isinstance(path, FlowPath) else None
    return ForwardNumbers(step, objective, float(signal[step - 1]), float(noise[step - 1]), time)


def check_step(path: ForwardPath, step: int) -> int:
    """`step` as an int, or a ConfigError when it is outside 0..T."""
    if not 0 <= step <= path.num_timesteps:
        raise ConfigError(f"step {step} is out of range 0..{path.num_timesteps}")
    return int(step)


def step_caption(path: ForwardPath, step: int) -> str:
    """A frame's caption at display step `step`: diffusion "t = 437" (the index, as
    core.export.forward_caption), flow "t = 0.438" (the time t = (k + 1) / T)."""
    if step == 0 or not isinstance(path, FlowPath):
        return forward_caption(step)
    return f"t = {float(path.times[step - 1]):.3f}"


def frame_steps(path: ForwardPath, num_frames: int) -> np.ndarray:
    """`num_frames` display steps evenly spread over 0..T, first and last included."""
    if num_frames < 2:
        raise ConfigError(f"a forward trajectory needs at least 2 frames, got {num_frames}")
    total = path.num_timesteps + 1
    return select_frame_indices(total, min(num_frames, total))


def flow_time_at_snr(snr: float) -> float:
    """The flow time t with this SNR: (1 - t)^2 / t^2 = SNR, so t = 1 / (1 + sqrt(SNR))
    (0 for the clean SNR = inf, 1 for SNR = 0)."""
    if math.isinf(snr):
        return 0.0
    return 1.0 / (1.0 + math.sqrt(max(snr, 0.0)))


def schedule_index_at_log_snr(schedule: NoiseSchedule, log_snr: float) -> int | None:
    """The schedule's timestep index whose log-SNR is nearest `log_snr` (None for the
    clean +inf): where a diffusion schedule is as noisy as a flow time, or another schedule."""
    if math.isinf(log_snr) and log_snr > 0:
        return None
    table = schedule.log_snr.numpy().astype(np.float64)
    with np.errstate(invalid="ignore"):
        gap = np.abs(table - log_snr)
    gap[np.isnan(gap)] = 0.0  # -inf against -inf: the same (zero terminal SNR)
    return int(np.argmin(gap))


class ForwardProcess:
    """x_t = a_t x_0 + s_t eps for one image, on either path (diffusion: DDPM eq. 4,
    a = sqrt(alphabar_t), s = sqrt(1 - alphabar_t); flow: a = 1 - t, s = t).

    path: a NoiseSchedule or a FlowPath. image: float32 (C, H, W) in [-1, 1]. The noise
    eps ~ N(0, I) is drawn once from `seed`.
    """

    def __init__(self, path: ForwardPath, image: np.ndarray, seed: int = 0) -> None:
        if image.ndim != 3:
            raise ConfigError(f"the image must be (C, H, W), got shape {image.shape}")
        self.path = path
        # (H, W, C) float32 so each frame is display-ready without a transpose
        self.x0 = np.ascontiguousarray(np.moveaxis(image.astype(np.float32), 0, -1))
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(image.shape, generator=generator).numpy()
        self.noise = np.ascontiguousarray(np.moveaxis(self.noise, 0, -1))
        self._signal, self._noise = display_levels(path)  # (T + 1,): a_t, s_t
        self._buffer = np.empty_like(self.x0)
        # a fixed, evenly strided subsample of the values (for a histogram of x_t)
        stride = -(-self.x0.size // HIST_SAMPLES)  # ceil: at most HIST_SAMPLES values
        self._x0_sample = np.ascontiguousarray(self.x0.reshape(-1)[::stride])
        self._noise_sample = np.ascontiguousarray(self.noise.reshape(-1)[::stride])

    @property
    def schedule(self) -> ForwardPath:
        """The path (the name older callers use)."""
        return self.path

    @property
    def num_steps(self) -> int:
        """The largest display step, T."""
        return self.path.num_timesteps

    def _check(self, step: int) -> int:
        return check_step(self.path, step)

    def numbers(self, step: int) -> ForwardNumbers:
        return path_numbers(self.path, step)

    def x_t(self, step: int) -> np.ndarray:
        """x_t at a display step, float32 (H, W, C). Returns a new array."""
        step = self._check(step)
        return (
            self._signal[step].astype(np.float32) * self.x0
            + self._noise[step].astype(np.float32) * self.noise
        )

    def x_t_sample(self, step: int) -> np.ndarray:
        """x_t at a display step on a fixed subsample of its values, float32 (n,), n <= 65536.

        The same values of x_0 and eps for every step (chosen once), so histograms of
        different steps are comparable.
        """
        step = self._check(step)
        sample = np.float32(self._signal[step]) * self._x0_sample
        sample += np.float32(self._noise[step]) * self._noise_sample
        return sample

    def x_t_uint8(self, step: int) -> np.ndarray:
        """x_t at a display step as a uint8 (H, W, C) picture, clipped to [-1, 1].

        Reuses one float buffer: no large allocation per call but the returned uint8 array.
        """
        step = self._check(step)
        buffer = self._buffer
        np.multiply(self.x0, np.float32(self._signal[step]), out=buffer)
        buffer += np.float32(self._noise[step]) * self.noise
        np.clip(buffer, -1.0, 1.0, out=buffer)
        buffer += 1.0
        buffer *= 127.5
        return np.rint(buffer, out=buffer).astype(np.uint8)

    def frame_steps(self, num_frames: int) -> np.ndarray:
        """`num_frames` display steps evenly spread over 0..T, first and last included."""
        return frame_steps(self.path, num_frames)

    def frames(self, num_frames: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """(display steps (F,), uint8 (H, W, C) frames) for a GIF or a filmstrip."""
        steps = self.frame_steps(num_frames)
        return steps, [self.x_t_uint8(int(s)) for s in steps]
