"""A training run's metrics log: JSON lines beside its checkpoint, previews as PNG files.

For a run saved to `RUN.safetensors` the log is `RUN.metrics.jsonl` and the previews are
`RUN.previews/step-0000120.png`, in the checkpoint's folder. Each line is one JSON object with
a "kind":

    {"kind": "run", ...RunHeader}      at the start of a run and of each resumed part
    {"kind": "step", ...StepRecord}    after every optimizer step
    {"kind": "preview", ...}           after a preview PNG was written (atomically, first)
    {"kind": "end", "status": ..., "message": ..., "step": ...}   finished | stopped | failed

Lines are appended whole (one `write` of a complete line to a file opened for appending,
flushed), so a reader that follows the file (`MetricsLogReader`) sees complete lines, and at
worst a half-written last line, which it keeps for its next read. The Training panel's
dashboard, File > Watch Run… and the CLI all use these records (`StepRecord`, `LossHeatmap`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffusion_studio.core.errors import DiffusionStudioError
from diffusion_studio.core.export import make_grid, render_points, save_png, to_uint8_images

LOG_SUFFIX = ".metrics.jsonl"
PREVIEW_SUFFIX = ".previews"
FORMAT_VERSION = 1
# Loss by t: the per-sample losses of a step averaged in T_BINS equal bins of t (0..T).
T_BINS = 10
# At most this many step columns in a LossHeatmap: when full, neighbouring columns merge.
HEATMAP_MAX_COLUMNS = 256


class RunLogError(DiffusionStudioError):
    """A metrics log that cannot be written or read (named in the message)."""


def metrics_log_path(checkpoint_path: str | os.PathLike[str]) -> Path:
    """`RUN.metrics.jsonl` beside `RUN.safetensors`."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + LOG_SUFFIX)


def preview_folder(checkpoint_path: str | os.PathLike[str]) -> Path:
    """`RUN.previews/` beside `RUN.safetensors`."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + PREVIEW_SUFFIX)


def find_logs(folder: str | os.PathLike[str]) -> list[Path]:
    """The metrics logs in `folder`, newest (last modified) first."""
    root = Path(folder)
    if not root.is_dir():
        raise RunLogError(f"'{root}' is not a folder")
    logs = [p for p in root.glob("*" + LOG_SUFFIX) if p.is_file()]
    return sorted(logs, key=lambda p: p.stat().st_mtime, reverse=True)


# ----------------------------------------------------------------------------- records


def loss_by_t_bins(
    timesteps: np.ndarray, losses: np.ndarray, num_timesteps: int, bins: int = T_BINS
) -> list[float | None]:
    """Mean loss of the samples in each of `bins` equal bins of t in [0, num_timesteps)
    (None for a bin with no sample). timesteps: (B,) indices or flow's T t; losses: (B,)."""
    t = np.asarray(timesteps, dtype=np.float64).reshape(-1)
    values = np.asarray(losses, dtype=np.float64).reshape(-1)
    which = np.clip((t * bins / num_timesteps).astype(np.int64), 0, bins - 1)
    sums = np.bincount(which, weights=values, minlength=bins)
    counts = np.bincount(which, minlength=bins)
    return [float(s / c) if c else None for s, c in zip(sums, counts)]


@dataclass(frozen=True)
class RunHeader:
    """What a log's reader needs before the steps: the objective, T, the t bins, the
    training settings (TrainConfig.to_dict()), the data-parallel world size, the checkpoint's
    file name, the wall-clock start (seconds since the epoch) and the step it starts from."""

    objective: str
    num_timesteps: int
    config: dict[str, Any]
    checkpoint: str
    t_bins: int = T_BINS
    world_size: int = 1
    started: float = field(default_factory=time.time)
    start_step: int = 0
    version: int = FORMAT_VERSION


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step: the objective's loss, learning rate, gradient norm (before
    clipping), images per second, training seconds so far, and the loss in each t bin."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    images_per_s: float
    elapsed_s: float
    loss_by_t: tuple[float | None, ...]


