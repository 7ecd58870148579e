"""Where the app keeps its settings and files.

Settings are an INI file through QSettings: `<config dir>/diffusion-studio/settings.ini`
(e.g. ~/.config/diffusion-studio/settings.ini). Tests redirect them with
`QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, tmp)`.
Files the app writes by itself (autosaved checkpoints) go to `data_dir()`: the folder in the
environment variable DIFFUSION_STUDIO_DATA_DIR, or else `<data dir>/diffusion-studio`
(~/.local/share/diffusion-studio on Linux, ~/Library/Application Support/diffusion-studio on
macOS, %APPDATA%/diffusion-studio on Windows): Qt's AppDataLocation once
`configure_application` has named the application (before that, <generic data
dir>/diffusion-studio, the same folder on Linux and macOS).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, QSettings, QStandardPaths
from PySide6.QtGui import QGuiApplication

APP_ID = "diffusion-studio"  # folder names, the desktop file, the settings file's folder
APPLICATION = "Diffusion Studio"  # what people read: window title, About
DATA_DIR_ENV = "DIFFUSION_STUDIO_DATA_DIR"
MAX_RECENT = 10


def configure_application(app: QCoreApplication) -> None:
    """Name the application so that Qt's per-user locations end in `diffusion-studio`.

    No organisation name: Qt would put it in front ("<org>/<app>").
    """
    app.setOrganizationName("")
    app.setOrganizationDomain("")
    app.setApplicationName(APP_ID)
    if isinstance(app, QGuiApplication):
        app.setApplicationDisplayName(APPLICATION)
        app.setDesktopFileName(APP_ID)


def make_settings() -> QSettings:
    """The app's settings store (INI format, user scope): <config dir>/diffusion-studio/settings.ini."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, APP_ID, "settings")


def data_dir() -> Path:
    """The folder for autosaved checkpoints and other files the app writes itself (created)."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        folder = Path(override).expanduser()
    else:
        writable = QStandardPaths.writableLocation
        if QCoreApplication.applicationName() == APP_ID:
            location = writable(QStandardPaths.StandardLocation.AppDataLocation)
        else:  # not configured (a test, a script): <generic data dir>/diffusion-studio
            location = writable(QStandardPaths.StandardLocation.GenericDataLocation)
            location = str(Path(location) / APP_ID) if location else ""
        folder = Path(location) if location else Path.home() / f".{APP_ID}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def checkpoints_dir() -> Path:
    folder = data_dir() / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def read_json(settings: QSettings, key: str, default: Any) -> Any:
    """A JSON value stored under `key` (robust to a damaged settings file)."""
    raw = settings.value(key)
    if raw is None:
        return default
    try:
        return json.loads(str(raw))
    except (TypeError, ValueError):
        return default


def write_json(settings: QSettings, key: str, value: Any) -> None:
    settings.setValue(key, json.dumps(value))


def recent_files(settings: QSettings) -> list[str]:
    value = read_json(settings, "recent_files", [])
    return (
        [str(v) for v in value if isinstance(v, str)][:MAX_RECENT]
        if isinstance(value, list)
        else []
    )


def add_recent_file(settings: QSettings, path: str | os.PathLike[str]) -> list[str]:
    """Put `path` first in the recent-files list (no duplicates, at most MAX_RECENT)."""
    text = str(Path(path).expanduser().resolve())
    files = [text] + [f for f in recent_files(settings) if f != text]
    files = files[:MAX_RECENT]
    write_json(settings, "recent_files", files)
    return files


def remove_recent_file(settings: QSettings, path: str | os.PathLike[str]) -> list[str]:
    """Drop `path` from the recent-files list."""
    text = str(path)
    files = [f for f in recent_files(settings) if f != text]
    write_json(settings, "recent_files", files)
    return files
