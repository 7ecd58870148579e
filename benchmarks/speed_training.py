"""Training throughput of the default digits preset beside the machine's fp32 matmul rate.

    python -m benchmarks.speed_training [--warmup 5] [--steps 40] [--threads N] [--json PATH]

Issue 5, item 6. Three numbers and their ratio:
  images/s   `core.training.Trainer(preset_config("digits"))`, as `diffusion-studio train
             --data digits` runs it: the median of the TrainProgress records' images/s over
             --steps optimizer steps after --warmup steps;
  FLOPs      per optimizer step, counted by `torch.utils.flop_counter.FlopCounterMode` on one
             forward and backward pass of the preset's model on a batch (matmuls and
             convolutions; norms, activations and the optimizer are not counted);
  peak       fp32 matmul GFLOP/s of this machine: a loop of 2048x2048 @ 2048x2048 products
             (2 * 2048^3 FLOPs each), best and median of --matmul-repeats.
utilisation = FLOPs per step x steps per second / peak (best).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.speed_common import Target, print_table, write_json
from diffusion_studio.core.models import count_parameters
from diffusion_studio.core.training import Trainer, TrainProgress, preset_config

MATMUL_N = 2048


def matmul_gflops(repeats: int) -> tuple[float, float]:
    """(best, median) GFLOP/s of a 2048x2048 fp32 matmul."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_N, MATMUL_N, generator=generator)
    b = torch.randn(MATMUL_N, MATMUL_N, generator=generator)
    out = torch.empty(MATMUL_N, MATMUL_N)
    torch.mm(a, b, out=out)  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        rates.append(2 * MATMUL_N**3 / (time.perf_counter() - started) / 1e9)
    return max(rates), float(np.median(rates))


def flops_per_step(trainer: Trainer) -> int:
    """FLOPs of one forward + backward pass of the trainer's model on a training batch."""
    config = trainer.config
    generator = torch.Generator().manual_seed(1)
    shape = (config.batch_size, *trainer.dataset.sample_shape)
    x = torch.randn(shape, generator=generator)
    t = torch.randint(0, trainer.schedule.num_timesteps, (config.batch_size,), generator=generator)
    model = trainer.model
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss = (model(x, t) - x).pow(2).mean()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed_training", description=__doc__
    )
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed (default 5)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps (default 40)")
    parser.add_argument("--matmul-repeats", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    config = preset_config("digits", max_minutes=None, max_steps=args.warmup + args.steps)
    trainer = Trainer(config)
    flops = flops_per_step(trainer)
    rates = []
    started = None
    for record in trainer.run():
        if isinstance(record, TrainProgress):
            if record.step == args.warmup:
                started = time.perf_counter()
            elif record.step > args.warmup:
                rates.append(record.samples_per_s)
    wall_rate = args.steps * config.batch_size / (time.perf_counter() - started)
    images_per_s = float(np.median(rates))
    peak_best, peak_median = matmul_gflops(args.matmul_repeats)
    achieved = flops * images_per_s / config.batch_size / 1e9
    utilisation = 100.0 * achieved / peak_best

    print(
        f"Default digits preset: {count_parameters(trainer.model):,} parameters, batch "
        f"{config.batch_size}, {config.image_size}x{config.image_size}; torch threads "
        f"{torch.get_num_threads()}"
    )
    print_table(
        ["quantity", "value"],
        [
            ["images/s (median over steps)", f"{images_per_s:.0f}"],
            ["images/s (wall clock, incl. between steps)", f"{wall_rate:.0f}"],
            ["FLOPs per step (fwd + bwd)", f"{flops / 1e9:.2f} GFLOP"],
            ["FLOPs per image", f"{flops / config.batch_size / 1e6:.1f} MFLOP"],
            ["achieved", f"{achieved:.1f} GFLOP/s"],
            ["fp32 matmul 2048^3, best / median", f"{peak_best:.1f} / {peak_median:.1f} GFLOP/s"],
            ["utilisation of the matmul peak", f"{utilisation:.0f} %"],
        ],
    )
    # Issue 5 sets no number here: it asks to show the headroom.
    targets: list[Target] = []
    write_json(
        args.json,
        "training",
        {
            "warmup": args.warmup,
            "steps": args.steps,
            "matmul_repeats": args.matmul_repeats,
            "threads": torch.get_num_threads(),
            "config": config.to_dict(),
        },
        {
            "parameters": count_parameters(trainer.model),
            "images_per_s": images_per_s,
            "wall_images_per_s": wall_rate,
            "flops_per_step": flops,
            "achieved_gflops": achieved,
            "matmul_gflops_best": peak_best,
            "matmul_gflops_median": peak_median,
            "utilisation_percent": utilisation,
        },
        targets,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
