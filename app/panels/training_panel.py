"""Training panel: settings, Start / Pause / Resume / Stop, and the run drawn live.

`core.training.Trainer` runs in the worker thread. Its records are stored here as they
arrive (cheap appends); the plots are redrawn from that state by a 30 Hz timer, at most
twice a second while training (LIVE_REDRAW_S). Checkpoints
are written in the worker thread (the trainer's state may only be read between its steps):
autosave every few minutes and at the end (Stop or done) to the app's data folder, and
"Save Checkpoint As…" on request; a run that fails keeps its last good step the same way
(the policy is core.training_session's, shared with the CLI).

The panel never shows results made for other data: choosing another data source clears the
curves, previews, numbers and messages of the last run (`clear_results`). The end of a run is
said in the Run box's outcome line ("Done: … saved to PATH", "Stopped at step N: …",
"Failed: …"), which stays, with "Open in Playback" (the `open_in_playback` signal).
"""

from __future__ import annotations

import datetime as dt
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
import torch
from PIL import Image
from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from diffusion_studio.app import dialogs
from diffusion_studio.app.axes import use_integer_ticks
from diffusion_studio.app.panels.base import Panel
from diffusion_studio.app.settings import checkpoints_dir
from diffusion_studio.app.training_dashboard import (  # noqa: F401 (MAX_CURVE_POINTS: benchmarks)
    MAX_CURVE_POINTS,
    Series,
    TrainingDashboard,
    t_axis_label,
)
from diffusion_studio.app.widgets import (
    REDRAW_INTERVAL_MS,
    ErrorLabel,
    FieldCheck,
    ImageView,
    Persistent,
    button,
    check_box,
    combo_box,
    control_column,
    controls_beside_views,
    double_box,
    form_group,
    format_duration,
    pinned_below,
    plot_widget,
    points_plot,
    scatter_item,
    set_combo_data,
    spin_box,
)
from diffusion_studio.app.worker import Job, JobRunner, JobStatus
from diffusion_studio.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from diffusion_studio.core.data import DIGIT_SOURCES, TOY_DATASETS, list_image_files, toy_points
from diffusion_studio.core.errors import ConfigError, DataError, DiffusionStudioError, TrainingError
from diffusion_studio.core.export import make_grid, to_uint8_images
from diffusion_studio.core.flow import FLOW_TIME_SAMPLINGS
from diffusion_studio.core.models import MLPConfig, build_model, count_parameters
from diffusion_studio.core.run_log import preview_picture, step_record
from diffusion_studio.core.samplers import DIFFUSION_PREDICTION_TYPES
from diffusion_studio.core.schedule import SCHEDULE_KINDS, ScheduleConfig
from diffusion_studio.core.training import (
    MODEL_SIZES,
    PREVIEW_POINTS,
    TrainConfig,
    TrainControl,
    Trainer,
    TrainPreview,
    TrainProgress,
    default_model_config,
    preset_config,
    resume_config,
)
from diffusion_studio.core.training_session import AutosavePolicy, RunSaver, SaveResult

FOLDER = "folder"
FOLDER_IMAGE_SIZE = 32  # the image size first offered for a folder of images
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
SCATTER_POINTS = 4096
# Data with class labels: for these the panel offers class-conditional training.
LABELLED_SOURCES = DIGIT_SOURCES
LIVE_REDRAW_S = 0.5  # while training: curves and numbers at most twice a second
SCATTER_EVERY = 4  # ... and the loss-against-t scatter every 2 s
SMOOTHING_WINDOW = (3.0, 100.0)  # the smoothed curve averages over ~5% of the steps so far

PREVIEW_IMAGE_TITLE = "Preview samples (EMA model)"
PREVIEW_POINTS_TITLE = "Preview samples over the data"
LOSS_TITLE = "Training loss"
SCATTER_TITLE = "Per-sample loss against t"

OBJECTIVE_TIP = (
    "What the network learns:\n"
    "Diffusion: undo DDPM noise, x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps, "
    "on the noise schedule;\n"
    "Flow matching: the straight path x_t = (1 - t) x_0 + t eps (rectified flow), the network "
    "predicts the velocity eps - x_0;\nits Steps T is only the network's time scale (it is "
    "given T t) and the loss-against-t axis"
)
FLOW_TIME_TIP = (
    "Which t in (0, 1) a flow step trains on: logit-normal draws the middle of the path more "
    "often\n(Esser et al. 2024), uniform draws every t alike"
)
FLOW_DISABLED_TIP = (
    "Not used by flow matching: its path x_t = (1 - t) x_0 + t eps has no noise schedule, and "
    "the network always predicts the velocity eps - x_0"
)
PREDICTION_TIPS = {
    "epsilon": "the noise eps (DDPM)",
    "v": "v = sqrt(alphabar_t) eps - sqrt(1 - alphabar_t) x_0 (Salimans & Ho 2022)",
    "x0": "the clean sample x_0",
}


def guess_channels(files: list[Path]) -> int:
    """1 when the first readable image of `files` is grey, else 3 (colour)."""
    for path in files[:8]:
        try:
            with Image.open(path) as picture:
                return 1 if picture.mode in GREY_MODES else 3
        except OSError:
            continue
    return 3


def available_devices() -> list[str]:
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


@dataclass(frozen=True)
class TrainResult:
    """What a run that ended (finished or stopped) leaves: its checkpoint and where it was saved.

    data: the data's short name ("digits", "moons", a folder's name); outcome: "finished",
    "cancelled" or "failed" (the last good step of a run that failed); error: why saving failed (None when saved or nothing to save)."""

    checkpoint: Checkpoint
    path: Path | None
    step: int
    data: str = ""
    outcome: str = "finished"
    error: str | None = None


def outcome_text(result: TrainResult) -> str:
    """The line that says how a run ended: done or stopped, at which step, and where it is."""
    if result.outcome == "finished":
        head = f"Done ({result.data}, step {result.step})"
    elif result.step == 0:
        return "Stopped before the first step: nothing to save."
    else:
        head = f"Stopped at step {result.step}"
    if result.path is not None:
        return f"{head}: saved to {result.path}"
    if result.error:
        return f"{head}, not saved ({result.error}): use “Save checkpoint as…” to keep it."
    return f"{head}."


def checkpoint_file_name(data: str, model: object, step: int) -> str:
    """The name Save Checkpoint As suggests: data, model kind and step, e.g.
    'digits-unet-step1500.safetensors'."""
    kind = "mlp" if isinstance(model, MLPConfig) else "unet"
    return f"{data}-{kind}-step{step}.safetensors"


