"""A plain-text progress bar for the CLI (no Qt, no extra dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float | None) -> str:
    """1:02:03 / 2:03 / '?' for unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """Redraws one line on a terminal; on a pipe or file prints a line every `interval_s`."""

    def __init__(
        self, label: str, stream: TextIO | None = None, width: int = 28, interval_s: float = 5.0
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval_s = interval_s
        self.is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_draw = 0.0
        self._last_line = ""

    def update(self, fraction: float, text: str = "", force: bool = False) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        now = time.monotonic()
        min_gap = 0.1 if self.is_tty else self.interval_s
        if not force and now - self._last_draw < min_gap:
            return
        self._last_draw = now
        filled = int(round(fraction * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.label} [{bar}] {fraction * 100:5.1f}% {text}"
        if self.is_tty:
            padding = " " * max(0, len(self._last_line) - len(line))
            self.stream.write("\r" + line + padding)
        else:
            self.stream.write(line + "\n")
        self._last_line = line
        self.stream.flush()

    def close(self) -> None:
        if self.is_tty and self._last_line:
            self.stream.write("\n")
            self.stream.flush()
