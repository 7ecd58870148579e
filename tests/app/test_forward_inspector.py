"""Issue 16, the timestep inspector in the Forward panel: with tiny checkpoints, what the panel
shows (panels, numbers, curve, marker, labels, exports) is what core.inspect computes for the
same image, seed, t and label; a point model or no model shows what the inspector needs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_studio.app.panels.forward_panel import NO_INSPECT_MODEL, ForwardPanel
from diffusion_studio.core.checkpoint import load_checkpoint, save_checkpoint
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.inspect import (
    CURVE_COLUMNS,
    inspect_at,
    inspect_curve,
    inspect_image,
    seeded_noise,
    setup_from_checkpoint,
)
from diffusion_studio.core.inspect_render import panel_pictures, render_row
from diffusion_studio.core.models import UNetConfig
from diffusion_studio.core.schedule import ScheduleConfig
from diffusion_studio.core.training import Trainer, preset_config


@pytest.fixture
def panel(show):
    return show(ForwardPanel())


@pytest.fixture
def picture(tmp_path):
    """A 40x60 colour picture (the inspector resizes it to the model's 1 x H x W)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "picture.png"
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


def choose(panel, path, qtbot, seed: int = 0):
    """Give the panel the checkpoint at `path` as Playback's model and choose it; set the
    panel's schedule to the model's (the slider's t is the model's t); wait for the curve."""
    ckpt = load_checkpoint(path)
    panel.set_schedule(ckpt.schedule_config)
    panel.seed.setValue(seed)
    panel.set_playback_model(ckpt)
    assert panel.choose_inspect_model("playback")
    wait_for_curve(panel, qtbot)
    return ckpt


def wait_for_curve(panel, qtbot) -> None:
    qtbot.waitUntil(lambda: not panel.curve_runner.is_running, timeout=60000)
    assert panel.inspect_curve is not None


def core_setup(ckpt, image_path, seed, label=None):
    return setup_from_checkpoint(ckpt, inspect_image(ckpt, image_path), seed=seed, label=label)


def assert_row_is(panel, expected) -> None:
    """The panel's record, panels and numbers are core's record `expected`."""
    record = panel.inspect_record
    assert record.t == expected.t and record.label == expected.label
    for name in ("x_t", "noise", "pred_noise", "pred_x0", "error_map"):
        np.testing.assert_allclose(getattr(record, name), getattr(expected, name), atol=1e-5)
    for name in ("loss", "x0_mse", "eps_mse", "log_snr"):
        assert getattr(record, name) == pytest.approx(getattr(expected, name), rel=1e-5)
    for view, shown in zip(panel.inspect_views, panel_pictures(expected)):
        assert np.abs(view.image.astype(int) - shown.astype(int)).max() <= 1
    text = panel.inspect_numbers.text()
    for value in (expected.loss, expected.x0_mse, expected.eps_mse):
        assert f"{value:.5g}" in text
    assert f"loss ({expected.prediction_type})" in text


def test_no_model_computes_nothing_and_says_what_it_needs(panel, picture):
    assert panel.load_image(picture)
    panel.slider.setValue(40)
    assert panel.inspect_model.currentData() is None
    assert panel.inspect_setup is None and panel.inspect_record is None
    assert not panel.curve_runner.is_running
    assert panel.inspect_message.text() == NO_INSPECT_MODEL
    assert all(view.image is None for view in panel.inspect_views)
    assert not panel.inspect_message.isHidden() and panel.inspect_body.isHidden()
    assert not panel.inspect_png_button.isEnabled()


def test_point_model_shows_the_message_not_a_dialog(panel, picture, checkpoints, fake_dialogs):
    assert panel.load_image(picture)
    panel.set_playback_model(load_checkpoint(checkpoints.points))
    assert panel.choose_inspect_model("playback")
    assert "needs an image model" in panel.inspect_message.text()
    assert "2-D point model" in panel.inspect_message.text()
    assert panel.inspect_setup is None and not panel.curve_runner.is_running
    assert panel.inspect_body.isHidden()
    assert fake_dialogs.errors == []


def test_shown_numbers_and_panels_are_cores(panel, picture, checkpoints, qtbot):
    assert panel.load_image(picture)
    ckpt = choose(panel, checkpoints.images, qtbot, seed=3)
    setup = core_setup(ckpt, picture, seed=3)
    assert not panel.inspect_body.isHidden() and panel.inspect_message.isHidden()
    for t in (0, 40, 99):
        panel.slider.setValue(t + 1)  # slider position k shows t = k - 1
        assert panel.inspect_t() == t
        assert_row_is(panel, inspect_at(setup, t))


def test_the_slider_past_the_models_T_shows_its_last_t(panel, picture, checkpoints, qtbot):
    assert panel.load_image(picture)
    ckpt = choose(panel, checkpoints.images, qtbot)
    panel.set_schedule(type(ckpt.schedule_config)("linear", 1000))  # the panel's T: 1000
    panel.slider.setValue(501)
    last = ckpt.schedule_config.num_timesteps - 1
    assert panel.inspect_t() == last
    assert_row_is(panel, inspect_at(core_setup(ckpt, picture, 0), last))
    text = panel.inspect_numbers.text()
    assert f"t = 500 is past this model's last t = {last}" in text
    assert "the model's own schedule is used" in text


def test_the_inspector_noise_is_the_panels_noise(panel, tmp_path, checkpoints, qtbot):
    # an image already at the model's shape: the panel's eps and the inspector's are one draw
    ckpt = load_checkpoint(checkpoints.images)
    channels, height, width = ckpt.sample_shape
    path = tmp_path / "at_model_size.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8)).save(path)
    assert panel.load_image(path)
    choose(panel, checkpoints.images, qtbot, seed=7)
    panel_noise = np.moveaxis(panel.process.noise, -1, 0)  # the panel keeps eps (H, W, C)
    assert panel_noise.shape == (channels, height, width)
    np.testing.assert_array_equal(panel.inspect_record.noise, panel_noise)
    np.testing.assert_array_equal(panel_noise, seeded_noise((channels, height, width), 7).numpy())


def test_curve_is_cores_and_the_marker_follows_t(panel, picture, checkpoints, qtbot):
    assert panel.load_image(picture)
    ckpt = choose(panel, checkpoints.images, qtbot, seed=2)
    expected = inspect_curve(core_setup(ckpt, picture, seed=2))
    curve = panel.inspect_curve
    np.testing.assert_array_equal(curve.t, expected.t)
    for name in ("loss", "x0_mse", "eps_mse", "log_snr"):
        np.testing.assert_allclose(getattr(curve, name), getattr(expected, name), rtol=1e-5)
    for name, item in panel.curve_items.items():  # what is drawn (the data, before log y)
        np.testing.assert_array_equal(item.xData, expected.t)
        np.testing.assert_allclose(item.yData, getattr(expected, name), rtol=1e-5)
    finite = np.isfinite(expected.log_snr)
    np.testing.assert_allclose(panel.snr_curve.yData, expected.log_snr[finite], rtol=1e-5)
    for t in (10, 70, 0):
        panel.slider.setValue(t + 1)
        assert panel.curve_marker.value() == t
        # a new t moves the marker only: no new curve
        assert not panel.curve_runner.is_running and panel.inspect_curve is curve


def test_a_new_seed_or_image_recomputes_the_curve(panel, picture, small_digit, checkpoints, qtbot):
    assert panel.load_image(picture)
    ckpt = choose(panel, checkpoints.images, qtbot, seed=0)
    first = panel.inspect_curve
    panel.seed.setValue(5)
    wait_for_curve(panel, qtbot)
    assert panel.inspect_curve is not first
    expected = inspect_curve(core_setup(ckpt, picture, seed=5))
    np.testing.assert_allclose(panel.inspect_curve.x0_mse, expected.x0_mse, rtol=1e-5)
    assert panel.load_image(small_digit)
    wait_for_curve(panel, qtbot)
    expected = inspect_curve(core_setup(ckpt, small_digit, seed=5))
    np.testing.assert_allclose(panel.inspect_curve.loss, expected.loss, rtol=1e-5)
    panel.slider.setValue(31)
    assert_row_is(panel, inspect_at(core_setup(ckpt, small_digit, seed=5), 30))


@pytest.fixture
def small_digit(tmp_path):
    path = tmp_path / "digit.png"
    picture = np.zeros((28, 28), np.uint8)
    picture[6:22, 12:16] = 255
    Image.fromarray(picture).save(path)
    return path


def test_class_choice_for_a_class_conditional_model(panel, picture, checkpoints, qtbot):
    assert panel.load_image(picture)
    ckpt = choose(panel, checkpoints.conditional, qtbot, seed=1)
    labels = [panel.inspect_label.itemText(i) for i in range(panel.inspect_label.count())]
    assert labels == ["no label"] + [str(k) for k in range(10)]
    assert panel.inspect_label.isEnabled()
    panel.slider.setValue(51)
    assert_row_is(panel, inspect_at(core_setup(ckpt, picture, 1, label=None), 50))
    panel.inspect_label.setCurrentIndex(panel.inspect_label.findData(3))
    assert_row_is(panel, inspect_at(core_setup(ckpt, picture, 1, label=3), 50))
    assert "<td>3</td>" in panel.inspect_numbers.text()
    wait_for_curve(panel, qtbot)  # the label changed: a new curve, with the label
    expected = inspect_curve(core_setup(ckpt, picture, 1, label=3))
    np.testing.assert_allclose(panel.inspect_curve.loss, expected.loss, rtol=1e-5)


def test_an_unconditional_model_takes_no_label(panel, picture, checkpoints, qtbot):
    assert panel.load_image(picture)
    choose(panel, checkpoints.images, qtbot)
    assert panel.inspect_label.count() == 1
    assert panel.inspect_label.currentData() is None
    assert not panel.inspect_label.isEnabled()


def test_exports_write_the_row_png_and_the_curve_csv(
    panel, picture, checkpoints, qtbot, export, tmp_path
):
    assert panel.load_image(picture)
    ckpt = choose(panel, checkpoints.images, qtbot, seed=4)
    panel.slider.setValue(21)
    png = export(panel.inspect_png_button, panel.export_runner, tmp_path / "row.png")
    expected = render_row(inspect_at(core_setup(ckpt, picture, 4), 20))
    written = np.asarray(Image.open(png).convert("RGB"))
    assert written.shape == expected.shape
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1
    table = export(panel.inspect_csv_button, panel.export_runner, tmp_path / "curve.csv")
    with open(table, newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CURVE_COLUMNS
    assert len(rows) == 1 + ckpt.schedule_config.num_timesteps
    curve = panel.inspect_curve
    assert [int(row[0]) for row in rows[1:]] == curve.t.tolist()
    np.testing.assert_allclose([float(row[3]) for row in rows[1:]], curve.x0_mse, rtol=1e-4)


def test_playback_model_reaches_the_inspector_list(window, checkpoints):
    forward, playback = window.forward, window.playback
    assert forward.inspect_model.findData("playback") < 0
    assert playback.load_checkpoint(checkpoints.images)
    index = forward.inspect_model.findData("playback")
    assert index >= 0 and "Playback's model" in forward.inspect_model.itemText(index)
    assert forward.inspect_models["playback"] is playback.checkpoint
    assert forward.inspect_model.currentData() is None  # listed, not chosen for the user


def test_choosing_no_model_stops_the_curve(panel, picture, checkpoints, qtbot):
    assert panel.load_image(picture)
    panel.set_playback_model(load_checkpoint(checkpoints.images))
    assert panel.choose_inspect_model("playback")
    assert panel.curve_runner.is_running  # the curve is computed in the worker
    assert panel.choose_inspect_model(None)
    qtbot.waitUntil(lambda: not panel.curve_runner.is_running, timeout=60000)
    assert panel.inspect_curve is None and panel.inspect_setup is None
    assert panel.inspect_message.text() == NO_INSPECT_MODEL
    assert all(item.xData is None for item in panel.curve_items.values())  # nothing drawn


# ---------------------------------------------------------------- a flow-matching model


@pytest.fixture(scope="module")
def flow_checkpoint(tmp_path_factory):
    """A tiny unconditional digits UNet trained 2 steps with the flow objective (T = 50)."""
    tiny_unet = UNetConfig(channels=(8, 8), attention_heads=0, norm_groups=4)
    trainer = Trainer(
        preset_config(
            "digits",
            "small",
            max_steps=2,
            max_minutes=None,
            batch_size=4,
            device="cpu",
            schedule=ScheduleConfig("linear", 50),
            model=tiny_unet,
            objective="flow",
        )
    )
    for _ in trainer.run():
        pass
    path = tmp_path_factory.mktemp("flow") / "flow.safetensors"
    save_checkpoint(path, trainer.checkpoint())
    return path


@pytest.mark.slow  # trains a tiny flow model (2 steps) first
def test_a_flow_model_is_shown_on_its_path(panel, picture, flow_checkpoint, qtbot):
    """Issue 17: the inspector shows a flow model's x_t = (1 - t) x_0 + t eps at t = (k + 1) / T,
    the eps and x_0 its velocity implies, its velocity loss and the flow path's log-SNR curve,
    all as core.inspect computes them."""
    assert panel.load_image(picture)
    panel.set_path("flow")
    ckpt = choose(panel, flow_checkpoint, qtbot, seed=4)
    assert ckpt.objective == "flow"
    setup = core_setup(ckpt, picture, seed=4)
    assert setup.is_flow and setup.num_timesteps == 50
    for k in (0, 20, 49):
        panel.slider.setValue(k + 1)  # slider position k + 1: index k, flow t = (k + 1) / 50
        assert panel.inspect_t() == k
        expected = inspect_at(setup, k)
        assert expected.time == pytest.approx((k + 1) / 50)
        assert_row_is(panel, expected)
        text = panel.inspect_numbers.text()
        assert f"{expected.time:.4g} (k = {k})" in text and "loss (velocity)" in text
        assert "own path" not in text and "own schedule" not in text  # the panel's path too
    panel.slider.setValue(21)
    record, t = panel.inspect_record, 21 / 50
    x0, eps = setup.image.numpy(), setup.noise.numpy()
    np.testing.assert_allclose(record.x_t, (1 - t) * x0 + t * eps, atol=1e-6)
    model = setup.model.eval()
    with torch.no_grad():
        velocity = model(torch.from_numpy(record.x_t)[None], torch.tensor([t * 50]))[0].numpy()
    # the panels' eps and x_0 are the velocity's: eps - x_0 = v
    np.testing.assert_allclose(record.pred_noise - record.pred_x0, velocity, atol=1e-4)
    np.testing.assert_allclose(record.pred_x0, record.x_t - t * velocity, atol=1e-4)
    assert "x_0 = x_t - t v" in panel.inspect_views[3].toolTip()
    # the curve over k and its log-SNR axis: the flow path's 2 log((1 - t) / t)
    expected = inspect_curve(setup)
    np.testing.assert_allclose(panel.inspect_curve.loss, expected.loss, rtol=1e-5)
    log_snr = FlowPath(50).log_snr.numpy()
    finite = np.isfinite(log_snr)
    assert not finite[-1]  # t = 1: -inf, not drawn
    np.testing.assert_allclose(panel.snr_curve.yData, log_snr[finite], rtol=1e-6)
    np.testing.assert_array_equal(panel.snr_curve.xData, np.arange(50)[finite])
    assert "flow time" in panel.curve_plot.getPlotItem().getAxis("bottom").labelText
    # the panel on a diffusion schedule: the readout says the model keeps its own path
    panel.set_path("diffusion")
    assert "a flow-matching model: its own path is used" in panel.inspect_numbers.text()
    assert_row_is(panel, inspect_at(setup, 20))
