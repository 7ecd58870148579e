"""Playback: memory of a 64-sample x 1000-frame trajectory, and 60 fps playback of it.

    python -m benchmarks.speed_playback [--samples 64] [--frames 1000] [--seconds 5] [--json PATH]

Issue 5, item 2. A `core.sampling.Trajectory` (the store Playback uses) is filled with
synthetic frames: real digits blended with noise by a cosine schedule, and slightly noisy x_0
predictions, `frames - 1` sampler steps plus the final sample (Trajectory keeps at most 1000
frames). Its memory is read from `Trajectory.nbytes` and from the growth of the process's
resident set size (target < 120 MB; float32 would be 400 MB).

Then the real `app.panels.playback_panel.PlaybackPanel` (offscreen, window-sized) plays it
with its own play timer at its fastest speed (4x = 60 fps). A probe connected after the panel's
slot records each tick; a tick that comes more than 1.5 frame periods (1/60 s) after the
previous one counts the frames that should have been shown in between as dropped
(target: 0 dropped). Also timed: `show_frame(i)` alone (drawing x_t, the x_0 prediction and
the grid of all samples, without the paint).
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.speed_common import (
    MB,
    SUMMARY_HEADER,
    Summary,
    Target,
    print_table,
    print_targets,
    process_events_for,
    qt_application,
    rss_bytes,
    summarize,
    summary_row,
    write_json,
)
from diffusion_studio.core.data import load_digits
from diffusion_studio.core.sampling import Frame, Trajectory

TARGET_FPS = 60.0
LATE_FACTOR = 1.5


def synthetic_trajectory(samples: int, frames: int, seed: int = 0) -> Trajectory:
    """A Trajectory of `frames` frames of `samples` digit-like (1, 28, 28) samples.

    The frames are made with numpy (torch's thread pool would only add noise to the timing)
    and handed over as CPU tensors, as `core.sampling.sample` yields them.
    """
    rng = np.random.default_rng(seed)
    digits, _ = load_digits()
    x0 = digits[:samples, None].astype(np.float32) / 127.5 - 1.0  # (B, 1, 28, 28)
    noise = rng.standard_normal(x0.shape, dtype=np.float32)
    wobble = 0.1 * rng.standard_normal(x0.shape, dtype=np.float32)
    trajectory = Trajectory()
    steps = frames - 1
    for step in range(steps):
        t = steps - step  # descending, like a sampler's timesteps
        angle = 0.5 * math.pi * t / steps  # cosine schedule: sqrt(alphabar) = cos(angle)
        x_t = np.float32(math.cos(angle)) * x0 + np.float32(math.sin(angle)) * noise
        pred = x0 + np.float32(t / steps) * wobble
        trajectory.append(Frame(step, t, torch.from_numpy(x_t), torch.from_numpy(pred)))
    final = torch.from_numpy(x0.copy())
    trajectory.append(Frame(steps, -1, final, final))
    return trajectory


def measure_memory(samples: int, frames: int) -> tuple[Trajectory, dict[str, float]]:
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    trajectory = synthetic_trajectory(samples, frames)
    build_s = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()
    float32_bytes = 2 * len(trajectory) * samples * 28 * 28 * 4
    return trajectory, {
        "frames_stored": len(trajectory),
        "nbytes_mb": trajectory.nbytes / MB,
        "rss_growth_mb": (after - before) / MB,
        "float32_equivalent_mb": float32_bytes / MB,
        "build_s": build_s,
    }


def measure_playback(trajectory: Trajectory, seconds: float) -> dict[str, object]:
    from diffusion_studio.app.panels.playback_panel import PlaybackPanel
    from diffusion_studio.app.widgets import set_combo_data

    app = qt_application()
    panel = PlaybackPanel()
    panel.resize(1360, 820)
    panel.show()
    panel.trajectory = trajectory
    panel._sync_slider(follow=False)  # what the panel does when sampling has ended
    panel.show_frame(0)
    app.processEvents()

    # drawing alone (no paint): the slot's share of each frame
    draw_ms = []
    for i in range(min(200, len(trajectory))):
        started = time.perf_counter()
        panel.show_frame(i)
        draw_ms.append(1000.0 * (time.perf_counter() - started))
    panel.show_frame(0)
    app.processEvents()

    if not set_combo_data(panel.speed, 4.0):
        raise SystemExit("the Playback panel has no 4x speed")
    interval_ms = panel.play_timer.interval()
    ticks: list[float] = []
    indices: list[int] = []

    def probe() -> None:  # connected after the panel's own slot: runs after each frame's draw
        ticks.append(time.perf_counter())
        indices.append(panel.frame_index)

    panel.play_timer.timeout.connect(probe)
    panel.loop.setChecked(True)
    panel.play_button.setChecked(True)
    process_events_for(seconds)
    panel.play_button.setChecked(False)
    panel.play_timer.timeout.disconnect(probe)
    panel.close()

    period_s = 1.0 / TARGET_FPS
    gaps = np.diff(np.asarray(ticks))
    late = gaps > LATE_FACTOR * period_s
    dropped = int(np.sum(np.maximum(1, np.rint(gaps[late] / period_s) - 1))) if late.any() else 0
    duration = ticks[-1] - ticks[0] if len(ticks) > 1 else float("nan")
    advanced = np.diff(np.asarray(indices)) % len(trajectory)
    return {
        "timer_interval_ms": interval_ms,
        "ticks": len(ticks),
        "duration_s": duration,
        "achieved_fps": (len(ticks) - 1) / duration if len(ticks) > 1 else 0.0,
        "dropped_frames": dropped,
        "late_ticks": int(late.sum()),
        "frames_not_advanced_by_one": int(np.sum(advanced != 1)),
        "gap_ms": summarize(1000.0 * gaps).to_dict() if len(gaps) else None,
        "draw_ms": summarize(draw_ms).to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed_playback", description=__doc__
    )
    parser.add_argument("--samples", type=int, default=64, help="samples per frame (default 64)")
    parser.add_argument("--frames", type=int, default=1000, help="frames (default 1000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="playback time (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)

    trajectory, memory = measure_memory(args.samples, args.frames)
    print(
        f"Trajectory: {args.samples} samples x {memory['frames_stored']} frames (x_t and x_0 "
        f"predictions, uint8): nbytes {memory['nbytes_mb']:.1f} MB, RSS growth "
        f"{memory['rss_growth_mb']:.1f} MB (float32 would be "
        f"{memory['float32_equivalent_mb']:.0f} MB); built in {memory['build_s']:.1f} s"
    )
    play = measure_playback(trajectory, args.seconds)
    gap = play["gap_ms"]
    print(
        f"Playback at 4x (timer {play['timer_interval_ms']} ms) for {play['duration_s']:.1f} s: "
        f"{play['achieved_fps']:.1f} fps, {play['dropped_frames']} dropped frames "
        f"({play['late_ticks']} late ticks)"
    )
    rows = [summary_row("show_frame(i), no paint", Summary(**play["draw_ms"]))]
    if gap is not None:
        rows.append(summary_row("tick-to-tick gap", Summary(**gap)))
    print_table(SUMMARY_HEADER, rows)
    targets = [
        Target("trajectory nbytes", memory["nbytes_mb"], 120.0, "MB"),
        Target("trajectory RSS growth", memory["rss_growth_mb"], 120.0, "MB"),
        Target("dropped frames", play["dropped_frames"], 1.0, "frames"),
        Target("achieved fps", play["achieved_fps"], 0.97 * TARGET_FPS, "fps", at_least=True),
    ]
    print_targets(targets)
    write_json(
        args.json,
        "playback",
        {"samples": args.samples, "frames": args.frames, "seconds": args.seconds},
        {"memory": memory, "playback": play},
        targets,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
