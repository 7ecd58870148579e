"""The main window: the panels in tabs, menus, a status bar with the running job, drag-and-drop.

`run_app(paths)` is the GUI entry point (the CLI calls it when no subcommand is given).

Start-up (issue 20): the window (menus, tabs, status bar) is shown and painted before torch is
imported; this module imports neither torch nor pyqtgraph. After the first paint an
`EngineLoader` imports them in a background thread; each tab holds a "Loading…" page until
its panel is built: the shown tab's once the engine is loaded, the others when first opened
(or when another panel needs their state). What a user asks for before the engine is loaded
(menu actions, dropped files, files named on the command line) waits in a queue and is done,
in order, once it is. Code that uses `window.playback` and the like directly gets the panel
built on the spot (the engine loaded first, in this thread, when needed).
"""

from __future__ import annotations

import html
import importlib
import importlib.metadata
import logging
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PySide6.QtCore import (
    QByteArray,
    QEvent,
    QObject,
    QSettings,
    Qt,
    QTimer,
    Signal,
    qVersion,
)
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

from diffusion_studio import core
from diffusion_studio.app import dialogs
from diffusion_studio.app.engine_loader import EngineLoader
from diffusion_studio.app.help import GettingStartedDialog
from diffusion_studio.app.icon import app_icon
from diffusion_studio.app.settings import (
    APPLICATION,
    add_recent_file,
    configure_application,
    make_settings,
    recent_files,
    remove_recent_file,
    write_json,
)

if TYPE_CHECKING:
    from diffusion_studio.app.panels.base import Panel
    from diffusion_studio.app.panels.forward_panel import ForwardPanel
    from diffusion_studio.app.panels.playback_panel import PlaybackPanel
    from diffusion_studio.app.panels.sampler_lab_panel import SamplerLabPanel
    from diffusion_studio.app.panels.schedule_panel import SchedulesPanel
    from diffusion_studio.app.panels.training_panel import TrainingPanel
    from diffusion_studio.app.watch_run import WatchRunWindow
    from diffusion_studio.app.worker import JobRunner

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 15.0
DEFAULT_SIZE = (1360, 860)
LOADING_TEXT = "Loading…"
LOADING_STATUS = "Loading the engine…"
READY_STATUS = "Ready. Drop an image, an image folder, a checkpoint or a model folder anywhere."

LICENCES_HTML = """
<p><b>Shipped data</b> (details in resources/README.md):</p>
<ul>
<li>MNIST digits (5,000-image subset): Yann LeCun, Corinna Cortes, Christopher J.C. Burges;
Creative Commons Attribution-Share Alike 3.0 (CC BY-SA 3.0).</li>
<li>Astronaut photograph (Eileen Collins): NASA, public domain.</li>
<li>Coffee photograph: Rachel Michetti / Pikolo Espresso Bar, CC0 1.0 (public domain).</li>
</ul>
"""

PanelName = Literal["schedules", "forward", "training", "playback", "lab"]


@dataclass(frozen=True)
class PanelSpec:
    """A tab: the panel's attribute name, its tab title, where its class lives, its tooltip
    and the shortcut of its main button (refused politely while the engine loads)."""

    name: PanelName
    title: str
    module: str
    class_name: str
    tip: str
    main_action: tuple[str, str] | None = None  # (what, shortcut)


