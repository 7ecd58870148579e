"""Playback panel: sample from a model in the worker, then play the reverse process back.

Frames arrive from `core.sampling.sample` as the worker produces them and are stored in a
`core.sampling.Trajectory` (uint8 images / float points, bounded memory) owned by the GUI
thread; a 30 Hz timer draws the newest frame while sampling and the chosen frame afterwards.

A flow-matching checkpoint (core.flow) samples on its path with the flow samplers: the sampler
form lists the samplers of the model's objective only, and a model of the other objective
brings core's default sampler for it. Its frames carry the path index k of t = (k + 1) / T;
the frame caption shows both.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from dataclasses import replace
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
    QSlider,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from diffusion_studio.app import dialogs
from diffusion_studio.app.field_view import FieldViewDialog
from diffusion_studio.app.guidance_sweep_view import GuidanceSweepDialog, SweepSource
from diffusion_studio.app.panels.base import Panel
from diffusion_studio.app.panels.schedule_panel import describe
from diffusion_studio.app.sampler_form import SamplerForm
from diffusion_studio.app.settings import read_json, write_json
from diffusion_studio.app.widgets import (
    POINT_EXTENT,
    REDRAW_INTERVAL_MS,
    ErrorLabel,
    FieldCheck,
    ImageView,
    Persistent,
    button,
    button_row,
    check_box,
    combo_box,
    control_column,
    controls_beside_views,
    double_box,
    form_group,
    guard_wheel_in,
    pinned_below,
    points_plot,
    scatter_item,
    set_combo_data,
    spin_box,
)
from diffusion_studio.app.worker import Job, JobControl, JobRunner, JobStatus
from diffusion_studio.core import checkpoint as core_checkpoint
from diffusion_studio.core.checkpoint import (
    Checkpoint,
    build_model_from_checkpoint,
    load_checkpoint,
)
from diffusion_studio.core.data import is_builtin_digits
from diffusion_studio.core.diffusers_models import find_diffusers_model
from diffusion_studio.core.errors import ConfigError, DiffusionStudioError
from diffusion_studio.core.export import (
    make_grid,
    reverse_caption,
    reverse_pictures,
    save_gif,
    save_png_frames,
    select_frame_indices,
)
from diffusion_studio.core.flow import FlowPath, ForwardPath, forward_path
from diffusion_studio.core.guidance import (
    DEFAULT_GUIDANCE_SCALE,
    MAX_GUIDANCE_SCALE,
    check_guidance_scale,
)
from diffusion_studio.core.guidance_sweep import sweep_classes
from diffusion_studio.core.models import count_parameters
from diffusion_studio.core.samplers import default_sampler_config, make_sampler
from diffusion_studio.core.sampling import (
    MAX_FRAMES,
    Frame,
    SampleRequest,
    Trajectory,
    prepare_sampling,
    sampling_timesteps,
    start_image_tensor,
)

log = logging.getLogger(__name__)

SPEEDS = [(f"{s:g}×", s) for s in (0.25, 0.5, 1.0, 2.0, 4.0)]
BASE_FPS = 15.0
TRAIL_FRAMES = 8
PRETRAINED_DEFAULT = "digits"  # the bundled model chosen on first launch
MODEL_NAMES = {"unet": "UNet", "mlp": "MLP", "diffusers_unet": "diffusers UNet2DModel"}

EVERY_DIGIT = "Every digit in turn"
EVERY_CLASS = "Every class in turn"
UNCONDITIONAL = "– (unconditional model)"

NO_FRAMES = "No frames yet: press Sample."
FROM_IMAGE_TIP = "Noise an image to the start t and run the reverse process from there"
POINTS_START = "2-D models start from noise"

VIEW_GRID_XT = "grid_xt"
VIEW_GRID_X0 = "grid_x0"
VIEW_PAIR = "pair"
VIEW_POINTS = "points"
IMAGE_VIEWS = [
    ("Grid of x_t", VIEW_GRID_XT),
    ("Grid of x_0 predictions", VIEW_GRID_X0),
    ("One sample: x_t | x_0 prediction", VIEW_PAIR),
]
POINT_VIEWS = [("Point cloud with trails", VIEW_POINTS)]
# the view each export choice is in core.export.reverse_pictures
CORE_VIEWS = {VIEW_GRID_XT: "xt", VIEW_GRID_X0: "x0", VIEW_PAIR: "pair", VIEW_POINTS: "xt"}


def _copy_frame(frame: Frame) -> Frame:
    """A frame whose tensors the worker no longer references (safe to hand to the GUI thread)."""
    return Frame(frame.step, frame.t, frame.x_t.clone(), frame.pred_x0.clone(), frame.threads)


class PlaybackPanel(Panel):
    """Choose a model and a sampler, sample, and play the reverse process back."""

    title = "Playback"
    # the chosen model (a Checkpoint, or None): the Sampler Lab samples the same one
    model_changed = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = self.make_job_runner(
            "sampling", self._on_frame, self._on_sampling_ended, self._on_sampling_failed
        )
        self.export_runner = self.make_export_runner("playback-export")
        # the guidance sweep's runs (its window shows them; the status bar tracks the runner)
        self.sweep_runner = JobRunner("guidance-sweep", self)
        self.sweep_runner.ended.connect(self._update_buttons)
        self.sweep_dialog: GuidanceSweepDialog | None = None
        self.field_dialog: FieldViewDialog | None = None  # the 2-D field window
        self.models: dict[str, Checkpoint | Path] = {}
        self.checkpoint: Checkpoint | None = None
        self.trajectory: Trajectory | None = None
        self.start_image: Path | None = None
        self.frame_index = 0
        self._dirty = False
        # what the stored frames were made with: the request, and the name its exports take
        self.made_with: SampleRequest | None = None
        self._made_name = ""
        self._build()
        self.redraw_timer = QTimer(self)
        self.redraw_timer.setInterval(REDRAW_INTERVAL_MS)
        self.redraw_timer.timeout.connect(self._on_redraw_timer)
        self.play_timer = QTimer(self)
        self.play_timer.timeout.connect(self._on_play_tick)
        self._on_speed_changed()
        self._add_pretrained_models()
        guard_wheel_in(self)
        self._update_buttons()

    # ------------------------------------------------------------------ messages

    def show_problem(self, title: str, message: str) -> None:
        """The dialog; the red line keeps the reason only while the panel has no model to
        sample from (the one place that explains the empty Model box afterwards)."""
        if self.error is not None:
            self.error.show_message(message if self.checkpoint is None else "")
        self.report_error(title, message)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.model_choice = combo_box([], "The model to sample from")
        self.model_choice.currentIndexChanged.connect(self._on_model_chosen)
        self.open_button = button(
            "Open checkpoint…", "Load a model saved by Diffusion Studio (.safetensors)"
        )
        self.open_button.clicked.connect(self.choose_checkpoint)
        self.open_folder_button = button(
            "Open model folder…",
            "Load a diffusers UNet2DModel folder (config.json + "
            "diffusion_pytorch_model.safetensors) or a DDPM pipeline folder with unet/",
        )
        self.open_folder_button.clicked.connect(self.choose_model_folder)
        self.model_info = QLabel(
            "No model yet: train one on the Training tab or open a checkpoint."
        )
        self.model_info.setWordWrap(True)
        self.model_info.setToolTip("What the chosen model is and how it was trained")

        # the sampler and its settings: a form generated from the sampler registry
        self.sampler_form = SamplerForm()
        self.sampler_form.set_config(default_sampler_config(is_points=False))  # core's default
        # the form's fields under the names other code and tests know them by
        self.sampler_kind = self.sampler_form.kind
        self.num_steps = self.sampler_form.steps
        self.spacing = self.sampler_form.spacing
        self.clip_x0 = self.sampler_form.clip_x0
        self.num_samples = spin_box(1, 20000, 16, "How many samples to draw at once")
        self.class_label = combo_box(
            [(UNCONDITIONAL, None)],
            "For a class-conditional model (such as the digits): which class to draw",
        )
        self.class_label.setEnabled(False)  # until a class-conditional model is chosen
        self.guidance = double_box(
            0.0,
            MAX_GUIDANCE_SCALE,
            DEFAULT_GUIDANCE_SCALE,
            "Classifier-free guidance scale for a class-conditional model: 1 = the plain "
            "conditional model, higher = samples that look more like their class (and vary "
            "less); every step then evaluates the network twice",
            1,
            0.5,
        )
        self.guidance.setEnabled(False)
        self.sweep_button = button(
            "Guidance sweep…",
            "For a class-conditional model: a grid of the classes at several guidance scales, "
            "every row from the same noise, with this sampler and seed",
        )
        self.sweep_button.clicked.connect(self.open_guidance_sweep)
        self.field_button = button(
            "2-D field…",
            "For a 2-D point model: its learned field at a chosen t as arrows, with particles "
            "moving along it (and the exact field for the gaussians set)",
        )
        self.field_button.clicked.connect(self.open_field_view)
        self.seed = spin_box(0, 2**31 - 1, 0, "Seed of the initial noise (and of DDPM's noise)")
        self.from_image = check_box("Start from an image", FROM_IMAGE_TIP)
        self.from_image.toggled.connect(self._update_buttons)
        self.image_button = button(
            "Choose image…", "The image to start from (default: the Forward tab's)"
        )
        self.image_button.clicked.connect(self.choose_start_image)
        self.image_label = QLabel("–")
        self.image_label.setWordWrap(True)
        self.start_t = spin_box(0, 999, 500, "Timestep the image is noised to before reversing")
        self.sample_button = button("Sample", "Run the reverse process", "Ctrl+R")
        self.sample_button.clicked.connect(self.start_sampling)
        self.cancel_button = button("Cancel", "Stop sampling")
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.error = ErrorLabel()

        # playback
        self.play_button = button("Play", "Play the stored frames", "Space")
        self.play_button.setCheckable(True)
        self.play_button.toggled.connect(self._on_play_toggled)
        self.back_button = button("◀", "One frame back", "Left")
        self.back_button.clicked.connect(lambda: self.step_frames(-1))
        self.forward_button = button("▶", "One frame forward", "Right")
        self.forward_button.clicked.connect(lambda: self.step_frames(1))
        self.scrub = QSlider(Qt.Orientation.Horizontal)
        self.scrub.setToolTip(
            "Scrub through the stored frames (noise on the left, samples on the right)"
        )
        self.scrub.valueChanged.connect(self.show_frame)
        self.speed = combo_box([(label, s) for label, s in SPEEDS], "Playback speed")
        set_combo_data(self.speed, 1.0)
        self.speed.currentIndexChanged.connect(self._on_speed_changed)
        self.loop = check_box("Loop", "Start again at the end", True)
        self.sample_index = spin_box(
            0, 0, 0, "Which sample to show as x_t beside its x_0 prediction"
        )
        self.sample_index.valueChanged.connect(lambda _v: self._draw())
        self.grid_of = combo_box(
            [("x_t", "x_t"), ("x_0 predictions", "pred_x0")], "What the grid of all samples shows"
        )
        self.grid_of.currentIndexChanged.connect(lambda _i: self._draw())
        self.frame_label = QLabel(NO_FRAMES)
        self.frame_label.setToolTip("Which stored frame is shown")
        self.stale_label = QLabel()
        self.stale_label.setWordWrap(True)
        self.stale_label.setStyleSheet("color: #8a5a00;")
        self.stale_label.setToolTip(
            "The frames were sampled with other settings than the ones now in the form"
        )
        self.stale_label.hide()

        # export
        self.export_view = combo_box(IMAGE_VIEWS, "What the GIF / PNG frames show")
        self.export_from = spin_box(0, 0, 0, "First stored frame to export")
        self.export_to = spin_box(0, 0, 0, "Last stored frame to export")
        self.export_frames = spin_box(2, 1000, 60, "Number of frames (evenly spaced in the range)")
        self.export_fps = spin_box(1, 50, 15, "GIF frames per second", suffix=" fps")
        self.export_scale = spin_box(1, 16, 4, "Enlarge each pixel this many times", suffix="×")
        self.export_loop = check_box("Loop GIF", "The GIF repeats forever", True)
        self.gif_button = button("Export GIF…", "Save the playback as an animated GIF")
        self.gif_button.clicked.connect(self.export_gif)
        self.png_button = button("Export PNG frames…", "Save the frames as numbered PNG files")
        self.png_button.clicked.connect(self.export_png_frames)

        model_box = form_group(
            "Model",
            [
                ("Model", self.model_choice),
                button_row(self.open_button, self.open_folder_button),
                self.model_info,
            ],
        )
        sampler_box = form_group(
            "Sampler",
            [
                self.sampler_form,
                ("Class", self.class_label),
                ("Guidance", self.guidance),
                button_row(self.sweep_button, self.field_button),
                ("Samples", self.num_samples),
                ("Seed", self.seed),
                self.from_image,
                (self.image_button, self.image_label),
                ("Start t", self.start_t),
            ],
        )
        # Under the views, always on screen: playback (a media player's bar) and export.
        play_box = QGroupBox("Playback")
        play_grid = QGridLayout(play_box)
        play_grid.addWidget(self.back_button, 0, 0)
        play_grid.addWidget(self.play_button, 0, 1)
        play_grid.addWidget(self.forward_button, 0, 2)
        play_grid.addWidget(self.scrub, 0, 3, 1, 5)
        play_grid.addWidget(self.frame_label, 1, 0, 1, 4)
        play_grid.addWidget(QLabel("Speed"), 1, 4)
        play_grid.addWidget(self.speed, 1, 5)
        play_grid.addWidget(self.loop, 1, 6)
        play_grid.addWidget(self.stale_label, 2, 0, 1, 8)
        play_grid.setColumnStretch(3, 1)
        # which sample / what the grid shows: image models only (hidden for 2-D points)
        self.image_choices = QWidget()
        show_row = QHBoxLayout(self.image_choices)
        show_row.setContentsMargins(0, 0, 0, 0)
        show_row.addWidget(QLabel("Sample #"))
        show_row.addWidget(self.sample_index)
        show_row.addWidget(QLabel("Grid shows"))
        show_row.addWidget(self.grid_of)
        show_row.addStretch(1)
        play_grid.addWidget(self.image_choices, 3, 0, 1, 8)
        export_box = QGroupBox("Export")
        export_grid = QGridLayout(export_box)
        pairs = (
            ("View", self.export_view),
            ("From frame", self.export_from),
            ("To frame", self.export_to),
            ("Frames", self.export_frames),
            ("Speed", self.export_fps),
            ("Scale", self.export_scale),
        )
        self.sample_index.setAccessibleName("Sample #")
        for i, (text, field) in enumerate(pairs):
            field.setAccessibleName(text)  # also names the field in a refusal message
            row, col = divmod(i, 3)
            export_grid.addWidget(QLabel(text), 2 * row, 2 * col)
            export_grid.addWidget(field, 2 * row, 2 * col + 1)
        export_grid.addWidget(self.export_loop, 0, 6)
        export_grid.addLayout(button_row(self.gif_button, self.png_button), 2, 6)
        self.export_error_row = (export_grid, 3)  # FieldCheck's line for these fields
        for col in (1, 3, 5):
            export_grid.setColumnStretch(col, 1)

        # views: images
        self.xt_view = ImageView("x_t")
        self.xt_view.setToolTip("The chosen sample's x_t at this frame")
        self.x0_view = ImageView("x_0 prediction")
        self.x0_view.setToolTip("What the model predicts x_0 to be from x_t at this frame")
        self.grid_view = ImageView("All samples")
        self.grid_view.setToolTip("Every sample at this frame")
        image_views = QWidget()
        image_grid = QGridLayout(image_views)
        image_grid.setContentsMargins(0, 0, 0, 0)
        image_grid.addWidget(self.xt_view, 0, 0)
        image_grid.addWidget(self.x0_view, 1, 0)
        image_grid.addWidget(self.grid_view, 0, 1, 2, 1)
        image_grid.setColumnStretch(0, 1)
        image_grid.setColumnStretch(1, 2)
        # views: points
        self.points_plot = points_plot(
            "x_t: from the Gaussian to the data",
            "The samples' x_t, with trails of the last frames",
        )
        self.pred_plot = points_plot(
            "x_0 predictions", "The model's x_0 prediction for every sample at this frame"
        )
        self.trail_curve = pg.PlotCurveItem(pen=pg.mkPen(31, 119, 180, 60))
        self.points_scatter = scatter_item(4, (31, 119, 180, 220))
        self.pred_scatter = scatter_item(4, (214, 39, 40, 200))
        self.points_plot.addItem(self.trail_curve)
        self.points_plot.addItem(self.points_scatter)
        self.pred_plot.addItem(self.pred_scatter)
        point_views = QWidget()
        point_layout = QHBoxLayout(point_views)
        point_layout.setContentsMargins(0, 0, 0, 0)
        point_layout.addWidget(self.points_plot, 3)
        point_layout.addWidget(self.pred_plot, 2)
        self.views = QStackedWidget()
        self.views.addWidget(image_views)
        self.views.addWidget(point_views)
        self.image_views, self.point_views = image_views, point_views
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.views, 1)
        right_layout.addWidget(play_box)
        right_layout.addWidget(export_box)

        settings = control_column((model_box, sampler_box))
        controls = pinned_below(
            settings, button_row(self.sample_button, self.cancel_button), self.error
        )
        self.splitter = controls_beside_views(self, controls, right)

        # The sampler form refuses its own fields (steps at most the model's T, the sampler's
        # options) with core's reason; start t is refused here (the schedule, the sampler's
        # timesteps); the number of samples and the export settings keep their ranges
        # (memory; core has no export settings object).
        self._checked_schedule: ForwardPath | None = None
        self._checked_for: tuple[object, str] | None = None  # (schedule config, objective)
        # Guidance is core's check_guidance_scale's to judge; the seed keeps its range (what
        # torch's generator takes here). The view's and export's frame numbers keep the range
        # of the stored frames (set_range when frames arrive).
        self.fields = FieldCheck(self, self._check_sampler)
        self.fields.add(self.guidance, self.start_t)
        self.fields.add(self.num_samples, self.seed, keep_range=True)
        self.fields.watch(self.sampler_form.changed, self.from_image.toggled)
        self.export_fields = FieldCheck(self)
        self.export_fields.add(
            self.sample_index,
            self.export_from,
            self.export_to,
            self.export_frames,
            self.export_fps,
            self.export_scale,
            keep_range=True,
        )
        grid, row = self.export_error_row
        grid.addWidget(self.export_fields.shared_label, row, 0, 1, 7)
        for check in (self.fields, self.export_fields):
            check.changed.connect(self._update_buttons)
        # a setting that is not a number field: the frames may no longer match the form
        self.class_label.currentIndexChanged.connect(self._update_buttons)

    # ------------------------------------------------------------------ models

    def _add_model(self, key: str, label: str, model: Checkpoint | Path) -> None:
        self.models[key] = model
        index = self.model_choice.findData(key)
        if index < 0:
            self.model_choice.addItem(label, key)
        else:
            self.model_choice.setItemText(index, label)

    def _add_pretrained_models(self) -> None:
        """List every bundled model ("Pretrained: digits", ...) and choose the digits one."""
        paths = core_checkpoint.pretrained_checkpoint_paths()
        names = sorted(paths, key=lambda name: (name != PRETRAINED_DEFAULT, name))
        self.model_choice.blockSignals(True)
        for name in names:
            self._add_model(f"pretrained:{name}", f"Pretrained: {name}", paths[name])
        self.model_choice.blockSignals(False)
        if names:
            self.model_choice.setCurrentIndex(0)
            self._on_model_chosen()

    def set_trained_checkpoint(self, ckpt: Checkpoint) -> None:
        """The model the Training tab just finished (or stopped) joins the Model list. It becomes
        the choice only when that loses nothing: no sampling run going, no frames of another
        model (choosing it clears them); otherwise the status bar says where it is."""
        step = (ckpt.training or {}).get("step", "?")
        label = f"Just trained ({ckpt.data.get('name', 'model')}, step {step})"
        self._add_model("trained", label, ckpt)
        if self.runner.is_running or self.has_frames():
            if self.model_choice.currentData() != "trained":
                self.status_message.emit(
                    f"Playback: '{label}' is in the Model list (your frames are kept)."
                )
                return
        set_combo_data(self.model_choice, "trained")
        self._on_model_chosen()

    def open_trained_checkpoint(self, ckpt: Checkpoint) -> None:
        """The user asked for the trained model ("Open in Playback"): it becomes the choice."""
        self.set_trained_checkpoint(ckpt)
        if self.model_choice.currentData() != "trained":
            set_combo_data(self.model_choice, "trained")
            self._on_model_chosen()

    def choose_checkpoint(self) -> None:
        path = dialogs.ask_open_path(self, "Open checkpoint", dialogs.CHECKPOINT_FILTER)
        if path is not None:
            self.load_checkpoint(path)

    def choose_model_folder(self) -> None:
        folder = dialogs.ask_folder(self, "Open a diffusers model folder", dialogs.MODEL_FOLDERS)
        if folder is not None:
            self.load_checkpoint(folder)

    def load_checkpoint(self, path: str | Path) -> bool:
        """Load and check a checkpoint file or a diffusers model folder; it becomes the chosen
        model. False (and a message) on error."""
        path = Path(path)
        try:
            ckpt = load_checkpoint(path)
        except DiffusionStudioError as exc:
            self.show_problem("Cannot open checkpoint", str(exc))
            return False
        self.clear_problem()
        found = find_diffusers_model(path)
        if found is not None:
            path, label = found.root, f"Diffusers: {found.root.name}"
        else:
            label = f"File: {path.name}"
        self._add_model(f"file:{path}", label, ckpt)
        set_combo_data(self.model_choice, f"file:{path}")
        self._on_model_chosen()
        self.file_used.emit(str(path))
        self.status_message.emit(f"Loaded {path}")
        return True

    def _on_model_chosen(self, _index: int = 0) -> None:
        key = self.model_choice.currentData()
        model = self.models.get(key) if key is not None else None
        if isinstance(model, Path):  # a pretrained file, loaded on first use
            try:
                model = load_checkpoint(model)
            except DiffusionStudioError as exc:
                self.checkpoint = None
                self.clear_results()
                self.show_problem("Cannot open pretrained model", str(exc))
                self._update_buttons()
                self.model_changed.emit(None)
                return
            self.models[key] = model
        was_points = self.checkpoint.is_points if self.checkpoint is not None else None
        if model is not self.checkpoint:
            self.clear_results()  # nothing of the old model's run stays on screen
        self.checkpoint = model
        if self.field_dialog is not None and (model is None or not model.is_points):
            self.field_dialog.close()  # its field was the old 2-D model's: nothing stale stays
        if model is None:
            self._update_buttons()
            self.model_changed.emit(None)
            return
        if model.is_points:
            self.from_image.setChecked(False)  # 2-D models start from noise (see the label)
        T = model.schedule_config.num_timesteps
        # A new model: steps and start t follow its T (what the user types is checked).
        # (a model of the other objective: its samplers are listed, core's default chosen)
        self.sampler_form.set_model(model.schedule_config, model.prediction_type, model.objective)
        self.start_t.setValue(min(self.start_t.value(), T - 1))
        if was_points != model.is_points:
            self.num_samples.setValue(1000 if model.is_points else 16)
            # only the views that apply to this kind of model are offered
            self.export_view.clear()
            for label, view in POINT_VIEWS if model.is_points else IMAGE_VIEWS:
                self.export_view.addItem(label, view)
        self.image_choices.setVisible(not model.is_points)
        self.views.setCurrentWidget(self.point_views if model.is_points else self.image_views)
        self._apply_sampler_defaults(model)
        self._fill_class_choice(model)
        self.fields.recheck()
        try:
            params = count_parameters(build_model_from_checkpoint(model))
        except (DiffusionStudioError, RuntimeError):
            params = 0
        data = model.data or {}
        classes = getattr(model.model_config, "num_classes", 0)
        shape = "×".join(str(s) for s in model.sample_shape)
        step = (model.training or {}).get("step")
        notes = [str(n) for n in (model.meta or {}).get("notes", [])]
        self.model_info.setText(
            f"{MODEL_NAMES.get(model.model_config.kind, model.model_config.kind)}, "
            f"{params / 1e6:.2f} M parameters<br>"
            f"data: {html.escape(str(data.get('name', '?')))} ({shape})<br>"
            + (
                f"path: flow matching (rectified), T={T}<br>predicts: the velocity eps - x_0"
                if model.objective == "flow"
                else f"schedule: {describe(model.schedule_config)}<br>"
                f"predicts: {model.prediction_type}"
            )
            + (f"<br>class-conditional: {classes} classes" if classes else "")
            + (f"<br>trained for {step:,} steps" if isinstance(step, int) else "")
            + "".join(f"<br><i>{html.escape(n)}</i>" for n in notes)
        )
        if self.field_dialog is not None and model.is_points:
            # an open 2-D field window follows the chosen model (another 2-D one)
            self.field_dialog.set_checkpoint(model, self.model_label())
        self._update_buttons()
        self.model_changed.emit(model)

    def model_label(self) -> str:
        """The chosen model's name in the Model list ("" when none)."""
        return self.model_choice.currentText() if self.checkpoint is not None else ""

    def show_model_choice(self, _value: object = None) -> None:
        """Give the Model list the focus (the Sampler Lab's "Choose the model" button)."""
        self.model_choice.setFocus()

    def clear_results(self) -> None:
        """Forget the stored frames and everything drawn from them (a new model: they were made
        for the old one): views, grid, Play, scrub, the frame caption, export and the error
        line. A sampling run of the old model is cancelled and its late frames dropped."""
        if self.runner.is_running:
            self.runner.cancel()
        self.play_button.setChecked(False)
        self.trajectory = None
        self.made_with, self._made_name = None, ""
        self.frame_index = 0
        self._dirty = False
        self.scrub.blockSignals(True)
        self.scrub.setRange(0, 0)
        self.scrub.blockSignals(False)
        for box in (self.sample_index, self.export_from, self.export_to):
            box.blockSignals(True)
            box.setValue(0)
            box.blockSignals(False)
            self.export_fields.set_range(box, 0, 0)
        self.frame_label.setText(NO_FRAMES)
        for view in (self.xt_view, self.x0_view, self.grid_view):
            view.clear_image()
        self.xt_view.set_title("x_t")
        self.x0_view.set_title("x_0 prediction")
        self.grid_view.set_title("All samples")
        for scatter in (self.points_scatter, self.pred_scatter):
            scatter.setData([], [])
        self.trail_curve.setData([], [])
        self.clear_problem()
        self._update_buttons()

    def _fill_class_choice(self, model: Checkpoint) -> None:
        """Class and guidance apply to a class-conditional model only: its classes are
        listed (the previous choice kept when it still exists), otherwise both are off."""
        classes = getattr(model.model_config, "num_classes", 0)
        chosen = self.class_label.currentData()
        self.class_label.blockSignals(True)
        self.class_label.clear()
        if classes:
            digits = is_builtin_digits(str((model.data or {}).get("name")))
            self.class_label.addItem(EVERY_DIGIT if digits else EVERY_CLASS, None)
            for k in range(classes):
                self.class_label.addItem(str(k) if digits else f"class {k}", k)
            if chosen is not None and chosen < classes:
                set_combo_data(self.class_label, chosen)
        else:
            self.class_label.addItem(UNCONDITIONAL, None)
        self.class_label.blockSignals(False)
        self.class_label.setEnabled(bool(classes))
        self.guidance.setEnabled(bool(classes))

    def _apply_sampler_defaults(self, model: Checkpoint) -> None:
        """A model that names its sampler (a diffusers scheduler config) gets it, so playback
        matches the model's own pipeline; other models keep the user's choice of sampler,
        steps and spacing, and get core's x_0 clipping for their kind (on for images, off for
        2-D points: `core.samplers.default_sampler_config`)."""
        defaults = (model.meta or {}).get("sampler_defaults")
        if not isinstance(defaults, dict):
            core_default = default_sampler_config(model.is_points, None, model.objective)
            self.clip_x0.setChecked(core_default.clip_sample)
            return
        try:
            config = default_sampler_config(model.is_points, defaults, model.objective)
        except (DiffusionStudioError, TypeError):
            return
        T = model.schedule_config.num_timesteps
        steps = min(config.num_inference_steps, T)
        self.sampler_form.set_config(replace(config, num_inference_steps=steps))

    # ------------------------------------------------------------------ start image

    def set_start_image(self, path: str) -> None:
        """The image "start from an image" uses (the Forward tab's image by default)."""
        self.start_image = Path(path)
        self.image_label.setToolTip(str(self.start_image))
        self._update_buttons()

    def choose_start_image(self) -> None:
        path = dialogs.ask_open_path(self, "Image to start from", dialogs.IMAGE_FILTER)
        if path is not None:
            self.set_start_image(str(path))
            self.from_image.setChecked(True)

    # ------------------------------------------------------------------ sampling

    def runners(self) -> list[JobRunner]:
        runners = [self.runner, self.export_runner, self.sweep_runner]
        if self.field_dialog is not None:  # its particle job: closing the app waits for it
            runners.append(self.field_dialog.runner)
        return runners

    def request(self) -> SampleRequest:
        use_image = self.from_image.isChecked()
        return SampleRequest(
            sampler=self.sampler_form.config(),
            num_samples=self.num_samples.value(),
            seed=self.seed.value(),
            start_image=self.start_image if use_image else None,
            start_t=self.start_t.value() if use_image else None,
            label=self.class_label.currentData(),
            guidance_scale=self.guidance.value(),
        )

    def _check_sampler(self) -> None:
        """Build what Sample would (ConfigError with core's reason when the fields are refused):
        the SamplerConfig; with a model, its sampler (steps at most T), the guidance scale of a
        class-conditional model and the start t."""
        request = self.request()
        ckpt = self.checkpoint
        if ckpt is None:
            return
        if self.guidance.isEnabled():
            check_guidance_scale(request.guidance_scale)
        schedule = self._checked_schedule
        if schedule is None or self._checked_for != (ckpt.schedule_config, ckpt.objective):
            schedule = forward_path(ckpt.objective, ckpt.schedule_config)
            self._checked_schedule = schedule
            self._checked_for = (ckpt.schedule_config, ckpt.objective)
        sampler = make_sampler(request.sampler, schedule, ckpt.prediction_type)
        if request.start_t is not None and not ckpt.is_points:
            if isinstance(schedule, FlowPath):
                schedule.time_of_index(request.start_t)  # an index 0..T-1 of the path
            else:
                schedule.check_timesteps(torch.tensor([request.start_t]))
            sampling_timesteps(sampler, request.start_t)

    def start_sampling(self) -> bool:
        """Sample from the chosen model in the worker. False (and a message) when it cannot."""
        ckpt = self.checkpoint
        if ckpt is None:
            self.report_error(
                "Cannot sample", "Choose a model first: train one or open a checkpoint."
            )
            return False
        if not self.sampler_form.valid:
            self.show_problem("Cannot sample", self.sampler_form.first_problem())
            return False
        if not self.fields.valid:
            self.show_problem("Cannot sample", self.fields.first_problem())
            return False
        if self.runner.is_running:
            if not dialogs.ask_yes_no(
                self, "Sampling", "Sampling is running. Stop it and start again?"
            ):
                return False
        try:
            request = self.request()
            start_image_tensor(ckpt, request)  # an unreadable start image: said here
        except DiffusionStudioError as exc:
            self.show_problem("Cannot sample", str(exc))
            return False
        self.clear_problem()
        self.play_button.setChecked(False)
        self.frame_index = 0
        total = request.sampler.num_inference_steps + 1
        # every frame of a run of up to 1000 steps (1001 frames) is kept; longer runs are
        # thinned evenly so memory stays bounded
        self.trajectory = Trajectory(max_frames=MAX_FRAMES)
        self.made_with = request
        self._made_name = run_name(ckpt, request)

        def run() -> Iterator[Frame]:  # worker thread
            for frame in prepare_sampling(ckpt, request).frames:
                yield _copy_frame(frame)

        path = forward_path(ckpt.objective, ckpt.schedule_config)

        def status(frame: Frame) -> JobStatus:  # GUI thread
            label = "final" if frame.t < 0 else reverse_caption(frame.t, path)
            # another program keeping a core busy is said, as for training
            note = frame.threads.note() if frame.threads is not None else ""
            return JobStatus(
                f"Sampling step {frame.step + 1}/{total} ({label}){note}",
                (frame.step + 1) / total,
            )

        self.runner.start(Job("Sampling", run, JobControl(), describe=status))
        self.redraw_timer.start()
        self._update_buttons()
        return True

    def _on_frame(self, frame: object) -> None:
        if isinstance(frame, Frame) and self.trajectory is not None:
            self.trajectory.append(frame)
            self._dirty = True

    def _on_redraw_timer(self) -> None:
        if self._dirty:
            self._dirty = False
            self._sync_slider(follow=True)
        if not self.runner.is_running:
            self.redraw_timer.stop()

    def _on_sampling_ended(self, *_args: object) -> None:
        self._dirty = False  # drawn here: a later timer tick must not jump to the end again
        self.redraw_timer.stop()
        self._update_buttons()
        if self.trajectory is None:  # the model changed while sampling: its run was dropped
            self.status_message.emit("Sampling stopped: another model was chosen.")
            return
        self._sync_slider(follow=True)
        self.status_message.emit(f"Sampling done: {len(self.trajectory)} frames stored.")

    def _on_sampling_failed(self, message: str) -> None:
        self._update_buttons()
        self.show_problem("Sampling failed", message)

    def _update_buttons(self) -> None:
        running = self.runner.is_running
        has_model = self.checkpoint is not None
        valid = self.fields.valid and self.sampler_form.valid
        self.sample_button.setEnabled(has_model and not running and valid)
        self.cancel_button.setEnabled(running)
        points_model = has_model and self.checkpoint.is_points
        image_model = has_model and not points_model
        # A 2-D model cannot start from an image: the box is unticked (on model change) and
        # says why, so Sample always works.
        self.from_image.setEnabled(image_model)
        self.from_image.setToolTip(
            f"{FROM_IMAGE_TIP}\n\nOff: {POINTS_START}." if points_model else FROM_IMAGE_TIP
        )
        if points_model:
            self.image_label.setText(POINTS_START)
        else:
            self.image_label.setText(self.start_image.name if self.start_image else "–")
        use_image = image_model and self.from_image.isChecked()
        self.image_button.setEnabled(use_image)
        self.start_t.setEnabled(use_image)
        frames = self.has_frames()
        for w in (self.play_button, self.back_button, self.forward_button, self.scrub):
            w.setEnabled(frames)
        exportable = frames and not running and self.export_fields.valid
        self.gif_button.setEnabled(exportable)
        self.png_button.setEnabled(exportable)
        self.sweep_button.setEnabled(self._sweepable())
        self.field_button.setEnabled(points_model)  # a 2-D point model is loaded
        if self.sweep_dialog is not None:
            self.sweep_dialog.update_buttons()
        self._show_staleness()

    def _show_staleness(self) -> None:
        """Mark frames made with other sampler settings than the form's (they stay playable
        and exportable: they are what they say they are)."""
        made = self.made_with
        try:
            now: SampleRequest | None = self.request()
        except DiffusionStudioError:  # refused settings: certainly not what made the frames
            now = None
        stale = made is not None and self.has_frames() and made != now
        if stale:
            self.stale_label.setText(
                f"These frames were made with {describe_request(made)}; the settings have "
                "changed since: press Sample to see the new ones."
            )
        self.stale_label.setVisible(stale)

    # ------------------------------------------------------------------ playback

    def has_frames(self) -> bool:
        return self.trajectory is not None and len(self.trajectory) > 0

    def _sync_slider(self, follow: bool) -> None:
        """Fit the slider and export ranges to the stored frames; jump to the newest if `follow`."""
        if not self.has_frames():
            return
        last = len(self.trajectory) - 1
        self.scrub.blockSignals(True)
        self.scrub.setRange(0, last)
        if follow:
            self.scrub.setValue(last)
        self.scrub.blockSignals(False)
        for box in (self.export_from, self.export_to):
            self.export_fields.set_range(box, 0, last)
        self.export_to.setValue(last)
        self.export_fields.set_range(self.sample_index, 0, self.trajectory.x_t(0).shape[0] - 1)
        self.show_frame(self.scrub.value())
        self._update_buttons()

    def show_frame(self, index: int) -> None:
        """Show stored frame `index` (0 = the noise, last = the samples)."""
        if not self.has_frames():
            return
        self.frame_index = int(np.clip(index, 0, len(self.trajectory) - 1))
        if self.scrub.value() != self.frame_index:
            self.scrub.blockSignals(True)
            self.scrub.setValue(self.frame_index)
            self.scrub.blockSignals(False)
        self._draw()

    def step_frames(self, delta: int) -> None:
        if self.has_frames():
            self.show_frame(self.frame_index + delta)

    def _draw(self) -> None:
        if not self.has_frames():
            return
        traj, i = self.trajectory, self.frame_index
        t = int(traj.timesteps[i])
        step = int(traj.steps[i])
        self.frame_label.setText(
            f"frame {i + 1}/{len(traj)} · step {step} · "
            + ("final samples" if t < 0 else self.time_text(t))
        )
        k = min(self.sample_index.value(), traj.x_t(i).shape[0] - 1)
        if traj.is_points:
            points = traj.x_t(i)
            self.points_scatter.setData(points[:, 0], points[:, 1])
            pred = traj.pred_x0(i)
            self.pred_scatter.setData(pred[:, 0], pred[:, 1])
            self._draw_trails(i)
            return
        xt, x0 = traj.x_t(i), traj.pred_x0(i)
        self.xt_view.set_image(_squeeze(xt[k]))
        self.xt_view.set_title(f"x_t of sample {k}" + ("" if t < 0 else f" at t = {t}"))
        self.x0_view.set_image(_squeeze(x0[k]))
        self.x0_view.set_title(f"x_0 prediction of sample {k}")
        shown = xt if self.grid_of.currentData() == "x_t" else x0
        self.grid_view.set_image(_squeeze(make_grid(shown, padding=1, pad_value=255)))
        self.grid_view.set_title(
            f"All {shown.shape[0]} samples: " + ("x_t" if shown is xt else "x_0 predictions")
        )

    def model_path(self) -> ForwardPath | None:
        """The chosen model's forward path (its schedule, or flow's path); None without one."""
        ckpt = self.checkpoint
        return None if ckpt is None else forward_path(ckpt.objective, ckpt.schedule_config)

    def time_text(self, t: int) -> str:
        """A frame's time: "t = 437"; for a flow model the path's t and its index k."""
        ckpt = self.checkpoint
        if ckpt is not None and ckpt.objective == "flow":
            time = float(FlowPath(ckpt.schedule_config.num_timesteps).time_of_index(t))
            return f"t = {time:.3f} (k = {t})"
        return f"t = {t}"

    def _draw_trails(self, i: int) -> None:
        first = max(0, i - TRAIL_FRAMES)
        history = np.stack([self.trajectory.x_t(j) for j in range(first, i + 1)])  # (K, N, 2)
        if history.shape[0] < 2:
            self.trail_curve.setData([], [])
            return
        lines = np.transpose(history, (1, 0, 2))  # (N, K, 2): one polyline per point
        connect = np.ones(lines.shape[:2], dtype=bool)
        connect[:, -1] = False  # break between points
        self.trail_curve.setData(
            lines[..., 0].reshape(-1), lines[..., 1].reshape(-1), connect=connect.reshape(-1)
        )

    def _on_speed_changed(self) -> None:
        fps = BASE_FPS * float(self.speed.currentData())
        self.play_timer.setInterval(max(10, int(1000 / fps)))

    def _on_play_toggled(self, on: bool) -> None:
        if on and self.has_frames():
            if self.frame_index >= len(self.trajectory) - 1:
                self.show_frame(0)
            self.play_button.setText("Pause")
            self.play_timer.start()
        else:
            self.play_button.setText("Play")
            self.play_timer.stop()
            if on:
                self.play_button.setChecked(False)

    def _on_play_tick(self) -> None:
        if not self.has_frames():
            self.play_button.setChecked(False)
            return
        nxt = self.frame_index + 1
        if nxt >= len(self.trajectory):
            if self.loop.isChecked():
                nxt = 0
            else:
                self.play_button.setChecked(False)
                return
        self.show_frame(nxt)

    # ------------------------------------------------------------------ guidance sweep

    def _sweepable(self) -> bool:
        """A guidance sweep needs a class-conditional image model."""
        if self.checkpoint is None:
            return False
        try:
            sweep_classes(self.checkpoint)
        except ConfigError:
            return False
        return True

    def sweep_source(self) -> SweepSource:
        """The model, sampler settings and seed a guidance sweep uses now (ConfigError with the
        reason when the panel cannot sample)."""
        if self.checkpoint is None:
            raise ConfigError("choose a model first: train one or open a checkpoint")
        if not self.sampler_form.valid:
            raise ConfigError(self.sampler_form.first_problem())
        return SweepSource(
            self.checkpoint, self.sampler_form.config(), self.seed.value(), self.model_label()
        )

    def open_guidance_sweep(self) -> GuidanceSweepDialog:
        """Show the guidance sweep's window (one per panel, kept with its last grid)."""
        if self.sweep_dialog is None:
            self.sweep_dialog = GuidanceSweepDialog(
                self.sweep_source,
                self.sweep_runner,
                lambda job, path: self.start_export(self.export_runner, job, path),
                self,
            )
        self.sweep_dialog.update_buttons()
        self.sweep_dialog.show()
        self.sweep_dialog.raise_()
        return self.sweep_dialog

    # ------------------------------------------------------------------ 2-D field

    def open_field_view(self) -> FieldViewDialog | None:
        """Show the 2-D field window for the loaded point model (one per panel)."""
        if self.checkpoint is None or not self.checkpoint.is_points:
            self.show_problem("2-D field", "Load a 2-D point model first (the toy sets' models).")
            return None
        if self.field_dialog is None:
            self.field_dialog = FieldViewDialog(self)
        if not self.field_dialog.set_checkpoint(self.checkpoint, self.model_label()):
            return None
        self.field_dialog.show()
        self.field_dialog.raise_()
        return self.field_dialog

    # ------------------------------------------------------------------ export

    def export_pictures(self) -> tuple[list[np.ndarray], list[str]] | None:
        """The uint8 pictures the export settings describe and their captions ("t = 437",
        core.export.reverse_caption); None and a message when impossible."""
        if not self.has_frames():
            self.report_error("Export", "Nothing to export for this model yet: press Sample first.")
            return None
        if not self.export_fields.valid:
            self.report_error("Export", self.export_fields.first_problem())
            return None
        traj = self.trajectory
        lo, hi = self.export_from.value(), self.export_to.value()
        if lo > hi:
            lo, hi = hi, lo
        picks = lo + select_frame_indices(hi - lo + 1, self.export_frames.value())
        scale = self.export_scale.value()
        return reverse_pictures(
            traj,
            [int(i) for i in picks],
            CORE_VIEWS[self.export_view.currentData()],
            sample_index=self.sample_index.value(),
            scale=scale,
            point_size=128 * min(scale, 4),
            point_extent=POINT_EXTENT,
            trail_frames=TRAIL_FRAMES,
            padding=1,
            pad_value=255,
            path=self.model_path(),
        )

    def export_gif(self) -> None:
        """Write the chosen frames as a GIF, t written on every frame (in the worker)."""
        pictures = self.export_pictures()
        if pictures is None:
            return
        frames, captions = pictures
        path = dialogs.ask_save_path(
            self,
            "Export playback as GIF",
            dialogs.GIF_FILTER,
            f"{self._made_name or 'reverse'}.gif",
        )
        if path is None:
            return
        fps, loop = float(self.export_fps.value()), self.export_loop.isChecked()

        def run() -> Iterator[int]:
            yield save_gif(path, frames, fps=fps, loop=loop, captions=captions)

        job = Job("Export GIF", run, describe=lambda _n: JobStatus("Writing GIF…"))
        self.start_export(self.export_runner, job, path)

    def export_png_frames(self) -> None:
        """Write the chosen frames as numbered PNG files (the pictures alone, no caption)."""
        pictures = self.export_pictures()
        if pictures is None:
            return
        frames, _captions = pictures
        folder = dialogs.ask_folder(self, "Folder for the PNG frames", dialogs.EXPORTS)
        if folder is None:
            return
        prefix = self._made_name or "frame"  # digits_ddim_50steps_0000.png, ...

        def run() -> Iterator[int]:
            yield len(save_png_frames(folder, frames, prefix=prefix))

        job = Job("Export PNG frames", run, describe=lambda _n: JobStatus("Writing PNG frames…"))
        self.start_export(self.export_runner, job, folder)

    # ------------------------------------------------------------------ settings

    def persistent_widgets(self) -> dict[str, Persistent]:
        # Not the number of samples: it follows the model (16 images, 1000 points).
        # The sampler form is saved on its own (save_state): its fields follow the registry.
        names = (
            "guidance seed start_t speed loop grid_of "
            "export_frames export_fps export_scale export_loop"
        )
        return {name: getattr(self, name) for name in names.split()}

    def save_state(self, settings: QSettings) -> None:
        super().save_state(settings)
        write_json(settings, f"{self.key()}/sampler", self.sampler_form.state())

    def restore_state(self, settings: QSettings) -> None:
        super().restore_state(settings)
        state = read_json(settings, f"{self.key()}/sampler", None)
        if state is None:  # settings written before the sampler form: its old field names
            old = read_json(settings, f"{self.key()}/fields", {})
            if isinstance(old, dict) and "sampler_kind" in old:
                state = {
                    "kind": old.get("sampler_kind"),
                    "num_inference_steps": old.get("num_steps"),
                    "spacing": old.get("spacing"),
                }
        if isinstance(state, dict):
            # x_0 clipping follows the kind of model (`_apply_sampler_defaults`), as before
            state = {key: value for key, value in state.items() if key != "clip_sample"}
            skipped = self.sampler_form.restore(state)
            if skipped:
                log.info("Playback's saved sampler settings not restored: %s", skipped)


def describe_request(request: SampleRequest) -> str:
    """'DDIM, 50 steps, seed 0' (and eta, class, guidance, start t when they apply)."""
    sampler = request.sampler
    parts = [sampler.summary(), f"seed {request.seed}"]
    if request.start_t is not None:
        parts.append(f"from an image at t = {request.start_t}")
    return ", ".join(parts)


def run_name(ckpt: Checkpoint, request: SampleRequest) -> str:
    """A file name stem for a run's exports: 'digits_ddim_50steps'."""
    name = str((ckpt.data or {}).get("name") or ckpt.model_config.kind)
    stem = f"{name}_{request.sampler.kind}_{request.sampler.num_inference_steps}steps"
    if request.label is not None:
        stem += f"_class{request.label}"
    return dialogs.file_stem(stem)


def _squeeze(image: np.ndarray) -> np.ndarray:
    """(H, W, 1) -> (H, W) for grey images."""
    return image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
