"""Sampler Lab: columns sampled from the same noise equal core's samples, evaluation counts,
lockstep playback, the paths plot, convergence records, exports and the model link."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_studio.app.panels.sampler_lab_panel import (
    GUIDED_SUFFIX,
    MAX_COLUMNS,
    MIN_COLUMNS,
    PROGRESS_TICKS,
    SamplerLabPanel,
    frame_at,
)
from diffusion_studio.app.widgets import set_combo_data
from diffusion_studio.core.checkpoint import build_model_from_checkpoint, load_checkpoint
from diffusion_studio.core.convergence import ConvergenceRecord, checkpoint_convergence
from diffusion_studio.core.samplers import (
    REGISTRY,
    SamplerConfig,
    make_sampler,
    samplers_for_objective,
)
from diffusion_studio.core.sampling import sample
from diffusion_studio.core.schedule import NoiseSchedule


@pytest.fixture
def lab(show):
    return show(SamplerLabPanel())


def core_final(ckpt, config: SamplerConfig, n: int, seed: int) -> np.ndarray:
    """diffusion_studio.core.sampling.sample's final samples of `config` from a generator seeded with `seed`."""
    schedule = NoiseSchedule(ckpt.schedule_config)
    sampler = make_sampler(config, schedule, ckpt.prediction_type)
    model = build_model_from_checkpoint(ckpt)
    frames = list(
        sample(model, schedule, sampler, n, ckpt.sample_shape, torch.Generator().manual_seed(seed))
    )
    return frames[-1].x_t.numpy()


def configure(lab, configs: list[SamplerConfig]) -> None:
    while len(lab.columns) < len(configs):
        lab.add_column()
    while len(lab.columns) > len(configs):
        lab.remove_column()
    for column, config in zip(lab.columns, configs):
        column.form.set_config(config)


def run_lab(lab, qtbot) -> None:
    with qtbot.waitSignal(lab.runner.finished, timeout=120000):
        assert lab.start_sampling()
    lab.runner.wait(10)


def test_columns_come_from_the_registry(lab):
    assert MIN_COLUMNS <= len(lab.columns) <= MAX_COLUMNS
    names = [c.form.spec.name for c in lab.columns]
    diffusion = [spec.name for spec in samplers_for_objective("diffusion")]
    assert names == diffusion[: len(names)]  # no model: the first diffusion samplers, each once
    for column in lab.columns:
        assert column.form.steps.value() == column.form.spec.default_steps
    while lab.add_column() is not None:
        pass
    assert len(lab.columns) == min(MAX_COLUMNS, len(REGISTRY)) or len(lab.columns) == MAX_COLUMNS
    assert not lab.add_button.isEnabled()
    while len(lab.columns) > MIN_COLUMNS:
        lab.remove_column()
    lab.remove_column()  # refused: at least two stay
    assert len(lab.columns) == MIN_COLUMNS and not lab.remove_button.isEnabled()


def test_no_model_no_sampling(lab, fake_dialogs):
    assert not lab.sample_button.isEnabled() and not lab.conv_button.isEnabled()
    assert not lab.start_sampling()
    assert fake_dialogs.errors[-1][0] == "Cannot sample"


