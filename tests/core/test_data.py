"""Tests for core.data: built-in digits, toy points, image loading, folders, data sets."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_studio.core import data
from diffusion_studio.core.errors import ConfigError, DataError, ImageLoadError

# ----------------------------------------------------------------------------- helpers


def _gradient(width: int = 16, height: int = 12) -> np.ndarray:
    """uint8 (H, W) with a horizontal ramp 0..255."""
    row = np.linspace(0, 255, width).round().astype(np.uint8)
    return np.tile(row, (height, 1))


def _noise(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)


def _png_bytes_zero_width() -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 0, 10, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------- digits


def test_digits_shape_dtype_and_labels() -> None:
    images, labels = data.load_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert set(np.unique(labels).tolist()) == set(range(10))
    assert images.max() == 255 and images.min() == 0
    # Digits are white strokes on black: the border is mostly background.
    assert images[:, 0, :].mean() < 5
    # Cached and read-only, so no caller can corrupt the shared copy.
    assert data.load_digits()[0] is images
    with pytest.raises(ValueError):
        images[0, 0, 0] = 1


# ----------------------------------------------------------------------------- toy points


@pytest.mark.parametrize("name", data.TOY_DATASETS)
def test_toy_points_shape_determinism_and_scale(name: str) -> None:
    points = data.toy_points(name, 4000, torch.Generator().manual_seed(3))
    assert points.shape == (4000, 2) and points.dtype == torch.float32
    again = data.toy_points(name, 4000, torch.Generator().manual_seed(3))
    assert torch.equal(points, again)
    other = data.toy_points(name, 4000, torch.Generator().manual_seed(4))
    assert not torch.equal(points, other)
    std = points.std(dim=0)
    assert torch.all(std > 0.4) and torch.all(std < 1.3), std
    assert points.mean(dim=0).abs().max() < 0.25
    assert (points.abs() <= 2.2).all(dim=1).float().mean() > 0.999


def test_toy_points_refuses_unknown_name_and_bad_count() -> None:
    with pytest.raises(DataError) as info:
        data.toy_points("circles", 10)
    for name in data.TOY_DATASETS:
        assert name in str(info.value)
    with pytest.raises(ConfigError):
        data.toy_points("moons", 0)


def test_toy_points_shapes_are_distinct() -> None:
    g = torch.Generator().manual_seed(0)
    rings = data.toy_points("rings", 3000, g)
    radius = rings.norm(dim=1)
    # Three rings at 0.6, 1.2 and 1.8: almost nothing near the centre or between rings.
    assert (radius < 0.4).float().mean() < 0.01
    assert ((radius > 0.85) & (radius < 0.95)).float().mean() < 0.01
    gauss = data.toy_points("gaussians", 3000, g)
    assert ((gauss.norm(dim=1) - 1.5).abs() < 0.4).float().mean() > 0.99


# ----------------------------------------------------------------------------- load_image


def test_load_grey_png(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    Image.fromarray(_gradient(), mode="L").save(path)
    x = data.load_image(path)
    assert x.shape == (1, 12, 16) and x.dtype == np.float32
    assert x[0, 0, 0] == -1.0 and x[0, 0, -1] == 1.0
    assert np.all(np.diff(x[0, 0]) > 0)


def test_load_la_png_composites_over_white(tmp_path: Path) -> None:
    grey = np.zeros((8, 8), dtype=np.uint8)
    alpha = np.full((8, 8), 255, dtype=np.uint8)
    alpha[:, :4] = 0  # left half fully transparent -> white
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([grey, alpha], axis=2), mode="LA").save(path)
    x = data.load_image(path)
    assert x.shape == (1, 8, 8)
    np.testing.assert_allclose(x[0, :, :4], 1.0)
    np.testing.assert_allclose(x[0, :, 4:], -1.0)


def test_load_rgb_png_exact_values(tmp_path: Path) -> None:
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    rgb[1, 2] = (0, 255, 51)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb, mode="RGB").save(path)
    x = data.load_image(path)
    assert x.shape == (3, 4, 6)
    np.testing.assert_allclose(x[:, 0, 0], [1.0, -1.0, -1.0])
    np.testing.assert_allclose(x[:, 1, 2], [-1.0, 1.0, 51 / 127.5 - 1.0], rtol=1e-6)


def test_load_rgba_png_composites_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red
    rgba[..., 3] = 128  # about half transparent
    rgba[0, 0, 3] = 0  # fully transparent -> white
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    x = data.load_image(path)
    assert x.shape == (3, 4, 4)
    np.testing.assert_allclose(x[:, 0, 0], [1.0, 1.0, 1.0])
    # red over white at alpha 128/255: green/blue = 255 * (1 - 128/255) = 127
    np.testing.assert_allclose(x[:, 1, 1], [1.0, 127 / 127.5 - 1, 127 / 127.5 - 1], atol=2 / 127.5)


def test_load_palette_png_colour_grey_and_transparent(tmp_path: Path) -> None:
    rgb = np.zeros((6, 6, 3), dtype=np.uint8)
    rgb[:3] = (255, 0, 0)
    rgb[3:] = (0, 0, 255)
    path = tmp_path / "p.png"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path)
    assert Image.open(path).mode == "P"
    x = data.load_image(path)
    assert x.shape == (3, 6, 6)
    np.testing.assert_allclose(x[:, 0, 0], [1, -1, -1])
    np.testing.assert_allclose(x[:, 5, 5], [-1, -1, 1])

    # A palette image whose colours are all grey comes back with one channel.
    grey_path = tmp_path / "p_grey.png"
    Image.fromarray(_gradient()).convert("P").save(grey_path)
    assert Image.open(grey_path).mode == "P"
    assert data.load_image(grey_path).shape == (1, 12, 16)

    # Palette transparency is composited over white.
    trans = Image.new("P", (4, 4), 1)
    trans.putpalette([0, 0, 0, 0, 0, 0])
    trans.putpixel((0, 0), 0)
    trans_path = tmp_path / "p_trans.png"
    trans.save(trans_path, transparency=0)
    y = data.load_image(trans_path)
    assert y[:, 0, 0].tolist() == [1.0] and y[:, 1, 1].tolist() == [-1.0]


def test_load_16bit_grey_png(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535]], dtype=np.uint16).repeat(2, axis=0)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    x = data.load_image(path)
    assert x.shape == (1, 2, 3)
    np.testing.assert_allclose(x[0, 0], [-1.0, 32768 / 65535 * 2 - 1, 1.0], atol=1e-6)
    # Resizing and channel conversion work on the high-depth path too.
    assert data.load_image(path, size=4, channels=3).shape == (3, 4, 4)


def test_load_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (16, 8), (0, 0, 0, 0))  # white
    cmyk.paste((255, 0, 0, 0), (0, 0, 8, 8))  # cyan on the left
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    x = data.load_image(path)
    assert x.shape == (3, 8, 16)
    np.testing.assert_allclose(x[:, 4, 12], [1, 1, 1], atol=0.06)  # white
    np.testing.assert_allclose(x[:, 4, 2], [-1, 1, 1], atol=0.06)  # cyan = no red


def test_load_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("L", (5, 5), 0), Image.new("L", (5, 5), 255)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(path).n_frames == 2
    x = data.load_image(path)
    assert x.shape == (1, 5, 5)
    np.testing.assert_allclose(x, -1.0)


def test_load_applies_exif_orientation(tmp_path: Path) -> None:
    stored = np.full((10, 20, 3), 255, dtype=np.uint8)
    stored[:, :10] = 0  # left half dark as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    x = data.load_image(path)
    assert x.shape == (3, 20, 10)  # upright: taller than wide
    # After a clockwise quarter turn the stored left half is on top.
    assert x[:, :8].mean() < -0.9 and x[:, 12:].mean() > 0.9


def test_load_size_crops_centre_and_resizes(tmp_path: Path) -> None:
    wide = np.full((20, 40), 255, dtype=np.uint8)
    wide[:, :4] = 0  # dark bands that the centre crop (columns 10..30) removes
    wide[:, -4:] = 0
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    square = data.load_image(path, size=16)
    assert square.shape == (1, 16, 16)
    np.testing.assert_allclose(square, 1.0, atol=1e-6)
    assert data.load_image(path, size=(10, 30)).shape == (1, 10, 30)


def test_load_channel_conversion(tmp_path: Path) -> None:
    red = tmp_path / "red.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(red)
    grey = data.load_image(red, channels=1)
    assert grey.shape == (1, 4, 4)
    np.testing.assert_allclose(grey, 0.299 * 2 - 1, atol=1e-5)
    mid = tmp_path / "mid.png"
    Image.new("L", (4, 4), 255).save(mid)
    np.testing.assert_allclose(data.load_image(mid, channels=3), np.ones((3, 4, 4)))


def test_load_downscales_large_images(tmp_path: Path) -> None:
    png = tmp_path / "big.png"
    Image.fromarray(_noise(300, 200)).save(png)
    x = data.load_image(png, max_side=100)
    assert x.shape == (3, 67, 100)
    jpeg = tmp_path / "big.jpg"
    Image.fromarray(_noise(800, 600)).save(jpeg)
    assert data.load_image(jpeg, max_side=100).shape == (3, 75, 100)
    # With a target size the JPEG is decoded small (draft) and still covers the target.
    assert data.load_image(jpeg, size=32).shape == (3, 32, 32)


def test_load_refuses_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    Image.new("L", (4, 4)).save(path)
    with pytest.raises(ConfigError):
        data.load_image(path, channels=2)
    with pytest.raises(ConfigError):
        data.load_image(path, size=0)
    with pytest.raises(ConfigError):
        data.load_image(path, size=(4, 4, 4))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        data.load_image(path, max_side=0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_load_refuses_truncated_file(tmp_path: Path, fmt: str) -> None:
    whole = tmp_path / f"whole.{fmt.lower()}"
    Image.fromarray(_noise(64, 64)).save(whole, format=fmt)
    payload = whole.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ImageLoadError, match="truncated or corrupt") as info:
        data.load_image(cut)
    assert str(cut) in str(info.value)


def test_load_refuses_non_images_and_missing_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture\n")
    with pytest.raises(ImageLoadError, match="not an image") as info:
        data.load_image(text)
    assert str(text) in str(info.value)

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty file"):
        data.load_image(empty)

    with pytest.raises(ImageLoadError, match="is a folder"):
        data.load_image(tmp_path)

    missing = tmp_path / "missing.png"
    with pytest.raises(ImageLoadError, match="not found") as info:
        data.load_image(missing)
    assert str(missing) in str(info.value)

    zero = tmp_path / "zero.png"
    zero.write_bytes(_png_bytes_zero_width())
    with pytest.raises(ImageLoadError):
        data.load_image(zero)


def test_load_refuses_zero_size_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow's own readers refuse zero-size headers; this checks our guard for any that don't.
    path = tmp_path / "zero.png"
    path.write_bytes(b"placeholder")
    monkeypatch.setattr(data.Image, "open", lambda _path: Image.new("L", (0, 5)))
    with pytest.raises(ImageLoadError, match="zero width or height"):
        data.load_image(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_load_refuses_decompression_bombs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.png"
    Image.new("L", (20, 20)).save(path)  # 400 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # > 2x the limit: Pillow's error
    with pytest.raises(ImageLoadError, match="too large") as info:
        data.load_image(path)
    assert str(path) in str(info.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # between 1x and 2x: Pillow only warns
    with pytest.raises(ImageLoadError, match="too large"):
        data.load_image(path)


def test_shipped_photos() -> None:
    paths = data.sample_photo_paths()
    assert {p.name for p in paths} == {"astronaut.png", "coffee.png"}
    default = data.default_photo_path()
    assert default.name == "astronaut.png"
    x = data.load_image(default)
    assert x.shape == (3, 512, 512) and -1.0 <= x.min() < x.max() <= 1.0


# ----------------------------------------------------------------------------- folders


def _make_mixed_folder(root: Path) -> Path:
    folder = root / "pictures"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden_dir").mkdir()
    Image.new("RGB", (10, 10), (255, 0, 0)).save(folder / "a.png")
    Image.new("L", (12, 8), 255).save(folder / "sub" / "b.JPG")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(folder / "c.bmp")
    Image.new("RGB", (8, 8)).save(folder / ".hidden.png")
    Image.new("RGB", (8, 8)).save(folder / ".hidden_dir" / "d.png")
    (folder / "readme.txt").write_text("not an image")
    (folder / "broken.png").write_text("not an image either")
    return folder


def test_list_image_files_sorted_recursive_skips_hidden(tmp_path: Path) -> None:
    folder = _make_mixed_folder(tmp_path)
    names = [p.relative_to(folder).as_posix() for p in data.list_image_files(folder)]
    assert names == ["a.png", "broken.png", "c.bmp", "sub/b.JPG"]


def test_list_image_files_tolerates_symlink_loops(tmp_path: Path) -> None:
    folder = _make_mixed_folder(tmp_path)
    os.symlink(folder, folder / "sub" / "loop")  # directory loop
    os.symlink(folder / "x.png", folder / "y.png")  # file loop: x -> y -> x
    os.symlink(folder / "y.png", folder / "x.png")
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    os.symlink(folder / "a.png", folder / "link_to_a.png")
    names = [p.relative_to(folder).as_posix() for p in data.list_image_files(folder)]
    assert names == ["a.png", "broken.png", "c.bmp", "link_to_a.png", "sub/b.JPG"]


def test_list_image_files_refuses_missing_or_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        data.list_image_files(tmp_path / "nope")
    file = tmp_path / "f.png"
    Image.new("L", (2, 2)).save(file)
    with pytest.raises(DataError, match="not a folder"):
        data.list_image_files(file)


def test_load_image_folder_skips_bad_files(tmp_path: Path) -> None:
    folder = _make_mixed_folder(tmp_path)
    loaded = data.load_image_folder(folder, image_size=8, channels=3)
    assert loaded.images.shape == (3, 3, 8, 8) and loaded.images.dtype == torch.float32
    assert [p.name for p in loaded.paths] == ["a.png", "c.bmp", "b.JPG"]
    assert len(loaded.skipped) == 1 and "broken.png" in loaded.skipped[0]
    np.testing.assert_allclose(loaded.images[0, :, 4, 4].numpy(), [1, -1, -1], atol=1e-6)
    np.testing.assert_allclose(loaded.images[2].numpy(), 1.0, atol=1e-2)  # white JPEG
    limited = data.load_image_folder(folder, image_size=8, channels=1, max_images=2)
    assert limited.images.shape == (2, 1, 8, 8)


def test_load_image_folder_refuses_empty_and_imageless_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no image files"):
        data.load_image_folder(empty, image_size=8, channels=1)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        data.load_image_folder(texts, image_size=8, channels=1)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_text("x")
    with pytest.raises(DataError, match="none of the 1 image files"):
        data.load_image_folder(bad, image_size=8, channels=1)


# ----------------------------------------------------------------------------- make_dataset


def test_make_dataset_digits() -> None:
    ds = data.make_dataset("digits")
    assert ds.name == "digits" and ds.kind == "images"
    assert ds.data.shape == (5000, 1, 28, 28) and ds.data.dtype == torch.float32
    assert ds.data.min() == -1.0 and ds.data.max() == 1.0
    assert ds.sample_shape == (1, 28, 28) and ds.channels == 1 and ds.image_size == 28
    assert len(ds) == 5000
    images, _ = data.load_digits()
    np.testing.assert_allclose(ds.data[7, 0].numpy(), images[7] / 127.5 - 1.0, atol=1e-6)

    resized = data.make_dataset("digits", image_size=16, channels=3)
    assert resized.data.shape == (5000, 3, 16, 16)
    assert resized.channels == 3 and resized.image_size == 16
    assert resized.data.min() >= -1.0 and resized.data.max() <= 1.0
    assert torch.equal(resized.data[:, 0], resized.data[:, 2])


@pytest.mark.parametrize("name", data.TOY_DATASETS)
def test_make_dataset_points(name: str) -> None:
    ds = data.make_dataset(name, num_points=500, seed=1)
    assert ds.kind == "points" and ds.name == name
    assert ds.data.shape == (500, 2) and ds.sample_shape == (2,)
    assert ds.channels is None and ds.image_size is None
    assert torch.equal(ds.data, data.make_dataset(name, num_points=500, seed=1).data)
    assert not torch.equal(ds.data, data.make_dataset(name, num_points=500, seed=2).data)


def test_make_dataset_folder(tmp_path: Path) -> None:
    folder = _make_mixed_folder(tmp_path)
    ds = data.make_dataset(str(folder), image_size=12, channels=1)
    assert ds.kind == "images" and ds.name == "pictures"
    assert ds.data.shape == (3, 1, 12, 12)
    assert len(ds.skipped) == 1 and "broken.png" in ds.skipped[0]


def test_make_dataset_refuses_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        data.make_dataset("fashion")
    message = str(info.value)
    assert "'fashion'" in message and "digits" in message and "swissroll" in message
    file = tmp_path / "one.png"
    Image.new("L", (4, 4)).save(file)
    with pytest.raises(DataError, match="not a folder"):
        data.make_dataset(str(file))
    with pytest.raises(ConfigError):
        data.make_dataset("digits", channels=4)


def test_dataset_validates_its_shape() -> None:
    with pytest.raises(DataError):
        data.Dataset("x", "points", torch.zeros(4, 3))
    with pytest.raises(DataError):
        data.Dataset("x", "images", torch.zeros(4, 2))


# ----------------------------------------------------------------------------- huge images


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _write_blank_png(path: Path, width: int, height: int) -> None:
    """A black 1-bit greyscale PNG of any size, built by hand: the rows are streamed through
    zlib, so neither the pixels nor the compressed data are ever held whole."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter type 0, then the packed pixels
    compressor = zlib.compressobj(9)
    rows_per_chunk = max(1, (1 << 20) // len(row))
    with path.open("wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n")
        file.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)))
        done = 0
        while done < height:
            n = min(rows_per_chunk, height - done)
            file.write(_png_chunk(b"IDAT", compressor.compress(row * n)))
            done += n
        file.write(_png_chunk(b"IDAT", compressor.flush()))
        file.write(_png_chunk(b"IEND", b""))


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _write_grey_jpeg(path: Path, width: int, height: int) -> None:
    """A flat mid-grey (128) baseline greyscale JPEG of any size, built by hand: one-code
    Huffman tables make every 8x8 block "DC difference 0, end of block" = two 0 bits, so
    the scan is width * height / 256 zero bytes, written in pieces."""
    one_code = bytes([1] + [0] * 15)  # one code, of length 1 ("0")
    header = (
        b"\xff\xd8"
        + _jpeg_segment(0xDB, b"\x00" + bytes([1] * 64))  # quantisation table 0
        + _jpeg_segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
        + _jpeg_segment(0xC4, b"\x00" + one_code + b"\x00" + b"\x10" + one_code + b"\x00")
        + _jpeg_segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    )
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    left = (2 * blocks + 7) // 8
    piece = b"\x00" * (1 << 20)
    with path.open("wb") as file:
        file.write(header)
        while left:
            n = min(left, len(piece))
            file.write(piece[:n])
            left -= n
        file.write(b"\xff\xd9")


