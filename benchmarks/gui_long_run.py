"""A long training run in the GUI: memory stays flat and the event loop stays responsive.

    python -m benchmarks.gui_long_run [--minutes 30] [--every S] [--data digits]
                                      [--model-size default] [--json PATH]

Issue 6 ("Load and long runs"): the real MainWindow (offscreen unless QT_QPA_PLATFORM says
otherwise) trains on the Training tab for --minutes (the panel's own time budget, so the run
ends by itself and saves its checkpoint). Every --every seconds (default: 1/30 of the run,
1 to 30 s) one row is recorded:
  - RSS of the process (MB) and its growth since the first row after the warm-up (the first
    10 % of the run, at least one row);
  - the loss-curve points the panel stores (bounded by training_panel.MAX_CURVE_POINTS,
    thinned evenly beyond) and the plotted curve's length;
  - event-loop stalls: a 5 ms QTimer probe in the GUI thread; a stall is a tick's lateness
    (gap since the previous tick minus 5 ms); max and 99th percentile over the window.
A table is printed; --json writes the rows and the summary. The short test variant is
tests/app/test_long_runs.py::test_long_gui_training_keeps_history_and_memory_bounded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.speed_common import (
    MB,
    Target,
    machine_info,
    print_table,
    print_targets,
    process_events_for,
    qt_application,
    rss_bytes,
)

PROBE_MS = 5
RSS_GROWTH_LIMIT_MB = 50.0
STALL_P99_LIMIT_MS = 100.0


class StallProbe:
    """A 5 ms timer in the GUI thread; `take()` returns the lateness (ms) of the ticks since
    the last call."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(PROBE_MS)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()

    def take(self) -> np.ndarray:
        ticks, self.ticks = self.ticks, self.ticks[-1:]
        if len(ticks) < 2:
            return np.zeros(1)
        return np.maximum(0.0, 1000.0 * np.diff(ticks) - PROBE_MS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    parser.add_argument("--every", type=float, default=None, help="seconds between rows")
    parser.add_argument("--data", default="digits", help="digits or a 2-D set (moons, ...)")
    parser.add_argument("--model-size", default="default", help="small, default or large")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    run_s = 60.0 * args.minutes
    every = args.every if args.every else min(30.0, max(1.0, run_s / 30.0))

    qt_application()
    from diffusion_studio.app import dialogs
    from diffusion_studio.app.garbage import after_startup
    from diffusion_studio.app.main_window import MainWindow
    from diffusion_studio.app.panels import training_panel
    from diffusion_studio.app.widgets import set_combo_data

    errors: list[str] = []
    dialogs.show_error = lambda _parent, title, message: errors.append(f"{title}: {message}")
    window = MainWindow()
    window.show()
    after_startup(window)  # as run_app
    training = window.training
    window.tabs.setCurrentWidget(training)
    set_combo_data(training.source, args.data)
    set_combo_data(training.model_size, args.model_size)
    set_combo_data(training.budget, "minutes")
    training.max_minutes.setValue(args.minutes)
    process_events_for(0.5)

    probe = StallProbe()
    rows: list[dict[str, float]] = []
    if not training.start():
        print("could not start training:", errors, file=sys.stderr)
        return 1
    started = time.monotonic()
    deadline = started + run_s + max(60.0, 0.2 * run_s)  # the end save and some slack
    while training.runner.is_running and time.monotonic() < deadline:
        process_events_for(every)
        late = probe.take()
        latest = training.latest
        plotted, _ = training.loss_curve.getOriginalDataset()
        rows.append(
            {
                "elapsed_s": time.monotonic() - started,
                "rss_mb": rss_bytes() / MB,
                "step": latest.step if latest is not None else 0,
                "loss_points": training.loss.n,
                "plotted_points": 0 if plotted is None else len(plotted),
                "stall_max_ms": float(late.max()),
                "stall_p99_ms": float(np.percentile(late, 99)),
            }
        )
        r = rows[-1]
        print(
            f"{r['elapsed_s']:7.0f} s  RSS {r['rss_mb']:7.1f} MB  step {r['step']:>8}  "
            f"curve {r['loss_points']:>6}  stall max {r['stall_max_ms']:6.1f} ms",
            flush=True,
        )
    finished = not training.runner.is_running
    if not finished:
        training.runner.shutdown(30)
    window.close()

    warm = [r for r in rows if r["elapsed_s"] >= 0.1 * run_s] or rows
    growth = warm[-1]["rss_mb"] - warm[0]["rss_mb"] if warm else float("nan")
    stalls = [r["stall_p99_ms"] for r in rows] or [float("nan")]
    print()
    print_table(
        ["elapsed", "RSS", "step", "curve points", "plotted", "stall max", "stall p99"],
        [
            [
                f"{r['elapsed_s']:.0f} s",
                f"{r['rss_mb']:.1f} MB",
                str(r["step"]),
                str(r["loss_points"]),
                str(r["plotted_points"]),
                f"{r['stall_max_ms']:.1f} ms",
                f"{r['stall_p99_ms']:.1f} ms",
            ]
            for r in rows
        ],
    )
    targets = [
        Target("RSS growth after warm-up", growth, RSS_GROWTH_LIMIT_MB, "MB"),
        Target(
            "curve points stored (max)",
            max((r["loss_points"] for r in rows), default=0),
            training_panel.MAX_CURVE_POINTS + 1,
            "points",
        ),
        Target("stall p99 (worst window)", float(np.nanmax(stalls)), STALL_P99_LIMIT_MS, "ms"),
    ]
    print_targets(targets)
    if errors:
        print("errors shown:", *errors, sep="\n  ")
    if args.json is not None:
        data = {
            "benchmark": "gui_long_run",
            "command": "python -m benchmarks.gui_long_run " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(),
            "settings": {
                "minutes": args.minutes,
                "every_s": every,
                "data": args.data,
                "model_size": args.model_size,
                "max_curve_points": training_panel.MAX_CURVE_POINTS,
            },
            "results": {"rows": rows, "finished": finished, "errors": errors},
            "targets": [t.to_dict() for t in targets],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0 if finished and not errors and all(t.met for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
