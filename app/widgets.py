"""Small widgets and helpers shared by the panels.

pyqtgraph is configured here once (row-major images, light background), so every
module that draws imports this one.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QWidget,
)

import app.qt_compat  # noqa: F401  (before pyqtgraph emits any signal)

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


def spin_box(lo: int, hi: int, value: int, tip: str, step: int = 1, suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    box.setSingleStep(step)
    box.setToolTip(tip)
    box.setKeyboardTracking(False)
    if suffix:
        box.setSuffix(suffix)
    return box


def double_box(
    lo: float, hi: float, value: float, tip: str, decimals: int = 4, step: float = 0.001
) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    box.setKeyboardTracking(False)
    return box


def combo_box(items: list[tuple[str, object]], tip: str) -> QComboBox:
    """A combo box of (label, data) items."""
    box = QComboBox()
    for label, data in items:
        box.addItem(label, data)
    box.setToolTip(tip)
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


def hline() -> QWidget:
    line = QLabel()
    line.setFrameShape(QLabel.Shape.HLine)
    line.setFrameShadow(QLabel.Shadow.Sunken)
    return line
