"""How well a 2-D model matches its toy data: precision and recall (core.quality).

    python -m benchmarks.toy_quality moons spiral [--steps N | --preset-time]
                                    [--prediction v --schedule cosine ...] [--threads 1]
    python -m benchmarks.toy_quality --checkpoint resources/models/spiral.safetensors

Trains `core.training.preset_config(NAME)` (with the given overrides) for --steps optimizer
steps, or for the preset's own time budget (`--preset-time`: 30 s, what the Training panel
does), samples 1000 points with Playback's default sampler (DDPM 100 trailing), and prints,
against 2000 fresh data points (`core.quality.point_quality`, the measure the tests use):
- precision: share of samples within 0.1 of a data point (real data: 0.994-1.0);
- recall: share of data points with a sample within 0.1 (real data: 0.992-1.0; a dropped
  mode or arm lowers it).
Both must be >= 0.95 (tests/core/test_pretrained.py).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from diffusion_studio.core.checkpoint import load_checkpoint
from diffusion_studio.core.data import TOY_DATASETS, toy_points
from diffusion_studio.core.quality import PointQuality, point_quality
from diffusion_studio.core.sampling import sample_checkpoint
from diffusion_studio.core.schedule import ScheduleConfig
from diffusion_studio.core.training import Trainer, preset_config

DATA_SEED = 1


def fresh_data(name: str, n_data: int = 2000) -> np.ndarray:
    """`n_data` fresh points (seed 1) of the toy set `name`, (n, 2)."""
    return toy_points(name, n_data, torch.Generator().manual_seed(DATA_SEED)).numpy()


def score_points(samples: np.ndarray, name: str, n_data: int = 2000) -> PointQuality:
    """Precision and recall of samples (N, 2) against `n_data` fresh points of the toy set."""
    return point_quality(samples, fresh_data(name, n_data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(TOY_DATASETS))
    parser.add_argument("--checkpoint", help="score this checkpoint instead of training")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--preset-time", action="store_true", help="the preset's time budget")
    parser.add_argument("--prediction", choices=["epsilon", "v", "x0"])
    parser.add_argument("--schedule", choices=["linear", "scaled_linear", "cosine", "sigmoid"])
    parser.add_argument("--min-snr", type=float)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    unknown = [n for n in args.names if n not in TOY_DATASETS]
    if unknown:
        parser.error(f"unknown toy set {unknown[0]!r}: choose from {', '.join(TOY_DATASETS)}")
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        scores = score_points(sample_checkpoint(ckpt, 1000), ckpt.data["name"])
        print(f"{args.checkpoint}: precision {scores.precision:.3f}, recall {scores.recall:.3f}")
        return 0
    for name in args.names:
        overrides: dict = {}
        if not args.preset_time:
            overrides |= {"max_steps": args.steps, "max_minutes": None}
        if args.prediction:
            overrides["prediction_type"] = args.prediction
        if args.schedule:
            overrides["schedule"] = ScheduleConfig(args.schedule, 1000)
        if args.min_snr is not None:
            overrides["min_snr_gamma"] = args.min_snr
        trainer = Trainer(preset_config(name, **overrides))
        started = time.perf_counter()
        for _ in trainer.run():
            pass
        seconds = time.perf_counter() - started
        scores = score_points(sample_checkpoint(trainer.checkpoint(), 1000), name)
        print(
            f"{name}: {trainer.step} steps in {seconds:.1f} s, precision {scores.precision:.3f}, "
            f"recall {scores.recall:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
