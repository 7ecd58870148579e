"""Load the engine (torch, pyqtgraph and the panels' modules) after the window is on screen.

Importing torch takes 2-4 s on the 2-core machine; the main window shows its menus, tabs and
status bar first (this module imports neither torch nor pyqtgraph) and `EngineLoader.start`
imports the rest in a background thread once the window has painted. Measured against
importing in the GUI thread (benchmarks/README.md, "Start-up"): a GUI-thread import freezes
the window for the whole import; in a thread the GUI thread keeps running between the
import's steps, since the interpreter hands the GIL over every few milliseconds of Python
code. It cannot while a C function holds it, and the longest such call is the dynamic loader
mapping libtorch_cpu.so (0.3-0.4 s of relocations, GIL held by Python's import and by
`ctypes.CDLL` alike). `preload_torch_library` maps it first through a plain ctypes call of
libc's dlopen, which runs without the GIL; torch's own import then finds it loaded.

Modules with Qt classes are imported in the thread as well: importing them defines classes
and creates no QObject (pyqtgraph and app.widgets make only value types such as QPainterPath
at import). Widgets are made later, in the GUI thread. `app.qt_compat` is imported here, in
the GUI thread, since its probe creates QObjects.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import sys
import threading
import traceback
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal

import diffusion_studio.app.qt_compat  # noqa: F401  (its probe makes QObjects: GUI thread, before any emit)
from diffusion_studio.app.garbage import job_garbage

log = logging.getLogger(__name__)

# In import order; the main window needs every one of them before it builds a panel.
ENGINE_MODULES = (
    "torch",
    "diffusion_studio.core.checkpoint",
    "diffusion_studio.core.data",
    "diffusion_studio.core.diffusers_models",
    "diffusion_studio.app.worker",
    "pyqtgraph",
    "diffusion_studio.app.widgets",
    "diffusion_studio.app.panels.schedule_panel",
    "diffusion_studio.app.panels.forward_panel",
    "diffusion_studio.app.panels.training_panel",
    "diffusion_studio.app.panels.playback_panel",
    "diffusion_studio.app.panels.sampler_lab_panel",
)

TORCH_LIBRARY = "libtorch_cpu.so"  # torch's largest shared library (Linux)


def preload_torch_library() -> bool:
    """Map torch's largest shared library without holding the GIL (Linux; elsewhere nothing).

    A ctypes call of a C function releases the GIL, so `dlopen` called that way lets the GUI
    thread run while the library is relocated. The library stays loaded; torch's import then
    reuses it. Returns True when it was mapped here; any failure leaves the work to torch.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        spec = importlib.util.find_spec("torch")  # finds the package without importing it
        if spec is None or spec.origin is None:
            return False
        library = Path(spec.origin).parent / "lib" / TORCH_LIBRARY
        if not library.is_file():
            return False
        libc = ctypes.CDLL(None)
        dlopen = libc.dlopen
        dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
        dlopen.restype = ctypes.c_void_p
        rtld_now = 2
        return bool(dlopen(str(library).encode(), rtld_now))
    except (AttributeError, OSError, ValueError):
        return False


def import_engine_modules() -> None:
    """Import every engine module in the calling thread (tests replace this to stall it)."""
    for name in ENGINE_MODULES:
        importlib.import_module(name)


def torch_already_imported() -> bool:
    """True when something else imported torch (a test, a script): loading the rest of the
    engine at once then costs little (tests replace this to see the background load)."""
    return "torch" in sys.modules


class EngineLoader(QObject):
    """Imports the engine once: in a background thread (`start`) or at once (`load_now`).

    `loaded` and `failed(message)` are emitted in the GUI thread, once. While the thread runs,
    Python's cyclic collector runs only in the GUI thread (`job_garbage`, as for a job).
    """

    loaded = Signal()
    failed = Signal(str)
    _thread_done = Signal(str)  # from the thread: "" or the error's text

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.is_loaded = False
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self._holding = False
        self._thread_done.connect(self._on_thread_done, Qt.ConnectionType.QueuedConnection)

    def start(self) -> None:
        """Import the engine in a background thread (no effect when loaded or loading)."""
        if self.is_loaded or self.error is not None or self._thread is not None:
            return
        if torch_already_imported():
            self.load_now()
            return
        job_garbage.hold()
        self._holding = True
        self._thread = threading.Thread(target=self._run, name="load the engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        message = ""
        try:
            preload_torch_library()
            import_engine_modules()
        except BaseException as exc:  # noqa: BLE001 - reported in the GUI thread
            log.error("loading the engine failed:\n%s", traceback.format_exc())
            message = f"{type(exc).__name__}: {exc}"
        self._thread_done.emit(message)

    def _on_thread_done(self, message: str) -> None:
        if message:
            self._fail(message)
        else:
            self._finish()

    def load_now(self) -> None:
        """Import the engine in this (the GUI) thread; waits for a running thread's imports.
        Raises what the import raises."""
        if self.is_loaded:
            return
        try:
            for name in ENGINE_MODULES:  # the thread's order: no lock-order deadlock
                importlib.import_module(name)
        except Exception as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            raise
        self._finish()

    def ready_now(self) -> bool:
        """True when the engine is loaded, loading it here first when torch was imported by
        someone else (no background load runs then)."""
        if (
            not self.is_loaded
            and self.error is None
            and self._thread is None
            and torch_already_imported()
        ):
            self.load_now()
        return self.is_loaded

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the background thread to end (a closing window: no import may be running
        when the process exits). True when no thread runs."""
        if self._thread is not None:
            self._thread.join(timeout_s)
            if not self._thread.is_alive():
                self._release()
        return not (self._thread is not None and self._thread.is_alive())

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            job_garbage.release()

    def _finish(self) -> None:
        if self.is_loaded:
            return
        self.is_loaded = True
        self._release()
        self.loaded.emit()

    def _fail(self, message: str) -> None:
        if self.error is not None or self.is_loaded:
            return
        self.error = message
        self._release()
        self.failed.emit(message)
