"""Forward panel: x_t on screen is the engine's add_noise; errors leave the panel usable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.panels.forward_panel import ForwardPanel, noise_for
from core.data import default_photo_path, load_image
from core.schedule import NoiseSchedule, ScheduleConfig


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
    config = config or ScheduleConfig()
    x0 = torch.from_numpy(load_image(path, max_side=512))[None]
    noise = torch.from_numpy(noise_for(tuple(x0.shape[1:]), seed))[None]
    xt = NoiseSchedule(config).add_noise(x0, noise, torch.tensor([t]))[0]
    return np.moveaxis(xt.numpy(), 0, -1)


def test_slider_shows_the_engines_x_t(panel, small_image):
    assert panel.load_image(small_image)
    panel.slider.setValue(0)
    clean = panel.view.image.copy()
    np.testing.assert_array_equal(clean, np.moveaxis(load_image(small_image), 0, -1))
    panel.slider.setValue(301)  # position k shows timestep index k - 1
    assert panel.timestep() == 300
    shown = panel.view.image
    assert not np.array_equal(shown, clean)
    np.testing.assert_allclose(shown, engine_xt(small_image, 0, 300), atol=1e-6)
    panel.seed.setValue(5)  # new noise, same t
    np.testing.assert_allclose(panel.view.image, engine_xt(small_image, 5, 300), atol=1e-6)
    assert "0.5" in panel.numbers.text() or "sqrt" in panel.numbers.text()


def test_schedule_from_the_schedules_tab_is_used(panel, small_image):
    panel.load_image(small_image)
    config = ScheduleConfig("cosine", 100)
    panel.set_schedule(config)
    assert panel.slider.maximum() == 100
    panel.slider.setValue(51)
    np.testing.assert_allclose(panel.view.image, engine_xt(small_image, 0, 50, config), atol=1e-6)


def test_histogram_and_filmstrip_follow_the_image(panel):
    panel.load_image(default_photo_path())
    panel.slider.setValue(panel.slider.maximum())  # x_T: nearly N(0, 1)
    _, density = panel.hist_curve.getData()
    assert density.max() == pytest.approx(0.4, abs=0.05)
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
    np.testing.assert_allclose(panel.view.image, engine_xt(small_image, 0, 9), atol=1e-6)


def test_export_gif_through_the_dialog(panel, tmp_path, fake_dialogs, export):
    gradient = np.zeros((40, 60, 3), dtype=np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 60, dtype=np.uint8)[None]
    gradient[..., 2] = np.linspace(255, 0, 40, dtype=np.uint8)[:, None]
    small_image = tmp_path / "gradient.png"
    Image.fromarray(gradient).save(small_image)
    panel.load_image(small_image)
    panel.gif_frames.setValue(6)
    target = export(panel.gif_button, panel.export_runner, tmp_path / "forward.gif")
    with Image.open(target) as gif:
        assert gif.size == (60, 40)
        assert gif.n_frames == 6
        gif.seek(0)
        first = np.asarray(gif.convert("RGB")).astype(int)
        gif.seek(5)
        last = np.asarray(gif.convert("RGB")).astype(int)
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
