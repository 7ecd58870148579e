"""Time to quality: train under a wall-clock budget, sample, score; ours beside diffusers.

    python -m benchmarks.time_to_quality --minutes 5 [--n 256] [--skip-reference] [--out DIR]

In one process, one after the other (so both see the same machine):
  (a) ours: the default digits preset, exactly as the CLI and the Training panel run it
      (`preset_config("digits", max_minutes=M)` + `Trainer(...).run()`), then N samples from
      its EMA weights with DDPM ancestral sampling, 100 steps, trailing spacing; the
      preset is class-conditional, so every digit in turn with classifier-free guidance at
      the default scale (core.sampling.sample_checkpoint, as Playback and the CLI do);
  (b) the diffusers reference: `UNet2DModel` with widths 32/64/64, one layer per block, no
      attention blocks (1,062,497 parameters), on the digits padded to 32x32 with -1, linear
      schedule (T = 1000, beta 1e-4..0.02), epsilon prediction, batch 64, AdamW lr 1e-3
      (torch defaults otherwise), constant learning rate, no EMA, trained for the same budget of
      optimizer-step time; sampled with diffusers' `DDPMScheduler` (its defaults: leading
      spacing, clip_sample=True, fixed_small variance) for 100 steps, i.e. what
      `DDPMPipeline(num_inference_steps=100)` does, in batches of 64; centre-cropped to
      28x28 for scoring.
Both are scored with benchmarks.score, beside real digits (the ceiling) and pure noise (the
floor) at the same N. Writes table.md, table.json, <row>_samples.npy, <row>_grid.png and
ours.safetensors (the checkpoint, for `diffusion-studio sample`) into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.score import (
    TABLE_COLUMNS,
    Scores,
    format_table,
    pure_noise,
    real_digits,
    score_samples,
    table_cells,
)
from diffusion_studio.core.checkpoint import Checkpoint, save_checkpoint
from diffusion_studio.core.data import load_digits
from diffusion_studio.core.export import make_grid, save_png, to_uint8_images, upscale_nearest
from diffusion_studio.core.guidance import DEFAULT_GUIDANCE_SCALE
from diffusion_studio.core.models import count_parameters
from diffusion_studio.core.samplers import default_sampler_config
from diffusion_studio.core.sampling import checkpoint_sampler_config, sample_checkpoint
from diffusion_studio.core.training import Trainer, TrainProgress, preset_config

# What Playback and the CLI start from for the preset's digits model (its objective's default)
SAMPLER = default_sampler_config(is_points=False, objective=preset_config("digits").objective)
SAMPLER_TEXT = (
    f"{SAMPLER.summary()}; every digit in turn, "
    f"classifier-free guidance scale {DEFAULT_GUIDANCE_SCALE:g}"
)
REFERENCE_SAMPLER_TEXT = "diffusers DDPMScheduler, 100 steps (defaults: leading, clip_sample)"
REFERENCE_BATCH = 64
REFERENCE_LR = 1e-3
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class RunResult:
    """One trained-and-sampled model: samples float32 (N, 1, H, W) in [-1, 1]."""

    name: str
    steps: int
    train_s: float
    images_per_s: float
    sample_s: float
    parameters: int
    samples: np.ndarray
    details: dict[str, Any]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class _Ticker:
    """Prints progress at most every `every_s` seconds."""

    def __init__(self, every_s: float = 20.0) -> None:
        self.every_s = every_s
        self.last = time.perf_counter()

    def due(self) -> bool:
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            return True
        return False


# ----------------------------------------------------------------------------- (a) ours


def train_ours(minutes: float) -> tuple[Checkpoint, Trainer]:
    """Train the default digits preset for `minutes` of training time; returns (ckpt, trainer)."""
    config = preset_config("digits", max_minutes=minutes)
    trainer = Trainer(config)
    _log(
        f"ours: training {count_parameters(trainer.model):,} parameters for {minutes:g} min on "
        f"{trainer.device} (batch {config.batch_size}, {config.prediction_type}-prediction, "
        f"{config.schedule.kind} schedule)"
    )
    ticker = _Ticker()
    for record in trainer.run():
        if isinstance(record, TrainProgress) and ticker.due():
            _log(
                f"ours: step {record.step}, loss {record.loss:.4f}, "
                f"{record.elapsed_s:.0f} s, {record.samples_per_s:.0f} images/s"
            )
    return trainer.checkpoint(), trainer


def sample_ours(ckpt: Checkpoint, n: int, seed: int, device: torch.device) -> np.ndarray:
    """n samples from a checkpoint with the sampler Playback starts from for it (its
    objective's default, `checkpoint_sampler_config`): float32 (n, C, H, W)."""
    return sample_checkpoint(ckpt, n, checkpoint_sampler_config(ckpt), seed, device)


def run_ours(minutes: float, n: int, seed: int, out: Path) -> RunResult:
    started = time.perf_counter()
    ckpt, trainer = train_ours(minutes)
    wall = time.perf_counter() - started
    save_checkpoint(out / "ours.safetensors", ckpt)
    _log(f"ours: {trainer.step} steps in {trainer.elapsed_s:.0f} s; sampling {n} ({SAMPLER_TEXT})")
    started = time.perf_counter()
    samples = sample_ours(ckpt, n, seed, trainer.device)
    sample_s = time.perf_counter() - started
    config = trainer.config
    return RunResult(
        name="ours (default digits preset)",
        steps=trainer.step,
        train_s=trainer.elapsed_s,
        images_per_s=trainer.step * config.batch_size / trainer.elapsed_s,
        sample_s=sample_s,
        parameters=count_parameters(trainer.model),
        samples=samples,
        details={
            "train_config": config.to_dict(),
            "train_wall_s": wall,
            "device": str(trainer.device),
            "sampler": SAMPLER.to_dict(),
            "sampler_text": SAMPLER_TEXT,
        },
    )


# ----------------------------------------------------------------------------- (b) diffusers


def reference_model() -> torch.nn.Module:
    """The diffusers reference UNet (1,062,497 parameters)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


def padded_digits() -> torch.Tensor:
    """All built-in digits as float32 (5000, 1, 32, 32) in [-1, 1], padded with background."""
    images, _ = load_digits()
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1) / 127.5 - 1.0
    return F.pad(x, (2, 2, 2, 2), value=-1.0).contiguous()


def run_reference(minutes: float, n: int, seed: int, device: torch.device) -> RunResult:
    """Train and sample the diffusers reference for `minutes` of optimizer-step time."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    model = reference_model().to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=REFERENCE_LR)
    data = padded_digits()
    generator = torch.Generator().manual_seed(seed)
    parameters = count_parameters(model)
    _log(f"diffusers: training {parameters:,} parameters for {minutes:g} min on {device}")
    budget_s, train_s, steps = 60.0 * minutes, 0.0, 0
    ticker = _Ticker()
    wall_start = time.perf_counter()
    model.train()
    while train_s < budget_s:
        started = time.perf_counter()
        index = torch.randint(0, data.shape[0], (REFERENCE_BATCH,), generator=generator)
        t = torch.randint(0, 1000, (REFERENCE_BATCH,), generator=generator)
        x0 = data[index]
        noise = torch.randn(x0.shape, generator=generator)
        x0, noise, t = x0.to(device), noise.to(device), t.to(device)
        noisy = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(model(noisy, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_s += time.perf_counter() - started
        steps += 1
        if ticker.due():
            _log(f"diffusers: step {steps}, loss {float(loss.detach()):.4f}, {train_s:.0f} s")
    wall = time.perf_counter() - wall_start
    _log(f"diffusers: {steps} steps in {train_s:.0f} s; sampling {n} ({REFERENCE_SAMPLER_TEXT})")
    started = time.perf_counter()
    model.eval()
    scheduler.set_timesteps(100)
    sample_generator = torch.Generator().manual_seed(seed)
    chunks = []
    with torch.inference_mode():
        # In batches of its training batch size: one batch of 256 took 3 minutes, about 40 %
        # more per image than speed_sampling measures for batches of 64 on this CPU.
        for first in range(0, n, REFERENCE_BATCH):
            count = min(REFERENCE_BATCH, n - first)
            x = torch.randn((count, 1, 32, 32), generator=sample_generator).to(device)
            for t in scheduler.timesteps:
                output = model(x, t).sample
                x = scheduler.step(output, t, x, generator=sample_generator).prev_sample
            chunks.append(x.cpu())
    x = torch.cat(chunks)
    sample_s = time.perf_counter() - started
    return RunResult(
        name="diffusers reference",
        steps=steps,
        train_s=train_s,
        images_per_s=steps * REFERENCE_BATCH / train_s,
        sample_s=sample_s,
        parameters=parameters,
        samples=x.cpu().numpy().astype(np.float32),
        details={
            "model": "diffusers UNet2DModel(sample_size=32, block_out_channels=(32, 64, 64), "
            "layers_per_block=1, DownBlock2D x3, UpBlock2D x3)",
            "training": f"padded 32x32, linear T=1000, epsilon, batch {REFERENCE_BATCH}, "
            f"AdamW lr {REFERENCE_LR:g} constant, no EMA",
            "train_wall_s": wall,
            "sampler_text": REFERENCE_SAMPLER_TEXT,
            "scheduler_config": {k: v for k, v in dict(scheduler.config).items() if _jsonable(v)},
        },
    )


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


# ----------------------------------------------------------------------------- report


def save_samples(out: Path, stem: str, samples: np.ndarray) -> None:
    """<stem>_samples.npy (float32) and <stem>_grid.png (2x upscaled grid) in `out`."""
    np.save(out / f"{stem}_samples.npy", samples.astype(np.float32))
    grid = make_grid(to_uint8_images(np.clip(samples, -1.0, 1.0)))
    save_png(out / f"{stem}_grid.png", upscale_nearest(grid, 2))


def machine_text() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


HEADER = ["model", "steps", "images/s", *TABLE_COLUMNS[1:]]


def table_row(name: str, scores: Scores, run: RunResult | None) -> list[str]:
    steps = str(run.steps) if run else "-"
    rate = f"{run.images_per_s:.0f}" if run else "-"
    return [name, steps, rate, *table_cells(scores)[1:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.time_to_quality", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--minutes", type=float, default=5.0, help="training budget per model (default 5)"
    )
    parser.add_argument("--n", type=int, default=256, help="samples per row (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument(
        "--skip-reference", action="store_true", help="do not train the diffusers reference"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT}/ttq-<M>min)"
    )
    args = parser.parse_args(argv)
    if not (args.minutes > 0 and math.isfinite(args.minutes)):
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    if args.n < 2:
        parser.error(f"--n must be at least 2, got {args.n}")
    out: Path = args.out or DEFAULT_OUT / f"ttq-{args.minutes:g}min"
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.time_to_quality " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    _log(f"time to quality: {args.minutes:g} min per model, {args.n} samples; output in {out}")

    runs: list[tuple[str, RunResult]] = [("ours", run_ours(args.minutes, args.n, args.seed, out))]
    if not args.skip_reference:
        device = torch.device(runs[0][1].details["device"])  # where ours trained
        runs.append(("diffusers", run_reference(args.minutes, args.n, args.seed, device)))

    _log("scoring")
    rows: list[list[str]] = []
    record: dict[str, Any] = {
        "command": command.strip(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_text(),
        "minutes": args.minutes,
        "n": args.n,
        "rows": {},
    }
    ceiling = score_samples(real_digits(args.n))
    rows.append(table_row("real digits (ceiling)", ceiling, None))
    record["rows"]["real digits (ceiling)"] = {"scores": ceiling.to_dict()}
    for stem, run in runs:
        save_samples(out, stem, run.samples)
        scores = score_samples(run.samples)
        rows.append(table_row(run.name, scores, run))
        record["rows"][run.name] = {
            "scores": scores.to_dict(),
            "steps": run.steps,
            "train_s": run.train_s,
            "images_per_s": run.images_per_s,
            "sample_s": run.sample_s,
            "parameters": run.parameters,
            "samples": f"{stem}_samples.npy",
            **run.details,
        }
    floor = score_samples(pure_noise(args.n))
    rows.append(table_row("pure noise (floor)", floor, None))
    record["rows"]["pure noise (floor)"] = {"scores": floor.to_dict()}

    table = format_table(HEADER, rows)
    notes = [
        f"{args.minutes:g} min of training per model, {args.n} samples per row; {machine_text()}.",
        f"ours: {SAMPLER_TEXT}; diffusers reference: {REFERENCE_SAMPLER_TEXT}.",
        "images/s: training throughput over the optimizer-step time.",
        f"Command: `{record['command']}`",
    ]
    markdown = table + "\n\n" + "\n".join(f"- {line}" for line in notes) + "\n"
    (out / "table.md").write_text(markdown, encoding="utf-8")
    (out / "table.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    print()
    print(markdown)
    _log(f"wrote {out / 'table.md'} and {out / 'table.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
