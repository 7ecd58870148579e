"""Atomic file writes, shared by exports and checkpoints.

A file is written to a temporary file in the target's folder, flushed and fsynced, then
`os.replace`d over the target: a crash, a full disk or a kill at any moment leaves either the
old complete file or the new complete file, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from diffusion_studio.core.errors import DiffusionStudioError


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], None],
    error: type[DiffusionStudioError],
) -> Path:
    """Write `path` through `write(file)` atomically; OSErrors become `error` naming the path.

    The new file keeps the old file's permission bits (0o644 for a new file). On any failure the
    temporary file is removed and the old file is untouched.
    """
    target = Path(path).expanduser()
    folder = target.parent
    if not folder.is_dir():
        raise error(
            f"cannot write '{target}': the folder '{folder}' does not exist. "
            "Create it or choose another location."
        )
    if target.is_dir():
        raise error(f"cannot write '{target}': it is a folder. Choose a file name.")
    try:
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o644
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise error(
            f"cannot write '{target}': {exc.strerror or exc}. Choose a folder you can write to."
        ) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise error(
            f"cannot write '{target}': {exc.strerror or exc}. Check the free disk space and "
            "permissions; the previous file, if any, is unchanged."
        ) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return target