@dataclass(frozen=True)
class PreviewRecord:
    """A preview written to `png` (relative to the log's folder) at `step`."""

    step: int
    png: str
    final: bool = False


@dataclass(frozen=True)
class EndRecord:
    """How a run (or a part of it) ended: "finished", "stopped" or "failed"."""

    status: str
    step: int
    message: str = ""


LogRecord = RunHeader | StepRecord | PreviewRecord | EndRecord
_KINDS: dict[str, type] = {
    "run": RunHeader,
    "step": StepRecord,
    "preview": PreviewRecord,
    "end": EndRecord,
}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def step_record(progress: Any, num_timesteps: int, bins: int = T_BINS) -> StepRecord:
    """The record of a `core.training.TrainProgress`."""
    return StepRecord(
        step=int(progress.step),
        loss=float(progress.loss),
        lr=float(progress.lr),
        grad_norm=float(progress.grad_norm),
        images_per_s=float(progress.samples_per_s),
        elapsed_s=float(progress.elapsed_s),
        loss_by_t=tuple(loss_by_t_bins(progress.timesteps, progress.losses, num_timesteps, bins)),
    )


def encode(record: LogRecord) -> str:
    """One JSON line (with its newline); non-finite numbers are written as null."""
    data = {"kind": _KIND_OF[type(record)], **asdict(record)}
    for key, value in data.items():
        if isinstance(value, float):
            data[key] = _finite_or_none(value)
        elif isinstance(value, tuple):
            data[key] = [_finite_or_none(v) if isinstance(v, float) else v for v in value]
    return json.dumps(data, allow_nan=False, separators=(",", ":")) + "\n"


