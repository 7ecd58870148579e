"""Training speed on a busy machine: the default thread choice against fixed thread counts.

    python -m benchmarks.speed_busy [--seconds 20] [--repeats 3] [--only cli|app] [--json PATH]

Issue 14, item 1. A student's laptop is never quiet: here another program (a process this
benchmark starts, `while True: pass`, and stops at the end) keeps one core busy, as a browser
or a video call does. For each load (quiet, one core busy) and each thread set-up (the default,
which chooses as it goes: `core.threads.AdaptiveThreads`; OMP_NUM_THREADS=1; OMP_NUM_THREADS=
all cores) a fresh process trains the default digits preset for --seconds:
  cli  `core.training.Trainer` as `diffusion-studio train --data digits` runs it;
  app  the real window (offscreen), Training tab, Start clicked, as a user does.
The number is the wall-clock rate (images per second of training, the first seconds left out
as warm-up, preview time left out: `benchmarks.speed_gui_load.throughput`), so the default's
own probes of the other thread count are paid for in it. This machine's speed drifts by 10-15 %
over minutes, so the set-ups run in turn (round robin), --repeats times, and each row is the
median of its runs.
Targets: with one core busy, the default >= 90 % of the best fixed count under the same load;
quiet, >= 90 % of the all-cores count (the default before issue 14).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks.speed_common import Target, load_average, print_table, print_targets, write_json

ROOT = Path(__file__).resolve().parent.parent
SETUPS = ("default", "1 thread", "all cores")


def physical_cores() -> int:
    """torch's default thread count in a fresh process (what "all cores" means here)."""
    code = "import torch; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@contextmanager
def busy_core(busy: bool):
    """A process keeping one core busy while the block runs (nothing when `busy` is False)."""
    if not busy:
        yield
        return
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)  # let the scheduler see it
        yield
    finally:
        burner.kill()
        burner.wait()


def child_env(setup: str, cores: int) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if setup == "1 thread":
        env["OMP_NUM_THREADS"] = "1"
    elif setup == "all cores":
        env["OMP_NUM_THREADS"] = str(cores)
    return env


def run_child(where: str, setup: str, cores: int, seconds: float) -> dict:
    """One measurement in a fresh process; returns its throughput dict."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.json"
        command = [sys.executable, "-m", "benchmarks.speed_busy", "--child", where]
        command += ["--seconds", str(seconds), "--child-out", str(out)]
        env = child_env(setup, cores)
        if where == "app":
            env["QT_QPA_PLATFORM"] = "offscreen"
        subprocess.run(command, check=True, cwd=ROOT, env=env)
        return json.loads(out.read_text(encoding="utf-8"))


def child_cli(seconds: float) -> dict:
    import torch

    from benchmarks.speed_gui_load import run_headless
    from diffusion_studio.core.training import preset_config

    config = preset_config("digits")
    return run_headless(config, seconds, torch.get_num_threads(), min(5.0, seconds / 5))


def child_app(seconds: float) -> dict:
    from diffusion_studio.app.gui_env import prepare_gui_threading

    prepare_gui_threading()  # as the app does, before torch is imported
    from benchmarks.speed_common import process_events_for, qt_application

    app = qt_application()  # the app's thread set-up, as run_app
    from benchmarks.speed_gui_load import throughput
    from diffusion_studio.app.main_window import MainWindow
    from diffusion_studio.core.training import TrainPreview, TrainProgress

    window = MainWindow()
    window.show()
    panel = window.training
    window.tabs.setCurrentWidget(panel)
    app.processEvents()
    records: list[tuple[float, int, float]] = []
    previews: list[tuple[float, int]] = []
    contended: list[bool] = []

    def on_progress(record: object) -> None:
        if isinstance(record, TrainProgress):
            records.append((time.perf_counter(), record.step, record.samples_per_s))
            if record.threads is not None:
                contended.append(record.threads.contended)
        elif isinstance(record, TrainPreview):
            previews.append((time.perf_counter(), record.step))

    panel.runner.progressed.connect(on_progress)
    config = panel.build_config()
    panel.start_button.click()
    if not panel.runner.is_running:
        raise SystemExit("the Training panel did not start (see its error line)")
    process_events_for(seconds)
    status_text = f"{window.job_bar.text.text()} {window.job_bar.rate.text()}"  # the user's view
    panel.stop()
    if not panel.runner.wait(60.0):
        raise SystemExit("training did not stop within 60 s")
    window.close()
    result = throughput(records, config.batch_size, min(5.0, seconds / 5), previews)
    return result | {
        "contended_share": sum(contended) / max(1, len(contended)),
        "status": status_text,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed_busy", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="each run (default 20)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each set-up, in turn (default 3)"
    )
    parser.add_argument("--only", choices=("cli", "app"), default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--child", choices=("cli", "app"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        result = child_cli(args.seconds) if args.child == "cli" else child_app(args.seconds)
        args.child_out.write_text(json.dumps(result), encoding="utf-8")
        return 0

    cores = physical_cores()
    wheres = [args.only] if args.only else ["cli", "app"]
    results: dict[str, dict] = {}
    rows = []
    print(
        f"{cores} cores; {args.seconds:g} s per run, {args.repeats} runs each; load average "
        f"{load_average()}",
        flush=True,
    )
    for busy in (False, True):
        load = "one core busy" if busy else "quiet"
        runs: dict[str, list[dict]] = {}
        with busy_core(busy):
            for repeat in range(args.repeats):
                for where in wheres:
                    for setup in SETUPS:
                        result = run_child(where, setup, cores, args.seconds)
                        key = f"{where} / {load} / {setup}"
                        runs.setdefault(key, []).append(result)
                        print(
                            f"{key} (run {repeat + 1}): {result['wall_images_per_s']:.0f} images/s",
                            flush=True,
                        )
        for key, results_of_key in runs.items():
            where, _, setup = key.split(" / ")
            wall = float(np.median([r["wall_images_per_s"] for r in results_of_key]))
            median = float(np.median([r["median_images_per_s"] for r in results_of_key]))
            results[key] = {
                "wall_images_per_s": wall,
                "median_images_per_s": median,
                "runs": results_of_key,
            }
            status = str(results_of_key[-1].get("status", ""))
            rows.append([where, load, setup, f"{wall:.0f}", f"{median:.0f}", status[:70]])
    print_table(["where", "load", "threads", "wall images/s", "median images/s", "status"], rows)

    targets: list[Target] = []
    for where in wheres:
        for busy, load in ((False, "quiet"), (True, "one core busy")):
            default = results[f"{where} / {load} / default"]["wall_images_per_s"]
            fixed = {s: results[f"{where} / {load} / {s}"]["wall_images_per_s"] for s in SETUPS[1:]}
            reference = max(fixed.values()) if busy else fixed["all cores"]
            name = "best fixed count" if busy else "all cores"
            targets.append(
                Target(
                    f"{where}, {load}: default / {name}",
                    100 * default / reference,
                    90.0,
                    "%",
                    at_least=True,
                )
            )
    print_targets(targets)
    write_json(
        args.json,
        "busy",
        {"seconds": args.seconds, "repeats": args.repeats, "cores": cores},
        results,
        targets,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
