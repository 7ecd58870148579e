"""Recipe search for the digits preset, measured in CPU-minute step budgets.

Each variant (model widths, attention, batch size, learning rate, prediction type, min-SNR,
EMA, schedule) trains with the real engine (`core.training.Trainer`) for the number of
optimizer steps it makes in `--cpu-minutes` on the 2-core CPU (`CPU_MS_PER_STEP`, measured
with `--measure-cpu`), then samples 256 digits with each evaluated sampler and scores them
with `benchmarks.score`. Quality after a number of steps does not depend on the device, so the
search can run on any machine; on a GPU many variants train at once (`--workers`). The
winner is then confirmed on the CPU itself with `benchmarks.time_to_quality`.

    python -m benchmarks.recipe_sweep --measure-cpu               # CPU ms per step, 2 threads
    python -m benchmarks.recipe_sweep --out DIR [--workers 12] [--only NAME ...] [--deadline-min M]

Writes DIR/sweep.jsonl (one JSON record per variant and sampler) and DIR/sweep.md. `--long`
also trains the shipped-model candidates for `--long-minutes` each and saves them (float16,
sampling-only) as DIR/<name>.safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

# Width presets: name -> (channels, attention_heads, layers_per_level)
ARCHS: dict[str, tuple[tuple[int, ...], int, int]] = {
    "w32_64": ((32, 64), 4, 1),
    "w32_64_na": ((32, 64), 0, 1),
    "w48_96": ((48, 96), 4, 1),
    "w48_96_na": ((48, 96), 0, 1),
    "w64_128": ((64, 128), 4, 1),
    "w32_64_l2": ((32, 64), 4, 2),
}

# Milliseconds per optimizer step on the 2-core AMD EPYC (2 torch threads, quiet machine),
# measured with --measure-cpu on 2026-11-28: (arch, batch) -> ms.
CPU_MS_PER_STEP: dict[tuple[str, int], float] = {
    ("w32_64", 32): 116.9,
    ("w32_64", 64): 209.6,
    ("w32_64", 128): 398.0,
    ("w32_64_na", 32): 94.7,
    ("w32_64_na", 64): 165.0,
    ("w32_64_na", 128): 314.4,
    ("w48_96", 32): 206.6,
    ("w48_96", 64): 385.7,
    ("w48_96", 128): 751.3,
    ("w64_128", 32): 319.0,
    ("w64_128", 64): 604.4,
    ("w32_64_l2", 32): 164.6,
    ("w32_64_l2", 64): 287.7,
}

SAMPLERS = {
    "ddpm100": ("ddpm", 100, "trailing"),
    "ddim50": ("ddim", 50, "trailing"),
    "ddpm1000": ("ddpm", 1000, "trailing"),
}


@dataclass(frozen=True)
class Variant:
    """One training recipe. steps None = the CPU-minute budget; minutes = a wall-clock budget."""

    name: str
    arch: str = "w32_64"
    batch_size: int = 64
    learning_rate: float = 2e-3
    prediction_type: str = "v"
    min_snr_gamma: float | None = 5.0
    ema_decay: float = 0.999
    schedule: str = "cosine"
    warmup_steps: int = 100
    seed: int = 0
    steps: int | None = None
    minutes: float | None = None
    samplers: tuple[str, ...] = ("ddpm100", "ddim50")
    eval_raw: bool = False
    save: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def cpu_steps(arch: str, batch_size: int, cpu_minutes: float) -> int:
    """Optimizer steps the CPU makes in `cpu_minutes` for this arch and batch size."""
    return int(cpu_minutes * 60_000 / CPU_MS_PER_STEP[(arch, batch_size)])


def default_variants() -> list[Variant]:
    """The search: architecture x batch at the preset recipe, then the recipe knobs."""
    out: list[Variant] = []
    for arch, batch in CPU_MS_PER_STEP:
        out.append(Variant(f"{arch}_b{batch}", arch=arch, batch_size=batch, eval_raw=True))
    for arch in ("w32_64_na", "w32_64"):
        for batch in (32, 64):
            base = f"{arch}_b{batch}"
            knobs: dict[str, dict[str, Any]] = {
                "lr1e-3": {"learning_rate": 1e-3},
                "lr4e-3": {"learning_rate": 4e-3},
                "lr8e-3": {"learning_rate": 8e-3},
                "eps": {"prediction_type": "epsilon"},
                "x0": {"prediction_type": "x0"},
                "nosnr": {"min_snr_gamma": None},
                "ema995": {"ema_decay": 0.995},
                "ema99": {"ema_decay": 0.99},
                "linear": {"schedule": "linear"},
                "warm0": {"warmup_steps": 0},
                "seed1": {"seed": 1},
                "seed2": {"seed": 2},
            }
            if arch == "w32_64":
                knobs = {k: knobs[k] for k in ("lr4e-3", "eps", "nosnr", "seed1")}
            for knob, change in knobs.items():
                out.append(Variant(f"{base}_{knob}", arch=arch, batch_size=batch, **change))
    return out


def long_variants(minutes: float) -> list[Variant]:
    """Shipped-model candidates: the same recipe, much longer, batch 128."""
    samplers = ("ddpm100", "ddim50", "ddpm1000")
    return [
        Variant(
            f"long_{arch}", arch=arch, batch_size=128, minutes=minutes, samplers=samplers, save=True
        )
        for arch in ("w32_64_na", "w32_64", "w48_96_na")
    ]


def train_config(v: Variant, cpu_minutes: float, device: str):
    from diffusion_studio.core.models import UNetConfig
    from diffusion_studio.core.schedule import ScheduleConfig
    from diffusion_studio.core.training import preset_config

    channels, heads, layers = ARCHS[v.arch]
    model = UNetConfig(
        in_channels=1,
        image_size=28,
        channels=channels,
        attention_heads=heads,
        layers_per_level=layers,
        pixel_unshuffle=2,
        norm_groups=8,
    )
    steps = v.steps
    if steps is None and v.minutes is None:
        steps = cpu_steps(v.arch, v.batch_size, cpu_minutes)
    return preset_config(
        "digits",
        model=model,
        batch_size=v.batch_size,
        learning_rate=v.learning_rate,
        prediction_type=v.prediction_type,
        min_snr_gamma=v.min_snr_gamma,
        ema_decay=v.ema_decay,
        schedule=ScheduleConfig(v.schedule, 1000),
        warmup_steps=v.warmup_steps,
        seed=v.seed,
        max_steps=steps,
        max_minutes=v.minutes,
        device=device,
    )


def run_variant(v: Variant, cpu_minutes: float, device: str, n: int, out: str) -> list[dict]:
    """Train one variant, sample with each sampler, score; one record per sampler."""
    import torch

    from benchmarks.score import score_samples
    from diffusion_studio.core.checkpoint import (
        build_model_from_checkpoint,
        for_sampling,
        save_checkpoint,
    )
    from diffusion_studio.core.samplers import SamplerConfig, make_sampler
    from diffusion_studio.core.sampling import sample
    from diffusion_studio.core.schedule import NoiseSchedule
    from diffusion_studio.core.training import Trainer

    torch.set_num_threads(1)
    config = train_config(v, cpu_minutes, device)
    trainer = Trainer(config)
    started = time.perf_counter()
    for _ in trainer.run():
        pass
    train_s = time.perf_counter() - started
    ckpt = trainer.checkpoint()
    if v.save:
        save_checkpoint(Path(out) / f"{v.name}.safetensors", for_sampling(ckpt, half=True))
    schedule = NoiseSchedule(ckpt.schedule_config)
    models = {"ema": build_model_from_checkpoint(ckpt, trainer.device)}
    if v.eval_raw:
        models["raw"] = trainer.model.eval()
    records = []
    for which, model in models.items():
        for sampler_name in v.samplers if which == "ema" else ("ddpm100",):
            sampler = make_sampler(
                SamplerConfig(*SAMPLERS[sampler_name]), schedule, ckpt.prediction_type
            )
            generator = torch.Generator().manual_seed(0)
            final = None
            for frame in sample(
                model, schedule, sampler, n, ckpt.sample_shape, generator, trainer.device
            ):
                final = frame.x_t
            scores = score_samples(final.numpy())
            records.append(
                {
                    "variant": asdict(v),
                    "name": v.name,
                    "weights": which,
                    "sampler": sampler_name,
                    "steps": trainer.step,
                    "train_s": round(train_s, 1),
                    "confident": scores.confident,
                    "mean_max_prob": scores.mean_max_prob,
                    "class_entropy": scores.class_entropy,
                    "frechet": scores.frechet,
                    "device": str(trainer.device),
                }
            )
    return records


def measure_cpu(batches: tuple[int, ...] = (32, 64, 128)) -> None:
    """Print CPU ms per step for every arch and batch (2 torch threads)."""
    import torch

    from diffusion_studio.core.training import Trainer

    torch.set_num_threads(2)
    for arch in ARCHS:
        for batch in batches:
            trainer = Trainer(
                train_config(Variant("m", arch=arch, batch_size=batch, steps=10**6), 5, "cpu")
            )
            steps = trainer.run()
            for _ in range(5):
                next(steps)
            n = 20 if batch < 128 else 10
            started = time.perf_counter()
            for _ in range(n):
                next(steps)
            ms = (time.perf_counter() - started) / n * 1000
            print(f'    ("{arch}", {batch}): {ms:.1f},', flush=True)


def write_table(records: list[dict], path: Path) -> None:
    rows = sorted(records, key=lambda r: -r["confident"])
    lines = [
        "| variant | weights | sampler | steps | confident % | mean max prob | entropy | Frechet |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['weights']} | {r['sampler']} | {r['steps']} | "
            f"{100 * r['confident']:.1f} | {r['mean_max_prob']:.3f} | "
            f"{r['class_entropy']:.3f} | {r['frechet']:.2f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure-cpu", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep"))
    parser.add_argument("--cpu-minutes", type=float, default=5.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--only", nargs="*", help="variant names to run")
    parser.add_argument(
        "--samplers",
        nargs="*",
        choices=list(SAMPLERS),
        help="evaluate only these samplers (default: each variant's own)",
    )
    parser.add_argument("--long", action="store_true", help="also train the shipped candidates")
    parser.add_argument("--long-minutes", type=float, default=5.0)
    parser.add_argument(
        "--deadline-min",
        type=float,
        default=None,
        help="start no new variant after this many minutes",
    )
    parser.add_argument(
        "--scale-steps", type=float, default=1.0, help="multiply every step budget (smoke runs)"
    )
    args = parser.parse_args(argv)
    if args.measure_cpu:
        measure_cpu()
        return 0
    variants = default_variants()
    if args.scale_steps != 1.0:
        variants = [
            Variant(
                **(
                    asdict(v)
                    | {
                        "steps": max(
                            2,
                            int(
                                args.scale_steps * cpu_steps(v.arch, v.batch_size, args.cpu_minutes)
                            ),
                        )
                    }
                )
            )
            for v in variants
        ]
    if args.long:
        variants = long_variants(args.long_minutes) + variants
    if args.only:
        variants = [v for v in variants if v.name in args.only]
        variants.sort(key=lambda v: args.only.index(v.name))
    if args.samplers:
        variants = [Variant(**(asdict(v) | {"samplers": tuple(args.samplers)})) for v in variants]
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "sweep.jsonl"
    started = time.perf_counter()
    records: list[dict] = []
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        pending = {}
        queue = list(variants)
        while queue or pending:
            late = args.deadline_min is not None and (
                time.perf_counter() - started > args.deadline_min * 60
            )
            while queue and len(pending) < args.workers and not late:
                v = queue.pop(0)
                fut = pool.submit(
                    run_variant, v, args.cpu_minutes, args.device, args.n, str(args.out)
                )
                pending[fut] = v
            if late:
                queue.clear()
            if not pending:
                break
            done, _ = wait(pending, timeout=10, return_when=FIRST_COMPLETED)
            for fut in done:
                v = pending.pop(fut)
                try:
                    new = fut.result()
                except Exception as exc:  # record and go on: one bad variant must not stop all
                    new = [{"name": v.name, "error": repr(exc)}]
                with jsonl.open("a") as f:
                    for r in new:
                        f.write(json.dumps(r) + "\n")
                records.extend(r for r in new if "error" not in r)
                write_table(records, args.out / "sweep.md")
                elapsed = time.perf_counter() - started
                best = max((r["confident"] for r in new if "error" not in r), default=-1)
                print(f"[{elapsed:6.0f} s] {v.name}: best confident {best:.3f}", flush=True)
    print((args.out / "sweep.md").read_text() if records else "no results")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
