"""Main window: routing of files, drag-and-drop, settings, About, closing during a job."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QLabel

from diffusion_studio.app.main_window import MainWindow
from diffusion_studio.app.widgets import set_combo_data
from diffusion_studio.app.worker import live_threads
from diffusion_studio.core.checkpoint import build_model_from_checkpoint
from diffusion_studio.core.data import default_photo_path
from diffusion_studio.core.export import caption_frame
from diffusion_studio.core.samplers import REGISTRY, SamplerConfig, make_sampler
from diffusion_studio.core.sampling import sample
from diffusion_studio.core.schedule import NoiseSchedule
from tests.app.conftest import drop_on_window


def test_first_launch_shows_the_bundled_photo_on_every_panel(window):
    assert window.forward.image_path == default_photo_path()
    assert window.forward.view.image is not None
    assert window.schedules.curves["alpha_bar"].getOriginalDataset()[0].size == 1000
    assert window.playback.start_image == default_photo_path()
    assert [window.tabs.tabText(i) for i in range(4)] == [
        "Schedules",
        "Forward",
        "Training",
        "Playback",
    ]


def test_every_control_has_a_tooltip(window):
    from PySide6.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QSlider

    window.ensure_all_panels()
    missing = [
        w.objectName() or f"{type(w).__name__}:{getattr(w, 'text', lambda: '')()}"
        for kind in (QAbstractButton, QAbstractSpinBox, QComboBox, QSlider)
        for w in window.findChildren(kind)
        if w.isVisibleTo(window)
        and not w.toolTip()
        and w.window() is window
        and type(w).__name__ not in ("QToolButton", "QTabBar")
    ]
    assert missing == []


def test_schedule_change_reaches_the_forward_panel(window):
    set_combo_data(window.schedules.kind, "cosine")
    window.schedules.steps.setValue(200)
    assert window.forward.schedule.config.kind == "cosine"
    assert window.forward.slider.maximum() == 200


def test_open_path_routes_by_kind(window, tmp_path, checkpoints):
    image = tmp_path / "pic.png"
    Image.fromarray(np.full((20, 30, 3), 128, dtype=np.uint8)).save(image)
    assert window.open_path(image)
    assert window.tabs.currentWidget() is window.forward
    assert window.forward.image_path == image
    assert window.open_path(checkpoints.points)
    assert window.tabs.currentWidget() is window.playback
    assert window.playback.checkpoint.is_points
    assert window.open_path(tmp_path)
    assert window.tabs.currentWidget() is window.training
    assert window.training.folder == tmp_path


def test_corrupt_files_show_an_error_and_the_app_stays_usable(window, tmp_path, fake_dialogs):
    bad_image = tmp_path / "bad.jpg"
    bad_image.write_bytes(b"\xff\xd8\xff garbage")
    bad_ckpt = tmp_path / "bad.safetensors"
    bad_ckpt.write_bytes(b"{}" * 10)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert not window.open_path(bad_image)
    assert not window.open_path(bad_ckpt)
    assert not window.open_path(other)
    assert [title for title, _ in fake_dialogs.errors] == [
        "Cannot open image",
        "Cannot open checkpoint",
        "Cannot open",
    ]
    assert "bad.jpg" in fake_dialogs.errors[0][1]
    window.forward.slider.setValue(5)  # still works
    assert window.forward.image_path == default_photo_path()


def test_drop_a_file_anywhere_on_the_window(window, tmp_path, qtbot):
    image = tmp_path / "dropped.png"
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(image)
    drop_on_window(window, [image], target=window.schedules.plots.viewport())  # another tab
    qtbot.waitUntil(lambda: window.forward.image_path == image, timeout=3000)
    assert window.tabs.currentWidget() is window.forward
    other = QLabel("not in the window")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(image))])
    buttons, modifiers = Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier
    stray = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, buttons, modifiers)
    assert not window.eventFilter(other, stray)


def test_settings_and_recent_files_persist(window, tmp_path, qtbot, fake_dialogs):
    image = tmp_path / "remember.png"
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(image)
    window.open_path(image)
    set_combo_data(window.schedules.kind, "sigmoid")
    window.forward.seed.setValue(7)
    window.training.batch.setValue(32)
    window.playback.num_steps.setValue(25)
    set_combo_data(window.playback.sampler_kind, "ddim")
    window.playback.sampler_form.option_widget("eta").setValue(0.3)
    window.resize(1000, 700)
    window.close()
    again = MainWindow()
    qtbot.addWidget(again)
    assert again.schedules.schedule.config.kind == "sigmoid"
    assert again.forward.image_path == image
    assert again.forward.seed.value() == 7
    assert again.training.batch.value() == 32
    assert again.playback.num_steps.value() == 25
    assert again.playback.request().sampler.summary() == "DDIM, 25 steps, eta 0.3"
    assert again.settings.value("window/geometry") is not None
    assert again.size().height() == 700
    assert again.recent_menu.isEnabled()
    again.recent_menu.aboutToShow.emit()  # filled as it opens
    recent = [a.toolTip() for a in again.recent_menu.actions() if a.toolTip()]
    assert str(image.resolve()) in recent
    again.close()


def test_about_names_versions_and_licences(window, fake_dialogs):
    window.show_about()
    text = fake_dialogs.abouts[-1]
    assert torch.__version__ in text and "Qt" in text
    assert "CC BY-SA 3.0" in text and "public domain" in text
    assert "prod alpha_s" in text


def test_export_gif_menu_uses_the_forward_panel_by_default(window, tmp_path, fake_dialogs, qtbot):
    window.forward.gif_frames.setValue(3)
    window.forward.gif_size.setValue(32)
    target = tmp_path / "menu.gif"
    fake_dialogs.paths.append(target)
    with qtbot.waitSignal(window.forward.export_runner.finished, timeout=20000):
        window.export_gif_action.trigger()
    window.forward.export_runner.wait(10)
    band = caption_frame(np.zeros((32, 32), np.uint8), "t = 999").shape[0] - 32
    with Image.open(target) as gif:  # a 32-px picture under a band with t (issue 14)
        assert gif.n_frames == 3 and gif.size[1] == 32 + band


def test_close_during_training_asks_stops_and_saves(window, qtbot, fake_dialogs, app_dirs):
    training = window.training
    set_combo_data(training.source, "moons")
    set_combo_data(training.model_size, "small")
    set_combo_data(training.budget, "steps")
    training.max_steps.setValue(1_000_000)
    training.preview_every.setValue(0)
    assert training.start()
    qtbot.waitUntil(lambda: training.loss.n >= 2, timeout=30000)
    fake_dialogs.answers.append(False)  # "No": keep running
    window.close()
    assert window.isVisible() and training.runner.is_running
    fake_dialogs.answers.append(True)
    window.close()
    assert not window.isVisible()
    assert live_threads() == []
    saved = list((app_dirs.data / "checkpoints").glob("moons-*.safetensors"))
    assert len(saved) == 1


# ---------------------------------------------------------------------- recent files, title


def recent_entries(window) -> list[str]:
    window.recent_menu.aboutToShow.emit()
    return [a.text() for a in window.recent_menu.actions() if a.text() and a.text() != "Clear"]


def test_recent_files_hold_what_the_app_opens_not_exports(window, tmp_path, fake_dialogs, export):
    image = tmp_path / "input.png"
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(image)
    assert window.open_path(image)
    window.forward.gif_frames.setValue(2)
    window.forward.gif_size.setValue(16)
    export(window.forward.gif_button, window.forward.export_runner, tmp_path / "out.gif")
    fake_dialogs.paths.append(tmp_path / "table.csv")
    window.schedules.csv_button.click()
    assert (tmp_path / "out.gif").is_file() and (tmp_path / "table.csv").is_file()
    entries = recent_entries(window)
    assert "input.png" in entries
    assert "out.gif" not in entries and "table.csv" not in entries
    assert window.windowTitle() == "input.png — Diffusion Studio"  # not the export's name


def test_a_recent_file_that_is_gone_is_marked_and_dropped_without_an_error(
    window, tmp_path, fake_dialogs
):
    image = tmp_path / "soon-gone.png"
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(image)
    assert window.open_path(image)
    image.unlink()
    assert "soon-gone.png (not found)" in recent_entries(window)
    window.open_recent(str(image.resolve()))
    assert fake_dialogs.errors == []
    assert "no longer there" in window.statusBar().currentMessage()
    assert not any("soon-gone" in entry for entry in recent_entries(window))


def test_the_title_names_the_open_image_or_model(window, tmp_path, checkpoints):
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(image)
    assert window.open_path(image)
    assert window.windowTitle() == "photo.png — Diffusion Studio"
    assert window.open_path(checkpoints.points)
    assert window.windowTitle() == "moons.safetensors — Diffusion Studio"
    assert window.open_path(tmp_path)  # an image folder for training: not a document
    assert window.windowTitle() == "moons.safetensors — Diffusion Studio"


def test_what_the_app_shows_by_itself_is_not_a_file_the_user_opened(window, tmp_path):
    """The bundled photo (or the last image, restored) names no window and joins no list; the
    sample-photo box shows no sample for the user's own image."""
    from diffusion_studio.app.settings import recent_files

    window.ensure_all_panels()  # Forward restores its image; Playback builds it too
    assert window.forward.image_path == default_photo_path()
    assert window.windowTitle() == "Diffusion Studio"
    assert recent_files(window.settings) == []
    image = tmp_path / "mine.png"
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(image)
    assert window.open_path(image)
    assert window.forward.photo.currentIndex() == -1
    assert window.windowTitle() == "mine.png — Diffusion Studio"


