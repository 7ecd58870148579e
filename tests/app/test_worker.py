"""The worker pattern: a generator in a QThread, past-tense signals, pause / cancel, job ids."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from PySide6.QtCore import Qt

from diffusion_studio.app import worker
from diffusion_studio.app.worker import Job, JobControl, JobRunner, live_threads
from diffusion_studio.core.errors import ConfigError


def counting(n: int, delay: float = 0.0):
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield i


def test_job_runs_to_the_end_and_delivers_every_record_in_order(qtbot):
    runner = JobRunner("test")
    records = []
    runner.progressed.connect(records.append)
    with qtbot.waitSignal(runner.finished, timeout=5000) as done:
        runner.start(Job("count", lambda: counting(500), on_end=lambda outcome: f"{outcome}!"))
    assert records == list(range(500))
    assert done.args == ["finished!"]
    assert not runner.is_running
    assert runner.wait(5)
    assert live_threads() == []


@pytest.mark.parametrize(
    "error, message",
    [
        # a core error: its message, as it is
        (ConfigError("T = 0 is too small: use at least 2"), "T = 0 is too small: use at least 2"),
        # a bug: reported (the app keeps running), not raised
        (ZeroDivisionError("oops"), "broken failed with an unexpected ZeroDivisionError: oops"),
    ],
)
def test_an_exception_becomes_failed_with_a_message(qtbot, error, message):
    def broken():
        yield 1
        raise error

    runner = JobRunner("test")
    with qtbot.waitSignal(runner.failed, timeout=5000) as failed:
        runner.start(Job("broken", broken))
    assert failed.args == [message]
    runner.wait(5)


ENOUGH = 100_000  # more records than a test reads; bounded, so a broken pause cannot run away


def _endless(events: list[str], gate: threading.Event | None = None):
    """0, 1, 2, ... (ENOUGH of them, once `gate` is set); its clean-up notes its thread."""
    try:
        if gate is not None:
            gate.wait(30)
        yield from range(ENOUGH)
    finally:
        where = "worker" if threading.current_thread() is not threading.main_thread() else "gui"
        events.append(f"cleanup in {where}")


def _pausing_at(control: JobControl, *records: int):
    """An on_record that pauses the job right after each of `records` (in the worker thread,
    so the pause point is exact)."""

    def on_record(value: int) -> None:
        if value in records:
            control.pause()

    return on_record


def _watch_done(events: list[str], gate: threading.Event) -> None:
    """Note the newest worker's `done` (its last act, in its own thread) in `events`; then
    open the gate its generator waits at (so `done` cannot come before the connection)."""
    newest = worker._LIVE[-1][1]
    newest.done.connect(lambda: events.append("done"), Qt.ConnectionType.DirectConnection)
    gate.set()


def test_pause_stops_progress_and_resume_goes_on(qtbot):
    """Paused after record 3, exactly 0..3 arrive (the pause flushes them) and the generator is
    not advanced; resumed, records go on from 4."""
    runner = JobRunner("test")
    records, events = [], []
    runner.progressed.connect(records.append)
    control = JobControl()
    job = Job("endless", lambda: _endless(events), control, _pausing_at(control, 3, 10))
    runner.start(job)
    qtbot.waitUntil(lambda: len(records) >= 4, timeout=10000)
    assert records == [0, 1, 2, 3] and runner.is_paused
    qtbot.waitUntil(lambda: control.is_holding, timeout=10000)  # the worker waits, no record
    runner.resume()
    qtbot.waitUntil(lambda: len(records) >= 11, timeout=10000)  # paused again after 10
    assert records == list(range(11)) and runner.is_paused
    with qtbot.waitSignal(runner.cancelled, timeout=10000):
        runner.cancel()
    assert runner.wait(30)
    assert events == ["cleanup in worker"]


def test_a_job_paused_then_cancelled_ends_cancelled_with_no_more_records(qtbot):
    runner = JobRunner("test")
    records, events, outcomes = [], [], []
    gate = threading.Event()
    runner.progressed.connect(records.append)
    runner.finished.connect(lambda result: outcomes.append("finished"))
    control = JobControl()
    job = Job(
        "endless",
        lambda: _endless(events, gate),
        control,
        _pausing_at(control, 3),
        on_end=lambda outcome: events.append(f"on_end {outcome}") or "result",
    )
    runner.start(job)
    _watch_done(events, gate)
    qtbot.waitUntil(lambda: len(records) >= 4, timeout=10000)
    assert runner.is_paused
    with qtbot.waitSignal(runner.cancelled, timeout=10000):
        runner.cancel()
    assert runner.wait(30)
    assert records == [0, 1, 2, 3]  # nothing was drawn from the generator while paused
    assert outcomes == [] and runner.result == "result" and not runner.is_running
    # the generator is closed (in the worker thread) before on_end, and both before `done`
    assert events == ["cleanup in worker", "on_end cancelled", "done"]


def test_a_failing_job_runs_its_generators_clean_up_in_the_worker(qtbot):
    """on_record raises at record 2: `failed`, and the generator's `finally` has run in the
    worker thread before the worker's last act (no clean-up left to the garbage collector)."""
    events: list[str] = []
    gate = threading.Event()

    def on_record(value: int) -> None:
        if value == 2:
            raise ZeroDivisionError("autosave broke")

    runner = JobRunner("test")
    with qtbot.waitSignal(runner.failed, timeout=10000) as failed:
        runner.start(Job("endless", lambda: _endless(events, gate), on_record=on_record))
        _watch_done(events, gate)
    assert runner.wait(30)
    assert failed.args == ["endless failed with an unexpected ZeroDivisionError: autosave broke"]
    assert events == ["cleanup in worker", "done"]


