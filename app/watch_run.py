"""File > Watch Run…: follow a training run that another process writes (the CLI, a cluster job).

A run writes `RUN.metrics.jsonl` and `RUN.previews/*.png` beside `RUN.safetensors`
(core.run_log). `RunFollower` (no widgets) reads the log as it grows with a
`core.run_log.MetricsLogReader` and keeps what a learner needs to trust the status line: the
run's header, its last step, how it ended, when the file last grew, damaged lines, a
half-written last line, a rewritten log, a folder or log that went away. `WatchRunWindow` polls
a follower on a timer (only while shown), feeds the Training dashboard's curves and previews,
and opens the run's checkpoint in Playback through the main window (`checkpoint_requested`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QHideEvent, QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from diffusion_studio.app.training_dashboard import TrainingDashboard
from diffusion_studio.core.run_log import (
    LOG_SUFFIX,
    EndRecord,
    LogRecord,
    MetricsLogReader,
    PreviewRecord,
    RunHeader,
    RunLogError,
    StepRecord,
    find_logs,
)

POLL_MS = 500  # how often the window reads the log
STALE_S = 120.0  # no new bytes for this long: the run may have stopped
NOTE_S = 10.0  # how long "the log was rewritten" stays in the status line
HEAD_BYTES = 256  # a log that no longer starts with these bytes was replaced by a new run
DEFAULT_TIMESTEPS = 1000  # the dashboard's T until a header names it
CLOSE_TIMEOUT_S = 15.0  # closing waits this long for a GIF export to stop

END_WORDS = {"finished": "Finished", "stopped": "Stopped", "failed": "Failed"}


def run_logs(folder: str | os.PathLike[str]) -> list[Path]:
    """The metrics logs in `folder`, newest first; RunLogError with a message a person can act
    on when the folder is not there or holds none."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise RunLogError(f"'{root}' does not exist.")
    logs = find_logs(root)
    if not logs:
        raise RunLogError(
            f"'{root}' holds no metrics log (RUN{LOG_SUFFIX}). A training run started with "
            "`diffusion-studio train` writes one beside its checkpoint: choose that folder."
        )
    return logs


def how_long(seconds: float) -> str:
    """12 -> '12 s', 130 -> '2 min', 7300 -> '2 h 1 min'."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def header_facts(header: RunHeader) -> str:
    """The header's facts in one line: objective, T, data, processes, steps, batch, start."""
    config = header.config if isinstance(header.config, dict) else {}
    objective = header.objective
    if header.objective == "diffusion" and config.get("prediction_type"):
        objective += f" ({config['prediction_type']} prediction)"
    if config.get("max_steps"):
        steps = f"{config['max_steps']} steps"
    elif config.get("max_minutes"):
        steps = f"{config['max_minutes']:g} min"
    else:
        steps = "no step limit"
    if header.start_step:
        steps += f", resumed at step {header.start_step}"
    processes = "1 process" if header.world_size == 1 else f"{header.world_size} processes"
    started = datetime.fromtimestamp(header.started).strftime("%Y-%m-%d %H:%M")
    parts = [
        f"Objective: {objective}",
        f"T = {header.num_timesteps}",
        f"data: {config.get('data', '?')}",
        processes,
        steps,
    ]
    if config.get("batch_size"):
        parts.append(f"batch {config['batch_size']}")
    parts += [f"started {started}", f"checkpoint: {header.checkpoint}"]
    return " · ".join(parts)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def usable(record: LogRecord) -> bool:
    """False for a line that parsed but holds values of the wrong type (a damaged or foreign
    writer): the window never shows such a record."""
    if isinstance(record, RunHeader):
        return (
            isinstance(record.objective, str)
            and _is_int(record.num_timesteps)
            and record.num_timesteps > 0
            and isinstance(record.config, dict)
            and isinstance(record.checkpoint, str)
            and _is_int(record.t_bins)
            and _is_int(record.world_size)
            and _is_int(record.start_step)
            and isinstance(record.started, (int, float))
        )
    if isinstance(record, StepRecord):
        return _is_int(record.step) and all(
            v is None or isinstance(v, (int, float)) for v in record.loss_by_t
        )
    if isinstance(record, PreviewRecord):
        return _is_int(record.step) and isinstance(record.png, str)
    return (
        isinstance(record, EndRecord)
        and isinstance(record.status, str)
        and _is_int(record.step)
        and isinstance(record.message, str)
    )


