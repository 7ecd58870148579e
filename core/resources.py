"""Find files shipped in `resources/`, from a checkout, an installed wheel or a bundle.

One helper so that nothing else builds paths from the current directory.
"""

from __future__ import annotations

import sys
from importlib import resources as importlib_resources
from pathlib import Path


def resources_dir() -> Path:
    """The folder that holds the shipped resources.

    Order: a PyInstaller bundle (`sys._MEIPASS/resources`), then the `resources`
    package wherever Python imports it from (checkout or installed wheel).
    """
    bundle_root = getattr(sys, "_MEIPASS", None)
    if bundle_root is not None:
        candidate = Path(bundle_root) / "resources"
        if candidate.is_dir():
            return candidate
    return Path(str(importlib_resources.files("diffusion_studio.resources")))


def resource_path(*parts: str) -> Path:
    """Path of a shipped resource, e.g. `resource_path("data", "digits.npz")`.

    Raises FileNotFoundError with the full path when the file is missing.
    """
    path = resources_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"shipped resource not found: {path}")
    return path
