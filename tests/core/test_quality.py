"""Tests of the tests: the quality measures (core.quality, benchmarks.score.digit_quality) that
tests/core/test_pretrained.py applies to the shipped models fail degenerate output and pass
real data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.digit_classifier import digits_split
from benchmarks.score import digit_quality, pure_noise
from benchmarks.toy_quality import score_points
from diffusion_studio.core.data import TOY_DATASETS, toy_points
from diffusion_studio.core.quality import nearest_distances, point_quality, within_class_nearest

N_POINTS = 1000
N_DIGITS = 200


def _points(name: str, n: int, seed: int) -> np.ndarray:
    return toy_points(name, n, torch.Generator().manual_seed(seed)).numpy()


def test_nearest_distances_match_brute_force_and_leave_one_out():
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(7, 3)), rng.normal(size=(11, 3))
    brute = np.linalg.norm(q[:, None] - r[None], axis=-1).min(axis=1)
    np.testing.assert_allclose(nearest_distances(q, r, chunk=3), brute)
    # leave-one-out: a point's own zero distance is not its nearest neighbour
    loo = nearest_distances(r, r, exclude_self=True, chunk=4)
    d = np.linalg.norm(r[:, None] - r[None], axis=-1) + np.diag(np.full(11, np.inf))
    np.testing.assert_allclose(loo, d.min(axis=1))
    assert within_class_nearest(np.array([[0.0], [0.0], [5.0]]), np.array([1, 1, 2])).tolist() == [
        0.0,
        0.0,
        math.inf,
    ]


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_real_points_pass(name):
    quality = score_points(_points(name, N_POINTS, seed=2), name)
    assert quality.failures() == [], quality


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_standard_normal_noise_fails_precision(name):
    noise = np.random.default_rng(0).normal(size=(N_POINTS, 2))
    failures = score_points(noise, name).failures()
    assert any(f.startswith("precision") for f in failures), failures


def test_one_moon_fails_recall():
    points = _points("moons", 3 * N_POINTS, seed=2)
    raw = points * 0.9 + np.array([0.5, 0.25])  # undo core.data's centring and scaling
    upper = np.abs(np.linalg.norm(raw, axis=1) - 1.0) < np.abs(
        np.linalg.norm(raw - np.array([1.0, 0.5]), axis=1) - 1.0
    )
    quality = score_points(points[upper][:N_POINTS], "moons")
    assert quality.precision >= 0.95  # every sample is on the data...
    assert any(f.startswith("recall") for f in quality.failures()), quality  # ...half is missing


def test_five_of_eight_gaussians_fail_recall():
    points = _points("gaussians", 3 * N_POINTS, seed=2)
    mode = np.round(np.arctan2(points[:, 1], points[:, 0]) / (2 * np.pi / 8)).astype(int) % 8
    quality = score_points(points[mode < 5][:N_POINTS], "gaussians")
    assert quality.precision >= 0.95
    assert 0.5 < quality.recall < 0.7, quality  # about 5/8 of the data covered
    assert any(f.startswith("recall") for f in quality.failures())


def test_non_finite_samples_count_as_misses():
    points = _points("moons", N_POINTS, seed=2)
    points[:100] = np.nan
    quality = point_quality(points, _points("moons", 2000, seed=1))
    assert quality.precision == pytest.approx(0.9, abs=0.01)


# ------------------------------------------------------------------------------ digits


@pytest.fixture(scope="module")
def split():
    return digits_split()


def _digits(split, images: torch.Tensor, labels) -> list[str]:
    """Failures of images against the classifier's training split (the 1000 validation digits
    are then truly held out)."""
    return digit_quality(images, labels, training=split.train_images).failures(max_frechet=2.5)


def test_held_out_digits_pass(split):
    assert _digits(split, split.val_images[:N_DIGITS], split.val_labels[:N_DIGITS]) == []


def test_noise_fails_the_requested_labels(split):
    requested = np.arange(N_DIGITS) % 10
    failures = _digits(split, pure_noise(N_DIGITS), requested)
    assert any(f.startswith("requested-label accuracy") for f in failures), failures
    assert any(f.startswith("per-digit accuracy") for f in failures), failures


def test_digits_that_ignore_the_request_fail(split):
    """Real digits of the wrong class: each sample is checked against its own label."""
    labels = split.val_labels[:N_DIGITS]
    failures = _digits(split, split.val_images[:N_DIGITS], (labels + 1) % 10)
    assert any(f.startswith("requested-label accuracy") for f in failures), failures


def test_one_digit_drawn_badly_fails_per_digit_accuracy(split):
    """Nine digits right, every 7 drawn as a 1: overall 90 %, and 7 named."""
    images, labels = split.val_images[:N_DIGITS].clone(), split.val_labels[:N_DIGITS]
    ones = split.val_images[split.val_labels == 1]
    sevens = np.flatnonzero(labels.numpy() == 7)
    images[sevens] = ones[: len(sevens)]
    failures = _digits(split, images, labels)
    assert any(f.startswith("per-digit accuracy") and "7: 0.00" in f for f in failures), failures


def test_copies_of_training_digits_fail_memorisation(split):
    failures = _digits(split, split.train_images[:N_DIGITS], split.train_labels[:N_DIGITS])
    assert any("distance to the nearest training digit" in f for f in failures), failures
    assert any("near-copies" in f for f in failures), failures


def test_a_few_repeated_digits_fail_diversity(split):
    """Four held-out digits per class, repeated to N_DIGITS: right labels, no copies of
    training digits, but no variety within a class."""
    picks = [np.flatnonzero(split.val_labels.numpy() == d)[:4] for d in range(10)]
    index = np.resize(np.stack(picks, axis=1).ravel(), N_DIGITS)
    failures = _digits(split, split.val_images[index], split.val_labels[index])
    assert any(f.startswith("within-class diversity") for f in failures), failures
    assert not any("memorisation" in f for f in failures), failures
