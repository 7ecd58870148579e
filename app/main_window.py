"""The main window: four panels in tabs, menus, a status bar with the running job, drag-and-drop.

`run_app(paths)` is the GUI entry point (the CLI calls it when no subcommand is given).
"""

from __future__ import annotations

import html
import logging
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pyqtgraph as pg
import PySide6
import torch
from PySide6.QtCore import QByteArray, QEvent, QObject, QSettings, QTimer, qVersion
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QStyleFactory,
    QTabWidget,
    QWidget,
)

import core
from app import dialogs
from app.garbage import after_startup
from app.panels.base import Panel
from app.panels.forward_panel import ForwardPanel
from app.panels.playback_panel import PlaybackPanel
from app.panels.schedule_panel import SchedulesPanel
from app.panels.training_panel import TrainingPanel
from app.settings import (
    APPLICATION,
    add_recent_file,
    configure_application,
    make_settings,
    recent_files,
    write_json,
)
from app.widgets import app_icon, format_duration
from app.worker import JobRunner, configure_torch_threads, wait_for_all_threads
from core.checkpoint import CHECKPOINT_SUFFIX, LEGACY_SUFFIXES
from core.data import IMAGE_SUFFIXES
from core.diffusers_models import find_diffusers_model

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 15.0
CHECKPOINT_SUFFIXES = (CHECKPOINT_SUFFIX, *LEGACY_SUFFIXES)

LICENCES_HTML = """
<p><b>Shipped data</b> (details in resources/README.md):</p>
<ul>
<li>MNIST digits (5,000-image subset): Yann LeCun, Corinna Cortes, Christopher J.C. Burges;
Creative Commons Attribution-Share Alike 3.0 (CC BY-SA 3.0).</li>
<li>Astronaut photograph (Eileen Collins): NASA, public domain.</li>
<li>Coffee photograph: Rachel Michetti / Pikolo Espresso Bar, CC0 1.0 (public domain).</li>
</ul>
"""


class JobStatusBar(QObject):
    """The status bar's job widgets: text, progress bar, throughput, ETA and a Cancel button.

    Polls the tracked runners' latest status on a timer (10 Hz); never per record.
    """

    def __init__(self, window: QMainWindow) -> None:
        super().__init__(window)
        self.runners: list[JobRunner] = []
        self.active: JobRunner | None = None
        bar = window.statusBar()
        self.text = QLabel()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(220)
        self.progress.setTextVisible(True)
        self.progress.setToolTip("Progress of the running job")
        self.rate = QLabel()
        self.rate.setToolTip("Throughput of the running job")
        self.eta = QLabel()
        self.eta.setToolTip("Estimated time left")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job (training saves a checkpoint first)")
        self.cancel_button.clicked.connect(self.cancel)
        for w in (self.text, self.progress, self.rate, self.eta, self.cancel_button):
            bar.addPermanentWidget(w)
        self.timer = QTimer(self)
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()
        self.refresh()

    def track(self, runner: JobRunner) -> None:
        self.runners.append(runner)
        runner.started.connect(lambda _name, r=runner: self._on_started(r))

    def _on_started(self, runner: JobRunner) -> None:
        self.active = runner
        self.refresh()

    def current(self) -> JobRunner | None:
        if self.active is not None and self.active.is_running:
            return self.active
        return next((r for r in self.runners if r.is_running), None)

    def cancel(self) -> None:
        runner = self.current()
        if runner is not None:
            runner.cancel()

    def refresh(self) -> None:
        runner = self.current()
        widgets = (self.text, self.progress, self.rate, self.eta, self.cancel_button)
        if runner is None:
            for w in widgets:
                w.hide()
            return
        for w in widgets:
            w.show()
        status = runner.status
        paused = " (paused)" if runner.is_paused else ""
        self.text.setText((status.text if status else runner.job_name) + paused)
        if status is None or status.fraction is None:
            self.progress.setRange(0, 0)  # busy indicator
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(round(1000 * min(max(status.fraction, 0.0), 1.0))))
            self.progress.setFormat(f"{100 * status.fraction:.0f} %")
        self.rate.setText(status.rate if status else "")
        self.eta.setText(
            f"ETA {format_duration(status.eta_s)}" if status and status.eta_s is not None else ""
        )


