"""Flow-matching models in the app's panels: Playback lists the flow samplers, samples what
core samples, plays x_t beside the x_0 prediction and exports; a diffusion model brings its
samplers back; the Sampler Lab compares the flow samplers; the guidance sweep runs on a
class-conditional flow model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_studio.app.panels.playback_panel import VIEW_PAIR, PlaybackPanel
from diffusion_studio.app.panels.sampler_lab_panel import SamplerLabPanel
from diffusion_studio.app.widgets import set_combo_data
from diffusion_studio.core.checkpoint import (
    build_model_from_checkpoint,
    load_checkpoint,
)
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.guidance_sweep import SweepRequest, guidance_sweep
from diffusion_studio.core.samplers import (
    SamplerConfig,
    default_sampler_config,
    make_sampler,
    samplers_for_objective,
)
from diffusion_studio.core.sampling import sample, sample_checkpoint

FLOW_KINDS = [spec.name for spec in samplers_for_objective("flow")]
DIFFUSION_KINDS = [spec.name for spec in samplers_for_objective("diffusion")]


@pytest.fixture
def panel(show):
    return show(PlaybackPanel())


def sample_in(panel, qtbot, kind: str, steps: int, n: int) -> None:
    assert set_combo_data(panel.sampler_kind, kind)
    panel.num_steps.setValue(steps)
    panel.num_samples.setValue(n)
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        assert panel.start_sampling()
    panel.runner.wait(10)


# ---------------------------------------------------------------------- Playback


def test_playback_samples_a_flow_checkpoint_as_core_does_and_exports(
    panel, qtbot, flow_checkpoints, tmp_path, export, fake_dialogs
):
    assert panel.load_checkpoint(flow_checkpoints.images)
    form = panel.sampler_form
    assert form.kinds() == FLOW_KINDS and form.objective == "flow"
    expected_default = default_sampler_config(False, None, "flow")
    assert panel.request().sampler == replace(
        expected_default, num_inference_steps=min(expected_default.num_inference_steps, 100)
    )
    assert "flow matching" in panel.model_info.text() and "velocity" in panel.model_info.text()
    assert panel.sample_button.isEnabled()
    ckpt = load_checkpoint(flow_checkpoints.images)
    statuses = []
    panel.runner.progressed.connect(
        lambda _r: statuses.append(panel.runner.status.text if panel.runner.status else "")
    )
    for kind in FLOW_KINDS:
        panel.seed.setValue(3)
        sample_in(panel, qtbot, kind, steps=4, n=3)
        traj = panel.trajectory
        assert len(traj) == 5 and traj.timesteps[-1] == -1
        expected = sample_checkpoint(ckpt, 3, panel.request().sampler, seed=3)
        np.testing.assert_array_equal(traj.final_samples, expected)
    # the status bar names the flow path's t of each step ("t = 1.000"), not the index k
    assert any("(t = 1.000)" in text for text in statuses), statuses
    # x_t beside its x_0 prediction; the caption gives the path's t and index k
    panel.show_frame(0)
    assert int(traj.timesteps[0]) == 99 and "t = 1.000 (k = 99)" in panel.frame_label.text()
    panel.show_frame(2)
    k = int(traj.timesteps[2])
    time = float(FlowPath(100).time_of_index(k))
    assert f"t = {time:.3f} (k = {k})" in panel.frame_label.text()
    np.testing.assert_array_equal(panel.xt_view.image, traj.x_t(2)[0, ..., 0])
    np.testing.assert_array_equal(panel.x0_view.image, traj.pred_x0(2)[0, ..., 0])
    assert not np.array_equal(traj.x_t(2), traj.pred_x0(2))
    # GIF and PNG frames, captioned with the flow path's t (not the index k)
    set_combo_data(panel.export_view, VIEW_PAIR)
    panel.export_frames.setValue(3)
    _, captions = panel.export_pictures()
    assert captions[0] == "t = 1.000" and captions[-1] == "x_0 (final)"
    assert all(c == "x_0 (final)" or 0 <= float(c.removeprefix("t = ")) <= 1 for c in captions)
    gif = export(panel.gif_button, panel.export_runner, tmp_path / "flow.gif")
    with Image.open(gif) as picture:
        assert 2 <= picture.n_frames <= 3
    folder = export(panel.png_button, panel.export_runner, tmp_path / "frames")
    assert len(list(folder.glob("*.png"))) == 3
    assert fake_dialogs.errors == []


def test_switching_between_flow_and_diffusion_models_restores_each_ones_samplers(
    panel, qtbot, flow_checkpoints, checkpoints
):
    """Recent Files / the file dialog / Training's Open in Playback all pass through the model
    choice: a flow model lists the flow samplers with core's flow default, a diffusion model
    the diffusion samplers with core's diffusion default (clipped for images)."""
    assert panel.load_checkpoint(checkpoints.images)
    set_combo_data(panel.sampler_kind, "ddim")
    assert panel.load_checkpoint(flow_checkpoints.images)
    assert panel.sampler_form.kinds() == FLOW_KINDS
    assert panel.request().sampler.kind == default_sampler_config(False, None, "flow").kind
    assert panel.load_checkpoint(checkpoints.images)  # back to diffusion: no stale flow choice
    assert panel.sampler_form.kinds() == DIFFUSION_KINDS
    assert panel.request().sampler == default_sampler_config(False, None, "diffusion")
    assert panel.sample_button.isEnabled()
    # the Training tab's "Open in Playback" with a flow run
    panel.open_trained_checkpoint(load_checkpoint(flow_checkpoints.images))
    assert panel.model_choice.currentData() == "trained"
    assert panel.sampler_form.kinds() == FLOW_KINDS and panel.sampler_form.valid
    sample_in(panel, qtbot, FLOW_KINDS[0], steps=2, n=2)
    assert panel.has_frames()


