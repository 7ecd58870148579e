"""Shared plumbing of the speed benchmarks: statistics, tables, JSON results, Qt set-up.

Every `benchmarks/speed_*.py` prints a small table and, with `--json PATH`, writes a result
like
    {"benchmark": "forward", "command": "...", "machine": {...}, "settings": {...},
     "results": {...}, "targets": [{"name", "value", "target", "unit", "met"}, ...]}
which `benchmarks.run_all` collects into one summary.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.score import format_table

MB = 1e6  # the "120 MB" and "400 MB" are decimal megabytes


@dataclass(frozen=True)
class Summary:
    """Order statistics of repeated timings (in the unit they were given in)."""

    n: int
    median: float
    mean: float
    p90: float
    p99: float
    max: float
    min: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(values: list[float] | np.ndarray) -> Summary:
    """Median, mean, 90th and 99th percentile, max, min of `values` (at least one)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("nothing to summarize")
    return Summary(
        n=int(x.size),
        median=float(np.median(x)),
        mean=float(x.mean()),
        p90=float(np.percentile(x, 90)),
        p99=float(np.percentile(x, 99)),
        max=float(x.max()),
        min=float(x.min()),
    )


def summary_row(name: str, s: Summary, unit: str = "ms", digits: int = 2) -> list[str]:
    """A table row: name, n, median, p90, p99, max."""
    f = f"{{:.{digits}f}}"
    return [name, str(s.n), *(f.format(v) + f" {unit}" for v in (s.median, s.p90, s.p99, s.max))]


SUMMARY_HEADER = ["what", "n", "median", "p90", "p99", "max"]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print(format_table(header, rows), flush=True)


@dataclass(frozen=True)
class Target:
    """A goal from issue 5: `value` must be below (or, with at_least, at least) `target`."""

    name: str
    value: float
    target: float
    unit: str
    at_least: bool = False

    @property
    def met(self) -> bool:
        return self.value >= self.target if self.at_least else self.value < self.target

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"met": self.met}


def print_targets(targets: list[Target]) -> None:
    rows = [
        [
            t.name,
            f"{t.value:.3g} {t.unit}",
            f"{'>=' if t.at_least else '<'} {t.target:g} {t.unit}",
            "yes" if t.met else "NO",
        ]
        for t in targets
    ]
    print_table(["target", "measured", "goal", "met"], rows)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (the load average shows a busy machine)."""
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def write_json(
    path: Path | None,
    benchmark: str,
    settings: dict[str, Any],
    results: dict[str, Any],
    targets: list[Target],
) -> None:
    """Write one benchmark's result (nothing when `path` is None)."""
    if path is None:
        return
    data = {
        "benchmark": benchmark,
        "command": " ".join([Path(sys.executable).name, "-m", f"benchmarks.speed_{benchmark}"])
        + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "settings": settings,
        "results": results,
        "targets": [t.to_dict() for t in targets],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}", flush=True)


def qt_application():
    """The app's real QApplication (`app.main_window.make_application`), headless unless a
    platform is chosen, with settings and autosaves in a fresh temporary folder.

    Note: make_application also sets torch's thread counts as the app does (one in the GUI
    thread, torch's default count in each job's thread); the app's OpenMP wait policy is set before
    torch loads (app.gui_env.prepare_gui_threading).
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    folder = Path(tempfile.mkdtemp(prefix="ds-bench-"))
    os.environ["DIFFUSION_STUDIO_DATA_DIR"] = str(folder / "data")
    from PySide6.QtCore import QSettings

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder / "cfg"))
    from diffusion_studio.app.main_window import make_application

    return make_application()


def process_events_for(seconds: float) -> None:
    """Run the Qt event loop for `seconds` (timers fire, paints happen)."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(int(round(seconds * 1000)), loop.quit)
    loop.exec()
