"""Python's cyclic garbage collector in a GUI process: only in the GUI thread, never long.

Two problems, both from collections that run while a worker thread trains or samples:

1. **Wrong thread.** An automatic collection runs in whichever thread happens to allocate
   when a threshold is crossed. In a worker thread it may finalise a Qt object that belongs
   to the GUI thread (a widget, a timer, a pyqtgraph item caught in a reference cycle):
   undefined in Qt, and seen here as the test suite hanging with both threads idle.
   pyqtgraph ships `pyqtgraph.util.garbage_collector.GarbageCollector` for the same reason.
   While any worker thread runs, automatic collection is therefore off and a GUI-thread
   QTimer collects instead, with the interpreter's own thresholds (`collect_if_due`). When
   the last worker thread has ended, automatic collection is on again (`JobGarbage`).
2. **Long pauses.** A full (generation-2) collection walks every tracked object with the GIL
   held: ~215,000 made by importing torch, Qt and pyqtgraph and ~130,000 more when torch's
   first optimizer imports torch._dynamo (with sympy): 80-120 ms, a visible stall about
   every 20 s of training (benchmarks/README.md, "GUI under load: what limits it"). The app
   moves the start-up objects out of the collector's view once (`gc.freeze`), imports
   torch._dynamo in the background just after start-up and freezes its objects too
   (`after_startup`), so a full collection only walks what was made since.

Freezing is for the app's start-up only: a frozen object is never collected, so an object
that is frozen and later becomes part of cyclic garbage would leak. That is harmless for
modules and start-up state, which live as long as the process, and the reason nothing is
frozen once the user's work (a loaded checkpoint, a training job) may be among the live
objects. Tests, which make many windows in one process, never freeze.
"""

from __future__ import annotations

import gc
import sys
import threading

from PySide6.QtCore import QCoreApplication, QObject, QTimer

COLLECT_INTERVAL_MS = 200
IMPORT_CHECK_INTERVAL_MS = 250


def collect_if_due() -> int:
    """One step of what the automatic collector would do, here, in the calling thread.

    Generation g is collected when its count (`gc.get_count()`: allocations minus
    deallocations for generation 0, collections of the younger generation for 1 and 2)
    exceeds `gc.get_threshold()[g]`, as CPython does. Returns the generation collected, or -1.
    """
    counts, thresholds = gc.get_count(), gc.get_threshold()
    due = -1
    for generation in range(3):
        if counts[generation] > thresholds[generation]:
            due = generation
        else:
            break
    if due >= 0:
        gc.collect(due)
    return due


class JobGarbage:
    """Automatic collection off while worker threads run; a GUI-thread timer collects then.

    `hold()` when a worker thread starts and `release()` when it has ended (app.worker does
    both); they nest. Both are called in the GUI thread.
    """

    def __init__(self, interval_ms: int = COLLECT_INTERVAL_MS) -> None:
        self.interval_ms = interval_ms
        self.holds = 0
        self.total_holds = 0  # ever: tells whether a job has started since some moment
        self._was_enabled = True
        self._timer: QTimer | None = None

    def hold(self) -> None:
        if self.holds == 0:
            self._was_enabled = gc.isenabled()
            gc.disable()
            self._start_timer()
        self.holds += 1
        self.total_holds += 1

    def release(self) -> None:
        if self.holds == 0:
            return
        self.holds -= 1
        if self.holds == 0:
            if self._timer is not None:
                self._timer.stop()
            if self._was_enabled:
                gc.enable()

    def _start_timer(self) -> None:
        if self._timer is None:
            app = QCoreApplication.instance()
            if app is None:
                return  # no event loop: nothing could run the timer (collections wait)
            self._timer = QTimer(app)
            self._timer.setInterval(self.interval_ms)
            self._timer.timeout.connect(collect_if_due)
        self._timer.start()


job_garbage = JobGarbage()  # the process's one instance, driven by app.worker

_startup_frozen = False


def freeze_startup_objects() -> bool:
    """Move every object alive now out of the collector's view (`gc.freeze`). Once per
    process, right after the main window is built; returns False when already done."""
    global _startup_frozen
    if _startup_frozen:
        return False
    gc.freeze()  # no gc.collect() first: it would add ~80 ms to start-up for a few objects
    _startup_frozen = True
    return True


def after_startup(parent: QObject) -> None:
    """The app's start-up hygiene, once the engine is loaded and the shown tab built (run_app
    calls it on MainWindow.engine_ready): freeze the start-up objects, import torch._dynamo in
    a background thread a quarter of a second later (torch's first optimizer imports it:
    ~1.2 s and 130,000 objects) and freeze what it made as soon as the import is done,
    provided no job has started meanwhile (else the live objects may include the user's work,
    and nothing more is frozen). The import counts as a job for `job_garbage`."""
    freeze_startup_objects()
    if "torch._dynamo" in sys.modules:
        return
    imported = threading.Event()

    def load() -> None:
        try:
            import torch._dynamo  # noqa: F401
        finally:
            imported.set()  # (a failed import is torch's first optimizer's to report)

    job_garbage.hold()
    holds_before_jobs = job_garbage.total_holds
    importer = threading.Thread(target=load, name="import torch._dynamo", daemon=True)
    timer = QTimer(parent)
    timer.setInterval(IMPORT_CHECK_INTERVAL_MS)

    def freeze_when_imported() -> None:
        if not importer.is_alive() and not imported.is_set():
            importer.start()  # at the first tick: the window's first paints keep the GIL
            return
        if not imported.is_set():
            return
        timer.stop()
        timer.deleteLater()
        if job_garbage.total_holds == holds_before_jobs:  # no job has run: only modules
            gc.collect()  # and start-up state are alive (~50 ms, once); garbage is not frozen
            gc.freeze()
        job_garbage.release()

    timer.timeout.connect(freeze_when_imported)
    timer.start()
