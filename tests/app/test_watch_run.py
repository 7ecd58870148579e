"""File > Watch Run…: following a run's metrics log while another process writes it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from diffusion_studio.app.watch_run import STALE_S, RunFollower, WatchRunWindow, run_logs
from diffusion_studio.core.run_log import (
    T_BINS,
    EndRecord,
    MetricsLogWriter,
    RunHeader,
    RunLogError,
    StepRecord,
    encode,
    preview_picture,
)

STEP_BINS = tuple(0.1 * b for b in range(T_BINS))


def header(checkpoint: str = "run.safetensors", **config) -> RunHeader:
    return RunHeader(
        objective="diffusion",
        num_timesteps=100,
        config={"data": "moons", "max_steps": 10, "batch_size": 8, **config},
        checkpoint=checkpoint,
        world_size=2,
    )


def step(n: int) -> StepRecord:
    return StepRecord(n, 1.0 / n, 1e-3 * n, 0.5 + n, 100.0, 0.1 * n, STEP_BINS)


def append(log: Path, text: str) -> None:
    with open(log, "a", encoding="utf-8") as f:
        f.write(text)


@pytest.fixture
def run_folder(tmp_path) -> Path:
    folder = tmp_path / "runs"
    folder.mkdir()
    return folder


def watch(qtbot, folder: Path) -> WatchRunWindow:
    """A window following `folder`, not shown (no timer: the test polls)."""
    window = WatchRunWindow(folder, run_logs(folder))
    qtbot.addWidget(window)
    return window


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from diffusion_studio.core.run_log import (
        EndRecord, MetricsLogWriter, RunHeader, StepRecord, T_BINS)

    folder = Path(sys.argv[1])
    bins = tuple(0.1 * b for b in range(T_BINS))
    header = RunHeader("flow", 1000, {"data": "digits", "max_steps": 10}, "run.safetensors",
                       world_size=4)
    with MetricsLogWriter(folder / "run.safetensors", header) as log:
        for n in range(1, 11):
            log.write(StepRecord(n, 1.0 / n, 1e-3 * n, 0.5 + n, 100.0, 0.1 * n, bins))
            if n == 5:  # the test sees a run in progress, then lets it go on
                deadline = time.monotonic() + 60
                while not (folder / "go").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            else:
                time.sleep(0.2)
        log.preview(10, np.random.default_rng(0).uniform(-1, 1, (4, 1, 8, 8)))
        log.write(EndRecord("finished", 10))
    """
)


@pytest.mark.slow  # a Python process that imports the engine
def test_follows_a_run_another_process_writes(qtbot, run_folder):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run_folder)])
    try:
        log = run_folder / "run.metrics.jsonl"
        qtbot.waitUntil(log.exists, timeout=60000)
        window = watch(qtbot, run_folder)
        window.show()  # polls on its timer from now on
        qtbot.waitUntil(lambda: len(window.dashboard.steps) == 5, timeout=30000)
        assert window.status.text().startswith("Running — step 5, last line")
        assert "flow" in window.facts.text() and "4 processes" in window.facts.text()
        assert "digits" in window.facts.text()
        (run_folder / "go").touch()
        qtbot.waitUntil(lambda: window.status.text() == "Finished at step 10", timeout=30000)
        assert writer.wait(30) == 0
    finally:
        writer.kill()
        writer.wait()
    steps = np.arange(1, 11)
    np.testing.assert_array_equal(window.dashboard.steps, steps)
    np.testing.assert_array_equal(window.dashboard.losses, 1.0 / steps)
    np.testing.assert_array_equal(window.dashboard.grad_norms, 0.5 + steps)
    [(preview_step, picture)] = window.dashboard.previews
    expected = preview_picture(np.random.default_rng(0).uniform(-1, 1, (4, 1, 8, 8)))
    assert preview_step == 10
    np.testing.assert_array_equal(picture, expected.reshape(picture.shape))
    assert not window.open_button.isEnabled()  # the run saved no checkpoint
    window.close()
    assert not window.timer.isActive()


