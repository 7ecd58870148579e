"""Forward panel: an image, noised to any timestep, live.

x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps  (DDPM eq. 4), with one fixed eps per
seed. Slider position k = 0 shows the clean image x_0; k = 1..T shows timestep index t = k - 1.
All of that maths is `core.forward.ForwardProcess` (the CLI uses the same): it is rebuilt when
the image, seed or schedule changes, so a slider move is one fused multiply-add over the image
(x_t_uint8) and one over a fixed pixel subsample for the histogram (x_t_sample).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PIL import Image
from PySide6.QtCore import QSettings, QSize, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app import dialogs
from app.panels.base import Panel
from app.panels.schedule_panel import describe
from app.widgets import (
    ClickableLabel,
    ErrorLabel,
    FieldCheck,
    ImageView,
    Persistent,
    button,
    check_box,
    control_column,
    controls_beside_views,
    form_group,
    guard_wheel_in,
    pinned_below,
    pixmap_from_uint8,
    spin_box,
)
from app.worker import Job, JobRunner, JobStatus
from core.data import default_photo_path, load_image, sample_photo_paths
from core.errors import DiffusionStudioError
from core.export import forward_caption, save_gif
from core.forward import ForwardProcess
from core.schedule import NoiseSchedule, ScheduleConfig

DISPLAY_MAX_SIDE = 512
THUMB_SIDE = 96
FILMSTRIP_FRAMES = 8
HIST_RANGE = (-4.0, 4.0)
HIST_BINS = np.linspace(*HIST_RANGE, 81)
HIST_TOP = 0.6  # fixed y range 0..0.6 (N(0, 1) peaks at 0.40); widened only when needed


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
        self._hist_top = HIST_TOP
        self.export_runner = self.make_export_runner("forward-export")
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
        self.slider.setToolTip(
            "Timestep: 0 shows the clean image x_0, k shows x_t at t = k - 1 "
            "(x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps)"
        )
        self.slider.valueChanged.connect(self._on_slider)
        self.play_button = button("Play", "Run the forward process from the clean image to noise")
        self.play_button.setCheckable(True)
        self.play_button.toggled.connect(self._on_play_toggled)
        self.loop = check_box("Loop", "Start again from the clean image at the end")
        self.t_label = QLabel()
        self.t_label.setFixedWidth(110)  # fixed widths: a new text needs no relayout

        self.numbers = QLabel()
        self.numbers.setTextFormat(Qt.TextFormat.RichText)
        self.numbers.setToolTip(
            "The coefficients at t: x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps, "
            "alphabar_t = prod alpha_s, SNR_t = alphabar_t / (1 - alphabar_t)"
        )
        widest = numbers_table(
            (
                ("beta_t", "0.00050601"),
                ("alphabar_t = prod alpha_s", "0.00040358"),
                ("sqrt(alphabar_t)", "0.020089"),
                ("sqrt(1 - alphabar_t)", "0.99979"),
                ("SNR_t", "4.038e-05"),
                ("log SNR_t", "-10.12"),
            )
        )
        self.numbers.setText(widest)
        # fixed: a new text needs no relayout while playing; sized for the widest readout
        self.numbers.setFixedSize(self.numbers.sizeHint() + QSize(24, 4))
        self.schedule_label = QLabel()
        self.schedule_label.setWordWrap(True)
        self.schedule_label.setToolTip("The noise schedule is chosen on the Schedules tab")

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

        image_box = form_group(
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

        settings = control_column((image_box, noise_box, t_box, gif_box), 300)
        # Export GIF and the error line stay on screen under the settings (small screens)
        controls = pinned_below(settings, self.gif_button, self.error)
        self.splitter = controls_beside_views(self, controls, right)

        # The GIF settings and the seed keep their ranges (core has no GIF settings object; the
        # seed's is what the noise generator takes here): a value typed outside one is refused
        # at the field; Export GIF waits until the GIF settings are fixed.
        self.gif_fields = FieldCheck(self)
        self.gif_fields.add(self.gif_frames, self.gif_fps, self.gif_size, keep_range=True)
        self.gif_fields.changed.connect(lambda: self.gif_button.setEnabled(self.gif_fields.valid))
        self.seed_field = FieldCheck(self)
        self.seed_field.add(self.seed, keep_range=True)
        guard_wheel_in(self)

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
        self._prepare_image()
        self.image_changed.emit(str(self.image_path))
        if announce:
            self.file_used.emit(str(self.image_path))
            self.status_message.emit(f"Loaded {self.image_path}")
        return True

    def _on_seed_changed(self) -> None:
        if self.seed_field.valid:  # a seed out of range is refused at the field, eps stays
            self._prepare_image()

    def set_schedule(self, config: ScheduleConfig) -> None:
        """Use this schedule (from the Schedules tab); the slider keeps its relative place."""
        if config == self.schedule.config:
            return
        old_max = max(1, self.slider.maximum())
        fraction = self.slider.value() / old_max
        self.schedule = NoiseSchedule(config)
        self.clear_problem()  # a message about the old schedule's view no longer applies
        self._show_schedule()
        self.slider.blockSignals(True)
        self.slider.setRange(0, self.schedule.num_timesteps)
        self.slider.setValue(round(fraction * self.schedule.num_timesteps))
        self.slider.blockSignals(False)
        self._prepare_image()

    # ------------------------------------------------------------------ precomputation

    def _show_schedule(self) -> None:
        text = f"Schedule: {describe(self.schedule.config)} (set on the Schedules tab)"
        self.schedule_label.setText(text)

    def _prepare_image(self) -> None:
        """Rebuild the forward process (image, seed or schedule changed) and redraw."""
        if self.x0 is None:
            self.render()
            return
        seed = self.seed.value() if self.seed_field.valid else self.process.seed
        self.process = ForwardProcess(self.schedule, self.x0, seed=seed)
        self._update_filmstrip()
        self.render()

    # ------------------------------------------------------------------ drawing

    def timestep(self) -> int | None:
        """The timestep index shown (None for the clean image)."""
        k = self.slider.value()
        return None if k == 0 else k - 1

    def _on_slider(self, _value: int) -> None:
        self.render()

    def render(self) -> None:
        """Compute x_t for the slider's position and show it, its histogram and its numbers."""
        k = self.slider.value()
        t = k - 1
        self.t_label.setText(
            "clean x_0" if k == 0 else f"t = {t} / {self.schedule.num_timesteps - 1}"
        )
        process = self.process
        if process is None:
            return
        self._show_numbers(k)
        xt = process.x_t_uint8(k)  # uint8 (H, W, C)
        self.xt = xt[..., 0] if xt.shape[2] == 1 else xt
        self.view.set_image(self.xt)
        self.view.set_title("x_0 (clean)" if k == 0 else f"x_t at t = {t}")
        density, _ = np.histogram(
            process.x_t_sample(k), bins=len(HIST_BINS) - 1, range=HIST_RANGE, density=True
        )
        self.hist_curve.setData(HIST_BINS, density)
        peak = float(density.max())
        top = HIST_TOP if peak <= HIST_TOP else math.ceil(1.1 * peak / 0.5) * 0.5
        if top != self._hist_top:  # change the axis only when needed (a relayout)
            self._hist_top = top
            self.hist.setYRange(0, top, padding=0)

    def _show_numbers(self, k: int) -> None:
        """The coefficients at slider position k (from the forward process)."""
        numbers = self.process.numbers(k)
        beta_text = "–" if k == 0 else f"{float(self.schedule.betas[k - 1]):.5g}"
        snr = numbers.snr
        if math.isinf(snr):
            snr_text, log_text = "∞", "∞"
        elif snr > 0:
            snr_text, log_text = f"{snr:.4g}", f"{math.log(snr):.2f}"
        else:
            snr_text, log_text = "0", "-∞"
        self.numbers.setText(
            numbers_table(
                (
                    ("beta_t", beta_text),
                    ("alphabar_t = prod alpha_s", f"{numbers.alpha_bar:.5g}"),
                    ("sqrt(alphabar_t)", f"{numbers.sqrt_alpha_bar:.5g}"),
                    ("sqrt(1 - alphabar_t)", f"{numbers.sqrt_one_minus_alpha_bar:.5g}"),
                    ("SNR_t", snr_text),
                    ("log SNR_t", log_text),
                )
            )
        )

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
            caption.setText("x_0" if k == 0 else f"t = {k - 1}")

    def _on_thumb_clicked(self, index: int) -> None:
        if index < len(self.filmstrip_positions):
            self.slider.setValue(self.filmstrip_positions[index])

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
        return [self.export_runner]

    def export_gif(self) -> None:
        """Ask for a file name and write the forward trajectory as a GIF (in the worker)."""
        if self.x0 is None or self.process is None:
            self.report_error("Export GIF", "Load an image first.")
            return
        if not self.gif_fields.valid:
            self.report_error("Export GIF", self.gif_fields.first_problem())
            return
        path = dialogs.ask_save_path(
            self,
            "Export forward process as GIF",
            dialogs.GIF_FILTER,
            f"{forward_gif_name(self.image_path, self.schedule.config)}.gif",
        )
        if path is None:
            return
        positions = tuple(int(k) for k in self.process.frame_steps(self.gif_frames.value()))
        request = GifRequest(path, positions, float(self.gif_fps.value()), self.gif_size.value())
        schedule, x0, seed = self.schedule, self.x0.copy(), self.process.seed
        n = len(positions)

        def run() -> Iterator[int]:
            # its own ForwardProcess: x_t_uint8 reuses a buffer, the GUI thread's is not shared
            process = ForwardProcess(schedule, x0, seed=seed)
            frames = []
            for i, k in enumerate(request.positions):
                frames.append(_fit(process.x_t_uint8(k), request.max_side))
                yield i + 1
            captions = [forward_caption(k) for k in request.positions]
            save_gif(request.path, frames, fps=request.fps, captions=captions)
            yield n + 1

        def describe(i: int) -> JobStatus:
            text = "Writing GIF…" if i > n else f"GIF frame {i}/{n}"
            return JobStatus(text, fraction=min(1.0, i / (n + 1)))

        job = Job("Export GIF", run, describe=describe)
        self.start_export(self.export_runner, job, request.path)

    # ------------------------------------------------------------------ settings

    def persistent_widgets(self) -> dict[str, Persistent]:
        return {name: getattr(self, name) for name in ("seed", "gif_frames", "gif_fps", "gif_size")}

    def save_state(self, settings: QSettings) -> None:
        super().save_state(settings)
        key = self.key()
        if self.image_path is not None:
            settings.setValue(f"{key}/image", str(self.image_path))
        settings.setValue(f"{key}/position", self.slider.value())

    def restore_state(self, settings: QSettings) -> None:
        super().restore_state(settings)  # the seed before the image: eps is drawn once
        key = self.key()
        saved = settings.value(f"{key}/image")
        restored = saved and Path(str(saved)).is_file()
        if not (restored and self.load_image(Path(str(saved)), announce=False)):
            self.load_default_image()
        _set_int(self.slider, settings.value(f"{key}/position"))

    def load_default_image(self) -> None:
        self.load_image(default_photo_path(), announce=False)
        if self.slider.value() == 0:
            self.slider.setValue(self.slider.maximum() // 4)


def forward_gif_name(image: Path | None, config: ScheduleConfig) -> str:
    """A file name stem for a forward GIF: 'astronaut_forward_cosine_T1000'."""
    stem = image.stem if image is not None else "image"
    name = f"{stem}_forward_{config.kind}_T{config.num_timesteps}"
    return dialogs.file_stem(name)


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
