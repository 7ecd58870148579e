"""Process settings the GUI needs before torch is imported (this module imports neither)."""

from __future__ import annotations

import os

GUI_OMP_WAIT_POLICY = "PASSIVE"


def prepare_gui_threading() -> None:
    """Call before torch is imported, in a process that will show the GUI.

    With OpenMP's default (active) wait policy, torch's idle worker threads spin between the
    many small operations of a training step, so the GUI thread waits for a core. PASSIVE
    makes them sleep instead: the GUI gets a core when it needs one while training still uses
    every core (app.worker.configure_torch_threads; benchmarks/README.md, Speed: "Threads").
    An OMP_WAIT_POLICY already in the environment wins. No effect once torch is loaded.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", GUI_OMP_WAIT_POLICY)
