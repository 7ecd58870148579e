"""What every panel offers the main window."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import QSplitter, QWidget

from app import dialogs
from app.worker import JobRunner


class Panel(QWidget):
    """Base of the four panels.

    status_message(str): a line for the status bar. file_used(path): a file the user
    opened or saved (the main window adds it to Recent Files).
    """

    title = "Panel"
    status_message = Signal(str)
    file_used = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.splitter: QSplitter | None = None

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

    # ------------------------------------------------------------ settings

    def save_state(self, settings: QSettings) -> None:
        if self.splitter is not None:
            settings.setValue(f"{self.key()}/splitter", self.splitter.saveState())

    def restore_state(self, settings: QSettings) -> None:
        if self.splitter is not None:
            state = settings.value(f"{self.key()}/splitter")
            if state is not None:
                self.splitter.restoreState(state)

    def key(self) -> str:
        return type(self).__name__

    # ------------------------------------------------------------ helpers

    def report_error(self, title: str, message: str) -> None:
        """Show a user-causable error; the app keeps running."""
        self.status_message.emit(message)
        dialogs.show_error(self, title, message)

    @staticmethod
    def suggest(name: str) -> str:
        return str(Path.home() / name)
