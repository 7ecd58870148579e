"""Forward panel: x_t on screen is the engine's add_noise; errors leave the panel usable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_studio.app import dialogs
from diffusion_studio.app.panels.forward_panel import ForwardPanel
from diffusion_studio.core.data import default_photo_path, load_image
from diffusion_studio.core.export import caption_frame, forward_caption, to_uint8_images
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
