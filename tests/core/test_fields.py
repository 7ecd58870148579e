"""core.fields: the exact Gaussian-mixture field against Monte-Carlo estimates from core.data's
samples, the learned field against the network's outputs converted by hand, the error between
them, and particles moving along a field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_studio.core.checkpoint import Checkpoint
from diffusion_studio.core.data import toy_points
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.fields import (
    FieldPath,
    ModelFields,
    NoiseLevel,
    evaluate_field,
    field_error,
    field_grid,
    gaussians_mixture,
    mixture_denoise,
    mixture_denoiser,
    mixture_density,
    particle_levels,
    particle_paths,
)
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.models import MLPConfig, UNetConfig, build_model
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig

T = 100
SCHEDULE = ScheduleConfig("cosine", T)
TINY_MLP = MLPConfig(hidden=16, layers=1, time_embed_dim=8)


def random_state(seed: int = 0) -> dict:
    """A tiny MLP's weights, all random (an untrained MLP's last layer is zero: it predicts 0)."""
    g = torch.Generator().manual_seed(seed)
    state = build_model(TINY_MLP).state_dict()
    return {name: 0.5 * torch.randn(t.shape, generator=g) for name, t in state.items()}


def checkpoint(
    objective: str, prediction_type: str, data: str = "gaussians", model: nn.Module | None = None
) -> Checkpoint:
    """A 2-D point checkpoint with a tiny random MLP (or no weights when `model` is given)."""
    state = {} if model is not None else random_state()
    return Checkpoint(
        TINY_MLP,
        SCHEDULE,
        prediction_type,
        state,
        {"name": data, "kind": "points"},
        objective=objective,
    )


class ExactModule(nn.Module):
    """The exact `gaussians` field as a network: v = a eps_hat - s x0_hat (diffusion, v
    prediction) or the velocity eps_hat - x0_hat (flow), at the network's timestep input;
    `perturb` adds a fixed vector field of that size."""

    def __init__(self, path: FieldPath, perturb: float = 0.0) -> None:
        super().__init__()
        self.path, self.perturb = path, perturb
        self.mixture = gaussians_mixture()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        step = float(t[0])
        k = round(step) - 1 if self.path.objective == "flow" else round(step)  # model_t = k + 1
        a, s = self.path.signal[k], self.path.noise[k]
        points = x.double().numpy()
        x0, eps = mixture_denoise(self.mixture, points, a, s)
        out = eps - x0 if self.path.objective == "flow" else a * eps - s * x0
        wiggle = np.stack([np.sin(3 * points[:, 1]), np.cos(2 * points[:, 0])], 1)
        return torch.from_numpy(out + self.perturb * wiggle).float()


def exact_fields(objective: str, perturb: float = 0.0) -> ModelFields:
    kind = "velocity" if objective == "flow" else "v"
    path = FieldPath.of(checkpoint(objective, kind))
    module = ExactModule(path, perturb)
    return ModelFields(checkpoint(objective, kind, model=module), model=module)


def test_the_mixture_is_core_datas_gaussians():
    mixture = gaussians_mixture()
    x = toy_points("gaussians", 40000, torch.Generator().manual_seed(0)).double().numpy()
    nearest = np.linalg.norm(x[:, None] - mixture.means[None], axis=-1).argmin(1)
    for j in range(len(mixture.means)):
        mine = x[nearest == j]
        assert len(mine) / len(x) == pytest.approx(mixture.weights[j], abs=0.01)
        np.testing.assert_allclose(mine.mean(0), mixture.means[j], atol=0.01)
        np.testing.assert_allclose(mine.std(0), mixture.stds[j], rtol=0.05)


@pytest.mark.parametrize("a, s", [(0.9, 0.45), (0.6, 0.8), (0.5, 0.5)])
def test_exact_denoiser_and_density_match_monte_carlo(a, s):
    """E[x0 | x_t = q] = E_x0[x0 N(q; a x0, s^2)] / E_x0[N(q; a x0, s^2)] and p_t(q) the
    denominator, estimated with x0 drawn by core.data."""
    x0 = toy_points("gaussians", 200000, torch.Generator().manual_seed(1)).double().numpy()
    queries = np.array([[0.0, 0.0], [1.2, 0.3], [-0.5, 0.9], [0.7, -0.7]])
    kernel = np.exp(-((queries[:, None] - a * x0[None]) ** 2).sum(-1) / (2 * s**2))
    kernel /= 2 * math.pi * s**2  # (Q, N) N(q; a x0, s^2 I)
    density = kernel.mean(1)
    expected_x0 = (kernel[:, :, None] * x0[None]).sum(1) / kernel.sum(1)[:, None]
    mixture = gaussians_mixture()
    got_x0, got_eps = mixture_denoise(mixture, queries, a, s)
    np.testing.assert_allclose(got_x0, expected_x0, atol=0.02)
    np.testing.assert_allclose(a * got_x0 + s * got_eps, queries, atol=1e-12)
    np.testing.assert_allclose(mixture_density(mixture, queries, a, s), density, rtol=0.03)


def test_exact_score_is_the_gradient_of_log_density():
    mixture, a, s = gaussians_mixture(), 0.8, 0.5
    level = NoiseLevel(0, a, s, 0.0, 0.0)
    q = np.array([[0.3, -0.2], [1.1, 0.9]])
    score = evaluate_field(mixture_denoiser(mixture), "diffusion", q, level).vectors
    h = 1e-5
    for d in range(2):
        step = np.zeros(2)
        step[d] = h
        up = np.log(mixture_density(mixture, q + step, a, s))
        down = np.log(mixture_density(mixture, q - step, a, s))
        np.testing.assert_allclose(score[:, d], (up - down) / (2 * h), rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["v", "epsilon", "x0"])
def test_learned_diffusion_score_is_the_models_output_by_hand(prediction_type):
    ckpt = checkpoint("diffusion", prediction_type, data="moons")
    fields = ModelFields(ckpt)
    points, k = field_grid(2.0, 5), 37
    view = fields.view(points, k)
    assert view.exact is None and view.error is None  # moons has no closed form here
    ab = float(NoiseSchedule(SCHEDULE).alphas_cumprod[k])
    a, s = math.sqrt(ab), math.sqrt(1 - ab)
    model = build_model(TINY_MLP)
    model.load_state_dict(ckpt.model_state)
    with torch.no_grad():
        out = model(torch.from_numpy(points).float(), torch.full((25,), k)).double().numpy()
    x = points
    eps = {"v": a * out + s * x, "epsilon": out, "x0": (x - a * out) / s}[prediction_type]
    np.testing.assert_allclose(view.learned.vectors, -eps / s, rtol=1e-5, atol=1e-5)


def test_learned_flow_velocity_is_the_models_output_at_t_times_T():
    ckpt = checkpoint("flow", "velocity")
    fields = ModelFields(ckpt)
    points, k = field_grid(2.0, 4), 59
    level = fields.path.level(k)
    assert level.time == pytest.approx((k + 1) / T) and level.model_t == pytest.approx(k + 1)
    assert (level.signal, level.noise) == pytest.approx((1 - (k + 1) / T, (k + 1) / T))
    model = build_model(TINY_MLP)
    model.load_state_dict(ckpt.model_state)
    with torch.no_grad():
        v = model(torch.from_numpy(points).float(), torch.full((16,), float(k + 1))).numpy()
    view = fields.view(points, k)
    np.testing.assert_allclose(view.learned.vectors, v, rtol=1e-5, atol=1e-6)
    # the exact gaussians velocity beside it, with the error between them
    exact_x0, exact_eps = mixture_denoise(gaussians_mixture(), points, level.signal, level.noise)
    np.testing.assert_allclose(view.exact.vectors, exact_eps - exact_x0, atol=1e-12)
    np.testing.assert_allclose(
        view.error.per_point, np.linalg.norm(v - (exact_eps - exact_x0), axis=1), rtol=1e-5
    )


@pytest.mark.parametrize("objective", ["diffusion", "flow"])
def test_error_is_zero_for_the_exact_field_and_grows_with_a_perturbation(objective):
    points = field_grid(2.5, 12)
    errors = []
    for perturb in (0.0, 0.1, 0.4):
        fields = exact_fields(objective, perturb)
        errors.append([fields.view(points, k).error.relative for k in (10, 50, 90)])
    errors = np.array(errors)  # (perturbations, levels)
    assert np.all(errors[0] < 1e-4)
    assert np.all(errors[1] > 10 * errors[0] + 1e-3)
    assert np.all(errors[2] > 2 * errors[1])


def test_field_error_weights_by_density():
    learned = np.array([[1.0, 0.0], [0.0, 3.0]])
    exact = np.array([[1.0, 0.0], [0.0, 1.0]])
    error = field_error(learned, exact, np.array([3.0, 1.0]))
    np.testing.assert_allclose(error.per_point, [0.0, 2.0])
    assert error.relative == pytest.approx((1 * 2.0) / (3 * 1.0 + 1 * 1.0))


def test_flow_particle_step_is_euler_on_the_velocity():
    path = FieldPath("flow", FlowPath(T))
    denoise = mixture_denoiser(gaussians_mixture())
    levels = particle_levels(path, 79, 4)
    assert [lv.index for lv in levels] == [79, 53, 26, 0, -1]
    start = np.array([[0.2, 0.1], [-1.0, 0.5]])
    paths = particle_paths(denoise, start, levels)
    assert paths.positions.shape == (5, 2, 2)
    np.testing.assert_allclose(paths.times, [0.8, 0.54, 0.27, 0.01, 0.0])
    for i in range(4):
        x = paths.positions[i]
        v = evaluate_field(denoise, "flow", x, levels[i]).vectors
        dt = levels[i + 1].time - levels[i].time  # negative: towards the data
        np.testing.assert_allclose(paths.positions[i + 1], x + dt * v, atol=1e-12)


@pytest.mark.parametrize("objective", ["flow", "diffusion"])
def test_particles_of_the_exact_field_end_on_the_mixture(objective):
    fields = exact_fields(objective)
    paths = fields.particles(T - 1, count=200, steps=25, seed=3)
    assert paths.positions.shape == (26, 200, 2)  # the start and 25 steps
    assert np.abs(paths.positions[0]).std() > 0.5  # they start as noise
    end = paths.positions[-1]
    means = gaussians_mixture().means
    distance = np.linalg.norm(end[:, None] - means[None], axis=-1)
    assert np.median(distance.min(1)) < 0.15
    assert len(np.unique(distance.argmin(1))) == 8  # every component is reached


def test_grid_layout_and_refusals():
    grid = field_grid(1.0, 3)
    np.testing.assert_allclose(grid[:3], [[-1, -1], [0, -1], [1, -1]])
    np.testing.assert_allclose(grid[3], [-1, 0])
    with pytest.raises(ConfigError, match="out of range"):
        FieldPath.of(checkpoint("diffusion", "v")).level(T)
    image = Checkpoint(UNetConfig(), SCHEDULE, "v", {}, {"name": "digits", "kind": "images"})
    with pytest.raises(ConfigError, match="2-D point model"):
        ModelFields(image)


def test_exact_particles_start_where_the_learned_ones_do():
    fields = exact_fields("flow")  # its network is the exact field itself
    learned = fields.particles(60, count=50, steps=10, seed=2)
    exact = fields.particles(60, count=50, steps=10, seed=2, exact=True)
    np.testing.assert_array_equal(learned.positions[0], exact.positions[0])
    np.testing.assert_allclose(learned.positions, exact.positions, atol=1e-4)
    moons = ModelFields(checkpoint("flow", "velocity", data="moons"))
    with pytest.raises(ConfigError, match="exact field"):
        moons.particles(60, exact=True)


def test_particle_run_reports_each_step_and_ends_with_both_paths():
    fields = ModelFields(checkpoint("diffusion", "v"))  # a random tiny network
    records = list(fields.particle_run(70, count=30, steps=6, seed=4))
    assert [(r.done, r.total) for r in records[:-1]] == [(i, 6) for i in range(1, 7)]
    run = records[-1]
    assert run.index == 70
    np.testing.assert_array_equal(run.learned.positions, fields.particles(70, 30, 6, 4).positions)
    exact = fields.particles(70, 30, 6, 4, exact=True)
    np.testing.assert_array_equal(run.exact.positions, exact.positions)
