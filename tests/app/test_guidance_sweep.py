"""Playback's guidance sweep window: the grid it shows is core's for the panel's sampler,
seed and the window's scales and classes; refusals; cancel; the PNG export."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffusion_studio.app.panels.playback_panel import PlaybackPanel
from diffusion_studio.app.widgets import set_combo_data
from diffusion_studio.core.checkpoint import load_checkpoint
from diffusion_studio.core.guidance_sweep import SweepRequest, guidance_sweep, render_sweep


@pytest.fixture
def panel(show):
    return show(PlaybackPanel())


def sweep(dialog, qtbot):
    with qtbot.waitSignal(dialog.runner.finished, timeout=60000):
        assert dialog.sweep_button.isEnabled()
        dialog.sweep_button.click()
    dialog.runner.wait(10)


def test_the_shown_grid_is_cores_sweep_for_the_panels_settings(panel, qtbot, checkpoints):
    assert panel.load_checkpoint(checkpoints.conditional)
    assert panel.sweep_button.isEnabled()
    set_combo_data(panel.sampler_kind, "ddpm")  # ancestral: the step noise comes from the seed
    panel.num_steps.setValue(4)
    panel.seed.setValue(5)
    dialog = panel.open_guidance_sweep()
    assert dialog.isVisible() and dialog.scales.text() == "0, 1, 2, 4, 8"
    dialog.scales.setText("1, 3")
    dialog.classes.setText("7, 2")
    sweep(dialog, qtbot)
    ckpt = load_checkpoint(checkpoints.conditional)
    request = SweepRequest(panel.sampler_form.config(), (7, 2), (1.0, 3.0), seed=5)
    expected = guidance_sweep(ckpt, request)
    np.testing.assert_array_equal(dialog.sweep.samples, expected.samples)
    assert dialog.sweep.row_titles == ("no label", "s = 1 (no guidance)", "s = 3")
    np.testing.assert_array_equal(dialog.view.image, render_sweep(expected))
    assert "3 rows x 2 classes" in dialog.progress.text() and "seed 5" in dialog.progress.text()
    assert dialog.export_button.isEnabled() and not dialog.cancel_button.isEnabled()

    # all classes, no no-label row: 10 columns, one row per scale; another seed, other samples
    dialog.classes.setText("all")
    dialog.no_label_row.setChecked(False)
    panel.seed.setValue(6)
    sweep(dialog, qtbot)
    assert dialog.sweep.samples.shape[:2] == (2, 10)
    assert dialog.sweep.column_titles == tuple(str(k) for k in range(10))
    assert not np.allclose(dialog.sweep.samples[:, 7], expected.samples[1:, 0])
    assert dialog.view.image.shape == render_sweep(dialog.sweep).shape


def test_disabled_for_an_unconditional_model(panel, checkpoints, fake_dialogs):
    assert panel.load_checkpoint(checkpoints.conditional)
    dialog = panel.open_guidance_sweep()
    assert dialog.sweep_button.isEnabled() and not dialog.error.text()
    assert panel.load_checkpoint(checkpoints.images)  # unconditional
    assert not panel.sweep_button.isEnabled()
    assert not dialog.sweep_button.isEnabled()
    assert "class-conditional" in dialog.error.text()
    assert not dialog.start_sweep()
    assert fake_dialogs.errors[-1][0] == "Cannot sweep" and not dialog.runner.is_running
    assert panel.load_checkpoint(checkpoints.points)
    assert not panel.sweep_button.isEnabled()


@pytest.mark.parametrize(
    "field, text, reason",
    [
        ("scales", "1, two", "'two' is not a number"),
        ("scales", "", "at least one guidance scale"),
        ("scales", "1, 50", "between 0 and 20"),
        ("classes", "3, 10", "from 0 to 9"),
    ],
)
def test_bad_scales_and_classes_are_refused_with_the_reason(
    panel, checkpoints, fake_dialogs, field, text, reason
):
    assert panel.load_checkpoint(checkpoints.conditional)
    dialog = panel.open_guidance_sweep()
    getattr(dialog, field).setText(text)
    assert not dialog.sweep_button.isEnabled() and reason in dialog.error.text()
    assert not dialog.start_sweep()
    assert reason in fake_dialogs.errors[-1][1] and not dialog.runner.is_running
    getattr(dialog, field).setText("1" if field == "scales" else "all")
    assert dialog.sweep_button.isEnabled() and not dialog.error.isVisible()


def test_cancel_stops_the_sweep_and_keeps_the_last_grid(panel, qtbot, checkpoints):
    assert panel.load_checkpoint(checkpoints.conditional)
    set_combo_data(panel.sampler_kind, "ddim")
    panel.num_steps.setValue(100)  # the model's T: 6 rows of 100 steps
    dialog = panel.open_guidance_sweep()
    with qtbot.waitSignal(dialog.runner.cancelled, timeout=60000):
        dialog.sweep_button.click()
        assert dialog.cancel_button.isEnabled() and not dialog.sweep_button.isEnabled()
        qtbot.waitUntil(lambda: "step" in dialog.progress.text(), timeout=30000)
        dialog.cancel_button.click()
    dialog.runner.wait(10)
    assert dialog.sweep is None and not dialog.export_button.isEnabled()
    assert dialog.sweep_button.isEnabled()
    # closing the window stops a sweep too
    with qtbot.waitSignal(dialog.runner.cancelled, timeout=60000):
        assert dialog.start_sweep()
        dialog.close()
    dialog.runner.wait(10)
    assert dialog.sweep is None


def test_export_writes_the_shown_grid_as_png(panel, qtbot, checkpoints, export, tmp_path):
    assert panel.load_checkpoint(checkpoints.conditional)
    set_combo_data(panel.sampler_kind, "ddim")
    panel.num_steps.setValue(3)
    dialog = panel.open_guidance_sweep()
    dialog.classes.setText("0, 1, 2")
    sweep(dialog, qtbot)
    assert dialog.file_name().endswith("_guidance_ddim_3steps_seed0.png")
    target = export(dialog.export_button, panel.export_runner, tmp_path / "sweep.png")
    written = np.asarray(Image.open(target).convert("RGB"))
    np.testing.assert_array_equal(written, dialog.picture)
    assert written.shape[:2] == dialog.view.image.shape[:2]
