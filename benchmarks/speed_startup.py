"""Start-up time: from launching `diffusion-studio` to its window on screen.

    python -m benchmarks.speed_startup [--runs 3] [--offscreen-runs 3] [--json PATH]

Issue 20 (targets: median <= 1.5 s quiet, <= 2.5 s with one core busy; a restored session
whose last tab was Playback or Training within 0.3 s of those). What a user sees: the real
`diffusion-studio` script of this Python environment (`<venv>/bin/diffusion-studio`) under
a real X server, Xvfb at 1280x720, started by this benchmark on a free display. The time runs
from spawning the command to the first moment a window whose name contains "Diffusion Studio"
is viewable, polled every 20 ms over one Xlib connection (`WindowWatcher`: the X-level test
of `xdotool search --onlyvisible --name`, without a process and a new X connection per poll,
which cost CPU beside the launch and now and then made the app's own connection fail). Qt
maps the window when its first frame is ready; the paint follows within milliseconds (the
offscreen driver below checks it comes before torch).
Each launch gets fresh settings and data folders (XDG_CONFIG_HOME, XDG_DATA_HOME and
DIFFUSION_STUDIO_DATA_DIR in a new temporary folder): a first launch, or a restored session
whose settings say the last tab was Playback or Training. "busy" runs keep one core busy with a
`python -c "while True: pass"` process this benchmark starts and kills (in a finally). The
command is killed once its window is seen (or after a time limit) before the next launch.

For context, as before (issue 5): an offscreen `python -c` driver does what the command does
(app.cli.main's imports, then run_app's make_qt_application, MainWindow, show) and times the
shown window after its first processed events, and the engine ready (torch, pyqtgraph and the
panels imported in the background, the shown tab built); a 10 ms QTimer in the GUI thread
meanwhile gives the longest stall of the window while the engine loads (the longest gap
between two ticks, the shown tab's build included); and `python -c "import torch"` and
`python -c "pass"`.

Needs Xvfb, xdotool (to wait for the server) and libX11 (Debian: xvfb, xdotool); without them
only the offscreen part runs.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.speed_common import Target, load_average, print_table, print_targets, write_json

ROOT = Path(__file__).resolve().parent.parent
WINDOW_NAME = "Diffusion Studio"
SCREEN = "1280x720x24"
POLL_S = 0.02
LAUNCH_LIMIT_S = 60.0
TAB_INDEX = {"first launch": None, "restored Training": 2, "restored Playback": 3}

DRIVER = """
import time
t0 = time.perf_counter()
import json, os, sys
from diffusion_studio.app.cli import main                      # what the diffusion-studio script imports
t_cli = time.perf_counter()
from diffusion_studio.app.gui_env import prepare_gui_threading
prepare_gui_threading()
from diffusion_studio.app.main_window import MainWindow, make_qt_application   # what main() imports for the GUI
t_import = time.perf_counter()
torch_before_show = "torch" in sys.modules
from PySide6.QtCore import QSettings, QTimer
QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, os.environ["DS_BENCH_CFG"])
app = make_qt_application()
window = MainWindow()
window.show()
app.processEvents()                           # the first paint
t_shown = time.perf_counter()
times = {}
ticks = [time.perf_counter()]                 # a 10 ms probe: how long the GUI thread stalls
probe = QTimer()
probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
probe.start(10)
def ready():
    times["ready"] = time.perf_counter()
    QTimer.singleShot(0, app.quit)
