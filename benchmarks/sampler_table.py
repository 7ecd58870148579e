"""Every registered sampler at several step counts on the shipped models (issue 15, item 5).

    python -m benchmarks.sampler_table                       # all samplers, 5 10 20 50 100 steps
    python -m benchmarks.sampler_table --samplers ddim dpmpp-2m --steps 10 20 --n 128

For each sampler and step count: network evaluations per sample (without guidance's doubling),
on the shipped digits model (`--n` samples, seed 0, every digit in turn, guidance 2, the image
default x_0 clip) the share confidently classified, the class entropy and the Fréchet distance
(benchmarks.score; compare Fréchet numbers made with the same n) and the seconds it took; on
the five shipped 2-D models (1000 samples each, no clip) the worst precision and the worst
recall at radius 0.1 over the five (core.quality) and their seconds together. Prints a
Markdown table (and JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

from benchmarks.score import score_samples
from benchmarks.toy_quality import score_points
from diffusion_studio.core.checkpoint import load_checkpoint, pretrained_checkpoint_paths
from diffusion_studio.core.data import TOY_DATASETS
from diffusion_studio.core.samplers import REGISTRY, SamplerConfig, make_sampler
from diffusion_studio.core.sampling import sample_checkpoint
from diffusion_studio.core.schedule import NoiseSchedule

GUIDANCE = 2.0


@dataclass(frozen=True)
class Row:
    sampler: str
    steps: int
    evaluations: int
    confident: float
    entropy: float
    frechet: float
    digits_s: float
    points_precision: float
    points_recall: float
    points_s: float


def run(sampler: str, steps: int, n: int, points_n: int) -> Row:
    """One row of the table: `sampler` at `steps` on the digits and the 2-D models."""
    paths = pretrained_checkpoint_paths()
    digits = load_checkpoint(paths["digits"])
    karras = REGISTRY[sampler].default_karras  # Heun: Karras sigmas (README, "Samplers")
    config = SamplerConfig(sampler, steps, "trailing", clip_sample=True, karras=karras)
    evaluations = make_sampler(
        config, NoiseSchedule(digits.schedule_config), digits.prediction_type
    ).total_evaluations()
    started = time.perf_counter()
    samples = sample_checkpoint(digits, n, config, seed=0, guidance_scale=GUIDANCE)
    digits_s = time.perf_counter() - started
    scores = score_samples(samples)
    precision, recall, points_s = [], [], 0.0
    for name in TOY_DATASETS:
        ckpt = load_checkpoint(paths[name])
        started = time.perf_counter()
        points_config = SamplerConfig(sampler, steps, "trailing", karras=karras)
        points = sample_checkpoint(ckpt, points_n, points_config)
        points_s += time.perf_counter() - started
        quality = score_points(points, name)
        precision.append(quality.precision)
        recall.append(quality.recall)
    return Row(
        sampler,
        steps,
        evaluations,
        scores.confident,
        scores.class_entropy,
        scores.frechet,
        digits_s,
        min(precision),
        min(recall),
        points_s,
    )


def format_rows(rows: list[Row], n: int) -> str:
    header = (
        f"| sampler | steps | evaluations | digits confident | entropy | Fréchet (n={n}) | "
        "digits s | 2-D precision (worst) | 2-D recall (worst) | 2-D s |"
    )
    lines = [header, "|" + " --- |" * 10]
    for r in rows:
        lines.append(
            f"| {r.sampler} | {r.steps} | {r.evaluations} | {r.confident:.1%} | "
            f"{r.entropy:.3f} | {r.frechet:.2f} | {r.digits_s:.1f} | "
            f"{r.points_precision:.3f} | {r.points_recall:.3f} | {r.points_s:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sampler_table", description=__doc__)
    parser.add_argument("--samplers", nargs="+", choices=list(REGISTRY), default=list(REGISTRY))
    parser.add_argument("--steps", nargs="+", type=int, default=[5, 10, 20, 50, 100])
    parser.add_argument("--n", type=int, default=256, help="digit samples per row")
    parser.add_argument("--points-n", type=int, default=1000, help="2-D samples per model")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args(argv)
    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            row = run(sampler, steps, args.n, args.points_n)
            rows.append(row)
            print(format_rows([row], args.n).splitlines()[-1], file=sys.stderr, flush=True)
    print(format_rows(rows, args.n))
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
