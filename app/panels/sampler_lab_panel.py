"""Sampler Lab: two to four samplers side by side on one model, from the same noise.

The model is Playback's choice (the panel link "model_changed"). Each column is a sampler
form (`app.sampler_form.SamplerForm`, generated from the sampler registry); Sample runs every
column in the worker, one after another, each from a CPU generator seeded with the same seed,
so every column starts from the same initial noise (`core.sampling.sample` draws it first,
then scales it by the sampler's init_noise_sigma). Playback is in lockstep: one slider over
progress 0..1, each column showing its frame nearest to that fraction of its run, labelled with
the network evaluations done so far out of its total (`Sampler.total_evaluations`; guidance
doubles the actual calls). For a 2-D model the paths of a few points under every sampler are
drawn in one plot. The Convergence tab runs `core.convergence` in the worker: the RMS error of
every deterministic sampler's samples against a high-accuracy reference, against network
evaluations, on log-log axes.

A flow-matching model (core.flow) is compared with the flow samplers: every column's form
lists the samplers of the model's objective, and a model of the other objective gives the
columns that objective's samplers in registry order (each at its defaults).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyqtgraph as pg
import torch
from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from diffusion_studio.app import dialogs
from diffusion_studio.app.panels.base import Panel
from diffusion_studio.app.sampler_form import SamplerForm
from diffusion_studio.app.settings import read_json, write_json
from diffusion_studio.app.widgets import (
    POINT_EXTENT,
    REDRAW_INTERVAL_MS,
    ErrorLabel,
    FieldCheck,
    ImageView,
    Persistent,
    TidyAxis,
    button,
    button_row,
    color,
    combo_box,
    control_column,
    controls_beside_views,
    double_box,
    form_group,
    guard_wheel_in,
    pinned_below,
    points_plot,
    scatter_item,
    spin_box,
)
from diffusion_studio.app.worker import Job, JobControl, JobRunner, JobStatus
from diffusion_studio.core.checkpoint import Checkpoint, build_model_from_checkpoint
from diffusion_studio.core.convergence import (
    ConvergenceProgress,
    ConvergenceRecord,
    check_step_counts,
    checkpoint_convergence,
    default_step_counts,
    deterministic_samplers,
    records_table,
    reference_config,
    step_counts_up_to,
)
from diffusion_studio.core.errors import DiffusionStudioError
from diffusion_studio.core.export import (
    caption_frame,
    make_grid,
    render_points,
    save_csv,
    save_gif,
    save_png,
    upscale_nearest,
)
from diffusion_studio.core.flow import FlowPath, ForwardPath, forward_path
from diffusion_studio.core.guidance import (
    DEFAULT_GUIDANCE_SCALE,
    MAX_GUIDANCE_SCALE,
    check_guidance_scale,
    sampling_labels,
)
from diffusion_studio.core.samplers import (
    REGISTRY,
    SamplerConfig,
    default_sampler_config,
    make_sampler,
    sampler_defaults,
    samplers_for_objective,
)
from diffusion_studio.core.sampling import MAX_FRAMES, Frame, Trajectory, sample

MIN_COLUMNS, MAX_COLUMNS = 2, 4
PROGRESS_TICKS = 1000  # the lockstep slider's resolution
TRAJECTORY_POINTS = 6  # points whose paths the trajectories plot draws
BASE_FPS = 15.0
GIF_FRAMES = 40
GAP_PX = 8  # white pixels between the columns of an exported picture
NO_MODEL = "No model: choose one on the Playback tab."
GUIDANCE_NOTE = (
    "guidance (scale other than 1) doubles the actual network work: each evaluation runs the "
    "conditional and the unconditional model"
)
GUIDED_SUFFIX = " (×2: guided)"


@dataclass(frozen=True)
class LabFrame:
    """A frame of column `column`'s run (tensors the worker no longer references)."""

    column: int
    frame: Frame


@dataclass(frozen=True)
class LabRequest:
    """One Sample press: the columns' configs and what they share."""

    configs: tuple[SamplerConfig, ...]
    num_samples: int
    seed: int
    guidance_scale: float  # 1 (no guidance) for an unconditional model

    @property
    def guided(self) -> bool:
        """Whether every evaluation runs the model twice (conditional and unconditional)."""
        return self.guidance_scale != 1.0


def evaluations_at(config: SamplerConfig, total: int, step: int) -> int:
    """Network evaluations a run of `config` has made before its step `step` (after all its
    steps: `total`, `Sampler.total_evaluations`)."""
    return min(step * config.spec.evaluations_per_step, total)


def frame_at(progress: float, frames: int) -> int:
    """The frame nearest to `progress` (0..1) of a run stored in `frames` frames."""
    return int(round(min(max(progress, 0.0), 1.0) * (frames - 1)))


