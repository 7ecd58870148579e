"""Training dashboard: fed a real tiny run's records, it shows core's numbers (core.run_log)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from diffusion_studio.app.training_dashboard import (
    DASHBOARD_REDRAW_MS,
    MAX_PREVIEWS,
    TrainingDashboard,
    log_loss_image,
    log_ticks,
)
from diffusion_studio.core.checkpoint import load_checkpoint, save_checkpoint
from diffusion_studio.core.run_log import LossHeatmap, preview_picture, step_record
from diffusion_studio.core.schedule import ScheduleConfig
from diffusion_studio.core.training import Trainer, TrainPreview, TrainProgress, preset_config

T = 100


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    """A tiny 2-D points run: 24 steps, a preview every 8, and its checkpoint."""
    config = preset_config(
        "moons",
        "small",
        max_steps=24,
        max_minutes=None,
        device="cpu",
        num_points=256,
        batch_size=32,
        preview_every=8,
        preview_count=64,
        preview_steps=5,
        preview_interval_s=None,
        schedule=ScheduleConfig("cosine", T),
    )
    trainer = Trainer(config)
    records = list(trainer.run())
    folder = tmp_path_factory.mktemp("dashboard")
    path = folder / "earlier-run.safetensors"
    save_checkpoint(path, trainer.checkpoint())
    return SimpleNamespace(
        progress=[r for r in records if isinstance(r, TrainProgress)],
        previews=[r for r in records if isinstance(r, TrainPreview)],
        checkpoint=path,
    )


@pytest.fixture
def dashboard(show):
    widget = show(TrainingDashboard())
    widget.reset(T)
    return widget


def feed(dashboard: TrainingDashboard, run: SimpleNamespace) -> None:
    for record in run.progress:
        dashboard.add_step(step_record(record, T))
    for preview in run.previews:
        dashboard.add_preview(preview.step, preview_picture(preview.samples))


def test_the_curves_and_the_heatmap_are_the_runs_records(dashboard, run, qtbot):
    assert len(run.progress) == 24
    feed(dashboard, run)
    records = [step_record(p, T) for p in run.progress]
    np.testing.assert_array_equal(dashboard.steps, [r.step for r in records])
    np.testing.assert_array_equal(dashboard.losses, [r.loss for r in records])
    np.testing.assert_array_equal(dashboard.grad_norms, [r.grad_norm for r in records])
    np.testing.assert_array_equal(dashboard.learning_rates, [r.lr for r in records])
    assert np.isfinite(dashboard.grad_norms).all() and (dashboard.grad_norms > 0).all()

    # the timer draws them (no redraw asked for)
    qtbot.waitUntil(lambda: dashboard.loss_curve.getOriginalDataset()[0] is not None)
    qtbot.waitUntil(lambda: len(dashboard.loss_curve.getOriginalDataset()[0]) == 24)
    x, y = dashboard.loss_curve.getOriginalDataset()
    np.testing.assert_array_equal(x, dashboard.steps)
    np.testing.assert_array_equal(y, dashboard.losses)
    np.testing.assert_array_equal(
        dashboard.grad_curve.getOriginalDataset()[1], dashboard.grad_norms
    )
    np.testing.assert_array_equal(
        dashboard.lr_curve.getOriginalDataset()[1], dashboard.learning_rates
    )

    reference = LossHeatmap()
    for record in records:
        reference.add(record)
    np.testing.assert_array_equal(dashboard.heatmap.image(), reference.image())
    assert dashboard.heatmap.step_range() == reference.step_range() == (1, 25)
    shown = dashboard.heatmap_shown
    np.testing.assert_array_equal(shown, log_loss_image(reference.image()))
    assert np.isnan(shown).sum() == np.isnan(reference.image()).sum()  # empty cells blank
    rect = dashboard.heatmap_item.mapRectToParent(dashboard.heatmap_item.boundingRect())
    assert (rect.left(), rect.right(), rect.top(), rect.bottom()) == (1, 25, 0, T)
    low, high = dashboard.color_bar.levels()
    finite = shown[np.isfinite(shown)]
    assert (low, high) == pytest.approx((finite.min(), finite.max()))
    ticks = log_ticks(low, high)  # the colour bar is labelled in loss, not log10 loss
    assert len(ticks) >= 2
    for position, label in ticks:
        assert low - 1e-9 <= position <= high + 1e-9
        assert float(label) == pytest.approx(10**position, rel=5e-3)


def test_the_timeline_keeps_every_preview_and_scrubs(dashboard, run, qtbot):
    feed(dashboard, run)
    assert [p.step for p in run.previews] == [8, 16, 24]
    kept = dashboard.previews
    assert [step for step, _ in kept] == [8, 16, 24]
    for (_, picture), preview in zip(kept, run.previews):
        np.testing.assert_array_equal(picture, preview_picture(preview.samples))
    # it follows the newest preview...
    assert dashboard.shown_preview == 2
    np.testing.assert_array_equal(dashboard.preview_view.image, kept[2][1])
    # ...and scrubs back
    dashboard.slider.setValue(0)
    np.testing.assert_array_equal(dashboard.preview_view.image, kept[0][1])
    assert dashboard.preview_caption.text().startswith("step 8 ")
    assert not np.array_equal(kept[0][1], kept[2][1])  # the model changed between them
    # scrubbed back, a new preview does not pull the view away
    dashboard.add_preview(32, kept[2][1])
    assert dashboard.shown_preview == 0 and dashboard.slider.maximum() == 3


def test_the_gif_has_one_frame_per_preview(dashboard, run, export, tmp_path):
    assert not dashboard.gif_button.isEnabled()  # nothing to export yet
    feed(dashboard, run)
    assert dashboard.gif_button.isEnabled()
    target = export(dashboard.gif_button, dashboard.export_runner, tmp_path / "learn.gif")
    with Image.open(target) as gif:
        assert gif.n_frames == len(run.previews)
        first = np.asarray(gif.convert("RGB"))
    picture = preview_picture(run.previews[0].samples)
    assert first.shape[0] > picture.shape[0]  # the caption is written above the picture


def test_overlay_is_the_checkpoints_history(dashboard, run, fake_dialogs, tmp_path):
    fake_dialogs.paths.append(run.checkpoint)
    dashboard.overlay_button.click()
    ckpt = load_checkpoint(run.checkpoint)
    label, steps, losses = dashboard.overlay
    assert label == "earlier-run"
    np.testing.assert_array_equal(steps, ckpt.training_state["history/step"].numpy())
    np.testing.assert_array_equal(losses, ckpt.training_state["history/loss"].numpy())
    assert len(steps) == 24
    x, y = dashboard.overlay_curve.getOriginalDataset()
    np.testing.assert_array_equal(x, steps)
    np.testing.assert_array_equal(y, losses)
    # a new run keeps the overlay (it is the user's); Clear overlay removes it
    feed(dashboard, run)
    dashboard.reset(T)
    assert dashboard.overlay is not None and dashboard.steps.size == 0
    assert dashboard.previews == [] and dashboard.heatmap.image().shape == (10, 0)
    dashboard.clear_overlay_button.click()
    assert dashboard.overlay is None

    # a checkpoint without history: one clear message, nothing overlaid
    bare = tmp_path / "for-sampling.safetensors"
    save_checkpoint(bare, replace(ckpt, training_state={}, training=None))
    fake_dialogs.paths.append(bare)
    dashboard.overlay_button.click()
    assert dashboard.overlay is None
    assert len(fake_dialogs.errors) == 1
    assert "keeps no loss history" in fake_dialogs.errors[0][1]


def test_hidden_it_does_not_redraw_and_shown_it_catches_up(qtbot, run):
    dashboard = TrainingDashboard()  # never shown yet
    qtbot.addWidget(dashboard)
    dashboard.reset(T)
    feed(dashboard, run)
    qtbot.wait(3 * DASHBOARD_REDRAW_MS)
    drawn, _ = dashboard.loss_curve.getOriginalDataset()
    assert drawn is None or len(drawn) == 0
    assert dashboard.steps.size == 24  # the records are kept all the same
    dashboard.show()
    qtbot.waitExposed(dashboard)
    x, _ = dashboard.loss_curve.getOriginalDataset()
    np.testing.assert_array_equal(x, dashboard.steps)
    assert dashboard.heatmap_shown.shape == dashboard.heatmap.image().shape


def test_a_long_run_keeps_a_bounded_evenly_thinned_timeline(dashboard):
    picture = np.zeros((4, 4, 3), dtype=np.uint8)
    for step in range(1, MAX_PREVIEWS + 2):
        dashboard.add_preview(10 * step, picture + step % 256)
    steps = [step for step, _ in dashboard.previews]
    assert len(steps) <= MAX_PREVIEWS
    assert steps[0] == 10 and steps[-1] == 10 * (MAX_PREVIEWS + 1)  # first and newest kept
    assert set(np.diff(steps[:-1])) == {20}  # every second one of the older ones
    assert dashboard.shown_preview == len(steps) - 1
    assert dashboard.slider.maximum() == len(steps) - 1
