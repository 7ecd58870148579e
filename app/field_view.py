"""Playback's 2-D field window: a point model's learned field at a chosen t, as arrows, with
particles moving along it; for the `gaussians` set the exact field beside it and the error.

All numbers come from core.fields (`ModelFields`): the arrows are the field on a grid at the
slider's timestep index (a 20 x 20 grid through a small MLP: a few ms, in the GUI thread); the
particles' paths from t down to 0 take tens of network evaluations and run in this window's
JobRunner, then a QTimer plays them (Play / Pause).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QCloseEvent, QShowEvent
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from diffusion_studio.app import dialogs
from diffusion_studio.app.widgets import (
    POINT_EXTENT,
    ErrorLabel,
    button,
    check_box,
    points_plot,
    scatter_item,
)
from diffusion_studio.app.worker import Job, JobControl, JobRunner, JobStatus
from diffusion_studio.core.checkpoint import Checkpoint
from diffusion_studio.core.errors import DiffusionStudioError
from diffusion_studio.core.fields import (
    DEFAULT_GRID_SIZE,
    FieldView,
    ModelFields,
    ParticleProgress,
    ParticleRun,
    field_grid,
    field_name,
)

FRAME_INTERVAL_MS = 40  # particle animation, 25 frames a second
HOLD_FRAMES = 25  # the particles rest at t = 0 this many frames before starting again
PARTICLE_DELAY_MS = 150  # the slider's particles start once it has rested this long
ARROW_LENGTH = 0.9  # the longest arrow, in grid spacings
HEAD = 0.3  # arrow head strokes, as a fraction of the arrow's length
EXPLAIN = {
    "flow": (
        "Arrows: the velocity v(x, t) = eps_hat - x0_hat the model predicts (the flow ODE "
        "dx/dt = v points from the data towards the noise). Sampling walks against it, t "
        "decreasing: the particles start as samples of x_t and follow Euler steps down to t = 0."
    ),
    "diffusion": (
        "Arrows: the score grad log p_t(x) = -eps_hat / s_t the model predicts, pointing to "
        "where x_t is more likely (longer at small t). The particles start as samples of x_t "
        "and follow the probability-flow ODE (DDIM steps, no noise) down to t = 0."
    ),
}


class FieldArrows:
    """Arrows on a plot: one line item of segment pairs (shaft and two head strokes each).

    `points` (G, 2), `vectors` (G, 2) the field shown, `scale` the drawing's length per unit
    of field: arrow i goes from points[i] to points[i] + scale * vectors[i]; with
    `directions_only` every arrow is `length` long, along vectors[i].
    """

    def __init__(self, plot: pg.PlotWidget, rgb: tuple[int, int, int]) -> None:
        self.item = pg.PlotDataItem(pen=pg.mkPen(*rgb, width=1.5), connect="pairs")
        plot.addItem(self.item)
        self.points = np.zeros((0, 2))
        self.vectors = np.zeros((0, 2))
        self.scale = 1.0

    def set_field(
        self,
        points: np.ndarray,
        vectors: np.ndarray,
        scale: float,
        directions_only: bool = False,
        length: float = 1.0,
    ) -> None:
        self.points, self.vectors, self.scale = points, vectors, scale
        drawn = scale * vectors
        if directions_only:
            size = np.linalg.norm(vectors, axis=1, keepdims=True)
            drawn = length * vectors / np.where(size > 0, size, 1.0)
        tips = points + drawn
        back = -HEAD * drawn  # from the tip back along the shaft
        side = np.stack([-back[:, 1], back[:, 0]], axis=1) * 0.5
        left, right = tips + back + side, tips + back - side
        # (G, 6, 2): tail-tip, tip-left, tip-right; drawn as pairs
        segments = np.stack([points, tips, tips, left, tips, right], axis=1).reshape(-1, 2)
        self.item.setData(segments[:, 0], segments[:, 1])

    def drawn(self) -> tuple[np.ndarray, np.ndarray]:
        """(tails, tips) (G, 2) each, read back from the drawn line item."""
        x, y = self.item.getData()
        segments = np.stack([x, y], axis=1).reshape(-1, 6, 2)
        return segments[:, 0], segments[:, 1]


class FieldViewDialog(QDialog):
    """The t slider, the learned field with particles, and for `gaussians` the exact field
    with its particles and the error heatmap (with the p_t-weighted relative error)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("2-D field")
        self.runner = JobRunner("field-particles", self)
        self.fields: ModelFields | None = None
        self.model_name = ""
        self.grid = field_grid(POINT_EXTENT, DEFAULT_GRID_SIZE)  # (G, 2)
        self.view: FieldView | None = None  # the fields at the slider's index
        self.particles: ParticleRun | None = None
        self.frame = 0
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("Timestep index k: left little noise, right pure noise")
        self.slider.setMinimumWidth(300)
        self.level_label = QLabel("")
        self.play_button = button("Pause", "Play or pause the particles' motion")
        self.play_button.setCheckable(True)
        self.play_button.setChecked(True)
        self.play_button.toggled.connect(self._on_play_toggled)
        self.directions_only = check_box(
            "Directions only",
            "Draw every arrow the same length (the field's size varies a lot, most at small t)",
        )
        self.directions_only.toggled.connect(lambda _on: self.show_index(self.index))
        self.explain = QLabel("")
        self.explain.setWordWrap(True)
        self.error = ErrorLabel()
        self.status = QLabel("")
        self.error_label = QLabel("")
        self.learned_plot = points_plot("Learned field", "The model's field at the slider's t")
        self.exact_plot = points_plot("Exact field", "The gaussians set's field in closed form")
        self.error_plot = points_plot(
            "Error |learned - exact|", "Length of the difference between the two fields"
        )
        self.samples = scatter_item(3, (150, 150, 150, 90))  # the particles' start, x_t
        self.learned_plot.addItem(self.samples)
        self.exact_samples = scatter_item(3, (150, 150, 150, 90))
        self.exact_plot.addItem(self.exact_samples)
        self.learned_arrows = FieldArrows(self.learned_plot, (31, 119, 180))
        self.learned_dots = scatter_item(4, (214, 39, 40, 200))
        self.learned_plot.addItem(self.learned_dots)
        self.exact_arrows = FieldArrows(self.exact_plot, (44, 160, 44))
        self.exact_dots = scatter_item(4, (214, 39, 40, 200))
        self.exact_plot.addItem(self.exact_dots)
        self.error_image = pg.ImageItem()
        self.error_plot.addItem(self.error_image)
        self.error_bar = pg.ColorBarItem(
            values=(0.0, 1.0), colorMap=pg.colormap.get("viridis"), interactive=False, width=12
        )
        self.error_bar.setImageItem(self.error_image, insert_in=self.error_plot.getPlotItem())
        for plot in (self.learned_plot, self.exact_plot, self.error_plot):
            plot.setMinimumSize(260, 260)
        self.slider.valueChanged.connect(self._on_slider)
        self.particle_timer = QTimer(self)
        self.particle_timer.setSingleShot(True)
        self.particle_timer.setInterval(PARTICLE_DELAY_MS)
        self.particle_timer.timeout.connect(self.start_particles)
        self.frame_timer = QTimer(self)
        self.frame_timer.setInterval(FRAME_INTERVAL_MS)
        self.frame_timer.timeout.connect(self._on_frame_tick)
        self.runner.progressed.connect(self._on_record)
        self.runner.failed.connect(self._on_failed)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("t"))
        controls.addWidget(self.slider, 1)
        controls.addWidget(self.level_label)
        controls.addWidget(self.directions_only)
        controls.addWidget(self.play_button)
        plots = QHBoxLayout()
        for plot in (self.learned_plot, self.exact_plot, self.error_plot):
            plots.addWidget(plot, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.explain)
        layout.addWidget(self.error)
        layout.addLayout(plots, 1)
        layout.addWidget(self.error_label)
        layout.addWidget(self.status)
        self.resize(1000, 520)

    # ------------------------------------------------------------------ the model

    def set_checkpoint(self, ckpt: Checkpoint, name: str = "") -> bool:
        """Show the fields of a 2-D point model (False and a message for any other)."""
        if self.fields is not None and self.fields.checkpoint is ckpt:
            return True
        try:
            fields = ModelFields(ckpt)
        except DiffusionStudioError as exc:
            self.error.show_message(str(exc))
            dialogs.show_error(self, "2-D field", str(exc))
            return False
        self.runner.cancel()
        self.fields, self.model_name, self.particles = fields, name, None
        self.error.show_message("")
        self.setWindowTitle(f"2-D field – {name}" if name else "2-D field")
        self.explain.setText(EXPLAIN["flow" if fields.objective == "flow" else "diffusion"])
        exact = fields.mixture is not None
        self.exact_plot.setVisible(exact)
        self.error_plot.setVisible(exact)
        self.error_label.setVisible(exact)
        self.learned_plot.setTitle(f"Learned {field_name(fields.objective)}")
        self.exact_plot.setTitle(f"Exact {field_name(fields.objective)}")
        last = fields.path.num_timesteps - 1
        self.slider.blockSignals(True)
        self.slider.setRange(0, last)
        self.slider.setValue(last // 2)
        self.slider.blockSignals(False)
        self.show_index(self.slider.value())
        return True

    @property
    def index(self) -> int:
        return self.slider.value()

    def set_index(self, k: int) -> None:
        """Move the slider to timestep index k (the fields follow; particles a moment later)."""
        self.slider.setValue(k)

    def _on_slider(self, k: int) -> None:
        self.show_index(k)

    # ------------------------------------------------------------------ the fields

    def show_index(self, k: int) -> None:
        """Draw the fields at index k and schedule its particles."""
        if self.fields is None:
            return
        view = self.fields.view(self.grid, k)
        self.view = view
        level = view.learned.level
        time = f"t = {level.time:.3f}, " if self.fields.objective == "flow" else ""
        self.level_label.setText(
            f"k = {k}: {time}x_t = {level.signal:.3f} x0 + {level.noise:.3f} eps"
        )
        spacing = 2 * POINT_EXTENT / (DEFAULT_GRID_SIZE - 1)
        longest = np.linalg.norm(view.learned.vectors, axis=1).max()
        if view.exact is not None:  # one scale for both, so their lengths compare
            longest = max(longest, np.linalg.norm(view.exact.vectors, axis=1).max())
        scale = ARROW_LENGTH * spacing / longest if longest > 0 else 1.0
        unit = self.directions_only.isChecked()
        length = ARROW_LENGTH * spacing
        self.learned_arrows.set_field(self.grid, view.learned.vectors, scale, unit, length)
        if view.exact is not None and view.error is not None:
            self.exact_arrows.set_field(self.grid, view.exact.vectors, scale, unit, length)
            image = view.error.per_point.reshape(DEFAULT_GRID_SIZE, DEFAULT_GRID_SIZE)
            self.error_image.setImage(image.T, autoLevels=False)  # ImageItem's axis 0 is x
            self.error_bar.setLevels((0.0, max(float(image.max()), 1e-12)))
            half = spacing / 2
            self.error_image.setRect(
                -POINT_EXTENT - half,
                -POINT_EXTENT - half,
                2 * POINT_EXTENT + spacing,
                2 * POINT_EXTENT + spacing,
            )
            self.error_label.setText(
                f"Error at k = {k}: {100 * view.error.relative:.1f} % of the exact field "
                f"(mean |learned - exact| / mean |exact|, weighted by the density p_t); "
                f"largest |learned - exact| {view.error.per_point.max():.3g}"
            )
        self.samples.setData(pos=np.zeros((0, 2)))
        self.exact_samples.setData(pos=np.zeros((0, 2)))
        self.learned_dots.setData(pos=np.zeros((0, 2)))
        self.exact_dots.setData(pos=np.zeros((0, 2)))
        self.particle_timer.start()

    # ------------------------------------------------------------------ particles

    def start_particles(self) -> None:
        """Move particles from the slider's t to 0 in the worker (a newer start replaces it)."""
        fields, k = self.fields, self.index
        if fields is None:
            return

        def run() -> Iterator[ParticleProgress | ParticleRun]:  # worker thread
            yield from fields.particle_run(k)

        self.runner.start(Job("2-D field particles", run, JobControl(), describe=describe))
        self.status.setText("Moving particles…")

    def _on_record(self, record: object) -> None:
        if isinstance(record, ParticleProgress):
            self.status.setText(f"Moving particles… step {record.done} of {record.total}")
        if isinstance(record, ParticleRun) and record.index == self.index:
            self.particles = record
            self.frame = 0
            self.status.setText(
                f"{record.learned.positions.shape[1]} particles from k = {record.index} to "
                f"t = 0 in {record.learned.positions.shape[0] - 1} steps"
            )
            self.samples.setData(pos=record.learned.positions[0])
            if record.exact is not None:
                self.exact_samples.setData(pos=record.exact.positions[0])
            self.show_frame(0)
            if self.play_button.isChecked():
                self.frame_timer.start()

    def _on_failed(self, message: str) -> None:
        self.status.setText("")
        self.error.show_message(f"The particles could not be moved: {message}")

    def show_frame(self, frame: int) -> None:
        """Draw the particles at row `frame` of their paths (the last row while resting)."""
        run = self.particles
        if run is None:
            return
        rows = run.learned.positions.shape[0]
        self.frame = frame
        row = min(frame, rows - 1)
        self.learned_dots.setData(pos=run.learned.positions[row])
        if run.exact is not None:
            self.exact_dots.setData(pos=run.exact.positions[row])

    def _on_frame_tick(self) -> None:
        if self.particles is None:
            return
        rows = self.particles.learned.positions.shape[0]
        self.show_frame((self.frame + 1) % (rows + HOLD_FRAMES))

    def _on_play_toggled(self, on: bool) -> None:
        self.play_button.setText("Pause" if on else "Play")
        if on and self.particles is not None:
            self.frame_timer.start()
        else:
            self.frame_timer.stop()

    # ------------------------------------------------------------------ closing

    def shutdown(self, timeout_s: float = 10.0) -> bool:
        """Stop the timers and the particle job; True when no thread of it is left."""
        self.particle_timer.stop()
        self.frame_timer.stop()
        return self.runner.shutdown(timeout_s)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt's name
        """Shown again after closing: the particles move on (or are made again)."""
        super().showEvent(event)
        if self.fields is None:
            return
        if self.particles is None or self.particles.index != self.index:
            self.particle_timer.start()
        elif self.play_button.isChecked():
            self.frame_timer.start()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt's name
        """Closing the window stops the animation and a running particle job."""
        self.particle_timer.stop()
        self.frame_timer.stop()
        self.runner.cancel()
        super().closeEvent(event)


def describe(record: object) -> JobStatus | None:
    """The status bar's line for a particle run."""
    if isinstance(record, ParticleProgress):
        return JobStatus("2-D field: moving particles…", record.done / record.total)
    if isinstance(record, ParticleRun):
        return JobStatus(f"Particles moved from k = {record.index}", 1.0)
    return None
