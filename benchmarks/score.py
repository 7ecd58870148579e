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
compare numbers made with the same N; the reference rows use N = 256. Its reference (the
classifier's validation digits) is held out from the shipped generator's training data (it
trains on the other 4,000, `--data digits-train`); a generator that copies training digits
could still score well on it, so `digit_quality` adds the checks that such output fails.

`digit_quality(samples, requested_labels)` (what tests/core/test_pretrained.py asserts, via
`DigitQuality.failures()`) adds to those numbers:
  label_accuracy   share of samples the classifier calls the digit that was asked for, and
                   the worst digit's share (every one of the ten digits is checked)
  diversity        within-class spread: the median distance (classifier features) from a
                   sample to its nearest other sample of the same requested digit, divided by
                   the same for real digits with the same label counts (repeats give 0)
  memorisation     the median pixel distance from a sample to its nearest training digit,
                   divided by that of held-out digits (copies give 0), and `copy_share`, the
                   share of samples nearer to a training digit than 99 % of held-out digits
                   are. The held-out digits are the 1,000 the shipped generator never saw
                   (the classifier's validation split); for another training set given by
                   the caller, the leave-one-out distance within it stands in.
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
from diffusion_studio.core.errors import DataError
from diffusion_studio.core.quality import median_ratio, nearest_distances, within_class_nearest

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


# What a good generator of digits must reach (`DigitQuality.failures`). Real held-out digits:
# label accuracy 0.99, diversity ~1, memorisation ~1, copy share ~0.01. The shipped model
# (200 samples, DDPM 50 trailing, guidance 2): 1.00, 0.75, 0.97, 0.
MIN_LABEL_ACCURACY = 0.95
MIN_DIGIT_ACCURACY = 0.8
MIN_DIVERSITY = 0.5
MIN_MEMORISATION_RATIO = 0.7
MAX_COPY_SHARE = 0.05
MIN_CONFIDENT = 0.9
COPY_PERCENTILE = 1.0


@dataclass(frozen=True)
class DigitQuality:
    """Per-sample and set measures of generated digits (see the module docstring)."""

    scores: Scores
    label_accuracy: float
    digit_accuracy: tuple[float, ...]  # per requested digit 0..9 (nan: not requested)
    diversity: float
    memorisation_ratio: float
    copy_share: float

    def failures(self, max_frechet: float | None = None) -> list[str]:
        """Each failed measure with its number and limit (empty when the samples pass)."""
        out = []
        if self.label_accuracy < MIN_LABEL_ACCURACY:
            out.append(f"requested-label accuracy {self.label_accuracy:.3f} < {MIN_LABEL_ACCURACY}")
        worst = [(a, d) for d, a in enumerate(self.digit_accuracy) if not math.isnan(a)]
        low = [f"{d}: {a:.2f}" for a, d in sorted(worst) if a < MIN_DIGIT_ACCURACY]
        if low:
            out.append(f"per-digit accuracy below {MIN_DIGIT_ACCURACY} for " + ", ".join(low))
        if not self.diversity >= MIN_DIVERSITY:
            out.append(
                f"within-class diversity {self.diversity:.3f} < {MIN_DIVERSITY} of real digits'"
            )
        if not self.memorisation_ratio >= MIN_MEMORISATION_RATIO:
            out.append(
                f"memorisation: distance to the nearest training digit {self.memorisation_ratio:.3f}"
                f" < {MIN_MEMORISATION_RATIO} of held-out digits'"
            )
        if self.copy_share > MAX_COPY_SHARE:
            out.append(
                f"memorisation: {self.copy_share:.1%} of samples are near-copies of training "
                f"digits (> {MAX_COPY_SHARE:.0%})"
            )
        if self.scores.confident < MIN_CONFIDENT:
            out.append(f"confidently classified {self.scores.confident:.3f} < {MIN_CONFIDENT}")
        if max_frechet is not None and not self.scores.frechet <= max_frechet:
            out.append(f"Fréchet distance {self.scores.frechet:.2f} > {max_frechet}")
        return out


_LOO_CACHE: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None, np.ndarray]] = {}


def training_digits() -> torch.Tensor:
    """The 4,000 built-in digits the shipped digits model trained on (`--data digits-train`,
    the classifier's training split), (N, 1, 28, 28) in [-1, 1]."""
    return digits_split().train_images