PANELS: tuple[PanelSpec, ...] = (
    PanelSpec(
        "schedules",
        "Schedules",
        "diffusion_studio.app.panels.schedule_panel",
        "SchedulesPanel",
        "Noise schedules: beta_t, alphabar_t = prod alpha_s, SNR",
    ),
    PanelSpec(
        "forward",
        "Forward",
        "diffusion_studio.app.panels.forward_panel",
        "ForwardPanel",
        "The forward process on an image or a 2-D data set, diffusion or flow: x_t at any t",
    ),
    PanelSpec(
        "training",
        "Training",
        "diffusion_studio.app.panels.training_panel",
        "TrainingPanel",
        "Train a small diffusion model and watch its loss and samples",
        ("Start", "Ctrl+Return"),
    ),
    PanelSpec(
        "playback",
        "Playback",
        "diffusion_studio.app.panels.playback_panel",
        "PlaybackPanel",
        "Sample from a model and play the reverse process back",
        ("Sample", "Ctrl+R"),
    ),
    PanelSpec(
        "lab",
        "Sampler Lab",
        "diffusion_studio.app.panels.sampler_lab_panel",
        "SamplerLabPanel",
        "Several samplers side by side from the same noise, and their convergence",
        ("Sample all", "Ctrl+Shift+R"),
    ),
)
PANEL_NAMES: tuple[PanelName, ...] = tuple(spec.name for spec in PANELS)


@dataclass(frozen=True)
class Link:
    """`source.signal` drives `target.slot`, whatever order the two panels are built in.

    `state(source)` is the value a target built after its source takes at once (the source is
    built first for it). None marks an event: a target not built yet is built to receive it.
    """

    source: PanelName
    signal: str
    target: PanelName
    slot: str
    state: Callable[[Any], Any] | None = None
    show: bool = False  # the user asked for it: the target's tab becomes the current one


def _schedule_config(schedules: SchedulesPanel) -> Any:
    return schedules.schedule.config


def _image_path(forward: ForwardPanel) -> str | None:
    return None if forward.image_path is None else str(forward.image_path)


def _playback_model(playback: PlaybackPanel) -> Any:
    return playback.checkpoint


LINKS: tuple[Link, ...] = (
    Link("schedules", "schedule_changed", "forward", "set_schedule", _schedule_config),
    Link("forward", "image_changed", "playback", "set_start_image", _image_path),
    Link("training", "model_trained", "playback", "set_trained_checkpoint"),
    Link("training", "open_in_playback", "playback", "open_trained_checkpoint", show=True),
    Link("playback", "model_changed", "lab", "set_checkpoint", _playback_model),
    Link("playback", "model_changed", "forward", "set_playback_model"),
    Link("lab", "choose_model", "playback", "show_model_choice", show=True),
)

PathKind = Literal["model folder", "image folder", "checkpoint", "image"]


def path_kind(path: Path) -> PathKind | None:
    """What the app opens `path` as, or None (not something it opens). Imports the engine."""
    from diffusion_studio.core.checkpoint import CHECKPOINT_SUFFIX, LEGACY_SUFFIXES
    from diffusion_studio.core.data import IMAGE_SUFFIXES
    from diffusion_studio.core.diffusers_models import find_diffusers_model

    if find_diffusers_model(path) is not None:  # a diffusers model folder (or its file)
        return "model folder"
    if path.is_dir():
        return "image folder"
    suffix = path.suffix.lower()
    if suffix in (CHECKPOINT_SUFFIX, *LEGACY_SUFFIXES):
        return "checkpoint"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return None


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
        from diffusion_studio.app.widgets import (
            format_duration,  # a runner exists: the engine is loaded
        )

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


class LoadingPage(QLabel):
    """What a tab shows until its panel is built."""

    def __init__(self, spec: PanelSpec) -> None:
        super().__init__(LOADING_TEXT)
        self.setObjectName(f"loading-{spec.name}")
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setToolTip(f"The {spec.title} tab appears once the engine is loaded")