def test_a_half_written_line_is_waited_for(qtbot, run_folder):
    log = run_folder / "run.metrics.jsonl"
    line = encode(step(1))
    append(log, encode(header()) + line[:20])
    window = watch(qtbot, run_folder)
    assert len(window.dashboard.steps) == 0
    assert window.status.text().endswith("waiting for a half-written line")
    append(log, line[20:])
    window.poll()
    np.testing.assert_array_equal(window.dashboard.steps, [1])
    assert "half-written" not in window.status.text()
    assert window.status.text().startswith("Running — step 1")


def test_a_damaged_line_is_skipped_and_counted(qtbot, run_folder):
    log = run_folder / "run.metrics.jsonl"
    append(log, encode(header()) + encode(step(1)) + '{"kind": "step", "lo\n' + encode(step(2)))
    window = watch(qtbot, run_folder)
    np.testing.assert_array_equal(window.dashboard.steps, [1, 2])
    assert window.status.text().endswith("; 1 damaged line skipped")
    # a complete line that parses but does not fit the run (other t bins) counts too
    append(log, encode(StepRecord(3, 1.0, 1e-3, 1.0, 1.0, 1.0, (0.5,))))
    window.poll()
    assert window.status.text().endswith("; 2 damaged lines skipped")
    # and so does a header of the wrong types
    append(log, encode(header()).replace('"checkpoint":"run.safetensors"', '"checkpoint":5'))
    window.poll()
    assert window.status.text() == "Running — step 2, last line 0 s ago; 3 damaged lines skipped"
    assert window.follower.checkpoint_path == run_folder / "run.safetensors"


def test_end_records_and_a_silent_run(run_folder):
    log = run_folder / "run.metrics.jsonl"
    now = [1000.0]
    append(log, encode(header()) + encode(step(1)) + encode(step(2)))
    follower = RunFollower(log, clock=lambda: now[0], wall_clock=lambda: 0.0)
    follower.poll()
    assert follower.status() == "Running — step 2, last line 0 s ago"
    now[0] += STALE_S + 5
    follower.poll()  # nothing new
    assert follower.status() == "No new lines for 2 min (the run may have stopped)"
    append(log, encode(EndRecord("failed", 2, "out of memory")))
    follower.poll()
    assert follower.status() == "Failed at step 2: out of memory"
    append(log, encode(header()) + encode(step(3)))  # resumed: running again
    follower.poll()
    assert follower.status() == "Running — step 3, last line 0 s ago"
    append(log, encode(EndRecord("stopped", 3)))
    follower.poll()
    assert follower.status() == "Stopped at step 3"


def test_a_finished_log_opened_later_is_not_running(run_folder):
    log = run_folder / "run.metrics.jsonl"
    append(log, encode(header()) + encode(step(1)))
    follower = RunFollower(log, wall_clock=lambda: log.stat().st_mtime + 600)
    follower.poll()
    assert follower.status() == "No new lines for 10 min (the run may have stopped)"


def test_a_rewritten_log_is_read_again(qtbot, run_folder):
    log = run_folder / "run.metrics.jsonl"
    append(log, encode(header()) + "".join(encode(step(n)) for n in range(1, 6)))
    window = watch(qtbot, run_folder)
    np.testing.assert_array_equal(window.dashboard.steps, [1, 2, 3, 4, 5])
    log.write_text(encode(header()) + encode(step(1)))  # a new run with the same name
    window.poll()
    np.testing.assert_array_equal(window.dashboard.steps, [1])
    assert window.status.text().endswith("the log was rewritten; reading it again")
    # a new run whose log grew past what was read before the next poll
    log.unlink()
    new_run = encode(header(data="a longer data set name"))
    log.write_text(new_run + "".join(encode(step(n)) for n in range(1, 9)))
    window.poll()
    assert "a longer data set name" in window.facts.text()
    np.testing.assert_array_equal(window.dashboard.steps, np.arange(1, 9))
    assert window.status.text().startswith("Running — step 8")
    assert "damaged" not in window.status.text()


