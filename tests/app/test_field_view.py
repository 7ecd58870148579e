"""Playback's 2-D field window: the arrows are core.fields' field at the slider's t, for
diffusion and flow models; the exact field and the error only for the gaussians set; particles
move; the button only for 2-D point models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_studio.app.field_view import FieldViewDialog
from diffusion_studio.app.panels.playback_panel import PlaybackPanel
from diffusion_studio.core.checkpoint import Checkpoint, save_checkpoint
from diffusion_studio.core.fields import ModelFields
from diffusion_studio.core.models import MLPConfig, UNetConfig, build_model
from diffusion_studio.core.schedule import ScheduleConfig

T = 50
TINY_MLP = MLPConfig(hidden=16, layers=1, time_embed_dim=8)


def random_state(seed: int = 0) -> dict:
    """A tiny MLP's weights, all random (an untrained MLP's last layer is zero: it predicts 0)."""
    g = torch.Generator().manual_seed(seed)
    state = build_model(TINY_MLP).state_dict()
    return {name: 0.5 * torch.randn(t.shape, generator=g) for name, t in state.items()}


def tiny(objective: str, data: str) -> Checkpoint:
    """An untrained tiny 2-D model (the view shows whatever field the network has)."""
    prediction = "velocity" if objective == "flow" else "v"
    return Checkpoint(
        TINY_MLP,
        ScheduleConfig("cosine", T),
        prediction,
        random_state(),
        {"name": data, "kind": "points"},
        objective=objective,
    )


@pytest.fixture
def dialog(show):
    return show(FieldViewDialog())


def wait_for_particles(dialog, qtbot, k):
    qtbot.waitUntil(
        lambda: dialog.particles is not None and dialog.particles.index == k, timeout=30000
    )
    dialog.runner.wait(10)


@pytest.mark.parametrize("objective", ["diffusion", "flow"])
def test_arrows_are_cores_field_at_the_sliders_t(dialog, qtbot, objective):
    ckpt = tiny(objective, "gaussians")
    assert dialog.set_checkpoint(ckpt, "tiny")
    core = ModelFields(ckpt)
    for k in (3, 40):
        dialog.set_index(k)
        assert dialog.slider.value() == k
        expected = core.view(dialog.grid, k)
        arrows = dialog.learned_arrows
        np.testing.assert_allclose(arrows.vectors, expected.learned.vectors, rtol=1e-6)
        tails, tips = arrows.drawn()
        np.testing.assert_allclose(tails, dialog.grid, atol=1e-5)
        np.testing.assert_allclose(
            (tips - tails) / arrows.scale, expected.learned.vectors, rtol=1e-3, atol=1e-3
        )
        # the exact field beside it, at the same scale, and the error's number
        np.testing.assert_allclose(dialog.exact_arrows.vectors, expected.exact.vectors)
        assert dialog.exact_arrows.scale == arrows.scale
        assert f"{100 * expected.error.relative:.1f} %" in dialog.error_label.text()
        assert f"k = {k}" in dialog.level_label.text()
    assert dialog.exact_plot.isVisible() and dialog.error_plot.isVisible()
    # the particles for the slider's t: core's paths, learned and exact, then they move
    wait_for_particles(dialog, qtbot, 40)
    np.testing.assert_allclose(dialog.particles.learned.positions, core.particles(40).positions)
    exact = core.particles(40, exact=True).positions
    np.testing.assert_allclose(dialog.particles.exact.positions, exact)
    shown = dialog.frame
    qtbot.waitUntil(lambda: dialog.frame != shown, timeout=5000)
    np.testing.assert_allclose(
        dialog.learned_dots.getData()[0],
        dialog.particles.learned.positions[min(dialog.frame, exact.shape[0] - 1), :, 0],
    )
    # directions only: every arrow as long, along core's field
    dialog.directions_only.setChecked(True)
    tails, tips = dialog.learned_arrows.drawn()
    lengths = np.linalg.norm(tips - tails, axis=1)
    np.testing.assert_allclose(lengths, lengths[0], rtol=1e-4)
    unit = expected.learned.vectors / np.linalg.norm(expected.learned.vectors, axis=1)[:, None]
    np.testing.assert_allclose((tips - tails) / lengths[0], unit, atol=1e-4)
    dialog.play_button.click()  # pause: the frame stays
    assert dialog.play_button.text() == "Play" and not dialog.frame_timer.isActive()


def test_no_exact_panel_for_other_sets(dialog, qtbot):
    ckpt = tiny("flow", "moons")
    assert dialog.set_checkpoint(ckpt)
    assert dialog.view.exact is None
    assert not dialog.exact_plot.isVisible() and not dialog.error_plot.isVisible()
    assert "velocity" in dialog.explain.text()
    wait_for_particles(dialog, qtbot, dialog.index)
    assert dialog.particles.exact is None


def test_button_only_for_2d_models(show, qtbot, checkpoints, tmp_path, fake_dialogs):
    panel = show(PlaybackPanel())
    assert not panel.field_button.isEnabled()
    assert panel.load_checkpoint(checkpoints.images)
    assert not panel.field_button.isEnabled()
    assert panel.open_field_view() is None and fake_dialogs.errors[-1][0] == "2-D field"
    path = save_checkpoint(tmp_path / "gaussians.safetensors", tiny("diffusion", "gaussians"))
    assert panel.load_checkpoint(path)
    assert panel.field_button.isEnabled()
    panel.field_button.click()
    dialog = panel.field_dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.fields.checkpoint is panel.checkpoint and dialog.exact_plot.isVisible()
    assert panel.load_checkpoint(checkpoints.points)  # moons: the open window follows it
    assert dialog.fields.checkpoint is panel.checkpoint and not dialog.exact_plot.isVisible()
    assert dialog.runner in panel.runners()  # closing the app waits for its particle job
    assert panel.load_checkpoint(checkpoints.images)  # an image model: the window closes
    assert not dialog.isVisible() and not panel.field_button.isEnabled()
    assert panel.load_checkpoint(checkpoints.points)
    assert panel.open_field_view() is dialog and not dialog.exact_plot.isVisible()
    wait_for_particles(dialog, qtbot, dialog.index)
    assert dialog.frame_timer.isActive()
    dialog.close()  # stops the motion; opening it again moves the same particles on
    assert not dialog.frame_timer.isActive()
    shown = dialog.particles
    assert panel.open_field_view() is dialog and dialog.frame_timer.isActive()
    assert dialog.particles is shown
    dialog.close()
    assert dialog.shutdown(10)


def test_an_image_model_is_refused_with_a_message(dialog, fake_dialogs):
    image = Checkpoint(UNetConfig(), ScheduleConfig("cosine", T), "v", {}, {"name": "digits"})
    assert not dialog.set_checkpoint(image)
    assert fake_dialogs.errors[-1][0] == "2-D field"
    assert "2-D point model" in dialog.error.text() and dialog.fields is None
    assert dialog.set_checkpoint(tiny("diffusion", "moons"))  # a point model still works
    assert not dialog.error.text() and dialog.view is not None
    dialog.shutdown(10)
