"""Where the app keeps its settings and files.

Settings are an INI file through QSettings (organisation / application name below).
Tests redirect them with `QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, tmp)`.
Files the app writes by itself (autosaved checkpoints) go to `data_dir()`: Qt's
AppDataLocation, or the folder in the environment variable DIFFUSION_STUDIO_DATA_DIR.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, QStandardPaths

ORGANIZATION = "DiffusionStudio"
APPLICATION = "Diffusion Studio"
DATA_DIR_ENV = "DIFFUSION_STUDIO_DATA_DIR"
MAX_RECENT = 10


def make_settings() -> QSettings:
    """The app's settings store (INI format, user scope)."""
    return QSettings(
        QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION
    )


def data_dir() -> Path:
    """The folder for autosaved checkpoints and other files the app writes itself (created)."""
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        folder = Path(override).expanduser()
    else:
        location = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
        folder = Path(location) if location else Path.home() / ".diffusion-studio"
        if not location or "Diffusion" not in location:
            folder = folder / "DiffusionStudio"
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
