"""Fields you can see in 2-D: a point model's learned field at one noise level, the exact field
of the `gaussians` set in closed form, the error between them, and particles moving along them.

Both objectives write x_t = a x_0 + s eps (eps ~ N(0, I)) at a timestep index k:
diffusion a = sqrt(alphabar_k), s = sqrt(1 - alphabar_k); flow a = 1 - t_k, s = t_k
(core.flow.index_noise_levels). A network's output at (x_t, k) converts to a denoised pair
(x0_hat, eps_hat) with x_t = a x0_hat + s eps_hat (core.samplers.base.split_prediction_at for
diffusion, FlowPath.split_velocity for flow). The field drawn as arrows:

    flow:       v(x, t) = eps_hat - x0_hat             the flow ODE dx/dt = v (core.flow)
    diffusion:  score(x) = grad log p_t(x) = -eps_hat / s    (Song et al. 2021b, "Tweedie")

The score points from x_t towards the data, more steeply the less noise there is; the flow's
velocity points from the data towards the noise (the sampler walks against it, dt < 0).

The exact field of a Gaussian mixture x_0 ~ sum_j w_j N(mu_j, c_j^2 I):
    x_t ~ sum_j w_j N(a mu_j, (a^2 c_j^2 + s^2) I)
    E[x_0 | x_t, j] = mu_j + a c_j^2 / (a^2 c_j^2 + s^2) (x_t - a mu_j)
    r_j(x_t) = w_j N(x_t; a mu_j, ...) / sum_i w_i N(x_t; a mu_i, ...)        (Bayes)
    x0_hat = E[x_0 | x_t] = sum_j r_j E[x_0 | x_t, j],   eps_hat = (x_t - a x0_hat) / s
from which the exact velocity and score follow as above.

Particles move along a field from index k down to t = 0 with one update for both objectives,
    x <- a' x0_hat(x) + s' eps_hat(x)          (a', s') the next, less noisy level
which is Euler's method on the flow ODE (x - (t - t') v, algebra in `particle_paths`) and the
DDIM step with eta = 0 for diffusion, Euler's method on the probability-flow ODE in the
variables (x / a, s / a) (Song et al. 2021a, eq. 14). The last step goes to (a, s) = (1, 0).

Points are float64 numpy arrays (N, 2); the network sees float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from diffusion_studio.core.checkpoint import Checkpoint, build_model_from_checkpoint
from diffusion_studio.core.data import TOY_DATASETS, toy_points
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.flow import FlowPath, forward_path, index_noise_levels
from diffusion_studio.core.samplers.base import split_prediction_at

GAUSSIANS = "gaussians"  # the toy set whose exact field is known
DEFAULT_EXTENT = 2.5  # grids cover [-extent, extent]^2, as the app's point plots
DEFAULT_GRID_SIZE = 20
DEFAULT_PARTICLES = 300
DEFAULT_PARTICLE_STEPS = 40


# --------------------------------------------------------------------------- noise levels


@dataclass(frozen=True)
class NoiseLevel:
    """Timestep index k of a model's path: x_t = signal * x_0 + noise * eps.

    model_t: what the network is given (k for diffusion, t_k T for flow); time: the flow's
    t_k = (k + 1) / T, or k for diffusion (what the app shows as "t").
    """

    index: int
    signal: float
    noise: float
    model_t: float
    time: float


class FieldPath:
    """The noise levels of a checkpoint's path (diffusion schedule or flow path) by index."""

    def __init__(self, objective: str, path: object) -> None:
        self.objective = objective
        self.path = path
        signal, noise = index_noise_levels(path)  # (T,), (T,)
        self.signal = np.asarray(signal, dtype=np.float64)
        self.noise = np.asarray(noise, dtype=np.float64)

    @classmethod
    def of(cls, ckpt: Checkpoint) -> FieldPath:
        return cls(ckpt.objective, forward_path(ckpt.objective, ckpt.schedule_config))

    @property
    def num_timesteps(self) -> int:
        return len(self.signal)

    def level(self, k: int) -> NoiseLevel:
        """The noise level at index k (0 .. T-1; ConfigError outside)."""
        k = int(k)
        if not 0 <= k < self.num_timesteps:
            raise ConfigError(f"timestep {k} out of range: valid are 0..{self.num_timesteps - 1}")
        if isinstance(self.path, FlowPath):
            t = float(self.path.time_of_index(k))
            model_t = float(self.path.model_timesteps(torch.tensor(t, dtype=torch.float64)))
            return NoiseLevel(k, float(self.signal[k]), float(self.noise[k]), model_t, t)
        return NoiseLevel(k, float(self.signal[k]), float(self.noise[k]), float(k), float(k))


