"""Time to quality for both objectives (issue 17): diffusion and flow matching, digits and 2-D.

    python -m benchmarks.objectives [--quick] [--steps-per-minute S | --by-time] [--n 256]
                                    [--toy-steps 3000] [--skip-digits] [--skip-toy]

Digits: for each objective (diffusion; flow with logit-normal t; flow with uniform t), the
default digits preset (`preset_config("digits", objective=...)`, what the CLI and the Training
panel run) trains for the optimizer steps of 1 minute and of 5 minutes (the 5-minute run is
also scored at the 1-minute step, i.e. what its first minute gives). Steps are minutes x
`--steps-per-minute`, the preset's rate on the quiet 2-core machine (quality after a number
of steps does not depend on the machine's speed, so a busy machine measures the same thing
more slowly); `--by-time` trains by wall-clock instead (only meaningful on a quiet machine).
Each model gives N samples, every digit in turn with guidance 2, with its objective's default
sampler (`core.sampling.checkpoint_sampler_config`, as Playback and the CLI), scored by
benchmarks.score (confident share, class entropy, Fréchet distance).

2-D: moons, swissroll, rings, gaussians, spiral, each objective at `--toy-steps` optimizer
steps of its 2-D preset; 1000 samples against 2000 fresh points: precision and recall within
0.1 (`core.quality.point_quality`, as benchmarks.toy_quality).

Prints two markdown tables. `--quick` is a smoke run (few steps, few samples): not a result.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.score import score_samples
from benchmarks.toy_quality import score_points
from diffusion_studio.core.data import TOY_DATASETS
from diffusion_studio.core.sampling import checkpoint_sampler_config, sample_checkpoint
from diffusion_studio.core.training import Trainer, TrainProgress, preset_config

# The digits preset's optimizer steps per minute on the quiet 2-core machine (2 threads). With
# attention: 1569 and 1492 steps in the 5-minute `make bench` runs (benchmarks/README.md, "Time
# to quality: results"), ~300 a minute; the preset has none since issue 17, ~20 % cheaper a step
# (165 against 210 ms, "The recipe search"): 300 x 210 / 165 = 380 a minute.
QUIET_STEPS_PER_MINUTE = 380
# (label, TrainConfig overrides) of each objective compared
OBJECTIVES: tuple[tuple[str, dict], ...] = (
    ("diffusion", {"objective": "diffusion"}),
    ("flow, logit-normal t", {"objective": "flow", "flow_time_sampling": "logit-normal"}),
    ("flow, uniform t", {"objective": "flow", "flow_time_sampling": "uniform"}),
)
TOY_SAMPLES = 1000


@dataclass(frozen=True)
class DigitRow:
    objective: str
    budget: str
    steps: int
    train_s: float
    confident: float
    entropy: float
    frechet: float
    sampler: str


@dataclass(frozen=True)
class ToyRow:
    objective: str
    name: str
    steps: int
    precision: float
    recall: float


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _sampler_text(trainer: Trainer) -> str:
    config = checkpoint_sampler_config(trainer.checkpoint())
    return f"{config.kind} {config.num_inference_steps}"


def digits_rows(
    label: str,
    overrides: dict,
    checkpoints: dict[int, str],
    max_steps: int | None,
    max_minutes: float | None,
    n: int,
    seed: int,
) -> list[DigitRow]:
    """Train one digits run and score it at each step in `checkpoints` (step -> budget name);
    the run ends at `max_steps` or `max_minutes` (by time: scored at its end only)."""
    config = preset_config(
        "digits",
        max_steps=max_steps,
        max_minutes=max_minutes,
        preview_every=0,
        preview_interval_s=None,
        **overrides,
    )
    trainer = Trainer(config)
    rows = []

    def score_now(budget: str) -> None:
        ckpt = trainer.checkpoint()
        samples = sample_checkpoint(ckpt, n, seed=seed)
        scores = score_samples(samples)
        rows.append(
            DigitRow(
                label,
                budget,
                trainer.step,
                trainer.elapsed_s,
                scores.confident,
                scores.class_entropy,
                scores.frechet,
                _sampler_text(trainer),
            )
        )
        _log(
            f"{label}, {budget}: step {trainer.step}, {scores.confident:.1%} confident, "
            f"entropy {scores.class_entropy:.3f}, Fréchet {scores.frechet:.2f}"
        )

    for record in trainer.run():
        if (
            isinstance(record, TrainProgress)
            and record.step in checkpoints
            and not (record.step == max_steps)
        ):
            score_now(checkpoints[record.step])
    final = checkpoints.get(trainer.step) or f"{max_minutes or 0:g} min (by time)"
    score_now(final)
    return rows


def toy_row(label: str, overrides: dict, name: str, steps: int, seed: int) -> ToyRow:
    config = preset_config(name, max_steps=steps, max_minutes=None, preview_every=0, **overrides)
    trainer = Trainer(config)
    for _ in trainer.run():
        pass
    samples = sample_checkpoint(trainer.checkpoint(), TOY_SAMPLES, seed=seed)
    quality = score_points(samples, name)
    _log(
        f"{label}, {name}: {steps} steps, precision {quality.precision:.3f}, "
        f"recall {quality.recall:.3f}"
    )
    return ToyRow(label, name, steps, quality.precision, quality.recall)


def digits_table(rows: list[DigitRow]) -> str:
    lines = [
        "| objective | training | steps | confident % | class entropy | Fréchet | sampler |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.objective} | {r.budget} | {r.steps} | {100 * r.confident:.1f} | "
            f"{r.entropy:.3f} | {r.frechet:.2f} | {r.sampler} |"
        )
    return "\n".join(lines)


def toy_table(rows: list[ToyRow], names: list[str]) -> str:
    lines = [
        "| objective | steps | " + " | ".join(names) + " |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for label in dict.fromkeys(r.objective for r in rows):
        mine = {r.name: r for r in rows if r.objective == label}
        cells = [
            f"{mine[name].precision:.3f} / {mine[name].recall:.3f}" if name in mine else ""
            for name in names
        ]
        steps = next(iter(mine.values())).steps
        lines.append(f"| {label} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: not a result")
    parser.add_argument("--steps-per-minute", type=int, default=QUIET_STEPS_PER_MINUTE)
    parser.add_argument("--by-time", action="store_true", help="train by wall-clock minutes")
    parser.add_argument("--n", type=int, default=256, help="digit samples per score")
    parser.add_argument("--toy-steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-toy", action="store_true")
    parser.add_argument("--only", choices=[label for label, _ in OBJECTIVES], action="append")
    args = parser.parse_args(argv)
    objectives = [o for o in OBJECTIVES if not args.only or o[0] in args.only]
    one_minute = args.steps_per_minute
    n, toy_steps, names = args.n, args.toy_steps, list(TOY_DATASETS)
    if args.quick:
        one_minute, n, toy_steps = 20, 32, 200
    started = time.perf_counter()
    digit_rows: list[DigitRow] = []
    if not args.skip_digits:
        for label, overrides in objectives:
            if args.by_time and not args.quick:
                for minutes in (1.0, 5.0):
                    digit_rows += digits_rows(label, overrides, {}, None, minutes, n, args.seed)
                continue
            five = 5 * one_minute
            digit_rows += digits_rows(
                label, overrides, {one_minute: "1 min run"}, one_minute, None, n, args.seed
            )
            digit_rows += digits_rows(
                label,
                overrides,
                {one_minute: "5 min run, at 1 min", five: "5 min run"},
                five,
                None,
                n,
                args.seed,
            )
    toy_rows = []
    if not args.skip_toy:
        for label, overrides in objectives:
            for name in names:
                toy_rows.append(toy_row(label, overrides, name, toy_steps, args.seed))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; steps per minute "
        f"{one_minute} ({'by time' if args.by_time else 'given'}); "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    if digit_rows:
        print(f"\nDigits, {n} samples per row, guidance 2, every digit in turn:\n")
        print(digits_table(digit_rows))
    if toy_rows:
        print(f"\n2-D sets, precision / recall within 0.1, {TOY_SAMPLES} samples:\n")
        print(toy_table(toy_rows, names))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
