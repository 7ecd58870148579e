"""Playback's guidance sweep: classes x guidance scales from the same noise, in a window.

The window asks its owner (Playback) for the model, sampler and seed when a sweep starts,
runs `core.guidance_sweep.run_guidance_sweep` in the owner's job runner (cancellable, progress
in the status bar and here), shows `core.guidance_sweep.render_sweep`'s picture and exports it
as a PNG with the owner's export runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QDialog, QLabel, QLineEdit, QVBoxLayout, QWidget

from diffusion_studio.app import dialogs
from diffusion_studio.app.widgets import (
    ErrorLabel,
    ImageView,
    button,
    button_row,
    check_box,
    form_group,
)
from diffusion_studio.app.worker import Job, JobControl, JobRunner, JobStatus
from diffusion_studio.core.checkpoint import Checkpoint
from diffusion_studio.core.errors import DiffusionStudioError
from diffusion_studio.core.guidance_sweep import (
    DEFAULT_SCALES,
    GuidanceSweep,
    SweepProgress,
    SweepRequest,
    check_sweep,
    parse_classes,
    parse_scales,
    render_sweep,
    run_guidance_sweep,
    save_sweep_png,
    sweep_classes,
)
from diffusion_studio.core.samplers import SamplerConfig

DEFAULT_SCALES_TEXT = ", ".join(f"{s:g}" for s in DEFAULT_SCALES)  # "0, 1, 2, 4, 8"
EXPLAIN = (
    "Each row samples the chosen classes at one guidance scale s, every row from the same "
    "noise (one per column): s = 0 and the no-label row are the unconditional model, s = 1 "
    "the plain conditional model, larger s pushes each sample towards its class."
)


@dataclass(frozen=True)
class SweepSource:
    """What the owner samples with now: its model, sampler settings, seed and model name."""

    checkpoint: Checkpoint
    sampler: SamplerConfig
    seed: int
    model_name: str = ""


class GuidanceSweepDialog(QDialog):
    """Scales and classes to sweep, Sweep / Cancel, the grid and Export PNG…

    source: called when a sweep starts (raises DiffusionStudioError when the owner cannot
    sample now); runner: the owner's job runner for sweeps (the status bar tracks it);
    export: starts an export job writing a file (the owner's `start_export`).
    """

    def __init__(
        self,
        source: Callable[[], SweepSource],
        runner: JobRunner,
        export: Callable[[Job, Path], None],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Guidance sweep")
        self.source = source
        self.runner = runner
        self.export = export
        self.sweep: GuidanceSweep | None = None
        self.picture: np.ndarray | None = None  # render_sweep(self.sweep), what is shown
        self.made_with: tuple[SweepSource, SweepRequest] | None = None
        self.scales = QLineEdit(DEFAULT_SCALES_TEXT)
        self.scales.setToolTip("Guidance scales, one row each, separated by commas (0 to 20)")
        self.classes = QLineEdit("all")
        self.classes.setToolTip("Class labels, one column each, separated by commas, or 'all'")
        self.no_label_row = check_box(
            "Add a no-label row",
            "A first row sampled without a label (the unconditional model)",
            True,
        )
        self.sweep_button = button("Sweep", "Sample every class at every scale")
        self.cancel_button = button("Cancel", "Stop the sweep")
        self.export_button = button("Export PNG…", "Save the grid with its captions as a PNG")
        self.progress = QLabel("")
        self.explain = QLabel(EXPLAIN)
        self.explain.setWordWrap(True)
        self.error = ErrorLabel()
        self.view = ImageView()
        self.view.setMinimumSize(480, 360)
        self.sweep_button.clicked.connect(self.start_sweep)
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.export_button.clicked.connect(self.export_png)
        self.scales.textChanged.connect(self.update_buttons)
        self.classes.textChanged.connect(self.update_buttons)
        runner.progressed.connect(self._on_record)
        runner.failed.connect(self._on_failed)
        runner.ended.connect(self.update_buttons)
        layout = QVBoxLayout(self)
        layout.addWidget(
            form_group(
                "Sweep",
                [
                    ("Guidance scales", self.scales),
                    ("Classes", self.classes),
                    self.no_label_row,
                    self.explain,
                ],
            )
        )
        layout.addWidget(self.error)
        layout.addLayout(button_row(self.sweep_button, self.cancel_button, self.export_button))
        layout.addWidget(self.progress)
        layout.addWidget(self.view, 1)
        self.update_buttons()

    # ------------------------------------------------------------------ settings

    def request(self) -> tuple[SweepSource, SweepRequest]:
        """The owner's model, sampler and seed with this window's scales and classes, checked
        by core (DiffusionStudioError with the reason when refused)."""
        source = self.source()
        request = SweepRequest(
            sampler=source.sampler,
            classes=parse_classes(self.classes.text(), sweep_classes(source.checkpoint)),
            scales=parse_scales(self.scales.text()),
            seed=source.seed,
            unconditional_row=self.no_label_row.isChecked(),
        )
        check_sweep(source.checkpoint, request)
        return source, request

    def problem(self) -> str:
        """Why Sweep cannot start now ('' when it can)."""
        try:
            self.request()
        except DiffusionStudioError as exc:
            return str(exc)
        return ""

    def update_buttons(self, *_args: object) -> None:
        running = self.runner.is_running
        problem = self.problem()
        self.error.show_message(problem)
        self.sweep_button.setEnabled(not running and not problem)
        self.cancel_button.setEnabled(running)
        self.export_button.setEnabled(self.sweep is not None and not running)

    # ------------------------------------------------------------------ sweeping

    def start_sweep(self) -> bool:
        """Run the sweep in the worker. False (and a message) when it cannot start."""
        if self.runner.is_running:
            return False
        try:
            source, request = self.request()
        except DiffusionStudioError as exc:
            self.error.show_message(str(exc))
            dialogs.show_error(self, "Cannot sweep", str(exc))
            return False
        self.made_with = (source, request)
        ckpt = source.checkpoint

        def run() -> Iterator[SweepProgress | GuidanceSweep]:  # worker thread
            yield from run_guidance_sweep(ckpt, request)

        self.runner.start(Job("Guidance sweep", run, JobControl(), describe=describe))
        self.progress.setText("Sweeping…")
        self.update_buttons()
        return True

    def _on_record(self, record: object) -> None:
        if isinstance(record, SweepProgress):
            status = describe(record)
            self.progress.setText(status.text if status is not None else "")
        elif isinstance(record, GuidanceSweep):
            self.show_sweep(record)

    def show_sweep(self, sweep: GuidanceSweep) -> None:
        """Show a finished sweep (its rendered, captioned grid)."""
        self.sweep = sweep
        self.picture = render_sweep(sweep)
        self.view.set_image(self.picture)
        name = self.made_with[0].model_name if self.made_with else ""
        rows, cols = sweep.samples.shape[:2]
        self.progress.setText(
            f"{name + ': ' if name else ''}{rows} rows x {cols} classes, {sweep.description}"
        )
        self.update_buttons()

    def _on_failed(self, message: str) -> None:
        self.progress.setText("")
        dialogs.show_error(self, "Guidance sweep failed", message)

    # ------------------------------------------------------------------ export

    def export_png(self) -> None:
        """Write the shown grid as a PNG (in the worker)."""
        sweep = self.sweep
        if sweep is None or self.made_with is None:
            dialogs.show_error(self, "Export", "Nothing to export yet: press Sweep first.")
            return
        path = dialogs.ask_save_path(
            self, "Export guidance sweep", dialogs.PNG_FILTER, self.file_name()
        )
        if path is None:
            return

        def run() -> Iterator[Path]:
            yield save_sweep_png(path, sweep)

        self.export(Job("Export PNG", run, describe=lambda _p: JobStatus("Writing PNG…")), path)

    def file_name(self) -> str:
        """'digits_guidance_dpm_solver_20steps_seed0.png' for the shown sweep."""
        if self.made_with is None:
            return "guidance_sweep.png"
        source, request = self.made_with
        ckpt = source.checkpoint
        name = str((ckpt.data or {}).get("name") or ckpt.model_config.kind)
        stem = (
            f"{name}_guidance_{request.sampler.kind}_"
            f"{request.sampler.num_inference_steps}steps_seed{request.seed}"
        )
        return dialogs.file_stem(stem) + ".png"

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt's name
        """Closing the window stops a running sweep."""
        if self.runner.is_running:
            self.runner.cancel()
        super().closeEvent(event)


def describe(record: object) -> JobStatus | None:
    """The status bar's line for a sweep's progress record."""
    if not isinstance(record, SweepProgress):
        return None
    return JobStatus(
        f"Guidance sweep: row {record.run}/{record.runs} ({record.title}), "
        f"step {record.step}/{record.steps}",
        record.fraction,
    )
