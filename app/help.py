"""Help > Getting Started: an offline page (resources/help/getting-started.html) that walks a
newcomer through the four tabs in a few minutes."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

GETTING_STARTED = ("help", "getting-started.html")


def getting_started_html() -> str:
    """The page's HTML, from the shipped resources."""
    from diffusion_studio.core.resources import resource_path

    return resource_path(*GETTING_STARTED).read_text(encoding="utf-8")


class GettingStartedDialog(QDialog):
    """The Getting Started page in a window of its own (not modal: the app stays usable)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Getting Started — Diffusion Studio")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        self.browser.setHtml(getting_started_html())
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        layout.addWidget(buttons)
        self.resize(720, 640)