# A denoiser: points x_t (N, 2) float64 at a level -> (x0_hat, eps_hat), each (N, 2) float64.
Denoiser = Callable[[np.ndarray, NoiseLevel], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------- the learned field


def model_denoiser(
    model: nn.Module, objective: str, prediction_type: str, path: object
) -> Denoiser:
    """A point network's (x0_hat, eps_hat): its output at (x_t, level.model_t) converted with
    split_prediction_at(a^2, ...) for diffusion or FlowPath.split_velocity for flow."""
    device = next(iter(model.parameters()), torch.zeros(())).device

    def denoise(x: np.ndarray, level: NoiseLevel) -> tuple[np.ndarray, np.ndarray]:
        x_t = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)
        steps = torch.full((x_t.shape[0],), level.model_t, dtype=torch.float32, device=device)
        if objective != "flow":
            steps = steps.round().long()  # diffusion networks see integer timesteps
        with torch.no_grad():
            out = model(x_t, steps).double()
        x_t = x_t.double()
        if isinstance(path, FlowPath):
            x0, eps = path.split_velocity(x_t, out, level.time)  # x0 = x - t v, eps = x + (1-t) v
        else:
            x0, eps = split_prediction_at(level.signal**2, out, x_t, prediction_type)
        return x0.cpu().numpy(), eps.cpu().numpy()

    return denoise


def checkpoint_denoiser(ckpt: Checkpoint, model: nn.Module | None = None) -> Denoiser:
    """The denoiser of a 2-D point checkpoint (its model built on the CPU unless given)."""
    check_point_model(ckpt)
    if model is None:
        model = build_model_from_checkpoint(ckpt)
    path = forward_path(ckpt.objective, ckpt.schedule_config)
    return model_denoiser(model, ckpt.objective, ckpt.prediction_type, path)


def check_point_model(ckpt: Checkpoint) -> None:
    if not ckpt.is_points or ckpt.sample_shape != (2,):
        raise ConfigError(
            "the field view needs a 2-D point model (an MLP trained on a toy set); "
            f"this model makes samples of shape {ckpt.sample_shape}"
        )


def field_vectors(objective: str, x0: np.ndarray, eps: np.ndarray, level: NoiseLevel) -> np.ndarray:
    """The field drawn as arrows (N, 2): flow v = eps_hat - x0_hat; diffusion -eps_hat / s."""
    if objective == "flow":
        return eps - x0
    return -eps / level.noise


def field_name(objective: str) -> str:
    return "velocity v = eps - x0" if objective == "flow" else "score -eps / s"


@dataclass(frozen=True)
class FieldSample:
    """A field on points (N, 2): the denoised pair and the arrows' vectors, all (N, 2)."""

    points: np.ndarray
    x0: np.ndarray
    eps: np.ndarray
    vectors: np.ndarray
    level: NoiseLevel
    objective: str


def evaluate_field(
    denoise: Denoiser, objective: str, points: np.ndarray, level: NoiseLevel
) -> FieldSample:
    """The field of `denoise` at points (N, 2) and one level."""
    points = np.asarray(points, dtype=np.float64)
    x0, eps = denoise(points, level)
    return FieldSample(points, x0, eps, field_vectors(objective, x0, eps, level), level, objective)


