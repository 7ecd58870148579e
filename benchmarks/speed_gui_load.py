"""GUI under load: event-loop stalls while the Training panel trains, and its throughput.

    python -m benchmarks.speed_gui_load [--seconds 60] [--idle-seconds 3] [--headless-seconds S]
                                        [--app-threads N] [--json PATH]

Issue 5, item 3 (targets: stall max < 50 ms; in-app throughput >= 90 % of headless).
One after the other:
  1. headless, in a fresh process with the CLI's environment (torch's default thread count
     and OpenMP wait policy, what `diffusion-studio train` gets): `core.training.Trainer` on
     exactly the config the Training panel will run (`TrainingPanel.build_config()`: the
     default digits preset with the panel's preview settings), for --headless-seconds
     (default: half of --seconds) in two halves, one before and one after step 2, whose
     mean is the baseline (the machine's speed drifts by up to 10 % over minutes; halves
     more than 5 % apart are reported as a warning);
  2. in the app: the real MainWindow (offscreen) on the Training tab; a QTimer probe in the
     GUI thread fires every 5 ms for --idle-seconds (baseline), then the Start button is
     clicked and the probe runs for --seconds while the panel trains and redraws.
     This process starts as the app does (`app.gui_env.prepare_gui_threading` before torch
     is imported; `make_application`: one torch thread in the GUI thread, torch's default count in
     each job's thread, which runs at a lower priority). --app-threads N gives the job's
     thread another count.
A stall is a probe tick's lateness: the gap since the previous tick minus 5 ms. The GUI
thread's CPU time per gap tells GUI work from waiting (for the GIL or a core), and the
Training panel's and status bar's slots are timed (wrapped at run time, app/ unchanged) to
name the slow ones.
Throughput compares the median images/s of the TrainProgress records (per optimizer step,
after a warm-up) and the wall-clock rate (steps x batch over the time the records span, less
the time spent making previews, which the short headless halves may not reach).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffusion_studio.app.gui_env import prepare_gui_threading

if __name__ == "__main__":
    prepare_gui_threading()  # as the app does, before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.speed_common import (  # noqa: E402
    SUMMARY_HEADER,
    Target,
    print_table,
    print_targets,
    process_events_for,
    qt_application,
    summarize,
    summary_row,
    write_json,
)
from diffusion_studio.core.training import TrainConfig, Trainer, TrainPreview, TrainProgress  # noqa: E402

PROBE_MS = 5
DRIFT_WARNING_PCT = 5.0  # headless halves further apart than this: the ratio is not reliable


def throughput(
    records: list[tuple[float, int, float]],
    batch: int,
    warmup_s: float,
    previews: list[tuple[float, int]] = (),
) -> dict:
    """records: (arrival time, step, samples_per_s) of each TrainProgress; previews: (arrival
    time, step) of each TrainPreview. Drops the first `warmup_s` seconds. The wall rate leaves
    out the time spent making previews (from the step's record to its preview's), so that a
    run that happened to make one more preview than another is not slower for it; rates are
    NaN when there are too few records (a run too short for the machine)."""
    if not records:
        return {"steps": 0, "median_images_per_s": math.nan, "wall_images_per_s": math.nan}
    start = records[0][0]
    kept = [r for r in records if r[0] - start >= warmup_s] or records
    arrived = {step: at for at, step, _ in records}
    preview_s = sum(
        at - arrived[step]
        for at, step in previews
        if step in arrived and kept[0][0] <= arrived[step] and at <= kept[-1][0]
    )
    wall = kept[-1][0] - kept[0][0] - preview_s
    return {
        "steps": records[-1][1] - records[0][1] + 1,
        "measured_steps": len(kept),
        "median_images_per_s": float(np.median([r[2] for r in kept])),
        "wall_images_per_s": (kept[-1][1] - kept[0][1]) * batch / wall if wall > 0 else math.nan,
        "preview_s": preview_s,
    }


def mean_of_runs(first: dict, second: dict) -> dict:
    """Two headless runs' results as one: steps added, rates averaged; `drift_pct` is how far
    apart their median rates are (the machine's own change of speed across the app's run)."""
    mean = {
        key: (first[key] + second[key]) / 2 for key in ("median_images_per_s", "wall_images_per_s")
    }
    apart = abs(first["median_images_per_s"] - second["median_images_per_s"])
    return {
        "steps": first["steps"] + second["steps"],
        "measured_steps": first.get("measured_steps", 0) + second.get("measured_steps", 0),
        **mean,
        "drift_pct": 100 * apart / mean["median_images_per_s"],
        "threads": first["threads"],
        "runs": [first, second],
    }


def run_headless_subprocess(config: TrainConfig, seconds: float, warmup_s: float) -> dict:
    """`run_headless` in a fresh process with the CLI's environment (no OMP_WAIT_POLICY set
    by us) and torch's default thread count, as `diffusion-studio train` runs."""
    env = dict(os.environ)
    if env.get("OMP_WAIT_POLICY") == "PASSIVE" and "DS_BENCH_KEEP_OMP" not in env:
        env.pop("OMP_WAIT_POLICY")  # set by prepare_gui_threading for this process only
    with tempfile.TemporaryDirectory() as folder:
        config_path, out_path = Path(folder) / "config.json", Path(folder) / "out.json"
        config_path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
        code = (
            "import json, sys, torch\n"
            "from benchmarks.speed_gui_load import run_headless\n"
            "from diffusion_studio.core.training import TrainConfig\n"
            f"config = TrainConfig.from_dict(json.load(open({str(config_path)!r})))\n"
            f"result = run_headless(config, {seconds!r}, torch.get_num_threads(), {warmup_s!r})\n"
            f"json.dump(result, open({str(out_path)!r}, 'w'))\n"
        )
        root = Path(__file__).resolve().parent.parent
        subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)
        return json.loads(out_path.read_text(encoding="utf-8"))


