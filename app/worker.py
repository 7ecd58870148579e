"""The one worker pattern for every long job (training, sampling, export).

A `Worker` (a QObject moved to its own QThread) drives a core generator, any
iterator of records. It never touches a widget: it only emits signals whose
arguments are frozen records or numpy copies. A `JobRunner`, living in the GUI
thread, starts one job of its kind at a time, tags every job with an id and drops
the late signals of a job it has already cancelled or replaced, and re-emits the
current job's signals in the past tense:

    progressed(record)   one per record, in order (delivered in small batches)
    finished(result)     the iterator ran out; `result` is what `Job.on_end` returned
    failed(message)      the job raised; a core error's message, or the bug's type and text
    cancelled()          cancel() was honoured; `JobRunner.result` holds `on_end`'s value

Pause and cancel are cooperative: the worker checks its `Control` between records
(and `core.training.Trainer` checks its `TrainControl` between steps).

Each job's thread computes with torch's default thread count, the GUI thread with one
(`configure_torch_threads`: one OpenMP team at a time keeps the training as fast as the CLI's).

While any worker thread runs, Python's cyclic garbage collector runs only in the GUI thread
(app.garbage.job_garbage: held when a thread starts, released when it has ended), so a worker
never finalises a GUI-thread Qt object.

Panels never redraw per record: they store the latest state in the `progressed`
slot and redraw from a QTimer (about 30 Hz; the Training panel's curves at most twice a
second while it trains, since every repaint takes CPU and the GIL from the training thread).
"""

from __future__ import annotations

import itertools
import logging
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import shiboken6
import torch
from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal, Slot

import diffusion_studio.app.qt_compat  # noqa: F401  (must come before any signal is emitted)
from diffusion_studio.app.garbage import job_garbage
from diffusion_studio.core.errors import DiffusionStudioError
from diffusion_studio.core.training import (
    TrainControl as JobControl,  # the trainer's flags serve every job
)

log = logging.getLogger(__name__)

Outcome = Literal["finished", "cancelled"]


class Control(Protocol):
    """Cooperative pause/cancel flags, shared by the GUI thread and the worker (thread-safe).

    `core.training.TrainControl` has this interface; it is used for every job (as `JobControl`).
    """

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def is_paused(self) -> bool: ...
    @property
    def is_cancelled(self) -> bool: ...
    @property
    def is_holding(self) -> bool: ...
    def wait_while_paused(self) -> None: ...


@dataclass(frozen=True)
class JobStatus:
    """What the status bar shows for a running job.

    fraction: 0..1 done, or None when unknown (a busy indicator); rate: e.g. "412 img/s";
    eta_s: seconds left, or None.
    """

    text: str
    fraction: float | None = None
    rate: str = ""
    eta_s: float | None = None


@dataclass
class Job:
    """One long job.

    run: called in the worker thread; returns the iterator of records (a core generator).
    control: the pause/cancel flags the worker (and the generator) checks.
    on_record: called in the worker thread after each record (e.g. autosave every N minutes).
    on_end: called in the worker thread when the iterator ended or was cancelled (not on
        failure), with the outcome; its return value is `finished`'s argument / `result`.
    describe: called in the GUI thread for each record; its JobStatus goes to the status bar.
    """

    name: str
    run: Callable[[], Iterable[Any]]
    control: Control = field(default_factory=JobControl)
    on_record: Callable[[Any], None] | None = None
    on_end: Callable[[Outcome], Any] | None = None
    describe: Callable[[Any], JobStatus | None] | None = None


_job_ids = itertools.count(1)

# Every QThread that has been started and has not finished yet, with its worker. Holding them
# here (not only in a JobRunner) means a thread is never garbage-collected while running.
# While any is here, Python's cyclic collector runs only in the GUI thread (app.garbage).
_LIVE: list[tuple[QThread, Worker, object]] = []  # (thread, worker, owning JobRunner)


def live_threads(owner: object | None = None) -> list[QThread]:
    """The worker threads that are still running (of one JobRunner, or all of them)."""
    return [
        thread
        for thread, _, runner in _LIVE
        if not thread.isFinished() and (owner is None or runner is owner)
    ]


