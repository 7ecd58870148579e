"""Start-up (issue 20): the window first, the engine after its first paint, panels on demand,
and what a user asks for meanwhile waits for the engine or is politely refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from diffusion_studio.app.main_window import LOADING_TEXT, PANEL_NAMES, LoadingPage, MainWindow
from diffusion_studio.core.checkpoint import load_checkpoint
from diffusion_studio.core.data import default_photo_path

ROOT = Path(__file__).resolve().parents[2]

# run_app as `diffusion-studio IMAGE` runs it, in a fresh process, with the window watched: the
# driver records when the window is shown and first painted, whether torch was imported then,
# and when the image named on the command line is open; then it closes the window.
DRIVER = """
import json, sys
from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication, QWidget
import diffusion_studio.app.main_window as mw

events = []

class Watch(QObject):
    def __init__(self, window):
        super().__init__(window)
        self.window = window
        self.painted = False

    def eventFilter(self, obj, event):
        if (not self.painted and event.type() == QEvent.Type.Paint
                and isinstance(obj, QWidget) and obj.window() is self.window):
            self.painted = True
            events.append(["painted", "torch" in sys.modules])
        return False

def poll(window):
    if not window.isVisible():  # closed after the file opened (a later tick must not log again)
        return
    if window.is_built("forward") and str(window.forward.image_path) == sys.argv[1]:
        built = [name for name in mw.PANEL_NAMES if window.is_built(name)]
        import torch
        events.append(["image open", window.tabs.currentIndex(), built, window.windowTitle(),
                       torch.get_num_threads()])
        window.close()

show = mw.MainWindow.show

def watched_show(window):
    watch = Watch(window)
    QApplication.instance().installEventFilter(watch)
    window.engine_ready.connect(lambda: events.append(["engine ready", "torch" in sys.modules]))
    timer = QTimer(window)
    timer.timeout.connect(lambda: poll(window))
    timer.start(20)
    show(window)
    events.append(["shown", window.isVisible(), "torch" in sys.modules])