# ---------------------------------------------------------------------- help


def test_getting_started_opens_offline_and_walks_every_panel(window, qtbot):
    from diffusion_studio.app.help import GettingStartedDialog

    window.getting_started_action.trigger()
    dialog = window.findChild(GettingStartedDialog)
    assert dialog is not None and dialog.isVisible()
    text = dialog.browser.toPlainText()
    for i in range(window.tabs.count()):
        assert window.tabs.tabText(i) in text
    assert "cumulative product" in text and "Sample" in text and "Start" in text
    window.getting_started_action.trigger()  # again: the same window, not a second one
    assert window.findChildren(GettingStartedDialog) == [dialog]
    dialog.close()


# ---------------------------------------------------------------------- icon


def test_window_icon_is_the_shipped_one(window):
    icon = window.windowIcon()
    assert not icon.isNull()
    assert any(size.width() == 256 for size in icon.availableSizes())


def test_missing_icons_do_not_stop_the_app(monkeypatch, qtbot):
    def missing(*parts):
        raise FileNotFoundError(f"shipped resource not found: {'/'.join(parts)}")

    monkeypatch.setattr("diffusion_studio.core.resources.resource_path", missing)
    again = MainWindow()
    qtbot.addWidget(again)
    assert again.windowIcon().isNull()
    assert again.forward.image_path == default_photo_path()  # everything else works
    again.close()