def side_by_side(pictures: list[np.ndarray], gap: int = GAP_PX) -> np.ndarray:
    """uint8 pictures (H_i, W_i, 3) next to each other, top-aligned on white, `gap` apart.
    (A small helper of the Lab's own: core.export has none that joins pictures.)"""
    height = max(p.shape[0] for p in pictures)
    parts = []
    for i, picture in enumerate(pictures):
        if i:
            parts.append(np.full((height, gap, 3), 255, np.uint8))
        padded = np.full((height, picture.shape[1], 3), 255, np.uint8)
        padded[: picture.shape[0]] = picture
        parts.append(padded)
    return np.concatenate(parts, axis=1)


def pad_to(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) centred on white (height, width, 3) (GIF frames must share a size: a
    caption wider than its picture widens that frame)."""
    out = np.full((height, width, 3), 255, np.uint8)
    h, w = picture.shape[:2]
    top, left = (height - h) // 2, (width - w) // 2
    out[top : top + h, left : left + w] = picture
    return out


def _rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) -> (H, W, 3)."""
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


class LabColumn:
    """One sampler of the Lab: its form (in the settings column), its view and caption."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.form = SamplerForm()
        self.box = QGroupBox(f"Sampler {index + 1}")
        QVBoxLayout(self.box).addWidget(self.form)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.evaluations = QLabel("–")
        self.evaluations.setWordWrap(True)
        self.evaluations.setAlignment(Qt.AlignmentFlag.AlignCenter)
        for label in (self.title, self.evaluations):  # long captions wrap, never widen
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.evaluations.setToolTip(
            "Network evaluations so far / in the whole run (per sample; " + GUIDANCE_NOTE + ")"
        )
        self.image = ImageView()
        self.image.setToolTip("This sampler's samples at the shown point of its run")
        self.points = points_plot("", "This sampler's samples at the shown point of its run")
        self.scatter = scatter_item(4, (*color(index), 220))
        self.points.addItem(self.scatter)
        self.view = QWidget()
        layout = QVBoxLayout(self.view)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.image, 1)
        layout.addWidget(self.points, 1)
        layout.addWidget(self.evaluations)
        self.trajectory: Trajectory | None = None
        self.config: SamplerConfig | None = None  # what the stored frames were made with
        self.total = 0  # its run's network evaluations per sample
        self.frame_index = 0

    def clear(self) -> None:
        self.trajectory, self.config, self.total, self.frame_index = None, None, 0, 0
        self.image.clear_image()
        self.scatter.setData([], [])
        self.title.setText("")
        self.evaluations.setText("–")


class SamplerLabPanel(Panel):
    """Several samplers side by side from the same noise, played in lockstep; their
    convergence against a high-accuracy solution."""

    title = "Sampler Lab"
    choose_model = Signal(object)  # "Choose on Playback": Playback's Model list is shown

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = self.make_job_runner(
            "lab-sampling", self._on_record, self._on_sampling_ended, self._on_failed
        )
        self.convergence_runner = self.make_job_runner(
            "lab-convergence",
            self._on_convergence_record,
            self._on_convergence_ended,
            self._on_failed,
        )
        self.export_runner = self.make_export_runner("lab-export")
        self.checkpoint: Checkpoint | None = None
        self.schedule: ForwardPath | None = None  # the model's path (FlowPath for flow)
        self.columns: list[LabColumn] = []
        self.made_with: LabRequest | None = None
        self.records: list[ConvergenceRecord] = []
        self.progress = 1.0  # the lockstep position, 0..1
        self._dirty = False
        self._build()
        for _ in range(3):
            self.add_column()
        self.redraw_timer = QTimer(self)
        self.redraw_timer.setInterval(REDRAW_INTERVAL_MS)
        self.redraw_timer.timeout.connect(self._on_redraw_timer)
        self.play_timer = QTimer(self)
        self.play_timer.setInterval(int(1000 / BASE_FPS))
        self.play_timer.timeout.connect(self._on_play_tick)
        guard_wheel_in(self)
        self._update_buttons()

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.model_info = QLabel(NO_MODEL)
        self.model_info.setWordWrap(True)
        self.model_info.setToolTip("The Lab samples the model chosen on the Playback tab")
        self.model_button = button("Choose on Playback…", "Show Playback's Model list")
        self.model_button.clicked.connect(lambda: self.choose_model.emit(None))
        self.num_samples = spin_box(1, 4096, 16, "How many samples each sampler draws")
        self.seed = spin_box(0, 2**31 - 1, 0, "Seed of the initial noise, the same for all")
        self.guidance = double_box(
            0.0,
            MAX_GUIDANCE_SCALE,
            DEFAULT_GUIDANCE_SCALE,
            "Classifier-free guidance scale for a class-conditional model (every class in "
            "turn); " + GUIDANCE_NOTE,
            1,
            0.5,
        )
        self.guidance.setEnabled(False)
        self.add_button = button("Add sampler", f"Compare up to {MAX_COLUMNS} samplers")
        self.add_button.clicked.connect(self.add_column)
        self.remove_button = button("Remove sampler", "Drop the last sampler")
        self.remove_button.clicked.connect(self.remove_column)
        self.sample_button = button(
            "Sample all", "Run every sampler from the same noise", "Ctrl+Shift+R"
        )
        self.sample_button.clicked.connect(self.start_sampling)
        self.cancel_button = button("Cancel", "Stop sampling")
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.error = ErrorLabel()

        model_box = form_group("Model", [self.model_info, button_row(self.model_button)])
        shared_box = form_group(
            "All samplers",
            [("Samples", self.num_samples), ("Seed", self.seed), ("Guidance", self.guidance)],
        )
        self.columns_widget = QWidget()
        self.columns_layout = QVBoxLayout(self.columns_widget)
        self.columns_layout.setContentsMargins(0, 0, 0, 0)
        settings = control_column((model_box, shared_box, self.columns_widget), min_width=300)
        controls = pinned_below(
            settings,
            button_row(self.add_button, self.remove_button),
            button_row(self.sample_button, self.cancel_button),
            self.error,
        )

        # side by side
        self.side_page = QWidget()
        self.side_layout = QHBoxLayout(self.side_page)
        self.side_layout.setContentsMargins(0, 0, 0, 0)
        # trajectories of a few points (2-D models)
        self.paths_plot = points_plot(
            "Paths of a few points under each sampler (same start)",
            f"The first {TRAJECTORY_POINTS} samples' x_t from the noise to the shown point",
        )
        self.paths_plot.addLegend(offset=(5, 5))
        self.paths_items: list[pg.PlotDataItem] = []
        # convergence
        self.conv_plot = pg.PlotWidget(
            title="RMS error against a high-accuracy solution",
            axisItems={"left": TidyAxis("left"), "bottom": TidyAxis("bottom")},
        )
        self.conv_plot.showGrid(x=True, y=True, alpha=0.25)
        self.conv_plot.setToolTip(
            "Each deterministic sampler's final samples against the reference's, from the "
            "same noise; slope -1: first order, -2: second order (samplers that take the same "
            "step draw the same line)"
        )
        self.conv_plot.setLogMode(x=True, y=True)
        self.conv_plot.setLabel("bottom", "network evaluations per sample")
        self.conv_plot.setLabel("left", "RMS error")
        self.conv_plot.addLegend(offset=(-5, 5))
        self.conv_samples = spin_box(1, 1024, 8, "Samples per run (the same noise for all)")
        self.conv_most = spin_box(
            1, 10000, 20, "The largest step count (2, 5, 10, 20, 50, ... up to it)"
        )
        self.conv_button = button(
            "Compute convergence", "Run every deterministic sampler at several step counts"
        )
        self.conv_button.clicked.connect(self.start_convergence)
        self.conv_cancel = button("Cancel", "Stop the convergence runs")
        self.conv_cancel.clicked.connect(self.convergence_runner.cancel)
        self.csv_button = button("Export CSV…", "Save the convergence records as a CSV table")
        self.csv_button.clicked.connect(self.export_csv)
        self.conv_info = QLabel("Press Compute convergence.")
        self.conv_info.setWordWrap(True)
        conv_page = QWidget()
        conv_layout = QVBoxLayout(conv_page)
        conv_layout.setContentsMargins(0, 0, 0, 0)
        conv_layout.addWidget(self.conv_plot, 1)
        conv_form = QGridLayout()
        conv_form.addWidget(QLabel("Samples"), 0, 0)
        conv_form.addWidget(self.conv_samples, 0, 1)
        conv_form.addWidget(QLabel("Most steps"), 0, 2)
        conv_form.addWidget(self.conv_most, 0, 3)
        conv_form.addLayout(button_row(self.conv_button, self.conv_cancel, self.csv_button), 0, 4)
        conv_form.addWidget(self.conv_info, 2, 0, 1, 5)
        conv_form.setColumnStretch(4, 1)
        conv_layout.addLayout(conv_form)

        self.view_tabs = QTabWidget()
        self.view_tabs.addTab(self.side_page, "Side by side")
        self.view_tabs.addTab(self.paths_plot, "Paths (2-D)")
        self.view_tabs.addTab(conv_page, "Convergence")
        self.view_tabs.setTabToolTip(1, "2-D models: the paths of a few points, every sampler")

        # lockstep playback and export
        self.play_button = button("Play", "Play every sampler's run in lockstep", "Space")
        self.play_button.setCheckable(True)
        self.play_button.toggled.connect(self._on_play_toggled)
        self.scrub = QSlider(Qt.Orientation.Horizontal)
        self.scrub.setRange(0, PROGRESS_TICKS)
        self.scrub.setValue(PROGRESS_TICKS)
        self.scrub.setToolTip(
            "Progress through every run at once (0 = the noise, 1 = the samples): each column "
            "shows its frame nearest to it"
        )
        self.scrub.valueChanged.connect(lambda v: self.show_progress(v / PROGRESS_TICKS))
        self.progress_label = QLabel("No frames yet: press Sample all.")
        self.shows = combo_box(
            [("x_t", "x_t"), ("x_0 predictions", "pred_x0")], "What the image columns show"
        )
        self.shows.currentIndexChanged.connect(lambda _i: self._draw())
        self.png_button = button("Export PNG…", "Save the columns as shown as one PNG picture")
        self.png_button.clicked.connect(self.export_png)
        self.gif_button = button("Export GIF…", "Save the lockstep play as an animated GIF")
        self.gif_button.clicked.connect(self.export_gif)
        play_box = QGroupBox("Lockstep playback")
        play_grid = QGridLayout(play_box)
        play_grid.addWidget(self.play_button, 0, 0)
        play_grid.addWidget(self.scrub, 0, 1, 1, 3)
        play_grid.addWidget(self.progress_label, 1, 0, 1, 2)
        play_grid.addWidget(QLabel("Images show"), 1, 2)
        play_grid.addWidget(self.shows, 1, 3)
        play_grid.addLayout(button_row(self.png_button, self.gif_button), 0, 4, 2, 1)
        play_grid.setColumnStretch(1, 1)

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.view_tabs, 1)
        right_layout.addWidget(play_box)
        self.splitter = controls_beside_views(self, controls, right)

        self.fields = FieldCheck(self, self._check)
        self.fields.add(self.guidance)
        self.fields.add(self.num_samples, self.seed, keep_range=True)
        self.conv_most.setAccessibleName("Most steps")
        self.conv_samples.setAccessibleName("Samples")
        self.conv_fields = FieldCheck(self, self._check_convergence)
        self.conv_fields.add(self.conv_most)
        self.conv_fields.add(self.conv_samples, keep_range=True)
        grid_row = conv_form.rowCount()
        conv_form.addWidget(self.conv_fields.shared_label, grid_row, 0, 1, 5)
        for check in (self.fields, self.conv_fields):
            check.changed.connect(self._update_buttons)

    # ------------------------------------------------------------------ columns

    @property
    def objective(self) -> str:
        """The objective of the model (whose samplers the columns offer); diffusion without one."""
        return self.checkpoint.objective if self.checkpoint is not None else "diffusion"

    def _next_sampler(self, used: set[str]) -> str:
        """The first sampler of the model's objective not in `used` (else its first)."""
        names = [spec.name for spec in samplers_for_objective(self.objective)]
        return next((n for n in names if n not in used), names[0])

    def add_column(self) -> LabColumn | None:
        """Another sampler (at most MAX_COLUMNS): the next registered sampler of the model's
        objective not shown yet, at its default step count."""
        if len(self.columns) >= MAX_COLUMNS:
            return None
        column = LabColumn(len(self.columns))
        name = self._next_sampler({c.form.spec.name for c in self.columns})
        clip = self.columns[0].form.clip_x0.isChecked() if self.columns else False
        self._set_form_model(column.form)  # (the objective's samplers listed first)
        column.form.set_config(sampler_defaults(name, clip))
        self._set_form_model(column.form)
        column.form.changed.connect(self._update_buttons)
        self.columns.append(column)
        self.columns_layout.addWidget(column.box)
        self.side_layout.addWidget(column.view, 1)
        guard_wheel_in(column.box)
        self._show_kind()
        self._update_buttons()
        return column

    def remove_column(self) -> None:
        """Drop the last sampler (at least MIN_COLUMNS stay)."""
        if len(self.columns) <= MIN_COLUMNS or self.runner.is_running:
            return
        column = self.columns.pop()
        for widget in (column.box, column.view):
            widget.setParent(None)
            widget.deleteLater()
        self._draw()
        self._update_buttons()

    def configs(self) -> list[SamplerConfig]:
        """Every column's SamplerConfig (ConfigError with core's reason when one is refused)."""
        return [column.form.config() for column in self.columns]

    def request(self) -> LabRequest:
        return LabRequest(
            tuple(self.configs()),
            self.num_samples.value(),
            self.seed.value(),
            self.guidance.value() if self.guidance.isEnabled() else 1.0,
        )

    # ------------------------------------------------------------------ model

    def set_checkpoint(self, ckpt: Checkpoint | None) -> None:
        """The model to sample (Playback's choice). The runs of another model are dropped."""
        if ckpt is self.checkpoint:
            return
        for runner in (self.runner, self.convergence_runner):
            if runner.is_running:
                runner.cancel()
        objective_before = self.objective
        self.checkpoint = ckpt
        self.schedule = (
            forward_path(ckpt.objective, ckpt.schedule_config) if ckpt is not None else None
        )
        self.clear_results()
        self.records = []
        self._draw_convergence()
        self.conv_info.setText("Press Compute convergence.")
        if ckpt is None:
            self.model_info.setText(NO_MODEL)
        else:
            data = str((ckpt.data or {}).get("name", "?"))
            T = ckpt.schedule_config.num_timesteps
            flow = " (flow matching)" if ckpt.objective == "flow" else ""
            self.model_info.setText(
                f"{data} ({ckpt.model_config.kind}), T = {T}, predicts {ckpt.prediction_type}"
                f"{flow}<br><i>chosen on the Playback tab</i>"
            )
            self.num_samples.setValue(500 if ckpt.is_points else 16)
            self.conv_samples.setValue(256 if ckpt.is_points else 8)
            self.conv_most.setValue(max(default_step_counts(T)))
            self.guidance.setEnabled(getattr(ckpt.model_config, "num_classes", 0) > 0)
        used: set[str] = set()
        for column in self.columns:
            self._set_form_model(column.form)
            if self.objective != objective_before:  # the other objective: its samplers, in turn
                name = self._next_sampler(used)
                used.add(name)
                column.form.set_config(sampler_defaults(name, False))
                self._set_form_model(column.form)  # steps at most T
            if ckpt is not None:  # core's x_0 clipping for this kind of model
                default = default_sampler_config(ckpt.is_points, None, ckpt.objective)
                column.form.clip_x0.setChecked(default.clip_sample)
        self._show_kind()
        self.fields.recheck()
        self.conv_fields.recheck()
        self._update_buttons()

    def _set_form_model(self, form: SamplerForm) -> None:
        ckpt = self.checkpoint
        if ckpt is None:  # no model: the diffusion samplers, as at start
            form.set_objective("diffusion")
            form.set_model(None, "epsilon")
        else:
            form.set_model(ckpt.schedule_config, ckpt.prediction_type, ckpt.objective)

    def _show_kind(self) -> None:
        points = self.checkpoint is not None and self.checkpoint.is_points
        for column in self.columns:
            column.image.setVisible(not points)
            column.points.setVisible(points)
        self.view_tabs.setTabEnabled(1, points)
        if not points and self.view_tabs.currentIndex() == 1:
            self.view_tabs.setCurrentIndex(0)

    def clear_results(self) -> None:
        """Forget the stored runs and what was drawn from them."""
        if self.runner.is_running:
            self.runner.cancel()
        self.play_button.setChecked(False)
        self.made_with = None
        for column in self.columns:
            column.clear()
        for item in self.paths_items:
            self.paths_plot.removeItem(item)
        self.paths_items = []
        self.progress_label.setText("No frames yet: press Sample all.")
        self.clear_problem()
        self._update_buttons()

    # ------------------------------------------------------------------ checks

    def _check(self) -> None:
        """What Sample would build: every column's sampler for the model, the guidance."""
        if self.guidance.isEnabled():
            check_guidance_scale(self.guidance.value())

    def _check_convergence(self) -> None:
        if self.schedule is not None:
            check_step_counts(
                step_counts_up_to(self.conv_most.value()), self.schedule.num_timesteps
            )

    def _update_buttons(self) -> None:
        running = self.runner.is_running or self.convergence_runner.is_running
        has_model = self.checkpoint is not None
        forms_ok = all(c.form.valid for c in self.columns)
        self.sample_button.setEnabled(has_model and not running and forms_ok and self.fields.valid)
        self.cancel_button.setEnabled(self.runner.is_running)
        self.add_button.setEnabled(len(self.columns) < MAX_COLUMNS and not self.runner.is_running)
        self.remove_button.setEnabled(
            len(self.columns) > MIN_COLUMNS and not self.runner.is_running
        )
        frames = self.has_frames()
        self.play_button.setEnabled(frames)
        self.scrub.setEnabled(frames)
        exportable = frames and not self.runner.is_running
        self.png_button.setEnabled(exportable)
        self.gif_button.setEnabled(exportable)
        self.conv_button.setEnabled(has_model and not running and self.conv_fields.valid)
        self.conv_cancel.setEnabled(self.convergence_runner.is_running)
        self.csv_button.setEnabled(bool(self.records) and not self.convergence_runner.is_running)

    # ------------------------------------------------------------------ sampling

    def runners(self) -> list[JobRunner]:
        return [self.runner, self.convergence_runner, self.export_runner]

    def has_frames(self) -> bool:
        return any(c.trajectory is not None and len(c.trajectory) > 0 for c in self.columns)

    def start_sampling(self) -> bool:
        """Run every column's sampler in the worker, one after another, from the same noise.
        False (and a message) when it cannot start."""
        ckpt = self.checkpoint
        if ckpt is None:
            self.report_error("Cannot sample", NO_MODEL)
            return False
        problems = [c.form.first_problem() for c in self.columns if not c.form.valid]
        if problems or not self.fields.valid:
            self.show_problem("Cannot sample", (problems or [self.fields.first_problem()])[0])
            return False
        if self.runner.is_running or self.convergence_runner.is_running:
            self.report_error("Cannot sample", "A job of the Lab is running: wait or cancel it.")
            return False
        try:
            request = self.request()
            schedule = forward_path(ckpt.objective, ckpt.schedule_config)
            samplers = [make_sampler(c, schedule, ckpt.prediction_type) for c in request.configs]
        except DiffusionStudioError as exc:
            self.show_problem("Cannot sample", str(exc))
            return False
        self.clear_results()
        self.made_with = request
        for column, config, sampler in zip(self.columns, request.configs, samplers):
            column.config, column.total = config, sampler.total_evaluations()
            column.trajectory = Trajectory(max_frames=MAX_FRAMES)
        n_columns = len(request.configs)

        def run() -> Iterator[LabFrame]:  # worker thread
            model = build_model_from_checkpoint(ckpt)
            labels = sampling_labels(model, request.num_samples)
            for index, config in enumerate(request.configs):
                sampler = make_sampler(config, schedule, ckpt.prediction_type)
                generator = torch.Generator().manual_seed(request.seed)  # the same noise
                for frame in sample(
                    model,
                    schedule,
                    sampler,
                    request.num_samples,
                    ckpt.sample_shape,
                    generator,
                    labels=labels,
                    guidance_scale=request.guidance_scale,
                ):
                    copy = Frame(frame.step, frame.t, frame.x_t.clone(), frame.pred_x0.clone())
                    yield LabFrame(index, copy)

        def status(record: LabFrame) -> JobStatus:
            config = request.configs[record.column]
            steps = config.num_inference_steps
            done = (record.column + (record.frame.step + 1) / (steps + 1)) / n_columns
            return JobStatus(
                f"Lab: {config.spec.label} ({record.column + 1}/{n_columns}), "
                f"step {min(record.frame.step + 1, steps)}/{steps}",
                done,
            )

        self.runner.start(Job("Sampler Lab", run, JobControl(), describe=status))
        self.redraw_timer.start()
        self._update_buttons()
        return True

    def _on_record(self, record: object) -> None:
        if not isinstance(record, LabFrame) or record.column >= len(self.columns):
            return
        trajectory = self.columns[record.column].trajectory
        if trajectory is not None:
            trajectory.append(record.frame)
            self._dirty = True

    def _on_redraw_timer(self) -> None:
        if self._dirty:
            self._dirty = False
            self._draw()
        if not self.runner.is_running:
            self.redraw_timer.stop()

    def _on_sampling_ended(self, *_args: object) -> None:
        self.redraw_timer.stop()
        self._dirty = False
        self.progress = 1.0
        self.scrub.blockSignals(True)
        self.scrub.setValue(PROGRESS_TICKS)
        self.scrub.blockSignals(False)
        self._draw()
        self._update_buttons()
        if self.has_frames():
            self.status_message.emit("Sampler Lab: every sampler ran from the same noise.")

    def _on_failed(self, message: str) -> None:
        self._update_buttons()
        self.show_problem("Sampler Lab", message)

    # ------------------------------------------------------------------ lockstep playback

    def show_progress(self, progress: float) -> None:
        """Show every column at `progress` (0 = the noise, 1 = the samples) of its run."""
        self.progress = min(max(float(progress), 0.0), 1.0)
        value = int(round(self.progress * PROGRESS_TICKS))
        if self.scrub.value() != value:
            self.scrub.blockSignals(True)
            self.scrub.setValue(value)
            self.scrub.blockSignals(False)
        self._draw()

    def column_frame(self, column: LabColumn) -> int | None:
        """The stored frame `column` shows: while sampling its newest, else the one nearest to
        the lockstep progress (None when it has none)."""
        traj = column.trajectory
        if traj is None or len(traj) == 0:
            return None
        if self.runner.is_running or not traj.is_complete:
            return len(traj) - 1
        return frame_at(self.progress, len(traj))

    def caption(self, column: LabColumn, index: int) -> tuple[str, str]:
        """(title, evaluations) of `column` at its stored frame `index`."""
        assert column.trajectory is not None and column.config is not None
        t = int(column.trajectory.timesteps[index])
        step = int(column.trajectory.steps[index])
        if t < 0:
            where = "samples"
        elif isinstance(self.schedule, FlowPath):  # the path index k of t = (k + 1) / T
            where = f"t = {float(self.schedule.time_of_index(t)):.3f}"
        else:
            where = f"t = {t}"
        done = evaluations_at(column.config, column.total, step)
        made = self.made_with
        guided = GUIDED_SUFFIX if made is not None and made.guided else ""
        return (
            f"{column.config.summary()} · {where}",
            f"{done} / {column.total} network evaluations{guided}",
        )

    def _draw(self) -> None:
        shown = []
        for column in self.columns:
            index = self.column_frame(column)
            column.frame_index = index or 0
            if index is None:
                continue
            traj = column.trajectory
            assert traj is not None
            title, evaluations = self.caption(column, index)
            column.title.setText(title)
            column.evaluations.setText(evaluations)
            shown.append(index / max(1, len(traj) - 1))
            if traj.is_points:
                x = traj.x_t(index)
                column.scatter.setData(x[:, 0], x[:, 1])
            else:
                grid = make_grid(self._images(traj, index), padding=1, pad_value=255)
                column.image.set_image(grid[..., 0] if grid.shape[2] == 1 else grid)
        if shown:
            self.progress_label.setText(f"progress {self.progress:.2f} of every run")
        self._draw_paths()

    def _images(self, traj: Trajectory, index: int) -> np.ndarray:
        """The images the columns show at stored frame `index`: x_t or the x_0 predictions."""
        return traj.x_t(index) if self.shows.currentData() == "x_t" else traj.pred_x0(index)

    def _draw_paths(self) -> None:
        """Every column's first TRAJECTORY_POINTS points from the noise to the shown frame."""
        points = [c for c in self.columns if c.trajectory is not None and c.trajectory.is_points]
        for item in self.paths_items:
            self.paths_plot.removeItem(item)
        self.paths_items = []
        for column in points:
            traj, config = column.trajectory, column.config
            if traj is None or config is None or len(traj) == 0:
                continue
            k = min(TRAJECTORY_POINTS, traj.x_t(0).shape[0])
            path = np.stack([traj.x_t(j)[:k] for j in range(column.frame_index + 1)])  # (F, k, 2)
            lines = np.transpose(path, (1, 0, 2))  # (k, F, 2)
            connect = np.ones(lines.shape[:2], dtype=bool)
            connect[:, -1] = False
            item = pg.PlotDataItem(
                lines[..., 0].reshape(-1),
                lines[..., 1].reshape(-1),
                connect=connect.reshape(-1),
                pen=pg.mkPen(*color(column.index), width=2),
                name=config.summary(),
            )
            end = scatter_item(7, (*color(column.index), 255))
            end.setData(lines[:, -1, 0], lines[:, -1, 1])
            for it in (item, end):
                self.paths_plot.addItem(it)
                self.paths_items.append(it)

    def _on_play_toggled(self, on: bool) -> None:
        if on and self.has_frames():
            if self.progress >= 1.0:
                self.show_progress(0.0)
            self.play_button.setText("Pause")
            self.play_timer.start()
        else:
            self.play_button.setText("Play")
            self.play_timer.stop()
            if on:
                self.play_button.setChecked(False)

    def _on_play_tick(self) -> None:
        longest = max((len(c.trajectory) for c in self.columns if c.trajectory), default=2)
        nxt = self.progress + 1.0 / max(1, longest - 1)
        if nxt > 1.0 + 1e-9:
            self.play_button.setChecked(False)
            return
        self.show_progress(min(nxt, 1.0))

    # ------------------------------------------------------------------ convergence

    def start_convergence(self) -> bool:
        """Compute the convergence records in the worker (cancellable). False and a message
        when it cannot start."""
        ckpt = self.checkpoint
        if ckpt is None:
            self.report_error("Convergence", NO_MODEL)
            return False
        if not self.conv_fields.valid:
            self.report_error("Convergence", self.conv_fields.first_problem())
            return False
        if self.runner.is_running or self.convergence_runner.is_running:
            self.report_error("Convergence", "A job of the Lab is running: wait or cancel it.")
            return False
        schedule = forward_path(ckpt.objective, ckpt.schedule_config)
        counts = step_counts_up_to(self.conv_most.value())
        try:
            names = deterministic_samplers(schedule, ckpt.prediction_type)
            reference = reference_config(schedule, ckpt.prediction_type)
        except DiffusionStudioError as exc:
            self.report_error("Convergence", str(exc))
            return False
        seed, n = self.seed.value(), self.conv_samples.value()
        scale = self.guidance.value() if self.guidance.isEnabled() else 1.0
        self.records = []
        self._draw_convergence()
        self.conv_info.setText(
            f"Reference: {reference.summary()}; samplers: "
            + ", ".join(REGISTRY[n].label for n in names)
            + f"; steps {', '.join(map(str, counts))}; {n} samples, seed {seed}."
        )

        def run() -> Iterator[ConvergenceRecord | ConvergenceProgress]:  # worker thread
            yield from checkpoint_convergence(
                ckpt, names, counts, seed=seed, num_samples=n, guidance_scale=scale
            )

        def status(record: object) -> JobStatus | None:
            if isinstance(record, ConvergenceProgress):
                label = REGISTRY[record.sampler].label
                return JobStatus(f"Convergence: {label}, {record.steps} steps", record.fraction)
            return None

        self.convergence_runner.start(Job("Convergence", run, JobControl(), describe=status))
        self._update_buttons()
        return True

    def _on_convergence_record(self, record: object) -> None:
        if isinstance(record, ConvergenceRecord):
            self.records.append(record)
            self._draw_convergence()

    def _on_convergence_ended(self, *_args: object) -> None:
        self._update_buttons()
        if self.records:
            self.status_message.emit(f"Convergence: {len(self.records)} runs.")

    def _draw_convergence(self) -> None:
        """One line per sampler: RMS error against network evaluations (log-log)."""
        self.conv_plot.clear()
        legend = self.conv_plot.plotItem.legend
        if legend is not None:
            legend.clear()
        names = list(dict.fromkeys(r.sampler for r in self.records if not r.is_reference))
        for i, name in enumerate(names):
            runs = [r for r in self.records if r.sampler == name and not r.is_reference]
            runs = [r for r in runs if r.rms_error > 0]
            if not runs:
                continue
            self.conv_plot.plot(
                [r.evaluations for r in runs],
                [r.rms_error for r in runs],
                pen=pg.mkPen(*color(i), width=2),
                symbol="o",
                symbolSize=7,
                symbolBrush=pg.mkBrush(*color(i)),
                name=REGISTRY[name].label if name in REGISTRY else name,
            )

    # ------------------------------------------------------------------ export

    def column_pictures(self, progress: float | None = None) -> list[np.ndarray]:
        """Each column's picture at `progress` (default: as shown), uint8 (H, W, 3), its
        summary and t written above it."""
        pictures = []
        for column in self.columns:
            traj = column.trajectory
            if traj is None or len(traj) == 0 or column.config is None:
                continue
            index = column.frame_index if progress is None else frame_at(progress, len(traj))
            if traj.is_points:
                picture = render_points(
                    traj.x_t(index), 256, POINT_EXTENT, color=color(column.index)
                )
            else:
                grid = make_grid(self._images(traj, index), padding=1, pad_value=255)
                picture = _rgb(upscale_nearest(grid, max(1, 256 // grid.shape[0])))
            title, _ = self.caption(column, index)
            pictures.append(_rgb(caption_frame(picture, title)))
        return pictures

    def _export_name(self) -> str:
        ckpt = self.checkpoint
        name = str((ckpt.data or {}).get("name", "model")) if ckpt is not None else "model"
        kinds = "_".join(c.config.kind for c in self.columns if c.config is not None)
        return dialogs.file_stem(f"{name}_lab_{kinds}")

    def export_png(self) -> None:
        """The columns as shown, side by side, as one PNG (in the worker)."""
        if not self.has_frames() or self.runner.is_running:
            self.report_error("Export", "Nothing to export yet: press Sample all first.")
            return
        picture = side_by_side(self.column_pictures())
        path = dialogs.ask_save_path(
            self, "Export the Lab as PNG", dialogs.PNG_FILTER, f"{self._export_name()}.png"
        )
        if path is None:
            return

        def run() -> Iterator[Path]:
            yield save_png(path, picture)

        job = Job("Export PNG", run, describe=lambda _p: JobStatus("Writing PNG…"))
        self.start_export(self.export_runner, job, path)

    export_plot = export_png  # File > Export Plot on this tab

    def export_gif(self) -> None:
        """The lockstep play (GIF_FRAMES moments from the noise to the samples) as a GIF."""
        if not self.has_frames() or self.runner.is_running:
            self.report_error("Export", "Nothing to export yet: press Sample all first.")
            return
        frames = [side_by_side(self.column_pictures(p)) for p in np.linspace(0.0, 1.0, GIF_FRAMES)]
        height = max(f.shape[0] for f in frames)
        width = max(f.shape[1] for f in frames)
        frames = [pad_to(f, height, width) for f in frames]
        path = dialogs.ask_save_path(
            self, "Export the Lab as GIF", dialogs.GIF_FILTER, f"{self._export_name()}.gif"
        )
        if path is None:
            return

        def run() -> Iterator[int]:
            yield save_gif(path, frames, fps=BASE_FPS)

        job = Job("Export GIF", run, describe=lambda _n: JobStatus("Writing GIF…"))
        self.start_export(self.export_runner, job, path)

    def export_csv(self) -> None:
        """The convergence records as a CSV table."""
        if not self.records:
            self.report_error("Export", "No convergence records yet: press Compute convergence.")
            return
        path = dialogs.ask_save_path(
            self, "Export convergence as CSV", dialogs.CSV_FILTER, f"{self._export_name()}.csv"
        )
        if path is None:
            return
        table = records_table(self.records)

        def run() -> Iterator[Path]:
            yield save_csv(path, table)

        job = Job("Export CSV", run, describe=lambda _p: JobStatus("Writing CSV…"))
        self.start_export(self.export_runner, job, path)

    # ------------------------------------------------------------------ settings

    def persistent_widgets(self) -> dict[str, Persistent]:
        return {"seed": self.seed, "guidance": self.guidance, "shows": self.shows}

    def save_state(self, settings: QSettings) -> None:
        super().save_state(settings)
        write_json(settings, f"{self.key()}/samplers", [c.form.state() for c in self.columns])

    def restore_state(self, settings: QSettings) -> None:
        super().restore_state(settings)
        states = read_json(settings, f"{self.key()}/samplers", None)
        if not isinstance(states, list):
            return
        states = states[:MAX_COLUMNS]
        while len(self.columns) < len(states):
            self.add_column()
        while len(self.columns) > max(MIN_COLUMNS, len(states)):
            self.remove_column()
        for column, state in zip(self.columns, states):
            column.form.restore(state)
