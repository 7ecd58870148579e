"""The forward process on a 2-D data set, with the density of x_t (issue 16, item 5).

N points x_0 of a toy set (fixed by `data_seed`) and fixed noise eps (from `seed`) give
    x_t = a_t x_0 + s_t eps
on either path (core.forward's display steps: step 0 is x_0, step k >= 1 timestep index k - 1;
diffusion a = sqrt(alphabar_t), s = sqrt(1 - alphabar_t); flow a = 1 - t, s = t). The points'
marginal at t, taking the N points as the data distribution, is the Gaussian mixture
    p_t(x) = (1/N) sum_i N(x; a_t x0_i, s_t^2 I),
which melts into N(0, I) (diffusion) or into N(0, t^2 I) -> N(0, I) (flow) as t grows.

The density image holds, per grid cell, the mean of p_t over that cell (exact: the mixture is
a sum of products of 1-D Gaussians, so a cell's mass is a product of two normal-CDF
differences). Cell means need no floor at s = 0: they tend to the 2-D histogram of the points
divided by the cell area, which is what step 0 shows. For s much wider than a cell the cell
mean equals p_t at the cell's centre to O(cell^2 / s^2).

Cost per step: 2 (N x (G + 1)) normal CDFs and one (G x N) @ (N x G) product (float32 torch);
nothing else depends on t. For N = 2000 points on a 128 x 128 grid, density + x_t + numbers
took a median 9 ms per step (4-16 ms, 10th-90th percentile) with one torch thread, as the GUI
thread has, on the 2-core machine with other work keeping it busy (load 7): all N points are
used, no subset is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from diffusion_studio.core.data import toy_points
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import render_points
from diffusion_studio.core.flow import ForwardPath
from diffusion_studio.core.forward import (
    ForwardNumbers,
    check_step,
    display_levels,
    frame_steps,
    path_numbers,
)

EXTENT = 3.0  # the square [-3, 3]^2: N(0, I) to 3 sigma and every toy set (|coords| < ~2)
GRID_SIZE = 128  # density cells per side
NUM_POINTS = 2000
DATA_SEED = 0  # the points x_0 (the panel's seed changes the noise only, as for an image)
DENSITY_CHUNK = 4096  # points per block of the density sum (bounds the (chunk, G + 1) arrays)
# Fixed levels of the density picture: 0 is white, DENSITY_TOP (and above) the full colour.
# N(0, I) peaks at 1 / (2 pi) = 0.159; the data's thin shapes at t = 0 are far above it.
DENSITY_TOP = 0.25
DENSITY_COLOR = (253, 141, 60)  # the ramp's top: orange, under blue points
POINT_COLOR = (31, 119, 180)


@dataclass(frozen=True)
class PointsGrid:
    """A square grid of size x size cells over [-extent, extent]^2.

    Arrays over it are indexed [row, col] = [y cell, x cell], row 0 at y = -extent (y up
    with the row index, as pyqtgraph's row-major ImageItem shows it in a plot).
    """

    size: int = GRID_SIZE
    extent: float = EXTENT

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 2:
            raise ConfigError(f"the density grid needs at least 2 cells a side, got {self.size!r}")
        if not (np.isfinite(self.extent) and self.extent > 0):
            raise ConfigError(f"the grid's extent must be a positive number, got {self.extent!r}")

    @property
    def cell(self) -> float:
        """The side of one cell."""
        return 2.0 * self.extent / self.size

    def edges(self) -> np.ndarray:
        """Cell edges, float64 (size + 1,), from -extent to extent."""
        return np.linspace(-self.extent, self.extent, self.size + 1)

    def centres(self) -> np.ndarray:
        """Cell centres, float64 (size,)."""
        edges = self.edges()
        return 0.5 * (edges[:-1] + edges[1:])


def cell_masses(centres: torch.Tensor, scale: float, edges: torch.Tensor) -> torch.Tensor:
    """P(edge_j <= c_i + scale z < edge_{j+1}), z ~ N(0, 1): float32 (n, len(edges) - 1).

    centres: float32 (n,) 1-D means; edges: float32 (G + 1,) increasing; scale >= 0 (0: 1 in
    the cell that holds c_i, 0 elsewhere). Each mass is a difference of the smaller normal
    tails, never of two numbers near 1 (float32 keeps its relative precision)."""
    cells = len(edges) - 1
    if scale == 0.0:
        index = torch.searchsorted(edges, centres, right=True) - 1
        index[centres == edges[-1]] = cells - 1  # the last cell holds its right edge
        inside = (index >= 0) & (index < cells)
        masses = torch.zeros((len(centres), cells), dtype=torch.float32)
        rows = torch.nonzero(inside).flatten()
        masses[rows, index[inside]] = 1.0
        return masses
    z = (edges[None, :] - centres[:, None]) / scale  # (n, G + 1)
    tail = torch.special.ndtr(-z.abs())  # the smaller tail, min(Phi(z), 1 - Phi(z))
    z0, z1, w0, w1 = z[:, :-1], z[:, 1:], tail[:, :-1], tail[:, 1:]
    # cell right of the mean: w0 - w1; left of it: w1 - w0; holding it: 1 - w0 - w1
    return torch.where(z0 > 0, w0 - w1, torch.where(z1 <= 0, w1 - w0, 1.0 - w0 - w1))


def mixture_density(means: np.ndarray, scale: float, grid: PointsGrid = PointsGrid()) -> np.ndarray:
    """The mean over each grid cell of (1/N) sum_i N(x; means_i, scale^2 I), float64
    (size, size) [y cell, x cell]. means: (N, 2); scale >= 0 (0: the points' histogram
    divided by the cell area).

    Computed in float32 torch (relative error ~1e-6 of the peak; numpy's BLAS beside torch's
    OpenMP threads is many times slower on two cores)."""
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2 or means.shape[1] != 2 or len(means) == 0:
        raise ConfigError(f"the mixture's means must be (N, 2) with N >= 1, got {means.shape}")
    if not (np.isfinite(scale) and scale >= 0):
        raise ConfigError(f"the mixture's scale must be >= 0, got {scale!r}")
    edges = torch.from_numpy(grid.edges().astype(np.float32))
    points = torch.from_numpy(means.astype(np.float32))
    total = torch.zeros((grid.size, grid.size), dtype=torch.float64)
    for start in range(0, len(points), DENSITY_CHUNK):
        block = points[start : start + DENSITY_CHUNK]
        mass_x = cell_masses(block[:, 0].contiguous(), float(scale), edges)  # (n, G)
        mass_y = cell_masses(block[:, 1].contiguous(), float(scale), edges)  # (n, G)
        total += (mass_y.T @ mass_x).double()  # [row, col] = sum_i P_y(i, row) P_x(i, col)
    return total.numpy() / (len(means) * grid.cell**2)


def normal_density(grid: PointsGrid = PointsGrid()) -> np.ndarray:
    """N(0, I)'s cell means on the grid, float64 (size, size): where every forward process
    ends."""
    return mixture_density(np.zeros((1, 2)), 1.0, grid)


def total_variation(p: np.ndarray, q: np.ndarray, grid: PointsGrid = PointsGrid()) -> float:
    """0.5 * sum |p - q| * cell area: the total-variation distance of two cell-mean
    densities on the grid (mass outside the grid not counted), in [0, 1]."""
    return 0.5 * float(np.abs(p - q).sum()) * grid.cell**2


def density_ramp() -> np.ndarray:
    """The density picture's colours, uint8 (256, 3): white (0) to DENSITY_COLOR (top)."""
    v = np.linspace(0.0, 1.0, 256)[:, None]
    white = np.full(3, 255.0)
    return np.rint(white + v * (np.asarray(DENSITY_COLOR, dtype=np.float64) - white)).astype(
        np.uint8
    )


def density_picture(density: np.ndarray, top: float = DENSITY_TOP) -> np.ndarray:
    """A density (size, size) [y cell, x cell] as a uint8 (size, size, 3) picture with y up
    (row 0 at the top), levels fixed at 0..top through `density_ramp`."""
    index = np.clip(np.rint(density / top * 255.0), 0, 255).astype(np.intp)
    return density_ramp()[index[::-1]]


@dataclass(frozen=True)
class PointsNumbers:
    """What the panel reads out at a display step: the path's numbers and how far the
    points' density is from N(0, I) on the grid."""

    path: ForwardNumbers
    tv_to_normal: float  # total-variation distance to N(0, I)'s cell means, in [0, 1]


class ForwardPoints:
    """x_t and the density of x_t for N points of a toy set, on a NoiseSchedule or a FlowPath.

    dataset: one of core.data.TOY_DATASETS; x_0 are `num_points` of its points from
    `data_seed`; eps ~ N(0, I) (N, 2) float64 from `seed`. grid: the density's grid.
    """

    def __init__(
        self,
        path: ForwardPath,
        dataset: str,
        num_points: int = NUM_POINTS,
        seed: int = 0,
        data_seed: int = DATA_SEED,
        grid: PointsGrid = PointsGrid(),
    ) -> None:
        self.path = path
        self.dataset = dataset
        self.seed = seed
        self.grid = grid
        generator = torch.Generator().manual_seed(data_seed)
        self.x0 = toy_points(dataset, num_points, generator).numpy().astype(np.float64)  # (N, 2)
        noise = torch.randn((num_points, 2), generator=torch.Generator().manual_seed(seed))
        self.noise = noise.numpy().astype(np.float64)  # (N, 2)
        self._signal, self._noise = display_levels(path)  # (T + 1,): a_t, s_t
        self._normal = normal_density(grid)

    @property
    def num_steps(self) -> int:
        """The largest display step, T."""
        return self.path.num_timesteps

    @property
    def num_points(self) -> int:
        return len(self.x0)

    def levels(self, step: int) -> tuple[float, float]:
        """(a_t, s_t) at a display step."""
        step = check_step(self.path, step)
        return float(self._signal[step]), float(self._noise[step])

    def x_t(self, step: int) -> np.ndarray:
        """x_t = a_t x_0 + s_t eps at a display step, float64 (N, 2). A new array."""
        a, s = self.levels(step)
        return a * self.x0 + s * self.noise

    def density(self, step: int, grid: PointsGrid | None = None) -> np.ndarray:
        """p_t's cell means, float64 (size, size) [y cell, x cell] on `grid` (default: the
        process's): p_t(x) = (1/N) sum_i N(x; a_t x0_i, s_t^2 I)."""
        a, s = self.levels(step)
        return mixture_density(a * self.x0, s, grid or self.grid)

    def numbers(self, step: int, density: np.ndarray | None = None) -> PointsNumbers:
        """The path's numbers at a step and the TV distance of p_t to N(0, I) on the grid
        (`density`: p_t on self.grid when already computed)."""
        if density is None:
            density = self.density(step)
        tv = total_variation(density, self._normal, self.grid)
        return PointsNumbers(path_numbers(self.path, step), tv)

    def frame(self, step: int, size: int = 256) -> np.ndarray:
        """A uint8 (size, size, 3) picture: the density of x_t (density_picture) with the
        points x_t drawn over it (core.export.render_points), over [-extent, extent]^2."""
        extent = self.grid.extent
        picture = density_picture(self.density(step, PointsGrid(size, extent)))
        white = (255, 255, 255)
        dot = max(1, size // 256)  # small dots: the density stays visible between them
        dots = render_points(
            self.x_t(step), size, extent, background=white, color=POINT_COLOR, dot=dot
        )
        drawn = (dots != 255).any(axis=2)  # render_points painted a point there
        picture[drawn] = dots[drawn]
        return picture

    def frame_steps(self, num_frames: int) -> np.ndarray:
        """`num_frames` display steps evenly spread over 0..T, first and last included."""
        return frame_steps(self.path, num_frames)

    def frames(self, num_frames: int, size: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
        """(display steps (F,), uint8 (size, size, 3) frames) for a GIF."""
        steps = self.frame_steps(num_frames)
        return steps, [self.frame(int(k), size) for k in steps]
