"""Score generated digits with the benchmark classifier.

`score_samples(samples)` reports, for float samples (N, 1, 28, 28) (or 32x32, centre-cropped)
in [-1, 1]:
  confident      share of samples whose top class probability is >= 0.9
  mean_max_prob  mean top class probability
  class_entropy  entropy (nats) of the histogram of predicted classes; ln 10 = 2.303 when all
                 ten digits are equally common
  frechet        Fréchet distance between the classifier features (penultimate layer, 128-d)
                 of the samples and of the 1000 held-out validation digits:
                 ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))   (Heusel et al. 2017, as FID)

    python -m benchmarks.score samples.npy [more.npy ...]
    python -m benchmarks.score --reference      # real digits (ceiling) and pure noise (floor)

The Fréchet distance depends on the number of samples (it is biased upward for small N):
compare numbers made with the same N; the reference rows use N = 256.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.digit_classifier import DigitClassifier, digits_split, load_classifier
from core.errors import DataError

CONFIDENT_PROB = 0.9
REFERENCE_N = 256
REFERENCE_SEED = 0


@dataclass(frozen=True)
class Scores:
    """Quality numbers for one set of samples (see the module docstring)."""

    n: int
    confident: float
    mean_max_prob: float
    class_entropy: float
    frechet: float
    class_counts: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["class_counts"] = list(self.class_counts)
        return data


def prepare_samples(samples: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Samples -> float32 (N, 1, 28, 28) in [-1, 1].

    Accepts (N, 1, H, W), (N, 3, H, W) (averaged to grey) or (N, H, W) with H = W = 28, or
    H = W = 32 (centre-cropped: the padded reference model). NaN counts as 0; values are
    clipped to [-1, 1], as the image export does.
    """
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[0] < 1 or x.shape[1] not in (1, 3):
        raise DataError(
            f"samples must be (N, 1, H, W) images, got shape {tuple(x.shape)}: point samples "
            "(N, 2) cannot be scored by the digit classifier"
        )
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    h, w = x.shape[-2:]
    if h != w or h < 28 or h > 32:
        raise DataError(f"samples must be 28x28 or 32x32 digits, got {h}x{w}")
    top = (h - 28) // 2
    x = x[:, :, top : top + 28, top : top + 28]
    return torch.nan_to_num(x, nan=0.0).clamp(-1.0, 1.0).contiguous()


@torch.no_grad()
def classify(
    model: DigitClassifier, x: torch.Tensor, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, 10), features (N, 128) float64) for prepared images (N, 1, 28, 28)."""
    model.eval()
    probs, feats = [], []
    for batch in x.split(batch_size):
        f = model.features(batch)
        feats.append(f.double())
        probs.append(torch.softmax(model.head(f), dim=1))
    return torch.cat(probs), torch.cat(feats)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via eigh."""
    values, vectors = np.linalg.eigh((a + a.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)).

    Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the product form is symmetric PSD,
    so numpy's eigh suffices (scipy is not needed): it is the sum of the square roots of
    its eigenvalues.
    """
    root1 = _sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def feature_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (N - 1 normalised) of features (N, D), float64."""
    f = features.double().numpy()
    return f.mean(axis=0), np.cov(f, rowvar=False)


@functools.lru_cache(maxsize=1)
def _default_classifier() -> DigitClassifier:
    return load_classifier()


_REFERENCE_CACHE: dict[int, tuple[DigitClassifier, tuple[np.ndarray, np.ndarray]]] = {}


def reference_stats(model: DigitClassifier) -> tuple[np.ndarray, np.ndarray]:
    """Feature mean and covariance of the 1000 validation digits (cached per classifier)."""
    cached = _REFERENCE_CACHE.get(id(model))
    if cached is None or cached[0] is not model:  # the model is kept so its id stays unique
        _, feats = classify(model, digits_split().val_images)
        cached = (model, feature_stats(feats))
        _REFERENCE_CACHE[id(model)] = cached
    return cached[1]


def score_samples(
    samples: np.ndarray | torch.Tensor, classifier: DigitClassifier | None = None
) -> Scores:
    """Score samples (N, 1, 28, 28) or (N, 1, 32, 32) in [-1, 1] (see module docstring).

    N >= 2 is needed for the covariance; use a few hundred for stable numbers.
    """
    model = classifier if classifier is not None else _default_classifier()
    x = prepare_samples(samples)
    if x.shape[0] < 2:
        raise DataError(f"need at least 2 samples to score, got {x.shape[0]}")
    probs, feats = classify(model, x)
    max_prob, predicted = probs.max(dim=1)
    counts = torch.bincount(predicted, minlength=10)
    share = counts.double() / counts.sum()
    nonzero = share[share > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    mu, sigma = feature_stats(feats)
    mu_ref, sigma_ref = reference_stats(model)
    return Scores(
        n=int(x.shape[0]),
        confident=float((max_prob >= CONFIDENT_PROB).double().mean()),
        mean_max_prob=float(max_prob.double().mean()),
        class_entropy=entropy,
        frechet=frechet_distance(mu, sigma, mu_ref, sigma_ref),
        class_counts=tuple(int(c) for c in counts),
    )


def real_digits(n: int = REFERENCE_N, seed: int = REFERENCE_SEED) -> torch.Tensor:
    """n training digits (never the validation reference), (n, 1, 28, 28) in [-1, 1]."""
    train = digits_split().train_images
    index = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return train[index]


def pure_noise(n: int = REFERENCE_N, seed: int = REFERENCE_SEED) -> torch.Tensor:
    """What an untrained model gives: N(0, 1) pixels clipped to [-1, 1], (n, 1, 28, 28)."""
    x = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    return x.clamp(-1.0, 1.0)


def reference_scores(n: int = REFERENCE_N) -> dict[str, Scores]:
    """The ceiling (real training digits) and the floor (pure noise), n samples each."""
    return {
        "real digits (ceiling)": score_samples(real_digits(n)),
        "pure noise (floor)": score_samples(pure_noise(n)),
    }


TABLE_COLUMNS = ("n", "confident %", "mean max prob", "class entropy", "Fréchet distance")


def table_cells(scores: Scores) -> list[str]:
    return [
        str(scores.n),
        f"{100 * scores.confident:.1f}",
        f"{scores.mean_max_prob:.3f}",
        f"{scores.class_entropy:.3f}",
        f"{scores.frechet:.2f}",
    ]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns."""
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.score",
        description="Score digit samples (.npy, (N, 1, 28, 28) or 32x32 in [-1, 1]).",
    )
    parser.add_argument("samples", nargs="*", type=Path, help=".npy files of samples")
    parser.add_argument(
        "--reference",
        action="store_true",
        help=f"also score {REFERENCE_N} real training digits (ceiling) and pure noise (floor)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if not args.samples and not args.reference:
        parser.error("give one or more .npy files and/or --reference")
    results: dict[str, Scores] = {}
    if args.reference:
        results.update(reference_scores())
    for path in args.samples:
        try:
            samples = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            print(f"error: cannot read '{path}': {exc}", file=sys.stderr)
            return 2
        try:
            results[str(path)] = score_samples(samples)
        except DataError as exc:
            print(f"error: '{path}': {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps({k: v.to_dict() for k, v in results.items()}, indent=2))
    else:
        rows = [[name, *table_cells(s)] for name, s in results.items()]
        print(format_table(["samples", *TABLE_COLUMNS], rows))
        print(f"(class entropy: ln 10 = {math.log(10):.3f} when all ten digits are equally common)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
