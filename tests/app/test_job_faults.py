"""Issue 6, faults during work, through the GUI: closing the window mid-job (training, sampling,
a checkpoint being written), starting a job while one runs, and a full disk or a read-only
destination for Save Checkpoint As and the Training panel's autosave.

We run as root, so read-only files and folders cannot be made with chmod: the faults are
injected with monkeypatch (os.replace raising EROFS, os.fsync raising ENOSPC) or with a path
under an existing *file*, which no one can write.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import diffusion_studio.core.checkpoint  # noqa: F401
from diffusion_studio import core
from diffusion_studio.app.settings import recent_files
from diffusion_studio.app.widgets import set_combo_data
from diffusion_studio.app.worker import live_threads, wait_for_all_threads
from diffusion_studio.core.checkpoint import load_checkpoint

# Issue 6's goal, every worker thread gone within 2 s of close, is timed by
# `python -m benchmarks.gui_limits` (benchmarks/README.md): the tests here check the events
# (asked, closed, no thread left, checkpoints complete), not the seconds.


def tiny_training(training, steps: int = 1_000_000) -> None:
    """A 2-D points run with the small MLP: many steps a second."""
    set_combo_data(training.source, "moons")
    set_combo_data(training.model_size, "small")
    set_combo_data(training.device, "cpu")
    set_combo_data(training.budget, "steps")
    training.max_steps.setValue(steps)
    training.batch.setValue(64)
    training.steps_T.setValue(100)
    training.preview_every.setValue(0)


def long_sampling(playback, checkpoints, steps: int = 100, n: int = 64) -> None:
    """The tiny digits UNet, DDIM with `steps` steps on `n` samples (long enough to interrupt)."""
    assert playback.load_checkpoint(checkpoints.images)
    set_combo_data(playback.sampler_kind, "ddim")
    playback.num_steps.setValue(steps)
    playback.num_samples.setValue(n)
    playback.seed.setValue(3)


def destroyed_while_running(qtlog) -> list[str]:
    return [r.message for r in qtlog.records if "Destroyed while" in r.message]


def close_answering_yes(window, fake_dialogs) -> None:
    """Close the window answering Yes to "stop it and quit?": the close itself cancels the jobs
    and waits for their threads, so none is left when it returns."""
    fake_dialogs.answers.append(True)
    window.close()
    left = [t.objectName() for t in live_threads()]
    wait_for_all_threads(60)  # clean up after a failure, so later tests start clean
    assert left == [], f"worker threads still running after close: {left}"
    assert not window.isVisible()
    assert fake_dialogs.asked[-1] == "Quit Diffusion Studio"


class SlowWrites:
    """Makes every checkpoint write slow: half the bytes, a pause, the rest (through
    core.checkpoint's atomic write, so the temp file + rename stay real). `started` is set
    when a write is under way."""

    def __init__(self, monkeypatch, pause_s: float = 0.4) -> None:
        self.started = threading.Event()
        self.targets: list[Path] = []
        real = core.checkpoint.atomic_write

        def slow_atomic_write(path, write, error):
            def slow(f):
                class Halves:
                    def write(self, data: bytes) -> None:
                        f.write(data[: len(data) // 2])
                        f.flush()
                        slow_writes.started.set()
                        time.sleep(pause_s)
                        f.write(data[len(data) // 2 :])

                write(Halves())

            slow_writes.targets.append(Path(path))
            return real(path, slow, error)

        slow_writes = self
        monkeypatch.setattr(core.checkpoint, "atomic_write", slow_atomic_write)


# ---------------------------------------------------------------------- closing mid-job


def test_close_during_training_ends_every_thread(window, qtbot, fake_dialogs, app_dirs, qtlog):
    training = window.training
    tiny_training(training)
    assert training.start()
    qtbot.waitUntil(lambda: training.loss.n >= 3, timeout=30000)
    close_answering_yes(window, fake_dialogs)
    assert live_threads() == []
    saved = load_checkpoint(training.autosave_path)  # saved on the way out, complete
    assert saved.training["step"] >= 3
    assert destroyed_while_running(qtlog) == []


def test_close_during_sampling_ends_every_thread(window, qtbot, fake_dialogs, checkpoints, qtlog):
    playback = window.playback
    long_sampling(playback, checkpoints, steps=100, n=64)
    playback.sample_button.click()
    qtbot.waitUntil(lambda: playback.has_frames(), timeout=30000)
    assert playback.runner.is_running  # interrupted, not finished
    close_answering_yes(window, fake_dialogs)
    assert live_threads() == []
    assert len(playback.trajectory) < 101
    assert destroyed_while_running(qtlog) == []


@pytest.mark.parametrize("during", ["save as", "final autosave"])
def test_close_during_a_checkpoint_write_leaves_complete_checkpoints(
    window, qtbot, fake_dialogs, tmp_path, checkpoints, monkeypatch, qtlog, during
):
    """The window is closed while a checkpoint is half written: the close waits for the write
    (and the final autosave), all threads have ended when it returns, and every checkpoint on
    disk is a complete one that loads (the old or the new, never a broken one)."""
    training = window.training
    tiny_training(training)
    target = tmp_path / "mine.safetensors"
    shutil.copy(checkpoints.images, target)  # an old, complete checkpoint is there
    assert training.start()
    qtbot.waitUntil(lambda: training.loss.n >= 3, timeout=30000)
    slow = SlowWrites(monkeypatch)
    if during == "save as":
        fake_dialogs.paths.append(target)
        training.save_button.click()  # the worker writes it after the current step
    else:
        training.stop_button.click()  # the worker writes the autosave as the run ends
    qtbot.waitUntil(slow.started.is_set, timeout=10000)
    assert training.runner.is_running
    close_answering_yes(window, fake_dialogs)
    assert live_threads() == []
    for path in {*slow.targets, target}:
        load_checkpoint(path)  # complete: raises CheckpointError otherwise
    assert load_checkpoint(training.autosave_path).is_points
    if during == "save as":
        assert load_checkpoint(target).is_points  # the new one replaced the old one whole
    assert not list(tmp_path.glob(".*.tmp"))
    assert not list(training.autosave_path.parent.glob(".*.tmp"))
    assert destroyed_while_running(qtlog) == []


def test_closing_twice_quickly_is_harmless(window, qtbot, fake_dialogs, checkpoints, qtlog):
    """A second close (e.g. a double click on the window's X) after the first one ended."""
    playback = window.playback
    long_sampling(playback, checkpoints)
    playback.sample_button.click()
    qtbot.waitUntil(lambda: playback.has_frames(), timeout=30000)
    close_answering_yes(window, fake_dialogs)
    window.close()  # nothing runs: no question, no error
    assert fake_dialogs.errors == []
    assert live_threads() == [] and destroyed_while_running(qtlog) == []


# ---------------------------------------------------------------------- a job while one runs


def test_sampling_twice_quickly_restarts_cleanly(window, qtbot, fake_dialogs, checkpoints):
    """Sample while sampling: No keeps the first run, Yes replaces it; the frames stored are
    exactly those of one uninterrupted run (no late frame of the cancelled run mixed in)."""
    playback = window.playback
    long_sampling(playback, checkpoints, steps=60, n=16)
    playback.sample_button.click()
    qtbot.waitUntil(lambda: playback.has_frames(), timeout=30000)
    assert not playback.sample_button.isEnabled()
    playback.sample_button.click()  # disabled: nothing happens (no question asked)
    fake_dialogs.answers.append(False)
    first = playback.trajectory
    assert not playback.start_sampling()  # "No": the first run goes on
    assert playback.trajectory is first and playback.runner.is_running
    playback.seed.setValue(4)
    fake_dialogs.answers.append(True)
    with qtbot.waitSignal(playback.runner.finished, timeout=60000):
        assert playback.start_sampling()  # "Yes": cancelled and started again
        fake_dialogs.answers.append(True)
        assert playback.start_sampling()  # and once more, at once
    assert playback.runner.wait(5)
    qtbot.wait(50)  # any late signal of the cancelled runs would arrive now
    assert len(playback.trajectory) == 61 and playback.trajectory.timesteps[-1] == -1
    restarted = playback.trajectory.final_samples.copy()
    assert fake_dialogs.errors == []

    with qtbot.waitSignal(playback.runner.finished, timeout=60000):  # the same, undisturbed
        assert playback.start_sampling()
    playback.runner.wait(5)
    np.testing.assert_array_equal(playback.trajectory.final_samples, restarted)
    assert live_threads() == []


def test_training_while_sampling_both_finish(window, qtbot, fake_dialogs, checkpoints):
    playback, training = window.playback, window.training
    long_sampling(playback, checkpoints, steps=40, n=16)
    tiny_training(training, steps=30)
    playback.sample_button.click()
    qtbot.waitUntil(lambda: playback.has_frames(), timeout=30000)
    with qtbot.waitSignals([training.model_trained, playback.runner.finished], timeout=60000):
        training.start_button.click()
        assert training.runner.is_running and playback.runner.is_running
        assert not training.start()  # a second run of the same kind is not started
        assert len(live_threads(training.runner)) == 1
    assert training.runner.wait(5) and playback.runner.wait(5)
    assert training.last_result.step == 30
    assert len(playback.trajectory) == 41
    # the trained model went to Playback's list but did not disturb the sampling run
    assert playback.model_choice.findData("trained") >= 0
    assert playback.model_choice.currentData() != "trained"
    assert fake_dialogs.errors == []


# ---------------------------------------------------------------------- disk full, read-only

FAULTS = ["read-only (EROFS)", "disk full (ENOSPC)", "folder is a file"]


class Fault:
    """An armed fault for checkpoint writes. EROFS: os.replace of a .safetensors file fails;
    ENOSPC: os.fsync fails (the data did not fit). `failures` counts the failed writes."""

    def __init__(self, monkeypatch, kind: str) -> None:
        self.kind = kind
        self.armed = False
        self.failures = 0
        real_replace, real_fsync = os.replace, os.fsync

        def replace(src, dst, *args, **kwargs):
            if self.armed and kind.startswith("read-only") and str(dst).endswith(".safetensors"):
                self.failures += 1
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
            return real_replace(src, dst, *args, **kwargs)

        def fsync(fd):
            if self.armed and kind.startswith("disk full"):
                self.failures += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "fsync", fsync)

    @property
    def says(self) -> str:
        return {
            "read-only (EROFS)": os.strerror(errno.EROFS),
            "disk full (ENOSPC)": os.strerror(errno.ENOSPC),
            "folder is a file": "does not exist",
        }[self.kind]


def finished_run(training, qtbot) -> None:
    tiny_training(training, steps=5)
    with qtbot.waitSignal(training.model_trained, timeout=60000):
        assert training.start()
    assert training.runner.wait(5)


@pytest.mark.parametrize("kind", FAULTS)
def test_save_as_fails_with_a_message_and_keeps_the_old_file(
    window, qtbot, fake_dialogs, tmp_path, checkpoints, monkeypatch, kind
):
    training = window.training
    finished_run(training, qtbot)
    fault = Fault(monkeypatch, kind)
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "model.safetensors"
    shutil.copy(checkpoints.images, target)
    old = target.read_bytes()
    if kind == "folder is a file":
        (folder / "notes.txt").write_text("a file, not a folder")
        target = folder / "notes.txt" / "model.safetensors"
    fault.armed = True
    fake_dialogs.paths.append(target)
    window.save_checkpoint_action.trigger()
    assert len(fake_dialogs.errors) == 1
    title, message = fake_dialogs.errors[0]
    assert title == "Save checkpoint" and fault.says in message and str(target) in message
    assert fault.says not in window.statusBar().currentMessage()  # one error, one message
    assert (folder / "model.safetensors").read_bytes() == old  # untouched, byte for byte
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.safetensors"] + (["notes.txt"] if kind == "folder is a file" else [])
    )  # no temp file left
    assert str(target) not in recent_files(window.settings)
    fault.armed = False  # the user frees some space / picks another folder: it works
    fake_dialogs.paths.append(folder / "elsewhere.safetensors")
    window.save_checkpoint_action.trigger()
    assert load_checkpoint(folder / "elsewhere.safetensors").training["step"] == 5


