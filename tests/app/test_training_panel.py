"""Training panel: a tiny run to the end, pause / resume / stop, failures, checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from diffusion_studio.app.panels.training_panel import TrainingPanel
from diffusion_studio.app.widgets import set_combo_data
from diffusion_studio.core.checkpoint import load_checkpoint
from diffusion_studio.core.training import preset_config


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
    # The step under way when Pause was pressed still ends (slowly on a busy machine); then the
    # trainer holds between steps, and once its last records reached the panel the count stays.
    control = panel.runner.control
    qtbot.waitUntil(lambda: control.is_holding, timeout=30000)
    qtbot.wait(500)  # the records queued before the hold reach the GUI thread
    paused_at = panel.loss.n
    qtbot.wait(500)
    assert control.is_holding and panel.loss.n == paused_at
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
    from diffusion_studio.core import memory

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
    from diffusion_studio.app.panels import training_panel

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


# ---------------------------------------------------------------------- state and feedback


def run_to_end(panel, qtbot, source="moons", steps=20):
    tiny(panel, source, steps=steps)
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        panel.start()
    assert panel.runner.wait(10)
    panel.redraw_now()


def test_choosing_other_data_clears_the_last_runs_results(panel, qtbot, image_folder):
    """Nothing drawn for the moons stays when the digits are chosen: curves, scatter, previews
    and their caption, numbers, the error line. The outcome line names the moons."""
    run_to_end(panel, qtbot, "moons", steps=20)
    assert panel.preview_points.plotItem.titleLabel.text == "Final samples at step 20 (EMA weights)"
    assert panel.loss.n == 20 and "Step <b>20</b>" in panel.stats.text()
    panel.error.show_message("an old problem")
    set_combo_data(panel.source, "digits")
    assert panel.loss.n == 0 and panel.preview is None
    for curve in (panel.loss_curve, panel.smooth_curve, panel.scatter):
        x, _ = curve.getOriginalDataset()
        assert x is None or len(x) == 0
    assert panel.sample_scatter.data.size == 0
    assert panel.preview_points.plotItem.titleLabel.text == "Preview samples over the data"
    assert "step" not in panel.preview_image.title_item.text
    assert panel.stats.text() == "Not started." and panel.error.isHidden()
    assert panel.outcome.text().startswith("Done (moons, step 20)")
    # another folder is other data too
    assert panel.set_data_folder(image_folder)
    panel.loss.append(1, 0.5)
    other = image_folder.parent / "other"
    other.mkdir()
    for png in image_folder.iterdir():
        (other / png.name).write_bytes(png.read_bytes())
    assert panel.set_data_folder(other)
    assert panel.loss.n == 0


def test_controls_that_do_not_apply_are_hidden_not_frozen(panel, image_folder):
    """Image size and channels are a folder's choice: hidden for the digits and 2-D sets."""
    form = panel.data_box.layout()
    for source in ("digits", "moons"):
        set_combo_data(panel.source, source)
        assert not form.isRowVisible(panel.image_size) and not form.isRowVisible(panel.channels)
    assert panel.set_data_folder(image_folder)
    assert form.isRowVisible(panel.image_size) and form.isRowVisible(panel.channels)


def test_the_end_of_a_run_says_done_and_where_and_opens_in_playback(panel, qtbot):
    run_to_end(panel, qtbot, "moons", steps=10)
    path = panel.last_result.path
    assert panel.outcome.text() == f"Done (moons, step 10): saved to {path}"
    assert panel.outcome.isVisible() and panel.open_button.isVisible()
    with qtbot.waitSignal(panel.open_in_playback) as opened:
        panel.open_button.click()
    assert opened.args[0].training["step"] == 10


def test_the_final_preview_is_announced_in_the_panel_and_the_status_bar(panel, tmp_path):
    """The record before the final preview says one follows: the outcome line and the job's
    status say "Sampling the final preview…" (a busy bar, no ETA), then the checkpoint is saved."""
    from diffusion_studio.core.training import TrainPreview, TrainProgress

    config = panel.build_config()
    job = panel._make_job(config, None, tmp_path / "a.safetensors", "digits")
    last = TrainProgress(
        step=19,
        total_steps=19,
        loss=0.3,
        timesteps=np.zeros(4),
        losses=np.ones(4),
        lr=1e-3,
        samples_per_s=10.0,
        elapsed_s=120.0,
        eta_s=0.0,
        fraction_done=1.0,
        preview_follows=True,
    )
    status = job.describe(last)
    assert status.text == "Sampling the final preview…"
    assert status.fraction is None and status.eta_s is None
    middle = replace(last, step=7, fraction_done=0.4, eta_s=30.0)
    assert job.describe(middle).text.endswith("sampling a preview…")
    panel._on_progressed(last)
    assert panel.outcome.text() == "Sampling the final preview…"
    final = TrainPreview(19, np.zeros((16, 1, 28, 28), np.float32), final=True)
    assert job.describe(final).text == "Saving the checkpoint…"
    panel._on_progressed(final)
    panel.redraw_now()
    assert panel.preview_image.title_item.text == "Final samples at step 19 (EMA weights)"