def held_out_distances(training: torch.Tensor, held_out: torch.Tensor | None = None) -> np.ndarray:
    """How far digits the generator never saw lie from its training set: each `held_out`
    digit's nearest distance to `training`, (M,); without held-out digits, the leave-one-out
    distances within `training` (N,), distributed as a fresh digit's. Cached per tensor."""
    key = (id(training), id(held_out))
    cached = _LOO_CACHE.get(key)
    # the tensors are kept with the result, so their ids stay unique while cached
    if cached is None or cached[0] is not training or cached[1] is not held_out:
        if held_out is None:
            distances = nearest_distances(training, training, exclude_self=True)
        else:
            distances = nearest_distances(held_out, training)
        cached = (training, held_out, distances)
        _LOO_CACHE[key] = cached
    return cached[2]


def real_digits_like(labels: np.ndarray, seed: int = REFERENCE_SEED) -> torch.Tensor:
    """Real validation digits with exactly the label counts of `labels`, (N, 1, 28, 28),
    in the order of `np.sort(labels)`."""
    split = digits_split()
    rng = np.random.default_rng(seed)
    val_labels = split.val_labels.numpy()
    picks = [
        rng.choice(np.flatnonzero(val_labels == digit), int((labels == digit).sum()), replace=False)
        for digit in range(10)
    ]
    return split.val_images[np.concatenate(picks)]


def digit_quality(
    samples: np.ndarray | torch.Tensor,
    requested_labels: np.ndarray | torch.Tensor | list[int],
    training: torch.Tensor | None = None,
    classifier: DigitClassifier | None = None,
) -> DigitQuality:
    """Measure samples (N, 1, 28, 28) (or 32x32) in [-1, 1] that were asked to be the digits
    `requested_labels` (N,), against the generator's `training` digits (default: the 4,000
    the shipped model trained on, with the 1,000 held-out digits as the memorisation
    reference; other training sets use leave-one-out distances). See the module docstring."""
    model = classifier if classifier is not None else _default_classifier()
    labels = np.asarray(requested_labels, dtype=np.int64)
    x = prepare_samples(samples)
    if labels.shape != (x.shape[0],):
        raise DataError(f"need one requested label per sample, got {labels.shape} for {x.shape[0]}")
    scores = score_samples(x, model)
    probs, feats = classify(model, x)
    correct = probs.argmax(dim=1).numpy() == labels
    digit_accuracy = tuple(
        float(correct[labels == d].mean()) if (labels == d).any() else float("nan")
        for d in range(10)
    )
    real = real_digits_like(labels)
    _, real_feats = classify(model, real)
    diversity = median_ratio(
        within_class_nearest(feats, labels), within_class_nearest(real_feats, np.sort(labels))
    )
    if training is None:
        training = _default_training()
        held_out = held_out_distances(training, _held_out_digits())
    else:
        held_out = held_out_distances(training)
    to_training = nearest_distances(x, training)
    copy_limit = np.percentile(held_out, COPY_PERCENTILE)
    return DigitQuality(
        scores=scores,
        label_accuracy=float(correct.mean()),
        digit_accuracy=digit_accuracy,
        diversity=diversity,
        memorisation_ratio=median_ratio(to_training, held_out),
        copy_share=float((to_training < copy_limit).mean()),
    )


@functools.lru_cache(maxsize=1)
def _default_training() -> torch.Tensor:
    return training_digits()


@functools.lru_cache(maxsize=1)
def _held_out_digits() -> torch.Tensor:
    """The 1,000 digits the shipped model never saw (the classifier's validation split)."""
    return digits_split().val_images


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
    parser.add_argument(
        "--requested",
        choices=["cycle"],
        help="the samples were asked for digits 0, 1, ..., 9, 0, ... in turn (what "
        "`diffusion-studio sample` and sample_checkpoint do for a class-conditional model): "
        "also print digit_quality's measures and what fails",
    )
    args = parser.parse_args(argv)
    if not args.samples and not args.reference:
        parser.error("give one or more .npy files and/or --reference")
    qualities: dict[str, DigitQuality] = {}
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
            if args.requested == "cycle":
                requested = np.arange(len(samples)) % 10
                qualities[str(path)] = digit_quality(samples, requested)
        except DataError as exc:
            print(f"error: '{path}': {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps({k: v.to_dict() for k, v in results.items()}, indent=2))
    else:
        rows = [[name, *table_cells(s)] for name, s in results.items()]
        print(format_table(["samples", *TABLE_COLUMNS], rows))
        print(f"(class entropy: ln 10 = {math.log(10):.3f} when all ten digits are equally common)")
    for name, quality in qualities.items():
        print(
            f"{name}: requested-label accuracy {quality.label_accuracy:.3f}, diversity "
            f"{quality.diversity:.3f}, memorisation {quality.memorisation_ratio:.3f}, "
            f"near-copies {quality.copy_share:.1%}; "
            + ("fails: " + "; ".join(quality.failures()) if quality.failures() else "passes")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
