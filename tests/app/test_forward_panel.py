"""Forward panel: x_t on screen is the engine's add_noise; errors leave the panel usable."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
import pytest
import torch
from PIL import Image
from PySide6.QtCore import QSettings

from diffusion_studio.app import dialogs
from diffusion_studio.app.panels.forward_panel import ForwardPanel
from diffusion_studio.core.data import default_photo_path, load_image
from diffusion_studio.core.export import caption_frame, forward_caption, to_uint8_images
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.forward import (
    flow_time_at_snr,
    schedule_index_at_log_snr,
    step_caption,
)
from diffusion_studio.core.forward_points import (
    DENSITY_TOP,
    EXTENT,
    ForwardPoints,
    normal_density,
)
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig


@pytest.fixture
def panel(show):
    return show(ForwardPanel())


@pytest.fixture
def small_image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "small.png"
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


def engine_xt(path, seed, t, config=None):
    """x_t by the schedule's add_noise (eps from a torch generator seeded with `seed`), as the
    uint8 (H, W, C) picture to_uint8_images makes of it."""
    config = config or ScheduleConfig()
    x0 = torch.from_numpy(load_image(path, max_side=512))[None]
    noise = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(seed))[None]
    return to_uint8_images(NoiseSchedule(config).add_noise(x0, noise, torch.tensor([t]))[0])


def assert_shows(panel, expected):
    """The displayed uint8 x_t is `expected`, up to one level where float32 rounding differs."""
    shown = panel.view.image
    assert shown.dtype == np.uint8 and shown.shape == expected.shape
    diff = np.abs(shown.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_slider_shows_the_engines_x_t(panel, small_image):
    assert panel.load_image(small_image)
    panel.slider.setValue(0)
    clean = panel.view.image.copy()
    np.testing.assert_array_equal(clean, to_uint8_images(load_image(small_image)))
    np.testing.assert_array_equal(clean, np.asarray(Image.open(small_image)))
    panel.slider.setValue(301)  # position k shows timestep index k - 1
    assert panel.timestep() == 300
    assert not np.array_equal(panel.view.image, clean)
    assert_shows(panel, engine_xt(small_image, 0, 300))
    panel.seed.setValue(5)  # new noise, same t
    assert_shows(panel, engine_xt(small_image, 5, 300))
    # the readout shows the schedule's own numbers at t = 300 (as the tooltip's formulas say)
    schedule = NoiseSchedule(ScheduleConfig())
    ab = float(schedule.alphas_cumprod[300])
    text = panel.numbers.text()
    for value in (float(schedule.betas[300]), ab, math.sqrt(ab), math.sqrt(1 - ab)):
        assert f"<td>{value:.5g}</td>" in text, (value, text)


def test_schedule_from_the_schedules_tab_is_used(panel, small_image):
    panel.load_image(small_image)
    config = ScheduleConfig("cosine", 100)
    panel.set_schedule(config)
    assert panel.slider.maximum() == 100
    panel.slider.setValue(51)
    assert_shows(panel, engine_xt(small_image, 0, 50, config))


def test_histogram_and_filmstrip_follow_the_image(panel):
    panel.load_image(default_photo_path())
    panel.slider.setValue(panel.slider.maximum())  # x_T: nearly N(0, 1)
    _, density = panel.hist_curve.getData()
    assert density.max() == pytest.approx(0.4, abs=0.05)
    assert panel.hist.getViewBox().viewRange()[1] == pytest.approx([0.0, 0.6])  # fixed y range
    panel.slider.setValue(0)  # the photo's own histogram: the y range widens only if needed
    _, density = panel.hist_curve.getData()
    assert panel.hist.getViewBox().viewRange()[1][1] >= max(0.6, density.max())
    assert panel.filmstrip_positions[0] == 0 and panel.filmstrip_positions[-1] == 1000
    assert not panel.thumbs[0].pixmap().isNull()
    panel.thumbs[2].clicked.emit()
    assert panel.slider.value() == panel.filmstrip_positions[2]


def test_corrupt_image_shows_an_error_and_keeps_the_old_image(
    panel, small_image, tmp_path, fake_dialogs
):
    panel.load_image(small_image)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    assert not panel.load_image(bad)
    assert fake_dialogs.errors and "broken.png" in fake_dialogs.errors[-1][1]
    assert panel.image_path == small_image
    panel.slider.setValue(10)  # still usable
    assert_shows(panel, engine_xt(small_image, 0, 9))


def test_export_gif_through_the_dialog(panel, tmp_path, fake_dialogs, export):
    gradient = np.zeros((40, 60, 3), dtype=np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 60, dtype=np.uint8)[None]
    gradient[..., 2] = np.linspace(255, 0, 40, dtype=np.uint8)[:, None]
    small_image = tmp_path / "gradient.png"
    Image.fromarray(gradient).save(small_image)
    panel.load_image(small_image)
    panel.gif_frames.setValue(6)
    target = export(panel.gif_button, panel.export_runner, tmp_path / "forward.gif")
    captions = [forward_caption(int(k)) for k in panel.process.frame_steps(6)]
    assert captions[0] == "x_0 (clean)" and captions[-1] == "t = 999"
    drawn = [caption_frame(gradient, text) for text in captions]  # t written above each
    band = drawn[0].shape[0] - 40
    width = max(d.shape[1] for d in drawn)  # a caption wider than the image widens the GIF
    left = (width - 60) // 2
    with Image.open(target) as gif:
        assert gif.size == (width, 40 + band)
        assert gif.n_frames == 6
        frames = []
        for i in (0, 5):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB")).astype(int))
    first, last = (f[band:, left : left + 60] for f in frames)
    for frame, text in zip(frames, (captions[0], captions[-1])):
        words = caption_frame(gradient[..., 0], text)[:band]
        pad = (width - words.shape[1]) // 2
        shown = frame[:band, pad : pad + words.shape[1], 0]
        assert np.abs(shown - words.astype(int)).mean() < 8  # (palette-quantised)
        assert (shown < 128).sum() > 20  # dark letters on the white band
    clean = gradient.astype(int)
    assert np.abs(first - clean).mean() < 12  # frame 0 is the clean image (palette-quantised)
    assert np.abs(last - clean).mean() > 50  # the last is noise
    assert fake_dialogs.errors == []


def test_play_advances_the_slider(panel, small_image, qtbot):
    panel.load_image(small_image)
    panel.slider.setValue(0)
    panel.play_button.click()
    qtbot.waitUntil(lambda: panel.slider.value() > 20, timeout=5000)
    panel.play_button.click()
    assert not panel.play_timer.isActive()


def test_histogram_axis_shows_the_density_it_plots(panel):
    """The y axis is labelled a probability density and its ticks are the plotted values
    (no hidden x1000 SI scaling), so N(0, 1)'s peak reads 0.4 on it."""
    panel.load_image(default_photo_path())
    panel.slider.setValue(panel.slider.maximum())
    axis = panel.hist.getAxis("left")
    assert "density" in axis.labelText and axis.autoSIPrefixScale == 1.0
    _, density = panel.hist_curve.getData()
    assert np.sum(density) * (8.0 / density.size) == pytest.approx(1.0, abs=0.02)  # area 1
    assert axis.tickStrings([0.1, 0.4], axis.autoSIPrefixScale, 0.1) == ["0.1", "0.4"]


