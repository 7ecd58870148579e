"""ForwardProcess: the engine's add_noise, as display-ready frames, numbers and samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import to_uint8_images
from diffusion_studio.core.forward import HIST_SAMPLES, ForwardProcess
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig


def make_image(shape=(3, 12, 20), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def engine_xt(schedule, image, seed, t) -> torch.Tensor:
    """x_t by the schedule's add_noise with the noise ForwardProcess documents (C, H, W)."""
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    x0 = torch.from_numpy(image)[None]
    return schedule.add_noise(x0, noise[None], torch.tensor([t]))[0]


@pytest.mark.parametrize("config", [ScheduleConfig(), ScheduleConfig("cosine", 50)])
def test_x_t_uint8_is_add_noise_as_uint8(config):
    schedule = NoiseSchedule(config)
    image = make_image()
    process = ForwardProcess(schedule, image, seed=3)
    np.testing.assert_array_equal(process.x_t_uint8(0), to_uint8_images(image))
    for step in (1, config.num_timesteps // 3, config.num_timesteps):
        expected = to_uint8_images(engine_xt(schedule, image, 3, step - 1))
        shown = process.x_t_uint8(step)
        assert shown.dtype == np.uint8 and shown.shape == (12, 20, 3)
        diff = np.abs(shown.astype(int) - expected.astype(int))
        assert diff.max() <= 1  # float32 rounding at a level boundary at most
        assert (diff > 0).mean() < 0.01
    with pytest.raises(ConfigError, match="out of range"):
        process.x_t_uint8(config.num_timesteps + 1)


def test_numbers_are_the_schedules():
    schedule = NoiseSchedule(ScheduleConfig())
    process = ForwardProcess(schedule, make_image(), seed=0)
    clean = process.numbers(0)
    assert (clean.sqrt_alpha_bar, clean.sqrt_one_minus_alpha_bar) == (1.0, 0.0)
    assert clean.snr == float("inf")
    numbers = process.numbers(501)  # timestep index 500
    assert numbers.alpha_bar == pytest.approx(float(schedule.alphas_cumprod[500]), rel=1e-9)
    assert numbers.sqrt_one_minus_alpha_bar == pytest.approx(
        float(schedule.sqrt_one_minus_alphas_cumprod[500]), rel=1e-9
    )
    assert numbers.snr == pytest.approx(float(schedule.snr[500]), rel=1e-9)


def test_frame_steps_span_clean_to_noisiest():
    process = ForwardProcess(NoiseSchedule(ScheduleConfig("linear", 100)), make_image(), seed=0)
    steps = process.frame_steps(8)
    assert len(steps) == 8 and steps[0] == 0 and steps[-1] == 100
    assert np.all(np.diff(steps) > 0)
    assert len(process.frame_steps(500)) == 101  # never more frames than steps
    with pytest.raises(ConfigError):
        process.frame_steps(1)
    steps, frames = process.frames(3)
    np.testing.assert_array_equal(frames[-1], process.x_t_uint8(100))


def test_x_t_sample_is_a_fixed_subsample_of_x_t():
    schedule = NoiseSchedule(ScheduleConfig())
    small = ForwardProcess(schedule, make_image(), seed=1)
    for step in (0, 200, 1000):
        sample = small.x_t_sample(step)
        assert sample.dtype == np.float32 and sample.shape == (3 * 12 * 20,)
        # small image: every value, in (H, W, C) order
        np.testing.assert_allclose(sample, small.x_t(step).reshape(-1), rtol=1e-6, atol=1e-6)
    big = ForwardProcess(schedule, make_image((3, 256, 300)), seed=0)
    first, again = big.x_t_sample(700), big.x_t_sample(700)
    assert first.shape[0] <= HIST_SAMPLES and first.shape[0] > HIST_SAMPLES // 2
    np.testing.assert_array_equal(first, again)
    assert np.isin(first, big.x_t(700)).all()  # values of x_t itself
    # at the last step x_t is nearly N(0, 1)
    last = big.x_t_sample(1000)
    assert abs(float(last.mean())) < 0.02 and float(last.std()) == pytest.approx(1.0, abs=0.02)
