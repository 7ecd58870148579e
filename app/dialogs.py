"""Every dialog the app shows goes through these few functions.

Panels call them as `dialogs.ask_save_path(...)` (through the module, never a copied
name), so tests replace them with `monkeypatch.setattr(dialogs, "ask_save_path", ...)`
and inject the user's choice without a modal window.

File dialogs start in the last folder used for that kind of file, remembered in the settings
(`dialogs/last_folder/<kind>`, so it survives a restart): images, image folders, checkpoints,
model folders and exports each have their own. The kind of an open or save dialog is its
filter's (IMAGE_FILTER: images, CHECKPOINT_FILTER: checkpoints, GIF / CSV / PLOT: exports); a
folder dialog's `start` names its kind (default: image folders). A suggested file name
without a folder (or in the home folder, `Panel.suggest`'s default) goes into that folder.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from diffusion_studio.app.settings import make_settings

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.gif *.tif *.tiff *.webp);;All files (*)"
CHECKPOINT_FILTER = (
    "Checkpoints (*.safetensors *.pt *.pth *.ckpt *.bin);;"
    "diffusers model (config.json model_index.json);;All files (*)"
)
CHECKPOINT_SAVE_FILTER = "Checkpoints (*.safetensors)"
GIF_FILTER = "GIF animation (*.gif)"
PNG_FILTER = "PNG image (*.png)"
CSV_FILTER = "CSV table (*.csv)"
PLOT_FILTER = "PNG image (*.png);;SVG drawing (*.svg)"

# kinds of file whose last folder is remembered separately
IMAGES = "images"
IMAGE_FOLDERS = "image_folders"
CHECKPOINTS = "checkpoints"
MODEL_FOLDERS = "model_folders"
EXPORTS = "exports"
RUNS = "runs"  # training-run folders followed with File > Watch Run…
OTHER_FILES = "files"
FOLDER_KINDS = (IMAGE_FOLDERS, MODEL_FOLDERS, EXPORTS, IMAGES, CHECKPOINTS, RUNS)
FILTER_KINDS = {
    IMAGE_FILTER: IMAGES,
    CHECKPOINT_FILTER: CHECKPOINTS,
    CHECKPOINT_SAVE_FILTER: CHECKPOINTS,
    GIF_FILTER: EXPORTS,
    PNG_FILTER: EXPORTS,
    CSV_FILTER: EXPORTS,
    PLOT_FILTER: EXPORTS,
}
LAST_FOLDER_KEY = "dialogs/last_folder/"


def kind_of_filter(filter: str) -> str:
    """The kind of file a dialog with this filter opens or saves (OTHER_FILES if unknown)."""
    return FILTER_KINDS.get(filter, OTHER_FILES)


def last_folder(kind: str) -> Path:
    """The folder last used for this kind of file (still existing), else the home folder."""
    saved = make_settings().value(LAST_FOLDER_KEY + kind)
    if saved:
        folder = Path(str(saved))
        if folder.is_dir():
            return folder
    return Path.home()


def remember_folder(kind: str, folder: Path) -> None:
    """The next dialog for this kind of file starts in `folder`."""
    settings = make_settings()
    settings.setValue(LAST_FOLDER_KEY + kind, str(folder))
    settings.sync()


def suggested_path(kind: str, suggested: str) -> str:
    """Where a save dialog starts: a bare file name (or one in the home folder) goes into the
    last folder used for `kind`; any other path is kept."""
    if not suggested:
        return str(last_folder(kind))
    path = Path(suggested)
    if path.parent in (Path(""), Path("."), Path.home()):
        return str(last_folder(kind) / path.name)
    return suggested


def file_stem(name: str) -> str:
    """`name` as a file name stem a save dialog can suggest: letters, digits, '-', '_', '.'
    kept, anything else (spaces, slashes) turned into '-'."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def ask_open_path(parent: QWidget | None, title: str, filter: str, start: str = "") -> Path | None:
    """A file the user picked to open, or None when cancelled. Starts in `start`, or else in
    the last folder used for the filter's kind of file (remembered)."""
    kind = kind_of_filter(filter)
    name, _ = QFileDialog.getOpenFileName(parent, title, start or str(last_folder(kind)), filter)
    if not name:
        return None
    remember_folder(kind, Path(name).parent)
    return Path(name)


def ask_folder(parent: QWidget | None, title: str, start: str = IMAGE_FOLDERS) -> Path | None:
    """A folder the user picked, or None when cancelled. `start`: a kind of folder (one of
    FOLDER_KINDS; it starts in the last one used for that kind, remembered) or a path."""
    kind = start if start in FOLDER_KINDS else IMAGE_FOLDERS
    where = str(last_folder(kind)) if start in FOLDER_KINDS or not start else start
    name = QFileDialog.getExistingDirectory(parent, title, where)
    if not name:
        return None
    folder = Path(name)
    # a chosen model or image folder is itself the item: the next dialog starts beside it
    remember_folder(kind, folder if kind == EXPORTS else folder.parent)
    return folder


def ask_save_path(
    parent: QWidget | None, title: str, filter: str, suggested: str = ""
) -> Path | None:
    """A file name to write, or None when cancelled. The dialog confirms overwriting.

    When the user typed no suffix, the first suffix of the chosen filter is added. A bare
    suggested name starts in the last folder used for the filter's kind (`suggested_path`).
    """
    kind = kind_of_filter(filter)
    name, chosen = QFileDialog.getSaveFileName(
        parent, title, suggested_path(kind, suggested), filter
    )
    if not name:
        return None
    path = Path(name)
    if not path.suffix:
        suffix = _first_suffix(chosen or filter)
        if suffix:
            path = path.with_suffix(suffix)
    remember_folder(kind, path.parent)
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
