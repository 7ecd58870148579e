"""What every panel offers the main window, and the plumbing the panels share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import QSplitter, QWidget

from diffusion_studio.app import dialogs
from diffusion_studio.app.settings import read_json, write_json
from diffusion_studio.app.widgets import ErrorLabel, Persistent, set_widget_values, widget_values
from diffusion_studio.app.worker import Job, JobRunner


class Panel(QWidget):
    """Base of the four panels.

    status_message(str): a line for the status bar. file_used(path): a file the user
    opened or saved that the app can open again (the main window adds it to Recent Files;
    exports are not emitted).

    Subclasses set `self.splitter` (its state persists), may set `self.error` (an
    ErrorLabel that `show_problem` fills) and list the widgets whose values persist in
    `persistent_widgets()`.
    """

    title = "Panel"
    status_message = Signal(str)
    file_used = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.splitter: QSplitter | None = None
        self.error: ErrorLabel | None = None
        self._export_target: Path | None = None

    # ------------------------------------------------------------ jobs

    def runners(self) -> list[JobRunner]:
        """The job runners of this panel (the status bar tracks them)."""
        return []

    def busy(self) -> bool:
        return any(r.is_running for r in self.runners())

    def shutdown(self, timeout_s: float) -> bool:
        """Cancel this panel's jobs and wait; True when all ended."""
        ok = True
        for runner in self.runners():
            ok = runner.shutdown(timeout_s) and ok
        return ok

    def make_job_runner(
        self,
        kind: str,
        on_record: Callable[[Any], None],
        on_end: Callable[..., None],
        on_failed: Callable[[str], None],
    ) -> JobRunner:
        """A runner whose records go to `on_record`, whose end (finished or cancelled) goes to
        `on_end` and whose failure message goes to `on_failed`; after any end the buttons are
        updated."""
        runner = JobRunner(kind, self)
        runner.progressed.connect(on_record)
        runner.finished.connect(on_end)
        runner.cancelled.connect(on_end)
        runner.failed.connect(on_failed)
        runner.ended.connect(self._update_buttons)
        return runner

    def _update_buttons(self) -> None:
        """Enable the controls that fit the panel's state (panels with jobs override this)."""

    def make_export_runner(self, kind: str) -> JobRunner:
        """A runner for file exports: when one ends the file is named in the status bar; a
        failure is shown."""
        runner = JobRunner(kind, self)
        runner.finished.connect(self._on_export_finished)
        runner.failed.connect(lambda message: self.report_error("Export", message))
        return runner

    def start_export(self, runner: JobRunner, job: Job, target: Path) -> None:
        """Write `target` (a file or a folder of frames) with `job` in the worker."""
        self._export_target = target
        runner.start(job)

    def _on_export_finished(self, _result: object) -> None:
        if self._export_target is not None:  # not file_used: Recent Files is for inputs
            self.status_message.emit(f"Exported to {self._export_target}")

    # ------------------------------------------------------------ settings

    def persistent_widgets(self) -> dict[str, Persistent]:
        """The widgets whose values are saved with the settings, in the order to restore them."""
        return {}

    def save_state(self, settings: QSettings) -> None:
        if self.splitter is not None:
            settings.setValue(f"{self.key()}/splitter", self.splitter.saveState())
        widgets = self.persistent_widgets()
        if widgets:
            write_json(settings, f"{self.key()}/fields", widget_values(widgets))

    def restore_state(self, settings: QSettings) -> None:
        if self.splitter is not None:
            state = settings.value(f"{self.key()}/splitter")
            if state is not None:
                self.splitter.restoreState(state)
        widgets = self.persistent_widgets()
        if widgets:
            set_widget_values(widgets, read_json(settings, f"{self.key()}/fields", {}))

    def key(self) -> str:
        return type(self).__name__

    # ------------------------------------------------------------ helpers

    def report_error(self, title: str, message: str) -> None:
        """Show a user-causable error in one dialog (one error, one message: not repeated in
        the status bar); the app keeps running."""
        dialogs.show_error(self, title, message)

    def show_problem(self, title: str, message: str) -> None:
        """An error that also stays in the panel's red error line until the next success."""
        if self.error is not None:
            self.error.show_message(message)
        self.report_error(title, message)

    def clear_problem(self) -> None:
        if self.error is not None:
            self.error.show_message("")

    @staticmethod
    def suggest(name: str) -> str:
        return str(Path.home() / name)
