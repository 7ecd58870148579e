"""ForwardPoints: x_t of a 2-D toy set on either path, and the density of x_t on a grid,
checked against direct evaluations of the Gaussian mixture p_t(x) = (1/N) sum_i N(x; a x0_i,
s^2 I) and against the paths' own add_noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_studio.core.data import toy_points
from diffusion_studio.core.errors import ConfigError, DataError
from diffusion_studio.core.export import render_points
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.forward_points import (
    DENSITY_TOP,
    POINT_COLOR,
    ForwardPoints,
    PointsGrid,
    density_picture,
    density_ramp,
    mixture_density,
    normal_density,
    total_variation,
)
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig


def phi(z: float) -> float:
    """The standard normal CDF."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def direct_cell_means(means: np.ndarray, s: float, grid: PointsGrid) -> np.ndarray:
    """Each cell's mean of the mixture, one point and one cell at a time (math.erf)."""
    edges = grid.edges()
    out = np.zeros((grid.size, grid.size))
    for mx, my in means:
        px = [phi((edges[j + 1] - mx) / s) - phi((edges[j] - mx) / s) for j in range(grid.size)]
        py = [phi((edges[j + 1] - my) / s) - phi((edges[j] - my) / s) for j in range(grid.size)]
        out += np.outer(py, px)
    return out / (len(means) * grid.cell**2)


