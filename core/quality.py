"""Quality measures for generated samples that degenerate output fails.

Pure functions from arrays to numbers, shared by the tests (tests/core/test_pretrained.py,
tests/core/test_quality.py) and the benchmarks (benchmarks/score.py, benchmarks/toy_quality.py):

- 2-D points: precision (share of samples within `radius` of a data point) and recall (share
  of fresh data points with a sample within `radius`). Noise fails precision; a model that
  drops a mode (one moon, five of eight gaussians) fails recall.
- nearest-neighbour distances, from which the digit measures in benchmarks/score.py build
  within-class diversity (samples against real digits) and memorisation (a sample's distance
  to its nearest training digit against a held-out digit's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

POINT_RADIUS = 0.1
MIN_POINT_PRECISION = 0.95
MIN_POINT_RECALL = 0.95


@dataclass(frozen=True)
class PointQuality:
    """precision: share of samples within `radius` of a data point; recall: share of data
    points with a sample within `radius`."""

    precision: float
    recall: float
    radius: float

    def failures(
        self, min_precision: float = MIN_POINT_PRECISION, min_recall: float = MIN_POINT_RECALL
    ) -> list[str]:
        """Human-readable reasons this set fails (empty when it passes)."""
        out = []
        if self.precision < min_precision:
            out.append(
                f"precision {self.precision:.3f} < {min_precision} (share of samples within "
                f"{self.radius} of the data)"
            )
        if self.recall < min_recall:
            out.append(
                f"recall {self.recall:.3f} < {min_recall} (share of data points with a sample "
                f"within {self.radius}: modes or arms missing)"
            )
        return out


def nearest_distances(
    queries: np.ndarray | torch.Tensor,
    references: np.ndarray | torch.Tensor,
    exclude_self: bool = False,
    chunk: int = 1024,
) -> np.ndarray:
    """Euclidean distance from each query to its nearest reference, float64 (Q,).

    queries (Q, ...), references (R, ...): flattened to vectors. exclude_self: queries are
    the references themselves (Q = R, same order); each row ignores its own index, giving the
    leave-one-out distance (what a held-out point drawn from the same data would see).
    """
    q = torch.as_tensor(np.asarray(queries), dtype=torch.float64).flatten(1)
    r = torch.as_tensor(np.asarray(references), dtype=torch.float64).flatten(1)
    if exclude_self and q.shape[0] != r.shape[0]:
        raise ValueError(
            f"exclude_self needs queries = references, got {q.shape[0]} and {r.shape[0]}"
        )
    out = []
    for start in range(0, q.shape[0], chunk):
        d = torch.cdist(q[start : start + chunk], r)
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = float("inf")
        out.append(d.min(dim=1).values)
    return torch.cat(out).numpy()


def point_quality(
    samples: np.ndarray, data: np.ndarray, radius: float = POINT_RADIUS
) -> PointQuality:
    """Precision and recall of samples (N, 2) against data points (M, 2) at `radius`."""
    samples = np.asarray(samples, dtype=np.float64)
    data = np.asarray(data, dtype=np.float64)
    finite = np.isfinite(samples).all(axis=1)
    to_data = np.full(len(samples), np.inf)
    if finite.any():
        to_data[finite] = nearest_distances(samples[finite], data)
        to_samples = nearest_distances(data, samples[finite])
    else:
        to_samples = np.full(len(data), np.inf)
    return PointQuality(
        precision=float((to_data < radius).mean()),
        recall=float((to_samples < radius).mean()),
        radius=radius,
    )


def within_class_nearest(features: np.ndarray | torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """For each item, the distance to its nearest other item of the same label, (N,) float64.

    features (N, D); labels (N,). A label with one item gives inf for it. Repeated items give 0.
    """
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64).flatten(1)
    labels = np.asarray(labels)
    out = np.full(len(labels), np.inf)
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        if len(index) > 1:
            out[index] = nearest_distances(f[index], f[index], exclude_self=True)
    return out


def median_ratio(values: np.ndarray, reference: np.ndarray) -> float:
    """median(values) / median(reference) over the finite entries (nan if either is empty)."""
    v, r = values[np.isfinite(values)], reference[np.isfinite(reference)]
    if len(v) == 0 or len(r) == 0 or np.median(r) == 0:
        return float("nan")
    return float(np.median(v) / np.median(r))