window.engine_ready.connect(ready)
app.exec()
gaps = sorted(b - a for a, b in zip(ticks, ticks[1:]))
print(json.dumps({
    "import_cli_s": t_cli - t0,
    "import_gui_s": t_import - t_cli,
    "window_shown_s": t_shown - t0,
    "engine_ready_s": times["ready"] - t0,
    "longest_stall_s": gaps[-1] if gaps else 0.0,
    "stalls_over_100ms": sum(g > 0.1 for g in gaps),
    "torch_before_show": torch_before_show,
}), flush=True)
os._exit(0)
"""


# ---------------------------------------------------------------------- the real command under X


def free_display() -> int:
    """A display number with no X server (no lock file)."""
    for number in range(140, 240):
        if not Path(f"/tmp/.X{number}-lock").exists():
            return number
    raise SystemExit("no free X display number found")


def start_xvfb() -> tuple[subprocess.Popen, str]:
    number = free_display()
    display = f":{number}"
    server = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", SCREEN, "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = dict(os.environ, DISPLAY=display)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        probe = subprocess.run(["xdotool", "getdisplaygeometry"], env=env, capture_output=True)
        if probe.returncode == 0:
            return server, display
        time.sleep(0.1)
    server.kill()
    raise SystemExit("Xvfb did not start")


def command_path() -> Path:
    """The `diffusion-studio` script beside this interpreter (the venv's)."""
    script = Path(sys.executable).parent / "diffusion-studio"
    if not script.is_file():
        raise SystemExit(f"{script} not found: install the project (pip install -e .)")
    return script


def launch_env(display: str, folder: Path, tab: int | None) -> dict[str, str]:
    """Fresh settings and data in `folder`; with `tab`, settings whose last tab was that one."""
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    env.update(
        DISPLAY=display,
        XDG_CONFIG_HOME=str(folder / "config"),
        XDG_DATA_HOME=str(folder / "share"),
        DIFFUSION_STUDIO_DATA_DIR=str(folder / "data"),
    )
    if tab is not None:
        settings = folder / "config" / "diffusion-studio" / "settings.ini"
        settings.parent.mkdir(parents=True)
        settings.write_text(f"[window]\ntab={tab}\n")
    return env


class XWindowAttributes(ctypes.Structure):
    """Xlib's XWindowAttributes (only map_state is read)."""

    _fields_ = [
        ("x", ctypes.c_int),
        ("y", ctypes.c_int),
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("border_width", ctypes.c_int),
        ("depth", ctypes.c_int),
        ("visual", ctypes.c_void_p),
        ("root", ctypes.c_ulong),
        ("class_", ctypes.c_int),
        ("bit_gravity", ctypes.c_int),
        ("win_gravity", ctypes.c_int),
        ("backing_store", ctypes.c_int),
        ("backing_planes", ctypes.c_ulong),
        ("backing_pixel", ctypes.c_ulong),
        ("save_under", ctypes.c_int),
        ("colormap", ctypes.c_ulong),
        ("map_installed", ctypes.c_int),
        ("map_state", ctypes.c_int),
        ("all_event_masks", ctypes.c_long),
        ("your_event_mask", ctypes.c_long),
        ("do_not_propagate_mask", ctypes.c_long),
        ("override_redirect", ctypes.c_int),
        ("screen", ctypes.c_void_p),
    ]


IS_VIEWABLE = 2  # XWindowAttributes.map_state: mapped, and every ancestor mapped


class WindowWatcher:
    """One Xlib connection that looks for a viewable window whose name contains a text: the
    windows under the root (two levels deep, for a window manager's frames), their map state
    (XGetWindowAttributes) and their WM_NAME (XFetchName). The same test as `xdotool search
    --onlyvisible --name`, without starting a process (and an X connection) every poll."""

    def __init__(self, display: str) -> None:
        self.x = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
        self.x.XOpenDisplay.restype = ctypes.c_void_p
        self.x.XOpenDisplay.argtypes = [ctypes.c_char_p]
        self.x.XDefaultRootWindow.restype = ctypes.c_ulong
        self.x.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        self.x.XQueryTree.argtypes = [ctypes.c_void_p, ctypes.c_ulong] + [ctypes.c_void_p] * 4
        self.x.XGetWindowAttributes.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p]
        self.x.XFetchName.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p]
        self.x.XFree.argtypes = [ctypes.c_void_p]
        self.x.XCloseDisplay.argtypes = [ctypes.c_void_p]
        self.display = self.x.XOpenDisplay(display.encode())
        if not self.display:
            raise SystemExit(f"cannot open X display {display}")
        self.root = self.x.XDefaultRootWindow(self.display)

    def children(self, window: int) -> list[int]:
        root, parent = ctypes.c_ulong(), ctypes.c_ulong()
        kids, count = ctypes.POINTER(ctypes.c_ulong)(), ctypes.c_uint()
        if not self.x.XQueryTree(
            self.display,
            window,
            ctypes.byref(root),
            ctypes.byref(parent),
            ctypes.byref(kids),
            ctypes.byref(count),
        ):
            return []
        found = [kids[i] for i in range(count.value)]
        if kids:
            self.x.XFree(kids)
        return found

    def viewable(self, window: int) -> bool:
        attributes = XWindowAttributes()
        ok = self.x.XGetWindowAttributes(self.display, window, ctypes.byref(attributes))
        return bool(ok) and attributes.map_state == IS_VIEWABLE

    def name(self, window: int) -> str:
        text = ctypes.c_char_p()
        if not self.x.XFetchName(self.display, window, ctypes.byref(text)) or not text.value:
            return ""
        value = text.value.decode("latin-1")
        self.x.XFree(text)
        return value

    def visible(self, name: str) -> bool:
        for top in self.children(self.root):
            for window in (top, *self.children(top)):
                if name in self.name(window) and self.viewable(window):
                    return True
        return False

    def close(self) -> None:
        self.x.XCloseDisplay(self.display)


