"""core.flow: the rectified-flow path, its velocity target, the conversions to x_0 and eps,
the training-time draws and the path a checkpoint's objective names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.flow import (
    FlowPath,
    draw_flow_times,
    forward_path,
    index_noise_levels,
)
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig


def _pair(shape=(5, 3, 4, 4), seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    return x0, torch.randn(shape, generator=g, dtype=torch.float64)


def test_the_path_runs_straight_from_data_to_noise():
    path = FlowPath(100)
    x0, eps = _pair()
    t = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    x_t = path.add_noise(x0, eps, t)
    for b, tb in enumerate(t.tolist()):
        torch.testing.assert_close(x_t[b], (1 - tb) * x0[b] + tb * eps[b])
    torch.testing.assert_close(path.add_noise(x0, eps, 0.0), x0)
    torch.testing.assert_close(path.add_noise(x0, eps, 1.0), eps)


def test_the_velocity_is_the_paths_time_derivative():
    """u = eps - x_0 = d x_t / dt (a central difference of the path, exact for a line)."""
    path = FlowPath(100)
    x0, eps = _pair(seed=1)
    h = 1e-3
    for t in (0.1, 0.5, 0.8):
        slope = (path.add_noise(x0, eps, t + h) - path.add_noise(x0, eps, t - h)) / (2 * h)
        torch.testing.assert_close(slope, path.velocity(x0, eps), rtol=1e-8, atol=1e-8)


def test_split_velocity_recovers_x0_and_eps():
    path = FlowPath(1000)
    x0, eps = _pair((6, 2), seed=2)
    t = torch.tensor([0.001, 0.2, 0.5, 0.7, 0.99, 1.0], dtype=torch.float64)
    x_t = path.add_noise(x0, eps, t)
    got_x0, got_eps = path.split_velocity(x_t, path.velocity(x0, eps), t)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)


def test_grid_times_tables_and_model_timesteps():
    T = 8
    path = FlowPath(T)
    assert len(path) == T == path.num_timesteps
    k = torch.arange(T)
    torch.testing.assert_close(path.time_of_index(k), (k.double() + 1) / T)
    torch.testing.assert_close(path.times, (k.double() + 1) / T)
    torch.testing.assert_close(
        path.signal_coefficients + path.noise_coefficients, torch.ones(T, dtype=torch.float64)
    )
    t = path.times[:-1]
    torch.testing.assert_close(path.log_snr[:-1], 2 * torch.log((1 - t) / t))
    assert path.log_snr[-1] == -math.inf  # pure noise at k = T-1
    assert torch.all(path.log_snr[:-1][1:] < path.log_snr[:-1][:-1])  # decreasing with k
    torch.testing.assert_close(
        path.model_timesteps(torch.tensor([0.5, 1.0])), torch.tensor([4.0, 8.0])
    )
    table = path.table()
    assert set(table) == {"t", "signal", "noise", "log_snr"}
    np.testing.assert_array_equal(table["t"], path.times.numpy())
    with pytest.raises(ConfigError, match="out of range"):
        path.time_of_index(T)
    with pytest.raises(ConfigError, match="out of range"):
        path.time_of_index(-1)
    with pytest.raises(ConfigError, match="at least 2"):
        FlowPath(1)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + torch.special.erf(torch.from_numpy(z) / math.sqrt(2)).numpy())


def test_logit_normal_times_are_sigmoid_of_a_standard_normal():
    """logit(t) ~ N(0, 1): its empirical CDF stays within a Kolmogorov-Smirnov band of Phi
    (n = 20000: 1.63 / sqrt(n) ~ 0.0115 at the 1 % level)."""
    n = 20000
    t = draw_flow_times(n, torch.Generator().manual_seed(0), "logit-normal")
    assert t.shape == (n,) and t.dtype == torch.float32
    assert float(t.min()) > 0 and float(t.max()) < 1
    z = np.sort(torch.logit(t.double()).numpy())
    empirical = np.arange(1, n + 1) / n
    assert np.abs(empirical - _normal_cdf(z)).max() < 1.63 / math.sqrt(n)
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03


def test_uniform_times_fill_zero_to_one():
    n = 20000
    t = draw_flow_times(n, torch.Generator().manual_seed(1), "uniform").double().numpy()
    assert t.min() >= 0 and t.max() < 1
    empirical = np.arange(1, n + 1) / n
    assert np.abs(empirical - np.sort(t)).max() < 1.63 / math.sqrt(n)


def test_time_draws_follow_the_generator():
    a = draw_flow_times(16, torch.Generator().manual_seed(3))
    b = draw_flow_times(16, torch.Generator().manual_seed(3))
    c = draw_flow_times(16, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ConfigError, match="flow time sampling"):
        draw_flow_times(4, torch.Generator(), "beta")  # type: ignore[arg-type]


def test_forward_path_by_objective():
    config = ScheduleConfig("cosine", 250)
    flow = forward_path("flow", config)
    assert isinstance(flow, FlowPath) and flow.num_timesteps == 250
    diffusion = forward_path("diffusion", config)
    assert isinstance(diffusion, NoiseSchedule)
    torch.testing.assert_close(diffusion.alphas_cumprod, NoiseSchedule(config).alphas_cumprod)
    with pytest.raises(ConfigError, match="objective"):
        forward_path("score", config)


def test_index_noise_levels_of_either_path():
    config = ScheduleConfig("linear", 50)
    signal, noise = index_noise_levels(forward_path("flow", config))
    np.testing.assert_allclose(signal, 1 - np.arange(1, 51) / 50)
    np.testing.assert_allclose(noise, np.arange(1, 51) / 50)
    schedule = NoiseSchedule(config)
    signal, noise = index_noise_levels(schedule)
    np.testing.assert_allclose(signal**2 + noise**2, np.ones(50), rtol=1e-12)
    np.testing.assert_allclose(signal, schedule.sqrt_alphas_cumprod.numpy())