@pytest.mark.parametrize("kind", FAULTS[:2])
def test_save_as_during_training_fails_and_training_goes_on(
    window, qtbot, fake_dialogs, tmp_path, checkpoints, monkeypatch, kind
):
    training = window.training
    tiny_training(training)
    target = tmp_path / "model.safetensors"
    shutil.copy(checkpoints.images, target)
    old = target.read_bytes()
    fault = Fault(monkeypatch, kind)
    assert training.start()
    qtbot.waitUntil(lambda: training.loss.n >= 3, timeout=30000)
    fault.armed = True
    fake_dialogs.paths.append(target)
    training.save_button.click()  # the worker saves between two steps; its error comes back
    qtbot.waitUntil(lambda: bool(fake_dialogs.errors), timeout=10000)
    assert (
        fake_dialogs.errors[0][0] == "Save checkpoint" and fault.says in fake_dialogs.errors[0][1]
    )
    steps = training.loss.n
    qtbot.waitUntil(lambda: training.loss.n > steps + 3, timeout=10000)  # training goes on
    assert training.runner.is_running
    assert target.read_bytes() == old
    fault.armed = False
    with qtbot.waitSignal(training.model_trained, timeout=30000):
        training.stop_button.click()
    assert training.runner.wait(5)
    assert load_checkpoint(training.autosave_path).training["step"] >= steps + 3