def test_stop_says_at_which_step_and_where_it_is_saved(panel, qtbot):
    tiny(panel, "moons", steps=1_000_000)
    panel.start()
    qtbot.waitUntil(lambda: panel.loss.n >= 3, timeout=30000)
    with qtbot.waitSignal(panel.model_trained, timeout=30000):
        panel.stop_button.click()
    assert panel.runner.wait(10)
    result = panel.last_result
    assert panel.outcome.text() == f"Stopped at step {result.step}: saved to {result.path}"
    assert panel.open_button.isVisible()


def test_a_failed_run_saves_its_last_good_step(panel, qtbot, fails_at_step_4, fake_dialogs):
    """A TrainingError (the loss became NaN) at step 4: steps 1-3 were good, their weights are
    saved and named in the outcome line, and Open in Playback offers them."""
    tiny(panel, "moons", steps=10)
    with qtbot.waitSignal(panel.runner.failed, timeout=30000):
        panel.start()
    assert panel.runner.wait(10)
    saved = panel.autosave_path
    assert panel.outcome.text() == (
        f"Failed: the loss became nan at step 4: training is unstable; last good step 3 saved "
        f"to {saved}."
    )
    assert load_checkpoint(saved).training["step"] == 3
    assert panel.open_button.isVisible()
    assert fake_dialogs.errors[-1][0] == "Training stopped"
    with qtbot.waitSignal(panel.open_in_playback) as opened:
        panel.open_button.click()
    assert opened.args[0].training["step"] == 3
    assert panel.last_result.step == 3  # what Save Checkpoint As saves
    assert panel.suggested_checkpoint_name() == "moons-mlp-step3.safetensors"


def test_a_failed_run_keeps_its_last_good_step_when_saving_fails(
    panel, qtbot, monkeypatch, fails_at_step_4, fake_dialogs, tmp_path
):
    """The loss becomes NaN at step 4 and the autosave folder cannot be written: the last good
    step (3) stays in memory, the outcome line says so, and Save Checkpoint As saves it."""
    from diffusion_studio.app import dialogs
    from diffusion_studio.app.panels import training_panel

    monkeypatch.setattr(training_panel, "checkpoints_dir", lambda: tmp_path / "no-such-folder")
    panel.autosave_minutes.setValue(0)  # only at the end
    tiny(panel, "moons", steps=10)
    with qtbot.waitSignal(panel.runner.failed, timeout=30000):
        panel.start()
    assert panel.runner.wait(10)
    text = panel.outcome.text()
    assert (
        text.startswith("Failed: the loss became nan at step 4")
        and "last good step 3 not saved" in text
    )
    assert panel.last_result.step == 3 and panel.last_result.checkpoint.training["step"] == 3
    target = tmp_path / "kept.safetensors"
    monkeypatch.setattr(dialogs, "ask_save_path", lambda *args, **kwargs: target)
    panel.save_button.click()
    assert load_checkpoint(target).training["step"] == 3


def test_save_checkpoint_as_suggests_the_runs_own_name(panel, qtbot, tmp_path, monkeypatch):
    from diffusion_studio.app import dialogs

    run_to_end(panel, qtbot, "moons", steps=5)
    asked = []

    def ask(parent, title, filter, suggested=""):
        asked.append(suggested)
        return tmp_path / "kept.safetensors"

    monkeypatch.setattr(dialogs, "ask_save_path", ask)
    panel.save_button.click()
    assert Path(asked[0]).name == "moons-mlp-step5.safetensors"
    assert load_checkpoint(tmp_path / "kept.safetensors").training["step"] == 5