@pytest.mark.parametrize(
    "config", [ScheduleConfig(), ScheduleConfig("cosine", 1000, zero_terminal_snr=True)]
)
def test_numbers_readout_is_not_cut_off(panel, config):
    """At every t (and at zero terminal SNR) the readout's text fits its fixed box."""
    panel.load_image(default_photo_path())
    panel.set_schedule(config)
    for k in (0, 1, 2, 500, panel.slider.maximum() - 1, panel.slider.maximum()):
        panel.slider.setValue(k)
        assert panel.numbers.sizeHint().width() <= panel.numbers.width(), panel.numbers.text()
        assert panel.numbers.sizeHint().height() <= panel.numbers.height()
    assert "log SNR_t" in panel.numbers.text()


def test_export_suggests_the_image_and_schedule_name(panel, tmp_path, monkeypatch):
    panel.load_image(default_photo_path())
    panel.set_schedule(ScheduleConfig("cosine", 500))
    suggested = []
    monkeypatch.setattr(dialogs, "ask_save_path", lambda *a: suggested.append(a[3]))
    panel.export_gif()
    assert suggested == ["astronaut_forward_cosine_T500.gif"]


def test_a_new_schedule_clears_the_error_line(panel, small_image):
    panel.load_image(small_image)
    panel.error.show_message("an old message")
    panel.set_schedule(ScheduleConfig("cosine", 100))
    assert panel.error.text() == ""


# ---------------------------------------------------------------- 2-D source and flow path


def shown_points(panel) -> np.ndarray:
    x, y = panel.points_scatter.getData()
    return np.stack([x, y], axis=1)