@pytest.mark.parametrize("kind", FAULTS[:2])
def test_autosave_fails_training_goes_on_and_nothing_is_lost(
    window, qtbot, fake_dialogs, tmp_path, monkeypatch, kind
):
    """The autosave works once, then the disk fills up (or turns read-only): one dialog says so,
    later failures go to the status bar, training goes on, the last good autosave stays byte
    for byte, and at the end the model still reaches Playback and can be saved elsewhere."""
    training = window.training
    tiny_training(training)
    # autosave every 0.3 s (the field shows one decimal; 0.005 min is for the test only)
    training.autosave_minutes.setDecimals(3)
    training.autosave_minutes.setValue(0.005)
    fault = Fault(monkeypatch, kind)
    assert training.start()
    autosave = training.autosave_path
    qtbot.waitUntil(autosave.exists, timeout=30000)
    qtbot.wait(50)
    fault.armed = True
    qtbot.waitUntil(lambda: fault.failures >= 1, timeout=10000)
    good = autosave.read_bytes()  # the last good autosave (atomic writes: never half a file)
    load_checkpoint(autosave)
    qtbot.waitUntil(lambda: bool(fake_dialogs.errors), timeout=10000)
    title, message = fake_dialogs.errors[0]
    assert title == "Autosave" and fault.says in message and "not lost" in message
    steps = training.loss.n
    qtbot.waitUntil(lambda: fault.failures >= 3, timeout=20000)  # it keeps trying ...
    qtbot.waitUntil(lambda: training.loss.n > steps + 3, timeout=10000)  # ... and training
    assert training.runner.is_running
    qtbot.waitUntil(lambda: "Autosave failed" in window.statusBar().currentMessage(), timeout=3000)
    with qtbot.waitSignal(training.model_trained, timeout=30000) as trained:
        training.stop_button.click()  # the final save fails too
    assert training.runner.wait(5)
    qtbot.wait(100)  # the timer polls the last save result
    assert len(fake_dialogs.errors) == 1  # one dialog for the run, not one per autosave
    assert autosave.read_bytes() == good
    assert training.last_result is not None and training.last_result.path is None
    assert window.playback.model_choice.currentData() == "trained"
    step = trained.args[0].training["step"]
    assert step >= steps + 3
    fault.armed = False
    fake_dialogs.paths.append(tmp_path / "rescued.safetensors")
    training.save_button.click()
    assert load_checkpoint(tmp_path / "rescued.safetensors").training["step"] == step