def test_a_folder_without_logs_and_a_deleted_folder(qtbot, run_folder, tmp_path):
    with pytest.raises(RunLogError, match="holds no metrics log"):
        run_logs(run_folder)
    with pytest.raises(RunLogError, match="does not exist"):
        run_logs(tmp_path / "nowhere")
    log = run_folder / "run.metrics.jsonl"
    append(log, encode(header()) + encode(step(1)))
    window = watch(qtbot, run_folder)
    log.unlink()
    window.poll()
    assert window.status.text() == "The metrics log run.metrics.jsonl is no longer there."
    shutil.rmtree(run_folder)
    window.poll()
    assert window.status.text() == f"The folder {run_folder} no longer exists."
    np.testing.assert_array_equal(window.dashboard.steps, [1])  # what was read stays


def test_several_logs_newest_first_with_a_choice(qtbot, run_folder):
    import os

    old, new = run_folder / "old.metrics.jsonl", run_folder / "new.metrics.jsonl"
    append(old, encode(header("old.safetensors")) + encode(step(1)))
    append(new, encode(header("new.safetensors")) + encode(step(1)) + encode(step(2)))
    os.utime(old, (1, 1))
    window = watch(qtbot, run_folder)
    assert [window.log_choice.itemText(i) for i in range(2)] == ["new", "old"]
    np.testing.assert_array_equal(window.dashboard.steps, [1, 2])
    window.log_choice.setCurrentIndex(1)
    np.testing.assert_array_equal(window.dashboard.steps, [1])
    assert "old.safetensors" in window.facts.text()
    append(run_folder / "third.metrics.jsonl", encode(header("third.safetensors")))
    window.poll()  # a run started later joins the choice; the one followed stays
    assert window.log_choice.count() == 3 and window.log_choice.currentText() == "old"


def test_menu_opens_one_window_per_folder_and_the_checkpoint(
    window, qtbot, fake_dialogs, run_folder, tmp_path, checkpoints
):
    empty = tmp_path / "empty"
    empty.mkdir()
    fake_dialogs.paths.append(empty)
    window.watch_run_action.trigger()
    assert len(fake_dialogs.errors) == 1 and "holds no metrics log" in fake_dialogs.errors[0][1]

    MetricsLogWriter(run_folder / "run.safetensors", header()).close()
    fake_dialogs.paths.append(run_folder)
    window.watch_run_action.trigger()
    qtbot.waitUntil(lambda: len(window.findChildren(WatchRunWindow)) == 1, timeout=30000)
    watcher = window.findChildren(WatchRunWindow)[0]
    assert watcher.isVisible() and watcher.timer.isActive()
    fake_dialogs.paths.append(run_folder)
    window.watch_run_action.trigger()  # the same folder: the same window
    assert window.findChildren(WatchRunWindow) == [watcher]

    assert not watcher.open_button.isEnabled()  # no checkpoint saved yet
    (run_folder / "run.safetensors").write_bytes(b"not a checkpoint")
    watcher.poll()
    watcher.open_button.click()  # a damaged checkpoint: one message, no crash
    assert len(fake_dialogs.errors) == 2 and window.playback.checkpoint is None
    shutil.copy(checkpoints.points, run_folder / "run.safetensors")
    watcher.open_button.click()
    assert window.playback.checkpoint is not None, fake_dialogs.errors
    assert window.tabs.currentWidget() is window.playback

    watcher.close()
    assert not watcher.timer.isActive()
    qtbot.waitUntil(lambda: not window.findChildren(WatchRunWindow), timeout=5000)
    fake_dialogs.paths.append(run_folder)
    window.watch_run_action.trigger()  # closed: a new window
    qtbot.waitUntil(lambda: len(window.findChildren(WatchRunWindow)) == 1, timeout=5000)