def time_to_window(display: str, watcher: WindowWatcher, tab: int | None) -> float:
    """Seconds from spawning `diffusion-studio` to its window mapped and viewable."""
    with tempfile.TemporaryDirectory(prefix="ds-start-") as folder:
        env = launch_env(display, Path(folder), tab)
        log = Path(folder) / "stderr.txt"
        started = time.perf_counter()
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [str(command_path())], cwd=folder, env=env, stdout=stderr, stderr=stderr
            )
        try:
            while not watcher.visible(WINDOW_NAME):
                if process.poll() is not None:
                    raise SystemExit(
                        f"diffusion-studio exited ({process.returncode}):\n{log.read_text()}"
                    )
                if time.perf_counter() - started > LAUNCH_LIMIT_S:
                    raise SystemExit(f"no window within {LAUNCH_LIMIT_S:.0f} s")
                time.sleep(POLL_S)
            return time.perf_counter() - started
        finally:
            process.kill()
            process.wait()


def start_busy_core() -> subprocess.Popen:
    """One core kept busy, as a browser or a video call keeps a student's laptop."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure_real_window(runs: int) -> dict[str, list[float]]:
    """Every scenario (first launch, restored Training, restored Playback), quiet and busy."""
    server, display = start_xvfb()
    watcher = WindowWatcher(display)
    results: dict[str, list[float]] = {}
    try:
        time_to_window(display, watcher, None)  # warm-up: disk caches, fontconfig (not counted)
        for load in ("quiet", "busy"):
            busy = start_busy_core() if load == "busy" else None
            try:
                if busy is not None:
                    time.sleep(0.5)  # the burner is up to speed
                for scenario, tab in TAB_INDEX.items():
                    results[f"{scenario}, {load}"] = [
                        time_to_window(display, watcher, tab) for _ in range(runs)
                    ]
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    finally:
        watcher.close()
        server.kill()
        server.wait()
    return results


# ---------------------------------------------------------------------- offscreen, for context


def child_env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "offscreen"
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


def measure_offscreen(runs: int) -> tuple[dict[str, list[float]], list[dict]]:
    commands = {
        "offscreen driver": DRIVER,
        "import torch": "import torch",
        "python -c pass": "pass",
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    details: list[dict] = []
    for _ in range(runs):
        for name, code in commands.items():
            with tempfile.TemporaryDirectory(prefix="ds-start-") as folder:
                elapsed, info = time_command(code, child_env(Path(folder)))
            times[name].append(elapsed)
            if info:
                details.append(info)
    return times, details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed_startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="launches per scenario (default 3)")
    parser.add_argument(
        "--offscreen-runs", type=int, default=3, help="offscreen driver runs (default 3)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)

    print(f"load average before: {load_average()}")
    real: dict[str, list[float]] = {}
    if shutil.which("Xvfb") and shutil.which("xdotool"):
        real = measure_real_window(args.runs)
        print(f"\n`diffusion-studio` to a visible window under Xvfb, median of {args.runs}:")
        print_table(
            ["launch", "median", "min", "max"],
            [
                [name, f"{np.median(v):.2f} s", f"{min(v):.2f} s", f"{max(v):.2f} s"]
                for name, v in real.items()
            ],
        )
    else:
        print("Xvfb or xdotool not found: the real window is not timed")
    times, details = measure_offscreen(args.offscreen_runs)
    print(f"\nOffscreen, median of {args.offscreen_runs} fresh processes:")
    print_table(
        ["command", "median", "min", "max"],
        [
            [name, f"{np.median(v):.2f} s", f"{min(v):.2f} s", f"{max(v):.2f} s"]
            for name, v in times.items()
        ],
    )
    parts = {
        key: float(np.median([d[key] for d in details]))
        for key in (
            "import_cli_s",
            "import_gui_s",
            "window_shown_s",
            "engine_ready_s",
            "longest_stall_s",
            "stalls_over_100ms",
        )
    }
    print_table(
        ["in the driver", "median"],
        [
            [
                key.removesuffix("_s").replace("_", " "),
                f"{v:.2f} s" if key.endswith("_s") else f"{v:g}",
            ]
            for key, v in parts.items()
        ],
    )
    torch_early = any(d.get("torch_before_show") for d in details)
    print(f"torch imported before the window is shown: {torch_early}")
    print(f"load average after: {load_average()}")

    medians = {name: float(np.median(v)) for name, v in real.items()}
    targets: list[Target] = []
    if medians:
        quiet, busy = medians["first launch, quiet"], medians["first launch, busy"]
        targets = [
            Target("window, quiet", quiet, 1.5, "s"),
            Target("window, one core busy", busy, 2.5, "s"),
        ]
        for scenario in ("restored Training", "restored Playback"):
            for load, base in (("quiet", quiet), ("busy", busy)):
                extra = medians[f"{scenario}, {load}"] - base
                targets.append(Target(f"{scenario}, {load}: extra", extra, 0.3, "s"))
        print_targets(targets)
    write_json(
        args.json,
        "startup",
        {"runs": args.runs, "offscreen_runs": args.offscreen_runs, "screen": SCREEN},
        {
            "real_window_median_s": medians,
            "real_window_runs_s": real,
            "offscreen_median_s": {name: float(np.median(v)) for name, v in times.items()},
            "offscreen_driver_parts_median_s": parts,
            "torch_before_show": torch_early,
        },
        targets,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