def run_headless(config: TrainConfig, seconds: float, threads: int, warmup_s: float) -> dict:
    """Train `config` in this thread for `seconds` of wall time with `threads` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainer = Trainer(config)
        records: list[tuple[float, int, float]] = []
        previews: list[tuple[float, int]] = []
        started = time.perf_counter()
        for record in trainer.run():
            now = time.perf_counter()
            if isinstance(record, TrainProgress):
                records.append((now, record.step, record.samples_per_s))
            elif isinstance(record, TrainPreview):
                previews.append((now, record.step))
            if now - started >= seconds:
                break
    finally:
        torch.set_num_threads(previous)
    return throughput(records, config.batch_size, warmup_s, previews) | {"threads": threads}


class Probe:
    """A timer in the GUI thread that records when each of its ticks arrives, and the GUI
    thread's CPU time then (a stall with little CPU time was a wait: the GIL or the OS)."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.ticks: list[tuple[float, float]] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(PROBE_MS)
        self.timer.timeout.connect(
            lambda: self.ticks.append((time.perf_counter(), time.thread_time()))
        )

    def run(self, seconds: float) -> tuple[np.ndarray, np.ndarray]:
        """Run the event loop for `seconds`; returns each tick's lateness in ms and the GUI
        thread's CPU ms since the previous tick."""
        self.ticks = []
        self.timer.start()
        process_events_for(seconds)
        self.timer.stop()
        ticks = np.asarray(self.ticks)
        late = np.maximum(0.0, 1000.0 * np.diff(ticks[:, 0]) - PROBE_MS)
        return late, 1000.0 * np.diff(ticks[:, 1])