class MainWindow(QMainWindow):
    """Diffusion Studio's window: Schedules, Forward, Training, Playback and Sampler Lab tabs.

    `engine_ready` is emitted once the engine is loaded and the shown tab's panel is built
    (run_app then freezes the start-up objects: app.garbage.after_startup).
    """

    engine_ready = Signal()

    def __init__(self, settings: QSettings | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else make_settings()
        self.setWindowTitle(APPLICATION)
        self.setWindowIcon(app_icon())
        self.resize(*DEFAULT_SIZE)
        self.setAcceptDrops(True)
        self._built: dict[PanelName, Panel] = {}
        self._building: set[PanelName] = set()
        self._pending: list[tuple[str, Callable[[], object]]] = []
        self._painted = False
        self._closed = False
        self._getting_started: GettingStartedDialog | None = None
        self._watch_windows: dict[str, WatchRunWindow] = {}  # by resolved folder

        self.tabs = QTabWidget()
        for i, spec in enumerate(PANELS):
            self.tabs.addTab(LoadingPage(spec), spec.title)
            self.tabs.setTabToolTip(i, f"{spec.tip} (Ctrl+{i + 1})")
        self.setCentralWidget(self.tabs)
        self.job_bar = JobStatusBar(self)
        self._build_menus()
        self._loading_actions = self._make_loading_actions()
        self._restore_window()
        self.tabs.currentChanged.connect(self._on_tab_changed)

        self.engine = EngineLoader(self)
        self.engine.loaded.connect(self._on_engine_loaded)
        self.engine.failed.connect(self._on_engine_failed)
        app = QApplication.instance()
        if app is not None:
            app.installEventFilter(self)
        self.statusBar().showMessage(LOADING_STATUS)

    # ------------------------------------------------------------------ panels

    @property
    def schedules(self) -> SchedulesPanel:
        return self.panel("schedules")  # type: ignore[return-value]

    @property
    def forward(self) -> ForwardPanel:
        return self.panel("forward")  # type: ignore[return-value]

    @property
    def training(self) -> TrainingPanel:
        return self.panel("training")  # type: ignore[return-value]

    @property
    def playback(self) -> PlaybackPanel:
        return self.panel("playback")  # type: ignore[return-value]

    @property
    def lab(self) -> SamplerLabPanel:
        return self.panel("lab")  # type: ignore[return-value]

    @property
    def panels(self) -> list[Panel]:
        """All the panels, in tab order (built now where they were not yet)."""
        return self.ensure_all_panels()

    def panel(self, name: PanelName) -> Panel:
        """The panel called `name`, built now (and the engine loaded now) if needed."""
        if name not in self._built:
            self.engine.load_now()
            self._build_panel(name)
        return self._built[name]

    def ensure_all_panels(self) -> list[Panel]:
        """Build every panel not built yet (for tests and scripts); all of them, in tab order."""
        return [self.panel(name) for name in PANEL_NAMES]

    def built_panels(self) -> list[Panel]:
        """The panels built so far, in tab order."""
        return [self._built[name] for name in PANEL_NAMES if name in self._built]

    def is_built(self, name: PanelName) -> bool:
        return name in self._built

    def _build_order(self, name: PanelName) -> list[PanelName]:
        """The panels to build, in order, for `name`: first those whose state it takes."""
        order: list[PanelName] = []

        def visit(panel: PanelName) -> None:
            if panel in order or panel in self._built:
                return
            for link in LINKS:
                if link.target == panel and link.state is not None:
                    visit(link.source)
            order.append(panel)

        visit(name)
        return order

    def _build_panel(self, name: PanelName) -> None:
        """Build the panel `name` (and before it those whose state it takes)."""
        for panel in self._build_order(name):
            self._build_one(panel)

    def _build_one(self, name: PanelName) -> None:
        """Build one panel in its tab, restored from the settings, wired to the panels already
        built; the panels whose state it takes are built already."""
        if name in self._built or name in self._building:
            return
        self._building.add(name)
        try:
            index = PANEL_NAMES.index(name)
            spec = PANELS[index]
            panel_class = getattr(importlib.import_module(spec.module), spec.class_name)
            panel: Panel = panel_class()
            panel.status_message.connect(self.show_status)
            panel.file_used.connect(self.add_recent)
            for runner in panel.runners():
                self.job_bar.track(runner)
            for link in LINKS:
                if link.source == name:
                    getattr(panel, link.signal).connect(partial(self._deliver, link))
            self._built[name] = panel
            try:
                panel.restore_state(self.settings)
            except Exception:  # noqa: BLE001 - a damaged settings file must not stop the app
                log.exception("could not restore the settings of %s", spec.title)
            for link in LINKS:
                if link.target == name and link.state is not None:
                    value = link.state(self._built[link.source])
                    if value is not None:
                        getattr(panel, link.slot)(value)
            self._put_in_tab(index, panel)
        finally:
            self._building.discard(name)

    def _put_in_tab(self, index: int, panel: QWidget) -> None:
        """Replace tab `index`'s loading page by `panel`; the current tab stays current."""
        current = self.tabs.currentIndex()
        page = self.tabs.widget(index)
        tip = self.tabs.tabToolTip(index)
        self.tabs.blockSignals(True)
        self.tabs.removeTab(index)
        self.tabs.insertTab(index, panel, PANELS[index].title)
        self.tabs.setTabToolTip(index, tip)
        self.tabs.setCurrentIndex(current)
        self.tabs.blockSignals(False)
        page.deleteLater()

    def _deliver(self, link: Link, value: object) -> None:
        """A linked signal: to its target when built; an event builds its target first."""
        if link.target not in self._built:
            if link.state is not None:
                return  # the target takes the source's state when it is built
            self._build_panel(link.target)
        target = self._built[link.target]
        getattr(target, link.slot)(value)
        if link.show:
            self.tabs.setCurrentWidget(target)

    def _current_name(self) -> PanelName:
        return PANEL_NAMES[max(0, self.tabs.currentIndex())]

    def _on_tab_changed(self, index: int) -> None:
        if 0 <= index < len(PANELS) and self.engine.ready_now():
            self._build_panel(PANEL_NAMES[index])

    # ------------------------------------------------------------------ the engine

    def _on_engine_loaded(self) -> None:
        """The engine is imported: torch's threads set, the shown tab built, queue run."""
        for action in self._loading_actions:
            self.removeAction(action)
            action.deleteLater()
        self._loading_actions = []
        from diffusion_studio.app.worker import configure_torch_threads

        configure_torch_threads()  # in the GUI thread, before it runs any torch operation
        if not self._closed:
            self._build_in_steps(self._build_order(self._current_name()))

    def _build_in_steps(self, names: list[PanelName]) -> None:
        """Build `names` one per turn of the event loop (the window takes input between
        panels: a restored Playback tab needs three), then say Ready and run the queue."""
        if self._closed:
            return
        if names:
            self._build_one(names[0])
            QTimer.singleShot(0, partial(self._build_in_steps, names[1:]))
            return
        self._build_panel(self._current_name())  # the tab shown now, if it changed meanwhile
        self.show_status(READY_STATUS)
        self.engine_ready.emit()
        if self._pending:
            QTimer.singleShot(0, self._run_pending)

    def _on_engine_failed(self, message: str) -> None:
        text = f"The engine could not be loaded ({message}). Reinstall Diffusion Studio."
        for i in range(self.tabs.count()):
            page = self.tabs.widget(i)
            if isinstance(page, LoadingPage):
                page.setText(text)
        self._pending.clear()
        self._error("Cannot start", text)

    def when_ready(self, what: str, action: Callable[[], object]) -> None:
        """Do `action` now when the engine is loaded, else once it is (in order); `what`
        names it in the status bar meanwhile."""
        if not self._pending and self.engine.ready_now():
            action()
            return
        if self.engine.error is not None:
            self.show_status(f"{what} is not possible: the engine could not be loaded.")
            return
        self._pending.append((what, action))
        waiting = ", ".join(name for name, _ in self._pending)
        self.statusBar().showMessage(f"{LOADING_STATUS} Then: {waiting}.")

    def _run_pending(self) -> None:
        while self._pending and not self._closed:
            _what, action = self._pending.pop(0)
            action()

    def _make_loading_actions(self) -> list[QAction]:
        """Window shortcuts for the panels' main buttons (Sample, Start) while the engine
        loads: they say so in the status bar (removed once the panels can be built)."""
        actions = []
        for spec in PANELS:
            if spec.main_action is None:
                continue
            what, shortcut = spec.main_action
            action = QAction(what, self)
            action.setShortcut(QKeySequence(shortcut))
            action.triggered.connect(partial(self._refuse_while_loading, spec, what))
            self.addAction(action)
            actions.append(action)
        return actions

    def _refuse_while_loading(self, spec: PanelSpec, what: str) -> None:
        if self._current_name() == spec.name:
            self.statusBar().showMessage(
                f"{LOADING_STATUS} {what} on the {spec.title} tab works in a moment."
            )

    # ------------------------------------------------------------------ menus

    def _action(
        self, text: str, slot: Callable[[], object], shortcut=None, tip: str = "", queued=False
    ) -> QAction:
        """A menu action; `queued`: it needs the engine, and waits for it (`when_ready`)."""
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.setStatusTip(tip)
        action.setToolTip(tip)
        if queued:
            name = text.replace("&", "").rstrip("…")
            action.triggered.connect(lambda _checked=False: self.when_ready(name, slot))
        else:
            action.triggered.connect(lambda _checked=False: slot())
        return action

    def _build_menus(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        self.open_image_action = self._action(
            "Open &Image…",
            self.open_image,
            QKeySequence.StandardKey.Open,
            "Show an image on the Forward tab",
            queued=True,
        )
        self.open_folder_action = self._action(
            "Open Image &Folder…",
            self.open_image_folder,
            "Ctrl+Shift+O",
            "Train on a folder of images (Training tab)",
            queued=True,
        )
        self.open_checkpoint_action = self._action(
            "Open &Checkpoint…",
            self.open_checkpoint,
            "Ctrl+Shift+K",
            "Load a trained model for the Playback tab",
            queued=True,
        )
        self.open_model_folder_action = self._action(
            "Open &Model Folder…",
            self.open_model_folder,
            "Ctrl+Shift+M",
            "Load a diffusers model folder (config.json + diffusion_pytorch_model.safetensors, "
            "or a pipeline folder with unet/) for the Playback tab",
            queued=True,
        )
        self.watch_run_action = self._action(
            "&Watch Run…",
            self.watch_run,
            "Ctrl+Shift+W",
            "Follow a training run another process writes (its folder's metrics log): "
            "curves, previews and status update as it runs",
            queued=True,
        )
        self.save_checkpoint_action = self._action(
            "&Save Checkpoint As…",
            lambda: self.training.save_checkpoint_as(),
            QKeySequence.StandardKey.SaveAs,
            "Save the model being trained (or just trained)",
            queued=True,
        )
        self.export_gif_action = self._action(
            "Export &GIF…",
            self.export_gif,
            "Ctrl+E",
            "Save the Forward or Playback animation as a GIF",
            queued=True,
        )
        self.export_plot_action = self._action(
            "Export &Plot…",
            self.export_plot,
            "Ctrl+Shift+E",
            "Save the plots of this tab as PNG or SVG",
            queued=True,
        )
        self.quit_action = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit, "Quit")
        for action in (
            self.open_image_action,
            self.open_folder_action,
            self.open_checkpoint_action,
            self.open_model_folder_action,
        ):
            file_menu.addAction(action)
        file_menu.addAction(self.watch_run_action)
        self.recent_menu = file_menu.addMenu("Recent &Files")
        self.recent_menu.setToolTipsVisible(True)
        self.recent_menu.aboutToShow.connect(self._update_recent_menu)
        file_menu.addSeparator()
        file_menu.addAction(self.save_checkpoint_action)
        file_menu.addAction(self.export_gif_action)
        file_menu.addAction(self.export_plot_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        self.recent_menu.setEnabled(bool(recent_files(self.settings)))  # filled when opened

        view_menu = menu.addMenu("&View")
        for i, spec in enumerate(PANELS):
            view_menu.addAction(
                self._action(
                    spec.title,
                    lambda i=i: self.tabs.setCurrentIndex(i),
                    f"Ctrl+{i + 1}",
                    f"Show the {spec.title} tab",
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
        self.getting_started_action = self._action(
            "&Getting Started",
            self.show_getting_started,
            QKeySequence.StandardKey.HelpContents,
            "A five-minute walk through the four tabs (works offline)",
        )
        help_menu.addAction(self.getting_started_action)
        help_menu.addSeparator()
        help_menu.addAction(
            self._action("&About Diffusion Studio", self.show_about, None, "Versions and licences")
        )

    def _update_recent_menu(self) -> None:
        """The Recent Files menu (filled as it opens, so start-up touches no file); a file or
        folder no longer there is listed, greyed out."""
        self.recent_menu.clear()
        files = recent_files(self.settings)
        for path in files:
            action = self.recent_menu.addAction(Path(path).name)
            if os.path.exists(path):
                action.setToolTip(path)
                action.triggered.connect(lambda _checked=False, p=path: self.open_recent(p))
            else:
                action.setText(f"{Path(path).name} (not found)")
                action.setStatusTip(f"{path} is no longer there")
                action.setEnabled(False)
        if files:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear", self._clear_recent)
        self.recent_menu.setEnabled(bool(files))

    def _clear_recent(self) -> None:
        write_json(self.settings, "recent_files", [])
        self._update_recent_menu()

    def add_recent(self, path: str) -> None:
        """A file a panel used: into Recent Files when the app opens that kind of file (not an
        export such as a CSV table); an image or model also names the window."""
        kind = path_kind(Path(path))
        if kind is None:
            return
        add_recent_file(self.settings, path)
        self._update_recent_menu()
        if kind != "image folder":
            self.setWindowTitle(f"{Path(path).name} — {APPLICATION}")

    def open_recent(self, path: str) -> None:
        """Open a Recent Files entry; one that is gone is dropped from the list, with a word."""
        if not os.path.exists(path):
            remove_recent_file(self.settings, path)
            self._update_recent_menu()
            self.show_status(f"{path} is no longer there; removed from Recent Files.")
            return
        self.when_ready(f"Opening {Path(path).name}", lambda: self.open_path(path))

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

    def watch_run(self) -> None:
        """File > Watch Run…: choose a run's folder and follow its metrics log."""
        folder = dialogs.ask_folder(self, "Watch a training run: its folder", dialogs.RUNS)
        if folder is not None:
            self.open_watch_window(folder)

    def open_watch_window(self, folder: str | os.PathLike[str]) -> WatchRunWindow | None:
        """A window following the run in `folder` (the one already open for it, raised); None
        and one message when the folder holds no metrics log. Loads the engine when needed."""
        self.engine.load_now()
        from diffusion_studio.app.watch_run import WatchRunWindow, run_logs
        from diffusion_studio.core.run_log import RunLogError

        path = Path(folder).expanduser()
        key = str(path.resolve())
        window = self._watch_windows.get(key)
        if window is None:
            try:
                logs = run_logs(path)
            except RunLogError as exc:
                self._error("Cannot watch the run", str(exc))
                return None
            window = WatchRunWindow(path, logs, self)
            window.checkpoint_requested.connect(self._open_watched_checkpoint)
            window.destroyed.connect(lambda _obj=None, k=key: self._watch_windows.pop(k, None))
            self._watch_windows[key] = window
        window.show()
        window.raise_()
        window.activateWindow()
        return window

    def _open_watched_checkpoint(self, path: str) -> None:
        """A Watch Run window's "Open checkpoint in Playback": the usual way a file opens."""
        self.raise_()
        self.activateWindow()
        self.open_path_when_ready(path)

    def export_gif(self) -> None:
        current = self.panel(self._current_name())  # the shown tab's panel, built
        if current is self._built.get("lab"):
            current.export_gif()
            return
        playback = self._built.get("playback")
        if playback is not None and (
            current is playback
            or (current is not self._built.get("forward") and playback.has_frames())
        ):
            self.tabs.setCurrentWidget(playback)
            playback.export_gif()
        else:
            self.tabs.setCurrentWidget(self.forward)
            self.forward.export_gif()

    def export_plot(self) -> None:
        current = self.panel(self._current_name())  # the shown tab's panel, built
        exporter = getattr(current, "export_plot", None)
        if exporter is None:
            self.tabs.setCurrentWidget(self.schedules)
            exporter = self.schedules.export_plot
        exporter()

    def toggle_full_screen(self) -> None:
        self.showNormal() if self.isFullScreen() else self.showFullScreen()

    def show_getting_started(self) -> GettingStartedDialog:
        """Show the Getting Started page (one window; shown again when already open)."""
        dialog = self._getting_started
        if dialog is None:
            dialog = GettingStartedDialog(self)
            dialog.destroyed.connect(lambda: setattr(self, "_getting_started", None))
            self._getting_started = dialog
        dialog.show()
        dialog.raise_()
        return dialog

    def show_about(self) -> None:
        """Versions (read from the installed packages: the engine need not be loaded)."""
        import PySide6

        def version(package: str) -> str:
            try:
                return importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                return "not installed"

        rows = [
            ("Diffusion Studio", core.__version__),
            ("Python", platform.python_version()),
            ("PyTorch", version("torch")),
            ("Qt", qVersion()),
            ("PySide6", PySide6.__version__),
            ("pyqtgraph", version("pyqtgraph")),
            ("NumPy", version("numpy")),
        ]
        table = "".join(f"<tr><td>{k}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
        text = (
            "<h3>Diffusion Studio</h3>"
            "<p>Train small diffusion models and watch them work: the noise schedule, "
            "the forward process x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps with "
            "alphabar_t = prod alpha_s, or flow matching's straight path "
            "x_t = (1 - t) x_0 + t eps, the training loss and the reverse process.</p>"
            f"<table>{table}</table>{LICENCES_HTML}"
        )
        dialogs.show_about(self, "About Diffusion Studio", text)

    # ------------------------------------------------------------------ opening files

    def open_path(self, path: str | os.PathLike[str]) -> bool:
        """Open a file or folder in the panel that fits it. Returns True when it was used.
        Loads the engine first, here, when it is not loaded yet (see `open_path_when_ready`)."""
        path = Path(path).expanduser()
        if not path.exists():
            self._error("Cannot open", f"'{path}' does not exist.")
            return False
        self.engine.load_now()
        kind = path_kind(path)
        if kind in ("model folder", "checkpoint"):
            self.tabs.setCurrentWidget(self.playback)
            return self.playback.load_checkpoint(path)
        if kind == "image folder":
            self.tabs.setCurrentWidget(self.training)
            return self.training.set_data_folder(path)
        if kind == "image":
            self.tabs.setCurrentWidget(self.forward)
            return self.forward.load_image(path)
        from diffusion_studio.core.checkpoint import CHECKPOINT_SUFFIX, LEGACY_SUFFIXES
        from diffusion_studio.core.data import IMAGE_SUFFIXES

        self._error(
            "Cannot open",
            f"'{path.name}' is not an image ({', '.join(IMAGE_SUFFIXES)}), a checkpoint "
            f"({', '.join((CHECKPOINT_SUFFIX, *LEGACY_SUFFIXES))}), a diffusers model folder "
            "or an image folder.",
        )
        return False

    def open_path_when_ready(self, path: str | os.PathLike[str]) -> None:
        """Open `path` once the engine is loaded (at once when it is)."""
        self.when_ready(f"Opening {Path(path).name}", lambda: self.open_path(path))

    def _error(self, title: str, message: str) -> None:
        """One error, one message: a dialog (not repeated in the status bar)."""
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
        elif kind == QEvent.Type.Paint and not self._painted:
            if isinstance(obj, QWidget) and obj.window() is self:
                self._painted = True  # the engine loads once the first paint is done
                QTimer.singleShot(0, self.engine.start)
        return super().eventFilter(obj, event)

    def handle_dropped_paths(self, paths: list[str]) -> None:
        for path in paths:
            self.open_path_when_ready(path)

    # ------------------------------------------------------------------ settings and closing

    def _restore_window(self) -> None:
        s = self.settings
        geometry = s.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        state = s.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        try:
            self.tabs.setCurrentIndex(int(s.value("window/tab", 0)))
        except (TypeError, ValueError):
            pass

    def save_settings(self) -> None:
        """The window's settings and those of every panel built; a panel never built leaves
        its saved settings as they are."""
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("window/tab", self.tabs.currentIndex())
        for panel in self.built_panels():
            panel.save_state(s)
        s.sync()

    def busy_panels(self) -> list[Panel]:
        return [p for p in self.built_panels() if p.busy()]

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
            stopped = all(p.shutdown(CLOSE_TIMEOUT_S) for p in self.built_panels())
            if not stopped:
                log.warning("a job did not stop within %.0f s", CLOSE_TIMEOUT_S)
        self._closed = True
        self._pending.clear()
        for watch_window in list(self._watch_windows.values()):
            watch_window.close()
        self.engine.wait(CLOSE_TIMEOUT_S)  # no import left running when the process exits
        self.save_settings()
        app = QApplication.instance()
        if app is not None:
            app.removeEventFilter(self)
        self.job_bar.timer.stop()
        event.accept()


def make_qt_application() -> QApplication:
    """The QApplication, named (settings and data folders), styled, with the icon."""
    app = QApplication.instance() or QApplication(sys.argv[:1])
    configure_application(app)
    app.setWindowIcon(app_icon())
    if "fusion" in [name.lower() for name in QStyleFactory.keys()]:
        app.setStyle("Fusion")
    return app


def make_application() -> QApplication:
    """`make_qt_application` with torch loaded and its threads set as in the app: one in the
    GUI thread, its default count (the CLI's) in each job's (app.worker.configure_torch_threads).
    For scripts and benchmarks that build the window at once; run_app sets the threads once
    the engine has loaded."""
    app = make_qt_application()
    from diffusion_studio.app.worker import configure_torch_threads

    configure_torch_threads()
    return app


TITLE_BAR_PX = 40  # room left for a window manager's title bar on a small screen


def first_launch_size(available: tuple[int, int]) -> tuple[int, int]:
    """The window's size on a first launch: DEFAULT_SIZE, shrunk to fit a screen whose free
    area (`available`: width, height, without the desktop's panels) is smaller, less a title
    bar (a 1280x720 laptop gets 1280x680: every tab's main buttons stay on screen)."""
    width, height = available
    return min(DEFAULT_SIZE[0], width), min(DEFAULT_SIZE[1], height - TITLE_BAR_PX)


def run_app(paths: list[str]) -> int:
    """Start the GUI, open `paths` (images, image folders, checkpoints) once the engine is
    loaded, run the event loop."""
    from diffusion_studio.app.garbage import after_startup

    app = make_qt_application()
    window = MainWindow()
    screen = window.screen()
    if window.settings.value("window/geometry") is None and screen is not None:
        free = screen.availableGeometry()
        window.resize(*first_launch_size((free.width(), free.height())))
    # once the shown tab is built, the garbage collector leaves the start-up objects alone
    window.engine_ready.connect(lambda: after_startup(window))
    window.show()
    for path in paths:
        window.open_path_when_ready(path)
    code = app.exec()
    if "diffusion_studio.app.worker" in sys.modules:  # the engine was loaded: jobs may have run
        from diffusion_studio.app.worker import wait_for_all_threads

        if not wait_for_all_threads(CLOSE_TIMEOUT_S):
            # A job ignored its cancel flag: leave without destroying a running QThread.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code or 1)
    return int(code)
