"""The training dashboard: a run's history in one view.

Shown on the Training panel (its "Dashboard" tab) and in File > Watch Run…. It draws what
`core.run_log` records: the loss curve (with an earlier run's curve overlaid, read from its
checkpoint's compact history), the loss heatmap over t bins and steps (`LossHeatmap`: the
loss-against-t scatter's history), the gradient norm and the learning rate, and the preview
timeline: every preview kept (previews use the same noise each time), a slider to scrub them,
and "Export GIF…" ("watch the model learn", `core.export.save_gif`, written in a worker).

The owner feeds it: `reset(T)` for a new run, `add_step(StepRecord)` after every step (cheap:
an append; while shown, the plots are redrawn by a timer a few times a second), `add_preview(step,
picture)` with `core.run_log.preview_picture`'s uint8 picture.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from diffusion_studio.app import dialogs
from diffusion_studio.app.axes import use_integer_ticks
from diffusion_studio.app.widgets import ImageView, button, plot_widget
from diffusion_studio.app.worker import Job, JobRunner, JobStatus
from diffusion_studio.core.checkpoint import load_checkpoint
from diffusion_studio.core.errors import DiffusionStudioError
from diffusion_studio.core.export import save_gif
from diffusion_studio.core.run_log import T_BINS, LossHeatmap, StepRecord

DASHBOARD_REDRAW_MS = 400  # the dashboard redraws at most 2.5 times a second, when shown
MAX_CURVE_POINTS = 20_000  # curve points kept (evenly thinned beyond): memory stays flat
MAX_PREVIEWS = 300  # previews kept; beyond, every second one goes (the first and last stay)
GIF_FPS = 4.0
HEATMAP_TITLE = "Loss by noise level t"
TIMELINE_TITLE = "Previews (same noise each time)"


class Series:
    """A (step, value) series in numpy arrays (amortised O(1) append), bounded in memory.

    Once it holds `max_points`, every second point is dropped and from then on only every
    `stride`-th appended point is kept (the stride doubles at each thinning): a run of any
    length keeps its whole curve, evenly thinned, in at most `max_points` points.
    """

    def __init__(self, capacity: int = 1024, max_points: int = MAX_CURVE_POINTS) -> None:
        self.max_points = max(2, max_points)
        capacity = min(capacity, self.max_points)
        self.x = np.empty(capacity, dtype=np.float64)
        self.y = np.empty(capacity, dtype=np.float64)
        self.n = 0
        self.stride = 1
        self._appended = 0

    def append(self, x: float, y: float) -> None:
        index = self._appended
        self._appended += 1
        if index % self.stride:
            return
        if self.n == self.max_points:  # full: keep every second point, double the stride
            kept = (self.n + 1) // 2
            self.x[:kept] = self.x[: self.n : 2].copy()
            self.y[:kept] = self.y[: self.n : 2].copy()
            self.n = kept
            self.stride *= 2
            if index % self.stride:
                return
        if self.n == len(self.x):
            size = min(2 * len(self.x), self.max_points)
            self.x = np.concatenate([self.x, np.empty(size - len(self.x))])
            self.y = np.concatenate([self.y, np.empty(size - len(self.y))])
        self.x[self.n] = x
        self.y[self.n] = y
        self.n += 1

    def clear(self) -> None:
        self.n = 0
        self.stride = 1
        self._appended = 0

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x[: self.n], self.y[: self.n]


def log_loss_image(image: np.ndarray) -> np.ndarray:
    """log10 of a LossHeatmap image (bins, columns); NaN where empty or not positive."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(image > 0, np.log10(np.where(image > 0, image, 1.0)), np.nan)


