"""Forward panel: an image or a 2-D data set, noised to any timestep, live.

x_t = a_t x_0 + s_t eps with one fixed eps per seed, on the path chosen here: a diffusion
schedule from the Schedules tab (a = sqrt(alphabar_t), s = sqrt(1 - alphabar_t), DDPM eq. 4)
or flow matching (rectified flow: a = 1 - t, s = t, t = k / T at slider position k). Slider
position k = 0 shows the clean x_0; k = 1..T shows timestep index k - 1.

Image source: `core.forward.ForwardProcess` (the CLI uses the same) is rebuilt when the image,
seed or path changes, so a slider move is one fused multiply-add over the image (x_t_uint8)
and one over a fixed pixel subsample for the histogram (x_t_sample).

2-D source (issue 16, item 5): `core.forward_points.ForwardPoints` holds 2000 points of a toy
set and their noise; a slider move computes x_t and the density p_t of x_t on a 128 x 128 grid
over [-3, 3]^2 (cell means of the Gaussian mixture, a few milliseconds), drawn behind the
points with fixed levels, so the data's shape visibly melts into N(0, I).

The "Timestep inspector" tab (issue 16) shows, for a chosen image model, what the network makes
of this image noised to the slider's t with the panel's seed: `core.inspect.inspect_at` (one
forward pass per slider move, in the GUI thread) drawn by `core.inspect_render.panel_pictures`,
and the errors over every t (`core.inspect.iter_curve`, in a worker, recomputed only when the
image, seed, model or label changes). No model chosen: no torch work at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PIL import Image
from PySide6.QtCore import QRectF, QSettings, QSize, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from diffusion_studio.app import dialogs
from diffusion_studio.app.panels.base import Panel
from diffusion_studio.app.panels.schedule_panel import describe
from diffusion_studio.app.widgets import (
    ClickableLabel,
    ErrorLabel,
    FieldCheck,
    ImageView,
    Persistent,
    button,
    check_box,
    combo_box,
    control_column,
    controls_beside_views,
    form_group,
    guard_wheel_in,
    pinned_below,
    pixmap_from_uint8,
    plot_widget,
    scatter_item,
    set_combo_data,
    spin_box,
)
from diffusion_studio.app.worker import Job, JobRunner, JobStatus
from diffusion_studio.core import checkpoint as core_checkpoint
from diffusion_studio.core.checkpoint import Checkpoint, load_checkpoint
from diffusion_studio.core.data import (
    TOY_DATASETS,
    default_photo_path,
    is_builtin_digits,
    load_image,
    sample_photo_paths,
)
from diffusion_studio.core.errors import DiffusionStudioError
from diffusion_studio.core.export import save_gif
from diffusion_studio.core.flow import FlowPath, ForwardPath
from diffusion_studio.core.forward import (
    ForwardNumbers,
    ForwardProcess,
    flow_time_at_snr,
    schedule_index_at_log_snr,
    step_caption,
)
from diffusion_studio.core.forward_points import (
    DENSITY_TOP,
    EXTENT,
    POINT_COLOR,
    ForwardPoints,
    density_ramp,
)
from diffusion_studio.core.inspect import (
    CurveBatch,
    InspectCurve,
    InspectRecord,
    InspectSetup,
    collect_curve,
    inspect_at,
    inspect_image,
    iter_curve,
    save_curve_csv,
    setup_from_checkpoint,
)
from diffusion_studio.core.inspect_render import PANEL_CAPTIONS, panel_pictures, save_row_png
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig

DISPLAY_MAX_SIDE = 512
THUMB_SIDE = 96
FILMSTRIP_FRAMES = 8
HIST_RANGE = (-4.0, 4.0)
HIST_BINS = np.linspace(*HIST_RANGE, 81)
HIST_TOP = 0.6  # fixed y range 0..0.6 (N(0, 1) peaks at 0.40); widened only when needed

NO_INSPECT_MODEL = (
    "The timestep inspector shows what an image model predicts for this image at the "
    "slider's t. Choose a model above (nothing is computed until then)."
)
# The Source choice: an image, or one of core.data's 2-D toy sets (its name is the item's data).
IMAGE_SOURCE = "image"
SOURCES = [("Image", IMAGE_SOURCE)] + [(f"2-D points: {name}", name) for name in TOY_DATASETS]
# The Path choice: the Schedules tab's noise schedule, or the rectified-flow path on its T.
PATHS = [
    ("Diffusion (schedule from the Schedules tab)", "diffusion"),
    ("Flow matching (rectified)", "flow"),
]
SLIDER_TIPS = {
    "diffusion": "Timestep: 0 shows the clean x_0, k shows x_t at t = k - 1 "
    "(x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps)",
    "flow": "Flow time: 0 shows the clean x_0, k shows x_t at t = k / T "
    "(x_t = (1 - t) x_0 + t eps, a straight line from the data to the noise)",
}
NUMBERS_TIPS = {
    "diffusion": "The coefficients at t: x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps, "
    "alphabar_t = prod alpha_s, SNR_t = alphabar_t / (1 - alphabar_t). 'flow t with this "
    "SNR': the flow-matching time that is exactly as noisy, t = 1 / (1 + sqrt(SNR_t))",
    "flow": "The coefficients at t: x_t = (1 - t) x_0 + t eps (rectified flow; there is no "
    "alphabar), SNR_t = (1 - t)^2 / t^2. 'schedule's t with this SNR': the timestep of the "
    "Schedules tab's noise schedule whose SNR is nearest",
}
TV_ROW = "TV distance to N(0, I)"
# The other path's t that is as noisy (equal SNR): how flow's t and a schedule's t relate.
TWIN_ROWS = {"diffusion": "flow t with this SNR", "flow": "schedule's t with this SNR"}
POINTS_TIP = (
    "The points x_t (blue) over the density of x_t (orange, fixed levels 0 to "
    f"{DENSITY_TOP:g}): p_t(x) = (1/N) sum_i N(x; a_t x0_i, s_t^2 I), the mean of each cell "
    "of a 128 x 128 grid. At the end it is N(0, I), whose peak is 1/(2 pi) = 0.16."
)

# The inspector's panel tips: a diffusion model predicts eps, v or x0; a flow model the velocity
# v = eps - x_0, from which its eps and x_0 follow (core.flow.FlowPath.split_velocity).
INSPECT_TIPS = {
    "diffusion": (
        "x_t: the image (resized to the model) noised to t with the panel's seed",
        "The true noise eps (shown as eps / 3: +-3 sigma spans black..white)",
        "The noise the model predicts (same scale as the true noise)",
        "The x_0 the model predicts, in [-1, 1]",
        "|predicted x_0 - x_0| on a black-red-yellow-white ramp (1 or more is white)",
    ),
    "flow": (
        "x_t = (1 - t) x_0 + t eps: the image (resized to the model) on the flow path at t, "
        "with the panel's seed",
        "The true noise eps (shown as eps / 3: +-3 sigma spans black..white)",
        "The noise the model's velocity v implies: eps = x_t + (1 - t) v (same scale as the "
        "true noise)",
        "The x_0 the model's velocity v implies: x_0 = x_t - t v, in [-1, 1]",
        "|predicted x_0 - x_0| on a black-red-yellow-white ramp (1 or more is white)",
    ),
}
INSPECT_AXIS = {"diffusion": "t", "flow": "timestep index k (flow time t = (k + 1) / T)"}

INSPECT_ERROR_COLORS = {"loss": (31, 119, 180), "x0_mse": (214, 39, 40)}
LOG_SNR_COLOR = (120, 120, 120)


@dataclass(frozen=True)
class GifRequest:
    """A forward-trajectory GIF to write: frames at slider positions `positions`."""

    path: Path
    positions: tuple[int, ...]
    fps: float
    max_side: int


class ForwardPanel(Panel):
    """Watch an image dissolve into noise as t grows."""

    title = "Forward"
    image_changed = Signal(str)  # path of the image now shown

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.schedule = NoiseSchedule(ScheduleConfig())
        self.image_path: Path | None = None
        self.x0: np.ndarray | None = None  # (C, H, W) float32 in [-1, 1]
        self.process: ForwardProcess | None = None  # x_t of x0 with the seed's eps
        self.xt: np.ndarray | None = None  # the displayed x_t, uint8 (H, W) or (H, W, 3)
        self._flow_path: FlowPath | None = None  # built once per T
        # 2-D source: the points' forward process and what is drawn (x_t (N, 2), density)
        self.points: ForwardPoints | None = None
        self.points_xt: np.ndarray | None = None
        self.density: np.ndarray | None = None
        self.shown_numbers: ForwardNumbers | None = None
        self._seed = 0  # the seed of the noise shown (a seed typed out of range keeps it)
        self._hist_top = HIST_TOP
        self.export_runner = self.make_export_runner("forward-export")
        # the timestep inspector: its model list (a Path until first chosen), what it shows
        self.inspect_models: dict[str, Checkpoint | Path] = {}
        self.inspect_ckpt: Checkpoint | None = None
        self.inspect_setup: InspectSetup | None = None
        self.inspect_record: InspectRecord | None = None
        self.inspect_curve: InspectCurve | None = None
        self._curve_batches: list[CurveBatch] = []
        self._inspect_key: tuple[Any, ...] | None = None  # (model, image, seed, label) shown
        self.curve_runner = self.make_job_runner(
            "inspector-curve", self._on_curve_batch, self._on_curve_ended, self._on_curve_failed
        )
        self._build()
        self._show_schedule()
        self.play_timer = QTimer(self)
        self.play_timer.setInterval(33)
        self.play_timer.timeout.connect(self._on_play_tick)

    # ------------------------------------------------------------------ messages

    def show_problem(self, title: str, message: str) -> None:
        """One error, one message: the dialog (a refused image leaves the old one shown, so
        no red line is needed to explain the panel's state)."""
        self.clear_problem()
        self.report_error(title, message)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.source = combo_box(
            SOURCES,
            "What is noised: an image, or 2000 points of a 2-D data set (the density of x_t "
            "is drawn behind the points)",
        )
        self.source.currentIndexChanged.connect(self._on_source_changed)
        self.path_choice = combo_box(
            PATHS,
            "The forward path: a diffusion schedule (x_t = sqrt(alphabar_t) x_0 + "
            "sqrt(1 - alphabar_t) eps) or flow matching (x_t = (1 - t) x_0 + t eps)",
        )
        self.path_choice.currentIndexChanged.connect(self._on_path_changed)
        self.photo = QComboBox()
        self.photo.setToolTip("One of the photographs shipped with Diffusion Studio")
        for path in sample_photo_paths():
            self.photo.addItem(path.stem, str(path))
        self.photo.activated.connect(self._on_photo_chosen)
        self.open_button = button("Open image…", "Load any image file (or drop one on the window)")
        self.open_button.clicked.connect(self.choose_image)
        self.path_label = QLabel("–")
        self.path_label.setWordWrap(True)
        self.path_label.setToolTip("The image shown (downscaled to at most 512 pixels a side)")

        self.seed = spin_box(0, 2**31 - 1, 0, "Seed of the fixed noise eps (same seed, same eps)")
        self.seed.valueChanged.connect(self._on_seed_changed)
        self.reseed_button = button("New noise", "Draw a new eps (the next seed)")
        self.reseed_button.clicked.connect(lambda: self.seed.setValue(self.seed.value() + 1))

        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, self.schedule.num_timesteps)
        self.slider.valueChanged.connect(self._on_slider)
        self.play_button = button("Play", "Run the forward process from the clean image to noise")
        self.play_button.setCheckable(True)
        self.play_button.toggled.connect(self._on_play_toggled)
        self.loop = check_box("Loop", "Start again from the clean image at the end")
        self.t_label = QLabel()
        self.t_label.setFixedWidth(110)  # fixed widths: a new text needs no relayout

        self.numbers = QLabel()
        self.numbers.setTextFormat(Qt.TextFormat.RichText)
        # fixed: a new text needs no relayout while playing; sized for the widest readout of
        # either path, with the 2-D source's extra row
        widest = QSize(0, 0)
        for objective in ("diffusion", "flow"):
            self.numbers.setText(numbers_table(widest_rows(objective)))
            widest = widest.expandedTo(self.numbers.sizeHint())
        self.numbers.setFixedSize(widest + QSize(24, 4))
        self.schedule_label = QLabel()
        self.schedule_label.setWordWrap(True)
        self.schedule_label.setToolTip(
            "The noise schedule is chosen on the Schedules tab (flow matching takes its T)"
        )

        self.gif_frames = spin_box(2, 500, 40, "Number of frames in the GIF (evenly spaced in t)")
        self.gif_fps = spin_box(1, 50, 10, "GIF frames per second", suffix=" fps")
        self.gif_size = spin_box(
            16,
            1024,
            256,
            "Longest side of the picture (t is written in a band above it)",
            16,
            " px",
        )
        self.gif_button = button(
            "Export GIF…", "Save the forward trajectory x_0 -> x_T as a GIF (t on every frame)"
        )
        self.gif_button.clicked.connect(self.export_gif)
        self.error = ErrorLabel()

        source_box = form_group(
            "Forward process", [("Source", self.source), ("Path", self.path_choice)]
        )
        self.image_box = form_group(
            "Image", [("Sample photo", self.photo), self.open_button, self.path_label]
        )
        noise_box = form_group("Noise eps", [("Seed", self.seed), self.reseed_button])
        t_box = QGroupBox("Timestep")
        t_layout = QGridLayout(t_box)
        t_layout.addWidget(self.slider, 0, 0, 1, 3)
        t_layout.addWidget(self.play_button, 1, 0)
        t_layout.addWidget(self.loop, 1, 1)
        t_layout.addWidget(self.t_label, 1, 2)
        t_layout.addWidget(self.numbers, 2, 0, 1, 3)
        t_layout.addWidget(self.schedule_label, 3, 0, 1, 3)
        gif_box = form_group(
            "Export",
            [("Frames", self.gif_frames), ("Speed", self.gif_fps), ("Size", self.gif_size)],
        )

        self.view = ImageView("x_t")
        self.view.setToolTip("x_t, shown with fixed levels [-1, 1] (values outside are clipped)")
        self.hist = pg.PlotWidget(title="Pixel histogram of x_t vs N(0, 1)")
        self.hist.setToolTip(
            "Histogram of the pixel values of x_t, scaled to a probability density (its area "
            "is 1) so that it compares with the red curve, the density of N(0, 1)"
        )
        self.hist.setMenuEnabled(False)
        self.hist.setMouseEnabled(False, False)
        self.hist.setXRange(*HIST_RANGE, padding=0)
        self.hist.setYRange(0, HIST_TOP, padding=0)
        self.hist.setLabel("bottom", "pixel value")
        # A probability density (area 1, numpy's density=True), the unit of the N(0, 1) curve
        # drawn over it. No SI scaling: pyqtgraph would otherwise label 0.4 as "400" (milli,
        # with no unit to show the prefix).
        self.hist.setLabel("left", "probability density", siPrefixEnableRanges=())
        self.hist_curve = self.hist.plot(
            HIST_BINS,
            np.zeros(len(HIST_BINS) - 1),
            stepMode="center",
            fillLevel=0,
            brush=(31, 119, 180, 90),
            pen=pg.mkPen((31, 119, 180), width=1),
            antialias=False,  # axis-aligned steps: antialiasing only costs paint time
            name="x_t",
        )
        grid = np.linspace(-4, 4, 201)
        self.hist.plot(
            grid,
            np.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi),
            pen=pg.mkPen((214, 39, 40), width=2),
            name="N(0, 1)",
        )

        self.filmstrip = QWidget()
        self.filmstrip.setToolTip("x_t at evenly spaced t; click one to jump there")
        strip = QHBoxLayout(self.filmstrip)
        strip.setContentsMargins(0, 0, 0, 0)
        self.thumbs: list[ClickableLabel] = []
        self.thumb_captions: list[QLabel] = []
        for index in range(FILMSTRIP_FRAMES):
            cell = QVBoxLayout()
            thumb = ClickableLabel()
            thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
            thumb.setFixedSize(THUMB_SIDE + 4, THUMB_SIDE + 4)
            caption = QLabel()
            caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
            cell.addWidget(thumb)
            cell.addWidget(caption)
            strip.addLayout(cell)
            thumb.clicked.connect(lambda i=index: self._on_thumb_clicked(i))
            self.thumbs.append(thumb)
            self.thumb_captions.append(caption)
        self.filmstrip_positions: list[int] = []

        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(self.view)
        top.addWidget(self.hist)
        top.setStretchFactor(0, 3)
        top.setStretchFactor(1, 2)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(top, 1)
        right_layout.addWidget(self.filmstrip)
        self.view_stack = QStackedWidget()
        self.view_stack.addWidget(right)
        self.view_stack.addWidget(self._build_points_view())
        self.view_tabs = QTabWidget()
        self.view_tabs.setDocumentMode(True)
        self.view_tabs.addTab(self.view_stack, "Noised image")
        self.view_tabs.addTab(self._build_inspector(), "Timestep inspector")
        self.view_tabs.setTabToolTip(
            1, "What a model predicts for this image at t, and its errors over every t"
        )

        settings = control_column((source_box, self.image_box, noise_box, t_box, gif_box), 300)
        # Export GIF and the error line stay on screen under the settings (small screens)
        controls = pinned_below(settings, self.gif_button, self.error)
        self.splitter = controls_beside_views(self, controls, self.view_tabs)

        # The GIF settings and the seed keep their ranges (core has no GIF settings object; the
        # seed's is what the noise generator takes here): a value typed outside one is refused
        # at the field; Export GIF waits until the GIF settings are fixed.
        self.gif_fields = FieldCheck(self)
        self.gif_fields.add(self.gif_frames, self.gif_fps, self.gif_size, keep_range=True)
        self.gif_fields.changed.connect(lambda: self.gif_button.setEnabled(self.gif_fields.valid))
        self.seed_field = FieldCheck(self)
        self.seed_field.add(self.seed, keep_range=True)
        guard_wheel_in(self)
        self._add_pretrained_inspect_models()

    def _build_points_view(self) -> QWidget:
        """The 2-D source's view: the density of x_t (an ImageItem with fixed levels) behind
        the points x_t (a ScatterPlotItem) on fixed axes [-EXTENT, EXTENT]^2."""
        self.points_plot = plot_widget("x_t and its density p_t", POINTS_TIP)
        self.points_plot.setMenuEnabled(False)
        self.points_plot.setMouseEnabled(False, False)
        self.points_plot.setAspectLocked(True)
        self.points_plot.setRange(xRange=(-EXTENT, EXTENT), yRange=(-EXTENT, EXTENT), padding=0)
        self.points_plot.showGrid(x=False, y=False)
        self.density_item = pg.ImageItem(axisOrder="row-major")
        self.density_item.setLookupTable(density_ramp())
        self.density_item.setLevels((0.0, DENSITY_TOP))
        self.density_item.setZValue(-10)
        self.points_plot.addItem(self.density_item)
        self.points_scatter = scatter_item(3, (*POINT_COLOR, 200))
        self.points_plot.addItem(self.points_scatter)
        return self.points_plot

    # ------------------------------------------------------------------ inputs

    def choose_image(self) -> None:
        path = dialogs.ask_open_path(self, "Open image", dialogs.IMAGE_FILTER)
        if path is not None:
            self.load_image(path)

    def _on_photo_chosen(self, index: int) -> None:
        self.load_image(Path(self.photo.itemData(index)))

    def load_image(self, path: str | Path, announce: bool = True) -> bool:
        """Show the image at `path`. On failure the old image stays and the error is shown.

        announce: the user opened it (Recent Files, the window's title, the status bar); False
        when the panel restores its last image or shows the bundled photo by itself."""
        try:
            image = load_image(path, max_side=DISPLAY_MAX_SIDE)
        except DiffusionStudioError as exc:
            self.show_problem("Cannot open image", str(exc))
            return False
        self.clear_problem()
        self.image_path = Path(path)
        self.x0 = image
        self.path_label.setText(f"{self.image_path.name}  ({image.shape[2]}×{image.shape[1]})")
        self.path_label.setToolTip(str(self.image_path))
        # the sample photo shown, or none when the image is the user's own
        self.photo.setCurrentIndex(self.photo.findData(str(self.image_path)))
        self._set_source(IMAGE_SOURCE)  # an image opened: the image is what is noised
        self._prepare()
        self.image_changed.emit(str(self.image_path))
        if announce:
            self.file_used.emit(str(self.image_path))
            self.status_message.emit(f"Loaded {self.image_path}")
        return True

    def _on_seed_changed(self) -> None:
        if self.seed_field.valid:  # a seed out of range is refused at the field, eps stays
            self._prepare()

    def set_schedule(self, config: ScheduleConfig) -> None:
        """Use this schedule (from the Schedules tab); the slider keeps its relative place."""
        if config == self.schedule.config:
            return
        old_max = max(1, self.slider.maximum())
        fraction = self.slider.value() / old_max
        self.schedule = NoiseSchedule(config)
        self._flow_path = None
        self.clear_problem()  # a message about the old schedule's view no longer applies
        self._show_schedule()
        self.slider.blockSignals(True)
        self.slider.setRange(0, self.schedule.num_timesteps)
        self.slider.setValue(round(fraction * self.schedule.num_timesteps))
        self.slider.blockSignals(False)
        self._prepare()

    # ------------------------------------------------------------------ source and path

    @property
    def objective(self) -> str:
        """The path chosen: "diffusion" or "flow"."""
        return str(self.path_choice.currentData())

    @property
    def path(self) -> ForwardPath:
        """The forward path shown: the Schedules tab's schedule, or the flow path on its T."""
        if self.objective != "flow":
            return self.schedule
        if self._flow_path is None or self._flow_path.num_timesteps != self.schedule.num_timesteps:
            self._flow_path = FlowPath(self.schedule.num_timesteps)
        return self._flow_path

    @property
    def dataset(self) -> str | None:
        """The 2-D data set noised, or None when the source is an image."""
        source = self.source.currentData()
        return None if source == IMAGE_SOURCE else str(source)

    def set_source(self, source: str) -> bool:
        """Noise an image (IMAGE_SOURCE) or a 2-D data set (one of core.data.TOY_DATASETS)."""
        return set_combo_data(self.source, source)

    def set_path(self, objective: str) -> bool:
        """Noise along a diffusion schedule ("diffusion") or the flow path ("flow")."""
        return set_combo_data(self.path_choice, objective)

    def _set_source(self, source: str) -> None:
        """Choose the source without recomputing (the caller does)."""
        self.source.blockSignals(True)
        set_combo_data(self.source, source)
        self.source.blockSignals(False)
        self._show_source()

    def _show_source(self) -> None:
        """The views and controls of the source: the image's, or the 2-D set's (no image
        controls, no inspector: it inspects image models)."""
        points = self.dataset is not None
        self.view_stack.setCurrentIndex(1 if points else 0)
        self.image_box.setVisible(not points)
        self.view_tabs.setTabText(0, "Noised points" if points else "Noised image")
        if points and self.view_tabs.currentIndex() == 1:
            self.view_tabs.setCurrentIndex(0)
        self.view_tabs.setTabEnabled(1, not points)
        self.view_tabs.setTabToolTip(
            1,
            "The timestep inspector needs an image: choose Image as the source"
            if points
            else "What a model predicts for this image at t, and its errors over every t",
        )

    def _on_source_changed(self, _index: int = 0) -> None:
        self._show_source()
        self._prepare()

    def _on_path_changed(self, _index: int = 0) -> None:
        self.clear_problem()
        self._show_schedule()
        self._prepare()

    # ------------------------------------------------------------------ precomputation

    def _show_schedule(self) -> None:
        if self.objective == "flow":
            text = (
                "Flow matching: x_t = (1 - t) x_0 + t eps, t = k / T, "
                f"T = {self.schedule.num_timesteps} (set on the Schedules tab)"
            )
        else:
            text = f"Schedule: {describe(self.schedule.config)} (set on the Schedules tab)"
        self.schedule_label.setText(text)
        self.slider.setToolTip(SLIDER_TIPS[self.objective])
        self.numbers.setToolTip(NUMBERS_TIPS[self.objective])

    def _prepare(self) -> None:
        """Rebuild the forward process (source, image, seed or path changed) and redraw."""
        if self.seed_field.valid:
            self._seed = self.seed.value()
        seed = self._seed
        dataset = self.dataset
        if dataset is not None:
            self.points = ForwardPoints(self.path, dataset, seed=seed)
        elif self.x0 is not None:
            self.process = ForwardProcess(self.path, self.x0, seed=seed)
            self._update_filmstrip()
        self.render()

    # ------------------------------------------------------------------ drawing

    def timestep(self) -> int | None:
        """The timestep index shown (None for the clean image)."""
        k = self.slider.value()
        return None if k == 0 else k - 1

    def _on_slider(self, _value: int) -> None:
        self.render()

    def _t_text(self, k: int) -> str:
        if k == 0:
            return "clean x_0"
        if self.objective == "flow":
            return f"t = {k / self.schedule.num_timesteps:.3f}"
        return f"t = {k - 1} / {self.schedule.num_timesteps - 1}"

    def render(self) -> None:
        """Compute x_t for the slider's position and show it, its histogram (an image) or its
        density (2-D points), and its numbers."""
        k = self.slider.value()
        self.t_label.setText(self._t_text(k))
        if self.dataset is not None:
            self._render_points(k)
            return
        process = self.process
        if process is None:
            return
        self._refresh_inspector()
        self._show_numbers(process.numbers(k))
        xt = process.x_t_uint8(k)  # uint8 (H, W, C)
        self.xt = xt[..., 0] if xt.shape[2] == 1 else xt
        self.view.set_image(self.xt)
        self.view.set_title("x_0 (clean)" if k == 0 else f"x_t at {step_caption(self.path, k)}")
        density, _ = np.histogram(
            process.x_t_sample(k), bins=len(HIST_BINS) - 1, range=HIST_RANGE, density=True
        )
        self.hist_curve.setData(HIST_BINS, density)
        peak = float(density.max())
        top = HIST_TOP if peak <= HIST_TOP else math.ceil(1.1 * peak / 0.5) * 0.5
        if top != self._hist_top:  # change the axis only when needed (a relayout)
            self._hist_top = top
            self.hist.setYRange(0, top, padding=0)

    def _render_points(self, k: int) -> None:
        """x_t of the points and the density of x_t at slider position k, and the numbers."""
        points = self.points
        if points is None:
            return
        self.density = points.density(k)  # (G, G) [y cell, x cell], row 0 at y = -EXTENT
        self.points_xt = points.x_t(k)  # (N, 2)
        numbers = points.numbers(k, self.density)
        self.density_item.setImage(self.density, autoLevels=False, levels=(0.0, DENSITY_TOP))
        self.density_item.setRect(QRectF(-EXTENT, -EXTENT, 2 * EXTENT, 2 * EXTENT))
        self.points_scatter.setData(pos=self.points_xt)
        title = "x_0 (clean)" if k == 0 else f"x_t at {step_caption(self.path, k)}"
        self.points_plot.setTitle(f"{points.dataset}: {title} and its density")
        self._show_numbers(numbers.path, numbers.tv_to_normal)

    def _show_numbers(self, numbers: ForwardNumbers, tv: float | None = None) -> None:
        """The path's numbers at a slider position (and, for points, the TV distance)."""
        k = numbers.step
        beta = None if k == 0 or numbers.objective == "flow" else float(self.schedule.betas[k - 1])
        if numbers.objective == "flow":  # the Schedules tab's t that is as noisy
            index = schedule_index_at_log_snr(self.schedule, numbers.log_snr)
            twin = "–" if index is None else str(index)
        else:  # the flow time that is as noisy
            twin = f"{flow_time_at_snr(numbers.snr):.4g}"
        rows = numbers_rows(numbers, beta, twin)
        if tv is not None:
            rows += ((TV_ROW, f"{tv:.4f}"),)
        self.shown_numbers = numbers
        self.numbers.setText(numbers_table(rows))

    def _update_filmstrip(self) -> None:
        if self.process is None:
            return
        steps, frames = self.process.frames(FILMSTRIP_FRAMES)
        self.filmstrip_positions = [int(k) for k in steps]
        stride = max(1, math.ceil(max(frames[0].shape[:2]) / THUMB_SIDE))
        for thumb, caption, k, frame in zip(
            self.thumbs, self.thumb_captions, self.filmstrip_positions, frames
        ):
            thumb.setPixmap(pixmap_from_uint8(frame[::stride, ::stride]))
            caption.setText("x_0" if k == 0 else step_caption(self.path, k))

    def _on_thumb_clicked(self, index: int) -> None:
        if index < len(self.filmstrip_positions):
            self.slider.setValue(self.filmstrip_positions[index])

    # ------------------------------------------------------------------ timestep inspector

    def _build_inspector(self) -> QWidget:
        """The inspector's tab: model and label, the row of five panels, the numbers, the
        curve of the errors over t, and its two exports."""
        self.inspect_model = combo_box(
            [("None (inspector off)", None)],
            "The image model to inspect: the bundled ones, and the model chosen on the "
            "Playback tab",
        )
        self.inspect_model.currentIndexChanged.connect(self._on_inspect_model_chosen)
        self.inspect_label = combo_box(
            [("no label", None)], "The class label given to a class-conditional model"
        )
        self.inspect_label.currentIndexChanged.connect(self._on_inspect_input_changed)
        self.inspect_png_button = button(
            "Export PNG…", "Save the row of panels at t, with its numbers, as a PNG"
        )
        self.inspect_png_button.clicked.connect(self.export_inspect_png)
        self.inspect_csv_button = button(
            "Export CSV…", "Save the curve (t, log-SNR, loss, x0 MSE, eps MSE) as CSV"
        )
        self.inspect_csv_button.clicked.connect(self.export_inspect_csv)
        self.inspect_message = QLabel(NO_INSPECT_MODEL)
        self.inspect_message.setWordWrap(True)
        self.inspect_numbers = QLabel()
        self.inspect_numbers.setTextFormat(Qt.TextFormat.RichText)
        self.inspect_numbers.setToolTip(
            "loss: the training loss in the model's own parametrisation (eps, v or x0; a flow "
            "model's velocity eps - x_0), unweighted; x0 MSE and eps MSE: of the model's x_0 "
            "and eps estimates ([-1, 1] pixel scale)"
        )
        choices = QHBoxLayout()
        choices.addWidget(QLabel("Model"))
        choices.addWidget(self.inspect_model, 2)
        choices.addWidget(QLabel("Class"))
        choices.addWidget(self.inspect_label, 1)
        choices.addWidget(self.inspect_png_button)
        choices.addWidget(self.inspect_csv_button)

        self.inspect_views = [ImageView(caption) for caption in PANEL_CAPTIONS]
        row = QHBoxLayout()
        for view, tip in zip(self.inspect_views, INSPECT_TIPS["diffusion"]):
            view.setMinimumSize(90, 90)
            view.setToolTip(tip)
            row.addWidget(view)

        self.curve_plot = plot_widget(
            "Errors of this image against t",
            "The loss and the x0 MSE at every t (same image, same noise), log scale; the "
            "grey dashes are log-SNR_t (right axis); the vertical line is the slider's t",
        )
        self.curve_plot.setMenuEnabled(False)
        item = self.curve_plot.getPlotItem()
        item.setLogMode(x=False, y=True)
        item.setLabel("bottom", "t")
        item.setLabel("left", "error")
        item.addLegend(offset=(-10, 10))
        self.curve_items = {
            name: self.curve_plot.plot(
                [], [], pen=pg.mkPen(color, width=2), name="loss" if name == "loss" else "x0 MSE"
            )
            for name, color in INSPECT_ERROR_COLORS.items()
        }
        # log-SNR on a second axis: its own view box, x linked to the plot's
        self.snr_view = pg.ViewBox(enableMenu=False)
        item.showAxis("right")
        item.scene().addItem(self.snr_view)
        item.getAxis("right").linkToView(self.snr_view)
        right_axis = item.getAxis("right")
        right_axis.setLogMode(False, False)  # the plot's log y is for the errors only
        right_axis.setLabel("log-SNR")
        right_axis.enableAutoSIPrefix(False)
        item.getAxis("bottom").enableAutoSIPrefix(False)
        self.snr_view.setXLink(item)
        self.snr_curve = pg.PlotDataItem(
            [], [], pen=pg.mkPen(LOG_SNR_COLOR, width=1, style=Qt.PenStyle.DashLine)
        )
        self.snr_view.addItem(self.snr_curve)
        item.vb.sigResized.connect(lambda: self.snr_view.setGeometry(item.vb.sceneBoundingRect()))
        self.curve_marker = pg.InfiniteLine(0, angle=90, pen=pg.mkPen((0, 0, 0), width=1))
        self.curve_plot.addItem(self.curve_marker)

        # the row, the numbers and the curve: shown only while something is inspected
        self.inspect_body = QWidget()
        body = QVBoxLayout(self.inspect_body)
        body.setContentsMargins(0, 0, 0, 0)
        body.addLayout(row, 2)
        body.addWidget(self.inspect_numbers)
        body.addWidget(self.curve_plot, 3)
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(choices)
        layout.addWidget(self.inspect_message)
        layout.addWidget(self.inspect_body, 1)
        layout.addStretch(0)
        self._clear_inspector(NO_INSPECT_MODEL)
        return page

    def _add_pretrained_inspect_models(self) -> None:
        """The bundled models join the inspector's Model list (none is chosen)."""
        paths = core_checkpoint.pretrained_checkpoint_paths()
        for name in sorted(paths, key=lambda name: (name != "digits", name)):  # images first
            path = paths[name]
            key = f"pretrained:{name}"
            self.inspect_models[key] = path
            self.inspect_model.addItem(f"Pretrained: {name}", key)

    def set_playback_model(self, ckpt: Checkpoint | None) -> None:
        """The model chosen on the Playback tab joins the list as "Playback's model" (chosen
        here only by the user; no model on Playback takes the entry away)."""
        key = "playback"
        index = self.inspect_model.findData(key)
        if ckpt is None:
            if index >= 0:
                self.inspect_model.removeItem(index)  # a current entry: the choice moves on
            self.inspect_models.pop(key, None)
            return
        self.inspect_models[key] = ckpt
        data = str((ckpt.data or {}).get("name", "model"))
        label = f"Playback's model ({data}, {ckpt.model_config.kind})"
        if index < 0:
            self.inspect_model.addItem(label, key)
        else:
            self.inspect_model.setItemText(index, label)
            if self.inspect_model.currentIndex() == index:
                self._on_inspect_model_chosen()  # another model under the same entry

    def choose_inspect_model(self, key: str | None) -> bool:
        """Choose the inspector's model by its key ("pretrained:digits", "playback", None)."""
        return set_combo_data(self.inspect_model, key)

    def _on_inspect_model_chosen(self, _index: int = 0) -> None:
        key = self.inspect_model.currentData()
        model = self.inspect_models.get(key) if key is not None else None
        if isinstance(model, Path):  # a bundled file, loaded when first chosen
            try:
                model = load_checkpoint(model)
            except DiffusionStudioError as exc:
                self.inspect_ckpt = None
                self._clear_inspector(f"Cannot open this model: {exc}")
                return
            self.inspect_models[key] = model
        self.inspect_ckpt = model
        self._inspect_key = None  # a new model: everything is computed again
        if model is None:
            self._clear_inspector(NO_INSPECT_MODEL)
            return
        if model.is_points:
            self._clear_inspector(
                "The timestep inspector needs an image model: this one is a 2-D point model. "
                "Choose an image model (such as the pretrained digits) above."
            )
            return
        self._fill_inspect_labels(model)
        self._refresh_inspector()

    def _fill_inspect_labels(self, model: Checkpoint) -> None:
        """ "no label" and each class for a class-conditional model (the choice kept where it
        still exists); an unconditional model takes no label."""
        classes = int(getattr(model.model_config, "num_classes", 0) or 0)
        chosen = self.inspect_label.currentData()
        self.inspect_label.blockSignals(True)
        self.inspect_label.clear()
        if classes:
            digits = is_builtin_digits(str((model.data or {}).get("name")))
            self.inspect_label.addItem("no label", None)
            for k in range(classes):
                self.inspect_label.addItem(str(k) if digits else f"class {k}", k)
            if chosen is not None and chosen < classes:
                set_combo_data(self.inspect_label, chosen)
        else:
            self.inspect_label.addItem("unconditional (no label)", None)
        self.inspect_label.setEnabled(bool(classes))
        self.inspect_label.blockSignals(False)

    def _on_inspect_input_changed(self, _index: int = 0) -> None:
        self._refresh_inspector()

    def _clear_inspector(self, message: str) -> None:
        """Nothing inspected: the message says what the inspector needs; no job left running."""
        if self.curve_runner.is_running:
            self.curve_runner.cancel()
        self.inspect_setup = None
        self.inspect_record = None
        self.inspect_curve = None
        self._curve_batches = []
        self._inspect_key = None
        self.inspect_message.setText(message)
        self.inspect_message.setVisible(True)
        self.inspect_body.setVisible(False)
        self.inspect_label.setEnabled(False)  # a model's classes are listed when it is chosen
        self.inspect_numbers.setText("")
        for view in self.inspect_views:
            view.clear_image()
        self._draw_curve()
        self.inspect_png_button.setEnabled(False)
        self.inspect_csv_button.setEnabled(False)

    def inspect_t(self) -> int | None:
        """The timestep the inspector shows: the slider's t (0 for the clean image), at most
        the model's T - 1; None while nothing is inspected."""
        if self.inspect_setup is None:
            return None
        return min(self.timestep() or 0, self.inspect_setup.num_timesteps - 1)

    def _refresh_inspector(self) -> None:
        """Rebuild what is inspected when the model, image, seed or label changed (and start
        its curve in the worker); then show the row at the slider's t (one forward pass)."""
        ckpt = self.inspect_ckpt
        if ckpt is None or ckpt.is_points or self.dataset is not None:
            return
        if self.image_path is None or self.process is None:
            self._clear_inspector("Load an image to inspect.")
            return
        label = self.inspect_label.currentData()
        key = (id(ckpt), str(self.image_path), self.process.seed, label)
        if key != self._inspect_key:
            try:
                image = inspect_image(ckpt, self.image_path)
                setup = setup_from_checkpoint(ckpt, image, seed=self.process.seed, label=label)
            except DiffusionStudioError as exc:
                self._clear_inspector(f"Cannot inspect this image with this model: {exc}")
                return
            self.inspect_setup = setup
            self._inspect_key = key
            self._show_inspect_objective("flow" if setup.is_flow else "diffusion")
            self.inspect_message.setVisible(False)
            self.inspect_body.setVisible(True)
            self._start_curve(ckpt, image, self.process.seed, label)
        self._show_inspect_row()

    def _show_inspect_objective(self, objective: str) -> None:
        """The panels' tips and the curve's t axis for a diffusion or a flow model."""
        for view, tip in zip(self.inspect_views, INSPECT_TIPS[objective]):
            view.setToolTip(tip)
        self.curve_plot.getPlotItem().setLabel("bottom", INSPECT_AXIS[objective])

    def _show_inspect_row(self) -> None:
        """The five panels, the numbers and the curve's marker at the inspected t."""
        setup, t = self.inspect_setup, self.inspect_t()
        if setup is None or t is None:
            return
        record = inspect_at(setup, t)
        self.inspect_record = record
        for view, picture in zip(self.inspect_views, panel_pictures(record)):
            view.set_image(picture)
        self.inspect_numbers.setText(inspect_numbers_text(record, self._inspect_notes(t)))
        self.curve_marker.setValue(t)
        self.inspect_png_button.setEnabled(True)

    def _inspect_notes(self, t: int) -> list[str]:
        """Where the inspector's t or path differ from the panel's."""
        ckpt = self.inspect_ckpt
        notes = []
        if ckpt is not None and ckpt.objective == "flow":
            if self.objective != "flow" or ckpt.schedule_config.num_timesteps != len(self.path):
                notes.append(
                    "a flow-matching model: its own path is used, x_t = (1 - t) x_0 + t eps "
                    f"with T = {ckpt.schedule_config.num_timesteps}"
                )
        elif ckpt is not None and (
            self.objective == "flow" or ckpt.schedule_config != self.schedule.config
        ):
            notes.append(f"the model's own schedule is used: {describe(ckpt.schedule_config)}")
        shown = self.timestep()
        if shown is None:
            notes.append("the slider shows the clean image: t = 0 is inspected")
        elif shown != t:
            notes.append(f"the slider's t = {shown} is past this model's last t = {t}")
        return notes

    def _start_curve(self, ckpt: Checkpoint, image: Any, seed: int, label: int | None) -> None:
        """The errors over every t in the worker, with its own copy of the model (a running
        curve of the previous image, seed, model or label is cancelled)."""
        self.inspect_curve = None
        self._curve_batches = []
        self._draw_curve()
        self.inspect_csv_button.setEnabled(False)

        def run() -> Iterator[CurveBatch]:
            return iter_curve(setup_from_checkpoint(ckpt, image, seed=seed, label=label))

        def status(batch: CurveBatch) -> JobStatus:
            return JobStatus(
                f"Inspector curve: t {batch.done}/{batch.total}", fraction=batch.done / batch.total
            )

        self.curve_runner.start(Job("Inspector curve", run, describe=status))

    def _on_curve_batch(self, batch: CurveBatch) -> None:
        # one record per network evaluation of CURVE_BATCH timesteps (T / 50 records in all)
        if self.inspect_setup is None:  # a cancelled curve's last records: nothing inspected
            return
        self._curve_batches.append(batch)
        self._draw_curve()

    def _on_curve_ended(self, *_args: object) -> None:
        """Finished: the complete curve (what Export CSV writes); cancelled: it stays partial."""
        setup = self.inspect_setup
        if setup is not None and self._curve_batches:
            try:
                self.inspect_curve = collect_curve(setup, self._curve_batches)
            except DiffusionStudioError:  # not every t: cancelled part-way
                self.inspect_curve = None
        self.inspect_csv_button.setEnabled(self.inspect_curve is not None)
        self._draw_curve()

    def _on_curve_failed(self, message: str) -> None:
        self.inspect_message.setText(f"The curve could not be computed: {message}")
        self.inspect_message.setVisible(True)

    def _draw_curve(self) -> None:
        """The errors computed so far (all of them once the curve is complete), log-SNR."""
        batches = sorted(self._curve_batches, key=lambda batch: int(batch.t[0]))
        if not batches:
            for curve in self.curve_items.values():
                curve.setData([], [])
            self.snr_curve.setData([], [])
            return
        t = np.concatenate([batch.t for batch in batches])
        for name, curve in self.curve_items.items():
            values = np.concatenate([getattr(batch, name) for batch in batches])
            curve.setData(t, values)
        if self.inspect_setup is not None:
            log_snr = self.inspect_setup.schedule.log_snr.numpy().astype(np.float64)
            finite = np.isfinite(log_snr)
            self.snr_curve.setData(np.arange(len(log_snr))[finite], log_snr[finite])
            self.curve_plot.setXRange(0, len(log_snr) - 1, padding=0.02)

    def export_inspect_png(self) -> None:
        """Ask for a file name and write the inspector's row at t (core.inspect_render)."""
        record = self.inspect_record
        if record is None:
            self.report_error("Export PNG", "Choose an image model to inspect first.")
            return
        path = dialogs.ask_save_path(
            self, "Export inspector row as PNG", dialogs.PNG_FILTER, f"{self._inspect_name()}.png"
        )
        if path is None:
            return

        def run() -> Iterator[int]:
            save_row_png(path, record)
            yield 1

        self.start_export(self.export_runner, Job("Export inspector PNG", run), path)

    def export_inspect_csv(self) -> None:
        """Ask for a file name and write the curve over t as CSV (core.inspect)."""
        curve = self.inspect_curve
        if curve is None:
            message = (
                "Choose an image model to inspect first."
                if self.inspect_setup is None
                else "The curve is still being computed: export it when it is complete."
            )
            self.report_error("Export CSV", message)
            return
        path = dialogs.ask_save_path(
            self, "Export inspector curve as CSV", dialogs.CSV_FILTER, f"{self._inspect_name()}.csv"
        )
        if path is None:
            return

        def run() -> Iterator[int]:
            save_curve_csv(path, curve)
            yield 1

        self.start_export(self.export_runner, Job("Export inspector CSV", run), path)

    def _inspect_name(self) -> str:
        """A file name stem: 'astronaut_inspect_digits_seed0_t250'."""
        ckpt = self.inspect_ckpt
        data = str((ckpt.data or {}).get("name", "model")) if ckpt is not None else "model"
        stem = self.image_path.stem if self.image_path is not None else "image"
        seed = self.process.seed if self.process is not None else 0
        return dialogs.file_stem(f"{stem}_inspect_{data}_seed{seed}_t{self.inspect_t() or 0}")

    # ------------------------------------------------------------------ playback

    def _on_play_toggled(self, on: bool) -> None:
        if on:
            if self.slider.value() >= self.slider.maximum():
                self.slider.setValue(0)
            self.play_button.setText("Pause")
            self.play_timer.start()
        else:
            self.play_button.setText("Play")
            self.play_timer.stop()

    def _on_play_tick(self) -> None:
        step = max(1, self.slider.maximum() // 150)  # about 5 s from x_0 to x_T
        value = self.slider.value() + step
        if value > self.slider.maximum():
            if self.loop.isChecked():
                value = 0
            else:
                self.slider.setValue(self.slider.maximum())
                self.play_button.setChecked(False)
                return
        self.slider.setValue(value)

    # ------------------------------------------------------------------ export

    def runners(self) -> list[JobRunner]:
        return [self.export_runner, self.curve_runner]

    def export_gif(self) -> None:
        """Ask for a file name and write the forward trajectory as a GIF (in the worker): the
        image's x_t, or the points x_t over their density (ForwardPoints.frame)."""
        dataset = self.dataset
        if dataset is None and (self.x0 is None or self.process is None):
            self.report_error("Export GIF", "Load an image first.")
            return
        if not self.gif_fields.valid:
            self.report_error("Export GIF", self.gif_fields.first_problem())
            return
        stem = dataset if dataset is not None else (self.image_path or Path("image")).stem
        path = dialogs.ask_save_path(
            self,
            "Export forward process as GIF",
            dialogs.GIF_FILTER,
            f"{forward_gif_name(stem, self.path)}.gif",
        )
        if path is None:
            return
        forward_path, seed = self.path, self._seed
        if dataset is not None:
            positions = tuple(int(k) for k in self.points.frame_steps(self.gif_frames.value()))
        else:
            positions = tuple(int(k) for k in self.process.frame_steps(self.gif_frames.value()))
        request = GifRequest(path, positions, float(self.gif_fps.value()), self.gif_size.value())
        x0 = None if self.x0 is None else self.x0.copy()
        n = len(positions)

        def run() -> Iterator[int]:
            # its own process: x_t_uint8 reuses a buffer, the GUI thread's is not shared
            frames = []
            if dataset is not None:
                points = ForwardPoints(forward_path, dataset, seed=seed)
                for i, k in enumerate(request.positions):
                    frames.append(points.frame(k, request.max_side))
                    yield i + 1
            else:
                process = ForwardProcess(forward_path, x0, seed=seed)
                for i, k in enumerate(request.positions):
                    frames.append(_fit(process.x_t_uint8(k), request.max_side))
                    yield i + 1
            captions = [step_caption(forward_path, k) for k in request.positions]
            save_gif(request.path, frames, fps=request.fps, captions=captions)
            yield n + 1

        def describe(i: int) -> JobStatus:
            text = "Writing GIF…" if i > n else f"GIF frame {i}/{n}"
            return JobStatus(text, fraction=min(1.0, i / (n + 1)))

        job = Job("Export GIF", run, describe=describe)
        self.start_export(self.export_runner, job, request.path)

    # ------------------------------------------------------------------ settings

    def persistent_widgets(self) -> dict[str, Persistent]:
        names = ("seed", "gif_frames", "gif_fps", "gif_size", "path_choice", "source")
        return {name: getattr(self, name) for name in names}

    def save_state(self, settings: QSettings) -> None:
        super().save_state(settings)
        key = self.key()
        if self.image_path is not None:
            settings.setValue(f"{key}/image", str(self.image_path))
        settings.setValue(f"{key}/position", self.slider.value())

    def restore_state(self, settings: QSettings) -> None:
        super().restore_state(settings)  # the seed before the image: eps is drawn once
        key = self.key()
        source = self.source.currentData()  # loading an image chooses the Image source
        saved = settings.value(f"{key}/image")
        restored = saved and Path(str(saved)).is_file()
        if not (restored and self.load_image(Path(str(saved)), announce=False)):
            self.load_default_image()
        self.set_source(source)
        _set_int(self.slider, settings.value(f"{key}/position"))

    def load_default_image(self) -> None:
        self.load_image(default_photo_path(), announce=False)
        if self.slider.value() == 0:
            self.slider.setValue(self.slider.maximum() // 4)


def forward_gif_name(stem: str, path: ForwardPath) -> str:
    """A file name stem for a forward GIF: 'astronaut_forward_cosine_T1000',
    'moons_forward_flow_T1000'."""
    kind = "flow" if isinstance(path, FlowPath) else path.config.kind
    return dialogs.file_stem(f"{stem}_forward_{kind}_T{path.num_timesteps}")


def _snr_texts(numbers: ForwardNumbers) -> tuple[str, str]:
    snr = numbers.snr
    if math.isinf(snr):
        return "∞", "∞"
    if snr > 0:
        return f"{snr:.4g}", f"{math.log(snr):.2f}"
    return "0", "-∞"


def numbers_rows(
    numbers: ForwardNumbers, beta: float | None = None, twin: str = "–"
) -> tuple[tuple[str, str], ...]:
    """The readout's rows at a step, named for the path: diffusion's alphabar_t and its
    roots; flow's t and its coefficients 1 - t and t (a flow path has no alphabar). twin:
    the other path's t with the same SNR (TWIN_ROWS)."""
    snr_text, log_text = _snr_texts(numbers)
    if numbers.objective == "flow":
        return (
            ("t (flow time)", f"{numbers.time:.5g}"),
            ("signal coefficient 1 - t", f"{numbers.signal:.5g}"),
            ("noise coefficient t", f"{numbers.noise:.5g}"),
            ("SNR_t = (1 - t)^2 / t^2", snr_text),
            ("log SNR_t", log_text),
            (TWIN_ROWS["flow"], twin),
        )
    return (
        ("beta_t", "–" if beta is None else f"{beta:.5g}"),
        ("alphabar_t = prod alpha_s", f"{numbers.alpha_bar:.5g}"),
        ("sqrt(alphabar_t)", f"{numbers.signal:.5g}"),
        ("sqrt(1 - alphabar_t)", f"{numbers.noise:.5g}"),
        ("SNR_t", snr_text),
        ("log SNR_t", log_text),
        (TWIN_ROWS["diffusion"], twin),
    )


def widest_rows(objective: str) -> tuple[tuple[str, str], ...]:
    """The widest readout of a path (the numbers box is sized for it, with the TV row)."""
    wide = "0.00050601"
    if objective == "flow":
        rows = (
            ("t (flow time)", wide),
            ("signal coefficient 1 - t", wide),
            ("noise coefficient t", wide),
            ("SNR_t = (1 - t)^2 / t^2", "9.998e+05"),
            ("log SNR_t", "-13.82"),
            (TWIN_ROWS["flow"], "999"),
        )
    else:
        rows = (
            ("beta_t", wide),
            ("alphabar_t = prod alpha_s", wide),
            ("sqrt(alphabar_t)", wide),
            ("sqrt(1 - alphabar_t)", wide),
            ("SNR_t", "4.038e-05"),
            ("log SNR_t", "-10.12"),
            (TWIN_ROWS["diffusion"], "0.0009995"),
        )
    return rows + ((TV_ROW, "0.8477"),)


def numbers_table(rows: tuple[tuple[str, str], ...]) -> str:
    """The readout's rich text: one row per (name, value)."""
    return (
        "<table cellspacing='0' cellpadding='1'>"
        + "".join(
            f"<tr><td style='padding-right: 12px'>{name}</td><td>{value}</td></tr>"
            for name, value in rows
        )
        + "</table>"
    )


def inspect_numbers_text(record: InspectRecord, notes: list[str] = ()) -> str:
    """The inspector's readout: t (a flow model's time t with its index k), log-SNR, the loss
    (in the model's parametrisation: "velocity" for flow) and the two MSEs, as core.inspect
    computed them; then the notes, in italics."""
    label = "no label" if record.label is None else str(record.label)
    table = numbers_table(
        (
            ("t", str(record.t) if record.time is None else f"{record.time:.4g} (k = {record.t})"),
            ("log-SNR_t", f"{record.log_snr:.3f}"),
            (f"loss ({record.prediction_type})", f"{record.loss:.5g}"),
            ("x0 MSE", f"{record.x0_mse:.5g}"),
            ("eps MSE", f"{record.eps_mse:.5g}"),
            ("label", label),
        )
    )
    return table + "".join(f"<i>{note}</i><br>" for note in notes)


def _set_int(widget, value) -> None:
    try:
        widget.setValue(int(value))
    except (TypeError, ValueError):
        pass


def _fit(frame: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale a uint8 (H, W, C) frame so that its longest side is at most max_side."""
    h, w = frame.shape[:2]
    if max(h, w) <= max_side:
        return frame
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    picture = Image.fromarray(frame[..., 0] if frame.shape[2] == 1 else frame)
    return np.asarray(picture.resize(size, Image.Resampling.LANCZOS))
