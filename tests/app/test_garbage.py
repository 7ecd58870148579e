"""diffusion_studio.app.garbage: cyclic garbage collection only in the GUI thread while jobs run, and the
app's start-up freeze."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading

from diffusion_studio.app.garbage import JobGarbage, collect_if_due, job_garbage
from diffusion_studio.app.worker import Job, JobRunner


class Cycle:
    """An object in a reference cycle that records, when finalised, the thread doing it."""

    finalised_in: list[str] = []

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        Cycle.finalised_in.append(threading.current_thread().name)


def make_cycles(n: int) -> None:
    for _ in range(n):
        Cycle()


def test_collect_if_due_follows_the_interpreters_thresholds():
    thresholds = gc.get_threshold()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        Cycle.finalised_in = []
        gc.set_threshold(1000, 10, 10)
        make_cycles(20)  # 20 allocations: below 1000
        assert collect_if_due() == -1
        assert Cycle.finalised_in == []
        gc.set_threshold(10, 10, 10)
        assert collect_if_due() == 0
        assert len(Cycle.finalised_in) == 20
    finally:
        gc.set_threshold(*thresholds)
        if was_enabled:
            gc.enable()


def test_holds_nest_and_the_last_release_restores_automatic_collection(qapp):
    garbage = JobGarbage()
    assert gc.isenabled()
    garbage.hold()
    garbage.hold()
    assert not gc.isenabled()
    garbage.release()
    assert not gc.isenabled()
    garbage.release()
    assert gc.isenabled() and garbage.holds == 0 and garbage.total_holds == 2
    garbage.release()  # an extra release changes nothing
    assert gc.isenabled() and garbage.holds == 0


def test_a_jobs_cyclic_garbage_is_collected_in_the_gui_thread_while_it_runs(qtbot):
    """A worker that makes many objects in reference cycles would trigger automatic
    collections in its own thread (and finalise whatever is garbage then, Qt objects of the
    GUI thread included). With the job running, only the GUI thread's timer collects."""
    gc.collect()
    Cycle.finalised_in = []
    collected_during_job = []

    def job():
        for _ in range(20):
            make_cycles(500)  # 10,000 in all: automatic gen-0 collections every 700
            yield len(Cycle.finalised_in)
            threading.Event().wait(0.05)  # the GUI thread's timer runs meanwhile

    runner = JobRunner("test")
    runner.progressed.connect(collected_during_job.append)
    assert gc.isenabled()
    with qtbot.waitSignal(runner.finished, timeout=20000):
        runner.start(Job("cycles", job))
        assert not gc.isenabled() and job_garbage.holds == 1
    assert runner.wait(5)
    assert gc.isenabled() and job_garbage.holds == 0
    gc.collect()
    assert len(Cycle.finalised_in) == 10_000
    assert set(Cycle.finalised_in) == {threading.main_thread().name}
    assert max(collected_during_job) > 0  # garbage was collected while the job ran


def after_startup_in_a_fresh_app(before: str, wait_while: str, after: str) -> list[str]:
    """Run, in a new process: make_application, `before`, after_startup, then process events
    for up to 60 s while the `wait_while` loop header holds, then `after`; returns what it
    printed, split. `startup` is the freeze count right after after_startup."""
    code = (
        "import gc, os, sys, time\n"
        "os.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
        "from diffusion_studio.app.main_window import make_application\n"
        "from diffusion_studio.app.garbage import after_startup, job_garbage\n"
        "app = make_application()\n"
        f"{before}"
        "after_startup(app)\n"
        "startup = gc.get_freeze_count()\n"
        "deadline = time.monotonic() + 60\n"
        f"{wait_while}"
        "    app.processEvents()\n"
        "    time.sleep(0.02)\n"
        f"{after}"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_the_app_freezes_its_start_up_objects_and_torchs_late_imports():
    """After start-up the collector no longer walks the objects made by importing torch, Qt
    and pyqtgraph, nor the ~130,000 that torch's first optimizer would add (torch._dynamo,
    imported in the background and frozen when done)."""
    startup, later, tracked, imported, enabled = after_startup_in_a_fresh_app(
        "assert 'torch._dynamo' not in sys.modules\n",
        "while job_garbage.holds and time.monotonic() < deadline:\n",
        "print(startup, gc.get_freeze_count() - startup, len(gc.get_objects()), "
        "'torch._dynamo' in sys.modules, gc.isenabled())\n",
    )
    assert int(startup) > 100_000  # torch + Qt + pyqtgraph
    assert imported == "True" and enabled == "True"
    assert int(later) > 50_000  # torch._dynamo and sympy
    assert int(tracked) < 20_000  # what a full collection still walks


def test_nothing_more_is_frozen_once_a_job_has_started():
    """A job that starts before torch._dynamo's import is done may have made the user's
    objects: then only the start-up objects stay frozen."""
    newly_frozen, imported, enabled = after_startup_in_a_fresh_app(
        "",
        "job_garbage.hold()  # what app.worker does when a job starts\n"
        "while job_garbage.holds > 1 and time.monotonic() < deadline:\n",
        "job_garbage.release()\n"
        "print(gc.get_freeze_count() - startup, 'torch._dynamo' in sys.modules, gc.isenabled())\n",
    )
    assert int(newly_frozen) <= 0  # (frozen objects freed by reference counting: below 0)
    assert imported == "True" and enabled == "True"