def loss_texts(config: TrainConfig) -> tuple[str, str, str, str]:
    """(title, tooltip) of the Loss plot and of the loss-against-t plot for a run's settings.

    The Loss curve is the objective the optimizer minimises (core.training): the batch mean of
    w(t) * MSE with min-SNR-gamma weights w (Hang et al. 2023), or w = 1 without them; the
    scatter shows each sample's plain MSE against the target, without w. Flow matching has no
    weights: its loss is the plain MSE of the velocity eps - x_0."""
    flow = config.objective == "flow"
    target = (
        "velocity eps - x_0"
        if flow
        else {"epsilon": "eps", "v": "v", "x0": "x_0"}[config.prediction_type]
    )
    gamma = None if flow else config.min_snr_gamma
    if gamma is None:
        title = f"{LOSS_TITLE} (MSE of the {target} prediction)"
        weights = "every sample weighs the same (no min-SNR weighting)"
        relation = "The Loss curve is the batch mean of these values."
    else:
        title = f"{LOSS_TITLE} (min-SNR weighted, gamma = {gamma:g})"
        formula = {
            "epsilon": "min(SNR_t, gamma) / SNR_t",
            "v": "min(SNR_t, gamma) / (SNR_t + 1)",
            "x0": "min(SNR_t, gamma)",
        }[config.prediction_type]
        weights = f"each sample's MSE is weighted by w(t) = {formula} (Hang et al. 2023)"
        relation = (
            "The Loss curve weights them by w(t) <= 1, so these dots sit higher."
            if config.prediction_type != "x0"
            else "The Loss curve weights them by w(t) = min(SNR_t, gamma)."
        )
    loss_tip = (
        f"What the optimizer minimises at each step: the batch mean of w(t) ||f(x_t, t) - "
        f"{target}||^2, where {weights}.\nFaint: every step; bold: smoothed."
    )
    scatter_title = f"{SCATTER_TITLE} (unweighted MSE)"
    scatter_tip = (
        f"Each dot: one training sample of the recent steps, at its timestep t, with its plain "
        f"mean squared error against the {target} target (no weight).\n{relation} "
        "The dots show which t are hard to predict."
        + (" Flow matching's t in (0, 1) is drawn at T t." if flow else "")
    )
    return title, loss_tip, scatter_title, scatter_tip


