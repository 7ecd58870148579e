"""Small widgets and helpers shared by the panels.

pyqtgraph is configured here once (row-major images, light background), so every
module that draws imports this one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Union

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QImage, QPixmap, QValidator
from PySide6.QtWidgets import (
    QAbstractSlider,
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLayout,
    QPushButton,
    QScrollArea,
    QScrollBar,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

import diffusion_studio.app.qt_compat  # noqa: F401  (before pyqtgraph emits any signal)
from diffusion_studio.app.icon import ICON_SIZES, app_icon  # noqa: F401  (moved: the window needs it before pyqtgraph)

pg.setConfigOptions(imageAxisOrder="row-major", antialias=True, background="w", foreground="k")

PLOT_COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]

REDRAW_INTERVAL_MS = 33  # ~30 Hz
POINT_EXTENT = 2.5  # 2-D point plots show [-2.5, 2.5]^2

log = logging.getLogger(__name__)


def color(i: int) -> tuple[int, int, int]:
    return PLOT_COLORS[i % len(PLOT_COLORS)]


def format_duration(seconds: float | None) -> str:
    """7 -> '7 s', 125 -> '2:05', 3725 -> '1:02:05'; None or inf -> '–'."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class WheelGuard(QObject):
    """An event filter: a wheel turned over a field that has no keyboard focus scrolls the
    panel (the event goes on to the parent, e.g. the scroll area) instead of changing the
    field's value. Click (or Tab into) a field first to change it with the wheel."""

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if event.type() == QEvent.Type.Wheel and isinstance(obj, QWidget) and not obj.hasFocus():
            event.ignore()  # not accepted: Qt offers the wheel to the parent widgets
            return True  # ... and the field itself never sees it
        return False


_WHEEL_GUARD: WheelGuard | None = None
GUARDED_FIELDS = (QAbstractSpinBox, QComboBox, QAbstractSlider)


def guard_wheel(*widgets: QWidget) -> None:
    """Make the wheel scroll the panel over these fields unless they have focus: strong focus
    (a wheel turn does not focus them) and the WheelGuard filter."""
    global _WHEEL_GUARD
    if _WHEEL_GUARD is None:
        _WHEEL_GUARD = WheelGuard()
    for widget in widgets:
        widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        widget.installEventFilter(_WHEEL_GUARD)


def guard_wheel_in(root: QWidget) -> None:
    """guard_wheel for every spin box, combo box and slider inside `root` (a panel calls it
    once at the end of its set-up)."""
    fields = [
        w
        for w in root.findChildren(QWidget)
        if isinstance(w, GUARDED_FIELDS) and not isinstance(w, QScrollBar)  # bars do scroll
    ]
    guard_wheel(*fields)


class _TypedText:
    """Mixin for spin boxes: text a user types that is not a value of the box (letters, too
    many digits or decimals, out of the typing range) is kept while typing instead of the key
    being swallowed; when the edit ends Qt puts the last value back and `refused_text` holds
    what was typed (emitted as `text_refused`), so a FieldCheck can say why at the field.
    A value set from code or an accepted edit clears it."""

    refused_text = ""

    def _init_typed_text(self) -> None:
        self._pending_refusal = ""
        self.editingFinished.connect(self._on_editing_finished)
        self.valueChanged.connect(self._on_value_changed)

    def validate(self, text: str, pos: int):  # Qt override
        result = super().validate(text, pos)
        state = result[0] if isinstance(result, tuple) else result
        if state == QValidator.State.Invalid:
            return (QValidator.State.Intermediate, text, pos)
        return result

    def fixup(self, text: str):  # Qt override: called with the text Qt is about to replace
        self._pending_refusal = self._strip(text)
        return super().fixup(text)

    def _strip(self, text: str) -> str:
        prefix, suffix = self.prefix(), self.suffix()
        if prefix and text.startswith(prefix):
            text = text[len(prefix) :]
        if suffix and text.endswith(suffix):
            text = text[: -len(suffix)]
        return text.strip()

    def _on_editing_finished(self) -> None:
        refused, self._pending_refusal = self._pending_refusal, ""
        if refused != self.refused_text:
            self.refused_text = refused
            self.text_refused.emit(refused)

    def _on_value_changed(self, _value: object) -> None:
        if self.refused_text:
            self.refused_text = ""
            self.text_refused.emit("")