def test_points_source_shows_cores_density_and_x_t(panel, small_image):
    """Issue 16, item 5: the density image is core's p_t at the slider's t (fixed levels, on
    [-3, 3]^2), the scatter is core's x_t, the readout core's numbers."""
    panel.load_image(small_image)
    assert panel.set_source("moons")
    assert panel.view_stack.currentIndex() == 1 and not panel.image_box.isVisible()
    assert not panel.view_tabs.isTabEnabled(1)  # the inspector inspects images
    panel.slider.setValue(201)
    core = ForwardPoints(NoiseSchedule(ScheduleConfig()), "moons", seed=0)
    expected = core.density(201)
    np.testing.assert_allclose(panel.density_item.image, expected, rtol=1e-9, atol=0)
    np.testing.assert_allclose(shown_points(panel), core.x_t(201), rtol=0, atol=1e-6)
    assert panel.density_item.levels == pytest.approx([0.0, DENSITY_TOP])
    rect = panel.density_item.mapRectToParent(panel.density_item.boundingRect())
    assert (rect.left(), rect.top(), rect.width(), rect.height()) == pytest.approx(
        (-EXTENT, -EXTENT, 2 * EXTENT, 2 * EXTENT)
    )
    # the densest cell is drawn where core's density peaks (row 0 is y = -3)
    row, col = np.unravel_index(np.argmax(expected), expected.shape)
    cell = 2 * EXTENT / expected.shape[0]
    peak = panel.density_item.mapToParent(pg.Point(col + 0.5, row + 0.5))
    assert (peak.x(), peak.y()) == pytest.approx(
        (-EXTENT + (col + 0.5) * cell, -EXTENT + (row + 0.5) * cell)
    )
    text = panel.numbers.text()
    tv = core.numbers(201).tv_to_normal
    assert f"<td>{tv:.4f}</td>" in text
    ab = float(NoiseSchedule(ScheduleConfig()).alphas_cumprod[200])
    assert f"<td>{ab:.5g}</td>" in text
    built = panel.points
    for k in (0, 500, 1000, 201):  # a slider move reuses the points and their noise
        panel.slider.setValue(k)
    assert panel.points is built
    panel.seed.setValue(5)  # new noise: the same points x_0
    reseeded = ForwardPoints(NoiseSchedule(ScheduleConfig()), "moons", seed=5)
    np.testing.assert_allclose(shown_points(panel), reseeded.x_t(201), rtol=0, atol=1e-6)
    np.testing.assert_allclose(panel.density_item.image, reseeded.density(201), rtol=1e-9)


def test_points_melt_into_the_standard_normal(panel):
    panel.set_source("rings")
    panel.slider.setValue(0)
    clean = panel.density_item.image.copy()
    assert panel.shown_numbers.noise == 0.0
    panel.slider.setValue(panel.slider.maximum())
    assert panel.density_item.image.max() == pytest.approx(1 / (2 * math.pi), rel=0.02)
    assert np.abs(panel.density_item.image - normal_density()).max() < 1e-3
    assert clean.max() > 1.0  # thin rings: far denser than N(0, I)'s peak
    assert "TV distance to N(0, I)" in panel.numbers.text()


def test_flow_path_for_an_image_and_its_numbers(panel, small_image):
    """Issue 17: flow matching's x_t = (1 - t) x_0 + t eps, with t = k / T and its own
    numbers (signal 1 - t, noise t; no alphabar)."""
    panel.load_image(small_image)
    assert panel.set_path("flow")
    panel.slider.setValue(301)
    t = 301 / 1000
    x0 = torch.from_numpy(load_image(small_image, max_side=512))[None]
    noise = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(0))[None]
    expected = to_uint8_images(FlowPath(1000).add_noise(x0, noise, torch.tensor([t]))[0])
    assert_shows(panel, expected)
    text = panel.numbers.text()
    assert "alphabar" not in text and "signal coefficient 1 - t" in text
    for value in (t, 1 - t):
        assert f"<td>{value:.5g}</td>" in text, (value, text)
    log_snr = float(FlowPath(1000).log_snr[300])
    assert f"<td>{log_snr:.2f}</td>" in text
    assert panel.t_label.text() == "t = 0.301"
    assert "Flow matching" in panel.schedule_label.text()
    panel.set_path("diffusion")  # back: the schedule's x_t at index 300
    assert_shows(panel, engine_xt(small_image, 0, 300))
    assert "alphabar_t" in panel.numbers.text()


