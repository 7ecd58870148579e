"""The forward process on one image, for display: x_t at any t with fixed noise.

Display convention shared by the GUI's slider and the CLI: `step` runs 0..T, where step 0 is
the clean image x_0 and step k >= 1 is the schedule's timestep index k - 1 (so step T is the
last, noisiest timestep). Everything that does not depend on t (the image, the noise) is
computed once, so a new t costs one fused multiply-add.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import select_frame_indices
from diffusion_studio.core.schedule import NoiseSchedule

HIST_SAMPLES = 65536  # at most this many values in x_t_sample (a pixel-value histogram)


@dataclass(frozen=True)
class ForwardNumbers:
    """The schedule's numbers at a display step (step 0: the clean image)."""

    step: int
    sqrt_alpha_bar: float
    sqrt_one_minus_alpha_bar: float
    alpha_bar: float
    snr: float


class ForwardProcess:
    """x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps (DDPM eq. 4) for one image.

    image: float32 (C, H, W) in [-1, 1]. The noise eps ~ N(0, I) is drawn once from `seed`.
    """

    def __init__(self, schedule: NoiseSchedule, image: np.ndarray, seed: int = 0) -> None:
        if image.ndim != 3:
            raise ConfigError(f"the image must be (C, H, W), got shape {image.shape}")
        self.schedule = schedule
        # (H, W, C) float32 so each frame is display-ready without a transpose
        self.x0 = np.ascontiguousarray(np.moveaxis(image.astype(np.float32), 0, -1))
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(image.shape, generator=generator).numpy()
        self.noise = np.ascontiguousarray(np.moveaxis(self.noise, 0, -1))
        self._sqrt_ab = np.concatenate([[1.0], schedule.sqrt_alphas_cumprod.numpy()])
        self._sqrt_1m_ab = np.concatenate([[0.0], schedule.sqrt_one_minus_alphas_cumprod.numpy()])
        self._buffer = np.empty_like(self.x0)
        # a fixed, evenly strided subsample of the values (for a histogram of x_t)
        stride = -(-self.x0.size // HIST_SAMPLES)  # ceil: at most HIST_SAMPLES values
        self._x0_sample = np.ascontiguousarray(self.x0.reshape(-1)[::stride])
        self._noise_sample = np.ascontiguousarray(self.noise.reshape(-1)[::stride])

    @property
    def num_steps(self) -> int:
        """The largest display step, T."""
        return self.schedule.num_timesteps

    def _check(self, step: int) -> int:
        if not 0 <= step <= self.num_steps:
            raise ConfigError(f"step {step} is out of range 0..{self.num_steps}")
        return int(step)

    def numbers(self, step: int) -> ForwardNumbers:
        step = self._check(step)
        a, b = float(self._sqrt_ab[step]), float(self._sqrt_1m_ab[step])
        alpha_bar = a * a
        snr = alpha_bar / (b * b) if b > 0 else float("inf")
        return ForwardNumbers(step, a, b, alpha_bar, snr)

    def x_t(self, step: int) -> np.ndarray:
        """x_t at a display step, float32 (H, W, C). Returns a new array."""
        step = self._check(step)
        return (
            self._sqrt_ab[step].astype(np.float32) * self.x0
            + self._sqrt_1m_ab[step].astype(np.float32) * self.noise
        )

    def x_t_sample(self, step: int) -> np.ndarray:
        """x_t at a display step on a fixed subsample of its values, float32 (n,), n <= 65536.

        The same values of x_0 and eps for every step (chosen once), so histograms of
        different steps are comparable.
        """
        step = self._check(step)
        sample = np.float32(self._sqrt_ab[step]) * self._x0_sample
        sample += np.float32(self._sqrt_1m_ab[step]) * self._noise_sample
        return sample

    def x_t_uint8(self, step: int) -> np.ndarray:
        """x_t at a display step as a uint8 (H, W, C) picture, clipped to [-1, 1].

        Reuses one float buffer: no large allocation per call but the returned uint8 array.
        """
        step = self._check(step)
        buffer = self._buffer
        np.multiply(self.x0, np.float32(self._sqrt_ab[step]), out=buffer)
        buffer += np.float32(self._sqrt_1m_ab[step]) * self.noise
        np.clip(buffer, -1.0, 1.0, out=buffer)
        buffer += 1.0
        buffer *= 127.5
        return np.rint(buffer, out=buffer).astype(np.uint8)

    def frame_steps(self, num_frames: int) -> np.ndarray:
        """`num_frames` display steps evenly spread over 0..T, first and last included."""
        if num_frames < 2:
            raise ConfigError(f"a forward trajectory needs at least 2 frames, got {num_frames}")
        return select_frame_indices(self.num_steps + 1, min(num_frames, self.num_steps + 1))

    def frames(self, num_frames: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """(display steps (F,), uint8 (H, W, C) frames) for a GIF or a filmstrip."""
        steps = self.frame_steps(num_frames)
        return steps, [self.x_t_uint8(int(s)) for s in steps]