class SpinBox(_TypedText, QSpinBox):
    """A QSpinBox that reports refused typing (see _TypedText)."""

    text_refused = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self._init_typed_text()


class DoubleSpinBox(_TypedText, QDoubleSpinBox):
    """A QDoubleSpinBox that reports refused typing (see _TypedText)."""

    text_refused = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self._init_typed_text()


def spin_box(lo: int, hi: int, value: int, tip: str, step: int = 1, suffix: str = "") -> SpinBox:
    box = SpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    box.setSingleStep(step)
    box.setToolTip(tip)
    box.setKeyboardTracking(False)
    if suffix:
        box.setSuffix(suffix)
    guard_wheel(box)
    return box


def double_box(
    lo: float, hi: float, value: float, tip: str, decimals: int = 4, step: float = 0.001
) -> DoubleSpinBox:
    box = DoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    box.setKeyboardTracking(False)
    guard_wheel(box)
    return box


def combo_box(items: list[tuple[str, object]], tip: str) -> QComboBox:
    """A combo box of (label, data) items (the wheel changes it only when it has focus)."""
    box = QComboBox()
    for label, data in items:
        box.addItem(label, data)
    box.setToolTip(tip)
    guard_wheel(box)
    return box


def set_combo_data(box: QComboBox, data: object) -> bool:
    index = box.findData(data)
    if index >= 0:
        box.setCurrentIndex(index)
        return True
    return False


def check_box(text: str, tip: str, checked: bool = False) -> QCheckBox:
    box = QCheckBox(text)
    box.setChecked(checked)
    box.setToolTip(tip)
    return box


def button(text: str, tip: str, shortcut: str | None = None) -> QPushButton:
    b = QPushButton(text)
    b.setToolTip(f"{tip} ({shortcut})" if shortcut else tip)
    if shortcut:
        b.setShortcut(shortcut)
    return b


class ErrorLabel(QLabel):
    """A red one-line message under a form (hidden when empty)."""

    def __init__(self) -> None:
        super().__init__()
        self.setWordWrap(True)
        self.setStyleSheet("color: #b00020;")
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hide()

    def show_message(self, text: str) -> None:
        self.setText(text)
        self.setVisible(bool(text))


def to_display(image_chw: np.ndarray) -> np.ndarray:
    """Float (C, H, W) -> (H, W) or (H, W, 3) float view/copy for an ImageItem."""
    if image_chw.shape[0] == 1:
        return image_chw[0]
    return np.ascontiguousarray(np.moveaxis(image_chw, 0, -1))


