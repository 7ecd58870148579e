"""Start-up time: from a fresh process to a shown, usable main window.

    python -m benchmarks.speed_startup [--runs 5] [--json PATH]

Issue 5, item 5 (target: median < 3 s). `diffusion-studio` with no subcommand runs
`app.cli.main`, which imports `app.main_window` and calls `run_app`: make_application(),
MainWindow(), show(), then the event loop. The app has no hook that reports "shown", so a
driver does exactly that in a fresh `python -c` process (offscreen Qt, settings and data in a
new temporary folder, i.e. a first launch) up to the first processed events, then prints its
timings and exits. The time is measured by this process, from spawning the child to reading
that line: interpreter start, imports, construction, show and first paint.
For context, the same is timed for `python -c "import torch"` and for `python -c "pass"`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.speed_common import Target, print_table, print_targets, write_json

ROOT = Path(__file__).resolve().parent.parent

DRIVER = """
import time
t0 = time.perf_counter()
import json, os, sys
from app.cli import main                      # what the diffusion-studio script imports
t_cli = time.perf_counter()
torch_after_cli = "torch" in sys.modules
from app.main_window import MainWindow, make_application   # what main() imports for the GUI
from app.garbage import after_startup
t_import = time.perf_counter()
from PySide6.QtCore import QSettings
QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, os.environ["DS_BENCH_CFG"])
app = make_application()
t_app = time.perf_counter()
window = MainWindow()
t_window = time.perf_counter()
window.show()
after_startup(window)                         # what run_app does next
app.processEvents()
t_shown = time.perf_counter()
print(json.dumps({
    "import_cli_s": t_cli - t0,
    "import_gui_s": t_import - t_cli,
    "application_s": t_app - t_import,
    "main_window_s": t_window - t_app,
    "show_s": t_shown - t_window,
    "torch_imported_by_cli": torch_after_cli,
}), flush=True)
os._exit(0)
"""


def child_env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = env.get("QT_QPA_PLATFORM", "offscreen")
    env["DIFFUSION_STUDIO_DATA_DIR"] = str(folder / "data")
    env["DS_BENCH_CFG"] = str(folder / "cfg")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def time_command(code: str, env: dict[str, str]) -> tuple[float, dict]:
    """Seconds from spawning `python -c code` to its first line of output, or to its exit
    when it prints nothing."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline()  # "" at exit for commands that print nothing
    elapsed = time.perf_counter() - started
    process.wait()
    try:
        details = json.loads(line) if line.strip().startswith("{") else {}
    except json.JSONDecodeError:
        details = {}
    if process.returncode != 0:
        raise SystemExit(f"the child process failed (exit code {process.returncode}): {code!r}")
    return elapsed, details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed_startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)

    commands = {
        "main window shown": DRIVER,
        "import torch": "import torch",
        "python -c pass": "pass",
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    details: list[dict] = []
    for _ in range(args.runs):
        for name, code in commands.items():
            with tempfile.TemporaryDirectory(prefix="ds-start-") as folder:
                elapsed, info = time_command(code, child_env(Path(folder)))
            times[name].append(elapsed)
            if info:
                details.append(info)
    medians = {name: float(np.median(v)) for name, v in times.items()}
    parts = {
        key: float(np.median([d[key] for d in details]))
        for key in ("import_cli_s", "import_gui_s", "application_s", "main_window_s", "show_s")
    }
    print(f"Start-up, median of {args.runs} fresh processes (offscreen):")
    print_table(
        ["command", "median", "min", "max"],
        [
            [name, f"{medians[name]:.2f} s", f"{min(v):.2f} s", f"{max(v):.2f} s"]
            for name, v in times.items()
        ],
    )
    print("main window, in the child (medians):")
    print_table(
        ["part", "median"],
        [[key.removesuffix("_s").replace("_", " "), f"{v:.2f} s"] for key, v in parts.items()],
    )
    torch_early = any(d.get("torch_imported_by_cli") for d in details)
    print(f"torch imported before the GUI starts (by app.cli): {torch_early}")
    targets = [Target("start-up median", medians["main window shown"], 3.0, "s")]
    print_targets(targets)
    write_json(
        args.json,
        "startup",
        {"runs": args.runs},
        {
            "median_s": medians,
            "runs_s": times,
            "main_window_parts_median_s": parts,
            "torch_imported_by_cli": torch_early,
        },
        targets,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
