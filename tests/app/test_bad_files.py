"""Issue 6, untrusted and bad files through the GUI: every bad image, folder and checkpoint,
dropped on the window or picked in a File > Open dialog, gives a clear message (one dialog;
for images and checkpoints not repeated in the status bar or a red line: issue 14's "one
error, one message"), leaves what was shown before in place, writes nothing, and the app
keeps working (the next good file opens). Odd but valid images (1x1, 16-bit grey, CMYK, palette,
RGBA, animated GIF) open normally.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffusion_studio.app.settings import recent_files
from diffusion_studio.core.checkpoint import FORMAT_VERSION, load_checkpoint
from diffusion_studio.core.data import default_photo_path
from diffusion_studio.core.models import UNetConfig
from tests.app.conftest import drop_on_window

# ---------------------------------------------------------------------- helpers


def tree_digest(*folders: Path) -> dict[str, str]:
    """Every file under `folders` with the SHA-256 of its bytes (to prove nothing was written)."""
    digest = {}
    for folder in folders:
        if folder.exists():
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    digest[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    digest[str(path)] = "<dir>"
    return digest


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def noise_rgb(size: int = 64) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


class _CreatesAFile:
    """Unpickling this calls open(marker, "w"): a file appears if the pickle is ever run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------- bad files


@dataclass(frozen=True)
class BadFile:
    """A bad input: `make(folder, checkpoints)` writes it and returns its path; opening it
    must fail with a dialog titled `title` whose message names the file and contains `says`."""

    kind: str  # image | folder | checkpoint
    make: Callable[[Path, object], Path]
    title: str
    says: str


