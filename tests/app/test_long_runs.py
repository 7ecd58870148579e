"""Issue 6, load and long runs in the GUI: 200 start/stop cycles of sampling through the real
Playback widgets leak no thread, timer, worker or Qt object; a long training run keeps its loss
history and previews bounded (a shorter variant here). These tests count objects and points;
the memory limits are measured by benchmarks (`python -m benchmarks.gui_limits` for the
cycles' RSS, `python -m benchmarks.gui_long_run` for a 30-minute run), not asserted here.
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from PySide6.QtCore import (
    QAbstractAnimation,
    QCoreApplication,
    QEvent,
    QObject,
    Qt,
    QThread,
    QTimer,
)

import diffusion_studio.app.panels.training_panel as training_module
import diffusion_studio.app.worker as worker
from diffusion_studio.app.widgets import set_combo_data
from diffusion_studio.app.worker import live_threads

_LEFT = Qt.MouseButton.LeftButton


def settle() -> None:
    """Deliver queued signals and run pending deleteLater()s, then collect garbage."""
    for _ in range(3):
        QCoreApplication.processEvents()
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


def counts(window) -> dict[str, int]:
    """What a leak would grow: Python threads, the worker registry, QThread and worker
    objects alive, and the window's timers and QObjects."""
    settle()
    alive = [o for o in gc.get_objects() if issubclass(type(o), QObject)]
    return {
        "python threads": threading.active_count(),
        "worker registry": len(worker._LIVE),
        "running worker threads": len(live_threads()),
        "QThread objects": sum(issubclass(type(o), QThread) for o in alive),
        "Worker objects": sum(issubclass(type(o), worker.Worker) for o in alive),
        "window timers": len(window.findChildren(QTimer)),
        # Qt's own short-lived animations (a busy progress bar's) come and go with the style
        "window QObjects": sum(
            not isinstance(o, QAbstractAnimation) for o in window.findChildren(QObject)
        ),
    }


CYCLES = 200


@pytest.mark.slow
def test_200_sampling_start_stop_cycles_leak_nothing(window, qtbot, checkpoints, fake_dialogs):
    playback = window.playback
    assert playback.load_checkpoint(checkpoints.points)
    set_combo_data(playback.sampler_kind, "ddim")
    playback.num_steps.setValue(5)
    playback.num_samples.setValue(32)

    def cycle(i: int) -> None:
        qtbot.mouseClick(playback.sample_button, _LEFT)
        assert playback.runner.is_running
        if i % 2 == 0:  # stop at once; odd cycles stop after the first frame (or the end)
            qtbot.mouseClick(playback.cancel_button, _LEFT)
        else:
            qtbot.waitUntil(lambda: playback.has_frames() or not playback.runner.is_running)
            if playback.cancel_button.isEnabled():
                qtbot.mouseClick(playback.cancel_button, _LEFT)
        qtbot.waitUntil(lambda: not playback.runner.is_running, timeout=10000)
        assert playback.runner.wait(5)
        assert playback.sample_button.isEnabled() and not playback.cancel_button.isEnabled()

    for i in range(20):  # warm-up: caches, allocator pools, pyqtgraph items
        cycle(i)
    base = counts(window)
    for i in range(CYCLES):
        cycle(i)
    after = counts(window)
    assert after == base, {k: (base[k], after[k]) for k in base if base[k] != after[k]}
    assert after["worker registry"] == 0 and after["running worker threads"] == 0
    assert fake_dialogs.errors == [] and fake_dialogs.asked == []
    # the panel still samples a full run afterwards
    with qtbot.waitSignal(playback.runner.finished, timeout=30000):
        playback.sample_button.click()
    assert playback.runner.wait(5) and len(playback.trajectory) == 6


# ---------------------------------------------------------------------- a long training run


LONG_RUN_STEPS = 1000


@pytest.mark.slow
def test_long_gui_training_keeps_history_and_previews_bounded(window, qtbot, fake_dialogs):
    """A 1000-step training run in the GUI with previews every 50 steps: the stored loss curve,
    the plotted curve, the loss-vs-t scatter and the preview stay bounded (the curve bound is
    lowered to 200 points so that it is reached and thinned twice here). A step budget, not a
    time budget: the run has the same length on any machine."""
    training = window.training
    window.tabs.setCurrentWidget(training)
    set_combo_data(training.source, "moons")
    set_combo_data(training.model_size, "small")
    set_combo_data(training.device, "cpu")
    set_combo_data(training.budget, "steps")
    training.max_steps.setValue(LONG_RUN_STEPS)
    training.batch.setValue(64)
    training.steps_T.setValue(100)
    training.preview_every.setValue(50)
    # the panel's curves with a lower bound (the run keeps and clears these same objects)
    training.loss = training_module.Series(max_points=200)
    training.smoothed = training_module.Series(max_points=200)

    stored: list[int] = []  # loss points stored, after every delivered record
    training.runner.progressed.connect(lambda record: stored.append(training.loss.n))
    with qtbot.waitSignal(training.model_trained, timeout=300000) as trained:
        training.start_button.click()
    assert training.runner.wait(30)
    steps = trained.args[0].training["step"]
    assert steps == LONG_RUN_STEPS

    # bounded: the stored and plotted curves, the scatter, the preview
    x, y = training.loss.data()
    assert training.loss.n <= 200 and training.smoothed.n <= 200
    assert training.loss.stride >= 4  # thinned at least twice
    assert x[0] == 1 and steps - x[-1] < training.loss.stride  # start to end, evenly
    np.testing.assert_array_equal(np.diff(x), training.loss.stride)
    assert np.isfinite(y).all()
    plotted, _ = training.loss_curve.getOriginalDataset()
    assert len(plotted) == training.loss.n
    assert len(training.scatter.getOriginalDataset()[0]) <= 2 * training_module.SCATTER_POINTS
    assert training.preview is not None and training.preview.samples.shape[0] == (
        training_module.PREVIEW_POINTS
    )
    assert len(stored) >= LONG_RUN_STEPS and max(stored) <= 200
    assert fake_dialogs.errors == []


def test_ended_jobs_release_their_worker_and_trainer(window, qtbot, checkpoints):
    """A run that ended leaves no worker object behind, and so no Trainer (with its model,
    optimizer and data) and no sampling job: memory does not grow run after run."""
    from diffusion_studio.core.training import Trainer

    def alive(kind) -> int:
        settle()
        return sum(issubclass(type(o), kind) for o in gc.get_objects())

    training, playback = window.training, window.playback
    set_combo_data(training.source, "moons")
    set_combo_data(training.model_size, "small")
    set_combo_data(training.budget, "steps")
    training.max_steps.setValue(5)
    training.preview_every.setValue(0)
    for _ in range(2):
        with qtbot.waitSignal(training.model_trained, timeout=60000):
            training.start_button.click()
        assert training.runner.wait(5)
        assert alive(Trainer) == 0
        assert alive(worker.Worker) == 0
    assert playback.load_checkpoint(checkpoints.points)
    playback.num_steps.setValue(3)
    with qtbot.waitSignal(playback.runner.finished, timeout=60000):
        playback.sample_button.click()
    assert playback.runner.wait(5)
    assert alive(worker.Worker) == 0 and alive(QThread) == 0