def field_grid(extent: float = DEFAULT_EXTENT, size: int = DEFAULT_GRID_SIZE) -> np.ndarray:
    """size x size points (size^2, 2) evenly over [-extent, extent]^2, row by row: point
    i * size + j is (x_j, y_i), x and y ascending (reshape a per-point value to (size, size)
    for an image with rows along y)."""
    if size < 2 or extent <= 0:
        raise ConfigError(f"a field grid needs size >= 2 and extent > 0, got {size}, {extent}")
    axis = np.linspace(-extent, extent, size)
    xs, ys = np.meshgrid(axis, axis)  # (size, size): [i, j] = (axis[j], axis[i])
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


# --------------------------------------------------------------------------- the exact field


@dataclass(frozen=True)
class GaussianMixture:
    """x_0 ~ sum_j weights_j N(means_j, stds_j^2 I): means (J, 2), stds (J,), weights (J,)."""

    means: np.ndarray
    stds: np.ndarray
    weights: np.ndarray


def gaussians_mixture() -> GaussianMixture:
    """The `gaussians` toy set as a mixture: a copy of core.data._gaussians' constants (eight
    equally likely Gaussians of std 0.1 centred evenly on a circle of radius 1.5, angles
    2 pi j / 8). tests/core/test_fields.py checks these against core.data's samples."""
    angles = np.arange(8) * (2.0 * math.pi / 8.0)
    means = 1.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return GaussianMixture(means, np.full(8, 0.1), np.full(8, 1.0 / 8.0))