# GUI-thread slots whose duration is logged (wrapped on the class before the window is
# built, so the signal connections call the wrappers); missing names are skipped.
TRACED_SLOTS = {
    "diffusion_studio.app.panels.training_panel.TrainingPanel": (
        "_on_timer",
        "_redraw_curves",
        "_redraw_scatter",
        "_redraw_preview",
        "_update_stats",
        "_on_progressed",
    ),
    "diffusion_studio.app.main_window.JobStatusBar": ("refresh",),
    "diffusion_studio.app.worker.JobRunner": ("_on_worker_progressed",),
    "pyqtgraph.widgets.GraphicsView.GraphicsView": ("paintEvent",),  # every plot's paint
}


class SlotTimer:
    """Logs (start, seconds, name) of every call of the TRACED_SLOTS methods."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float, str]] = []

    def install(self) -> None:
        import importlib

        for dotted, names in TRACED_SLOTS.items():
            module, cls_name = dotted.rsplit(".", 1)
            cls = getattr(importlib.import_module(module), cls_name)
            for name in names:
                if callable(getattr(cls, name, None)):
                    setattr(cls, name, self._wrap(getattr(cls, name), f"{cls_name}.{name}"))

    def _wrap(self, method, label: str):
        calls = self.calls

        @functools.wraps(method)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                calls.append((started, time.perf_counter() - started, label))

        return timed

    def slowest(self, since: float, n: int = 5) -> list[tuple[str, float, float]]:
        """(name, ms, seconds after `since`) of the n slowest calls after `since`."""
        calls = sorted((c for c in self.calls if c[0] >= since), key=lambda c: -c[1])[:n]
        return [(name, round(1000 * d, 1), round(t - since, 1)) for t, d, name in calls]


def describe_stalls(late: np.ndarray, cpu: np.ndarray, limit_ms: float = 50.0) -> dict:
    """The stalls over `limit_ms`: how many, and how many kept the GUI thread busy (its CPU
    time covered at least half the gap: GUI work) rather than waiting."""
    over = late > limit_ms
    gaps = late[over] + PROBE_MS
    busy = cpu[over] >= 0.5 * gaps
    worst = np.argsort(late)[::-1][:5]
    return {
        "count": int(over.sum()),
        "gui_busy": int(busy.sum()),
        "waiting": int((~busy).sum()),
        "worst_ms": [round(float(late[i]), 1) for i in worst],
        "worst_gui_cpu_ms": [round(float(cpu[i]), 1) for i in worst],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed_gui_load", description=__doc__
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="each run (default 60)")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="idle probe (default 3)")
    parser.add_argument(
        "--headless-seconds",
        type=float,
        default=None,
        help="the headless baseline's length (default: half of --seconds; its median images/s "
        "settles within seconds)",
    )
    parser.add_argument(
        "--app-threads",
        type=int,
        default=None,
        help="try another torch thread count for the app (default: what the app sets)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    warmup_s = min(5.0, args.seconds / 5)

    app = qt_application()  # sets the app's thread counts, as run_app does
    from diffusion_studio.app.worker import job_threads, set_job_threads

    if args.app_threads:
        set_job_threads(args.app_threads)
    app_threads = job_threads()
    from diffusion_studio.app.garbage import after_startup, job_garbage
    from diffusion_studio.app.main_window import MainWindow

    slots = SlotTimer()
    slots.install()
    window = MainWindow()
    window.show()
    after_startup(window)  # as run_app: start-up objects frozen, torch._dynamo imported
    deadline = time.monotonic() + 30  # a user presses Start seconds later: the import is done
    while job_garbage.holds and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)
    window.tabs.setCurrentWidget(window.training)
    panel = window.training
    config = panel.build_config()
    app.processEvents()
    print(
        f"GUI load: {args.seconds:g} s each; digits preset, batch {config.batch_size}, preview "
        f"every {config.preview_every} steps; torch threads in the app {app_threads}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}",
        flush=True,
    )

    # The headless baseline runs in two halves, before and after the app's run, and their
    # mean is the reference: this shared machine's speed drifts by up to 10 % over minutes.
    headless_s = (args.headless_seconds or args.seconds / 2) / 2
    headless_warmup_s = min(warmup_s, headless_s / 5)
    headless_before = run_headless_subprocess(config, headless_s, headless_warmup_s)
    cli_threads = headless_before["threads"]
    print(
        f"headless before ({cli_threads} threads, CLI environment): {headless_before}", flush=True
    )

    probe = Probe()
    idle, _ = probe.run(args.idle_seconds)
    records: list[tuple[float, int, float]] = []
    previews: list[tuple[float, int]] = []

    def on_progress(record: object) -> None:
        if isinstance(record, TrainProgress):
            records.append((time.perf_counter(), record.step, record.samples_per_s))
        elif isinstance(record, TrainPreview):
            previews.append((time.perf_counter(), record.step))

    panel.runner.progressed.connect(on_progress)
    clicked_at = time.perf_counter()
    panel.start_button.click()
    if not panel.runner.is_running:
        raise SystemExit("the Training panel did not start (see its error line)")
    loaded, loaded_cpu = probe.run(args.seconds)
    panel.stop()
    if not panel.runner.wait(60.0):
        raise SystemExit("training did not stop within 60 s")
    window.close()
    in_app = throughput(records, config.batch_size, warmup_s, previews) | {"threads": app_threads}
    print(f"in the app ({app_threads} threads): {in_app}", flush=True)
    headless_after = run_headless_subprocess(config, headless_s, headless_warmup_s)
    print(f"headless after: {headless_after}", flush=True)
    headless = mean_of_runs(headless_before, headless_after)

    idle_s, loaded_s = summarize(idle), summarize(loaded)
    stalls = describe_stalls(loaded, loaded_cpu)
    print_table(
        SUMMARY_HEADER,
        [
            summary_row("probe lateness, idle", idle_s),
            summary_row("probe lateness, training", loaded_s),
        ],
    )
    rows = [["headless", str(cli_threads), headless]]
    rows.append(["in the app", str(app_threads), in_app])
    print_table(
        ["run", "threads", "steps", "median images/s", "wall images/s"],
        [
            [name, th, str(r["steps"]), f"{r['median_images_per_s']:.0f}"]
            + [f"{r['wall_images_per_s']:.0f}"]
            for name, th, r in rows
        ],
    )
    print(
        f"stalls over 50 ms while training: {stalls['count']} ({stalls['gui_busy']} with the GUI "
        f"thread busy, {stalls['waiting']} waiting); worst {stalls['worst_ms']} ms with GUI CPU "
        f"{stalls['worst_gui_cpu_ms']} ms"
    )
    if headless["drift_pct"] > DRIFT_WARNING_PCT:
        print(
            f"warning: the headless halves differ by {headless['drift_pct']:.0f} % (the machine's "
            "speed changed during the run): the in-app ratio is uncertain by about as much; "
            "run it again on a quiet machine"
        )
    slowest = slots.slowest(clicked_at)
    print("slowest GUI slots while training (name, ms, s after Start): " + str(slowest))
    ratio = in_app["median_images_per_s"] / headless["median_images_per_s"]
    wall_ratio = in_app["wall_images_per_s"] / headless["wall_images_per_s"]
    targets = [
        Target("stall max", loaded_s.max, 50.0, "ms"),
        Target("stall p99", loaded_s.p99, 50.0, "ms"),
        Target("in-app / headless images/s", 100 * ratio, 90.0, "%", at_least=True),
        Target("in-app / headless wall rate", 100 * wall_ratio, 90.0, "%", at_least=True),
    ]
    print_targets(targets)
    write_json(
        args.json,
        "gui_load",
        {
            "seconds": args.seconds,
            "idle_seconds": args.idle_seconds,
            "probe_ms": PROBE_MS,
            "warmup_s": warmup_s,
            "config": config.to_dict(),
        },
        {
            "idle_lateness_ms": idle_s.to_dict(),
            "training_lateness_ms": loaded_s.to_dict(),
            "stalls_over_50ms": stalls,
            "slowest_gui_slots": slowest,
            "headless": headless,
            "in_app": in_app,
        },
        targets,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