def test_flow_path_for_points(panel):
    panel.set_source("spiral")
    panel.set_path("flow")
    panel.set_schedule(ScheduleConfig("cosine", 100))  # flow takes T = 100
    panel.slider.setValue(40)
    core = ForwardPoints(FlowPath(100), "spiral", seed=0)
    np.testing.assert_allclose(
        shown_points(panel), 0.6 * core.x0 + 0.4 * core.noise, rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(panel.density_item.image, core.density(40), rtol=1e-9)
    assert "<td>0.6</td>" in panel.numbers.text()


def test_loading_an_image_returns_to_the_image_source(panel, small_image):
    panel.set_source("gaussians")
    panel.load_image(small_image)
    assert panel.dataset is None and panel.view_stack.currentIndex() == 0
    assert panel.view_tabs.isTabEnabled(1) and panel.view_tabs.tabText(0) == "Noised image"
    panel.slider.setValue(11)
    assert_shows(panel, engine_xt(small_image, 0, 10))


def test_source_and_path_are_remembered(panel, small_image, app_dirs, show):
    panel.load_image(small_image)
    panel.set_source("swissroll")
    panel.set_path("flow")
    settings = QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "test", "forward")
    panel.save_state(settings)
    again = show(ForwardPanel())
    again.restore_state(settings)
    assert again.dataset == "swissroll" and again.objective == "flow"
    assert again.image_path == small_image  # the image is still there for the Image source
    np.testing.assert_allclose(
        shown_points(again), ForwardPoints(FlowPath(1000), "swissroll").x_t(again.slider.value())
    )


def test_export_points_gif(panel, tmp_path, export):
    """The GIF's frames are core's ForwardPoints.frame (density under the points) at the
    frame steps, with the path's captions."""
    panel.set_source("gaussians")
    panel.set_path("flow")
    panel.gif_frames.setValue(4)
    panel.gif_size.setValue(64)
    target = export(panel.gif_button, panel.export_runner, tmp_path / "points.gif")
    core = ForwardPoints(FlowPath(1000), "gaussians", seed=0)
    steps, frames = core.frames(4, size=64)
    with Image.open(target) as gif:
        assert gif.n_frames == 4
        band = gif.size[1] - 64
        width = gif.size[0]
        left = (width - 64) // 2
        for i in (0, 3):
            gif.seek(i)
            shown = np.asarray(gif.convert("RGB")).astype(int)[band:, left : left + 64]
            assert np.abs(shown - frames[i].astype(int)).mean() < 6  # (palette-quantised)
    assert np.abs(frames[0].astype(int) - frames[3].astype(int)).mean() > 10
    assert step_caption(FlowPath(1000), int(steps[-1])) == "t = 1.000"


def test_export_suggests_the_data_set_and_path_name(panel, monkeypatch):
    panel.set_source("moons")
    panel.set_path("flow")
    panel.set_schedule(ScheduleConfig("cosine", 500))
    suggested = []
    monkeypatch.setattr(dialogs, "ask_save_path", lambda *a: suggested.append(a[3]))
    panel.export_gif()
    assert suggested == ["moons_forward_flow_T500.gif"]


@pytest.mark.parametrize("source", ["image", "moons"])
def test_flow_numbers_readout_is_not_cut_off(panel, source):
    panel.load_image(default_photo_path())
    panel.set_source(source)
    panel.set_path("flow")
    for k in (0, 1, 2, 500, 999, 1000):
        panel.slider.setValue(k)
        assert panel.numbers.sizeHint().width() <= panel.numbers.width(), panel.numbers.text()
        assert panel.numbers.sizeHint().height() <= panel.numbers.height()


def test_readout_relates_flow_time_and_the_schedule(panel, small_image):
    """Issue 17: each path's readout names the other path's t that is as noisy (equal SNR),
    as core computes it."""
    panel.load_image(small_image)
    schedule = NoiseSchedule(ScheduleConfig())
    panel.slider.setValue(401)  # diffusion index 400
    t = flow_time_at_snr(float(schedule.snr[400]))
    assert 0 < t < 1 and ((1 - t) / t) ** 2 == pytest.approx(float(schedule.snr[400]))
    assert f"flow t with this SNR</td><td>{t:.4g}</td>" in panel.numbers.text()
    panel.set_path("flow")
    panel.slider.setValue(501)  # flow t = 0.501
    index = schedule_index_at_log_snr(schedule, float(FlowPath(1000).log_snr[500]))
    assert 0 < index < 999
    assert f"schedule's t with this SNR</td><td>{index}</td>" in panel.numbers.text()
    panel.slider.setValue(0)
    assert "schedule's t with this SNR</td><td>–</td>" in panel.numbers.text()
