"""pytest-qt set-up for the app tests: headless Qt, settings and files in tmp paths, dialogs
answered by the test, and a check that no test leaves a worker thread running."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections import deque
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, QSettings, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent

from diffusion_studio.app import dialogs
from diffusion_studio.core.checkpoint import save_checkpoint
from diffusion_studio.core.models import UNetConfig
from diffusion_studio.core.schedule import ScheduleConfig
from diffusion_studio.core.training import Trainer, preset_config


class FakeDialogs:
    """Stands in for app.dialogs: records messages, answers questions from queues.

    A question nobody queued an answer for fails the test (it would block a real user).
    """

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.infos: list[tuple[str, str]] = []
        self.abouts: list[str] = []
        self.paths: deque[Path | None] = deque()
        self.answers: deque[bool] = deque()
        self.asked: list[str] = []

    def _path(self, title: str) -> Path | None:
        self.asked.append(title)
        if not self.paths:
            raise AssertionError(f"unexpected file dialog: {title!r}")
        return self.paths.popleft()

    def ask_open_path(self, parent, title, filter, start=""):
        return self._path(title)

    def ask_folder(self, parent, title, start=""):
        return self._path(title)

    def ask_save_path(self, parent, title, filter, suggested=""):
        return self._path(title)

    def ask_yes_no(self, parent, title, question):
        self.asked.append(title)
        if not self.answers:
            raise AssertionError(f"unexpected question: {title!r}: {question}")
        return self.answers.popleft()

    def show_error(self, parent, title, message):
        self.errors.append((title, message))

    def show_info(self, parent, title, message):
        self.infos.append((title, message))

    def show_about(self, parent, title, html):
        self.abouts.append(html)


@pytest.fixture(autouse=True)
def app_dirs(tmp_path, monkeypatch):
    """Settings (QSettings INI files) and the app's data folder live in tmp_path."""
    settings_dir = tmp_path / "settings"
    data_dir = tmp_path / "data"
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(settings_dir))
    monkeypatch.setenv("DIFFUSION_STUDIO_DATA_DIR", str(data_dir))
    return SimpleNamespace(settings=settings_dir, data=data_dir)


@pytest.fixture(autouse=True)
def no_bundled_models(monkeypatch):
    """The tests do not depend on which pretrained models resources/models holds (a test that
    wants some patches this again)."""
    monkeypatch.setattr("diffusion_studio.core.checkpoint.pretrained_checkpoint_paths", lambda: {})


@pytest.fixture(autouse=True)
def fake_dialogs(monkeypatch) -> FakeDialogs:
    fake = FakeDialogs()
    for name in (
        "ask_open_path",
        "ask_folder",
        "ask_save_path",
        "ask_yes_no",
        "show_error",
        "show_info",
        "show_about",
    ):
        monkeypatch.setattr(dialogs, name, getattr(fake, name))
    return fake


@pytest.fixture(autouse=True)
def no_thread_left(qapp):
    """Fail a test that leaves a worker thread running (after giving it a moment to end).

    Ended threads are released here too, which turns Python's automatic garbage collection
    back on (app.garbage turns it off while worker threads run): the later tests, tests/core
    among them, run with the collector as the interpreter has it."""
    yield
    import gc

    from diffusion_studio.app.garbage import job_garbage
    from diffusion_studio.app.worker import live_threads, wait_for_all_threads

    left = [t.objectName() for t in live_threads()]
    wait_for_all_threads(20.0)  # do not let a stray thread crash the next test
    if left:
        pytest.fail(f"the test left worker thread(s) running: {left}")
    assert job_garbage.holds == 0 and gc.isenabled()


@pytest.fixture
def show(qtbot):
    """show(widget): the widget, shown; its jobs are stopped at the end of the test."""
    shown = []

    def show_widget(widget):
        qtbot.addWidget(widget)
        widget.show()
        shown.append(widget)
        return widget

    yield show_widget
    for widget in shown:
        shutdown = getattr(widget, "shutdown", None)
        if shutdown is not None:
            shutdown(20)