def test_columns_equal_core_samples_from_the_same_seed(lab, qtbot, checkpoints):
    """Each column's final samples are exactly core's `sample` of its config and the seed;
    the columns are labelled with their evaluation counts."""
    ckpt = load_checkpoint(checkpoints.images)
    lab.set_checkpoint(ckpt)
    names = list(REGISTRY)
    configs = [
        SamplerConfig(names[1], 4, "trailing", clip_sample=True),
        SamplerConfig(names[0], 6, "trailing", clip_sample=True),
        SamplerConfig(names[min(2, len(names) - 1)], 3, "trailing", clip_sample=True),
    ]
    configure(lab, configs)
    lab.num_samples.setValue(3)
    lab.seed.setValue(7)
    assert [c.form.config() for c in lab.columns] == configs
    run_lab(lab, qtbot)
    schedule = NoiseSchedule(ckpt.schedule_config)
    for column, config in zip(lab.columns, configs):
        np.testing.assert_array_equal(
            column.trajectory.final_samples, core_final(ckpt, config, 3, 7)
        )
        total = make_sampler(config, schedule, ckpt.prediction_type).total_evaluations()
        assert column.total == total
        assert column.evaluations.text() == f"{total} / {total} network evaluations"
        assert config.summary() in column.title.text() and "samples" in column.title.text()
        assert len(column.trajectory) == config.num_inference_steps + 1
    # lockstep: at progress 0 every column shows its first frame (the same initial noise)
    lab.scrub.setValue(0)
    firsts = [c.trajectory.x_t(0) for c in lab.columns]
    for column in lab.columns:
        assert column.frame_index == 0
        assert column.evaluations.text().startswith("0 / ")
    for other in firsts[1:]:  # x_t of the same N(0, I) draw, whatever the sampler's scale
        assert np.abs(other.astype(int) - firsts[0].astype(int)).max() <= 1  # uint8 rounding
    # half-way: each column's nearest frame, evaluations so far = steps done x per step
    lab.scrub.setValue(PROGRESS_TICKS // 2)
    for column, config in zip(lab.columns, configs):
        index = frame_at(0.5, len(column.trajectory))
        assert column.frame_index == index
        step = int(column.trajectory.steps[index])
        done = min(step * config.spec.evaluations_per_step, column.total)
        assert column.evaluations.text().startswith(f"{done} / {column.total}")
        shown = column.image.image
        assert shown is not None and shown.shape[0] > 28  # the grid of three samples


def test_guidance_doubles_the_calls_and_is_said(lab, qtbot, checkpoints):
    lab.set_checkpoint(load_checkpoint(checkpoints.conditional))
    assert lab.guidance.isEnabled()
    configure(lab, [SamplerConfig("ddim", 2, "trailing"), SamplerConfig("ddpm", 2, "trailing")])
    lab.num_samples.setValue(2)
    run_lab(lab, qtbot)
    assert lab.columns[0].evaluations.text() == "2 / 2 network evaluations" + GUIDED_SUFFIX
    lab.guidance.setValue(1.0)  # no guidance: one evaluation each
    run_lab(lab, qtbot)
    assert lab.columns[0].evaluations.text() == "2 / 2 network evaluations"


def test_points_model_draws_every_samplers_paths(lab, qtbot, checkpoints):
    ckpt = load_checkpoint(checkpoints.points)
    lab.set_checkpoint(ckpt)
    assert lab.view_tabs.isTabEnabled(1)
    configure(lab, [SamplerConfig("ddim", 5, "trailing"), SamplerConfig("ddpm", 8, "trailing")])
    lab.num_samples.setValue(40)
    run_lab(lab, qtbot)
    x, y = lab.columns[1].scatter.getData()
    np.testing.assert_allclose(x, lab.columns[1].trajectory.final_samples[:, 0], atol=1e-2)
    curves = [item for item in lab.paths_items if item.name()]
    assert [c.name() for c in curves] == [c.form.config().summary() for c in lab.columns]
    px, _ = curves[0].getData()
    assert len(px) == 6 * 6  # six points, each through the six frames of a 5-step run
    lab.set_checkpoint(load_checkpoint(checkpoints.images))
    assert not lab.view_tabs.isTabEnabled(1) and lab.paths_items == []
    assert not lab.has_frames()  # the other model's runs are gone


def test_convergence_records_equal_core_and_export_csv(lab, qtbot, checkpoints, tmp_path, export):
    ckpt = load_checkpoint(checkpoints.points)
    lab.set_checkpoint(ckpt)
    lab.conv_samples.setValue(16)
    lab.conv_most.setValue(5)
    with qtbot.waitSignal(lab.convergence_runner.finished, timeout=120000):
        assert lab.start_convergence()
    lab.convergence_runner.wait(10)
    expected = [
        r
        for r in checkpoint_convergence(
            ckpt,
            [r for r in dict.fromkeys(x.sampler for x in lab.records if not x.is_reference)],
            [2, 5],
            seed=0,
            num_samples=16,
        )
        if isinstance(r, ConvergenceRecord)
    ]
    got = [(r.sampler, r.steps, r.evaluations, r.is_reference) for r in lab.records]
    assert got == [(r.sampler, r.steps, r.evaluations, r.is_reference) for r in expected]
    # the same numbers (up to float rounding: the worker may use another thread count)
    for mine, core in zip(lab.records, expected):
        assert mine.rms_error == pytest.approx(core.rms_error, rel=1e-4, abs=1e-7)
    samplers = {r.sampler for r in lab.records if not r.is_reference}
    assert all(REGISTRY[s].deterministic for s in samplers) and "ddim" in samplers
    curves = lab.conv_plot.plotItem.listDataItems()
    assert len(curves) == len(samplers)
    assert lab.conv_plot.plotItem.ctrl.logXCheck.isChecked()
    path = export(lab.csv_button, lab.export_runner, tmp_path / "convergence.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(lab.records)
    assert math.isclose(float(rows[1]["rms_error"]), lab.records[1].rms_error)


def test_convergence_most_steps_beyond_t_is_refused(lab, qtbot, checkpoints):
    from tests.app.test_field_validation import assert_refused, type_into

    lab.set_checkpoint(load_checkpoint(checkpoints.images))  # T = 100
    lab.view_tabs.setCurrentIndex(2)
    type_into(qtbot, lab.conv_most, "500")
    assert_refused(lab.conv_fields, lab.conv_most, ["out of range", "1..100"])
    assert not lab.conv_button.isEnabled()
    type_into(qtbot, lab.conv_most, "20")
    assert lab.conv_fields.valid and lab.conv_button.isEnabled()


def test_exports_png_and_gif(lab, qtbot, checkpoints, tmp_path, export, fake_dialogs):
    lab.set_checkpoint(load_checkpoint(checkpoints.images))
    configure(lab, [SamplerConfig("ddim", 3, "trailing"), SamplerConfig("ddpm", 4, "trailing")])
    lab.num_samples.setValue(4)
    run_lab(lab, qtbot)
    png = export(lab.png_button, lab.export_runner, tmp_path / "lab.png")
    pictures = lab.column_pictures()
    with Image.open(png) as picture:
        assert picture.size[0] == sum(p.shape[1] for p in pictures) + 8
    gif = export(lab.gif_button, lab.export_runner, tmp_path / "lab.gif")
    with Image.open(gif) as picture:
        assert picture.n_frames >= 3
    assert fake_dialogs.errors == []


def test_lab_follows_playbacks_model_and_keeps_its_samplers(qtbot, checkpoints, fake_dialogs):
    from diffusion_studio.app.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    assert window.playback.load_checkpoint(checkpoints.points)
    lab = window.lab  # built after Playback: takes its model
    assert lab.checkpoint is window.playback.checkpoint
    assert window.playback.load_checkpoint(checkpoints.images)
    assert lab.checkpoint is window.playback.checkpoint and not lab.checkpoint.is_points
    lab.model_button.click()  # "Choose on Playback" shows the Playback tab
    assert window.tabs.currentWidget() is window.playback
    window.tabs.setCurrentWidget(lab)
    window.export_gif_action.trigger()  # File > Export GIF on the Lab's tab: the Lab's GIF
    assert fake_dialogs.errors[-1] == ("Export", "Nothing to export yet: press Sample all first.")
    assert window.tabs.currentWidget() is lab
    set_combo_data(lab.columns[0].form.kind, "ddim")
    lab.columns[0].form.steps.setValue(7)
    window.close()
    again = MainWindow()
    qtbot.addWidget(again)
    assert again.lab.columns[0].form.config().kind == "ddim"
    assert again.lab.columns[0].form.steps.value() == 7
    again.close()


def test_sampling_and_convergence_can_be_cancelled(lab, qtbot, checkpoints):
    """Cancel stops the worker between frames (or evaluations): what ran so far stays, the
    buttons come back, nothing is left running."""
    lab.set_checkpoint(load_checkpoint(checkpoints.images))
    configure(lab, [SamplerConfig("ddpm", 100, "trailing"), SamplerConfig("ddim", 100, "trailing")])
    lab.num_samples.setValue(2)
    with qtbot.waitSignal(lab.runner.cancelled, timeout=60000):
        assert lab.start_sampling()
        assert not lab.sample_button.isEnabled() and lab.cancel_button.isEnabled()
        qtbot.waitUntil(lambda: len(lab.columns[0].trajectory) > 2)
        lab.cancel_button.click()
    lab.runner.wait(10)
    assert not lab.columns[0].trajectory.is_complete or not lab.columns[1].trajectory.is_complete
    assert lab.sample_button.isEnabled() and not lab.cancel_button.isEnabled()
    lab.conv_most.setValue(20)
    with qtbot.waitSignal(lab.convergence_runner.cancelled, timeout=60000):
        assert lab.start_convergence()
        assert not lab.conv_button.isEnabled() and lab.conv_cancel.isEnabled()
        assert not lab.sample_button.isEnabled()  # one Lab job at a time
        lab.conv_cancel.click()
    lab.convergence_runner.wait(10)
    assert lab.conv_button.isEnabled() and not lab.conv_cancel.isEnabled()
