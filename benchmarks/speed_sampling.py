"""Sampling speed: our digits model and the diffusers reference, driven by our samplers.

    python -m benchmarks.speed_sampling [--ddpm-steps 1000] [--repeats 3] [--threads N]
                                        [--json PATH]

Issue 5, item 4. Two runs per model, each through `core.sampling.sample` (inference mode),
the loop the CLI and Playback use:
  DDIM, 50 steps (trailing spacing, eta 0), 64 samples;
  DDPM, 1000 steps (trailing spacing; --ddpm-steps shortens it for smoke runs), 16 samples.
Models:
  ours       the shipped digits model (`pretrained_checkpoint_paths()["digits"]`) when
             present, else a freshly built default digits UNet (random weights: same speed);
  diffusers  `UNet2DModel(sample_size=32, 1 channel, block_out_channels=(32, 64, 64),
             layers_per_block=1, DownBlock2D x3 / UpBlock2D x3)` (1,062,497 parameters,
             random weights), wrapped as Playback wraps diffusers models
             (`core.diffusers_models.DiffusersUNet`), linear schedule, epsilon prediction.
Reported: seconds per run, ms per network evaluation (the loop's time / steps) and per
sample, the network alone (the same batch, timed outside the loop), and for ours the cost of
recording every frame in a `core.sampling.Trajectory` (runs with and without, alternating;
DDIM: median of --repeats pairs, DDPM: one pair; target < 5 %). A class-conditional model
(the digits preset since session 4) also runs DDIM once as Playback samples it: every digit in
turn with classifier-free guidance (`core.guidance`), two network evaluations per step.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.speed_common import Target, print_table, print_targets, write_json
from diffusion_studio.core.guidance import DEFAULT_GUIDANCE_SCALE, num_classes, sampling_labels
from diffusion_studio.core.models import build_model, count_parameters
from diffusion_studio.core.samplers import PredictionType, SamplerConfig, make_sampler
from diffusion_studio.core.sampling import Trajectory, sample
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig
from diffusion_studio.core.threads import AdaptiveThreads

REFERENCE_UNET = {
    "_class_name": "UNet2DModel",
    "sample_size": 32,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
}


@dataclass
class Subject:
    """A model to sample from, with what sampling it needs."""

    name: str
    source: str
    model: nn.Module
    schedule: NoiseSchedule
    prediction_type: PredictionType
    sample_shape: tuple[int, ...]


def our_model() -> Subject:
    from diffusion_studio.core.checkpoint import (
        build_model_from_checkpoint,
        load_checkpoint,
        pretrained_checkpoint_paths,
    )
    from diffusion_studio.core.training import preset_config

    path = pretrained_checkpoint_paths().get("digits")
    if path is not None:
        ckpt = load_checkpoint(path)
        return Subject(
            "ours",
            f"shipped digits model ({path.name})",
            build_model_from_checkpoint(ckpt),
            NoiseSchedule(ckpt.schedule_config),
            ckpt.prediction_type,
            tuple(ckpt.sample_shape),
        )
    config = preset_config("digits")
    torch.manual_seed(0)
    return Subject(
        "ours",
        "freshly built default digits UNet (no shipped digits model; random weights)",
        build_model(config.model).eval(),
        NoiseSchedule(config.schedule),
        config.prediction_type,
        (config.channels, config.image_size, config.image_size),
    )


def reference_model() -> Subject:
    from diffusion_studio.core.diffusers_models import DiffusersUNet
    from diffusion_studio.core.models import DiffusersUNetConfig

    torch.manual_seed(0)
    model = DiffusersUNet(DiffusersUNetConfig(config=REFERENCE_UNET)).eval()
    return Subject(
        "diffusers",
        "diffusers UNet2DModel reference (32x32, 1.06M parameters, random weights)",
        model,
        NoiseSchedule(ScheduleConfig("linear", 1000)),
        "epsilon",
        (1, 32, 32),
    )


def run_loop(
    subject: Subject, config: SamplerConfig, n: int, record: bool, guided: bool = False
) -> float:
    """Seconds for one full sampling run (every frame stored in a Trajectory if `record`;
    `guided`: every class in turn with the default guidance scale)."""
    sampler = make_sampler(config, subject.schedule, subject.prediction_type)
    generator = torch.Generator().manual_seed(0)
    trajectory = Trajectory() if record else None
    labels = sampling_labels(subject.model, n) if guided else None
    started = time.perf_counter()
    for frame in sample(
        subject.model,
        subject.schedule,
        sampler,
        n,
        subject.sample_shape,
        generator,
        labels=labels,
        guidance_scale=DEFAULT_GUIDANCE_SCALE,
        # this thread's count, kept: the pairs compare recording, not thread choices
        threads=AdaptiveThreads(fixed=torch.get_num_threads()),
    ):
        if trajectory is not None:
            trajectory.append(frame)
    return time.perf_counter() - started


def time_network(subject: Subject, n: int, calls: int) -> float:
    """Milliseconds per network evaluation on a batch of n, outside the sampling loop."""
    x = torch.randn((n, *subject.sample_shape), generator=torch.Generator().manual_seed(0))
    t = torch.full((n,), 500, dtype=torch.long)
    times = []
    with torch.inference_mode():
        subject.model(x, t)  # warm-up
        for _ in range(calls):
            started = time.perf_counter()
            subject.model(x, t)
            times.append(time.perf_counter() - started)
    return 1000.0 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed_sampling", description=__doc__
    )
    parser.add_argument("--ddim-samples", type=int, default=64)
    parser.add_argument("--ddpm-samples", type=int, default=16)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--ddpm-steps", type=int, default=1000, help="DDPM steps (default 1000)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=7,
        help="DDIM runs of ours with and without frames (default 7: a few %% of noisy runs)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = [
        ("DDIM", SamplerConfig("ddim", args.ddim_steps, "trailing"), args.ddim_samples),
        ("DDPM", SamplerConfig("ddpm", args.ddpm_steps, "trailing"), args.ddpm_samples),
        ("DDIM guided", SamplerConfig("ddim", args.ddim_steps, "trailing"), args.ddim_samples),
    ]
    subjects = [our_model(), reference_model()]
    for s in subjects:
        print(f"{s.name}: {s.source}, {count_parameters(s.model):,} parameters", flush=True)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)

    rows, results, targets = [], [], []
    for subject in subjects:
        for label, config, n in runs:
            if label == "DDIM guided" and not num_classes(subject.model):
                continue
            steps = config.num_inference_steps
            run_loop(subject, SamplerConfig(config.kind, 2, "trailing"), n, record=True)  # warm-up
            # with and without frames, alternating: --repeats times for ours with DDIM, once
            # for ours with DDPM (the long run); the reference runs once, without frames
            repeats = args.repeats if (subject.name, label) == ("ours", "DDIM") else 1
            guided = label == "DDIM guided"
            plain, recorded = [], []
            for _ in range(repeats):
                plain.append(run_loop(subject, config, n, record=False, guided=guided))
                if subject.name == "ours" and not guided:
                    recorded.append(run_loop(subject, config, n, record=True))
            seconds = float(np.median(plain))
            # the network alone on the batch it sees: doubled when guided
            net_ms = time_network(
                subject, 2 * n if guided else n, calls=5 if subject.name == "diffusers" else 20
            )
            per_eval = 1000.0 * seconds / steps
            result = {
                "model": subject.name,
                "sampler": label,
                "steps": steps,
                "samples": n,
                "seconds": seconds,
                "ms_per_eval": per_eval,
                "ms_per_sample": 1000.0 * seconds / n,
                "network_ms_per_eval": net_ms,
                "loop_overhead_percent": 100.0 * (per_eval - net_ms) / net_ms,
                "runs_s": plain,
            }
            overhead = ""
            if recorded:
                with_frames = float(np.median(recorded))
                result["seconds_recording_frames"] = with_frames
                result["runs_recording_frames_s"] = recorded
                result["recording_overhead_percent"] = 100.0 * (with_frames / seconds - 1.0)
                overhead = f"{result['recording_overhead_percent']:+.1f} %"
                targets.append(
                    Target(
                        f"frame recording overhead, {label} {n}x{steps}",
                        result["recording_overhead_percent"],
                        5.0,
                        "%",
                    )
                )
            results.append(result)
            rows.append(
                [
                    subject.name,
                    f"{label} {steps} steps",
                    str(n),
                    f"{seconds:.2f} s",
                    f"{per_eval:.2f} ms",
                    f"{net_ms:.2f} ms",
                    f"{result['ms_per_sample']:.1f} ms",
                    overhead,
                ]
            )
            print(f"  {subject.name} {label}: {seconds:.2f} s", flush=True)
    print_table(
        [
            "model",
            "sampler",
            "samples",
            "time",
            "per eval (loop)",
            "per eval (net only)",
            "per sample",
            "recording frames",
        ],
        rows,
    )
    print_targets(targets)
    write_json(
        args.json,
        "sampling",
        {
            "ddim_steps": args.ddim_steps,
            "ddpm_steps": args.ddpm_steps,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "models": {s.name: s.source for s in subjects},
        },
        {"runs": results},
        targets,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