mw.MainWindow.show = watched_show
from diffusion_studio.app.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "events": events}))
"""


def test_the_window_is_painted_before_torch_loads_and_opens_the_file_after(tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8)).save(image)
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        PYTHONPATH=str(ROOT),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        DIFFUSION_STUDIO_DATA_DIR=str(tmp_path / "data"),
    )
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(image)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    events = report["events"]
    assert report["code"] == 0
    assert [e[0] for e in events] == ["shown", "painted", "engine ready", "image open"]
    assert events[0] == ["shown", True, False]  # visible, torch not imported
    assert events[1] == ["painted", False]  # first paint done before torch
    assert events[2] == ["engine ready", True]
    _, tab, built, title, gui_threads = events[3]
    assert gui_threads == 1  # app.worker.configure_torch_threads ran in the GUI thread
    assert tab == PANEL_NAMES.index("forward")
    assert "training" not in built and "playback" not in built  # never opened: never built
    assert title == "photo.png — Diffusion Studio"


# ---------------------------------------------------------------------- a slow engine, in-process


@pytest.fixture
def slow_engine(monkeypatch):
    """The engine loads in the background thread, as in the app, until the test sets the
    returned event."""
    release = threading.Event()
    monkeypatch.setattr("diffusion_studio.app.engine_loader.torch_already_imported", lambda: False)
    monkeypatch.setattr("diffusion_studio.app.engine_loader.preload_torch_library", lambda: False)
    monkeypatch.setattr(
        "diffusion_studio.app.engine_loader.import_engine_modules", lambda: release.wait(60)
    )
    yield release
    release.set()


@pytest.fixture
def early_window(qtbot, slow_engine, fake_dialogs):
    """A shown, painted window whose engine is still loading."""
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    qtbot.waitUntil(lambda: window.engine._thread is not None)  # started after the first paint
    assert not window.engine.is_loaded
    yield window
    slow_engine.set()
    window.close()


def test_tabs_say_loading_until_the_engine_is_ready(early_window, slow_engine, qtbot):
    window = early_window
    pages = [window.tabs.widget(i) for i in range(window.tabs.count())]
    assert all(isinstance(p, LoadingPage) and p.text() == LOADING_TEXT for p in pages)
    assert "Loading the engine" in window.statusBar().currentMessage()
    window.show_getting_started().close()  # Help needs no engine
    window.tabs.setCurrentIndex(PANEL_NAMES.index("training"))  # opened early: still loading
    assert not any(window.is_built(name) for name in PANEL_NAMES)
    slow_engine.set()
    with qtbot.waitSignal(window.engine_ready, timeout=10000):
        pass
    assert window.tabs.currentWidget() is window.training  # the shown tab, built
    assert [name for name in PANEL_NAMES if window.is_built(name)] == ["training"]
    assert window.statusBar().currentMessage().startswith("Ready")
    window.tabs.setCurrentIndex(PANEL_NAMES.index("schedules"))  # built when opened
    assert window.is_built("schedules") and window.tabs.currentWidget() is window.schedules


def test_sample_and_start_pressed_early_are_refused_politely(
    early_window, slow_engine, qtbot, fake_dialogs
):
    window = early_window
    window.activateWindow()
    qtbot.waitActive(window)
    for name, key, modifier, what in (
        ("playback", Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier, "Sample"),
        ("training", Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier, "Start"),
    ):
        window.tabs.setCurrentIndex(PANEL_NAMES.index(name))
        window.statusBar().clearMessage()
        QTest.keyClick(window, key, modifier)
        message = window.statusBar().currentMessage()
        assert "Loading the engine" in message and what in message
    assert fake_dialogs.errors == []
    slow_engine.set()
    with qtbot.waitSignal(window.engine_ready, timeout=10000):
        pass
    # once loaded, the same key is the panel's own shortcut again (not the refusal's)
    training = window.training
    window.statusBar().clearMessage()
    assert training.start_button.shortcut().toString() == "Ctrl+Return"
    assert window._loading_actions == []


def test_what_is_asked_early_is_done_in_order_once_ready(
    early_window, slow_engine, qtbot, fake_dialogs, tmp_path, checkpoints
):
    window = early_window
    image = tmp_path / "early.png"
    Image.fromarray(np.full((12, 12, 3), 200, dtype=np.uint8)).save(image)
    fake_dialogs.paths.append(image)
    window.open_image_action.trigger()
    window.handle_dropped_paths([str(checkpoints.points)])
    assert fake_dialogs.asked == [] and fake_dialogs.errors == []  # nothing yet
    message = window.statusBar().currentMessage()
    assert "Loading the engine" in message and "Open Image, Opening moons.safetensors" in message
    slow_engine.set()
    qtbot.waitUntil(lambda: window.is_built("playback"), timeout=10000)
    assert fake_dialogs.asked == ["Open image"]
    assert window.forward.image_path == image
    assert window.tabs.currentWidget() is window.playback  # the drop came second
    assert window.playback.checkpoint.is_points
    assert fake_dialogs.errors == []


def test_closing_while_the_engine_loads_waits_for_it_and_saves(early_window, slow_engine, app_dirs):
    window = early_window
    window.tabs.setCurrentIndex(PANEL_NAMES.index("playback"))
    threading.Timer(0.2, slow_engine.set).start()  # the import ends while close() waits
    window.close()
    assert not window.isVisible()
    assert not window.engine._thread.is_alive()  # no import left running at exit
    assert not any(window.is_built(name) for name in PANEL_NAMES)  # none built for closing
    assert window.settings.value("window/tab") in (3, "3")
    assert not any(key.startswith("PlaybackPanel/") for key in window.settings.allKeys())


def test_an_engine_that_fails_to_load_says_so(qtbot, monkeypatch, fake_dialogs):
    def broken() -> None:
        raise ImportError("no module named 'torch'")

    monkeypatch.setattr("diffusion_studio.app.engine_loader.torch_already_imported", lambda: False)
    monkeypatch.setattr("diffusion_studio.app.engine_loader.preload_torch_library", lambda: False)
    monkeypatch.setattr("diffusion_studio.app.engine_loader.import_engine_modules", broken)
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.engine.error is not None, timeout=10000)
    assert [title for title, _ in fake_dialogs.errors] == ["Cannot start"]
    assert "no module named 'torch'" in window.tabs.widget(0).text()
    window.open_image_action.trigger()  # refused in the status bar, no second dialog
    assert len(fake_dialogs.errors) == 1
    window.close()


# ---------------------------------------------------------------------- panels built on demand


def test_panels_built_in_any_order_are_wired(qtbot, checkpoints):
    window = MainWindow()
    qtbot.addWidget(window)
    playback = window.playback  # first: the panels whose state it takes are built before it
    assert [n for n in PANEL_NAMES if window.is_built(n)] == ["schedules", "forward", "playback"]
    assert playback.start_image == default_photo_path()
    window.schedules.steps.setValue(200)
    assert window.forward.schedule.config.num_timesteps == 200
    ckpt = load_checkpoint(checkpoints.points)
    window.training.model_trained.emit(ckpt)  # built last, still reaches Playback
    assert playback.model_choice.currentData() == "trained"
    window.close()


def test_an_event_builds_the_panel_it_is_for(qtbot, checkpoints):
    window = MainWindow()
    qtbot.addWidget(window)
    window.training.model_trained.emit(load_checkpoint(checkpoints.points))
    assert window.is_built("playback")
    assert window.playback.model_choice.currentData() == "trained"
    window.close()


def test_a_panel_never_built_keeps_its_saved_settings(qtbot):
    first = MainWindow()
    qtbot.addWidget(first)
    first.training.batch.setValue(32)
    first.playback.num_steps.setValue(25)
    first.tabs.setCurrentIndex(PANEL_NAMES.index("playback"))
    first.close()
    second = MainWindow()  # restored on Playback; Training is never opened
    qtbot.addWidget(second)
    assert second.tabs.currentIndex() == PANEL_NAMES.index("playback")
    second.playback.num_steps.setValue(30)
    second.close()
    assert not second.is_built("training")
    third = MainWindow()
    qtbot.addWidget(third)
    assert third.training.batch.value() == 32
    assert third.playback.num_steps.value() == 30
    third.close()