def _sweep_finished() -> None:
    """Release the QThread/Worker pairs whose thread has ended."""
    for entry in list(_LIVE):
        thread, worker, _ = entry
        if thread.isFinished():
            _LIVE.remove(entry)
            # The worker lives in the ended thread, whose event loop never runs again, so a
            # deleteLater() there would never happen: the worker and its job (a trainer with
            # its model, optimizer and data) would leak with every run. The thread has ended,
            # so nothing else can touch the worker: delete it now, from here.
            # Before `release()`: with automatic collection back on, a collection could run
            # inside ~QObject (PySide6 allocates there) and destroy other garbage Qt objects
            # while Qt holds the connection lock they need: the test suite hung so, in
            # QBasicMutex::lockInternal under QAction::~QAction (py-spy, session 7).
            shiboken6.delete(worker)
            thread.deleteLater()
            job_garbage.release()


def wait_for_all_threads(timeout_s: float, owner: object | None = None) -> bool:
    """Wait, processing events, until the worker threads (of `owner`, or all) have ended.

    Returns True when none is left running, False when the timeout passed first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        alive = live_threads(owner)
        if not alive:
            QCoreApplication.processEvents()  # deliver the last queued signals
            _sweep_finished()
            return True
        if time.monotonic() >= deadline:
            return False
        alive[0].wait(20)
        QCoreApplication.processEvents()


# torch threads of each job's thread; None until configure_torch_threads (tests leave it so).
_job_threads: int | None = None


def configure_torch_threads() -> int:
    """The GUI thread computes with one torch thread, each job's thread with torch's default
    count (the CLI's: one per physical core, or OMP_NUM_THREADS). Returns the jobs' count.

    Call in the GUI thread before it runs any torch operation. A thread that starts an OpenMP
    team keeps its pool of threads while it lives; with the GUI thread's pool beside a job's,
    OpenMP manages more threads than there are cores and its idle threads stop spinning
    between operations (libgomp's throttled spin count): about 5 % of a training's speed
    (benchmarks/README.md, "Threads"). The GUI thread's own tensors are small anyway.
    """
    global _job_threads
    if _job_threads is None:
        # torch's default; the call also runs torch's once-per-thread initialisation, so this
        # thread keeps the count set next even when a job's thread changes the setting later
        _job_threads = torch.get_num_threads()
        torch.set_num_threads(1)
    return _job_threads


def job_threads() -> int | None:
    """The torch thread count each job's thread sets, or None (torch's setting is left as is)."""
    return _job_threads


def set_job_threads(count: int) -> None:
    """Give later jobs `count` torch threads (benchmarks try other counts)."""
    global _job_threads
    _job_threads = max(1, int(count))


class Worker(QObject):
    """Runs one `Job` in the thread it was moved to. Signals carry the job id first."""

    progressed = Signal(int, object)  # job id, list of records since the last emit
    finished = Signal(int, object)  # job id, on_end's value
    failed = Signal(int, str)  # job id, message
    cancelled = Signal(int, object)  # job id, on_end's value
    done = Signal()  # always last: the thread may quit

    FLUSH_INTERVAL_S = 1.0 / 60.0

    def __init__(self, job: Job, job_id: int) -> None:
        super().__init__()
        self.job = job
        self.job_id = job_id

    @Slot()
    def run(self) -> None:
        if _job_threads is not None:
            torch.set_num_threads(_job_threads)  # this thread's own setting (see above)
        job, control = self.job, self.job.control
        iterator: Any = None
        pending: list[Any] = []
        last_emit = time.monotonic()

        def flush() -> None:
            nonlocal pending, last_emit
            if pending:
                self.progressed.emit(self.job_id, pending)
                pending = []
            last_emit = time.monotonic()

        try:
            iterator = iter(job.run())
            for record in iterator:
                if job.on_record is not None:
                    job.on_record(record)
                pending.append(record)
                if time.monotonic() - last_emit >= self.FLUSH_INTERVAL_S:
                    flush()
                if control.is_paused:
                    flush()
                    control.wait_while_paused()  # returns on resume or cancel
                if control.is_cancelled:
                    break
            flush()
            outcome: Outcome = "cancelled" if control.is_cancelled else "finished"
            _close(iterator)
            iterator = None
            result = job.on_end(outcome) if job.on_end is not None else None
            if outcome == "cancelled":
                self.cancelled.emit(self.job_id, result)
            else:
                self.finished.emit(self.job_id, result)
        except DiffusionStudioError as exc:
            flush()
            self.failed.emit(self.job_id, str(exc))
        except MemoryError:
            flush()
            self.failed.emit(
                self.job_id,
                f"{job.name}: out of memory. Use a smaller model, batch or number of samples.",
            )
        except Exception as exc:  # a bug: report it, keep the app running
            flush()
            log.error("%s failed:\n%s", job.name, traceback.format_exc())
            self.failed.emit(
                self.job_id, f"{job.name} failed with an unexpected {type(exc).__name__}: {exc}"
            )
        finally:
            _close(iterator)  # run the generator's clean-up in this thread
            self.done.emit()


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001 - a failing clean-up must not hide the outcome
            log.exception("closing a job's iterator failed")


class JobRunner(QObject):
    """Starts, pauses, cancels and waits for the jobs of one kind, one at a time (GUI thread)."""

    started = Signal(str)  # job name
    progressed = Signal(object)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    paused_changed = Signal(bool)
    ended = Signal()  # after finished / failed / cancelled

    def __init__(self, kind: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.kind = kind
        self._job: Job | None = None
        self._job_id = 0
        self.status: JobStatus | None = None
        self.result: Any = None

    # ---------------------------------------------------------------- state

    @property
    def is_running(self) -> bool:
        """A job was started and has not reported its end yet."""
        return self._job is not None

    @property
    def is_paused(self) -> bool:
        return self._job is not None and self._job.control.is_paused

    @property
    def job_name(self) -> str:
        return self._job.name if self._job is not None else ""

    @property
    def control(self) -> Control | None:
        return self._job.control if self._job is not None else None

    # ---------------------------------------------------------------- commands

    def start(self, job: Job) -> int:
        """Run `job` in a new thread; a running job of this runner is cancelled first and
        its late signals are dropped. Returns the new job id."""
        if self._job is not None:
            self._job.control.cancel()
        self._job = job
        self._job_id = next(_job_ids)
        self.status = JobStatus(text=f"{job.name}: starting…")
        self.result = None
        thread = QThread()
        thread.setObjectName(f"{self.kind}-{self._job_id}")
        worker = Worker(job, self._job_id)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.done.connect(thread.quit)
        worker.progressed.connect(self._on_worker_progressed)
        worker.finished.connect(self._on_worker_finished)
        worker.failed.connect(self._on_worker_failed)
        worker.cancelled.connect(self._on_worker_cancelled)
        thread.finished.connect(self._on_thread_finished)
        _LIVE.append((thread, worker, self))
        job_garbage.hold()  # no automatic collection in the worker thread (app.garbage)
        thread.start()
        self.started.emit(job.name)
        return self._job_id

    def pause(self) -> None:
        if self._job is not None and not self._job.control.is_paused:
            self._job.control.pause()
            self.paused_changed.emit(True)

    def resume(self) -> None:
        if self._job is not None and self._job.control.is_paused:
            self._job.control.resume()
            self.paused_changed.emit(False)

    def cancel(self) -> None:
        """Ask the running job to stop; its `cancelled` (or a late `finished`) arrives later."""
        if self._job is not None:
            self._job.control.cancel()

    def wait(self, timeout_s: float = 10.0) -> bool:
        """Process events until this runner's threads have ended (True) or the timeout passed."""
        return wait_for_all_threads(timeout_s, owner=self)

    def shutdown(self, timeout_s: float = 10.0) -> bool:
        """Cancel and wait. True when no thread of this runner is left running."""
        self.cancel()
        return self.wait(timeout_s)

    # ---------------------------------------------------------------- slots (GUI thread)

    @Slot(int, object)
    def _on_worker_progressed(self, job_id: int, records: list[Any]) -> None:
        if job_id != self._job_id or self._job is None:
            return  # a late record of a cancelled or replaced job
        describe = self._job.describe
        for record in records:
            if describe is not None:
                status = describe(record)
                if status is not None:
                    self.status = status
            self.progressed.emit(record)

    def _end(self, job_id: int) -> bool:
        if job_id != self._job_id or self._job is None:
            return False
        self._job = None
        self.status = None
        return True

    @Slot(int, object)
    def _on_worker_finished(self, job_id: int, result: Any) -> None:
        if self._end(job_id):
            self.result = result
            self.finished.emit(result)
            self.ended.emit()

    @Slot(int, str)
    def _on_worker_failed(self, job_id: int, message: str) -> None:
        if self._end(job_id):
            self.failed.emit(message)
            self.ended.emit()

    @Slot(int, object)
    def _on_worker_cancelled(self, job_id: int, result: Any) -> None:
        if self._end(job_id):
            self.result = result
            self.cancelled.emit()
            self.ended.emit()

    @Slot()
    def _on_thread_finished(self) -> None:
        _sweep_finished()