class MainWindow(QMainWindow):
    """Diffusion Studio's window: Schedules, Forward, Training and Playback tabs."""

    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else make_settings()
        self.setWindowTitle(APPLICATION)
        self.setWindowIcon(app_icon())
        self.resize(1360, 860)
        self.setAcceptDrops(True)

        self.schedules = SchedulesPanel()
        self.forward = ForwardPanel()
        self.training = TrainingPanel()
        self.playback = PlaybackPanel()
        self.panels: list[Panel] = [self.schedules, self.forward, self.training, self.playback]
        self.tabs = QTabWidget()
        tips = (
            "Noise schedules: beta_t, alphabar_t = prod alpha_s, SNR",
            "The forward process on an image: x_t at any t",
            "Train a small diffusion model and watch its loss and samples",
            "Sample from a model and play the reverse process back",
        )
        for i, (panel, tip) in enumerate(zip(self.panels, tips)):
            self.tabs.addTab(panel, panel.title)
            self.tabs.setTabToolTip(i, f"{tip} (Ctrl+{i + 1})")
        self.setCentralWidget(self.tabs)

        self.job_bar = JobStatusBar(self)
        for panel in self.panels:
            panel.status_message.connect(self.show_status)
            panel.file_used.connect(self.add_recent)
            for runner in panel.runners():
                self.job_bar.track(runner)
        self.schedules.schedule_changed.connect(self.forward.set_schedule)
        self.training.model_trained.connect(self.playback.set_trained_checkpoint)
        self.forward.image_changed.connect(self.playback.set_start_image)

        self._build_menus()
        self._restore()
        self.forward.set_schedule(self.schedules.schedule.config)
        if self.forward.image_path is not None:
            self.playback.set_start_image(str(self.forward.image_path))
        app = QApplication.instance()
        if app is not None:
            app.installEventFilter(self)
        self.show_status(
            "Ready. Drop an image, an image folder, a checkpoint or a model folder anywhere."
        )

    # ------------------------------------------------------------------ menus

    def _action(self, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setStatusTip(tip)
        action.setToolTip(tip)
        action.triggered.connect(slot)
        return action

    def _build_menus(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        self.open_image_action = self._action(
            "Open &Image…",
            self.open_image,
            QKeySequence.StandardKey.Open,
            "Show an image on the Forward tab",
        )
        self.open_folder_action = self._action(
            "Open Image &Folder…",
            self.open_image_folder,
            "Ctrl+Shift+O",
            "Train on a folder of images (Training tab)",
        )
        self.open_checkpoint_action = self._action(
            "Open &Checkpoint…",
            self.open_checkpoint,
            "Ctrl+Shift+K",
            "Load a trained model for the Playback tab",
        )
        self.open_model_folder_action = self._action(
            "Open &Model Folder…",
            self.open_model_folder,
            "Ctrl+Shift+M",
            "Load a diffusers model folder (config.json + diffusion_pytorch_model.safetensors, "
            "or a pipeline folder with unet/) for the Playback tab",
        )
        self.save_checkpoint_action = self._action(
            "&Save Checkpoint As…",
            self.training.save_checkpoint_as,
            QKeySequence.StandardKey.SaveAs,
            "Save the model being trained (or just trained)",
        )
        self.export_gif_action = self._action(
            "Export &GIF…",
            self.export_gif,
            "Ctrl+E",
            "Save the Forward or Playback animation as a GIF",
        )
        self.export_plot_action = self._action(
            "Export &Plot…",
            self.export_plot,
            "Ctrl+Shift+E",
            "Save the plots of this tab as PNG or SVG",
        )
        self.quit_action = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit, "Quit")
        for action in (
            self.open_image_action,
            self.open_folder_action,
            self.open_checkpoint_action,
            self.open_model_folder_action,
        ):
            file_menu.addAction(action)
        self.recent_menu = file_menu.addMenu("Recent &Files")
        self.recent_menu.setToolTipsVisible(True)
        file_menu.addSeparator()
        file_menu.addAction(self.save_checkpoint_action)
        file_menu.addAction(self.export_gif_action)
        file_menu.addAction(self.export_plot_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        self._update_recent_menu()

        view_menu = menu.addMenu("&View")
        for i, panel in enumerate(self.panels):
            view_menu.addAction(
                self._action(
                    panel.title,
                    lambda _checked=False, i=i: self.tabs.setCurrentIndex(i),
                    f"Ctrl+{i + 1}",
                    f"Show the {panel.title} tab",
                )
            )
        view_menu.addSeparator()
        self.fullscreen_action = self._action(
            "&Full Screen",
            self.toggle_full_screen,
            QKeySequence.StandardKey.FullScreen,
            "Full screen",
        )
        view_menu.addAction(self.fullscreen_action)

        help_menu = menu.addMenu("&Help")
        help_menu.addAction(
            self._action("&About Diffusion Studio", self.show_about, None, "Versions and licences")
        )

    def _update_recent_menu(self) -> None:
        self.recent_menu.clear()
        files = recent_files(self.settings)
        for path in files:
            action = self.recent_menu.addAction(Path(path).name)
            action.setToolTip(path)
            action.triggered.connect(lambda _checked=False, p=path: self.open_path(p))
        if files:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear", self._clear_recent)
        self.recent_menu.setEnabled(bool(files))

    def _clear_recent(self) -> None:
        write_json(self.settings, "recent_files", [])
        self._update_recent_menu()

    def add_recent(self, path: str) -> None:
        add_recent_file(self.settings, path)
        self._update_recent_menu()

    # ------------------------------------------------------------------ actions

    def show_status(self, message: str) -> None:
        self.statusBar().showMessage(message, 10000)

    def open_image(self) -> None:
        self.tabs.setCurrentWidget(self.forward)
        self.forward.choose_image()

    def open_image_folder(self) -> None:
        folder = dialogs.ask_folder(self, "Open image folder for training")
        if folder is not None:
            self.open_path(folder)

    def open_checkpoint(self) -> None:
        self.tabs.setCurrentWidget(self.playback)
        self.playback.choose_checkpoint()

    def open_model_folder(self) -> None:
        self.tabs.setCurrentWidget(self.playback)
        self.playback.choose_model_folder()

    def export_gif(self) -> None:
        current = self.tabs.currentWidget()
        if current is self.playback or (current is not self.forward and self.playback.has_frames()):
            self.tabs.setCurrentWidget(self.playback)
            self.playback.export_gif()
        else:
            self.tabs.setCurrentWidget(self.forward)
            self.forward.export_gif()

    def export_plot(self) -> None:
        current = self.tabs.currentWidget()
        exporter = getattr(current, "export_plot", None)
        if exporter is None:
            self.tabs.setCurrentWidget(self.schedules)
            exporter = self.schedules.export_plot
        exporter()

    def toggle_full_screen(self) -> None:
        self.showNormal() if self.isFullScreen() else self.showFullScreen()

    def show_about(self) -> None:
        rows = [
            ("Diffusion Studio", core.__version__),
            ("Python", platform.python_version()),
            ("PyTorch", torch.__version__),
            ("Qt", qVersion()),
            ("PySide6", PySide6.__version__),
            ("pyqtgraph", pg.__version__),
            ("NumPy", np.__version__),
        ]
        table = "".join(f"<tr><td>{k}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
        text = (
            "<h3>Diffusion Studio</h3>"
            "<p>Train small diffusion models and watch them work: the noise schedule, "
            "the forward process x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps with "
            "alphabar_t = prod alpha_s, the training loss and the reverse process.</p>"
            f"<table>{table}</table>{LICENCES_HTML}"
        )
        dialogs.show_about(self, "About Diffusion Studio", text)

    # ------------------------------------------------------------------ opening files

    def open_path(self, path: str | os.PathLike[str]) -> bool:
        """Open a file or folder in the panel that fits it. Returns True when it was used."""
        path = Path(path).expanduser()
        suffix = path.suffix.lower()
        if not path.exists():
            self._error("Cannot open", f"'{path}' does not exist.")
            return False
        if find_diffusers_model(path) is not None:  # a diffusers model folder (or its file)
            self.tabs.setCurrentWidget(self.playback)
            return self.playback.load_checkpoint(path)
        if path.is_dir():
            self.tabs.setCurrentWidget(self.training)
            return self.training.set_data_folder(path)
        if suffix in CHECKPOINT_SUFFIXES:
            self.tabs.setCurrentWidget(self.playback)
            return self.playback.load_checkpoint(path)
        if suffix in IMAGE_SUFFIXES:
            self.tabs.setCurrentWidget(self.forward)
            return self.forward.load_image(path)
        self._error(
            "Cannot open",
            f"'{path.name}' is not an image ({', '.join(IMAGE_SUFFIXES)}), a checkpoint "
            f"({', '.join(CHECKPOINT_SUFFIXES)}), a diffusers model folder or an image folder.",
        )
        return False

    def _error(self, title: str, message: str) -> None:
        self.show_status(message)
        dialogs.show_error(self, title, message)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove, QEvent.Type.Drop):
            if isinstance(obj, QWidget) and obj.window() is self and event.mimeData().hasUrls():
                if kind == QEvent.Type.Drop:
                    event.acceptProposedAction()
                    paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
                    QTimer.singleShot(0, lambda: self.handle_dropped_paths(paths))
                else:
                    event.acceptProposedAction()
                return True
        return super().eventFilter(obj, event)

    def handle_dropped_paths(self, paths: list[str]) -> None:
        for path in paths:
            self.open_path(path)

    # ------------------------------------------------------------------ settings and closing

    def _restore(self) -> None:
        s = self.settings
        geometry = s.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        state = s.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        for panel in self.panels:
            try:
                panel.restore_state(s)
            except Exception:  # noqa: BLE001 - a damaged settings file must not stop the app
                log.exception("could not restore the settings of %s", panel.title)
        try:
            self.tabs.setCurrentIndex(int(s.value("window/tab", 0)))
        except (TypeError, ValueError):
            pass

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("window/tab", self.tabs.currentIndex())
        for panel in self.panels:
            panel.save_state(s)
        s.sync()

    def busy_panels(self) -> list[Panel]:
        return [p for p in self.panels if p.busy()]

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt override)
        busy = self.busy_panels()
        if busy:
            names = ", ".join(p.title for p in busy)
            question = (
                f"A job is still running ({names}). Stop it and quit?\n\n"
                "Training is saved to its autosave checkpoint before quitting."
            )
            if not dialogs.ask_yes_no(self, "Quit Diffusion Studio", question):
                event.ignore()
                return
            self.show_status("Stopping the running jobs…")
            stopped = all(p.shutdown(CLOSE_TIMEOUT_S) for p in self.panels)
            if not stopped:
                log.warning("a job did not stop within %.0f s", CLOSE_TIMEOUT_S)
        self.save_settings()
        app = QApplication.instance()
        if app is not None:
            app.removeEventFilter(self)
        self.job_bar.timer.stop()
        event.accept()


def make_application() -> QApplication:
    """The QApplication, named (settings and data folders), styled, with the icon; torch gets
    one thread in the GUI thread and its default count (the CLI's) in each job's
    (app.worker.configure_torch_threads)."""
    app = QApplication.instance() or QApplication(sys.argv[:1])
    configure_application(app)
    app.setWindowIcon(app_icon())
    if "fusion" in [name.lower() for name in QStyleFactory.keys()]:
        app.setStyle("Fusion")
    configure_torch_threads()
    return app


def run_app(paths: list[str]) -> int:
    """Start the GUI, open `paths` (images, image folders, checkpoints), run the event loop."""
    app = make_application()
    window = MainWindow()
    window.show()
    after_startup(window)  # the garbage collector leaves the start-up objects alone
    for path in paths:
        window.open_path(path)
    code = app.exec()
    if not wait_for_all_threads(CLOSE_TIMEOUT_S):
        # A job ignored its cancel flag: leave without destroying a running QThread.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 1)
    return int(code)