def _truncated_png(folder, _c):
    data = png_bytes(noise_rgb())
    (path := folder / "truncated.png").write_bytes(data[: len(data) // 2])
    return path


def _truncated_jpeg(folder, _c):
    buffer = io.BytesIO()
    noise_rgb().save(buffer, "JPEG")
    (path := folder / "truncated.jpg").write_bytes(buffer.getvalue()[: buffer.tell() // 2])
    return path


def _text_as_png(folder, _c):
    (path := folder / "notes.png").write_text("Dear diary, today I renamed a text file.")
    return path


def _empty_file(folder, _c):
    (path := folder / "empty.png").write_bytes(b"")
    return path


def _zero_by_zero_png(folder, _c):
    """A PNG whose header (with a valid CRC) says 0 x 0 pixels."""
    data = bytearray(png_bytes(Image.new("L", (1, 1), 200)))
    data[16:24] = struct.pack(">II", 0, 0)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    (path := folder / "zero.png").write_bytes(bytes(data))
    return path


def _bomb(folder, _c):
    """400 pixels; the test lowers Pillow's decompression-bomb limit to 100."""
    (path := folder / "bomb.png").write_bytes(png_bytes(Image.new("L", (20, 20), 0)))
    return path


def _empty_folder(folder, _c):
    (path := folder / "empty_folder").mkdir()
    return path


def _folder_without_images(folder, _c):
    path = folder / "documents"
    path.mkdir()
    for i in range(30):
        (path / f"note{i}.txt").write_text("no pictures here")
    (path / "table.csv").write_text("a,b\n1,2\n")
    (path / "run.sh").write_text("echo hi\n")
    (path / ".hidden.png").write_bytes(png_bytes(Image.new("L", (4, 4))))  # hidden: skipped
    return path


def _truncated_checkpoint(folder, checkpoints):
    data = checkpoints.points.read_bytes()
    (path := folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    return path


def _mangled_header(folder, checkpoints):
    data = checkpoints.points.read_bytes()
    (path := folder / "mangled.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    return path


def _with_config(folder, checkpoints, name, edit, version=FORMAT_VERSION):
    """The points checkpoint's weights under an edited config (and format version)."""
    ckpt = load_checkpoint(checkpoints.points)
    config = ckpt.config_json()
    edit(config)
    path = folder / name
    tensors = {"model/" + k: v.contiguous() for k, v in ckpt.model_state.items()}
    metadata = {
        "format": "diffusion-studio",
        "format_version": str(version),
        "config": json.dumps(config),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def _wrong_shapes(folder, checkpoints):
    return _with_config(
        folder, checkpoints, "wrong_shapes.safetensors", lambda c: c["model"].update(hidden=7)
    )


def _other_model_kind(folder, checkpoints):
    return _with_config(
        folder,
        checkpoints,
        "other_kind.safetensors",
        lambda c: c.update(model=UNetConfig().to_dict()),
    )


def _newer_format(folder, checkpoints):
    return _with_config(
        folder, checkpoints, "future.safetensors", lambda c: None, FORMAT_VERSION + 1
    )


def _pickle_with_payload(folder, _c):
    """A legacy PyTorch file whose unpickling would create `pwned.txt` (checked by the test)."""
    path = folder / "evil.pt"
    marker = folder.parent / "pwned.txt"
    torch.save({"config": "{}", "model": {"w": _CreatesAFile(str(marker))}}, path)
    assert not marker.exists()
    return path


BAD_FILES = {
    "truncated PNG": BadFile("image", _truncated_png, "Cannot open image", "truncated"),
    "truncated JPEG": BadFile("image", _truncated_jpeg, "Cannot open image", "truncated"),
    "text renamed .png": BadFile("image", _text_as_png, "Cannot open image", "not an image"),
    "empty file": BadFile("image", _empty_file, "Cannot open image", "empty file"),
    "0x0 PNG": BadFile("image", _zero_by_zero_png, "Cannot open image", "not an image"),
    "decompression bomb": BadFile("image", _bomb, "Cannot open image", "too large"),
    "empty folder": BadFile("folder", _empty_folder, "Cannot use folder", "no image files"),
    "folder without images": BadFile(
        "folder", _folder_without_images, "Cannot use folder", "no image files"
    ),
    "truncated checkpoint": BadFile(
        "checkpoint", _truncated_checkpoint, "Cannot open checkpoint", "truncated"
    ),
    "mangled header": BadFile(
        "checkpoint", _mangled_header, "Cannot open checkpoint", "damaged header"
    ),
    "wrong shapes": BadFile("checkpoint", _wrong_shapes, "Cannot open checkpoint", "shape"),
    "other model kind": BadFile(
        "checkpoint", _other_model_kind, "Cannot open checkpoint", "does not fit"
    ),
    "newer format version": BadFile("checkpoint", _newer_format, "Cannot open checkpoint", "newer"),
    "pickle that runs code": BadFile(
        "checkpoint", _pickle_with_payload, "Cannot open checkpoint", "never run"
    ),
}


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


@pytest.fixture
def small_bomb_limit(monkeypatch, window):
    """Pillow's decompression-bomb limit lowered to 100 pixels (restored after the test), once
    the window has built its panels (the bundled photo loads under the real limit)."""
    window.ensure_all_panels()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)


def good_file(kind: str, folder: Path, checkpoints, name: str) -> Path:
    """A valid input of `kind`, to show the app still opens files after a bad one."""
    if kind == "image":
        path = folder / f"{name}.png"
        Image.fromarray(np.full((9, 9, 3), 40, dtype=np.uint8)).save(path)
        return path
    if kind == "folder":
        path = folder / name
        path.mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), 30 * i, dtype=np.uint8)).save(path / f"{i}.png")
        return path
    return checkpoints.images if name == "after" else checkpoints.points


def shown(window, kind: str):
    """What the window shows for `kind`: the image path, the data folder, or the checkpoint."""
    if kind == "image":
        return window.forward.image_path
    if kind == "folder":
        return window.training.folder
    return window.playback.checkpoint


def open_with(window, how: str, kind: str, path: Path, fake_dialogs, qtbot) -> None:
    """Open `path` by dropping it on the window, or through the File menu's dialog."""
    if how == "drop":
        errors, before = len(fake_dialogs.errors), shown(window, kind)
        drop_on_window(window, [path])
        # the drop is handled from the event loop: wait for its message or its result
        qtbot.waitUntil(
            lambda: len(fake_dialogs.errors) > errors or shown(window, kind) is not before,
            timeout=3000,
        )
        return
    fake_dialogs.paths.append(path)
    action = {
        "image": window.open_image_action,
        "folder": window.open_folder_action,
        "checkpoint": window.open_checkpoint_action,
    }[kind]
    action.trigger()
    assert not fake_dialogs.paths  # the dialog was asked


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("how", ["drop", "menu"])
@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_bad_file_is_refused_with_a_message_and_nothing_changes(
    window, qtbot, fake_dialogs, app_dirs, inputs, checkpoints, small_bomb_limit, case, how
):
    bad = BAD_FILES[case]
    # something of the same kind is shown first: it must stay
    before = good_file(bad.kind, inputs, checkpoints, "before")
    open_with(window, "menu", bad.kind, before, fake_dialogs, qtbot)
    previous = shown(window, bad.kind)
    assert previous is not None and fake_dialogs.errors == []
    path = bad.make(inputs, checkpoints)
    files_before = tree_digest(inputs, app_dirs.data)

    open_with(window, how, bad.kind, path, fake_dialogs, qtbot)

    assert len(fake_dialogs.errors) == 1, fake_dialogs.errors
    title, message = fake_dialogs.errors[0]
    assert title == bad.title
    assert path.name in message and bad.says in message, message
    assert "Traceback" not in message
    if bad.kind in ("image", "checkpoint"):  # one error, one message
        assert message not in window.statusBar().currentMessage()
        panel_lines = [window.forward.error.text(), window.playback.error.text()]
        assert message not in panel_lines  # the old image / model is shown: no red line
    assert shown(window, bad.kind) is previous  # the old image / folder / model stays
    assert tree_digest(inputs, app_dirs.data) == files_before  # nothing written or changed
    assert not (inputs.parent / "pwned.txt").exists()  # no code from a pickle ran
    assert str(path.resolve()) not in recent_files(window.settings)

    # still usable: the next good file of that kind opens (by a drop)
    after = good_file(bad.kind, inputs, checkpoints, "after")
    drop_on_window(window, [after])
    if bad.kind == "checkpoint":
        qtbot.waitUntil(lambda: window.playback.checkpoint is not previous, timeout=3000)
        assert not window.playback.checkpoint.is_points
    else:
        qtbot.waitUntil(lambda: shown(window, bad.kind) == after, timeout=3000)
    assert len(fake_dialogs.errors) == 1


def test_a_bad_file_among_good_ones_in_one_drop(window, qtbot, fake_dialogs, inputs, checkpoints):
    """Several files dropped at once: the bad one is reported, the others still open."""
    bad = _truncated_png(inputs, checkpoints)
    good = good_file("image", inputs, checkpoints, "good")
    drop_on_window(window, [bad, checkpoints.points, good])
    qtbot.waitUntil(lambda: window.forward.image_path == good, timeout=3000)
    assert [title for title, _ in fake_dialogs.errors] == ["Cannot open image"]
    assert window.playback.checkpoint is not None and window.playback.checkpoint.is_points


@pytest.mark.parametrize("case", [c for c in BAD_FILES if BAD_FILES[c].kind == "checkpoint"])
def test_bad_checkpoint_cannot_be_resumed_from_the_training_panel(
    window, fake_dialogs, inputs, checkpoints, case
):
    """Training > "Resume from checkpoint…" refuses the same files with a message."""
    training = window.training
    path = BAD_FILES[case].make(inputs, checkpoints)
    fake_dialogs.paths.append(path)
    training.resume_button.click()
    assert fake_dialogs.errors and fake_dialogs.errors[-1][0] == "Cannot resume"
    assert path.name in fake_dialogs.errors[-1][1]
    assert training.resume_from is None and training.start_button.isEnabled()
    assert not (inputs.parent / "pwned.txt").exists()


# ---------------------------------------------------------------------- odd but valid images


def _save(picture: Image.Image, name: str, **options) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        picture.save(path, **options)
        return path

    return make


def _animated_gif(folder: Path) -> Path:
    frames = [Image.new("L", (12, 10), v) for v in (0, 128, 255)]
    path = folder / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return path


def _palette() -> Image.Image:
    picture = Image.new("P", (10, 10))
    picture.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    picture.paste(1, (0, 0, 5, 10))
    return picture


# (maker, channels of the loaded image, expected value of pixel (0, 0) in [-1, 1] per channel)
ODD_IMAGES = {
    "1x1": (_save(Image.new("RGB", (1, 1), (255, 0, 0)), "one.png"), 3, [1, -1, -1]),
    "16-bit grey": (
        _save(Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16)), "deep.png"),
        1,
        [1],
    ),
    "CMYK JPEG": (
        _save(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "cmyk.jpg", quality=95),
        3,  # no ink: white, converted to RGB
        [1, 1, 1],
    ),
    "palette PNG": (_save(_palette(), "palette.png"), 3, [-1, -1, 1]),
    "RGBA PNG": (
        _save(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "clear.png"),
        3,  # fully transparent: composited over white
        [1, 1, 1],
    ),
    "animated GIF": (_animated_gif, 1, [-1]),  # the first frame
}


@pytest.mark.parametrize("how", ["drop", "menu"])
@pytest.mark.parametrize("case", list(ODD_IMAGES), ids=list(ODD_IMAGES))
def test_odd_but_valid_images_open(window, qtbot, fake_dialogs, inputs, app_dirs, case, how):
    make, channels, corner = ODD_IMAGES[case]
    path = make(inputs)
    files_before = tree_digest(inputs)
    open_with(window, how, "image", path, fake_dialogs, qtbot)
    qtbot.waitUntil(lambda: window.forward.image_path == path, timeout=3000)
    assert fake_dialogs.errors == []
    x0 = window.forward.x0
    assert x0.shape[0] == channels and np.isfinite(x0).all()
    np.testing.assert_allclose(x0[:, 0, 0], corner, atol=0.05)
    assert window.forward.view.image is not None
    window.forward.slider.setValue(window.forward.slider.maximum())  # the maths runs on it
    assert window.forward.xt.shape[:2] == x0.shape[1:]
    assert tree_digest(inputs) == files_before
    assert window.forward.load_image(default_photo_path())  # and the next image still opens
