"""ForwardProcess: the engine's add_noise, as display-ready frames, numbers and samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import to_uint8_images
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.forward import (
    HIST_SAMPLES,
    ForwardProcess,
    display_levels,
    flow_time_at_snr,
    path_numbers,
    schedule_index_at_log_snr,
    step_caption,
)
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


def test_flow_path_x_t_and_numbers():
    """On a FlowPath, display step k shows t = k / T: x_t = (1 - t) x_0 + t eps (the path's
    add_noise), with signal 1 - t, noise t and log-SNR 2 log((1 - t) / t)."""
    path = FlowPath(40)
    image = make_image()
    process = ForwardProcess(path, image, seed=2)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(2))
    for step in (0, 1, 13, 40):
        t = step / 40
        expected = path.add_noise(torch.from_numpy(image)[None], noise[None], torch.tensor([t]))
        shown = np.moveaxis(process.x_t(step), -1, 0)
        np.testing.assert_allclose(shown, expected[0].numpy(), rtol=0, atol=1e-6)
        numbers = process.numbers(step)
        assert numbers.objective == "flow" and numbers.time == pytest.approx(t)
        assert (numbers.signal, numbers.noise) == pytest.approx((1 - t, t))
        assert step_caption(path, step) == ("x_0 (clean)" if step == 0 else f"t = {t:.3f}")
    assert process.numbers(13).log_snr == pytest.approx(float(path.log_snr[12]))
    assert process.numbers(40).log_snr == float("-inf") and process.numbers(0).snr == float("inf")
    np.testing.assert_array_equal(process.x_t_uint8(40), to_uint8_images(noise.numpy()))


def test_display_levels_prepend_the_clean_step():
    schedule = NoiseSchedule(ScheduleConfig("cosine", 30))
    signal, noise = display_levels(schedule)
    assert signal.shape == noise.shape == (31,) and (signal[0], noise[0]) == (1.0, 0.0)
    np.testing.assert_allclose(signal[1:], schedule.sqrt_alphas_cumprod.numpy())
    np.testing.assert_allclose(noise[1:], schedule.sqrt_one_minus_alphas_cumprod.numpy())
    numbers = path_numbers(schedule, 7)
    assert numbers.objective == "diffusion" and numbers.time is None
    assert numbers.log_snr == pytest.approx(float(schedule.log_snr[6]), rel=1e-9)
    assert step_caption(schedule, 7) == "t = 6"


def test_flow_and_schedule_meet_at_equal_snr():
    """Where a flow time and a diffusion timestep are equally noisy (equal SNR)."""
    schedule = NoiseSchedule(ScheduleConfig("linear", 1000))
    path = FlowPath(1000)
    for index in (0, 99, 499, 998):
        snr = float(schedule.snr[index])
        t = flow_time_at_snr(snr)
        assert ((1 - t) / t) ** 2 == pytest.approx(snr, rel=1e-9)
        flow_index = int(round(t * 1000)) - 1  # the flow grid point nearest t
        back = schedule_index_at_log_snr(schedule, float(path.log_snr[flow_index]))
        assert abs(back - index) <= max(2, 0.02 * index)
    assert flow_time_at_snr(float("inf")) == 0.0 and flow_time_at_snr(0.0) == 1.0
    assert schedule_index_at_log_snr(schedule, float("inf")) is None
    assert schedule_index_at_log_snr(schedule, float(schedule.log_snr[321])) == 321
    zero = NoiseSchedule(ScheduleConfig("cosine", 50, zero_terminal_snr=True))
    assert schedule_index_at_log_snr(zero, float("-inf")) == 49
