"""What a training run saves, and when: one policy for the CLI's `train` and the Training panel.

- Autosave: every `every_steps` optimizer steps when given, else every `every_s` seconds
  (None: only at the end). A failed autosave is reported and training goes on.
- The end of a run, however it ends (finished, stopped, Ctrl-C / SIGTERM, or failed), saves the
  trainer's current state. After a `TrainingError` (the loss or the gradients became
  non-finite, out of memory) or a `DistributedError` (another process of a data-parallel run
  failed) that is the last good step: a step that raises leaves the weights, the optimizer and
  the RNG as they were (`core.training.Trainer._train_step`).
- A run that took no step has nothing to save; a state already written is not written again.
- A save that fails never loses the model: its `SaveResult` carries the checkpoint and the
  error, so the caller can still offer to save it elsewhere.

`RunSaver` applies the policy to one trainer and one file; call it between steps only (the
trainer's state may only be read there).

`RunRecorder` writes the run's metrics log beside its checkpoint (core.run_log): a header, a
line per step, the previews as PNG, and how the run ended. A log that cannot be written never
stops training: the first failure is reported once and logging stops. In a data-parallel run
only rank 0 saves and records.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from diffusion_studio.core.checkpoint import Checkpoint, save_checkpoint
from diffusion_studio.core.errors import ConfigError, DiffusionStudioError
from diffusion_studio.core.run_log import (
    EndRecord,
    MetricsLogWriter,
    RunHeader,
    metrics_log_path,
    preview_folder,
    step_record,
)
from diffusion_studio.core.training import Trainer, TrainPreview, TrainProgress

DEFAULT_AUTOSAVE_S = 60.0  # at least once a minute, unless told otherwise


@dataclass(frozen=True)
class AutosavePolicy:
    """When a running training saves itself: every `every_steps` steps when given (then
    `every_s` is not used), else every `every_s` seconds of wall time; both None: only at the
    end."""

    every_steps: int | None = None
    every_s: float | None = DEFAULT_AUTOSAVE_S

    def __post_init__(self) -> None:
        n = self.every_steps
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"autosave interval must be a whole number of steps >= 1, got {n!r}")
        s = self.every_s
        if s is not None and (
            isinstance(s, bool)
            or not isinstance(s, (int, float))
            or not (math.isfinite(s) and s > 0)
        ):
            raise ConfigError(f"autosave interval must be a number of seconds > 0, got {s!r}")

    def due(self, step: int, seconds_since_save: float) -> bool:
        """Whether to autosave after optimizer step `step`, `seconds_since_save` after the last
        save (or the start)."""
        if self.every_steps is not None:
            return step % self.every_steps == 0
        return self.every_s is not None and seconds_since_save >= self.every_s


@dataclass(frozen=True)
class SaveResult:
    """What one save left: the trainer's state at `step` (`checkpoint`, kept even when writing
    it failed), where it is on disk (`path`, None when not written) and why writing failed
    (`error`, None otherwise)."""

    step: int
    checkpoint: Checkpoint
    path: Path | None
    error: str | None = None


class RunSaver:
    """The save policy applied to one run: `trainer` saving to `path` under `policy`.

    clock: seconds (monotonic) for the autosave interval (tests pass a fake one).
    """

    def __init__(
        self,
        trainer: Trainer,
        path: str | Path,
        policy: AutosavePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trainer = trainer
        self.path = Path(path)
        self.policy = policy or AutosavePolicy()
        self.clock = clock
        self.saved_step: int | None = None  # the step this run last wrote to `path`
        self._saved_at = clock()

    def autosave_due(self) -> bool:
        """Whether the policy asks for a save now (after the trainer's latest step)."""
        return self.policy.due(self.trainer.step, self.clock() - self._saved_at)

    def autosave(self) -> SaveResult | None:
        """Save when due (between steps): None when not due, else what the save left. A failed
        write is not retried before the next interval."""
        if not self.autosave_due():
            return None
        return self._write()

    def save_run(self) -> SaveResult:
        """Save the run as it ends, finished, stopped, interrupted or failed (after a
        TrainingError the trainer holds the last good step). Writes nothing when no step was
        taken (path None) or when this step is already on disk (its path)."""
        step = self.trainer.step
        if step == 0:
            return SaveResult(0, self.trainer.checkpoint(), None)
        if self.saved_step == step and self.path.exists():
            return SaveResult(step, self.trainer.checkpoint(), self.path)
        return self._write()

    def _write(self) -> SaveResult:
        self._saved_at = self.clock()
        ckpt = self.trainer.checkpoint()
        try:
            save_checkpoint(self.path, ckpt)
        except DiffusionStudioError as exc:  # disk full, read-only: the model stays in memory
            return SaveResult(self.trainer.step, ckpt, None, str(exc))
        self.saved_step = self.trainer.step
        return SaveResult(self.trainer.step, ckpt, self.path)


EndStatus = Literal["finished", "stopped", "failed"]


class RunRecorder:
    """The metrics log of `trainer`'s run saved to `checkpoint_path` (`RUN.metrics.jsonl` and
    `RUN.previews/` beside it).

    fresh: a new run (not a resumed one) replaces an older run's log and preview PNGs; a
    resumed run appends to its log. `record` each TrainProgress / TrainPreview, then `end`
    once. A write that fails sets `error`, turns logging off and is returned once by the call
    that met it (for the caller to show as a warning); training goes on.
    """

    def __init__(self, trainer: Trainer, checkpoint_path: str | Path, fresh: bool) -> None:
        self.trainer = trainer
        self.num_timesteps = trainer.config.schedule.num_timesteps
        self.error: str | None = None
        self.path = metrics_log_path(checkpoint_path)
        self._writer: MetricsLogWriter | None = None
        self._ended = False
        header = RunHeader(
            objective=trainer.config.objective,
            num_timesteps=self.num_timesteps,
            config=trainer.config.to_dict(),
            checkpoint=Path(checkpoint_path).name,
            world_size=trainer.world_size,
            start_step=trainer.step,
        )
        try:
            if fresh:
                _remove_old_log(checkpoint_path)
            self._writer = MetricsLogWriter(checkpoint_path, header)
        except (DiffusionStudioError, OSError) as exc:
            self.error = str(exc)

    def record(self, item: TrainProgress | TrainPreview) -> str | None:
        """Log a step or a preview. Returns the error of a write that failed just now."""
        if isinstance(item, TrainPreview):
            return self._guard(lambda w: w.preview(item.step, item.samples, item.final))
        return self._guard(lambda w: w.write(step_record(item, self.num_timesteps)))

    def end(self, status: EndStatus, message: str = "") -> str | None:
        """Log how the run ended (once; later calls do nothing) and close the log."""
        if self._ended:
            return None
        self._ended = True
        failure = self._guard(lambda w: w.write(EndRecord(status, self.trainer.step, message)))
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return failure

    def _guard(self, write: Callable[[MetricsLogWriter], object]) -> str | None:
        if self._writer is None:
            return None
        try:
            write(self._writer)
        except (DiffusionStudioError, OSError) as exc:
            self.error = f"{exc} (the metrics log stops here)"
            self._writer.close()
            self._writer = None
            return self.error
        return None


def _remove_old_log(checkpoint_path: str | Path) -> None:
    """An older run's metrics log and preview PNGs at this checkpoint path, removed."""
    metrics_log_path(checkpoint_path).unlink(missing_ok=True)
    folder = preview_folder(checkpoint_path)
    if folder.is_dir():
        for png in folder.glob("step-*.png"):
            png.unlink()
