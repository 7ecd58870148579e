"""`diffusion-studio --self-check`: prove an installation or bundle works, without a display.

Each check loads something that ships (data, photos, icons, pretrained models) or exercises a
part that a broken bundle would lack (a model, two training steps, a few sampling steps, Qt
with its offscreen platform plugin, the main window). Every check runs even when an earlier one failed, and each
prints one line; the exit status is 0 only when all passed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

ICON_SIZES = (16, 32, 48, 64, 128, 256, 512)
ICON_NAME = "diffusion-studio"


def _check_digits() -> str:
    from diffusion_studio.core.data import load_digits

    images, labels = load_digits()
    return f"{images.shape[0]} images, {len(set(labels.tolist()))} classes"


def _check_photos() -> str:
    from diffusion_studio.core.data import load_image, sample_photo_paths

    paths = sample_photo_paths()
    if not paths:
        raise FileNotFoundError("no sample photos found in resources/photos")
    shapes = [tuple(load_image(path, max_side=64).shape) for path in paths]
    return ", ".join(f"{p.name} {s}" for p, s in zip(paths, shapes))


def _check_icons() -> str:
    from PIL import Image

    from diffusion_studio.core.resources import resource_path

    resource_path("icons", f"{ICON_NAME}.svg")
    for size in ICON_SIZES:
        with Image.open(resource_path("icons", f"{ICON_NAME}-{size}.png")) as image:
            if image.size != (size, size):
                raise ValueError(f"icon {ICON_NAME}-{size}.png is {image.size}, not {size}x{size}")
    return f"SVG and {len(ICON_SIZES)} PNG sizes"


def _check_sampling() -> str:
    import torch

    from diffusion_studio.core.models import UNetConfig, build_model
    from diffusion_studio.core.samplers import SamplerConfig, make_sampler
    from diffusion_studio.core.sampling import sample
    from diffusion_studio.core.schedule import NoiseSchedule

    schedule = NoiseSchedule.from_kind("cosine", 100)
    model = build_model(UNetConfig(channels=(8, 16), attention_heads=2))
    sampler = make_sampler(SamplerConfig("ddim", 3), schedule, "v")
    generator = torch.Generator().manual_seed(0)
    frames = list(sample(model, schedule, sampler, 2, (1, 28, 28), generator))
    if not torch.isfinite(frames[-1].x_t).all():
        raise ValueError("sampling produced non-finite values")
    return f"{len(frames)} frames"


def _check_training() -> str:
    """Two optimizer steps of a small model: the optimizer pulls in parts of torch lazily."""
    from diffusion_studio.core.training import Trainer, preset_config

    config = preset_config("digits", "small", max_steps=2, batch_size=4, device="cpu")
    losses = [r.loss for r in Trainer(config).run() if hasattr(r, "loss")]
    if len(losses) != 2 or not all(loss == loss for loss in losses):  # NaN != NaN
        raise ValueError(f"training gave losses {losses}")
    return f"2 steps, loss {losses[-1]:.3f}"


def _check_pretrained() -> str:
    import torch

    from diffusion_studio.core.checkpoint import (
        build_model_from_checkpoint,
        load_checkpoint,
        pretrained_checkpoint_paths,
    )
    from diffusion_studio.core.samplers import SamplerConfig, make_sampler
    from diffusion_studio.core.sampling import sample
    from diffusion_studio.core.schedule import NoiseSchedule

    paths = pretrained_checkpoint_paths()
    if not paths:
        return "none shipped"
    for name, path in paths.items():
        ckpt = load_checkpoint(path)
        model = build_model_from_checkpoint(ckpt)
        schedule = NoiseSchedule(ckpt.schedule_config)
        sampler = make_sampler(SamplerConfig("ddim", 2), schedule, ckpt.prediction_type)
        generator = torch.Generator().manual_seed(0)
        frames = list(sample(model, schedule, sampler, 1, ckpt.sample_shape, generator))
        if not torch.isfinite(frames[-1].x_t).all():
            raise ValueError(f"pretrained model '{name}' sampled non-finite values")
    return f"{len(paths)} loaded and sampled ({', '.join(paths)})"


def _check_qt() -> str:
    """Qt starts on its offscreen platform (the plugin a bundle must carry), reads the icon and
    builds the main window with all its panels (settings and data in a temporary folder)."""
    import tempfile

    from PySide6.QtCore import QSettings
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from diffusion_studio.app.main_window import MainWindow
    from diffusion_studio.app.settings import DATA_DIR_ENV
    from diffusion_studio.core.resources import resource_path

    qt_app = QApplication.instance()
    if qt_app is None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        qt_app = QApplication([sys.argv[0] if sys.argv else "diffusion-studio"])
    icon = QIcon(str(resource_path("icons", f"{ICON_NAME}-256.png")))
    if icon.isNull() or icon.pixmap(64, 64).isNull():
        raise ValueError("Qt could not read the application icon")
    old_data_dir = os.environ.get(DATA_DIR_ENV)
    with tempfile.TemporaryDirectory(prefix="diffusion-studio-self-check-") as tmp:
        QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, tmp)
        os.environ[DATA_DIR_ENV] = tmp
        try:
            window = MainWindow()
            window.ensure_all_panels()  # the app builds them when first shown
            qt_app.processEvents()
            if window.grab().isNull():  # lays out and paints every visible widget
                raise ValueError("the main window could not be drawn")
            tabs = window.tabs.count()
            window.close()
            window.deleteLater()
            qt_app.processEvents()
        finally:
            if old_data_dir is None:
                os.environ.pop(DATA_DIR_ENV, None)
            else:
                os.environ[DATA_DIR_ENV] = old_data_dir
    return f"{qt_app.platformName()} platform, icon read, main window with {tabs} panels"


def _check_diffusers() -> str:
    from diffusion_studio.core.diffusers_models import diffusers_available

    return "installed" if diffusers_available() else "not installed (optional)"


CHECKS: list[tuple[str, Callable[[], str]]] = [
    ("built-in digits", _check_digits),
    ("sample photos", _check_photos),
    ("icons", _check_icons),
    ("sampling", _check_sampling),
    ("training", _check_training),
    ("pretrained models", _check_pretrained),
    ("Qt", _check_qt),
    ("diffusers", _check_diffusers),
]


def run_self_check() -> int:
    """Run every check, print one line each. 0 = all well, 1 = something failed."""
    failed = 0
    for name, check in CHECKS:
        start = time.perf_counter()
        try:
            result = check()
        except Exception as exc:  # noqa: BLE001 - a self-check reports every failure
            failed += 1
            print(f"FAIL  {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        else:
            print(f"ok    {name}: {result} ({time.perf_counter() - start:.1f} s)")
        sys.stdout.flush()
    if failed:
        print(f"self-check FAILED ({failed} of {len(CHECKS)} checks)", file=sys.stderr)
        return 1
    print("self-check passed")
    return 0
