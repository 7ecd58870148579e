"""Playback panel: sample in the worker, step through frames, export GIF and PNG frames."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffusion_studio.app import dialogs
from diffusion_studio.app.panels.playback_panel import (
    NO_FRAMES,
    POINTS_START,
    VIEW_PAIR,
    PlaybackPanel,
)
from diffusion_studio.app.widgets import set_combo_data
from diffusion_studio.core.checkpoint import load_checkpoint
from diffusion_studio.core.data import default_photo_path
from diffusion_studio.core.export import caption_frame, reverse_caption
from diffusion_studio.core.sampling import sample_checkpoint


@pytest.fixture
def panel(show):
    return show(PlaybackPanel())


def sample(panel, qtbot, steps=5, n=4):
    set_combo_data(panel.sampler_kind, "ddim")
    panel.num_steps.setValue(steps)
    panel.num_samples.setValue(n)
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        assert panel.start_sampling()
    panel.runner.wait(10)


def test_ddim_sampling_and_stepping_through_frames(panel, qtbot, checkpoints):
    assert panel.load_checkpoint(checkpoints.images)
    sample(panel, qtbot, steps=5, n=4)
    traj = panel.trajectory
    assert len(traj) == 6 and traj.timesteps[-1] == -1
    assert panel.scrub.maximum() == 5 and panel.frame_index == 5
    final_grid = panel.grid_view.image.copy()
    panel.back_button.click()
    assert panel.frame_index == 4
    assert "t = " in panel.frame_label.text()
    np.testing.assert_array_equal(panel.xt_view.image, traj.x_t(4)[0, ..., 0])
    np.testing.assert_array_equal(panel.x0_view.image, traj.pred_x0(4)[0, ..., 0])
    panel.scrub.setValue(0)
    assert not np.array_equal(panel.grid_view.image, final_grid)
    panel.sample_index.setValue(3)
    np.testing.assert_array_equal(panel.xt_view.image, traj.x_t(0)[3, ..., 0])
    panel.play_button.click()
    qtbot.waitUntil(lambda: panel.frame_index >= 2, timeout=5000)
    panel.play_button.click()


def test_points_model_shows_a_point_cloud(panel, qtbot, checkpoints):
    assert panel.load_checkpoint(checkpoints.points)
    assert panel.views.currentWidget() is panel.point_views
    assert not panel.from_image.isEnabled()
    sample(panel, qtbot, steps=4, n=50)
    x, y = panel.points_scatter.getData()
    np.testing.assert_allclose(x, panel.trajectory.x_t(4)[:, 0])
    panel.show_frame(3)
    tx, _ = panel.trail_curve.getData()
    assert len(tx) == 50 * 4  # frames 0..3: a trail of 4 positions per point


def test_start_from_an_image(panel, qtbot, checkpoints):
    panel.load_checkpoint(checkpoints.images)
    panel.set_start_image(str(default_photo_path()))
    panel.from_image.setChecked(True)
    panel.start_t.setValue(40)
    sample(panel, qtbot, steps=10, n=2)
    assert panel.trajectory.timesteps[0] <= 40
    assert len(panel.trajectory) < 11  # only the steps at or below t = 40


def test_export_gif_and_png_frames(
    panel, qtbot, checkpoints, tmp_path, fake_dialogs, export, monkeypatch
):
    panel.load_checkpoint(checkpoints.images)
    sample(panel, qtbot, steps=5, n=4)
    set_combo_data(panel.export_view, VIEW_PAIR)
    panel.export_frames.setValue(4)
    panel.export_scale.setValue(2)
    suggested = []
    answer = fake_dialogs.ask_save_path
    monkeypatch.setattr(dialogs, "ask_save_path", lambda *a: suggested.append(a[3]) or answer(*a))
    gif = export(panel.gif_button, panel.export_runner, tmp_path / "reverse.gif")
    assert suggested == ["digits_ddim_5steps.gif"]  # model, sampler and steps
    frames, captions = panel.export_pictures()
    assert captions == [reverse_caption(int(t)) for t in panel.trajectory.timesteps[[0, 2, 3, 5]]]
    assert captions[0] == "t = 99" and captions[-1] == "x_0 (final)"
    with Image.open(gif) as picture:
        # two 28x28 tiles side by side with 1-pixel padding, scaled 2x, under a caption band
        first = caption_frame(frames[0], captions[0])
        assert picture.size == (2 * (2 * 28 + 3), first.shape[0])
        assert first.shape[0] > 2 * (28 + 2)
        assert 2 <= picture.n_frames <= 4
        picture.seek(0)
        shown = np.asarray(picture.convert("L"))
    np.testing.assert_array_equal(shown, first)  # t written on the frame, as core draws it
    folder = export(panel.png_button, panel.export_runner, tmp_path / "frames")
    assert len(list(folder.glob("digits_ddim_5steps_*.png"))) == 4  # named after the run
    assert fake_dialogs.errors == []


def test_bad_checkpoint_shows_an_error_and_keeps_the_model(
    panel, checkpoints, tmp_path, fake_dialogs
):
    panel.load_checkpoint(checkpoints.points)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a checkpoint at all")
    assert not panel.load_checkpoint(bad)
    assert fake_dialogs.errors[-1][0] == "Cannot open checkpoint"
    assert panel.checkpoint is not None and panel.checkpoint.is_points
    assert panel.sample_button.isEnabled()


# ---------------------------------------------------------------------- defaults and bundled models


def test_sampler_defaults_are_ddpm_100_trailing_clipped_for_images(panel, checkpoints):
    for ckpt in (checkpoints.images, checkpoints.points):
        assert panel.load_checkpoint(ckpt)
        request = panel.request()
        assert request.sampler.kind == "ddpm"
        assert request.sampler.num_inference_steps == 100
        assert request.sampler.spacing == "trailing"
        # DDPM's own option is offered, DDIM's eta is not (the form follows the sampler)
        assert panel.sampler_form.option_widget("variance_type").isVisible()
        assert not panel.sampler_form.option_widget("eta", "ddim").isVisible()
        # x0 clipped to [-1, 1] for images, not for 2-D points (core's default for each kind)
        assert request.sampler.clip_sample == (ckpt == checkpoints.images)
        assert panel.clip_x0.isChecked() == request.sampler.clip_sample


@pytest.fixture
def bundled(monkeypatch, checkpoints):
    """Pretend resources/models holds two pretrained models (tiny checkpoints)."""
    paths = {"moons": checkpoints.points, "digits": checkpoints.images}
    monkeypatch.setattr(
        "diffusion_studio.core.checkpoint.pretrained_checkpoint_paths", lambda: dict(paths)
    )
    return paths


def test_first_launch_chooses_the_pretrained_digits_model(bundled, qtbot, fake_dialogs):
    from diffusion_studio.app.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    panel = window.playback
    labels = [panel.model_choice.itemText(i) for i in range(panel.model_choice.count())]
    assert labels == ["Pretrained: digits", "Pretrained: moons"]
    assert panel.model_choice.currentData() == "pretrained:digits"
    assert panel.checkpoint is not None and not panel.checkpoint.is_points
    assert panel.sample_button.isEnabled()
    panel.num_samples.setValue(2)
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        panel.sample_button.click()
    panel.runner.wait(10)
    assert len(panel.trajectory) == 101  # 100 DDPM steps and the final samples
    assert panel.trajectory.timesteps[0] == 99  # trailing: the first step is at t = T - 1
    set_combo_data(panel.model_choice, "pretrained:moons")  # loaded when first chosen
    assert panel.checkpoint.is_points and panel.views.currentWidget() is panel.point_views
    window.close()
    assert fake_dialogs.errors == []


def test_a_broken_bundled_model_is_reported(monkeypatch, tmp_path, qtbot, fake_dialogs):
    broken = tmp_path / "digits.safetensors"
    broken.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(
        "diffusion_studio.core.checkpoint.pretrained_checkpoint_paths", lambda: {"digits": broken}
    )
    p = PlaybackPanel()
    qtbot.addWidget(p)
    assert fake_dialogs.errors[-1][0] == "Cannot open pretrained model"
    assert p.checkpoint is None and not p.sample_button.isEnabled()


def test_a_class_conditional_model_samples_the_chosen_digit_with_guidance(
    panel, qtbot, checkpoints
):
    """The Class and Guidance fields reach core: the panel's samples are exactly what
    core.sampling.sample_checkpoint draws for that class, scale and seed."""
    assert panel.load_checkpoint(checkpoints.conditional)
    assert panel.class_label.isEnabled() and panel.guidance.isEnabled()
    assert panel.class_label.count() == 11
    assert panel.class_label.itemText(0) == "Every digit in turn"
    assert "class-conditional: 10 classes" in panel.model_info.text()
    ckpt = load_checkpoint(checkpoints.conditional)
    for label, scale in ((3, 2.5), (None, 1.0)):
        set_combo_data(panel.class_label, label)
        panel.guidance.setValue(scale)
        sample(panel, qtbot, steps=3, n=4)
        expected = sample_checkpoint(
            ckpt, 4, panel.request().sampler, seed=0, label=label, guidance_scale=scale
        )
        np.testing.assert_array_equal(panel.trajectory.final_samples, expected)

    # an unconditional model: no classes to choose, no guidance
    assert panel.load_checkpoint(checkpoints.images)
    assert not panel.class_label.isEnabled() and not panel.guidance.isEnabled()
    assert panel.request().label is None
    sample(panel, qtbot, steps=3, n=4)
    # back to the conditional model: the class list returns
    assert panel.load_checkpoint(checkpoints.conditional)
    assert panel.class_label.isEnabled() and panel.class_label.count() == 11


# ---------------------------------------------------------------------- state that never lies


def test_switching_model_leaves_nothing_of_the_old_run(panel, qtbot, checkpoints, fake_dialogs):
    assert panel.load_checkpoint(checkpoints.images)
    sample(panel, qtbot, steps=5, n=4)
    panel.play_button.click()
    assert panel.play_timer.isActive() and panel.gif_button.isEnabled()
    assert panel.load_checkpoint(checkpoints.points)  # another model
    assert panel.trajectory is None and not panel.has_frames()
    assert not panel.play_button.isChecked() and not panel.play_timer.isActive()
    for w in (panel.play_button, panel.scrub, panel.gif_button, panel.png_button):
        assert not w.isEnabled()
    assert panel.scrub.maximum() == 0 and panel.export_to.value() == 0
    assert panel.frame_label.text() == NO_FRAMES
    assert panel.xt_view.image is None and panel.grid_view.image is None
    assert panel.points_scatter.getData()[0].size == 0
    assert not panel.stale_label.isVisible() and panel.error.text() == ""
    panel.export_gif()  # File > Export GIF from the menu: refused, nothing written
    assert fake_dialogs.errors[-1] == (
        "Export",
        "Nothing to export for this model yet: press Sample first.",
    )
    sample(panel, qtbot, steps=4, n=20)  # the new model's run plays as usual
    assert panel.trajectory.is_points and panel.gif_button.isEnabled()


def test_switching_model_while_sampling_drops_the_run(panel, qtbot, checkpoints):
    assert panel.load_checkpoint(checkpoints.images)
    set_combo_data(panel.sampler_kind, "ddpm")
    panel.num_steps.setValue(100)
    with qtbot.waitSignal(panel.runner.ended, timeout=60000):
        assert panel.start_sampling()
        assert panel.load_checkpoint(checkpoints.points)
    panel.runner.wait(10)
    assert panel.trajectory is None and panel.frame_label.text() == NO_FRAMES
    assert panel.sample_button.isEnabled()


def test_start_from_an_image_is_unticked_and_explained_for_a_2d_model(panel, qtbot, checkpoints):
    assert panel.load_checkpoint(checkpoints.images)
    panel.set_start_image(str(default_photo_path()))
    panel.from_image.setChecked(True)
    assert panel.load_checkpoint(checkpoints.points)
    assert not panel.from_image.isChecked() and not panel.from_image.isEnabled()
    assert POINTS_START in panel.from_image.toolTip()
    assert panel.image_label.text() == POINTS_START
    assert panel.sample_button.isEnabled()
    sample(panel, qtbot, steps=3, n=10)  # Sample works: from noise
    assert panel.trajectory.timesteps[0] == panel.checkpoint.schedule_config.num_timesteps - 1
    assert panel.load_checkpoint(checkpoints.images)  # an image model: the box is usable again
    assert panel.from_image.isEnabled() and panel.image_label.text() == "astronaut.png"


def test_frames_made_with_other_settings_are_marked(panel, qtbot, checkpoints):
    assert panel.load_checkpoint(checkpoints.images)
    sample(panel, qtbot, steps=5, n=4)
    assert not panel.stale_label.isVisible()
    panel.num_steps.setValue(8)
    assert panel.stale_label.isVisible()
    assert "DDIM, 5 steps, eta 0, seed 0" in panel.stale_label.text()
    assert panel.has_frames() and panel.gif_button.isEnabled()  # still what they say they are
    panel.num_steps.setValue(5)
    assert not panel.stale_label.isVisible()
    panel.seed.setValue(3)
    assert panel.stale_label.isVisible()
    sample(panel, qtbot, steps=5, n=4)
    assert not panel.stale_label.isVisible()


def test_only_the_choices_that_apply_to_the_model_are_offered(panel, checkpoints):
    """A 2-D model has no 'sample #', no grid and one export view; an image model no point
    cloud (it used to fall back to a grid in silence)."""
    assert panel.load_checkpoint(checkpoints.images)
    views = [panel.export_view.itemData(i) for i in range(panel.export_view.count())]
    assert views == ["grid_xt", "grid_x0", "pair"]
    assert panel.image_choices.isVisible()
    assert panel.load_checkpoint(checkpoints.points)
    assert [panel.export_view.itemData(i) for i in range(panel.export_view.count())] == ["points"]
    assert not panel.image_choices.isVisible()


def test_a_models_own_sampler_fills_the_form(panel, checkpoints):
    """A model that names its sampler (a diffusers scheduler config: meta["sampler_defaults"])
    gets it in the form, its options included (DDPM's fixed_large variance), steps at most T."""
    from dataclasses import replace

    ckpt = load_checkpoint(checkpoints.images)  # T = 100
    defaults = {
        "kind": "ddpm",
        "num_inference_steps": 500,
        "spacing": "leading",
        "clip_sample": False,
        "variance_type": "fixed_large",
    }
    ckpt = replace(ckpt, meta={**(ckpt.meta or {}), "sampler_defaults": defaults})
    set_combo_data(panel.sampler_kind, "ddim")
    panel.set_trained_checkpoint(ckpt)
    form = panel.sampler_form
    assert form.spec.name == "ddpm" and form.option_widget("variance_type").isVisible()
    sampler = panel.request().sampler
    assert sampler.options == {"variance_type": "fixed_large"}
    assert sampler.num_inference_steps == 100 and sampler.spacing == "leading"
    assert not sampler.clip_sample and form.valid and panel.sample_button.isEnabled()


def test_sampling_on_a_busy_cpu_says_so_in_the_status(panel, qtbot, checkpoints, monkeypatch):
    """Each frame carries the thread chooser's state (core.sampling.Frame.threads); when
    another program keeps a core busy the status says so, as training's does."""
    from diffusion_studio.core.threads import AdaptiveThreads, ThreadState

    busy = ThreadState(threads=1, available=2, contended=True, adaptive=True)
    monkeypatch.setattr(AdaptiveThreads, "state", lambda self: busy)
    statuses = []
    panel.runner.progressed.connect(lambda _r: statuses.append(panel.runner.status.text))
    assert panel.load_checkpoint(checkpoints.points)
    sample(panel, qtbot, steps=4, n=20)
    assert any(busy.note() in text for text in statuses), statuses
    assert busy.note() == " (CPU busy elsewhere: 1 of 2 threads)"