def _log_components(
    mixture: GaussianMixture, x: np.ndarray, a: float, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """log(w_j N(x; a mu_j, var_j I)) (N, J) and var_j = a^2 c_j^2 + s^2 (J,)."""
    var = a**2 * mixture.stds**2 + s**2  # (J,)
    d2 = ((x[:, None, :] - a * mixture.means[None]) ** 2).sum(-1)  # (N, J)
    log_n = -0.5 * d2 / var - np.log(2.0 * math.pi * var)  # 2-D normal density
    return np.log(mixture.weights) + log_n, var


def mixture_density(mixture: GaussianMixture, x: np.ndarray, a: float, s: float) -> np.ndarray:
    """p_t(x) (N,) of x_t = a x_0 + s eps for a mixture x_0."""
    log_c, _ = _log_components(mixture, np.asarray(x, dtype=np.float64), a, s)
    top = log_c.max(axis=1, keepdims=True)
    return np.exp(top[:, 0]) * np.exp(log_c - top).sum(axis=1)


def mixture_denoise(
    mixture: GaussianMixture, x: np.ndarray, a: float, s: float
) -> tuple[np.ndarray, np.ndarray]:
    """The exact (E[x_0 | x_t], eps_hat) (N, 2) each, for x_t = x (N, 2) (formulas above)."""
    x = np.asarray(x, dtype=np.float64)
    log_c, var = _log_components(mixture, x, a, s)
    r = np.exp(log_c - log_c.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)  # responsibilities (N, J)
    gain = a * mixture.stds**2 / var  # (J,)
    per = mixture.means[None] + gain[None, :, None] * (x[:, None, :] - a * mixture.means[None])
    x0 = (r[:, :, None] * per).sum(axis=1)  # (N, 2)
    if s == 0.0:
        return x0, np.zeros_like(x)
    return x0, (x - a * x0) / s


def mixture_denoiser(mixture: GaussianMixture) -> Denoiser:
    def denoise(x: np.ndarray, level: NoiseLevel) -> tuple[np.ndarray, np.ndarray]:
        return mixture_denoise(mixture, x, level.signal, level.noise)

    return denoise


def exact_mixture(ckpt: Checkpoint) -> GaussianMixture | None:
    """The mixture a checkpoint's data is, when known in closed form (the `gaussians` set)."""
    return gaussians_mixture() if (ckpt.data or {}).get("name") == GAUSSIANS else None


# --------------------------------------------------------------------------- the error


@dataclass(frozen=True)
class FieldError:
    """|learned - exact| per point (N,), the density p_t there (N,) and the p_t-weighted
    relative error sum p |learned - exact| / sum p |exact| (|.| the Euclidean length)."""

    per_point: np.ndarray
    density: np.ndarray
    relative: float


def field_error(learned: np.ndarray, exact: np.ndarray, density: np.ndarray) -> FieldError:
    """learned, exact: (N, 2) field vectors at the same points; density: p_t there (N,)."""
    diff = np.linalg.norm(learned - exact, axis=1)
    size = np.linalg.norm(exact, axis=1)
    total = float((density * size).sum())
    relative = float((density * diff).sum()) / total if total > 0 else float("nan")
    return FieldError(diff, np.asarray(density, dtype=np.float64), relative)


# --------------------------------------------------------------------------- particles


@dataclass(frozen=True)
class ParticlePaths:
    """positions (S + 1, P, 2): the particles at the start level and after each of S steps;
    times (S + 1,): the level's `time` at each row (0 for the final, clean row)."""

    positions: np.ndarray
    times: np.ndarray


def particle_levels(path: FieldPath, k: int, steps: int) -> list[NoiseLevel]:
    """The levels a particle passes from index k down to t = 0: `steps` indices evenly from k
    to 0 (fewer when k + 1 < steps; no repeats), then the clean level (signal 1, noise 0), so
    `steps` moves in all."""
    if steps < 1:
        raise ConfigError(f"particles need at least one step, got {steps}")
    start = path.level(k)
    indices = np.unique(np.round(np.linspace(k, 0, min(steps, k + 1))).astype(int))[::-1]
    levels = [path.level(int(i)) for i in indices]
    if levels[0].index != start.index:
        levels.insert(0, start)
    levels.append(NoiseLevel(-1, 1.0, 0.0, 0.0, 0.0))
    return levels


def particle_paths(denoise: Denoiser, start: np.ndarray, levels: list[NoiseLevel]) -> ParticlePaths:
    """Move particles start (P, 2) at levels[0] through the levels: x <- a' x0_hat + s' eps_hat.

    For flow (a, s) = (1 - t, t) this is Euler's x - (t - t') v:
      (1 - t') (x - t v) + t' (x + (1 - t) v) = x + (t' - t) v.
    For diffusion it is DDIM with eta = 0 (Song et al. 2021a, eq. 12 with sigma = 0)."""
    x = np.asarray(start, dtype=np.float64)
    rows = [x, *particle_steps(denoise, x, levels)]
    return ParticlePaths(np.stack(rows), np.array([lv.time for lv in levels]))


def particle_steps(
    denoise: Denoiser, start: np.ndarray, levels: list[NoiseLevel]
) -> Iterator[np.ndarray]:
    """The particles (P, 2) after each step of `particle_paths` (len(levels) - 1 of them)."""
    x = np.asarray(start, dtype=np.float64)
    for here, there in zip(levels[:-1], levels[1:], strict=True):
        x0, eps = denoise(x, here)
        x = there.signal * x0 + there.noise * eps  # x' = a' x0_hat + s' eps_hat
        yield x


def start_particles(
    ckpt: Checkpoint, level: NoiseLevel, count: int = DEFAULT_PARTICLES, seed: int = 0
) -> np.ndarray:
    """count samples (count, 2) of x_t = a x_0 + s eps at `level`: x_0 from the checkpoint's
    toy set (standard normal when its data is not a known toy set), eps ~ N(0, I)."""
    generator = torch.Generator().manual_seed(int(seed))
    name = str((ckpt.data or {}).get("name", ""))
    if name in TOY_DATASETS:
        x0 = toy_points(name, count, generator).double()
    else:
        x0 = torch.randn((count, 2), generator=generator, dtype=torch.float64)
    eps = torch.randn((count, 2), generator=generator, dtype=torch.float64)
    return (level.signal * x0 + level.noise * eps).numpy()


# --------------------------------------------------------------------------- one model's fields


@dataclass(frozen=True)
class ParticleProgress:
    """`done` of `total` steps of the learned field's particles made (for a progress line)."""

    index: int
    done: int
    total: int


@dataclass(frozen=True)
class ParticleRun:
    """Particles from index k to t = 0 along the learned field, and along the exact one from
    the same start (None when the data has no exact field)."""

    index: int
    learned: ParticlePaths
    exact: ParticlePaths | None


@dataclass(frozen=True)
class FieldView:
    """What the field window shows at one level: the grid (G, 2), the learned field, and for
    the `gaussians` set the exact field and the error (None otherwise)."""

    learned: FieldSample
    exact: FieldSample | None
    error: FieldError | None


class ModelFields:
    """A 2-D point checkpoint's fields: its path, its denoiser, its exact mixture if any."""

    def __init__(self, ckpt: Checkpoint, model: nn.Module | None = None) -> None:
        check_point_model(ckpt)
        self.checkpoint = ckpt
        self.objective = ckpt.objective
        self.path = FieldPath.of(ckpt)
        self.denoise = checkpoint_denoiser(ckpt, model)
        self.mixture = exact_mixture(ckpt)

    def view(self, points: np.ndarray, k: int) -> FieldView:
        """Learned (and exact, error) fields at points (G, 2), timestep index k."""
        level = self.path.level(k)
        learned = evaluate_field(self.denoise, self.objective, points, level)
        if self.mixture is None:
            return FieldView(learned, None, None)
        exact = evaluate_field(mixture_denoiser(self.mixture), self.objective, points, level)
        density = mixture_density(self.mixture, points, level.signal, level.noise)
        return FieldView(learned, exact, field_error(learned.vectors, exact.vectors, density))

    def particles(
        self,
        k: int,
        count: int = DEFAULT_PARTICLES,
        steps: int = DEFAULT_PARTICLE_STEPS,
        seed: int = 0,
        exact: bool = False,
    ) -> ParticlePaths:
        """count particles drawn from p_t at index k (the same for the same seed), moved to
        t = 0 along the learned field, or along the exact one (`exact`, gaussians only)."""
        if exact and self.mixture is None:
            raise ConfigError("only the gaussians set has an exact field here")
        levels = particle_levels(self.path, k, steps)
        start = start_particles(self.checkpoint, levels[0], count, seed)
        denoise = mixture_denoiser(self.mixture) if exact and self.mixture else self.denoise
        return particle_paths(denoise, start, levels)

    def particle_run(
        self,
        k: int,
        count: int = DEFAULT_PARTICLES,
        steps: int = DEFAULT_PARTICLE_STEPS,
        seed: int = 0,
    ) -> Iterator[ParticleProgress | ParticleRun]:
        """`particles(k, ...)` and, for gaussians, `particles(k, ..., exact=True)` as a job: a
        ParticleProgress after each learned step (a worker can stop between them), then the
        ParticleRun."""
        levels = particle_levels(self.path, k, steps)
        start = start_particles(self.checkpoint, levels[0], count, seed)
        rows = [start]
        for x in particle_steps(self.denoise, start, levels):
            rows.append(x)
            yield ParticleProgress(k, len(rows) - 1, len(levels) - 1)
        times = np.array([lv.time for lv in levels])
        learned = ParticlePaths(np.stack(rows), times)
        exact = None
        if self.mixture is not None:
            exact = particle_paths(mixture_denoiser(self.mixture), start, levels)
        yield ParticleRun(k, learned, exact)
