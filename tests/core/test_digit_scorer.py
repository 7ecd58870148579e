"""The benchmark's digit classifier and sample scorer (benchmarks/): shipped weights, ceiling, floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.digit_classifier import digits_split, load_classifier, predict
from benchmarks.score import (
    frechet_distance,
    prepare_samples,
    pure_noise,
    real_digits,
    score_samples,
)
from diffusion_studio.core.errors import CheckpointError, DataError


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_shipped_classifier_recognises_validation_digits(classifier):
    split = digits_split()
    probs = predict(classifier, split.val_images[:200])
    accuracy = float((probs.argmax(dim=1) == split.val_labels[:200]).float().mean())
    assert accuracy >= 0.95
    features = classifier.features(split.val_images[:4])
    assert features.shape == (4, 128)


def test_real_digits_score_at_the_ceiling(classifier):
    scores = score_samples(real_digits(256).numpy(), classifier)
    assert scores.n == 256
    assert scores.confident >= 0.9
    assert scores.mean_max_prob >= 0.9
    assert scores.class_entropy >= 2.2  # all ten digits present, nearly evenly
    assert 0 <= scores.frechet < 5.0
    assert sum(scores.class_counts) == 256


def test_noise_scores_at_the_floor(classifier):
    real = score_samples(real_digits(256), classifier)
    noise = score_samples(pure_noise(256), classifier)
    assert noise.confident <= 0.05
    assert noise.mean_max_prob < 0.5
    assert noise.frechet > 20 * max(real.frechet, 1.0)


def test_padded_32px_samples_are_centre_cropped(classifier):
    x = real_digits(64)
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    assert torch.equal(prepare_samples(padded.numpy()), x)
    a, b = score_samples(x, classifier), score_samples(padded, classifier)
    assert a.class_counts == b.class_counts
    assert math.isclose(a.frechet, b.frechet, rel_tol=1e-9)


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    d1, d2 = rng.uniform(0.1, 3.0, size=5), rng.uniform(0.1, 3.0, size=5)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum())
    got = frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2))
    assert got == pytest.approx(expected, rel=1e-9)
    # a rotated pair: the distance is invariant under a common rotation
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(d1) @ q.T, q @ mu2, q @ np.diag(d2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(mu1, np.diag(d1), mu1, np.diag(d1)) == pytest.approx(0.0, abs=1e-9)


def test_bad_inputs_are_rejected(tmp_path):
    with pytest.raises(DataError, match="point samples"):
        prepare_samples(np.zeros((8, 2), dtype=np.float32))
    with pytest.raises(DataError, match="28x28 or 32x32"):
        prepare_samples(np.zeros((8, 1, 64, 64), dtype=np.float32))
    with pytest.raises(CheckpointError, match="--train"):
        load_classifier(tmp_path / "missing.safetensors")
