"""Every dialog the app shows goes through these few functions.

Panels call them as `dialogs.ask_save_path(...)` (through the module, never a copied
name), so tests replace them with `monkeypatch.setattr(dialogs, "ask_save_path", ...)`
and inject the user's choice without a modal window.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.gif *.tif *.tiff *.webp);;All files (*)"
CHECKPOINT_FILTER = (
    "Checkpoints (*.safetensors *.pt *.pth *.ckpt *.bin);;"
    "diffusers model (config.json model_index.json);;All files (*)"
)
CHECKPOINT_SAVE_FILTER = "Checkpoints (*.safetensors)"
GIF_FILTER = "GIF animation (*.gif)"
CSV_FILTER = "CSV table (*.csv)"
PLOT_FILTER = "PNG image (*.png);;SVG drawing (*.svg)"


def ask_open_path(parent: QWidget | None, title: str, filter: str, start: str = "") -> Path | None:
    """A file the user picked to open, or None when cancelled."""
    name, _ = QFileDialog.getOpenFileName(parent, title, start, filter)
    return Path(name) if name else None


def ask_folder(parent: QWidget | None, title: str, start: str = "") -> Path | None:
    """A folder the user picked, or None when cancelled."""
    name = QFileDialog.getExistingDirectory(parent, title, start)
    return Path(name) if name else None


def ask_save_path(
    parent: QWidget | None, title: str, filter: str, suggested: str = ""
) -> Path | None:
    """A file name to write, or None when cancelled. The dialog confirms overwriting.

    When the user typed no suffix, the first suffix of the chosen filter is added.
    """
    name, chosen = QFileDialog.getSaveFileName(parent, title, suggested, filter)
    if not name:
        return None
    path = Path(name)
    if not path.suffix:
        suffix = _first_suffix(chosen or filter)
        if suffix:
            path = path.with_suffix(suffix)
    return path


def _first_suffix(filter: str) -> str:
    """'GIF animation (*.gif)' -> '.gif'."""
    start = filter.find("(*.")
    if start < 0:
        return ""
    end = filter.find(")", start)
    return "." + filter[start + 3 : end].split()[0].rstrip(";")


def show_error(parent: QWidget | None, title: str, message: str) -> None:
    """A modal error message; the app keeps running afterwards."""
    QMessageBox.warning(parent, title, message)


def show_info(parent: QWidget | None, title: str, message: str) -> None:
    QMessageBox.information(parent, title, message)


def ask_yes_no(parent: QWidget | None, title: str, question: str) -> bool:
    """True when the user answered Yes."""
    answer = QMessageBox.question(
        parent,
        title,
        question,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def show_about(parent: QWidget | None, title: str, html: str) -> None:
    QMessageBox.about(parent, title, html)