class ImageView(pg.GraphicsLayoutWidget):
    """One image, aspect locked, y down, fixed levels (float data in [-1, 1] or uint8).

    `image` is the array last shown (what tests read back).
    """

    def __init__(self, title: str = "", levels: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        self.setMinimumSize(120, 120)
        self.levels = levels
        self.view = self.addViewBox(row=0, col=0, lockAspect=True, invertY=True, enableMenu=False)
        self.view.setMouseEnabled(False, False)
        self.item = pg.ImageItem()
        self.view.addItem(self.item)
        self.title_item = self.addLabel(title, row=1, col=0) if title else None
        self.image: np.ndarray | None = None
        self.ci.layout.setContentsMargins(2, 2, 2, 2)

    def set_title(self, text: str) -> None:
        if self.title_item is not None:
            self.title_item.setText(text)

    def set_image(self, image: np.ndarray, levels: tuple[float, float] | None = None) -> None:
        """image: (H, W) or (H, W, 3) float (levels default to the view's) or uint8 (0..255)."""
        first = self.image is None or self.image.shape[:2] != image.shape[:2]
        self.image = image
        if image.dtype == np.uint8:
            self.item.setImage(image, levels=(0, 255), autoLevels=False)
        else:
            self.item.setImage(image, levels=levels or self.levels, autoLevels=False)
        if first:
            self.view.autoRange(padding=0.0)

    def clear_image(self) -> None:
        self.image = None
        self.item.clear()


def pixmap_from_uint8(image: np.ndarray) -> QPixmap:
    """uint8 (H, W) or (H, W, 3) -> QPixmap (copied)."""
    array = np.ascontiguousarray(image)
    h, w = array.shape[:2]
    if array.ndim == 2 or array.shape[2] == 1:
        qimage = QImage(array.data, w, h, w, QImage.Format.Format_Grayscale8)
    else:
        qimage = QImage(array.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(qimage.copy())


class ClickableLabel(QLabel):
    """A QLabel that emits `clicked()` on a left click (filmstrip thumbnails)."""

    clicked = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setSizePolicy(QSizePolicy.Policy.Minimum, QSizePolicy.Policy.Minimum)

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt override)
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit()
        super().mousePressEvent(event)


# ---------------------------------------------------------------------------- panel layout

FormRow = Union[QWidget, QLayout, tuple[Union[str, QWidget], Union[QWidget, QLayout]]]


def form_group(title: str, rows: Sequence[FormRow]) -> QGroupBox:
    """A titled box with a form: each row is a widget or layout spanning the row, or a
    (label text or widget, field widget or layout) pair."""
    box = QGroupBox(title)
    form = QFormLayout(box)
    for row in rows:
        if isinstance(row, tuple):
            form.addRow(*row)
        else:
            form.addRow(row)
    return box


def button_row(*buttons: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for b in buttons:
        row.addWidget(b)
    return row


def control_column(widgets: Iterable[QWidget], min_width: int = 330) -> QScrollArea:
    """The panel's settings: widgets stacked top-down in a vertical scroll area."""
    controls = QWidget()
    column = QVBoxLayout(controls)
    for w in widgets:
        column.addWidget(w)
    column.addStretch(1)
    scroll = QScrollArea()
    scroll.setWidget(controls)
    scroll.setWidgetResizable(True)
    # Never narrower than the controls need: the horizontal scroll bar is off, so a narrower
    # column would cut off the right edge of its fields.
    needed = controls.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width()
    scroll.setMinimumWidth(max(min_width, needed))
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setFrameShape(QScrollArea.Shape.NoFrame)
    return scroll


def pinned_below(settings: QWidget, *rows: QWidget | QLayout) -> QWidget:
    """The settings column (a control_column) with rows under it that never scroll away: the
    panel's primary actions stay on screen however short the window is."""
    column = QWidget()
    layout = QVBoxLayout(column)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(settings, 1)
    for row in rows:
        if isinstance(row, QLayout):
            layout.addLayout(row)
        else:
            layout.addWidget(row)
    column.setMinimumWidth(settings.minimumWidth())
    return column


def controls_beside_views(owner: QWidget, controls: QWidget, views: QWidget) -> QSplitter:
    """Fill `owner` with a splitter: the controls on the left, the views (which get all the
    extra width) on the right."""
    splitter = QSplitter(Qt.Orientation.Horizontal)
    splitter.addWidget(controls)
    splitter.addWidget(views)
    splitter.setStretchFactor(0, 0)
    splitter.setStretchFactor(1, 1)
    splitter.setCollapsible(0, False)
    QHBoxLayout(owner).addWidget(splitter)
    return splitter


class TidyAxis(pg.AxisItem):
    """An axis whose log mode labels the decades first, then 2 and 5 times them, then the
    other values, each level only while there is room (pyqtgraph would label every minor tick
    or none). Linear mode is pyqtgraph's."""

    def logTickValues(self, minVal, maxVal, size, stdTicks):  # noqa: N802, N803 (pyqtgraph)
        ticks = super().logTickValues(minVal, maxVal, size, stdTicks)
        if not ticks or ticks[-1][0] is not None:
            return ticks
        mantissa = {x: round(10 ** (x - math.floor(x + 1e-9)), 6) for x in ticks[-1][1]}
        levels = [
            [x for x, m in mantissa.items() if m == 1.0],
            [x for x, m in mantissa.items() if m in (2.0, 5.0)],
            [x for x, m in mantissa.items() if m not in (1.0, 2.0, 5.0)],
        ]
        return ticks[:-1] + [(None, level) for level in levels if level]

    def __init__(self, orientation: str) -> None:
        super().__init__(orientation)
        # Stop adding tick levels once their labels fill 30 % of the axis (pyqtgraph: 40-80 %).
        self.setStyle(textFillLimits=[(0, 0.8), (2, 0.3)])


def plot_widget(title: str, tip: str = "") -> pg.PlotWidget:
    """A plot with a grid and a TidyAxis on the left (for log axes)."""
    plot = pg.PlotWidget(title=title, axisItems={"left": TidyAxis("left")})
    plot.showGrid(x=True, y=True, alpha=0.25)
    if tip:
        plot.setToolTip(tip)
    return plot


def points_plot(title: str, tip: str) -> pg.PlotWidget:
    """A square plot of 2-D points over [-POINT_EXTENT, POINT_EXTENT]^2."""
    plot = plot_widget(title, tip)
    plot.setAspectLocked(True)
    plot.setRange(xRange=(-POINT_EXTENT, POINT_EXTENT), yRange=(-POINT_EXTENT, POINT_EXTENT))
    return plot


def scatter_item(size: float, rgba: tuple[int, int, int, int]) -> pg.ScatterPlotItem:
    """Borderless round markers of one colour (fast for thousands of points)."""
    return pg.ScatterPlotItem(size=size, pen=None, brush=pg.mkBrush(*rgba))


# ---------------------------------------------------------------------------- field checks

NumberBox = Union[QSpinBox, QDoubleSpinBox]
INT_TYPING_RANGE = (-(2**31), 2**31 - 1)  # what a checked QSpinBox lets a user type
DOUBLE_TYPING_LIMIT = 1e6  # a checked QDoubleSpinBox takes -1e6..1e6
INVALID_STYLE = 'QAbstractSpinBox[invalid="true"] { border: 2px solid #b00020; }'


class FieldCheck(QObject):
    """Refuses bad values at the field, with core's reason.

    A spin box clamps what is typed to its range, silently. Each field added here instead
    takes (nearly) any number typed, and after every change `check` builds the settings the
    way the panel does (e.g. `lambda: panel.build_config()`) so that core's own validation
    (`TrainConfig`, `ScheduleConfig`, `SamplerConfig`, `UNetConfig`, ...) decides; its
    ConfigError message is the reason. A field added with `keep_range=True` also keeps its
    range as a limit of the app's own (for settings core has no rule for, e.g. an export's
    frame rate): a value core accepts but outside that range gets "... is out of range: use
    lo..hi".

    A refused field shows the reason in a red line under it (in its QFormLayout; a field in
    another layout uses `shared_label`, which the panel places near those fields) and in its
    tooltip, and gets the dynamic property invalid=true (a red border); `valid` is False until
    every field is fixed, and `changed` is emitted after every check (the panel enables its
    Start / Sample button from `valid`). Errors no field is to blame for (no folder chosen, no
    model) are left to the panel's Start / Sample path, which reports them as before.

    Text typed into a SpinBox / DoubleSpinBox (the spin_box / double_box helpers) that is no
    value of the field (letters, too many digits or decimals) is not swallowed key by key: Qt
    keeps the last value and the field is refused with "'abc' is not a whole number ..." or
    "... is out of range: use lo..hi; the field kept 7" until a value is typed.

    When the settings are refused, the blame goes to the fields whose own value is refused
    with every other suspect (the field just edited and those already refused) back at its last
    accepted value; reverting is done on the widgets, with their signals blocked, and undone at
    once.
    """

    changed = Signal()

    def __init__(self, parent: QObject, check: Callable[[], object] | None = None) -> None:
        super().__init__(parent)
        self.check = check
        self.fields: list[NumberBox] = []
        self.problems: dict[NumberBox, str] = {}
        self._good: dict[NumberBox, float] = {}
        self._limits: dict[NumberBox, tuple[float, float]] = {}
        self._tips: dict[NumberBox, str] = {}
        self._labels: dict[NumberBox, ErrorLabel] = {}
        self.shared_label = ErrorLabel()  # the reasons of fields outside a QFormLayout
        self.shared_label.setObjectName("field_error")

    # ------------------------------------------------------------ set-up

    def add(self, *fields: NumberBox, keep_range: bool = False) -> None:
        """Check these fields (already placed in their form). keep_range: the field's range
        stays a limit; otherwise core alone decides. A field's minimum stays when it has a
        special value text (e.g. 0 = "never")."""
        for field in fields:
            if keep_range:
                self._limits[field] = (field.minimum(), field.maximum())
            if isinstance(field, QDoubleSpinBox):
                lo, hi = -DOUBLE_TYPING_LIMIT, DOUBLE_TYPING_LIMIT
            else:
                lo, hi = INT_TYPING_RANGE
            if field.specialValueText():
                lo = field.minimum()
            # the typing range would make the box as wide as "-2147483648": it may stay as
            # narrow as its own range needs
            field.setMinimumWidth(field.minimumSizeHint().width())
            field.setRange(lo, hi)
            field.setProperty("invalid", False)
            field.setStyleSheet(INVALID_STYLE)
            self._tips[field] = field.toolTip()
            self._good[field] = field.value()
            self._labels[field] = self._place_label(field) or self.shared_label
            self.fields.append(field)
            field.valueChanged.connect(lambda _value, f=field: self.recheck(f))
            refused = getattr(field, "text_refused", None)
            if refused is not None:  # SpinBox / DoubleSpinBox: typed text that is no value
                refused.connect(lambda _text, f=field: self.recheck(f))

    def set_range(self, field: NumberBox, lo: float, hi: float) -> None:
        """Change the limit of a field added with keep_range (e.g. the stored frames) and
        check again."""
        self._limits[field] = (lo, hi)
        self.recheck()

    def watch(self, *signals) -> None:
        """Check again when one of these signals fires (inputs that are not number fields,
        such as combo boxes, may make a field's value valid or invalid)."""
        for signal in signals:
            signal.connect(lambda *_args: self.recheck())

    @staticmethod
    def _place_label(field: NumberBox) -> ErrorLabel | None:
        """A red line in the row under `field` when it sits in a QFormLayout, else None."""
        parent = field.parentWidget()
        form = parent.layout() if parent is not None else None
        if isinstance(form, QFormLayout):
            row, _role = form.getWidgetPosition(field)
            if row >= 0:
                label = ErrorLabel()
                label.setObjectName("field_error")
                form.insertRow(row + 1, label)
                form.setRowVisible(label, False)
                return label
        return None

    # ------------------------------------------------------------ state

    @property
    def valid(self) -> bool:
        return not self.problems

    def problem(self, field: NumberBox) -> str:
        """The reason `field` is refused ("" when it is not)."""
        return self.problems.get(field, "")

    def first_problem(self) -> str:
        """The first refused field's reason ("" when none), in the order of `fields`."""
        return next((self.problems[f] for f in self.fields if f in self.problems), "")

    def label(self, field: NumberBox) -> ErrorLabel:
        return self._labels[field]

    # ------------------------------------------------------------ checking

    def recheck(self, edited: NumberBox | None = None) -> None:
        """Check the settings after `edited` changed (None: after some other input did)."""
        suspects = [f for f in self.fields if f in self.problems or f is edited]
        problems: dict[NumberBox, str] = {}
        error = self._error()
        if error is not None and suspects:
            with self._values({f: self._good[f] for f in suspects}):
                baseline_ok = self._error() is None
            if baseline_ok:
                for field in suspects:
                    others = {f: self._good[f] for f in suspects if f is not field}
                    with self._values(others):
                        own = self._error()
                    if own is not None:
                        problems[field] = own
                if len(problems) == 1:  # the message about every current value
                    problems = {next(iter(problems)): error}
                elif not problems:  # only together are they refused
                    problems = {f: error for f in ([edited] if edited is not None else suspects)}
        for field in self.fields:
            if field not in problems:
                limit = self._limit_message(field)
                if limit:
                    problems[field] = limit
        for field in self.fields:  # typed text that never became the value: said first
            typed = self._typing_message(field)
            if typed:
                problems[field] = typed
        for field in self.fields:
            if field not in problems:
                self._good[field] = field.value()
        self.problems = problems
        for field in self.fields:
            self._show(field, problems.get(field, ""))
        shared = [
            f"{f.accessibleName()}: {problems[f]}" if f.accessibleName() else problems[f]
            for f in self.fields
            if self._labels[f] is self.shared_label and f in problems
        ]
        self.shared_label.show_message("\n".join(shared))
        self.changed.emit()

    def _error(self) -> str | None:
        if self.check is None:
            return None
        from diffusion_studio.core.errors import DiffusionStudioError

        try:
            self.check()
        except (DiffusionStudioError, TypeError, ValueError) as exc:
            return str(exc)
        return None

    def _limit_message(self, field: NumberBox) -> str:
        if field not in self._limits or not field.isEnabled():
            return ""
        lo, hi = self._limits[field]
        value = field.value()
        if lo <= value <= hi:
            return ""
        suffix = field.suffix()
        return (
            f"{field.textFromValue(value)}{suffix} is out of range: use "
            f"{field.textFromValue(lo)}..{field.textFromValue(hi)}{suffix}"
        )

    def _typing_message(self, field: NumberBox) -> str:
        """Why the text last typed into `field` was not taken ("" when it was)."""
        text = getattr(field, "refused_text", "")
        if not text or not field.isEnabled():
            return ""
        suffix = field.suffix()
        is_int = isinstance(field, QSpinBox)
        lo, hi = self._limits.get(field, (field.minimum(), field.maximum()))
        use = f"use {field.textFromValue(lo)}..{field.textFromValue(hi)}{suffix}"
        try:
            value = int(text) if is_int else float(text)
        except ValueError:
            kind = "a whole number" if is_int else "a number"
            hint = use if field in self._limits else f"type {kind}"
            return f"'{text}' is not {kind}: {hint}; the field kept {field.text()}"
        if not (field.minimum() <= value <= field.maximum()) or not (lo <= value <= hi):
            return f"{text}{suffix} is out of range: {use}; the field kept {field.text()}"
        decimals = field.decimals() if isinstance(field, QDoubleSpinBox) else 0
        return (
            f"{text} has more than {decimals} decimal{'s' if decimals != 1 else ''}; "
            f"the field kept {field.text()}"
        )

    @contextmanager
    def _values(self, values: Mapping[NumberBox, float]) -> Iterator[None]:
        """Hold `values` in the fields (signals blocked) for the duration, then put back."""
        saved = {f: f.value() for f in values}
        blocked = {f: f.blockSignals(True) for f in values}
        try:
            for field, value in values.items():
                field.setValue(value)
            yield
        finally:
            for field, value in saved.items():
                field.setValue(value)
                field.blockSignals(blocked[field])

    def _show(self, field: NumberBox, message: str) -> None:
        invalid = bool(message)
        if bool(field.property("invalid")) != invalid:
            field.setProperty("invalid", invalid)
            field.style().unpolish(field)
            field.style().polish(field)
            field.update()
        tip = self._tips[field]
        field.setToolTip(f"{tip}\n\nRefused: {message}" if invalid else tip)
        label = self._labels[field]
        if label is self.shared_label:
            return  # recheck fills it with every such field's reason
        label.show_message(message)
        form = label.parentWidget().layout() if label.parentWidget() is not None else None
        if isinstance(form, QFormLayout) and form.indexOf(label) >= 0:
            form.setRowVisible(label, invalid)


# ---------------------------------------------------------------------------- settings

Persistent = Union[QSpinBox, QDoubleSpinBox, QComboBox, QCheckBox, QAbstractSlider]


def widget_values(widgets: Mapping[str, Persistent]) -> dict[str, object]:
    """name -> the value a user set in each widget (combo boxes: their item data)."""
    values: dict[str, object] = {}
    for name, w in widgets.items():
        if isinstance(w, QComboBox):
            values[name] = w.currentData()
        elif isinstance(w, QCheckBox):
            values[name] = w.isChecked()
        else:
            values[name] = w.value()
    return values


def set_widget_values(widgets: Mapping[str, Persistent], values: object) -> None:
    """Put saved `values` back, in the order of `widgets`; values of the wrong type or
    unknown combo items (a damaged or old settings file) are skipped."""
    if not isinstance(values, dict):
        return
    for name, w in widgets.items():
        value = values.get(name)
        if value is None:
            continue
        if isinstance(w, QComboBox):
            set_combo_data(w, value)
        elif isinstance(w, QCheckBox):
            if isinstance(value, bool):
                w.setChecked(value)
        elif isinstance(w, QDoubleSpinBox):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                w.setValue(float(value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            w.setValue(int(value))
