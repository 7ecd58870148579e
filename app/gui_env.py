"""Process settings the GUI needs before torch is imported (this module imports neither)."""

from __future__ import annotations

import os
import sys

GUI_OMP_WAIT_POLICY = "PASSIVE"


def gui_wait_policy(platform: str) -> str | None:
    """The OpenMP wait policy the GUI process asks for on `platform`, or None (OpenMP's own).

    Linux: None, as in the CLI. Idle OpenMP threads then spin briefly between the many small
    operations of a training step; PASSIVE (sleep at once) cost the training 6 % of its speed
    on a quiet 2-core machine, and the GUI thread still gets its time (no stall over 50 ms;
    benchmarks/README.md, "Threads"). On a machine kept busy by another program PASSIVE is
    faster (172 against 114 images/s with one core taken): `OMP_WAIT_POLICY=PASSIVE
    diffusion-studio` chooses it. Elsewhere PASSIVE: torch's OpenMP there (LLVM's or Intel's)
    spins for 200 ms by default (not measured: no such machine here).
    """
    return None if platform.startswith("linux") else GUI_OMP_WAIT_POLICY


def prepare_gui_threading() -> None:
    """Call before torch is imported, in a process that will show the GUI.

    Sets OMP_WAIT_POLICY to `gui_wait_policy(sys.platform)` where that is not None. An
    OMP_WAIT_POLICY already in the environment wins. No effect once torch is loaded (OpenMP
    reads it then). See benchmarks/README.md, Speed: "Threads" and "GUI under load".
    """
    policy = gui_wait_policy(sys.platform)
    if policy is not None:
        os.environ.setdefault("OMP_WAIT_POLICY", policy)