class TrainingPanel(Panel):
    """Train a small diffusion model and watch it learn."""

    title = "Training"
    model_trained = Signal(object)  # Checkpoint of a run that ended (done or stopped)
    open_in_playback = Signal(object)  # Checkpoint the user asked to open on the Playback tab

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = self.make_job_runner(
            "training", self._on_progressed, self._on_run_ended, self._on_failed
        )
        self.runner.paused_changed.connect(self._on_paused_changed)
        self.folder: Path | None = None
        self.folder_shape = (FOLDER_IMAGE_SIZE, 3)  # (image size, channels) for a folder
        self._filling = False
        self.resume_from: Checkpoint | None = None
        self.resume_path: Path | None = None
        self.last_result: TrainResult | None = None
        self.autosave_path: Path | None = None
        self.loss = Series()
        self.smoothed = Series()
        self._smooth_state = 0.0
        self._smooth_weight = 0.0
        self._smooth_count = 0
        self.scatter_t = np.zeros(SCATTER_POINTS)
        self.scatter_loss = np.zeros(SCATTER_POINTS)
        self.scatter_n = 0
        self.latest: TrainProgress | None = None
        self.preview: TrainPreview | None = None
        self._dirty = False
        self._preview_dirty = False
        self._drawn_at = 0.0  # time.monotonic() of the last curve redraw
        self._curve_redraws = 0
        self._scatter_due = False  # the loss-against-t scatter waits for the next timer tick
        self._save_requests: queue.Queue[Path] = queue.Queue()
        self._save_results: queue.Queue[tuple[Path, str | None]] = queue.Queue()
        self._autosave_failed = False  # this run's autosave failed (reported once in a dialog)
        # "result": the SaveResult of the last run that failed (its last good step, saved or
        # not); never the trainer itself (an ended run's trainer, model and optimizer must be
        # freed)
        self._last_good: dict[str, SaveResult] = {}
        self._outcome_checkpoint: Checkpoint | None = None  # what "Open in Playback" opens
        self._run_config: TrainConfig | None = None  # the settings of the run on the plots
        self._history_overlaid = False  # the dashboard overlays a resumed run's history
        self._build()
        self._on_source_index_changed()
        self._on_budget_changed()
        self._on_objective_changed()
        self._update_buttons()
        self.timer = QTimer(self)
        self.timer.setInterval(REDRAW_INTERVAL_MS)
        self.timer.timeout.connect(self._on_timer)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        sources = [("Digits (built-in MNIST, 28×28)", "digits")]
        sources += [(f"2-D points: {name}", name) for name in TOY_DATASETS]
        sources += [("Image folder…", FOLDER)]
        self.source = combo_box(
            sources, "What to train on: built-in digits, a 2-D toy set, or a folder of images"
        )
        self.folder_button = button("Choose folder…", "Pick a folder of images to train on")
        self.folder_button.clicked.connect(self.choose_folder)
        self.folder_label = QLabel("no folder chosen")
        self.folder_label.setWordWrap(True)
        self.image_size = spin_box(
            8, 128, 28, "Images are centre-cropped and resized to this side", 4, " px"
        )
        self.channels = combo_box(
            [("grey (1)", 1), ("colour (3)", 3)], "Train on grey or colour images"
        )
        self.model_size = combo_box(
            [(s, s) for s in MODEL_SIZES], "Model size preset (wider nets learn more, slower)"
        )
        set_combo_data(self.model_size, "default")
        self.model_info = QLabel()
        self.model_info.setTextFormat(Qt.TextFormat.RichText)
        self.model_info.setToolTip("The network the preset builds")
        self.class_labels = check_box(
            "Learn the digits' labels (guided sampling)",
            "On: the model learns which digit is which and Playback draws the digit asked for\n"
            "(classifier-free guidance). Off: an unconditional model, which draws digits at\n"
            "random (as: diffusion-studio train --unconditional).",
            True,
        )
        self.class_labels.toggled.connect(self._update_model_info)
        self.kind = combo_box(
            [(k, k) for k in SCHEDULE_KINDS], "Noise schedule kind (see the Schedules tab)"
        )
        self.steps_T = spin_box(10, 10000, 1000, "T: the number of diffusion timesteps", 50)
        self.prediction = combo_box(
            [(p, p) for p in DIFFUSION_PREDICTION_TYPES],
            "What the network predicts:\n"
            + "\n".join(f"{k}: {v}" for k, v in PREDICTION_TIPS.items()),
        )
        self.objective = combo_box(
            [("Diffusion", "diffusion"), ("Flow matching", "flow")], OBJECTIVE_TIP
        )
        self.flow_time = combo_box([(s, s) for s in FLOW_TIME_SAMPLINGS], FLOW_TIME_TIP)
        self._diffusion_tips = {w: w.toolTip() for w in (self.kind, self.prediction)}
        self.batch = spin_box(1, 4096, 64, "Samples per optimizer step")
        self.lr = double_box(
            1e-6, 1.0, 2e-3, "Peak learning rate (AdamW; warm-up, then cosine decay)", 6, 1e-4
        )
        self.budget = combo_box(
            [("minutes", "minutes"), ("steps", "steps")],
            "End the run after a number of minutes of training or of optimizer steps",
        )
        self.max_steps = spin_box(1, 10_000_000, 2000, "Optimizer steps to run", 100)
        self.max_minutes = double_box(0.05, 24 * 60, 5.0, "Minutes of training to run", 2, 0.5)
        self.seed = spin_box(0, 2**31 - 1, 0, "Seed of every random draw of the run")
        self.device = combo_box(
            [(d, d) for d in available_devices()], "Where to train (auto: a GPU if present)"
        )
        self.preview_every = spin_box(
            0,
            100000,
            200,
            "Sample previews every this many steps, and after every 30 s of training at the\n"
            "latest (at most a fifth of the time on a slow machine); 0 = never",
            50,
            " steps",
        )
        self.autosave_minutes = double_box(
            0.0,
            120.0,
            2.0,
            "Save a checkpoint every this many minutes (0 = only at the end)",
            1,
            0.5,
        )
        self.autosave_minutes.setSuffix(" min")
        self.autosave_minutes.setSpecialValueText("only at the end")
        self.preview_every.setSpecialValueText("never")
        self.max_minutes.setSuffix(" min")

        self.start_button = button("Start", "Start training with these settings", "Ctrl+Return")
        self.pause_button = button("Pause", "Pause (and then resume) the run")
        self.pause_button.setCheckable(True)
        self.stop_button = button(
            "Stop", "Stop the run; the model so far is saved and kept for Playback"
        )
        self.resume_button = button(
            "Resume from checkpoint…", "Continue a saved run from where it stopped"
        )
        self.clear_resume_button = button("Start fresh", "Forget the checkpoint to resume from")
        self.save_button = button(
            "Save checkpoint as…", "Save the current (or last) model to a file"
        )
        self.start_button.clicked.connect(self.start)
        self.pause_button.toggled.connect(self._on_pause_toggled)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button.clicked.connect(self.choose_resume_checkpoint)
        self.clear_resume_button.clicked.connect(self.clear_resume)
        self.save_button.clicked.connect(self.save_checkpoint_as)
        self.open_button = button(
            "Open in Playback", "Sample from the model of the run that ended, on the Playback tab"
        )
        self.open_button.clicked.connect(self._on_open_clicked)
        self.resume_label = QLabel()
        self.resume_label.setWordWrap(True)
        self.error = ErrorLabel()
        self.outcome = QLabel()
        self.outcome.setWordWrap(True)
        self.outcome.setTextFormat(Qt.TextFormat.PlainText)
        self.outcome.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.outcome.setToolTip("How the last run ended and where its checkpoint is")

        self.data_box = form_group(
            "Data",
            [
                ("Source", self.source),
                (self.folder_button, self.folder_label),
                ("Image size", self.image_size),
                ("Channels", self.channels),
            ],
        )
        self.model_box = form_group(
            "Model and diffusion",
            [
                ("Model size", self.model_size),
                self.model_info,
                self.class_labels,
                ("Objective", self.objective),
                ("Time sampling", self.flow_time),
                ("Schedule", self.kind),
                ("Steps T", self.steps_T),
                ("Predicts", self.prediction),
            ],
        )
        self.opt_box = form_group(
            "Optimisation",
            [
                ("Batch size", self.batch),
                ("Learning rate", self.lr),
                ("Run for", self.budget),
                ("Steps", self.max_steps),
                ("Minutes", self.max_minutes),
                ("Seed", self.seed),
                ("Device", self.device),
                ("Preview every", self.preview_every),
                ("Autosave every", self.autosave_minutes),
            ],
        )
        self.settings_boxes = (self.data_box, self.model_box, self.opt_box)

        self.stats = QLabel("Not started.")
        self.stats.setTextFormat(Qt.TextFormat.RichText)
        self.stats.setToolTip("Step, loss, throughput, time and the autosave file of the run")
        self.stats.setWordWrap(True)
        # The Run box stays below the settings' scroll area, never scrolled away (1280x720)
        run_box = QGroupBox("Run")
        run_layout = QGridLayout(run_box)
        run_layout.setVerticalSpacing(4)
        run_layout.addWidget(self.start_button, 0, 0)
        run_layout.addWidget(self.pause_button, 0, 1)
        run_layout.addWidget(self.stop_button, 0, 2)
        run_layout.addWidget(self.resume_button, 1, 0, 1, 2)
        run_layout.addWidget(self.clear_resume_button, 1, 2)
        run_layout.addWidget(self.save_button, 2, 0, 1, 2)
        run_layout.addWidget(self.open_button, 2, 2)
        run_layout.addWidget(self.resume_label, 3, 0, 1, 3)
        run_layout.addWidget(self.outcome, 4, 0, 1, 3)
        run_layout.addWidget(self.error, 5, 0, 1, 3)
        self.resume_label.hide()
        self.outcome.hide()
        self.open_button.hide()

        # plots
        self.log_y = check_box("Log loss axis", "Show the loss on a logarithmic axis", True)
        self.log_y.toggled.connect(self._on_log_y)
        self.loss_plot = plot_widget(
            LOSS_TITLE, "Training loss per step (faint) and smoothed (bold)"
        )
        self.loss_plot.setLabel("bottom", "step")
        use_integer_ticks(self.loss_plot)  # steps are whole numbers: no tick at 1.2
        self.loss_plot.addLegend(offset=(-10, 10))
        self.loss_curve = self.loss_plot.plot(
            pen=pg.mkPen((31, 119, 180, 90), width=1), name="loss"
        )
        # A 2-px line is stroked ~4x faster without antialiasing (9.5 -> 2.8 ms a repaint of
        # 3000 steps; benchmarks/README.md, Speed: "GUI under load"); the curve is smooth.
        self.smooth_curve = self.loss_plot.plot(
            pen=pg.mkPen((214, 39, 40), width=2), name="smoothed", antialias=False
        )
        for curve in (self.loss_curve, self.smooth_curve):
            curve.setDownsampling(auto=True, method="peak")
            curve.setClipToView(True)
        self.scatter_plot = plot_widget(
            SCATTER_TITLE, "Per-sample loss (unweighted MSE) against its timestep t"
        )
        self.scatter_plot.setLabel("bottom", "t")
        use_integer_ticks(self.scatter_plot)
        # Each point is drawn as a very short line segment with a 3 px round-capped pen
        # (connect="pairs"): one QPainterPath, ~0.3 ms for 4096 points, where symbols cost
        # 5-15 ms a redraw (per-point symbol-atlas lookups in ScatterPlotItem).
        dot_pen = pg.mkPen((31, 119, 180, 120), width=3)
        dot_pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        self.scatter = self.scatter_plot.plot([], [], pen=dot_pen, connect="pairs", antialias=False)
        self._set_t_range(ScheduleConfig().num_timesteps)
        for plot in (self.loss_plot, self.scatter_plot):
            plot.showGrid(x=False, y=False)  # live plots: grids cost repaint time

        self.preview_stack = QStackedWidget()
        self.preview_image = ImageView(PREVIEW_IMAGE_TITLE)
        self.preview_image.setToolTip(
            "Samples from the EMA weights of the model being trained, every few steps and at "
            "least every 30 s of training; the last one after the final step"
        )
        self.preview_points = points_plot(
            PREVIEW_POINTS_TITLE, "Blue: samples from the model; grey: the training data"
        )
        self.data_scatter = scatter_item(2.5, (90, 90, 90, 150))
        self.sample_scatter = scatter_item(4, (31, 119, 180, 110))
        self.preview_points.addItem(self.sample_scatter)
        self.preview_points.addItem(self.data_scatter)  # the data drawn over the samples
        self.preview_stack.addWidget(self.preview_image)
        self.preview_stack.addWidget(self.preview_points)

        live = QWidget()
        grid = QGridLayout(live)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(self.loss_plot, 0, 0)
        grid.addWidget(self.scatter_plot, 1, 0)
        grid.addWidget(self.preview_stack, 0, 1, 2, 1)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 2)
        grid.setRowStretch(0, 1)
        grid.setRowStretch(1, 1)
        for plot in (self.loss_plot, self.scatter_plot):
            plot.setMinimumHeight(150)

        # The dashboard: the run's history (heatmap of loss over t and steps, gradient norm,
        # learning rate, every preview on a timeline, an earlier run overlaid)
        self.dashboard = TrainingDashboard()
        self.dashboard.status_message.connect(self.status_message)
        self.views = QTabWidget()
        self.views.setDocumentMode(True)
        self.views.addTab(live, "Live")
        self.views.addTab(self.dashboard, "Dashboard")
        self.views.setTabToolTip(0, "The loss, the loss against t and the latest preview")
        self.views.setTabToolTip(
            1,
            "The run's history: loss heatmap over t and steps, gradient norm, learning rate, "
            "every preview on a timeline (GIF export), an earlier run's loss overlaid",
        )
        plots = QWidget()
        column = QVBoxLayout(plots)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.views, 1)
        below = QHBoxLayout()
        below.addWidget(self.log_y)
        below.addWidget(self.stats, 1)
        column.addLayout(below)

        controls = pinned_below(control_column(self.settings_boxes), run_box)
        self.splitter = controls_beside_views(self, controls, plots)
        self._on_log_y(True)

        # Typed values go to core (build_config) and are refused at the field with its reason;
        # image size and autosave keep the app's own limits (memory; core has no autosave).
        # Connected before the panel's own slots: those read `self.fields` first.
        self.fields = FieldCheck(self, lambda: self.build_config(require_data=False))
        self.fields.add(
            self.steps_T, self.batch, self.lr, self.max_steps, self.max_minutes, self.preview_every
        )
        self.fields.add(self.image_size, self.autosave_minutes, self.seed, keep_range=True)
        self.fields.watch(
            self.source.currentIndexChanged,
            self.model_size.currentIndexChanged,
            self.kind.currentIndexChanged,
            self.prediction.currentIndexChanged,
            self.objective.currentIndexChanged,
            self.flow_time.currentIndexChanged,
            self.budget.currentIndexChanged,
            self.channels.currentIndexChanged,
        )
        self.fields.changed.connect(self._update_buttons)
        self.fields.changed.connect(self._on_fields_changed)

        self.source.currentIndexChanged.connect(self._on_source_index_changed)
        self.budget.currentIndexChanged.connect(self._on_budget_changed)
        self.objective.currentIndexChanged.connect(self._on_objective_changed)
        self.model_size.currentIndexChanged.connect(self._update_model_info)
        self.image_size.valueChanged.connect(self._on_image_shape_changed)
        self.channels.currentIndexChanged.connect(self._on_image_shape_changed)

    # ------------------------------------------------------------------ settings widgets

    def source_name(self) -> str:
        """ "digits", a toy set name, or the chosen folder's path."""
        data = self.source.currentData()
        if data == FOLDER:
            return str(self.folder) if self.folder is not None else ""
        return str(data)

    def is_points(self) -> bool:
        return self.source.currentData() in TOY_DATASETS

    def preset(self) -> TrainConfig:
        """The settings core recommends for the chosen data and model size
        (`core.training.preset_config`; for a folder, at its image size and channels)."""
        data, size = self.source.currentData(), self.model_size.currentData()
        if data == FOLDER:
            image_size, channels = self.folder_shape
            return preset_config(
                self.source_name() or FOLDER, size, image_size=image_size, channels=channels
            )
        return preset_config(data, size, **self._label_choice())

    def _label_choice(self) -> dict[str, bool]:
        """The class-labels box's choice as a preset override (only labelled data has one)."""
        if self.source.currentData() in LABELLED_SOURCES:
            return {"class_conditional": self.class_labels.isChecked()}
        return {}

    def apply_preset(self) -> None:
        """Fill the data, diffusion and optimisation fields from `preset()`.

        Seed, device, previews and autosave are the user's and stay as they are."""
        config = self.preset()
        self._show_fields(config)
        # the objective too: the preset's is the measured best for this data (digits: flow)
        set_combo_data(self.objective, config.objective)
        set_combo_data(self.flow_time, config.flow_time_sampling)
        self._on_objective_changed()
        if config.max_steps is not None:
            self.max_steps.setValue(config.max_steps)
        if config.max_minutes is not None:
            self.max_minutes.setValue(config.max_minutes)
        set_combo_data(self.budget, "steps" if config.max_minutes is None else "minutes")
        self._update_model_info()

    def _show_fields(self, config: TrainConfig, shape_only: bool = False) -> None:
        """Show a TrainConfig's image shape (and its diffusion and optimisation settings)."""
        self._filling = True
        try:
            self.image_size.setValue(config.image_size)
            set_combo_data(self.channels, config.channels)
            if shape_only:
                return
            set_combo_data(self.kind, config.schedule.kind)
            self.steps_T.setValue(config.schedule.num_timesteps)
            set_combo_data(self.prediction, config.prediction_type)
            self.batch.setValue(config.batch_size)
            self.lr.setValue(config.learning_rate)
        finally:
            self._filling = False

    def _on_source_index_changed(self) -> None:
        """A data source was chosen (by the user, a dropped folder or restored settings): the
        last run's curves and previews were made for other data and go."""
        self._on_source_changed()
        self.apply_preset()
        self.clear_results()

    def _on_source_changed(self) -> None:
        """Show the rows and previews that fit the data source."""
        data = self.source.currentData()
        folder, points = data == FOLDER, data in TOY_DATASETS
        form = self.data_box.layout()
        # image size and channels are chosen for a folder only (the digits are 28x28 grey,
        # as their name says): shown only where they apply, never frozen
        form.setRowVisible(self.folder_button, folder)
        form.setRowVisible(self.image_size, folder)
        form.setRowVisible(self.channels, folder)
        self.model_box.layout().setRowVisible(self.class_labels, data in LABELLED_SOURCES)
        for w in (self.folder_button, self.folder_label, self.image_size, self.channels):
            w.setEnabled(folder)
        if points:
            self.preview_stack.setCurrentWidget(self.preview_points)
            points_xy = toy_points(data, PREVIEW_POINTS, torch.Generator().manual_seed(0)).numpy()
            self.data_scatter.setData(points_xy[:, 0], points_xy[:, 1])
        else:
            self.preview_stack.setCurrentWidget(self.preview_image)
        self._update_model_info()

    def _on_image_shape_changed(self) -> None:
        refused = bool(self.fields.problem(self.image_size))
        if self.source.currentData() == FOLDER and not self._filling and not refused:
            self.folder_shape = (self.image_size.value(), int(self.channels.currentData()))
        self._update_model_info()

    def _on_objective_changed(self) -> None:
        """Flow matching: its time sampling shown; the schedule kind and the prediction type
        (diffusion's alone) disabled, their tooltips saying why."""
        flow = self.objective.currentData() == "flow"
        self.model_box.layout().setRowVisible(self.flow_time, flow)
        locked = self.resume_from is not None
        self.flow_time.setEnabled(flow and not locked)
        for widget, tip in self._diffusion_tips.items():
            widget.setEnabled(not flow and not locked)
            widget.setToolTip(FLOW_DISABLED_TIP if flow else tip)

    def _on_budget_changed(self) -> None:
        steps = self.budget.currentData() == "steps"
        form = self.opt_box.layout()
        form.setRowVisible(self.max_steps, steps)
        form.setRowVisible(self.max_minutes, not steps)
        self.max_steps.setEnabled(steps)
        self.max_minutes.setEnabled(not steps)

    def _data_shape(self) -> tuple[str, int, int]:
        """(kind, image_size, channels) the settings describe."""
        if self.is_points():
            return "points", 0, 0
        if self.source.currentData() == FOLDER:
            return "images", self.image_size.value(), int(self.channels.currentData())
        config = self.preset()
        return "images", config.image_size, config.channels

    def _update_model_info(self) -> None:
        kind, size, channels = self._data_shape()
        try:
            if self.source.currentData() == FOLDER:  # at the size and channels typed here
                config = default_model_config(kind, size, channels, self.model_size.currentData())
            else:  # the preset's own model (the digits': class-conditional)
                config = self.preset().model
            params = count_parameters(build_model(config))
        except DiffusionStudioError as exc:
            self.model_info.setText(f"<span style='color:#b00020'>{exc}</span>")
            return
        name = "MLP" if kind == "points" else f"UNet {list(config.channels)}"
        classes = getattr(config, "num_classes", 0)
        conditional = f", {classes} classes" if classes else ""  # one line: the box says more
        self.model_info.setText(f"{name}, {params / 1e6:.2f} M parameters{conditional}")

    def choose_folder(self) -> None:
        folder = dialogs.ask_folder(self, "Choose a folder of training images")
        if folder is not None:
            self.set_data_folder(folder)

    def set_data_folder(self, folder: str | Path) -> bool:
        """Train on the images in `folder` (checked now: it must hold image files)."""
        folder = Path(folder)
        try:
            files = list_image_files(folder)
            if not files:
                raise DataError(
                    f"no image files in folder '{folder}'. Choose a folder that contains images."
                )
        except DiffusionStudioError as exc:
            self.report_error("Cannot use folder", str(exc))
            return False
        previous, self.folder = self.folder, folder
        self.folder_shape = (self.folder_shape[0], guess_channels(files))
        self.folder_label.setText(f"{folder.name} ({len(files)} images)")
        self.folder_label.setToolTip(str(folder))
        was_folder = self.source.currentData() == FOLDER
        set_combo_data(self.source, FOLDER)  # a new source: fills the preset, clears the plots
        if was_folder:
            self.apply_preset()
            if previous != folder:
                self.clear_results()  # another folder: other data
        self.file_used.emit(str(folder))
        self.status_message.emit(f"Training data: {folder} ({len(files)} images)")
        return True

    # ------------------------------------------------------------------ config

    def build_config(self, require_data: bool = True) -> TrainConfig:
        """The TrainConfig the fields describe (ConfigError / DataError when they make no sense).

        require_data=False: with no folder chosen yet, a stand-in name (checks the fields only)."""
        steps = self.budget.currentData() == "steps"
        common: dict[str, Any] = dict(
            batch_size=self.batch.value(),
            learning_rate=self.lr.value(),
            device=self.device.currentData(),
            preview_every=self.preview_every.value(),
        )
        if self.resume_from is not None:
            training = self.resume_from.training or {}
            done_steps = int(training.get("step", 0))
            done_minutes = float(training.get("elapsed_s", 0.0)) / 60.0
            budget = (
                dict(max_steps=done_steps + self.max_steps.value(), max_minutes=None)
                if steps
                else dict(max_steps=None, max_minutes=done_minutes + self.max_minutes.value())
            )
            return resume_config(self.resume_from, **common, **budget)
        source = self.source_name()
        if not source and require_data:
            raise DataError("choose a folder of images first (Choose folder…)")
        source = source or FOLDER
        kind, size, channels = self._data_shape()
        schedule = ScheduleConfig(self.kind.currentData(), self.steps_T.value())
        overrides: dict[str, Any] = dict(
            common,
            schedule=schedule,
            prediction_type=self.prediction.currentData(),
            objective=self.objective.currentData(),
            flow_time_sampling=self.flow_time.currentData(),
            seed=self.seed.value(),
            max_steps=self.max_steps.value() if steps else None,
            max_minutes=None if steps else self.max_minutes.value(),
            preview_steps=min(50, schedule.num_timesteps),
        )
        if kind == "images":
            overrides.update(image_size=size, channels=channels)
        overrides.update(self._label_choice())
        return preset_config(source, self.model_size.currentData(), **overrides)

    # ------------------------------------------------------------------ run control

    def runners(self) -> list[JobRunner]:
        return [self.runner, self.dashboard.export_runner]

    def start(self) -> bool:
        """Start a run with the current settings. False (and a message) when they are invalid."""
        if self.runner.is_running:
            return False
        if not self.fields.valid:
            self.show_problem("Cannot start training", self.fields.first_problem())
            return False
        try:
            config = self.build_config()
        except (DiffusionStudioError, TypeError) as exc:
            self.show_problem("Cannot start training", str(exc))
            return False
        self.clear_problem()
        self._set_t_range(config.schedule.num_timesteps)
        resume = self.resume_from
        if resume is None:
            self._reset_plots("Starting…", config.schedule.num_timesteps, config.objective)
        self._run_config = config
        self._update_loss_texts(config)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = self._data_name(config)
        self._show_outcome(f"Training on {name}…")
        self.autosave_path = checkpoints_dir() / f"{name}-{stamp}.safetensors"
        self._autosave_failed = False
        self.start_time = time.monotonic()
        job = self._make_job(config, resume, self.autosave_path, name)
        self.runner.start(job)
        self.timer.start()
        self._update_buttons()
        self.status_message.emit(f"Training on {name}; autosaving to {self.autosave_path}")
        return True

    def _data_name(self, config: TrainConfig) -> str:
        """The data's short name: "digits", a toy set, or the folder's name."""
        return Path(config.data).name if config.data not in TOY_DATASETS else config.data

    def _make_job(
        self, config: TrainConfig, resume: Checkpoint | None, autosave: Path, name: str
    ) -> Job:
        control = TrainControl()
        interval_s = self.autosave_minutes.value() * 60.0
        policy = AutosavePolicy(every_s=interval_s if interval_s > 0 else None)
        requests, results = self._save_requests, self._save_results
        state: dict[str, Any] = {"saver": None}
        # "result": the SaveResult of a run that failed (its last good step, saved or not)
        last_good: dict[str, SaveResult] = {}
        self._last_good = last_good
        unit = "pts/s" if self.is_points() and resume is None else "img/s"
        if resume is not None and resume.is_points:
            unit = "pts/s"

        def run():  # worker thread
            trainer = Trainer(config, control, resume=resume)
            state["saver"] = RunSaver(trainer, autosave, policy)
            return keep_last_good_step(state["saver"])

        def keep_last_good_step(saver: RunSaver):  # worker thread
            """The trainer's records; when it fails with a TrainingError the weights are still
            those of the last good step: save them (core.training_session) before the failure
            is reported."""
            try:
                yield from saver.trainer.run()
            except TrainingError:
                last_good["result"] = saver.save_run()
                raise

        def handle_requests(trainer: Trainer) -> None:
            while True:
                try:
                    path = requests.get_nowait()
                except queue.Empty:
                    return
                try:
                    trainer.save(str(path))
                    results.put((path, None))
                except DiffusionStudioError as exc:
                    results.put((path, str(exc)))

        def on_record(_record) -> None:  # worker thread, between steps
            saver: RunSaver = state["saver"]
            handle_requests(saver.trainer)
            saved = saver.autosave()
            if saved is not None and saved.error is not None:
                results.put((autosave, saved.error))

        def on_end(outcome) -> TrainResult | None:  # worker thread, after the last step
            saver: RunSaver | None = state["saver"]
            if saver is None:
                return None
            handle_requests(saver.trainer)
            saved = saver.save_run()
            if saved.error is not None:  # disk full, read-only: the model is kept
                results.put((autosave, saved.error))
            return TrainResult(saved.checkpoint, saved.path, saved.step, name, outcome, saved.error)

        def describe(record) -> JobStatus | None:  # GUI thread
            if isinstance(record, TrainPreview):
                # after the final preview only the checkpoint is left to write
                return JobStatus(text="Saving the checkpoint…") if record.final else None
            if record.preview_follows and record.fraction_done >= 1.0:
                return JobStatus(text="Sampling the final preview…")  # a busy bar, no ETA
            total = f"/{record.total_steps}" if record.total_steps else ""
            previewing = ": sampling a preview…" if record.preview_follows else ""
            return JobStatus(
                text=f"Training step {record.step}{total}{previewing}",
                fraction=record.fraction_done,
                rate=f"{record.samples_per_s:,.0f} {unit}{record.threads.note() if record.threads else ''}",
                eta_s=record.eta_s,
            )

        return Job("Training", run, control, on_record, on_end, describe)

    def stop(self) -> None:
        """Stop the run; it saves its checkpoint and the model goes to Playback."""
        if self.runner.is_running:
            self.runner.cancel()
            self.status_message.emit("Stopping training (saving a checkpoint)…")

    def _on_pause_toggled(self, on: bool) -> None:
        if on:
            self.runner.pause()
        else:
            self.runner.resume()

    def _on_paused_changed(self, paused: bool) -> None:
        self._show_paused(paused)
        self.status_message.emit("Training paused." if paused else "Training resumed.")

    def _show_paused(self, paused: bool) -> None:
        self.pause_button.blockSignals(True)
        self.pause_button.setChecked(paused)
        self.pause_button.setText("Resume" if paused else "Pause")
        self.pause_button.blockSignals(False)

    def _update_buttons(self) -> None:
        running = self.runner.is_running
        self.start_button.setEnabled(not running and self.fields.valid)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        self.resume_button.setEnabled(not running)
        self.clear_resume_button.setEnabled(not running and self.resume_from is not None)
        for box in self.settings_boxes:
            box.setEnabled(not running)
        if not running:
            self._show_paused(False)
        if self.resume_from is not None and not running:
            self._lock_for_resume(True)

    # ------------------------------------------------------------------ records (GUI thread)

    def _on_progressed(self, record: object) -> None:
        if isinstance(record, TrainProgress):
            self.latest = record
            self._append_loss(record.step, record.loss)
            self.dashboard.add_step(step_record(record, self.dashboard.num_timesteps))
            n = len(record.timesteps)
            index = (self.scatter_n + np.arange(n)) % SCATTER_POINTS
            self.scatter_t[index] = record.timesteps
            self.scatter_loss[index] = record.losses
            self.scatter_n += n
            self._dirty = True
            if record.preview_follows:  # sampling takes a while (a minute on a slow machine)
                final = record.fraction_done >= 1.0
                self._show_outcome(
                    "Sampling the final preview…"
                    if final
                    else f"Sampling a preview at step {record.step}…"
                )
        elif isinstance(record, TrainPreview):
            self.preview = record
            self._preview_dirty = True
            self.dashboard.add_preview(record.step, preview_picture(record.samples))
            if not record.final and self._run_config is not None:
                self._show_outcome(f"Training on {self._data_name(self._run_config)}…")

    def _append_loss(self, step: int, loss: float) -> None:
        """One point of the raw curve and of its exponential moving average, whose window
        grows with the run (5 % of the steps so far, 3 to 100 steps) so that the smoothed
        curve neither lags a short run nor jitters on a long one."""
        self.loss.append(step, loss)
        lo, hi = SMOOTHING_WINDOW
        keep = 1.0 - 1.0 / min(max(0.05 * self._smooth_count, lo), hi)
        self._smooth_count += 1
        # bias-corrected: _smooth_weight is the total weight of the average so far
        self._smooth_state = keep * self._smooth_state + (1 - keep) * loss
        self._smooth_weight = keep * self._smooth_weight + (1 - keep)
        self.smoothed.append(step, self._smooth_state / self._smooth_weight)

    def _on_timer(self) -> None:
        self._poll_save_results()
        running = self.runner.is_running
        now = time.monotonic()
        # One plot redrawn per tick: a plot's paint holds the GUI thread 10-17 ms, and redraws
        # made in one tick are painted together in the next event-loop pass (one longer stall).
        if self._dirty and (not running or now - self._drawn_at >= LIVE_REDRAW_S):
            # While training, at most LIVE_REDRAW_S between redraws: every paint takes CPU
            # and the GIL from the training thread (benchmarks/README.md, "GUI under load").
            self._dirty = False
            self._drawn_at = now
            self._redraw_curves()
            self._update_stats()
            self._curve_redraws += 1
            if self._curve_redraws % SCATTER_EVERY == 0 or not running:
                self._scatter_due = True  # on the next tick
        elif self._scatter_due:
            self._scatter_due = False
            self._redraw_scatter()
        elif self._preview_dirty:
            self._preview_dirty = False
            self._redraw_preview()
        idle = not (self._dirty or self._scatter_due or self._preview_dirty)
        if not running and idle and self._save_results.empty():
            self.timer.stop()

    def redraw_now(self) -> None:
        """Draw the latest state at once (the timer does it as records arrive, at most every
        LIVE_REDRAW_S during a run)."""
        self._redraw_curves()
        self._redraw_scatter()
        self._redraw_preview()
        self._update_stats()
        self.dashboard.redraw_now()

    def _redraw_curves(self) -> None:
        steps, losses = self.loss.data()
        s_steps, s_losses = self.smoothed.data()
        self.loss_curve.setData(steps, losses)
        self.smooth_curve.setData(s_steps, s_losses)

    def _set_t_range(self, num_timesteps: int) -> None:
        """Fix the loss-against-t plot's x range to 0..T (no autorange on every redraw)."""
        self.scatter_plot.setXRange(0, num_timesteps, padding=0.02)
        self._dot_length = num_timesteps / 2000  # in t units: well under a pixel

    def _redraw_scatter(self) -> None:
        n = min(self.scatter_n, SCATTER_POINTS)
        t, loss = self.scatter_t[:n], self.scatter_loss[:n]
        keep = loss > 0  # a log axis cannot show 0
        x = np.repeat(t[keep], 2)  # (2k,): each point as a segment (t, t + dot) at its loss
        x[1::2] += self._dot_length
        self.scatter.setData(x, np.repeat(loss[keep], 2))

    def _redraw_preview(self) -> None:
        preview = self.preview
        if preview is None:
            return
        which = "Final samples" if preview.final else "Preview samples"
        title = f"{which} at step {preview.step} (EMA weights)"
        if preview.samples.ndim == 2:
            self.sample_scatter.setData(preview.samples[:, 0], preview.samples[:, 1])
            self.preview_points.setTitle(title)
        else:
            grid = make_grid(to_uint8_images(preview.samples), padding=1, pad_value=255)
            self.preview_image.set_image(grid)
            self.preview_image.set_title(title)

    def _update_stats(self) -> None:
        r = self.latest
        if r is None:
            return
        total = f" / {r.total_steps}" if r.total_steps else ""
        unit = (
            "points/s" if self.preview_stack.currentWidget() is self.preview_points else "images/s"
        )
        where = f"<br>Autosave: {self.autosave_path.name}" if self.autosave_path else ""
        self.stats.setToolTip(
            "Step, loss, throughput and time of the run"
            + (f"\nAutosave file: {self.autosave_path}" if self.autosave_path else "")
        )
        if not self.runner.is_running:
            eta = ""  # the run is over: the outcome line says how it ended
        elif r.preview_follows and r.fraction_done >= 1.0:
            eta = "sampling the final preview…"
        else:
            eta = f"ETA {format_duration(r.eta_s)}"
        self.stats.setText(
            f"Step <b>{r.step}</b>{total} &nbsp; loss {r.loss:.4g}<br>"
            f"{r.samples_per_s:,.0f} {unit} &nbsp; lr {r.lr:.2e}<br>"
            f"elapsed {format_duration(r.elapsed_s)} &nbsp; {eta}{where}"
        )

    def _on_log_y(self, on: bool) -> None:
        for plot in (self.loss_plot, self.scatter_plot):
            plot.setLogMode(x=False, y=on)

    def _reset_plots(
        self,
        stats: str = "Not started.",
        num_timesteps: int | None = None,
        objective: str | None = None,
    ) -> None:
        """Empty the curves, the scatter, the previews (and their captions), the numbers and
        the dashboard (for a run of `num_timesteps` T and `objective`; default: the fields')."""
        objective = objective or str(self.objective.currentData())
        self.dashboard.reset(num_timesteps or self.steps_T.value(), objective)
        self.scatter_plot.setLabel("bottom", t_axis_label(objective))
        if self._history_overlaid:  # the curve of a checkpoint no longer to be resumed
            self.dashboard.clear_overlay()
            self._history_overlaid = False
        self.loss.clear()
        self.smoothed.clear()
        self._smooth_state = 0.0
        self._smooth_weight = 0.0
        self._smooth_count = 0
        self.scatter_n = 0
        self.latest = None
        self.preview = None
        self._dirty = self._preview_dirty = self._scatter_due = False
        self.sample_scatter.clear()
        self.preview_image.clear_image()
        self.preview_image.set_title(PREVIEW_IMAGE_TITLE)
        self.preview_points.setTitle(PREVIEW_POINTS_TITLE)
        self.redraw_now()
        self.stats.setText(stats)
        self.stats.setToolTip("Step, loss, throughput and time of the run")

    def clear_results(self) -> None:
        """Forget what the last run drew (curves, previews and their captions, numbers, the
        error line): it was made for other data. The outcome line names the run's data and
        stays, with its Open in Playback."""
        if self.runner.is_running:
            return
        self._reset_plots()
        self.clear_problem()
        self._run_config = None
        self.loss_plot.enableAutoRange()  # no axis range left from the other data
        self.scatter_plot.enableAutoRange(axis="y")
        self._set_t_range(self.steps_T.value())
        self._update_loss_texts()

    def _on_fields_changed(self) -> None:
        if self._run_config is None:  # nothing drawn yet: the titles follow the fields
            self._update_loss_texts()

    def _update_loss_texts(self, config: TrainConfig | None = None) -> None:
        """Say what the two loss plots show for `config` (default: the fields' settings)."""
        if config is None:
            try:
                config = self.build_config(require_data=False)
            except (DiffusionStudioError, TypeError):
                return
        title, tip, scatter_title, scatter_tip = loss_texts(config)
        self.loss_plot.setTitle(title)
        self.loss_plot.setToolTip(tip)
        self.scatter_plot.setTitle(scatter_title)
        self.scatter_plot.setToolTip(scatter_tip)

    def _show_outcome(
        self, text: str, checkpoint: Checkpoint | None = None, failed: bool = False
    ) -> None:
        """The Run box's state line (kept until the next run); with a checkpoint, the
        Open in Playback button next to it."""
        self.outcome.setText(text)
        self.outcome.setStyleSheet("color: #b00020;" if failed else "")
        self.outcome.setVisible(bool(text))
        self._outcome_checkpoint = checkpoint
        self.open_button.setVisible(checkpoint is not None)

    def _on_open_clicked(self) -> None:
        if self._outcome_checkpoint is not None:
            self.open_in_playback.emit(self._outcome_checkpoint)

    # ------------------------------------------------------------------ end of a run

    def _on_run_ended(self, *_args: object) -> None:
        result = self.runner.result
        self._update_buttons()
        self.redraw_now()
        if isinstance(result, TrainResult):
            self.last_result = result
            self.resume_from = None
            self.resume_path = None
            self._lock_for_resume(False)
            self._show_resume_text("")
            text = outcome_text(result)
            self._show_outcome(text, result.checkpoint if result.step > 0 else None)
            self.status_message.emit(text)
            if result.path is not None:
                self.file_used.emit(str(result.path))
            self.model_trained.emit(result.checkpoint)
        self.timer.start()  # draw the last records, then the timer stops itself

    def _on_failed(self, message: str) -> None:
        self._update_buttons()
        self.redraw_now()
        last_good = self._last_good.get("result")
        checkpoint = None
        if last_good is not None and last_good.step > 0:  # the job saved it as it failed
            checkpoint = last_good.checkpoint
            if last_good.path is not None:
                kept = f"; last good step {last_good.step} saved to {last_good.path}"
            else:
                kept = (
                    f"; last good step {last_good.step} not saved ({last_good.error.rstrip('.')}): "
                    "use “Save checkpoint as…” to keep it"
                )
            data = self._data_name(self._run_config) if self._run_config is not None else ""
            # Save Checkpoint As now saves this model, not an older run's
            self.last_result = TrainResult(
                checkpoint, last_good.path, last_good.step, data, "failed", last_good.error
            )
        elif self.autosave_path is not None and self.autosave_path.exists():
            kept = f"; the last autosave is kept at {self.autosave_path}"
        else:
            kept = ""
        text = f"Failed: {message.rstrip('.')}{kept}."
        self._show_outcome(text, checkpoint, failed=True)  # the outcome line is the error line
        self.report_error("Training stopped", text.removeprefix("Failed: "))

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint_as(self) -> None:
        """Save the model: the running one (between two steps) or the last one that ended."""
        if not self.runner.is_running and self.last_result is None:
            self.report_error("Save checkpoint", "Nothing to save yet: train a model first.")
            return
        path = dialogs.ask_save_path(
            self,
            "Save checkpoint as",
            dialogs.CHECKPOINT_SAVE_FILTER,
            self.suggest(self.suggested_checkpoint_name()),  # in the last checkpoint folder
        )
        if path is None:
            return
        if self.runner.is_running:
            self._save_requests.put(path)  # the worker saves it after the current step
            self.timer.start()
            return
        try:
            save_checkpoint(path, self.last_result.checkpoint)
        except DiffusionStudioError as exc:
            self.report_error("Save checkpoint", str(exc))
            return
        self.file_used.emit(str(path))
        self.status_message.emit(f"Saved the model to {path}")

    def suggested_checkpoint_name(self) -> str:
        """The run's own name for Save Checkpoint As: data, model and step
        (e.g. 'digits-unet-step1500.safetensors')."""
        if self.runner.is_running and self._run_config is not None:
            config = self._run_config
            step = self.latest.step if self.latest is not None else 0
            return checkpoint_file_name(self._data_name(config), config.model, step)
        assert self.last_result is not None
        result = self.last_result
        return checkpoint_file_name(result.data, result.checkpoint.model_config, result.step)

    def _poll_save_results(self) -> None:
        while True:
            try:
                path, error = self._save_results.get_nowait()
            except queue.Empty:
                return
            if error is None:
                self.file_used.emit(str(path))
                self.status_message.emit(f"Saved the model to {path}")
            elif path == self.autosave_path:
                going_on = "training goes on and " if self.runner.is_running else ""
                message = (
                    f"Autosave failed: {error}\n\nThe model is not lost: {going_on}it stays in "
                    "memory; use “Save checkpoint as…” to save it elsewhere."
                )
                if self._autosave_failed:  # one dialog a run; later failures in the status bar
                    self.status_message.emit(message.replace("\n\n", " "))
                else:
                    self._autosave_failed = True
                    self.report_error("Autosave", message)
            else:
                self.report_error("Save checkpoint", error)

    def choose_resume_checkpoint(self) -> None:
        path = dialogs.ask_open_path(
            self, "Resume training from checkpoint", dialogs.CHECKPOINT_FILTER
        )
        if path is not None:
            self.set_resume_checkpoint(path)

    def set_resume_checkpoint(self, path: str | Path) -> bool:
        """Prepare to continue the run saved in `path` (Start then resumes it)."""
        try:
            ckpt = load_checkpoint(path)
            if not ckpt.can_resume:
                raise ConfigError(
                    f"'{Path(path).name}' holds no training state (it is for sampling only): "
                    "open it on the Playback tab instead"
                )
            config = resume_config(ckpt)
        except DiffusionStudioError as exc:
            self.report_error("Cannot resume", str(exc))
            return False
        self.resume_from, self.resume_path = ckpt, Path(path)
        self._show_config(config)
        self._run_config = config
        self._update_loss_texts(config)
        step = int((ckpt.training or {}).get("step", 0))
        self._show_resume_text(
            f"Resuming <b>{Path(path).name}</b> from step {step}: Start continues it for the "
            "steps / minutes set above."
        )
        self._reset_plots(num_timesteps=config.schedule.num_timesteps, objective=config.objective)
        history_steps = ckpt.training_state.get("history/step")
        history_losses = ckpt.training_state.get("history/loss")
        if history_steps is not None and history_losses is not None:
            for done, value in zip(history_steps.tolist(), history_losses.tolist()):
                self._append_loss(done, value)
            # the dashboard keeps no per-step details of the earlier part: its loss is overlaid
            self.dashboard.set_overlay(
                f"steps 1-{step}, before resuming",
                history_steps.numpy(),
                history_losses.float().numpy(),
            )
            self._history_overlaid = True
        self.redraw_now()
        self.fields.recheck()
        self._update_buttons()
        self.file_used.emit(str(path))
        return True

    def _show_resume_text(self, text: str) -> None:
        self.resume_label.setText(text)
        self.resume_label.setVisible(bool(text))

    def clear_resume(self) -> None:
        self.resume_from = None
        self.resume_path = None
        self._show_resume_text("")
        self._lock_for_resume(False)
        self.fields.recheck()
        self._update_buttons()

    def _lock_for_resume(self, locked: bool) -> None:
        """While resuming, data, model and diffusion settings come from the checkpoint."""
        for w in (
            self.source,
            self.folder_button,
            self.model_size,
            self.kind,
            self.steps_T,
            self.prediction,
            self.objective,
            self.flow_time,
            self.seed,
            self.image_size,
            self.channels,
            self.class_labels,
        ):
            w.setEnabled(not locked)
        if not locked:
            self._on_source_changed()
        self._on_objective_changed()

    def _show_config(self, config: TrainConfig) -> None:
        """Show the run a checkpoint resumes: its data and its settings."""
        if config.data in LABELLED_SOURCES:
            self.class_labels.setChecked(bool(getattr(config.model, "num_classes", 0)))
        if config.data in DIGIT_SOURCES:
            set_combo_data(self.source, "digits")  # the run itself keeps its own data
        elif config.data in TOY_DATASETS:
            set_combo_data(self.source, config.data)
        else:
            self.folder = Path(config.data)
            self.folder_label.setText(self.folder.name)
            self.folder_shape = (config.image_size, config.channels)
            set_combo_data(self.source, FOLDER)
        self._show_fields(config)
        self.seed.setValue(config.seed)
        set_combo_data(self.objective, config.objective)  # the user's choice, not the preset's
        set_combo_data(self.flow_time, config.flow_time_sampling)

    # ------------------------------------------------------------------ settings

    def persistent_widgets(self) -> dict[str, Persistent]:
        names = (
            "source model_size image_size channels kind steps_T prediction objective flow_time "
            "batch lr budget "
            "max_steps max_minutes seed device preview_every autosave_minutes log_y class_labels"
        )
        return {name: getattr(self, name) for name in names.split()}

    def save_state(self, settings: QSettings) -> None:
        super().save_state(settings)
        settings.setValue(f"{self.key()}/folder", str(self.folder) if self.folder else "")

    def restore_state(self, settings: QSettings) -> None:
        folder = str(settings.value(f"{self.key()}/folder", "") or "")
        if folder and Path(folder).is_dir():
            self.folder = Path(folder)
            self.folder_label.setText(self.folder.name)
            self.folder_label.setToolTip(folder)
        super().restore_state(settings)
        if self.source.currentData() == FOLDER and self.folder is None:
            set_combo_data(self.source, "digits")  # the saved folder is gone
        if self.source.currentData() != FOLDER:  # digits: the fixed shape, whatever was saved
            self._show_fields(self.preset(), shape_only=True)
        self._on_source_changed()
        self._on_budget_changed()
        self._on_objective_changed()
