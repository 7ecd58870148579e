"""The application icon (Qt only: the window shows it before the engine is loaded)."""

from __future__ import annotations

import logging

from PySide6.QtGui import QIcon

ICON_SIZES = (16, 32, 48, 64, 128, 256, 512)

log = logging.getLogger(__name__)


def app_icon() -> QIcon:
    """The application icon from resources/icons (every size shipped); a null QIcon when the
    icons are missing (the window then has the platform's default icon)."""
    from diffusion_studio.core.resources import resource_path

    icon = QIcon()
    for size in ICON_SIZES:
        try:
            path = resource_path("icons", f"diffusion-studio-{size}.png")
        except FileNotFoundError:
            continue
        icon.addFile(str(path))
    if icon.isNull():
        log.warning("no application icon found in resources/icons")
    return icon
