"""Forward view speed: x_t for a new slider position on a 512x512 RGB image.

    python -m benchmarks.speed_forward [--calls 1000] [--moves 200] [--json PATH]

Two measurements (issue 5, item 1; targets: median < 10 ms, p99 < 25 ms):
  core  `core.forward.ForwardProcess.x_t_uint8(step)` for random steps (what the CLI uses);
  gui   the real `app.panels.forward_panel.ForwardPanel` (offscreen): from
        `slider.setValue(k)` until the x_t image item has been repainted, i.e. events are
        processed until pyqtgraph's ImageItem has rendered the new array. Split into the
        synchronous part (setValue: x_t, histogram, labels, setImage) and the paint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.speed_common import (
    SUMMARY_HEADER,
    Target,
    print_table,
    print_targets,
    qt_application,
    summarize,
    summary_row,
    write_json,
)
from diffusion_studio.core.data import default_photo_path, load_image
from diffusion_studio.core.forward import ForwardProcess
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig

SIZE = 512
PAINT_TIMEOUT_S = 5.0


def test_image() -> tuple[Path, np.ndarray]:
    """The shipped default photo as float32 (3, 512, 512) in [-1, 1], and its path."""
    path = default_photo_path()
    return path, load_image(path, size=SIZE, channels=3)


def time_core(image: np.ndarray, calls: int, seed: int) -> list[float]:
    """Milliseconds per `x_t_uint8(step)` for `calls` random steps (after a warm-up)."""
    process = ForwardProcess(NoiseSchedule(ScheduleConfig()), image, seed=0)
    rng = np.random.default_rng(seed)
    steps = rng.integers(0, process.num_steps + 1, size=calls + 10)
    times = []
    for i, step in enumerate(steps):
        started = time.perf_counter()
        frame = process.x_t_uint8(int(step))
        elapsed = time.perf_counter() - started
        assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8
        if i >= 10:
            times.append(1000.0 * elapsed)
    return times


def time_gui(path: Path, moves: int, seed: int) -> dict[str, list[float]]:
    """Milliseconds from setValue to the repainted x_t image, for `moves` slider moves."""
    from PySide6.QtWidgets import QApplication

    from diffusion_studio.app.panels.forward_panel import ForwardPanel

    app = qt_application()
    panel = ForwardPanel()
    panel.resize(1360, 820)
    panel.show()
    if not panel.load_image(path):
        raise SystemExit(f"the Forward panel could not load {path}")
    if panel.xt is None or panel.xt.shape[:2] != (SIZE, SIZE):
        raise SystemExit(f"expected a {SIZE}x{SIZE} x_t, got {getattr(panel.xt, 'shape', None)}")
    item = panel.view.item
    slider = panel.slider
    rng = np.random.default_rng(seed)
    result: dict[str, list[float]] = {"total": [], "set_value": [], "paint": []}
    for i in range(moves + 5):
        for _ in range(3):  # let earlier work settle
            app.processEvents()
        value = int(rng.integers(0, slider.maximum() + 1))
        if value == slider.value():
            value = (value + 1) % (slider.maximum() + 1)
        old = panel.view.image
        started = time.perf_counter()
        slider.setValue(value)
        set_done = time.perf_counter()
        while item._renderRequired:  # pyqtgraph clears it when paint() renders the new array
            QApplication.processEvents()
            if time.perf_counter() - started > PAINT_TIMEOUT_S:
                raise SystemExit("the x_t image was not repainted (is the panel shown?)")
        done = time.perf_counter()
        if panel.view.image is old:
            raise SystemExit("the displayed array did not change")
        if i >= 5:
            result["total"].append(1000.0 * (done - started))
            result["set_value"].append(1000.0 * (set_done - started))
            result["paint"].append(1000.0 * (done - set_done))
    panel.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed_forward", description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="x_t_uint8 calls (default 1000)")
    parser.add_argument("--moves", type=int, default=200, help="slider moves (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)

    path, image = test_image()
    core_ms = summarize(time_core(image, args.calls, args.seed))
    gui = {k: summarize(v) for k, v in time_gui(path, args.moves, args.seed).items()}
    print(f"Forward view, {SIZE}x{SIZE} RGB ({path.name})")
    print_table(
        SUMMARY_HEADER,
        [
            summary_row("core x_t_uint8(step)", core_ms),
            summary_row("panel: setValue -> repainted", gui["total"]),
            summary_row("  of which setValue (x_t, histogram)", gui["set_value"]),
            summary_row("  of which paint", gui["paint"]),
        ],
    )
    targets = [
        Target("core median", core_ms.median, 10.0, "ms"),
        Target("core p99", core_ms.p99, 25.0, "ms"),
        Target("panel median", gui["total"].median, 10.0, "ms"),
        Target("panel p99", gui["total"].p99, 25.0, "ms"),
    ]
    print_targets(targets)
    write_json(
        args.json,
        "forward",
        {"image": path.name, "size": SIZE, "calls": args.calls, "moves": args.moves},
        {"core_ms": core_ms.to_dict()} | {f"panel_{k}_ms": s.to_dict() for k, s in gui.items()},
        targets,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