def direct_mixture_at(points: np.ndarray, means: np.ndarray, s: float) -> np.ndarray:
    """p(x) = (1/N) sum_i exp(-|x - m_i|^2 / (2 s^2)) / (2 pi s^2) at points (P, 2)."""
    d2 = ((points[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    return np.exp(-d2 / (2 * s * s)).mean(axis=1) / (2 * math.pi * s * s)


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule(ScheduleConfig("linear", 1000))


def test_points_and_noise_are_the_documented_draws(schedule):
    process = ForwardPoints(schedule, "spiral", num_points=300, seed=4, data_seed=2)
    expected_x0 = toy_points("spiral", 300, torch.Generator().manual_seed(2)).numpy()
    np.testing.assert_array_equal(process.x0, expected_x0.astype(np.float64))
    noise = torch.randn((300, 2), generator=torch.Generator().manual_seed(4)).numpy()
    np.testing.assert_array_equal(process.noise, noise.astype(np.float64))
    other = ForwardPoints(schedule, "spiral", num_points=300, seed=5, data_seed=2)
    np.testing.assert_array_equal(other.x0, process.x0)  # the seed changes the noise only
    assert not np.allclose(other.noise, process.noise)


def test_diffusion_x_t_is_add_noise(schedule):
    process = ForwardPoints(schedule, "moons", num_points=200, seed=1)
    np.testing.assert_array_equal(process.x_t(0), process.x0)
    for step in (1, 250, 1000):
        expected = schedule.add_noise(
            torch.from_numpy(process.x0), torch.from_numpy(process.noise), torch.tensor([step - 1])
        )
        np.testing.assert_allclose(process.x_t(step), expected.numpy(), rtol=0, atol=1e-12)


def test_flow_x_t_is_the_straight_line_exactly():
    path = FlowPath(50)
    process = ForwardPoints(path, "rings", num_points=200, seed=3)
    for step in (0, 1, 10, 37, 50):
        t = step / 50  # display step k: index k - 1, t = (k - 1 + 1) / T
        np.testing.assert_array_equal(process.x_t(step), (1 - t) * process.x0 + t * process.noise)
        x0, eps = torch.from_numpy(process.x0), torch.from_numpy(process.noise)
        np.testing.assert_array_equal(process.x_t(step), path.add_noise(x0, eps, t).numpy())
        numbers = process.numbers(step).path
        assert (numbers.signal, numbers.noise, numbers.time) == pytest.approx((1 - t, t, t))
        assert numbers.objective == "flow"
    np.testing.assert_array_equal(process.x_t(50), process.noise)  # t = 1: pure noise


@pytest.mark.parametrize("step", [1, 30, 200])
def test_density_is_the_direct_cell_means_of_the_mixture(schedule, step):
    grid = PointsGrid(16, 3.0)
    process = ForwardPoints(schedule, "gaussians", num_points=40, seed=0, grid=grid)
    a, s = process.levels(step)
    expected = direct_cell_means(a * process.x0, s, grid)
    density = process.density(step)
    assert density.shape == (16, 16)
    np.testing.assert_allclose(density, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_density_is_the_mixture_at_the_grid_points_when_cells_are_small(schedule):
    """Cell means equal p_t at the cell centres to O(cell^2 / s^2) (here cell / s = 0.19)."""
    grid = PointsGrid(64, 3.0)
    process = ForwardPoints(schedule, "swissroll", num_points=300, seed=2, grid=grid)
    step = 150
    a, s = process.levels(step)
    assert 0.45 < s < 0.55
    cx, cy = np.meshgrid(grid.centres(), grid.centres())  # [row = y, col = x]
    centres = np.stack([cx.ravel(), cy.ravel()], axis=1)
    expected = direct_mixture_at(centres, a * process.x0, s).reshape(64, 64)
    density = process.density(step)
    np.testing.assert_allclose(density, expected, rtol=0, atol=5e-3 * expected.max())
    peak = np.unravel_index(np.argmax(expected), expected.shape)
    assert density[peak] == pytest.approx(expected[peak], rel=5e-3)  # row 0 is y = -extent


def test_step_0_is_the_histogram_of_the_points(schedule):
    grid = PointsGrid(32, 3.0)
    process = ForwardPoints(schedule, "moons", num_points=500, seed=0, grid=grid)
    counts, _, _ = np.histogram2d(
        process.x0[:, 1], process.x0[:, 0], bins=[grid.edges(), grid.edges()]
    )
    np.testing.assert_allclose(process.density(0), counts / (500 * grid.cell**2), rtol=1e-6)


@pytest.mark.parametrize("path", [NoiseSchedule(ScheduleConfig("cosine", 200)), FlowPath(200)])
def test_density_integrates_to_one_over_a_wide_grid(path):
    wide = PointsGrid(160, 8.0)
    process = ForwardPoints(path, "rings", num_points=400, seed=0, grid=wide)
    for step in (0, 1, 20, 100, 200):
        assert process.density(step).sum() * wide.cell**2 == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("path", [NoiseSchedule(ScheduleConfig("linear", 1000)), FlowPath(1000)])
def test_last_step_is_the_standard_normal(path):
    grid = PointsGrid(64, 3.0)
    process = ForwardPoints(path, "spiral", num_points=500, seed=0, grid=grid)
    normal = normal_density(grid)
    cx, cy = np.meshgrid(grid.centres(), grid.centres())
    at_centres = np.exp(-(cx**2 + cy**2) / 2) / (2 * math.pi)
    np.testing.assert_allclose(normal, at_centres, atol=2e-3 * at_centres.max())
    last = process.density(1000)
    np.testing.assert_allclose(last, normal, atol=1e-3 * normal.max())
    tv = [process.numbers(k).tv_to_normal for k in (0, 250, 500, 1000)]
    assert tv[0] > 0.5 and tv[-1] < 1e-3
    if isinstance(path, NoiseSchedule):  # N(0, I) is the diffusion chain's stationary law
        assert tv == sorted(tv, reverse=True)


def test_total_variation_of_disjoint_and_equal_densities():
    grid = PointsGrid(32, 3.0)
    left = mixture_density(np.array([[-2.0, 0.0]]), 0.0, grid)
    right = mixture_density(np.array([[2.0, 0.0]]), 0.0, grid)
    assert total_variation(left, right, grid) == pytest.approx(1.0)
    assert total_variation(left, left, grid) == 0.0


def test_frame_is_the_density_picture_under_the_points(schedule):
    process = ForwardPoints(schedule, "gaussians", num_points=300, seed=0)
    frame = process.frame(400, size=96)
    assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
    background = density_picture(process.density(400, PointsGrid(96, 3.0)))
    dots = render_points(process.x_t(400), 96, 3.0, color=POINT_COLOR, dot=1)
    drawn = (dots != 255).any(axis=2)
    assert 0 < drawn.mean() < 0.5
    assert (frame[drawn] == POINT_COLOR).all()
    np.testing.assert_array_equal(frame[~drawn], background[~drawn])
    steps, frames = process.frames(5, size=32)
    assert list(steps) == [0, 250, 500, 750, 1000] and len(frames) == 5


def test_density_picture_levels_and_orientation():
    density = np.zeros((4, 4))
    density[0, 1] = DENSITY_TOP  # row 0: the lowest y, drawn at the picture's bottom
    density[3, 2] = 10 * DENSITY_TOP  # above the top: clipped to the full colour
    picture = density_picture(density)
    ramp = density_ramp()
    assert (ramp[0] == 255).all()
    np.testing.assert_array_equal(picture[3, 1], ramp[255])
    np.testing.assert_array_equal(picture[0, 2], ramp[255])
    assert (picture[1:3] == 255).all()


def test_bad_input_is_refused(schedule):
    with pytest.raises(DataError, match="unknown toy data set"):
        ForwardPoints(schedule, "circles")
    process = ForwardPoints(schedule, "moons", num_points=10)
    with pytest.raises(ConfigError, match="out of range"):
        process.x_t(1001)
    with pytest.raises(ConfigError, match="at least 2 cells"):
        PointsGrid(1)
    with pytest.raises(ConfigError, match="scale"):
        mixture_density(np.zeros((3, 2)), -1.0)