@pytest.fixture
def export(qtbot, fake_dialogs):
    """export(button, runner, target): click an export button, answer its file dialog with
    `target` and wait until the export runner has written it."""

    def run(button, runner, target):
        fake_dialogs.paths.append(target)
        with qtbot.waitSignal(runner.finished, timeout=30000):
            button.click()
        runner.wait(10)
        return target

    return run


@pytest.fixture
def window(qtbot, fake_dialogs):
    """The main window, shown; closed at the end (answering Yes if a job still runs)."""
    from diffusion_studio.app.main_window import MainWindow

    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    yield win
    if win.isVisible():
        if win.busy_panels():
            fake_dialogs.answers.append(True)
        win.close()


def tiny_checkpoints(folder: Path, objective: str = "diffusion") -> SimpleNamespace:
    """Tiny trained checkpoints of one objective saved in `folder`: a 2-D points MLP (moons),
    a digits UNet (T = 100) and a class-conditional digits UNet (a few steps each)."""
    points = Trainer(
        preset_config(
            "moons",
            "small",
            max_steps=30,
            max_minutes=None,
            device="cpu",
            num_points=512,
            objective=objective,
        )
    )
    for _ in points.run():
        pass
    tiny_unet = UNetConfig(channels=(8, 8), attention_heads=0, norm_groups=4)
    images = Trainer(
        preset_config(
            "digits",
            "small",
            max_steps=2,
            max_minutes=None,
            batch_size=4,
            device="cpu",
            schedule=ScheduleConfig("cosine", 100),
            model=tiny_unet,
            objective=objective,
        )
    )
    for _ in images.run():
        pass
    conditional = Trainer(
        replace(images.config, model=replace(tiny_unet, num_classes=10), max_steps=2)
    )
    for _ in conditional.run():
        pass
    prefix = "flow-" if objective == "flow" else ""
    paths = SimpleNamespace(
        points=folder / f"{prefix}moons.safetensors",
        images=folder / f"{prefix}digits.safetensors",
        conditional=folder / f"{prefix}digits-conditional.safetensors",
    )
    save_checkpoint(paths.points, points.checkpoint())
    save_checkpoint(paths.images, images.checkpoint())
    save_checkpoint(paths.conditional, conditional.checkpoint())
    return paths


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> SimpleNamespace:
    """Tiny trained diffusion checkpoints (`tiny_checkpoints`)."""
    return tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def flow_checkpoints(tmp_path_factory) -> SimpleNamespace:
    """Tiny trained flow-matching checkpoints (`tiny_checkpoints` with objective "flow")."""
    return tiny_checkpoints(tmp_path_factory.mktemp("flow-checkpoints"), "flow")


def drop_on_window(window, paths: list[Path], target=None) -> None:
    """Drop `paths` on `target` (default: the current tab), a widget inside the window, as Qt
    delivers a real drop: Qt sends synthetic drag events only during a real drag, so they go
    to the window's application-wide event filter, DragEnter then Drop (the file is opened
    from the event loop, a moment later)."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    target = target if target is not None else window.tabs.currentWidget()
    buttons, modifiers = Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier
    try:  # Qt 6.12 takes a QPointF, older versions a QPoint
        enter = QDragEnterEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, buttons, modifiers)
    except TypeError:
        enter = QDragEnterEvent(QPoint(5, 5), Qt.DropAction.CopyAction, mime, buttons, modifiers)
    assert window.eventFilter(target, enter) and enter.isAccepted()
    drop = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, buttons, modifiers)
    assert window.eventFilter(target, drop) and drop.isAccepted()


@pytest.fixture
def image_folder(tmp_path):
    """Four 8x8 grey images: a tiny image data set that trains fast."""
    folder = tmp_path / "tiny_images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder
