"""Screenshots of the panels and a reverse-process GIF, for the README and the docs.

    python -m diffusion_studio.app.screenshots --out docs/images

Starts the real main window offscreen (QT_QPA_PLATFORM=offscreen unless set), with its
settings and data in a temporary folder, and drives every panel as a user would:

- Schedules: cosine and sigmoid added to the comparison, the crosshair at t = 300;
- Forward: the astronaut at t = 300 (and the moons at t = 60);
- Training: a short digits run (a small step budget) until the loss curve and a preview show;
- Playback: DDPM sampling with the bundled pretrained digits model (or, when there is none,
  the model just trained), scrubbed to the middle frame;
- Sampler Lab: the same model under the first three registered samplers at their default
  step counts, from the same noise, shown half-way through their runs;
- and the views added with flow matching and the dashboards: the Schedules tab with flow
  matching's path shown, the Forward tab on the moons set (x_t over its density), the
  Training tab's dashboard after the digits run, the 2-D field window on the shipped
  `gaussians` model (learned beside exact), and File > Watch Run… following a CLI run of
  moons (trained first, in a subprocess, with its metrics log).

and writes schedules.png, forward.png, training.png, playback.png, reverse.gif (made by
the Playback panel's own Export GIF path), sampler_lab.png (DDPM 100, DDIM 20, DPM-Solver++
2M 20), sampler_lab_convergence.png (the moons model), schedules_flow.png, forward_2d.png,
training_dashboard.png, field_view.png and watch_run.png. Seeds are fixed, so the pictures only change when
the code or the models do (the training run's speed figures vary from machine to machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WINDOW_SIZE = (1360, 860)
FORWARD_T = 300
FORWARD_2D_T = 60  # moons on the linear schedule: blurred, not yet melted
TRAIN_STEPS = 150
PREVIEW_EVERY = 50
GIF_FRAMES = 48
GIF_FPS = 12
GIF_SCALE = 2
TIMEOUT_S = 600.0


# The Lab's columns in the picture: DDPM's default beside two samplers at a fifth of its work
LAB_COLUMNS = (("ddpm", 100), ("ddim", 20), ("dpmpp-2m", 20))


def wait_until(condition: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    """Run the event loop until `condition()` holds (RuntimeError after the timeout)."""
    from PySide6.QtCore import QCoreApplication

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for the window")
        QCoreApplication.processEvents()
        time.sleep(0.01)


def settle(seconds: float = 0.3) -> None:
    """Let timers fire and plots repaint."""
    end = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= end)


def grab(window, path: Path) -> None:
    window.statusBar().clearMessage()
    settle()
    if not window.grab().save(str(path)):
        raise RuntimeError(f"could not write {path}")
    print(f"wrote {path}", flush=True)


def shoot(out: Path, train_steps: int) -> None:
    import torch

    from diffusion_studio.app import dialogs
    from diffusion_studio.app.main_window import MainWindow, make_application
    from diffusion_studio.app.widgets import set_combo_data
    from diffusion_studio.core.data import sample_photo_paths
    from diffusion_studio.core.samplers import sampler_defaults

    make_application()
    torch.set_num_threads(os.cpu_count() or 1)  # nobody is using the window: all cores train
    window = MainWindow()
    window.resize(*WINDOW_SIZE)
    window.show()
    settle(0.5)

    # Schedules: linear (current) against cosine and sigmoid, crosshair at t = 300.
    schedules = window.schedules
    window.tabs.setCurrentWidget(schedules)
    for kind in ("cosine", "sigmoid"):
        set_combo_data(schedules.kind, kind)
        schedules.add_button.click()
    set_combo_data(schedules.kind, "linear")
    schedules.set_hover_t(FORWARD_T)
    grab(window, out / "schedules.png")
    schedules.show_flow.setChecked(True)  # flow matching's straight path beside them
    grab(window, out / "schedules_flow.png")
    schedules.show_flow.setChecked(False)

    # Forward: the astronaut at t = 300 (slider position t + 1; 0 is the clean image).
    forward = window.forward
    window.tabs.setCurrentWidget(forward)
    astronaut = next(p for p in sample_photo_paths() if p.stem == "astronaut")
    forward.load_image(astronaut)
    forward.slider.setValue(FORWARD_T + 1)
    grab(window, out / "forward.png")
    forward.set_source("moons")  # the 2-D forward process: x_t over its density, half melted
    forward.slider.setValue(FORWARD_2D_T + 1)
    grab(window, out / "forward_2d.png")
    forward.set_source("image")

    # Training: digits with the preset's settings, but a small step budget.
    training = window.training
    window.tabs.setCurrentWidget(training)
    set_combo_data(training.source, "digits")
    set_combo_data(training.budget, "steps")
    training.max_steps.setValue(train_steps)
    training.preview_every.setValue(PREVIEW_EVERY)
    training.autosave_minutes.setValue(0.0)
    started = time.monotonic()
    if not training.start():
        raise RuntimeError("training did not start")
    wait_until(lambda: not training.runner.is_running and training.last_result is not None)
    print(f"trained {train_steps} steps in {time.monotonic() - started:.0f} s", flush=True)
    training.redraw_now()
    grab(window, out / "training.png")
    training.views.setCurrentWidget(training.dashboard)
    settle(0.5)
    grab(window, out / "training_dashboard.png")
    training.views.setCurrentIndex(0)

    # Playback: the pretrained digits model when bundled, else the one just trained.
    playback = window.playback
    window.tabs.setCurrentWidget(playback)
    if not set_combo_data(playback.model_choice, "pretrained:digits"):
        set_combo_data(playback.model_choice, "trained")
    set_combo_data(playback.sampler_kind, "ddpm")
    if not playback.start_sampling():
        raise RuntimeError("sampling did not start")
    wait_until(lambda: not playback.runner.is_running)
    playback.show_frame(len(playback.trajectory) // 2)
    grab(window, out / "playback.png")

    # The GIF, through the Export GIF button's own code path (the file dialog answered here).
    set_combo_data(playback.export_view, "grid_xt")
    playback.export_frames.setValue(GIF_FRAMES)
    playback.export_fps.setValue(GIF_FPS)
    playback.export_scale.setValue(GIF_SCALE)
    gif = out / "reverse.gif"
    dialogs.ask_save_path = lambda *_args, **_kwargs: gif
    playback.gif_button.click()
    wait_until(lambda: not playback.export_runner.is_running)
    if not gif.is_file():
        raise RuntimeError(f"the GIF export did not write {gif}")
    print(f"wrote {gif}", flush=True)

    # Sampler Lab: Playback's model, three samplers side by side, half-way through.
    lab = window.lab
    window.tabs.setCurrentWidget(lab)
    lab.num_samples.setValue(9)
    for column, (name, steps) in zip(lab.columns, LAB_COLUMNS, strict=False):
        config = sampler_defaults(name, column.form.clip_x0.isChecked())
        column.form.set_config(dataclasses.replace(config, num_inference_steps=steps))
    if not lab.start_sampling():
        raise RuntimeError("the Sampler Lab did not start")
    wait_until(lambda: not lab.runner.is_running)
    lab.show_progress(0.5)
    grab(window, out / "sampler_lab.png")

    # ... and its convergence plot on the moons model (a 2-D model: seconds, not minutes)
    set_combo_data(playback.model_choice, "pretrained:moons")
    wait_until(lambda: lab.checkpoint is not None and lab.checkpoint.is_points)
    lab.view_tabs.setCurrentIndex(2)
    lab.conv_samples.setValue(256)
    lab.conv_most.setValue(200)
    if not lab.start_convergence():
        raise RuntimeError("the convergence runs did not start")
    wait_until(lambda: not lab.convergence_runner.is_running)
    grab(window, out / "sampler_lab_convergence.png")

    # The 2-D field window on the shipped gaussians model: learned beside exact, at t ~ T/4
    window.tabs.setCurrentWidget(playback)
    set_combo_data(playback.model_choice, "pretrained:gaussians")
    field = playback.open_field_view()
    if field is None:
        raise RuntimeError("the 2-D field window did not open")
    field.resize(1200, 520)
    field.slider.setValue(field.slider.maximum() // 4)
    wait_until(lambda: field.particles is not None and field.particles.index == field.index)
    settle(1.5)  # the particles move a little way
    field.play_button.setChecked(False)
    grab_widget(field, out / "field_view.png")
    field.close()

    # File > Watch Run… on a CLI run of moons (its metrics log and previews beside it)
    run_folder = Path(tempfile.mkdtemp(prefix="diffusion-studio-run-")) / "moons-run"
    watch = window.open_watch_window(train_watched_run(run_folder))
    if watch is None:
        raise RuntimeError("the Watch Run window did not open")
    watch.resize(1100, 700)
    wait_until(lambda: len(watch.dashboard.steps) >= WATCHED_STEPS)
    settle(1.0)
    grab_widget(watch, out / "watch_run.png")
    watch.close()
    window.close()
    shutil.rmtree(run_folder.parent, ignore_errors=True)


WATCHED_STEPS = 600


def train_watched_run(folder: Path) -> Path:
    """Train moons with the CLI into `folder` (made here), as a user would before watching it."""
    import subprocess

    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "diffusion_studio.app", "train", "--data", "moons"]
    command += ["--steps", str(WATCHED_STEPS), "--out", str(folder / "moons.safetensors")]
    subprocess.run(
        command, check=True, timeout=TIMEOUT_S, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    return folder


def grab_widget(widget, path: Path) -> None:
    """Save a top-level window other than the main one (a dialog) as a PNG."""
    settle()
    if not widget.grab().save(str(path)):
        raise RuntimeError(f"could not write {path}")
    print(f"wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.screenshots", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="output folder")
    parser.add_argument(
        "--train-steps", type=int, default=TRAIN_STEPS, help="training steps for training.png"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="diffusion-studio-screenshots-") as tmp:
        from diffusion_studio.app.settings import DATA_DIR_ENV

        os.environ[DATA_DIR_ENV] = str(Path(tmp) / "data")
        from PySide6.QtCore import QSettings

        QSettings.setPath(
            QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(Path(tmp) / "settings")
        )
        shoot(args.out.resolve(), args.train_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
