"""Issue 6's time and memory limits in the real window, measured here rather than in the tests.

    python -m benchmarks.gui_limits [--cycles 200] [--json PATH]

The tests (tests/app/test_job_faults.py, tests/app/test_long_runs.py) check events and counts
(no thread, worker or Qt object left); on a shared 2-core machine a wall-clock or RSS limit
there fails when a neighbour is busy. This benchmark measures the limits themselves:

- RSS growth over --cycles sampling start/stop cycles in Playback (the shipped moons model,
  DDIM 5 steps, 32 samples; every other cycle stopped at once, the others after their first
  frame), after 20 warm-up cycles: goal < 25 MB;
- seconds from closing the window (answering Yes to "stop it and quit?") until no worker
  thread is left, during a training run (2-D moons, small MLP) and during sampling (the
  shipped digits model, DDIM 100 steps, 64 samples): goal < 2 s each.

A 30-minute training run's memory is `python -m benchmarks.gui_long_run`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.speed_common import (
    MB,
    Target,
    machine_info,
    print_targets,
    process_events_for,
    qt_application,
    rss_bytes,
)

RSS_GROWTH_LIMIT_MB = 25.0
CLOSE_LIMIT_S = 2.0
WARM_UP_CYCLES = 20


def _wait_until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    from PySide6.QtCore import QCoreApplication

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the window did not get there in time")
        QCoreApplication.processEvents()
        time.sleep(0.002)


def _new_window():
    from diffusion_studio.app.garbage import after_startup
    from diffusion_studio.app.main_window import MainWindow

    window = MainWindow()
    window.show()
    after_startup(window)  # as run_app
    process_events_for(0.3)
    return window


def sampling_cycles_rss_growth_mb(cycles: int) -> float:
    """RSS growth (MB) over `cycles` sampling start/stop cycles, after a warm-up."""
    from diffusion_studio.app.widgets import set_combo_data
    from diffusion_studio.core.checkpoint import pretrained_checkpoint_paths

    window = _new_window()
    playback = window.playback
    window.tabs.setCurrentWidget(playback)
    assert playback.load_checkpoint(pretrained_checkpoint_paths()["moons"])
    set_combo_data(playback.sampler_kind, "ddim")
    playback.num_steps.setValue(5)
    playback.num_samples.setValue(32)

    def cycle(i: int) -> None:
        playback.sample_button.click()
        if i % 2 == 0:
            playback.cancel_button.click()
        else:
            _wait_until(lambda: playback.has_frames() or not playback.runner.is_running)
            if playback.cancel_button.isEnabled():
                playback.cancel_button.click()
        _wait_until(lambda: not playback.runner.is_running)
        playback.runner.wait(10)

    for i in range(WARM_UP_CYCLES):
        cycle(i)
    process_events_for(0.2)
    before = rss_bytes()
    started = time.monotonic()
    for i in range(cycles):
        cycle(i)
    process_events_for(0.2)
    growth = (rss_bytes() - before) / MB
    print(
        f"{cycles} sampling cycles in {time.monotonic() - started:.1f} s: RSS "
        f"{before / MB:.0f} -> {before / MB + growth:.0f} MB",
        flush=True,
    )
    window.close()
    return growth


def close_seconds(during: str) -> float:
    """Seconds from close() (answered Yes) to no worker thread left, during `during`:
    "training" or "sampling"."""
    from diffusion_studio.app.widgets import set_combo_data
    from diffusion_studio.app.worker import live_threads, wait_for_all_threads
    from diffusion_studio.core.checkpoint import pretrained_checkpoint_paths

    window = _new_window()
    if during == "training":
        training = window.training
        window.tabs.setCurrentWidget(training)
        set_combo_data(training.source, "moons")
        set_combo_data(training.model_size, "small")
        set_combo_data(training.device, "cpu")
        set_combo_data(training.budget, "steps")
        training.max_steps.setValue(1_000_000)
        training.preview_every.setValue(0)
        assert training.start()
        _wait_until(lambda: training.loss.n >= 3)
    else:
        playback = window.playback
        window.tabs.setCurrentWidget(playback)
        assert playback.load_checkpoint(pretrained_checkpoint_paths()["digits"])
        set_combo_data(playback.sampler_kind, "ddim")
        playback.num_steps.setValue(100)
        playback.num_samples.setValue(64)
        playback.sample_button.click()
        _wait_until(playback.has_frames)
    started = time.monotonic()
    window.close()
    wait_for_all_threads(60)
    seconds = time.monotonic() - started
    assert not live_threads()
    print(f"close during {during}: {seconds:.2f} s", flush=True)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200, help="sampling start/stop cycles")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    qt_application()
    from diffusion_studio.app import dialogs

    errors: list[str] = []
    dialogs.show_error = lambda _parent, title, message: errors.append(f"{title}: {message}")
    dialogs.ask_yes_no = lambda _parent, _title, _question: True  # "stop it and quit?": yes

    growth = sampling_cycles_rss_growth_mb(args.cycles)
    targets = [
        Target(f"RSS growth over {args.cycles} sampling cycles", growth, RSS_GROWTH_LIMIT_MB, "MB"),
        Target("close during training", close_seconds("training"), CLOSE_LIMIT_S, "s"),
        Target("close during sampling", close_seconds("sampling"), CLOSE_LIMIT_S, "s"),
    ]
    print()
    print_targets(targets)
    if errors:
        print("errors shown:", errors, file=sys.stderr)
    if args.json is not None:
        import json

        args.json.write_text(
            json.dumps(
                {"machine": machine_info(), "targets": [t.to_dict() for t in targets]}, indent=2
            )
            + "\n"
        )
    return 0 if all(t.met for t in targets) and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