def test_the_loss_plots_say_what_they_show(panel):
    """Digits with diffusion: the Loss curve is the min-SNR-weighted objective, the scatter the
    unweighted per-sample MSE; with flow (the digits preset) the velocity's MSE; the moons train
    without weights. The step axis has whole-number ticks."""
    set_combo_data(panel.source, "digits")
    assert "velocity eps - x_0" in panel.loss_plot.plotItem.titleLabel.text
    set_combo_data(panel.objective, "diffusion")
    assert "min-SNR weighted, gamma = 5" in panel.loss_plot.plotItem.titleLabel.text
    assert "min(SNR_t, gamma) / (SNR_t + 1)" in panel.loss_plot.toolTip()
    assert "unweighted MSE" in panel.scatter_plot.plotItem.titleLabel.text
    assert "sit higher" in panel.scatter_plot.toolTip()
    set_combo_data(panel.source, "moons")
    assert "MSE of the v prediction" in panel.loss_plot.plotItem.titleLabel.text
    assert "no min-SNR weighting" in panel.loss_plot.toolTip()
    axis = panel.loss_plot.getAxis("bottom")
    for low, high in ((0.0, 3.0), (0.0, 19.0), (1.0, 2.0), (0.0, 2500.0)):
        values = [v for _, level in axis.tickValues(low, high, 500) for v in level]
        assert values and all(v == int(v) for v in values), (low, high, values)


# ---------------------------------------------------------------------- small screens

SCREENS = [(1280, 720), (1366, 768)]
WINDOW_CHROME = 40  # a window manager's title bar: the maximised window's height is less


def inside_the_window(widget, window) -> bool:
    """Shown and not clipped: the widget's rectangle lies inside every ancestor's (a scroll
    area's viewport clips what is scrolled away) and inside the window."""
    from PySide6.QtCore import QPoint, QRect

    if not widget.isVisible():
        return False
    rect = QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())
    parent = widget.parentWidget()
    while parent is not None and parent is not window:
        if not QRect(parent.mapTo(window, QPoint(0, 0)), parent.size()).contains(rect):
            return False
        parent = parent.parentWidget()
    return window.rect().contains(rect)


@pytest.mark.parametrize("screen", SCREENS)
def test_start_pause_stop_stay_visible_on_a_small_screen(window, qtbot, screen):
    width, height = screen[0], screen[1] - WINDOW_CHROME
    window.resize(width, height)
    window.tabs.setCurrentWidget(window.training)
    qtbot.waitUntil(lambda: window.training.isVisible())
    qtbot.wait(50)
    assert window.height() <= height and window.width() <= width
    panel = window.training
    for b in (panel.start_button, panel.pause_button, panel.stop_button, panel.save_button):
        assert inside_the_window(b, window), b.text()
    for plot in (panel.loss_plot, panel.scatter_plot):
        assert plot.height() >= 150 and plot.width() >= 300
    assert panel.preview_stack.height() >= 250
    # the Dashboard tab: its plots keep their room, its buttons are on screen
    panel.views.setCurrentWidget(panel.dashboard)
    qtbot.waitUntil(lambda: panel.dashboard.isVisible())
    qtbot.wait(50)
    dash = panel.dashboard
    for plot in (dash.loss_plot, dash.heatmap_plot, dash.grad_plot, dash.lr_plot):
        assert plot.height() >= 110 and plot.width() >= 200
        item = plot.getPlotItem()
        assert item.effectiveSizeHint(Qt.SizeHint.MinimumSize).width() <= plot.width()  # no clip
    assert dash.preview_view.height() >= 150
    for b in (dash.gif_button, dash.overlay_button, dash.clear_overlay_button, dash.slider):
        assert inside_the_window(b, window), b
    for b in (panel.start_button, panel.stop_button):
        assert inside_the_window(b, window), b.text()


# ---------------------------------------------------------------------- dashboard, objective


def test_the_dashboard_fills_during_a_tiny_run_and_stays_after_it(panel, qtbot):
    from diffusion_studio.core.run_log import LossHeatmap, preview_picture, step_record
    from diffusion_studio.core.training import TrainPreview, TrainProgress

    tiny(panel, "moons", steps=20)
    records: list[object] = []
    panel.runner.progressed.connect(records.append)
    panel.views.setCurrentWidget(panel.dashboard)
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        panel.start()
        qtbot.waitUntil(lambda: panel.dashboard.steps.size > 0, timeout=30000)
    steps = [step_record(r, 100) for r in records if isinstance(r, TrainProgress)]
    previews = [r for r in records if isinstance(r, TrainPreview)]
    assert len(steps) == 20 and [p.step for p in previews] == [10, 20]
    dash = panel.dashboard
    np.testing.assert_array_equal(dash.steps, [r.step for r in steps])
    np.testing.assert_array_equal(dash.losses, [r.loss for r in steps])
    np.testing.assert_array_equal(dash.grad_norms, [r.grad_norm for r in steps])
    np.testing.assert_array_equal(dash.learning_rates, [r.lr for r in steps])
    reference = LossHeatmap()
    for r in steps:
        reference.add(r)
    np.testing.assert_array_equal(dash.heatmap.image(), reference.image())
    assert [s for s, _ in dash.previews] == [10, 20]
    for (_, picture), preview in zip(dash.previews, previews):
        np.testing.assert_array_equal(picture, preview_picture(preview.samples))
    # drawn when the run ended (the Dashboard tab is shown)
    x, y = dash.loss_curve.getOriginalDataset()
    np.testing.assert_array_equal(x, dash.steps)
    np.testing.assert_array_equal(dash.heatmap_shown.shape, reference.image().shape)
    # kept after the run; a new run starts it afresh
    assert dash.steps.size == 20 and len(dash.previews) == 2
    panel.max_steps.setValue(3)
    panel.preview_every.setValue(0)
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        panel.start()
    np.testing.assert_array_equal(panel.dashboard.steps, [1, 2, 3])
    assert panel.dashboard.previews == []


