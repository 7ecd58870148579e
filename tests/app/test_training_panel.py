"""Training panel: a tiny run to the end, pause / resume / stop, failures, checkpoints."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.panels.training_panel import TrainingPanel
from app.widgets import set_combo_data
from core.checkpoint import load_checkpoint
from core.training import preset_config


@pytest.fixture
def panel(show):
    return show(TrainingPanel())


def tiny(panel, source="moons", steps=40):
    set_combo_data(panel.source, source)
    set_combo_data(panel.model_size, "small")
    set_combo_data(panel.device, "cpu")
    set_combo_data(panel.budget, "steps")
    panel.max_steps.setValue(steps)
    panel.batch.setValue(64 if source in ("moons",) else 4)
    panel.steps_T.setValue(100)
    panel.preview_every.setValue(10 if source == "moons" else 0)


def test_tiny_run_to_completion_grows_the_loss_curve(panel, qtbot, app_dirs, image_folder):
    assert panel.set_data_folder(image_folder)
    tiny(panel, "folder", steps=3)
    panel.image_size.setValue(8)
    set_combo_data(panel.channels, 1)
    with qtbot.waitSignal(panel.model_trained, timeout=60000) as trained:
        panel.start_button.click()
        assert not panel.start_button.isEnabled() and panel.stop_button.isEnabled()
    assert panel.runner.wait(10)
    steps, losses = panel.loss_curve.getOriginalDataset()
    assert list(steps) == [1, 2, 3]
    assert (losses > 0).all()
    assert trained.args[0].training["step"] == 3
    saved = list((app_dirs.data / "checkpoints").glob("tiny_images-*.safetensors"))
    assert len(saved) == 1 and load_checkpoint(saved[0]).training["step"] == 3
    assert panel.start_button.isEnabled() and not panel.stop_button.isEnabled()


def test_points_run_shows_previews(panel, qtbot):
    tiny(panel, "moons", steps=20)
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        panel.start()
    panel.redraw_now()
    assert panel.preview is not None and panel.preview.samples.shape[1] == 2
    x, _ = panel.sample_scatter.getData()
    assert len(x) == panel.preview.samples.shape[0]
    t, _ = panel.scatter.getOriginalDataset()  # each point is a pair (a short segment)
    assert t.size == 2 * 20 * 64
    assert panel.scatter_plot.getViewBox().viewRange()[0][1] >= panel.steps_T.value()


def test_pause_resume_stop(panel, qtbot):
    tiny(panel, "moons", steps=1_000_000)
    panel.start()
    qtbot.waitUntil(lambda: panel.loss.n >= 3, timeout=30000)
    panel.pause_button.click()
    assert panel.pause_button.text() == "Resume"
    # The step under way when Pause was pressed still ends (slowly on a busy machine); after
    # it, no step runs: the count settles and stays.
    counts = [panel.loss.n]

    def settled() -> bool:
        qtbot.wait(300)
        counts.append(panel.loss.n)
        return counts[-1] == counts[-2]

    qtbot.waitUntil(settled, timeout=10000)
    paused_at = panel.loss.n
    qtbot.wait(300)
    assert panel.loss.n == paused_at
    panel.pause_button.click()
    qtbot.waitUntil(lambda: panel.loss.n > paused_at, timeout=30000)
    with qtbot.waitSignal(panel.model_trained, timeout=30000) as trained:
        panel.stop_button.click()
    assert panel.runner.wait(10)
    assert trained.args[0].training["step"] >= paused_at
    assert panel.last_result.path.exists()


def test_invalid_settings_do_not_start(panel, fake_dialogs):
    set_combo_data(panel.source, "folder")  # no folder chosen
    assert not panel.start()
    assert not panel.runner.is_running
    assert "folder" in fake_dialogs.errors[-1][1]


def test_a_failing_run_stops_with_the_message(panel, qtbot, tmp_path, fake_dialogs):
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not really a png")  # listed, but cannot be loaded
    assert panel.set_data_folder(folder)
    tiny(panel, "folder", steps=2)
    with qtbot.waitSignal(panel.runner.failed, timeout=30000):
        panel.start()
    panel.runner.wait(10)
    assert fake_dialogs.errors[-1][0] == "Training stopped"
    assert "pics" in fake_dialogs.errors[-1][1]
    assert panel.start_button.isEnabled()


def test_save_and_resume_from_a_checkpoint(panel, qtbot, tmp_path, fake_dialogs):
    tiny(panel, "moons", steps=5)
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        panel.start()
    panel.runner.wait(10)
    target = tmp_path / "saved.safetensors"
    fake_dialogs.paths.append(target)
    panel.save_button.click()
    assert load_checkpoint(target).training["step"] == 5
    assert panel.set_resume_checkpoint(target)
    assert panel.loss.n == 5  # the saved loss history is shown
    panel.max_steps.setValue(3)  # three more steps
    with qtbot.waitSignal(panel.model_trained, timeout=60000) as trained:
        panel.start()
    panel.runner.wait(10)
    assert trained.args[0].training["step"] == 8
    assert panel.resume_from is None


def test_bad_checkpoint_cannot_be_resumed(panel, tmp_path, fake_dialogs, checkpoints):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert not panel.set_resume_checkpoint(bad)
    assert fake_dialogs.errors[-1][0] == "Cannot resume"
    assert panel.resume_from is None


# ---------------------------------------------------------------------- presets from core

# Fields that are the user's, not the preset's: they may differ from preset_config.
USER_FIELDS = dict(seed=0, device="cpu", preview_every=0, preview_count=1, preview_steps=1)


def same_run(a, b) -> bool:
    """Two TrainConfigs describe the same run apart from seed, device and previews."""
    return replace(a, **USER_FIELDS) == replace(b, **USER_FIELDS)


def test_first_launch_trains_exactly_the_digits_preset(window):
    panel = window.training
    assert same_run(panel.build_config(), preset_config("digits"))
    assert panel.budget.currentData() == "minutes" and panel.max_minutes.value() == 5.0
    assert panel.image_size.value() == 28 and not panel.image_size.isEnabled()


def test_choosing_a_source_fills_its_preset(panel):
    panel.batch.setValue(7)
    set_combo_data(panel.kind, "sigmoid")
    set_combo_data(panel.source, "moons")
    assert same_run(panel.build_config(), preset_config("moons"))
    assert panel.budget.currentData() == "minutes" and panel.max_minutes.value() == 0.5
    assert panel.batch.value() == 256 and panel.kind.currentData() == "cosine"  # not sigmoid
    set_combo_data(panel.model_size, "small")
    set_combo_data(panel.source, "digits")
    assert same_run(panel.build_config(), preset_config("digits", "small"))
    assert panel.max_minutes.value() == 5.0 and panel.prediction.currentData() == "v"


def test_a_folder_gets_the_preset_for_its_size_and_channels(panel, image_folder):
    panel.batch.setValue(7)
    assert panel.set_data_folder(image_folder)  # grey PNGs
    assert panel.channels.currentData() == 1 and panel.image_size.isEnabled()
    expected = preset_config(str(image_folder), image_size=32, channels=1)
    assert same_run(panel.build_config(), expected)
    panel.image_size.setValue(16)  # a smaller model for smaller images
    assert same_run(panel.build_config(), preset_config(str(image_folder), image_size=16))
    set_combo_data(panel.source, "digits")  # digits keep their own shape ...
    assert panel.image_size.value() == 28 and not panel.image_size.isEnabled()
    set_combo_data(panel.source, "folder")  # ... and the folder keeps its choice
    assert panel.image_size.value() == 16


def test_a_batch_too_big_for_memory_is_refused_with_the_largest_that_fits(
    panel, qtbot, fake_dialogs, monkeypatch
):
    """Out of memory: with 1 GB free, batch 60000 of digits is refused before the first
    step (core.memory's estimate), the message names the largest batch that fits, and the
    panel can start again."""
    from core import memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 1024**3)
    tiny(panel, "digits", steps=2)
    panel.batch.setValue(60000)
    with qtbot.waitSignal(panel.runner.failed, timeout=60000):
        panel.start()
    panel.runner.wait(10)
    title, message = fake_dialogs.errors[-1]
    assert title == "Training stopped"
    assert "batch 60000" in message and "use a batch of at most" in message
    assert panel.start_button.isEnabled()


def test_the_timer_redraws_one_plot_per_tick(panel, monkeypatch):
    """Curves, then the loss-against-t scatter, then the preview, each on its own tick (their
    paints then fall in separate event-loop passes: shorter stalls); the timer stops once
    everything is drawn."""
    drawn: list[str] = []
    for name in ("_redraw_curves", "_redraw_scatter", "_redraw_preview"):
        monkeypatch.setattr(panel, name, lambda name=name: drawn.append(name))
    panel._dirty = panel._preview_dirty = True
    panel.timer.start()
    ticks = []
    for _ in range(4):
        panel._on_timer()
        ticks.append(list(drawn))
        drawn.clear()
    assert ticks == [["_redraw_curves"], ["_redraw_scatter"], ["_redraw_preview"], []]
    assert not panel.timer.isActive()


def test_while_training_the_curves_redraw_at_most_every_live_redraw_s(panel, monkeypatch):
    """Records arriving faster than LIVE_REDRAW_S redraw the curves once per LIVE_REDRAW_S
    while a job runs (each paint takes the training thread's CPU and GIL); when no job runs
    they are drawn on the next tick."""
    from app.panels import training_panel

    clock = [100.0]
    monkeypatch.setattr(training_panel.time, "monotonic", lambda: clock[0])
    drawn: list[float] = []
    monkeypatch.setattr(panel, "_redraw_curves", lambda: drawn.append(clock[0]))
    monkeypatch.setattr(type(panel.runner), "is_running", property(lambda runner: True))
    for _ in range(20):  # a record every 1/8 s (exact in binary), the timer ticking after each
        panel._dirty = True
        panel._on_timer()
        clock[0] += 0.125
    assert training_panel.LIVE_REDRAW_S == 0.5
    assert drawn == [100.0, 100.5, 101.0, 101.5, 102.0]
    monkeypatch.setattr(type(panel.runner), "is_running", property(lambda runner: False))
    panel._dirty = True
    panel._on_timer()
    assert drawn[-1] == clock[0]  # not running: drawn at once


def test_the_digits_can_be_trained_without_their_labels(panel):
    """The class-labels box: on (the preset) a class-conditional digits model, off the
    unconditional one the CLI's --unconditional trains; the model line says which; the box is
    offered only for data with labels."""
    assert panel.source.currentData() == "digits" and panel.class_labels.isChecked()
    config = panel.build_config()
    assert config.class_conditional and config.model.num_classes == 10
    assert panel.model_info.text().endswith("M parameters, 10 classes")
    panel.class_labels.setChecked(False)
    config = panel.build_config()
    assert not config.class_conditional and config.model.num_classes == 0
    assert config.model == preset_config("digits", class_conditional=False).model
    assert panel.model_info.text().endswith("M parameters")
    form = panel.model_box.layout()
    assert form.isRowVisible(panel.class_labels)
    set_combo_data(panel.source, "moons")
    assert not form.isRowVisible(panel.class_labels)
    set_combo_data(panel.source, "digits")
    assert form.isRowVisible(panel.class_labels) and not panel.build_config().class_conditional


def test_resuming_shows_whether_the_checkpoint_learned_the_labels(panel, checkpoints):
    """Resuming takes the model from the checkpoint: the class-labels box shows its choice and
    is locked like the other model settings."""
    assert panel.class_labels.isChecked()
    assert panel.set_resume_checkpoint(checkpoints.images)  # digits, no label vectors
    assert not panel.class_labels.isChecked() and not panel.class_labels.isEnabled()
    assert panel.set_resume_checkpoint(checkpoints.conditional)
    assert panel.class_labels.isChecked() and not panel.class_labels.isEnabled()