@dataclass(frozen=True)
class FollowResult:
    """One poll: the new records, in order, and whether the log was rewritten (what was
    shown must be cleared before they are)."""

    records: list[LogRecord]
    restarted: bool = False


class RunFollower:
    """Follows one metrics log and says, in one line, where its run stands.

    `clock` (monotonic seconds) and `wall_clock` (seconds since the epoch) are injectable for
    tests. The time of the last line is when the file was last seen to grow (at the first
    read: its modification time), so a finished run's log opened later is not "running".
    """

    def __init__(
        self,
        log: str | os.PathLike[str],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = Path(log)
        self.folder = self.log.parent
        self.clock = clock
        self.wall_clock = wall_clock
        self.reader = MetricsLogReader(self.log)
        self.head = b""  # the log's first bytes as read (its header: the run's start time)
        self.problem: str | None = None
        self.last_growth: float | None = None
        self.rewritten_at: float | None = None
        self.missing_previews = 0
        self.skipped_records = 0  # read, but not usable (e.g. a step with other t bins)
        self._clear()

    def _clear(self) -> None:
        self.first_header: RunHeader | None = None
        self.header: RunHeader | None = None  # the latest part's (a resumed run adds one)
        self.last_step: int | None = None
        self.end: EndRecord | None = None

    @property
    def checkpoint_path(self) -> Path | None:
        """The checkpoint the header names, in the log's folder (None before a header)."""
        return None if self.header is None else self.folder / self.header.checkpoint

    def poll(self) -> FollowResult:
        """Read what was appended since the last poll; never raises for a missing folder or
        file, a damaged line or a half-written one (they show in `status()`)."""
        now = self.clock()
        if not self.folder.is_dir():
            self.problem = f"The folder {self.folder} no longer exists."
            return FollowResult([])
        if not self.log.is_file():
            self.problem = f"The metrics log {self.log.name} is no longer there."
            return FollowResult([])
        offset, first = self.reader.offset, self.last_growth is None
        try:
            restarted = not self._same_file()
            if restarted:
                self.reader = MetricsLogReader(self.log)
            records = self.reader.poll()
            if self.reader.restarted:  # it shrank: read afresh (and count afresh)
                restarted, self.reader = True, MetricsLogReader(self.log)
                records = self.reader.poll()
            self._read_head()
            if first:  # the file's own age: a log opened after its run ended is not "running"
                age = self.wall_clock() - self.log.stat().st_mtime
        except (RunLogError, OSError) as exc:
            self.problem = str(exc)
            return FollowResult([])
        self.problem = None
        if restarted:
            self.rewritten_at = now
            self.missing_previews = self.skipped_records = 0
            self._clear()
        if first:
            self.last_growth = now - max(0.0, age)
        elif restarted or self.reader.offset != offset:
            self.last_growth = now
        kept: list[LogRecord] = []
        for record in records:
            if not usable(record) or (
                isinstance(record, StepRecord)
                and self.header is not None
                and len(record.loss_by_t) != self.header.t_bins
            ):
                self.skipped_records += 1
                continue
            kept.append(record)
            if isinstance(record, RunHeader):
                self.first_header = self.first_header or record
                self.header = record
                self.end = None
                self.last_step = record.start_step if self.last_step is None else self.last_step
            elif isinstance(record, StepRecord):
                self.last_step = record.step
            elif isinstance(record, EndRecord):
                self.end = record
                self.last_step = record.step
        return FollowResult(kept, restarted)

    def _same_file(self) -> bool:
        """False when the log no longer starts as it did: a new run replaced it (a shorter
        file, or one that grew past what was read before the next poll)."""
        if not self.head:
            return True
        with open(self.log, "rb") as f:
            return f.read(len(self.head)) == self.head

    def _read_head(self) -> None:
        if len(self.head) < HEAD_BYTES and self.reader.offset > len(self.head):
            with open(self.log, "rb") as f:
                self.head = f.read(min(HEAD_BYTES, self.reader.offset))

    def status(self) -> str:
        """One line: how the run stands, then what the reader met (damaged lines skipped, a
        half-written line waited for, a rewritten log)."""
        now = self.clock()
        if self.problem is not None:
            return self.problem
        if self.end is not None:
            word = END_WORDS.get(self.end.status, self.end.status.capitalize())
            main = f"{word} at step {self.end.step}"
            if self.end.message:
                main += f": {self.end.message}"
        elif self.last_growth is None:
            main = "Not read yet"
        else:
            idle = now - self.last_growth
            if idle >= STALE_S:
                main = f"No new lines for {how_long(idle)} (the run may have stopped)"
            elif self.header is None:
                main = f"Waiting for the run's first line (file changed {how_long(idle)} ago)"
            else:
                step = "no step yet" if self.last_step is None else f"step {self.last_step}"
                main = f"Running — {step}, last line {how_long(idle)} ago"
        notes = [main]
        if self.reader.bad_lines + self.skipped_records:
            n = self.reader.bad_lines + self.skipped_records
            notes.append(f"{n} damaged line{'s' if n != 1 else ''} skipped")
        if self.missing_previews:
            n = self.missing_previews
            notes.append(f"{n} preview{'s' if n != 1 else ''} could not be read")
        if self.reader.has_partial_line:
            notes.append("waiting for a half-written line")
        if self.rewritten_at is not None and now - self.rewritten_at < NOTE_S:
            notes.append("the log was rewritten; reading it again")
        return "; ".join(notes)


def read_preview(path: Path) -> np.ndarray:
    """A preview PNG as a uint8 array (H, W) or (H, W, 3); RunLogError when unreadable."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise RunLogError(f"cannot read the preview '{path}': {exc}") from exc


class WatchRunWindow(QDialog):
    """A window following a run folder's metrics log (the newest; a choice when several).

    `checkpoint_requested(path)`: the user asked to open the run's checkpoint in Playback.
    """

    checkpoint_requested = Signal(str)

    def __init__(
        self, folder: str | os.PathLike[str], logs: list[Path], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.folder = Path(folder)
        self.setWindowTitle(f"Watch Run — {self.folder.name or self.folder}")
        self.setModal(False)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.resize(1100, 640)  # fits a 1280x720 screen
        self.follower: RunFollower | None = None
        self.logs: list[Path] = []

        self.log_choice = QComboBox()
        self.log_choice.setToolTip(
            "The run's metrics log (several runs in one folder: newest first)"
        )
        self.log_choice.currentIndexChanged.connect(self._on_log_chosen)
        self.facts = QLabel()
        self.facts.setWordWrap(True)
        self.facts.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.facts.setToolTip("What the run's header says")
        self.status = QLabel()
        self.status.setObjectName("watch-status")
        self.status.setWordWrap(True)
        self.status.setStyleSheet("font-weight: bold;")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setToolTip("How the run stands, read from its log every half second")
        self.open_button = QPushButton("Open checkpoint in Playback")
        self.open_button.setToolTip("Load the run's latest saved checkpoint in the Playback tab")
        self.open_button.clicked.connect(self.open_checkpoint)
        self.dashboard = TrainingDashboard()
        self.note = QLabel()
        self.note.setToolTip("The dashboard's last message (exports)")
        self.dashboard.status_message.connect(self.note.setText)

        top = QHBoxLayout()
        top.addWidget(QLabel("Log:"))
        top.addWidget(self.log_choice, 1)
        top.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.facts)
        layout.addWidget(self.status)
        layout.addWidget(self.dashboard, 1)
        layout.addWidget(self.note)

        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self._set_logs(logs)  # follows the newest (and reads it once)

    # ------------------------------------------------------------------ logs

    def _set_logs(self, logs: list[Path]) -> None:
        """Fill the log choice (newest first), keeping the log followed now chosen."""
        current = self.follower.log if self.follower is not None else None
        self.logs = list(logs)
        self.log_choice.blockSignals(True)
        self.log_choice.clear()
        for log in logs:
            self.log_choice.addItem(log.name[: -len(LOG_SUFFIX)], str(log))
        if current is not None and current not in logs:
            self.log_choice.addItem(f"{current.name[: -len(LOG_SUFFIX)]} (gone)", str(current))
        index = self.log_choice.findData(str(current)) if current is not None else 0
        self.log_choice.setCurrentIndex(max(index, 0))
        self.log_choice.blockSignals(False)
        if current is None and logs:
            self.follow(logs[0])

    def _on_log_chosen(self, _index: int = 0) -> None:
        path = self.log_choice.currentData()
        if path is not None and (self.follower is None or Path(path) != self.follower.log):
            self.follow(Path(path))

    def follow(self, log: Path) -> None:
        """Follow `log` from its start (the dashboard cleared)."""
        self.follower = RunFollower(log)
        self.dashboard.reset(DEFAULT_TIMESTEPS)
        self.facts.setText("")
        self.poll()

    # ------------------------------------------------------------------ polling

    def poll(self) -> None:
        """Read what the run appended and show it; the status line says what was met."""
        follower = self.follower
        if follower is None:
            return
        result = follower.poll()
        if result.restarted:
            self.dashboard.reset(DEFAULT_TIMESTEPS)
            self.facts.setText("")
        for record in result.records:
            try:
                self._show(follower, record)
            except (RunLogError, TypeError, ValueError, OverflowError):
                follower.skipped_records += 1  # a line that parsed but holds nonsense
        if follower.problem is None and self.folder.is_dir():
            try:
                logs = find_logs(self.folder)
            except RunLogError:
                logs = []
            if logs and set(logs) != set(self.logs):
                self._set_logs(logs)
        self.status.setText(follower.status())
        path = follower.checkpoint_path
        saved = path is not None and path.is_file()
        self.open_button.setEnabled(saved)
        if saved:
            self.open_button.setToolTip(f"Load {path} in the Playback tab")
        elif path is not None:
            self.open_button.setToolTip(f"The run has not saved {path.name} yet")

    def _show(self, follower: RunFollower, record: LogRecord) -> None:
        if isinstance(record, StepRecord):
            self.dashboard.add_step(record)
        elif isinstance(record, PreviewRecord):
            try:
                picture = read_preview(follower.folder / record.png)
            except RunLogError:
                follower.missing_previews += 1
            else:
                self.dashboard.add_preview(record.step, picture)
        elif isinstance(record, RunHeader):
            if record is follower.first_header:
                self.dashboard.reset(int(record.num_timesteps), record.objective)
            self.facts.setText(header_facts(record))

    def open_checkpoint(self) -> None:
        """Ask the main window to open the run's checkpoint in Playback."""
        path = self.follower.checkpoint_path if self.follower is not None else None
        if path is not None:
            self.checkpoint_requested.emit(str(path))

    # ------------------------------------------------------------------ showing and closing

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt override)
        super().showEvent(event)
        if not self.timer.isActive():
            self.poll()
            self.timer.start()

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 (Qt override)
        if not event.spontaneous():  # closed (not minimized): stop reading
            self.timer.stop()
        super().hideEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt override)
        self.timer.stop()
        if not self.dashboard.shutdown(CLOSE_TIMEOUT_S):  # a GIF export still writing
            event.ignore()
            return
        super().closeEvent(event)