def test_playback_samples_a_flow_points_model(panel, qtbot, flow_checkpoints):
    assert panel.load_checkpoint(flow_checkpoints.points)
    assert panel.sampler_form.kinds() == FLOW_KINDS
    assert not panel.clip_x0.isChecked()  # 2-D points: no clipping
    panel.seed.setValue(1)
    sample_in(panel, qtbot, FLOW_KINDS[0], steps=5, n=40)
    ckpt = load_checkpoint(flow_checkpoints.points)
    expected = sample_checkpoint(ckpt, 40, panel.request().sampler, seed=1)
    np.testing.assert_array_equal(panel.trajectory.final_samples, expected)
    x, y = panel.points_scatter.getData()
    np.testing.assert_allclose(x, panel.trajectory.x_t(5)[:, 0])


# ---------------------------------------------------------------------- Sampler Lab


def test_the_lab_compares_the_flow_samplers_from_the_same_noise(show, qtbot, flow_checkpoints):
    lab = show(SamplerLabPanel())
    ckpt = load_checkpoint(flow_checkpoints.images)
    lab.set_checkpoint(ckpt)
    for column in lab.columns:
        assert column.form.kinds() == FLOW_KINDS
    names = [c.form.spec.name for c in lab.columns]
    distinct = min(len(names), len(FLOW_KINDS))
    assert names[:distinct] == FLOW_KINDS[:distinct]  # each flow sampler, then repeats
    while len(lab.columns) > 2:
        lab.remove_column()
    configs = [SamplerConfig(FLOW_KINDS[i % len(FLOW_KINDS)], 3 + i, "trailing") for i in (0, 1)]
    for column, config in zip(lab.columns, configs):
        column.form.set_config(config)
    lab.num_samples.setValue(2)
    lab.seed.setValue(5)
    with qtbot.waitSignal(lab.runner.finished, timeout=120000):
        assert lab.start_sampling()
    lab.runner.wait(10)
    path = FlowPath(ckpt.schedule_config.num_timesteps)
    model = build_model_from_checkpoint(ckpt)
    for column, config in zip(lab.columns, configs):
        sampler = make_sampler(config, path, ckpt.prediction_type)
        frames = list(
            sample(model, path, sampler, 2, ckpt.sample_shape, torch.Generator().manual_seed(5))
        )
        np.testing.assert_array_equal(column.trajectory.final_samples, frames[-1].x_t.numpy())
        assert column.total == sampler.total_evaluations()
    # a diffusion model again: the diffusion samplers
    lab.set_checkpoint(None)
    for column in lab.columns:
        assert column.form.kinds() == DIFFUSION_KINDS


# ---------------------------------------------------------------------- guidance sweep


def test_the_guidance_sweep_runs_on_a_class_conditional_flow_model(panel, qtbot, flow_checkpoints):
    assert panel.load_checkpoint(flow_checkpoints.conditional)
    assert panel.sweep_button.isEnabled()
    panel.num_steps.setValue(3)
    panel.seed.setValue(2)
    dialog = panel.open_guidance_sweep()
    dialog.scales.setText("1, 4")
    dialog.classes.setText("3, 8")
    with qtbot.waitSignal(dialog.runner.finished, timeout=60000):
        assert dialog.sweep_button.isEnabled()
        dialog.sweep_button.click()
    dialog.runner.wait(10)
    ckpt = load_checkpoint(flow_checkpoints.conditional)
    config = panel.sampler_form.config()
    assert config.kind in FLOW_KINDS
    expected = guidance_sweep(ckpt, SweepRequest(config, (3, 8), (1.0, 4.0), seed=2))
    np.testing.assert_array_equal(dialog.sweep.samples, expected.samples)


def test_playback_starts_a_flow_model_from_an_image(panel, qtbot, flow_checkpoints):
    """Start from an image at index k: the run takes only the steps at or below k, and its
    samples are core's for the same request."""
    from diffusion_studio.core.data import default_photo_path
    from diffusion_studio.core.sampling import prepare_sampling

    assert panel.load_checkpoint(flow_checkpoints.images)
    panel.set_start_image(str(default_photo_path()))
    panel.from_image.setChecked(True)
    panel.start_t.setValue(40)
    sample_in(panel, qtbot, FLOW_KINDS[0], steps=10, n=2)
    traj = panel.trajectory
    assert traj.timesteps[0] <= 40 and len(traj) < 11
    ckpt = load_checkpoint(flow_checkpoints.images)
    frames = list(prepare_sampling(ckpt, panel.request()).frames)
    np.testing.assert_array_equal(traj.final_samples, frames[-1].x_t.numpy())