# ---------------------------------------------------------------------- diffusers model folders


def fake_diffusers_folder(folder):
    """A folder laid out like a diffusers UNet2DModel (its weights are never read here)."""
    folder.mkdir(parents=True)
    config = {"_class_name": "UNet2DModel", "in_channels": 1, "out_channels": 1, "sample_size": 8}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    scheduler = {"_class_name": "DDPMScheduler", "num_train_timesteps": 100}
    (folder / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


@pytest.fixture
def without_diffusers(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` raises ImportError


def test_dropped_model_folder_goes_to_playback_other_folders_to_training(
    window, tmp_path, fake_dialogs, without_diffusers
):
    model = fake_diffusers_folder(tmp_path / "ddpm-tiny")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(pictures / "a.png")
    window.handle_dropped_paths([str(model)])
    assert window.tabs.currentWidget() is window.playback
    title, message = fake_dialogs.errors[-1]
    assert title == "Cannot open checkpoint" and "pip install" in message  # the extra is missing
    assert window.training.folder is None
    window.tabs.setCurrentWidget(window.forward)
    assert not window.open_path(model / "config.json")  # a file of the model: the same
    assert window.tabs.currentWidget() is window.playback
    window.handle_dropped_paths([str(pictures)])
    assert window.tabs.currentWidget() is window.training
    assert window.training.folder == pictures


def test_open_model_folder_menu(window, tmp_path, fake_dialogs, without_diffusers):
    fake_dialogs.paths.append(fake_diffusers_folder(tmp_path / "model"))
    window.open_model_folder_action.trigger()
    assert fake_dialogs.asked[-1] == "Open a diffusers model folder"
    assert window.tabs.currentWidget() is window.playback
    assert "diffusers" in window.playback.error.text()
    assert window.playback.checkpoint is None


def test_a_real_diffusers_folder_plays_back(window, tmp_path, qtbot, fake_dialogs):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    pipeline = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(100))
    pipeline.save_pretrained(tmp_path / "tiny-ddpm")
    fake_dialogs.paths.append(tmp_path / "tiny-ddpm")
    window.open_model_folder_action.trigger()
    playback = window.playback
    assert playback.checkpoint is not None, fake_dialogs.errors
    assert playback.model_choice.currentText() == "Diffusers: tiny-ddpm"
    # the sampler controls follow the model's scheduler config (DDPM, leading, clip)
    defaults = SamplerConfig.from_dict(playback.checkpoint.meta["sampler_defaults"])
    assert playback.request().sampler == defaults
    assert defaults.kind == "ddpm" and defaults.clip_sample and defaults.spacing == "leading"
    playback.num_samples.setValue(2)
    playback.seed.setValue(7)
    with qtbot.waitSignal(playback.runner.finished, timeout=60000):
        playback.sample_button.click()
    playback.runner.wait(10)
    assert (
        playback.grid_view.image is not None
        and playback.trajectory.steps[-1] == defaults.num_inference_steps
    )
    # ... so the app's playback equals diffusers' own pipeline for the same seed
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(
        batch_size=2,
        generator=torch.Generator().manual_seed(7),
        num_inference_steps=defaults.num_inference_steps,
        output_type="np",
    ).images  # (2, 8, 8, 1) in [0, 1]
    ours = np.clip(playback.trajectory.final_samples / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    # ... and its frames are exactly core's sampling with those settings
    ckpt = playback.checkpoint
    schedule = NoiseSchedule(ckpt.schedule_config)
    sampler = make_sampler(defaults, schedule, ckpt.prediction_type)
    model = build_model_from_checkpoint(ckpt)
    frames = list(
        sample(model, schedule, sampler, 2, ckpt.sample_shape, torch.Generator().manual_seed(7))
    )
    np.testing.assert_array_equal(playback.trajectory.final_samples, frames[-1].x_t.numpy())


def test_open_in_playback_shows_the_trained_model_there(window, qtbot, checkpoints):
    from diffusion_studio.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoints.points)
    window.tabs.setCurrentWidget(window.training)
    window.training.open_in_playback.emit(ckpt)
    assert window.tabs.currentWidget() is window.playback
    assert window.playback.model_choice.currentData() == "trained"


def test_a_finished_training_keeps_playbacks_frames(window, qtbot, checkpoints):
    """The trained model joins Playback's list; it does not replace frames the user made."""
    from diffusion_studio.core.checkpoint import load_checkpoint

    playback = window.playback
    assert playback.load_checkpoint(checkpoints.points)
    chosen = playback.model_choice.currentData()
    playback.num_steps.setValue(5)
    with qtbot.waitSignal(playback.runner.finished, timeout=30000):
        playback.sample_button.click()
    frames = len(playback.trajectory)
    with qtbot.waitSignal(playback.status_message) as said:
        window.training.model_trained.emit(load_checkpoint(checkpoints.points))
    assert "Model list" in said.args[0]
    assert playback.model_choice.findData("trained") >= 0
    assert playback.model_choice.currentData() == chosen
    assert playback.has_frames() and len(playback.trajectory) == frames


@pytest.mark.parametrize(
    ("available", "size"),
    [((1920, 1040), (1360, 860)), ((1280, 720), (1280, 680)), ((1366, 728), (1360, 688))],
)
def test_a_first_launch_fits_the_screen(available, size):
    from diffusion_studio.app.main_window import first_launch_size

    assert first_launch_size(available) == size


def test_a_saved_sampler_that_no_longer_exists_is_skipped(qtbot, fake_dialogs):
    """Settings saved with a sampler this version does not register (or an option it lost)
    open with core's default sampler and the rest of the saved settings, no error."""
    from diffusion_studio.app.settings import make_settings, write_json

    write_json(
        make_settings(),
        "PlaybackPanel/sampler",
        {"kind": "retired-sampler", "num_inference_steps": 30, "options": {"ddim": {"eta": 0.4}}},
    )
    window = MainWindow()
    qtbot.addWidget(window)
    form = window.playback.sampler_form
    assert form.spec.name in REGISTRY and form.valid
    assert form.steps.value() == 30 and form.option_widget("eta", "ddim").value() == 0.4
    assert fake_dialogs.errors == []
    window.close()