def test_out_of_memory_becomes_a_message(qtbot):
    def greedy():
        yield 1
        raise MemoryError()

    runner = JobRunner("test")
    with qtbot.waitSignal(runner.failed, timeout=10000) as failed:
        runner.start(Job("Sampling", greedy))
    assert runner.wait(30)
    assert failed.args == [
        "Sampling: out of memory. Use a smaller model, batch or number of samples."
    ]


def test_starting_a_new_job_drops_the_old_jobs_late_signals(qtbot):
    runner = JobRunner("test")
    records, finished = [], []
    runner.progressed.connect(records.append)
    runner.finished.connect(finished.append)
    runner.start(
        Job("old", lambda: (f"old{i}" for i in counting(100000, 0.001)), on_end=lambda o: "old")
    )
    qtbot.waitUntil(lambda: len(records) > 0, timeout=5000)
    records.clear()
    with qtbot.waitSignal(runner.finished, timeout=5000):
        runner.start(Job("new", lambda: iter(["a", "b"]), on_end=lambda o: "new"))
    assert runner.wait(5)
    qtbot.wait(50)
    assert finished == ["new"]
    assert [r for r in records if str(r).startswith("old")] == []
    assert records == ["a", "b"]


def test_shutdown_waits_for_the_thread(qtbot):
    runner = JobRunner("test")
    runner.start(Job("slow", lambda: counting(100000, 0.001)))
    qtbot.waitUntil(lambda: runner.status is not None, timeout=5000)
    assert runner.shutdown(10)
    assert live_threads() == []


def test_a_jobs_thread_gets_the_jobs_torch_threads(qtbot, monkeypatch):
    """The count `configure_torch_threads` chose reaches the job's thread, and the starting
    (GUI) thread keeps its own."""
    seen = {}

    def probe():
        seen["threads"] = torch.get_num_threads()
        yield 0

    gui_threads = torch.get_num_threads()
    monkeypatch.setattr(worker, "_job_threads", gui_threads + 2)
    runner = JobRunner("test")
    try:
        with qtbot.waitSignal(runner.finished, timeout=5000):
            runner.start(Job("probe", probe))
        assert runner.wait(5)
        assert torch.get_num_threads() == gui_threads
    finally:
        torch.set_num_threads(gui_threads)  # torch's setting is also what later threads start with
    assert seen["threads"] == gui_threads + 2


def test_configure_torch_threads_keeps_the_gui_thread_at_one_thread():
    """In a fresh process: `configure_torch_threads` gives jobs torch's own default count (as
    the CLI gets: here OMP_NUM_THREADS=1, not the machine's core count), and after another
    thread has set torch to more the GUI (main) thread still computes with one (torch reads
    its setting once per thread; the GUI thread must never start an OpenMP team beside a
    job's)."""
    code = (
        "import threading, torch\n"
        "from diffusion_studio.app.worker import configure_torch_threads, job_threads\n"
        "count = configure_torch_threads()\n"
        "other = threading.Thread(target=lambda: torch.set_num_threads(count + 1))\n"
        "other.start(); other.join()\n"
        "print(count, job_threads(), torch.get_num_threads())\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["1", "1", "1"]