def test_a_resumed_run_overlays_its_history_on_the_dashboard(panel, qtbot, tmp_path):
    from diffusion_studio.core.checkpoint import save_checkpoint
    from diffusion_studio.core.training import Trainer

    config = preset_config(
        "moons", "small", max_steps=6, max_minutes=None, device="cpu", num_points=256
    )
    trainer = Trainer(replace(config, batch_size=16))
    for _ in trainer.run():
        pass
    path = tmp_path / "half.safetensors"
    save_checkpoint(path, trainer.checkpoint())
    assert panel.set_resume_checkpoint(path)
    label, steps, losses = panel.dashboard.overlay
    assert label == "steps 1-6, before resuming"
    np.testing.assert_array_equal(steps, [s for s, _ in trainer.loss_history])
    np.testing.assert_array_equal(losses, np.float32([v for _, v in trainer.loss_history]))
    panel.clear_resume()
    set_combo_data(panel.source, "spiral")  # other data: the resumed run's curve goes
    assert panel.dashboard.overlay is None


def test_the_objective_choice_reaches_the_train_config(panel, qtbot):
    from diffusion_studio.app.panels.training_panel import FLOW_DISABLED_TIP
    from diffusion_studio.app.settings import make_settings

    tiny(panel, "moons", steps=3)
    panel.preview_every.setValue(0)
    form = panel.model_box.layout()
    assert panel.build_config().objective == "diffusion"
    assert not form.isRowVisible(panel.flow_time)
    assert panel.kind.isEnabled() and panel.prediction.isEnabled()
    prediction_tip = panel.prediction.toolTip()

    set_combo_data(panel.objective, "flow")
    set_combo_data(panel.flow_time, "uniform")
    config = panel.build_config()
    assert (config.objective, config.flow_time_sampling) == ("flow", "uniform")
    assert form.isRowVisible(panel.flow_time) and panel.flow_time.isEnabled()
    for widget in (panel.kind, panel.prediction):  # diffusion's alone: disabled, saying why
        assert not widget.isEnabled() and widget.toolTip() == FLOW_DISABLED_TIP
    assert (
        "velocity" in panel.loss_plot.windowTitle() + panel.loss_plot.getPlotItem().titleLabel.text
    )
    with qtbot.waitSignal(panel.model_trained, timeout=60000) as trained:
        panel.start()
    assert panel.runner.wait(10)
    saved = trained.args[0].training["config"]
    assert (saved["objective"], saved["flow_time_sampling"]) == ("flow", "uniform")
    assert panel.dashboard.steps.size == 3
    # both t axes say they show T t of flow's t in [0, 1]
    for plot, side in ((panel.scatter_plot, "bottom"), (panel.dashboard.heatmap_plot, "left")):
        assert "flow matching" in plot.getPlotItem().getAxis(side).labelText

    # another data source brings its preset's objective (spiral: diffusion; digits: flow);
    # the settings keep the user's choice
    set_combo_data(panel.source, "spiral")
    assert panel.build_config().objective == preset_config("spiral").objective == "diffusion"
    set_combo_data(panel.source, "digits")
    assert panel.build_config().objective == preset_config("digits").objective == "flow"
    set_combo_data(panel.source, "spiral")
    set_combo_data(panel.objective, "flow")
    set_combo_data(panel.flow_time, "uniform")
    panel.save_state(make_settings())
    again = TrainingPanel()
    qtbot.addWidget(again)
    again.restore_state(make_settings())
    assert again.build_config().objective == "flow"
    assert again.build_config().flow_time_sampling == "uniform"
    assert not again.prediction.isEnabled()

    set_combo_data(panel.objective, "diffusion")
    assert panel.prediction.isEnabled() and panel.prediction.toolTip() == prediction_tip
    assert not form.isRowVisible(panel.flow_time)
