"""Schedules panel: beta_t and what follows from it, for one or several schedules.

The hover readout (every curve's value at the t under the mouse) sits in a scroll area of
bounded height below the plots, so a long comparison never squeezes them; Export CSV writes
the whole comparison (core.schedule_table).

"Show flow matching" draws the rectified-flow path (core.flow.FlowPath on the current T,
x_t = (1 - t) x_0 + t eps at t = (k + 1) / T for index k) beside the schedules: its signal
weight 1 - t on the sqrt(alphabar_t) plot, its noise weight t on the sqrt(1 - alphabar_t) plot
and its log-SNR 2 log((1 - t) / t) on the log-SNR plot. It has no beta_t and no alphabar_t, and
those two plots say so instead of drawing anything."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from pyqtgraph import exporters
from PySide6.QtCore import QRectF, QSettings, Qt, Signal
from PySide6.QtGui import QPainter
from PySide6.QtSvg import QSvgGenerator
from PySide6.QtWidgets import (
    QFrame,
    QGroupBox,
    QLabel,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from diffusion_studio.app import dialogs
from diffusion_studio.app.axes import IntegerAxis
from diffusion_studio.app.panels.base import Panel
from diffusion_studio.app.settings import read_json, write_json
from diffusion_studio.app.widgets import (
    ErrorLabel,
    FieldCheck,
    Persistent,
    button,
    check_box,
    color,
    combo_box,
    control_column,
    controls_beside_views,
    double_box,
    form_group,
    set_combo_data,
    spin_box,
)
from diffusion_studio.core.errors import DiffusionStudioError
from diffusion_studio.core.flow import FlowPath, ForwardPath
from diffusion_studio.core.schedule import (
    MAX_TIMESTEPS,
    SCHEDULE_KINDS,
    NoiseSchedule,
    ScheduleConfig,
)
from diffusion_studio.core.schedule_table import save_schedule_csv

KIND_TIPS = {
    "linear": "beta_t rises linearly from beta_start to beta_end (DDPM, Ho et al. 2020)",
    "scaled_linear": "sqrt(beta_t) rises linearly (Stable Diffusion)",
    "cosine": "alphabar_t = cos^2(((t/T + s)/(1 + s)) pi/2) (Nichol & Dhariwal 2021); ignores the beta range",
    "sigmoid": "beta_t follows a sigmoid between beta_start and beta_end (GeoDiff)",
}

# (table key, plot title, y-axis label, tooltip)
CURVES: list[tuple[str, str, str]] = [
    ("beta", "beta_t", "beta_t: the variance of the noise added at step t"),
    (
        "alpha_bar",
        "alphabar_t = prod alpha_s",
        "alphabar_t = prod_{s<=t} (1 - beta_s), a cumulative product: the signal variance left at t",
    ),
    ("sqrt_alpha_bar", "sqrt(alphabar_t)", "sqrt(alphabar_t): the weight of x_0 in x_t"),
    (
        "sqrt_one_minus_alpha_bar",
        "sqrt(1 - alphabar_t)",
        "sqrt(1 - alphabar_t): the weight of the noise eps in x_t",
    ),
    ("log_snr", "log SNR_t", "log SNR_t = log(alphabar_t / (1 - alphabar_t))"),
]


AXIS_WIDTH = 56  # pixels for every plot's y axis
# the readout's compact column heads
READOUT_HEADERS = {
    "beta": "beta_t",
    "alpha_bar": "alphabar_t",
    "sqrt_alpha_bar": "sqrt(alphabar_t)",
    "sqrt_one_minus_alpha_bar": "sqrt(1 - alphabar_t)",
    "log_snr": "log SNR_t",
}
READOUT_HINT = "Move the mouse over a plot to read every curve's value at that t."
MIN_PLOTS_HEIGHT = 360  # the five plots never get less (the readout scrolls instead)
READOUT_MAX_HEIGHT = 110  # the hover readout: five rows, then it scrolls
CSV_TIP = (
    "Save every schedule on the plots (the current one and the kept ones) as one CSV table:\n"
    "a t column, then beta, alpha_bar, sqrt_alpha_bar, sqrt_one_minus_alpha_bar and log_snr\n"
    "for each schedule (with the schedule's name in front when there are several, e.g.\n"
    "linear_beta, ..., cosine_beta), and with flow matching shown, flow_time, flow_signal,\n"
    "flow_noise and flow_log_snr (flow has no beta or alpha_bar). A cell with no finite\n"
    "value is empty: log_snr where\n"
    "SNR = 0 (-inf; the last t of a zero-terminal-SNR schedule) and the rows past a shorter\n"
    "schedule's last t."
)
COSINE_NOTE = "cosine sets alphabar_t directly: no beta range"
FLOW_LABEL = "flow matching (rectified)"
FLOW_TIP = (
    "Draw the flow-matching path beside the schedules, on the same T grid\n"
    "(t = (k + 1) / T at index k): x_t = (1 - t) x_0 + t eps (rectified flow, Liu et al. 2022).\n"
    "Its signal weight 1 - t sits on the sqrt(alphabar_t) plot, its noise weight t on the\n"
    "sqrt(1 - alphabar_t) plot, and log SNR = 2 log((1 - t) / t) on the log-SNR plot.\n"
    "Flow matching has no beta_t and no alphabar_t: those plots say so."
)
# The flow path's curve on each plot: table key of the plot -> FlowPath.table() key
FLOW_CURVES = {
    "sqrt_alpha_bar": "signal",
    "sqrt_one_minus_alpha_bar": "noise",
    "log_snr": "log_snr",
}
# What each plot's title adds while the flow path is shown: the flow curve it carries, or that
# flow matching has no such curve
FLOW_TITLES = {
    "beta": "flow matching has no beta_t",
    "alpha_bar": "flow matching has no alphabar_t",
    "sqrt_alpha_bar": "flow: 1 - t",
    "sqrt_one_minus_alpha_bar": "flow: t",
    "log_snr": "flow: 2 log((1 - t) / t)",
}
FLOW_PEN_COLOR = (200, 30, 120)


@dataclass(frozen=True)
class ShownSchedule:
    """A schedule on the plots: its config, its curves and a label."""

    label: str
    config: ScheduleConfig
    table: dict[str, np.ndarray]


def describe(config: ScheduleConfig) -> str:
    text = f"{config.kind}, T={config.num_timesteps}"
    if config.kind != "cosine":
        text += f", beta {config.beta_start:g}..{config.beta_end:g}"
    if config.zero_terminal_snr:
        text += ", zero-SNR"
    return text


def plot_values(values: np.ndarray) -> np.ndarray:
    """Non-finite values (log SNR = -inf at zero terminal SNR) become NaN gaps."""
    out = np.asarray(values, dtype=np.float64).copy()
    out[~np.isfinite(out)] = np.nan
    return out


class SchedulesPanel(Panel):
    """Pick a schedule; see beta_t, alphabar_t, sqrt(alphabar_t), sqrt(1-alphabar_t), log-SNR."""

    title = "Schedules"
    schedule_changed = Signal(object)  # ScheduleConfig of the current schedule

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.schedule = NoiseSchedule(ScheduleConfig())
        self.comparison: list[ShownSchedule] = []
        self.hover_t: int | None = None
        self._build()
        self._apply()

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        self.kind = combo_box(
            [(k, k) for k in SCHEDULE_KINDS],
            "How beta_t grows with t:\n" + "\n".join(f"{k}: {v}" for k, v in KIND_TIPS.items()),
        )
        self.steps = spin_box(
            2, MAX_TIMESTEPS, 1000, "T: the number of diffusion steps (timesteps 0..T-1)", step=50
        )
        self.beta_start = double_box(
            1e-6, 0.5, 1e-4, "beta_start: beta at t = 0 (in (0, 1))", decimals=6, step=1e-4
        )
        self.beta_end = double_box(
            1e-6, 0.999, 0.02, "beta_end: beta at t = T-1 (in (0, 1), >= beta_start)", 5, 1e-3
        )
        self.zero_snr = check_box(
            "Zero terminal SNR",
            "Rescale so that alphabar_{T-1} = 0: the last step is pure noise (Lin et al. 2024)",
        )
        self.log_beta = check_box("Log axis for beta", "Show beta_t on a logarithmic axis", True)
        self.show_flow = check_box(f"Show {FLOW_LABEL}", FLOW_TIP)
        self.range_note = QLabel(COSINE_NOTE)
        self.range_note.setWordWrap(True)
        self.range_note.setToolTip(KIND_TIPS["cosine"])
        self.error = ErrorLabel()
        self.add_button = button(
            "Add to comparison", "Keep the current schedule on the plots to compare with others"
        )
        self.clear_button = button("Clear comparison", "Remove the kept schedules from the plots")
        self.csv_button = button("Export CSV…", CSV_TIP)
        self.plot_button = button("Export plot…", "Save the plots as a PNG or SVG picture")

        self.schedule_box = box = form_group(
            "Schedule",
            [
                ("Kind", self.kind),
                ("Steps T", self.steps),
                ("beta_start", self.beta_start),
                ("beta_end", self.beta_end),
                self.range_note,
                self.zero_snr,
                self.log_beta,
            ],
        )

        formulas = QLabel(
            "alpha_t = 1 - beta_t<br>"
            "alphabar_t = prod<sub>s&le;t</sub> alpha_s<br>"
            "&nbsp;&nbsp;&nbsp;&nbsp;(a cumulative product)<br>"
            "x_t = sqrt(alphabar_t) x_0<br>"
            "&nbsp;&nbsp;&nbsp;&nbsp;+ sqrt(1 - alphabar_t) eps<br>"
            "SNR_t = alphabar_t / (1 - alphabar_t)"
        )
        formulas.setToolTip("The DDPM forward process (Ho et al. 2020, eq. 4)")
        # shown with the flow path: its forward process beside DDPM's
        self.flow_formulas = QLabel(
            "flow matching:<br>"
            "x_t = (1 - t) x_0 + t eps<br>"
            "SNR_t = (1 - t)<sup>2</sup> / t<sup>2</sup>, t = (k + 1) / T"
        )
        self.flow_formulas.setToolTip(FLOW_TIP)
        self.flow_formulas.setVisible(False)

        compare = QGroupBox("Compare and export")
        compare_layout = QVBoxLayout(compare)
        compare_layout.addWidget(self.show_flow)
        for b in (self.add_button, self.clear_button, self.csv_button, self.plot_button):
            compare_layout.addWidget(b)

        controls = control_column((box, self.error, compare, formulas, self.flow_formulas), 250)

        self.plots = pg.GraphicsLayoutWidget()
        self.plot_items: dict[str, pg.PlotItem] = {}
        self.crosshairs: dict[str, pg.InfiniteLine] = {}
        for i, (key, title, tip) in enumerate(CURVES):
            plot = self.plots.addPlot(
                row=i // 2, col=i % 2, title=title, axisItems={"bottom": IntegerAxis("bottom")}
            )
            plot.showGrid(x=True, y=True, alpha=0.25)
            plot.setLabel("bottom", "t")
            plot.setMenuEnabled(False)
            plot.setToolTip(tip)
            plot.setDefaultPadding(0.02)
            plot.getAxis("left").setWidth(AXIS_WIDTH)  # equal widths keep the x-linked t aligned
            if self.plot_items:
                plot.setXLink(self.plot_items["beta"])
            line = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen((120, 120, 120), width=1))
            line.setVisible(False)
            plot.addItem(line, ignoreBounds=True)
            self.plot_items[key] = plot
            self.crosshairs[key] = line
        # The legend fills the sixth cell of the 3 x 2 grid.
        legend_box = self.plots.addViewBox(row=2, col=1, enableMenu=False)
        legend_box.setMouseEnabled(False, False)
        self.legend = pg.LegendItem(offset=(10, 5), labelTextSize="9pt", verSpacing=-4)
        self.legend.setParentItem(legend_box)
        self.readout = QLabel()
        self.readout.setTextFormat(Qt.TextFormat.RichText)
        self.readout.setToolTip("Every curve's value at the t under the mouse")
        self.readout.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.readout.setText(READOUT_HINT)
        self.plots.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.plots.setMinimumHeight(MIN_PLOTS_HEIGHT)
        # The readout grows a row per kept schedule: past READOUT_MAX_HEIGHT it scrolls, and
        # the plots keep their room.
        self.readout_area = QScrollArea()
        self.readout_area.setWidget(self.readout)
        self.readout_area.setWidgetResizable(True)
        self.readout_area.setFrameShape(QFrame.Shape.NoFrame)
        self.readout_area.setFixedHeight(60)

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.plots, 1)
        right_layout.addWidget(self.readout_area)

        self.splitter = controls_beside_views(self, controls, right)

        self.curves: dict[str, pg.PlotDataItem] = {}
        self._comparison_items: list[pg.PlotDataItem] = []
        # the flow path's curves (on FLOW_CURVES' plots)
        self.flow_path: FlowPath | None = None
        self.flow_curves: dict[str, pg.PlotDataItem] = {}
        flow_pen = pg.mkPen(FLOW_PEN_COLOR, width=2, style=Qt.PenStyle.DotLine)
        for key in FLOW_CURVES:
            item = self.plot_items[key].plot([], [], pen=flow_pen, name=FLOW_LABEL)
            item.setVisible(False)
            self.flow_curves[key] = item

        # T and the beta range are refused at the field with ScheduleConfig's reason.
        self.fields = FieldCheck(self, self.config_from_fields)
        self.fields.add(self.steps, self.beta_start, self.beta_end)
        self.fields.watch(self.kind.currentIndexChanged, self.zero_snr.toggled)
        self.fields.changed.connect(self._update_buttons)

        self.kind.currentIndexChanged.connect(self._apply)
        self.steps.valueChanged.connect(self._apply)
        self.beta_start.valueChanged.connect(self._apply)
        self.beta_end.valueChanged.connect(self._apply)
        self.zero_snr.toggled.connect(self._apply)
        self.log_beta.toggled.connect(self._on_log_beta)
        self.show_flow.toggled.connect(self._redraw_flow)
        self.add_button.clicked.connect(self.add_to_comparison)
        self.clear_button.clicked.connect(self.clear_comparison)
        self.csv_button.clicked.connect(self.export_csv)
        self.plot_button.clicked.connect(self.export_plot)
        self._on_log_beta(self.log_beta.isChecked())

    # ------------------------------------------------------------------ state

    def config_from_fields(self) -> ScheduleConfig:
        """The ScheduleConfig the fields describe (ConfigError when they make no sense)."""
        return ScheduleConfig(
            kind=self.kind.currentData(),
            num_timesteps=self.steps.value(),
            beta_start=self.beta_start.value(),
            beta_end=self.beta_end.value(),
            zero_terminal_snr=self.zero_snr.isChecked(),
        )

    def set_config(self, config: ScheduleConfig) -> None:
        """Show `config` in the fields (and on the plots)."""
        widgets = (self.kind, self.steps, self.beta_start, self.beta_end, self.zero_snr)
        for w in widgets:
            w.blockSignals(True)
        set_combo_data(self.kind, config.kind)
        self.steps.setValue(config.num_timesteps)
        self.beta_start.setValue(config.beta_start)
        self.beta_end.setValue(config.beta_end)
        self.zero_snr.setChecked(config.zero_terminal_snr)
        for w in widgets:
            w.blockSignals(False)
        self._apply()
        self.fields.recheck()

    def _update_buttons(self) -> None:
        """Only a schedule the fields describe can be added to the comparison."""
        self.add_button.setEnabled(self.fields.valid)

    def _apply(self) -> None:
        # cosine has no beta range: its rows give way to a line that says so (not frozen)
        uses_range = self.kind.currentData() != "cosine"
        form = self.schedule_box.layout()
        form.setRowVisible(self.beta_start, uses_range)
        form.setRowVisible(self.beta_end, uses_range)
        form.setRowVisible(self.range_note, not uses_range)
        try:
            schedule = NoiseSchedule(self.config_from_fields())
        except DiffusionStudioError as exc:
            self.error.show_message(f"{exc}. The plots still show the last valid schedule.")
            return
        self.error.show_message("")
        self.schedule = schedule
        self._redraw()
        self.schedule_changed.emit(schedule.config)

    def _redraw(self) -> None:
        table = self.schedule.table()
        t = table["t"].astype(np.float64)
        pen = pg.mkPen(color(0), width=2)
        name = f"current: {describe(self.schedule.config)}"
        for key, _, _ in CURVES:
            values = plot_values(table[key])
            curve = self.curves.get(key)
            if curve is None:
                curve = self.plot_items[key].plot(t, values, pen=pen, name=name, connect="finite")
                self.curves[key] = curve
            else:
                curve.setData(t, values, connect="finite")
                curve.opts["name"] = name
        self._redraw_flow()
        if self.hover_t is not None:  # the crosshair and readout stay inside the new T
            self.set_hover_t(min(self.hover_t, self.schedule.num_timesteps - 1))

    def _redraw_flow(self) -> None:
        """Show (on the current T) or hide the flow path's curves and the titles' notes."""
        on = self.show_flow.isChecked()
        self.flow_path = FlowPath(self.schedule.num_timesteps) if on else None
        if self.flow_path is not None:
            table = self.flow_path.table()
            k = np.arange(self.flow_path.num_timesteps, dtype=np.float64)  # index k: t = (k+1)/T
            for key, flow_key in FLOW_CURVES.items():
                self.flow_curves[key].setData(k, plot_values(table[flow_key]), connect="finite")
        for item in self.flow_curves.values():
            item.setVisible(on)
        self.flow_formulas.setVisible(on)
        for key, title, _ in CURVES:
            self.plot_items[key].setTitle(f"{title}   ({FLOW_TITLES[key]})" if on else title)
        self._refresh_legend()
        if self.hover_t is not None:
            self._show_readout(self.hover_t)

    def flow_label(self) -> str:
        return f"{FLOW_LABEL}, T={self.schedule.num_timesteps}"

    def _refresh_legend(self) -> None:
        self.legend.clear()
        self.legend.addItem(self.curves["log_snr"], self.curves["log_snr"].opts["name"])
        last = len(CURVES) - 1  # the log-SNR item of each kept schedule
        for shown, item in zip(self.comparison, self._comparison_items[last :: len(CURVES)]):
            self.legend.addItem(item, shown.label)
        if self.flow_path is not None:
            self.legend.addItem(self.flow_curves["log_snr"], self.flow_label())

    def _on_log_beta(self, on: bool) -> None:
        self.plot_items["beta"].setLogMode(x=False, y=on)

    # ------------------------------------------------------------------ comparison

    def add_to_comparison(self) -> None:
        """Keep the current schedule on the plots (dashed, in its own colour)."""
        config = self.schedule.config
        if any(s.config == config for s in self.comparison):
            self.status_message.emit("This schedule is already in the comparison.")
            return
        shown = ShownSchedule(describe(config), config, self.schedule.table())
        self.comparison.append(shown)
        pen = pg.mkPen(color(len(self.comparison)), width=1.5, style=Qt.PenStyle.DashLine)
        t = shown.table["t"].astype(np.float64)
        for key, _, _ in CURVES:
            item = self.plot_items[key].plot(
                t, plot_values(shown.table[key]), pen=pen, name=shown.label, connect="finite"
            )
            self._comparison_items.append(item)
        self._refresh_legend()
        self.status_message.emit(f"Added {shown.label} to the comparison.")

    def clear_comparison(self) -> None:
        for item in self._comparison_items:
            view = item.getViewBox()
            if view is not None:
                view.removeItem(item)
        self._comparison_items.clear()
        self.comparison.clear()
        self._refresh_legend()

    # ------------------------------------------------------------------ crosshair

    def _on_mouse_moved(self, pos) -> None:
        for plot in self.plot_items.values():
            if plot.sceneBoundingRect().contains(pos):
                x = plot.vb.mapSceneToView(pos).x()
                t = int(round(x))
                if 0 <= t < self.schedule.num_timesteps:
                    self.set_hover_t(t)
                return

    def set_hover_t(self, t: int) -> None:
        """Move the crosshair to timestep t and show every value there."""
        self.hover_t = t
        for line in self.crosshairs.values():
            line.setPos(t)
            line.setVisible(True)
        self._show_readout(t)

    def _show_readout(self, t: int) -> None:
        header = "".join(f"<th>{html.escape(READOUT_HEADERS[key])}</th>" for key, _, _ in CURVES)
        rows = [("current", self.schedule.table())] + [(s.label, s.table) for s in self.comparison]
        body = ""
        for i, (label, table) in enumerate(rows):
            if t >= len(table["t"]):
                continue
            r, g, b = color(i)
            cells = "".join(f"<td>{table[key][t]:.5g}</td>" for key, _, _ in CURVES)
            body += f"<tr><td style='color: rgb({r},{g},{b})'>{label}</td>{cells}</tr>"
        if self.flow_path is not None and t < self.flow_path.num_timesteps:
            flow = self.flow_path.table()
            r, g, b = FLOW_PEN_COLOR
            cells = "".join(
                f"<td>{flow[FLOW_CURVES[key]][t]:.5g}</td>" if key in FLOW_CURVES else "<td>–</td>"
                for key, _, _ in CURVES
            )
            label = html.escape(f"flow, t = {flow['t'][t]:.4g}")
            body += f"<tr><td style='color: rgb({r},{g},{b})'>{label}</td>{cells}</tr>"
        self.readout.setText(
            f"<table cellspacing='3'><tr><th align='left'>t = {t}</th>{header}</tr>{body}</table>"
        )
        # as tall as its rows, at most READOUT_MAX_HEIGHT (then it scrolls)
        needed = self.readout.sizeHint().height() + 2
        self.readout_area.setFixedHeight(min(max(needed, 60), READOUT_MAX_HEIGHT))

    # ------------------------------------------------------------------ export

    def shown_schedules(self) -> list[ForwardPath]:
        """Every path on the plots, once each: the current schedule, the kept ones, then the
        flow path when it is shown."""
        configs = [self.schedule.config]
        configs += [s.config for s in self.comparison if s.config != self.schedule.config]
        paths: list[ForwardPath] = [self.schedule] + [NoiseSchedule(c) for c in configs[1:]]
        if self.flow_path is not None:
            paths.append(self.flow_path)
        return paths

    def export_csv(self) -> None:
        """Write the whole comparison as one CSV table (core.schedule_table)."""
        schedules = self.shown_schedules()
        name = "schedule.csv" if len(schedules) == 1 else "schedules.csv"
        path = dialogs.ask_save_path(
            self, "Export schedules as CSV", dialogs.CSV_FILTER, self.suggest(name)
        )
        if path is None:
            return
        try:
            save_schedule_csv(path, schedules)
        except DiffusionStudioError as exc:
            self.report_error("Export CSV", str(exc))
            return
        self.file_used.emit(str(path))
        what = "schedule's curves" if len(schedules) == 1 else f"{len(schedules)} schedules' curves"
        self.status_message.emit(f"Saved the {what} to {path}")

    def export_plot(self) -> None:
        path = dialogs.ask_save_path(
            self, "Export plot", dialogs.PLOT_FILTER, self.suggest("schedule.png")
        )
        if path is None:
            return
        try:
            export_layout(self.plots, str(path))
        except (OSError, ValueError) as exc:
            self.report_error("Export plot", f"cannot write '{path}': {exc}")
            return
        self.status_message.emit(f"Saved the plots to {path}")

    # ------------------------------------------------------------------ settings

    def persistent_widgets(self) -> dict[str, Persistent]:
        return {"log_beta": self.log_beta, "show_flow": self.show_flow}

    def save_state(self, settings: QSettings) -> None:
        super().save_state(settings)
        write_json(settings, f"{self.key()}/config", self.schedule.config.to_dict())

    def restore_state(self, settings: QSettings) -> None:
        super().restore_state(settings)
        data = read_json(settings, f"{self.key()}/config", None)
        if isinstance(data, dict):
            try:
                self.set_config(ScheduleConfig.from_dict(data))
            except (DiffusionStudioError, TypeError):
                pass


def export_layout(widget: pg.GraphicsLayoutWidget, path: str) -> None:
    """Save a whole pyqtgraph layout as PNG (2x resolution) or SVG, by suffix."""
    if path.lower().endswith(".svg"):
        # pyqtgraph's SVGExporter cannot parse the paths Qt 6.8+ writes; render with Qt's own
        # SVG generator instead (vector output, same look as the window).
        generator = QSvgGenerator()
        generator.setFileName(path)
        size = widget.size()
        generator.setSize(size)
        generator.setViewBox(QRectF(0, 0, size.width(), size.height()))
        generator.setTitle("Diffusion Studio plot")
        painter = QPainter(generator)
        try:
            widget.render(painter)
        finally:
            painter.end()
        if not Path(path).is_file():
            raise OSError("the picture could not be written (check the folder and the file name)")
        return
    exporter = exporters.ImageExporter(widget.ci)
    width = int(max(widget.width(), 400) * 2)
    exporter.parameters()["width"] = width
    exporter.export(path)
    if not Path(path).is_file():
        raise OSError("the picture could not be written (check the folder and the file name)")