def log_ticks(low: float, high: float) -> list[tuple[float, str]]:
    """Ticks of a colour bar over log10 values low..high, labelled with the values themselves:
    1, 2 and 5 times the powers of ten inside (the two ends when fewer than two are)."""
    ticks = []
    for power in range(int(np.floor(low)), int(np.ceil(high)) + 1):
        for mantissa in (1, 2, 5):
            position = power + np.log10(mantissa)
            if low - 1e-9 <= position <= high + 1e-9:
                ticks.append((float(position), f"{mantissa * 10.0**power:.3g}"))
    if len(ticks) < 2:
        ticks = [(low, f"{10.0**low:.3g}"), (high, f"{10.0**high:.3g}")]
    return ticks


def preview_caption(step: int) -> str:
    """The caption of a preview in the timeline and in the GIF: "step 120"."""
    return f"step {step}"


def t_axis_label(objective: str) -> str:
    """The label of a t axis: diffusion's index t, or flow's t in [0, 1] scaled by T."""
    return "T t (flow matching: t in [0, 1])" if objective == "flow" else "t"


class TrainingDashboard(QWidget):
    """Loss (with an overlay), loss heatmap, gradient norm, learning rate and the preview
    timeline of one run. status_message(str): a line for the owner's status bar."""

    status_message = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.num_timesteps = 1000
        self._heatmap = LossHeatmap(T_BINS)
        self._loss = Series()
        self._grad = Series()
        self._lr = Series()
        self._previews: list[tuple[int, np.ndarray]] = []
        self._overlay: tuple[str, np.ndarray, np.ndarray] | None = None
        self._dirty = False
        self._follow_latest = True  # the timeline shows the newest preview as it arrives
        self.export_runner = JobRunner("dashboard export", self)
        self.export_runner.finished.connect(self._on_export_finished)
        self.export_runner.failed.connect(lambda m: dialogs.show_error(self, "Export GIF", m))
        self.export_runner.ended.connect(self._update_buttons)
        self._export_target: Path | None = None
        self._build()
        self.timer = QTimer(self)
        self.timer.setInterval(DASHBOARD_REDRAW_MS)
        self.timer.timeout.connect(self._on_timer)
        self.reset(self.num_timesteps)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.loss_plot = plot_widget(
            "Training loss", "The loss of every optimizer step (log axis); dashed: a run overlaid"
        )
        self.loss_plot.setLabel("bottom", "training step")
        self.loss_plot.setLabel("left", "loss")
        use_integer_ticks(self.loss_plot)
        self.loss_plot.setLogMode(x=False, y=True)
        self.loss_plot.addLegend(offset=(-10, 10))
        self.loss_curve = self.loss_plot.plot(
            pen=pg.mkPen((31, 119, 180), width=1), name="this run", connect="finite"
        )
        self.overlay_curve = self.loss_plot.plot(
            pen=pg.mkPen((120, 120, 120), width=1, style=Qt.PenStyle.DashLine), connect="finite"
        )

        self.heatmap_plot = plot_widget(
            HEATMAP_TITLE,
            "Each column: a window of training steps; each row: a band of noise levels t\n"
            "(bottom: t near 0, almost clean data; top: t near T, almost pure noise).\n"
            "The colour is the mean loss of the samples drawn there (a log scale: the colour bar "
            "on the right); blank: no sample fell there yet.\nThe loss-against-t scatter's history: "
            "watch which noise levels the model learns first.",
        )
        self.heatmap_plot.showGrid(x=False, y=False)
        self.heatmap_plot.setLabel("bottom", "training step")
        self.heatmap_plot.setLabel("left", "t")  # the title says: noise level t
        use_integer_ticks(self.heatmap_plot)
        self.heatmap_item = pg.ImageItem(axisOrder="row-major")
        self.heatmap_plot.addItem(self.heatmap_item)
        self.color_bar = pg.ColorBarItem(
            values=(-2.0, 0.0),
            colorMap=pg.colormap.get("viridis"),
            interactive=False,
            width=12,
        )
        self.color_bar.setImageItem(self.heatmap_item, insert_in=self.heatmap_plot.getPlotItem())

        self.grad_plot = plot_widget(
            "Gradient norm (before clipping)",
            "The length of the whole gradient at each step, before clipping (log axis).\n"
            "Spikes mean unstable steps; a steady fall, a settling model.",
        )
        self.grad_plot.setLabel("bottom", "training step")
        use_integer_ticks(self.grad_plot)
        self.grad_plot.setLogMode(x=False, y=True)
        self.grad_curve = self.grad_plot.plot(
            pen=pg.mkPen((44, 160, 44), width=1), connect="finite"
        )

        self.lr_plot = plot_widget(
            "Learning rate",
            "The optimizer's step size at each step: warm-up, then the decay schedule",
        )
        self.lr_plot.setLabel("bottom", "training step")
        use_integer_ticks(self.lr_plot)
        self.lr_curve = self.lr_plot.plot(pen=pg.mkPen((214, 39, 40), width=2), connect="finite")
        for curve in (self.loss_curve, self.overlay_curve, self.grad_curve, self.lr_curve):
            curve.setDownsampling(auto=True, method="peak")
            curve.setClipToView(True)
        for plot in (self.loss_plot, self.heatmap_plot, self.grad_plot, self.lr_plot):
            plot.setMinimumSize(160, 110)
            plot.getPlotItem().getAxis("left").enableAutoSIPrefix(False)  # 0.7, not 7·10² m

        self.preview_view = ImageView(TIMELINE_TITLE)
        self.preview_view.setToolTip(
            "Every preview of the run, sampled from the same noise each time: drag the slider "
            "to watch the model learn"
        )
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setToolTip("Scrub through the run's previews, oldest to newest")
        self.slider.valueChanged.connect(self._on_slider)
        self.preview_caption = QLabel("no preview yet")
        self.preview_caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.gif_button = button(
            "Export GIF…", "Save every preview, oldest first, as one GIF: watch the model learn"
        )
        self.gif_button.clicked.connect(self.export_gif)
        self.overlay_button = button(
            "Overlay a run…",
            "Draw an earlier run's loss curve (from its checkpoint) over this one, to compare",
        )
        self.overlay_button.clicked.connect(self.choose_overlay)
        self.clear_overlay_button = button("Clear overlay", "Remove the overlaid run's curve")
        self.clear_overlay_button.clicked.connect(self.clear_overlay)

        timeline = QWidget()
        column = QVBoxLayout(timeline)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.preview_view, 1)
        column.addWidget(self.slider)
        column.addWidget(self.preview_caption)
        column.addWidget(self.gif_button)

        buttons = QHBoxLayout()
        buttons.addWidget(self.overlay_button)
        buttons.addWidget(self.clear_overlay_button)
        buttons.addStretch(1)

        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(self.loss_plot, 0, 0)
        grid.addWidget(self.heatmap_plot, 0, 1)
        grid.addWidget(self.grad_plot, 1, 0)
        grid.addWidget(self.lr_plot, 1, 1)
        grid.addWidget(timeline, 0, 2, 2, 1)
        grid.addLayout(buttons, 2, 0, 1, 3)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 3)
        grid.setColumnStretch(2, 2)
        grid.setRowStretch(0, 3)
        grid.setRowStretch(1, 2)

    # ------------------------------------------------------------------ read-only state

    @property
    def heatmap(self) -> LossHeatmap:
        return self._heatmap

    @property
    def steps(self) -> np.ndarray:
        return self._loss.data()[0].copy()

    @property
    def losses(self) -> np.ndarray:
        return self._loss.data()[1].copy()

    @property
    def grad_norms(self) -> np.ndarray:
        return self._grad.data()[1].copy()

    @property
    def learning_rates(self) -> np.ndarray:
        return self._lr.data()[1].copy()

    @property
    def previews(self) -> list[tuple[int, np.ndarray]]:
        return list(self._previews)

    @property
    def overlay(self) -> tuple[str, np.ndarray, np.ndarray] | None:
        return self._overlay

    @property
    def shown_preview(self) -> int | None:
        """Index in `previews` of the preview the timeline shows (None when there is none)."""
        return self.slider.value() if self._previews else None

    # ------------------------------------------------------------------ feeding

    def reset(self, num_timesteps: int, objective: str = "diffusion") -> None:
        """Forget the run shown (curves, heatmap, previews) for a new run with T timesteps of
        `objective` (a flow run's t axis is T t, t in [0, 1]). The overlay stays: it is the
        user's."""
        self.num_timesteps = int(num_timesteps)
        self.heatmap_plot.setLabel("left", t_axis_label(objective))
        self._heatmap.clear()
        for series in (self._loss, self._grad, self._lr):
            series.clear()
        self._previews.clear()
        self._follow_latest = True
        self.slider.blockSignals(True)
        self.slider.setRange(0, 0)
        self.slider.setValue(0)
        self.slider.blockSignals(False)
        self.preview_view.clear_image()
        self.preview_caption.setText("no preview yet")
        self.redraw_now()
        self._update_buttons()

    def add_step(self, record: StepRecord) -> None:
        """One optimizer step's record (cheap: the timer redraws)."""
        self._heatmap.add(record)
        self._loss.append(record.step, record.loss)
        self._grad.append(record.step, record.grad_norm)
        self._lr.append(record.step, record.lr)
        self._schedule_redraw()

    def add_preview(self, step: int, picture: np.ndarray) -> None:
        """A preview at `step`: a uint8 picture (core.run_log.preview_picture)."""
        self._previews.append((int(step), np.asarray(picture)))
        if len(self._previews) > MAX_PREVIEWS:  # keep the first, every second one, the last
            last = self._previews[-1]
            self._previews = self._previews[:-1:2] + [last]
        self.slider.blockSignals(True)
        self.slider.setRange(0, len(self._previews) - 1)
        if self._follow_latest:
            self.slider.setValue(len(self._previews) - 1)
        self.slider.blockSignals(False)
        self._show_preview(self.slider.value())
        self._update_buttons()

    def set_overlay(self, label: str, steps: np.ndarray, losses: np.ndarray) -> None:
        """Draw an earlier run's loss curve (steps, losses: (n,)) over this one."""
        steps = np.asarray(steps, dtype=np.float64).reshape(-1)
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        if steps.shape != losses.shape:
            raise ValueError(f"{steps.size} steps for {losses.size} losses")
        self._overlay = (label, steps, losses)
        self.overlay_curve.setData(steps, losses)
        self._set_overlay_legend(label)
        self._update_buttons()

    def clear_overlay(self) -> None:
        self._overlay = None
        self.overlay_curve.setData([], [])
        self._set_overlay_legend(None)
        self._update_buttons()

    def _set_overlay_legend(self, label: str | None) -> None:
        legend = self.loss_plot.getPlotItem().legend
        legend.removeItem(self.overlay_curve)
        if label is not None:
            legend.addItem(self.overlay_curve, label)

    # ------------------------------------------------------------------ drawing

    def _schedule_redraw(self) -> None:
        self._dirty = True
        if not self.timer.isActive():
            self.timer.start()

    def _on_timer(self) -> None:
        # Hidden (another tab): no repaint takes CPU from the training; shown, it catches up.
        if self._dirty and self.isVisible():
            self.redraw_now()
        else:
            self.timer.stop()

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt override)
        super().showEvent(event)
        if self._dirty:
            self.redraw_now()

    def redraw_now(self) -> None:
        """Draw the curves and the heatmap from the records so far."""
        self._dirty = False
        self.loss_curve.setData(*self._loss.data())
        self.grad_curve.setData(*self._grad.data())
        self.lr_curve.setData(*self._lr.data())
        self._draw_heatmap()

    def _draw_heatmap(self) -> None:
        image = log_loss_image(self._heatmap.image())
        if image.shape[1] == 0:
            self.heatmap_item.clear()
            return
        self.heatmap_item.setImage(image, autoLevels=False)
        first, end = self._heatmap.step_range()
        self.heatmap_item.setRect(first, 0, end - first, self.num_timesteps)
        finite = image[np.isfinite(image)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            hi = hi if hi > lo else lo + 1e-3
            self.color_bar.setLevels((lo, hi))
            self.color_bar.axis.setTicks([log_ticks(lo, hi)])  # the colours read as loss

    @property
    def heatmap_shown(self) -> np.ndarray | None:
        """The log10 image the heatmap item shows now (bins, columns), None when empty."""
        return self.heatmap_item.image

    def _on_slider(self, index: int) -> None:
        self._follow_latest = index == len(self._previews) - 1
        self._show_preview(index)

    def _show_preview(self, index: int) -> None:
        if not self._previews:
            return
        step, picture = self._previews[index]
        self.preview_view.set_image(picture)
        self.preview_caption.setText(
            f"{preview_caption(step)} (preview {index + 1} of {len(self._previews)})"
        )

    def _update_buttons(self) -> None:
        self.gif_button.setEnabled(bool(self._previews) and not self.export_runner.is_running)
        self.clear_overlay_button.setEnabled(self._overlay is not None)

    # ------------------------------------------------------------------ actions

    def export_gif(self) -> None:
        """Save every kept preview, oldest first, captioned "step N", as one GIF (in a worker)."""
        if not self._previews:
            dialogs.show_error(self, "Export GIF", "No previews yet: train with previews on.")
            return
        path = dialogs.ask_save_path(
            self, "Export the preview timeline", dialogs.GIF_FILTER, "watch-the-model-learn.gif"
        )
        if path is None:
            return
        previews = list(self._previews)  # the worker gets its own list (numpy pictures unchanged)
        pictures = [picture for _, picture in previews]
        captions = [preview_caption(step) for step, _ in previews]
        scale = 2 if max(pictures[0].shape[:2]) < 200 else 1  # small digits grids: legible

        def run() -> Iterator[int]:
            yield save_gif(path, pictures, fps=GIF_FPS, scale=scale, captions=captions)

        self._export_target = path
        self.export_runner.start(
            Job("Export GIF", run, describe=lambda _n: JobStatus("Writing GIF…"))
        )
        self._update_buttons()

    def _on_export_finished(self, _result: object) -> None:
        if self._export_target is not None:
            self.status_message.emit(f"Exported to {self._export_target}")

    def choose_overlay(self) -> None:
        path = dialogs.ask_open_path(
            self, "Overlay an earlier run's loss curve", dialogs.CHECKPOINT_FILTER
        )
        if path is not None:
            self.load_overlay(path)

    def load_overlay(self, path: str | Path) -> bool:
        """Overlay the loss history kept in the checkpoint at `path` (a message when it has
        none). True when overlaid."""
        path = Path(path)
        try:
            ckpt = load_checkpoint(path)
        except DiffusionStudioError as exc:
            dialogs.show_error(self, "Overlay a run", str(exc))
            return False
        steps = ckpt.training_state.get("history/step")
        losses = ckpt.training_state.get("history/loss")
        if steps is None or losses is None or steps.numel() == 0:
            dialogs.show_error(
                self,
                "Overlay a run",
                f"'{path.name}' keeps no loss history: only the checkpoints a training run "
                "saves to resume from do (autosaves, Stop, Save checkpoint as…). Choose one of "
                "those.",
            )
            return False
        self.set_overlay(path.stem, steps.numpy(), losses.float().numpy())
        self.status_message.emit(f"Overlaid the loss curve of {path.name}")
        return True

    def shutdown(self, timeout_s: float) -> bool:
        """Cancel a GIF export and wait; True when it ended."""
        self.timer.stop()
        return self.export_runner.shutdown(timeout_s)