@pytest.fixture
def decoded_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records the size of every image Pillow decodes (ImageFile.load) during a test."""
    from PIL import ImageFile

    sizes: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        sizes.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes


def test_hand_built_test_images_decode_as_intended(tmp_path: Path) -> None:
    png = tmp_path / "small.png"
    _write_blank_png(png, 20, 3)
    np.testing.assert_array_equal(data.load_image(png), -np.ones((1, 3, 20), np.float32))
    jpeg = tmp_path / "small.jpg"
    _write_grey_jpeg(jpeg, 40, 24)
    np.testing.assert_allclose(data.load_image(jpeg), 128 / 127.5 - 1, atol=1e-6)
    assert data.load_image(jpeg).shape == (1, 24, 40)


def test_huge_png_under_the_bomb_limit_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoded_sizes: list[tuple[int, int]]
) -> None:
    """20000 x 20000 = 400 megapixels, allowed by a raised Pillow limit: refused from the
    header alone (a PNG cannot be decoded at reduced size), nothing is decoded."""
    path = tmp_path / "huge.png"
    _write_blank_png(path, 20_000, 20_000)
    assert path.stat().st_size < 2_000_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500_000_000)
    with pytest.raises(ImageLoadError) as info:
        data.load_image(path, size=28)
    message = str(info.value)
    assert "20000x20000" in message and "400 megapixels" in message and str(path) in message
    assert f"{data.MAX_DECODE_PIXELS // 1_000_000} megapixels" in message
    assert "Downscale" in message and "save it as a JPEG" in message
    assert decoded_sizes == []


def test_huge_jpeg_under_the_bomb_limit_is_decoded_at_reduced_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoded_sizes: list[tuple[int, int]]
) -> None:
    """A 20000 x 20000 JPEG loads, but is decoded at 1/8 (or 1/4) scale, never in full."""
    path = tmp_path / "huge.jpg"
    _write_grey_jpeg(path, 20_000, 20_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500_000_000)
    x = data.load_image(path, size=28)
    assert x.shape == (1, 28, 28)
    np.testing.assert_allclose(x, 128 / 127.5 - 1, atol=1e-6)
    assert set(decoded_sizes) == {(2500, 2500)}  # load() runs again on the decoded image
    decoded_sizes.clear()
    assert data.load_image(path, max_side=1000).shape == (1, 1000, 1000)
    assert set(decoded_sizes) == {(2500, 2500)}


def test_jpeg_too_large_even_at_one_eighth_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoded_sizes: list[tuple[int, int]]
) -> None:
    """65000 x 65000 at 1/8 scale is still 66 megapixels: refused before decoding."""
    path = tmp_path / "enormous.jpg"
    _write_grey_jpeg(path, 65_000, 65_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageLoadError, match="65000x65000") as info:
        data.load_image(path, size=28)
    assert "Downscale" in str(info.value) and "save it as a JPEG" not in str(info.value)
    assert decoded_sizes == []


def test_image_just_under_the_pixel_cap_loads(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    _write_blank_png(path, data.MAX_DECODE_PIXELS // 2, 2)
    assert data.load_image(path, max_side=64).shape == (1, 1, 64)
    over = tmp_path / "over.png"
    _write_blank_png(over, data.MAX_DECODE_PIXELS // 2 + 1, 2)
    with pytest.raises(ImageLoadError, match="megapixels"):
        data.load_image(over, max_side=64)


# ----------------------------------------------------------------------------- odd files


def _call_without_hanging(function, *args):  # type: ignore[no-untyped-def]
    """Run `function(*args)` in a thread; fail (and unblock it) if it waits on a pipe."""
    import threading

    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():
        for path in args:
            if isinstance(path, Path) and path.is_fifo():
                with open(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "wb"):
                    pass  # a writer that closes at once unblocks a reader waiting in open()
        thread.join(timeout=10)
        pytest.fail(f"{function.__name__} blocked on a named pipe")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_load_image_refuses_a_named_pipe_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError, match="named pipe") as info:
        _call_without_hanging(data.load_image, fifo)
    assert str(fifo) in str(info.value)
    # The open itself refuses a pipe too (a regular file swapped for one after the checks).
    with pytest.raises(ImageLoadError, match="named pipe"):
        _call_without_hanging(data._open_regular, fifo)


def test_load_image_refuses_links_that_lead_nowhere(tmp_path: Path) -> None:
    dangling = tmp_path / "dangling.png"
    os.symlink(tmp_path / "nowhere.png", dangling)
    with pytest.raises(ImageLoadError, match="broken symbolic link") as info:
        data.load_image(dangling)
    assert str(dangling) in str(info.value)
    loop = tmp_path / "loop.png"
    os.symlink(loop, loop)
    with pytest.raises(ImageLoadError, match="symbolic link loop"):
        data.load_image(loop)
    folder = tmp_path / "d.png"
    folder.mkdir()
    with pytest.raises(ImageLoadError, match="is a folder"):
        data.load_image(folder)


def _deny_reading(monkeypatch: pytest.MonkeyPatch, *denied: Path) -> None:
    """Make os.open raise PermissionError for `denied` (we run as root, so chmod 000 would
    not stop us reading); every other path opens normally."""
    original = os.open
    blocked = {str(p) for p in denied}

    def fake_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path) in blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return original(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


def test_load_image_reports_an_unreadable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.png"
    Image.new("L", (4, 4)).save(path)
    _deny_reading(monkeypatch, path)
    with pytest.raises(ImageLoadError, match="permission denied") as info:
        data.load_image(path)
    assert str(path) in str(info.value)


def _make_odd_folder(root: Path) -> Path:
    """Two good images, one good image inside a folder named d.png, and bad entries named
    like images: a named pipe, a broken link, a link loop, a text file."""
    folder = root / "odd"
    folder.mkdir()
    Image.new("L", (8, 8), 0).save(folder / "a.png")
    Image.new("L", (8, 8), 255).save(folder / "z.png")
    (folder / "d.png").mkdir()
    Image.new("L", (8, 8), 128).save(folder / "d.png" / "inner.png")
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "fifo.png")
    os.symlink(folder / "gone.png", folder / "broken.png")
    os.symlink(folder / "loop.jpg", folder / "loop.jpg")
    (folder / "text.png").write_text("not an image")
    (folder / "locked.png").write_bytes((folder / "a.png").read_bytes())
    return folder


def test_scan_image_folder_reports_entries_that_are_not_files(tmp_path: Path) -> None:
    folder = _make_odd_folder(tmp_path)
    files, unusable = data.scan_image_folder(folder)
    names = [p.relative_to(folder).as_posix() for p in files]
    assert names == ["a.png", "d.png/inner.png", "locked.png", "text.png", "z.png"]
    reasons = dict(line.split(": ", 1) for line in unusable)
    assert reasons[str(folder / "broken.png")].startswith("is a broken symbolic link")
    assert reasons[str(folder / "loop.jpg")] == "is a symbolic link loop"
    if hasattr(os, "mkfifo"):
        assert "named pipe" in reasons[str(folder / "fifo.png")]
    assert len(unusable) == (3 if hasattr(os, "mkfifo") else 2)
    assert data.list_image_files(folder) == files


def test_load_image_folder_skips_and_reports_every_bad_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _make_odd_folder(tmp_path)
    _deny_reading(monkeypatch, folder / "locked.png")
    loaded = _call_without_hanging(data.load_image_folder, folder, 8, 1)
    assert [p.relative_to(folder).as_posix() for p in loaded.paths] == [
        "a.png",
        "d.png/inner.png",
        "z.png",
    ]
    np.testing.assert_allclose(
        loaded.images[:, 0, 0, 0].numpy(), [-1, 128 / 127.5 - 1, 1], atol=1e-6
    )
    skipped = "\n".join(loaded.skipped)
    for name, reason in [
        ("broken.png", "broken symbolic link"),
        ("loop.jpg", "symbolic link loop"),
        ("text.png", "not an image"),
        ("locked.png", "permission denied"),
    ] + ([("fifo.png", "named pipe")] if hasattr(os, "mkfifo") else []):
        lines = [line for line in loaded.skipped if line.startswith(str(folder / name) + ":")]
        assert len(lines) == 1 and reason in lines[0], (name, skipped)
    assert len(loaded.skipped) == (5 if hasattr(os, "mkfifo") else 4)
    assert all("\n" not in line for line in loaded.skipped)


def test_folder_of_only_bad_entries_gives_a_clear_data_error(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    os.symlink(folder / "gone.png", folder / "broken.png")
    (folder / "text.png").write_text("not an image")
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "fifo.png")
    count = 3 if hasattr(os, "mkfifo") else 2
    with pytest.raises(DataError, match=f"none of the {count} image files") as info:
        _call_without_hanging(data.make_dataset, str(folder), 8, 1)
    message = str(info.value)
    assert "broken symbolic link" in message and "not an image" in message
    assert str(folder) in message and "\n" not in message


def test_folder_of_thousands_of_tiny_images(tmp_path: Path) -> None:
    """3000 8x8 PNGs load in order (about 0.7 s on the 2-core CI machine), none skipped."""
    import io

    payloads = []
    for value in range(8):
        buffer = io.BytesIO()
        Image.new("L", (8, 8), value * 32).save(buffer, format="PNG")
        payloads.append(buffer.getvalue())
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(3000):
        (folder / f"{i:04d}.png").write_bytes(payloads[i % 8])
    loaded = data.load_image_folder(folder, image_size=8, channels=1)
    assert loaded.images.shape == (3000, 1, 8, 8) and loaded.skipped == ()
    assert len(loaded.paths) == 3000 and loaded.paths[-1].name == "2999.png"
    expected = (np.arange(3000) % 8) * 32 / 127.5 - 1
    np.testing.assert_allclose(loaded.images[:, 0, 3, 3].numpy(), expected, atol=1e-6)


def test_folder_too_big_for_memory_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three 64x64 RGB images need 2 x 3 x 3 x 64 x 64 x 4 bytes (held twice while stacked):
    with less free than that, the folder is refused with the sizes and what to do, and no
    image is decoded."""
    from diffusion_studio.core import memory

    for i in range(3):
        Image.new("RGB", (64, 64), (i, i, i)).save(tmp_path / f"{i}.png")
    decoded: list[Path] = []
    monkeypatch.setattr(data, "load_image", lambda path, **kw: decoded.append(path))
    monkeypatch.setattr(memory, "available_memory", lambda device: 2 * 3 * 3 * 64 * 64 * 4 - 1)
    with pytest.raises(DataError, match=r"the 3 images in .* at 64x64 need about .* smaller image"):
        data.load_image_folder(tmp_path, 64, 3)
    assert decoded == []


def test_digits_train_leaves_out_the_held_out_thousand() -> None:
    """`digits-train` is the built-in digits minus the 1,000 the quality checks hold out."""
    from diffusion_studio.core.data import DIGITS_HELD_OUT, digits_split_order, load_digits

    images, _ = load_digits()
    train = data.make_dataset("digits-train")
    assert len(train) == len(images) - DIGITS_HELD_OUT
    assert train.num_classes == 10
    held_out = set(digits_split_order()[-DIGITS_HELD_OUT:].tolist())
    train_index = set(np.flatnonzero(np.ones(len(images), bool)).tolist()) - held_out
    expected = torch.from_numpy(images[sorted(train_index)].astype(np.float32)) / 127.5 - 1.0
    assert torch.equal(train.data[:, 0], expected)
