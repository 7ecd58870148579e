"""File dialogs start in the last folder used for that kind of file (images, image folders,
checkpoints, model folders, exports: each its own), remembered in the settings so that it
survives a restart; a bare suggested name goes into that folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtWidgets import QFileDialog

from diffusion_studio.app import dialogs

# the real functions (the autouse fake_dialogs fixture replaces the module's names)
from diffusion_studio.app.dialogs import ask_folder as real_ask_folder
from diffusion_studio.app.dialogs import ask_open_path as real_ask_open_path
from diffusion_studio.app.dialogs import ask_save_path as real_ask_save_path


@pytest.fixture
def qt_dialogs(monkeypatch):
    """QFileDialog answered by the test: records where each dialog started."""
    started: list[str] = []
    answers: list[str] = []

    def open_name(parent, title, where, filter):
        started.append(where)
        return answers.pop(0), filter

    def folder(parent, title, where):
        started.append(where)
        return answers.pop(0)

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(open_name))
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(open_name))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(folder))
    return started, answers


def test_each_kind_of_file_starts_in_its_own_last_folder(qt_dialogs, tmp_path, qapp):
    started, answers = qt_dialogs
    pictures, models, exports, data = (tmp_path / n for n in ("pictures", "models", "out", "d"))
    for folder in (pictures, models, exports, data):
        folder.mkdir()
    (models / "unet").mkdir()

    answers.append(str(pictures / "cat.png"))
    assert real_ask_open_path(None, "Open image", dialogs.IMAGE_FILTER) == pictures / "cat.png"
    assert started[-1] == str(Path.home())  # first time: the home folder
    answers.append(str(models / "run.safetensors"))
    real_ask_open_path(None, "Open checkpoint", dialogs.CHECKPOINT_FILTER)
    answers.append(str(models / "unet"))
    real_ask_folder(None, "Open a diffusers model folder", dialogs.MODEL_FOLDERS)
    answers.append(str(data))
    real_ask_folder(None, "Open image folder")  # default kind: image folders
    answers.append(str(exports / "digits_ddim_50steps.gif"))
    real_ask_save_path(None, "Export GIF", dialogs.GIF_FILTER, "digits_ddim_50steps.gif")
    assert started[-1] == str(Path.home() / "digits_ddim_50steps.gif")

    # each kind now starts where it was last used, the save dialog with its suggested name
    expected = [
        (dialogs.IMAGE_FILTER, pictures),
        (dialogs.CHECKPOINT_FILTER, models),
    ]
    for filter, folder in expected:
        answers.append("")  # cancelled: nothing remembered
        assert real_ask_open_path(None, "Open", filter) is None
        assert started[-1] == str(folder)
    answers.append("")
    real_ask_folder(None, "Open a diffusers model folder", dialogs.MODEL_FOLDERS)
    assert started[-1] == str(models)  # beside the last model folder
    answers.append("")
    real_ask_folder(None, "Open image folder")
    assert started[-1] == str(tmp_path)
    answers.append("")
    real_ask_save_path(None, "Export GIF", dialogs.CSV_FILTER, str(Path.home() / "schedule.csv"))
    assert started[-1] == str(exports / "schedule.csv")  # Panel.suggest's home default too
    answers.append("")
    real_ask_folder(None, "Folder for the PNG frames", dialogs.EXPORTS)
    assert started[-1] == str(exports)


def test_the_last_folder_survives_a_restart_and_a_deleted_folder(app_dirs, tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    dialogs.remember_folder(dialogs.IMAGES, folder)
    assert list(app_dirs.settings.rglob("*.ini"))  # written to the settings file
    assert dialogs.last_folder(dialogs.IMAGES) == folder  # read back by a new QSettings
    assert dialogs.last_folder(dialogs.CHECKPOINTS) == Path.home()  # kinds are separate
    folder.rmdir()
    assert dialogs.last_folder(dialogs.IMAGES) == Path.home()  # gone: the home folder


def test_a_suggested_path_elsewhere_is_kept(tmp_path):
    dialogs.remember_folder(dialogs.EXPORTS, tmp_path)
    assert dialogs.suggested_path(dialogs.EXPORTS, "a.gif") == str(tmp_path / "a.gif")
    elsewhere = str(tmp_path / "sub" / "b.gif")
    assert dialogs.suggested_path(dialogs.EXPORTS, elsewhere) == elsewhere