def decode(line: str) -> LogRecord:
    """The record of one JSON line (RunLogError for anything else)."""
    try:
        data = json.loads(line)
        kind = data.pop("kind")
        cls = _KINDS[kind]
        if cls is StepRecord:
            data["loss_by_t"] = tuple(data["loss_by_t"])
            for key in ("loss", "lr", "grad_norm", "images_per_s", "elapsed_s"):
                data[key] = math.nan if data[key] is None else float(data[key])
        return cls(**data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RunLogError(f"not a metrics record: {line[:80]!r} ({exc})") from exc


# ----------------------------------------------------------------------------- writing


def preview_picture(samples: np.ndarray) -> np.ndarray:
    """A preview as one uint8 picture: a grid of images (N, C, H, W) in [-1, 1], or a
    256-pixel scatter of points (N, 2)."""
    array = np.asarray(samples)
    if array.ndim == 2 and array.shape[1] == 2:
        return render_points(array)
    return make_grid(to_uint8_images(array))


class MetricsLogWriter:
    """Appends records to a run's metrics log and writes its preview PNGs.

    Opening appends a RunHeader (a resumed run continues the same log). Every method writes
    one whole line and flushes it; OSErrors become RunLogError naming the file.
    """

    def __init__(self, checkpoint_path: str | os.PathLike[str], header: RunHeader) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.path = metrics_log_path(self.checkpoint_path)
        self.previews = preview_folder(self.checkpoint_path)
        try:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        except OSError as exc:
            raise RunLogError(f"cannot write the metrics log '{self.path}': {exc}") from exc
        self.write(header)

    def write(self, record: LogRecord) -> None:
        line = encode(record)
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            raise RunLogError(f"cannot write the metrics log '{self.path}': {exc}") from exc

    def preview(self, step: int, samples: np.ndarray, final: bool = False) -> Path:
        """Write the preview's PNG (atomically), then its line. Returns the PNG's path."""
        try:
            self.previews.mkdir(exist_ok=True)
        except OSError as exc:
            raise RunLogError(f"cannot create '{self.previews}': {exc}") from exc
        png = self.previews / f"step-{step:07d}.png"
        save_png(png, preview_picture(samples))
        self.write(PreviewRecord(step, f"{self.previews.name}/{png.name}", final))
        return png

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- reading


class MetricsLogReader:
    """Follows a metrics log as another process writes it.

    `poll()` returns the records of the lines completed since the last call. A half-written
    last line waits for the next call; a damaged complete line is skipped and counted in
    `bad_lines`. A file that shrank (rewritten) is read again from the start (`restarted`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0
        self.pending = b""
        self.bad_lines = 0
        self.restarted = False

    def poll(self) -> list[LogRecord]:
        try:
            size = self.path.stat().st_size
            if size < self.offset:  # truncated or replaced: start again
                self.offset, self.pending, self.restarted = 0, b"", True
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError as exc:
            raise RunLogError(f"cannot read the metrics log '{self.path}': {exc}") from exc
        self.offset += len(chunk)
        data = self.pending + chunk
        lines = data.split(b"\n")
        self.pending = lines.pop()  # b"" after a complete last line
        records: list[LogRecord] = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                records.append(decode(raw.decode("utf-8")))
            except (RunLogError, UnicodeDecodeError):
                self.bad_lines += 1
        return records

    @property
    def has_partial_line(self) -> bool:
        return bool(self.pending.strip())


def read_log(path: str | os.PathLike[str]) -> list[LogRecord]:
    """Every complete record of a metrics log."""
    return MetricsLogReader(path).poll()


# ----------------------------------------------------------------------------- the heatmap


class LossHeatmap:
    """Mean loss per (t bin, window of steps) over a run: the loss-against-t scatter's history.

    Columns are windows of `stride` steps; when more than `max_columns` exist, neighbouring
    windows merge and the stride doubles, so a long run keeps a bounded, evenly spaced map.
    """

    def __init__(self, bins: int = T_BINS, max_columns: int = HEATMAP_MAX_COLUMNS) -> None:
        self.bins = bins
        self.max_columns = max_columns
        self.stride = 1
        self._sums: list[np.ndarray] = []  # per column: (bins,) sums
        self._counts: list[np.ndarray] = []  # per column: (bins,) counts
        self._first_step: int | None = None

    def clear(self) -> None:
        self.__init__(self.bins, self.max_columns)  # type: ignore[misc]

    def add(self, record: StepRecord) -> None:
        if len(record.loss_by_t) != self.bins:
            raise RunLogError(f"a record with {len(record.loss_by_t)} t bins, expected {self.bins}")
        if self._first_step is None:
            self._first_step = record.step
        column = (record.step - self._first_step) // self.stride
        while column >= len(self._sums):
            self._sums.append(np.zeros(self.bins))
            self._counts.append(np.zeros(self.bins))
        for b, value in enumerate(record.loss_by_t):
            if value is not None and math.isfinite(value):
                self._sums[column][b] += value
                self._counts[column][b] += 1
        if len(self._sums) > self.max_columns:
            self._merge()

    def _merge(self) -> None:
        def pairs(values: list[np.ndarray]) -> list[np.ndarray]:
            return [sum(values[i : i + 2]) for i in range(0, len(values), 2)]

        self._sums, self._counts = pairs(self._sums), pairs(self._counts)
        self.stride *= 2

    def image(self) -> np.ndarray:
        """(bins, columns) mean loss; NaN where a window had no sample in a bin."""
        if not self._sums:
            return np.full((self.bins, 0), np.nan)
        sums, counts = np.stack(self._sums, axis=1), np.stack(self._counts, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    def step_range(self) -> tuple[int, int]:
        """(first step, one past the last step the columns cover)."""
        first = self._first_step or 0
        return first, first + len(self._sums) * self.stride


def timeline_pictures(
    previews: Sequence[tuple[int, np.ndarray]],
) -> tuple[list[np.ndarray], list[str]]:
    """The pictures and captions ("step 120") of a run's previews, oldest first, for the
    "watch the model learn" GIF (core.export.save_gif). previews: (step, samples)."""
    pictures = [preview_picture(samples) for _, samples in previews]
    return pictures, [f"step {step}" for step, _ in previews]
