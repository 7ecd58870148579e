"""Data: the built-in digits, 2-D toy point sets, single images and image folders.

Images leave this module as float32 in [-1, 1] (white = 1), shaped (C, H, W) for one
image and (N, C, H, W) for a batch; points as float32 (N, 2). Every file a user
picks goes through `load_image`, which validates it and raises `ImageLoadError`
with a message naming the file and what to do.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from diffusion_studio.core import memory
from diffusion_studio.core.errors import ConfigError, DataError, ImageLoadError
from diffusion_studio.core.resources import resource_path

# --------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The shipped 5,000 MNIST digits (see resources/README.md).

    Returns (images, labels): uint8 (N, 28, 28), white strokes on black, and int64
    (N,) in 0..9. Cached; both arrays are read-only (copy before changing them).
    """
    try:
        path = resource_path("data", "digits.npz")
        with np.load(path, allow_pickle=False) as archive:
            images = np.asarray(archive["images"], dtype=np.uint8)
            labels = np.asarray(archive["labels"], dtype=np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"the built-in digits cannot be read ({exc}); reinstall Diffusion Studio "
            "or rebuild them with resources/make_resources.py"
        ) from exc
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise DataError(
            f"the built-in digits have unexpected shapes {images.shape} and {labels.shape}; "
            "reinstall Diffusion Studio or rebuild them with resources/make_resources.py"
        )
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


# The digits a model can be checked against without having seen them: a seeded 4,000 / 1,000
# split. The independent digit classifier (benchmarks/digit_classifier.py) trains on the 4,000
# and validates on the 1,000; the shipped digits model trains on the 4,000 ("digits-train"), so
# the 1,000 are a fair reference for its Fréchet distance and its memorisation check.
DIGITS_SPLIT_SEED = 1234
DIGITS_HELD_OUT = 1000
DIGIT_SOURCES = ("digits", "digits-train")  # all 5,000 built-in digits / the 4,000 not held out


def is_builtin_digits(source: str) -> bool:
    """True for a data source (or data set name) that is the built-in, labelled digits."""
    return source in DIGIT_SOURCES


def digits_split_order(seed: int = DIGITS_SPLIT_SEED) -> np.ndarray:
    """A permutation of the digits' indices, int64 (N,): the first N - 1000 are the training
    digits, the last 1000 the held-out ones."""
    return np.random.default_rng(seed).permutation(len(load_digits()[0]))


def digits_train_indices() -> np.ndarray:
    """Indices of the digits outside the held-out 1000, ascending, int64 (N - 1000,)."""
    return np.sort(digits_split_order()[:-DIGITS_HELD_OUT])


def _digits_tensor(
    image_size: int, channels: int, indices: np.ndarray | None = None
) -> torch.Tensor:
    """Digits (those at `indices`, default all) as float32 (N, channels, image_size,
    image_size) in [-1, 1]."""
    images, _ = load_digits()
    if indices is not None:
        images = images[indices]
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1) / 127.5 - 1.0
    if image_size != x.shape[-1]:
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        ).clamp_(-1.0, 1.0)
    if channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


# --------------------------------------------------------------------------- toy points

TOY_DATASETS = ("moons", "swissroll", "rings", "gaussians", "spiral")


def _uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def _moons(n: int, g: torch.Generator | None) -> torch.Tensor:
    # Two interleaving half circles (as sklearn's make_moons), noise 0.05, then
    # centred and scaled by 1/0.9: x std ~0.97, y std ~0.55, |coords| < ~1.9.
    t = _uniform(n, g) * math.pi
    upper = _uniform(n, g) < 0.5
    x = torch.where(upper, torch.cos(t), 1.0 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    p = torch.stack([x, y], dim=1) + 0.05 * _normal((n, 2), g)
    return (p - torch.tensor([0.5, 0.25], dtype=torch.float64)) / 0.9


def _swissroll(n: int, g: torch.Generator | None) -> torch.Tensor:
    # The 2-D swiss roll: t in [1.5 pi, 4.5 pi], (t cos t, t sin t), noise 0.25,
    # centred (mean ~(2.0, 0.2)) and scaled by 1/7.5: std ~0.9 per axis, |coords| < ~2.
    t = 1.5 * math.pi * (1.0 + 2.0 * _uniform(n, g))
    p = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) + 0.25 * _normal((n, 2), g)
    return (p - torch.tensor([2.0, 0.2], dtype=torch.float64)) / 7.5


def _rings(n: int, g: torch.Generator | None) -> torch.Tensor:
    # Three concentric circles, radii 0.6 / 1.2 / 1.8, points in proportion to the
    # circumference (so the density along each ring is equal), radial noise 0.04.
    radii = torch.tensor([0.6, 1.2, 1.8], dtype=torch.float64)
    ring = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=g)
    theta = 2.0 * math.pi * _uniform(n, g)
    r = radii[ring] + 0.04 * _normal((n,), g)
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)


def _gaussians(n: int, g: torch.Generator | None) -> torch.Tensor:
    # Eight Gaussians (std 0.1) with centres evenly spaced on a circle of radius 1.5.
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.to(torch.float64) * (2.0 * math.pi / 8.0)
    centres = 1.5 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + 0.1 * _normal((n, 2), g)


def _spiral(n: int, g: torch.Generator | None) -> torch.Tensor:
    # Two interleaved arms of an Archimedean spiral, 1.5 turns each:
    # r = 1.9 s, theta = 3 pi s with s = sqrt(u) (uniform density along the arm), noise 0.04.
    s = torch.sqrt(_uniform(n, g))
    theta = 3.0 * math.pi * s
    arm = torch.where(_uniform(n, g) < 0.5, 1.0, -1.0).to(torch.float64)
    r = 1.9 * s * arm
    p = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    return p + 0.04 * _normal((n, 2), g)


_TOY_MAKERS: dict[str, Callable[[int, torch.Generator | None], torch.Tensor]] = {
    "moons": _moons,
    "swissroll": _swissroll,
    "rings": _rings,
    "gaussians": _gaussians,
    "spiral": _spiral,
}


def toy_points(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`n` points of a 2-D toy data set: float32 (n, 2), roughly unit std, mostly in [-2, 2].

    name: one of TOY_DATASETS. generator: a CPU torch.Generator; the same seed gives
    the same points (None draws from torch's global generator).
    """
    maker = _TOY_MAKERS.get(name)
    if maker is None:
        raise DataError(f"unknown toy data set {name!r}: choose one of {', '.join(TOY_DATASETS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"number of points must be a positive integer, got {n!r}")
    return maker(n, generator).to(torch.float32).contiguous()


# --------------------------------------------------------------------------- single images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Largest image decoded in full (width x height), well under Pillow's decompression-bomb
# limit (about 89 megapixels): decoding takes up to about 12 bytes a pixel on the way to
# float32 (about 600 MB here). JPEGs larger than this are decoded at 1/2, 1/4 or 1/8 scale
# (Image.draft), which must bring them under it; other formats cannot be decoded smaller and
# are refused before decoding.
MAX_DECODE_PIXELS = 50_000_000

_HIGH_DEPTH_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_WITH_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")
# Errors Pillow's decoders raise on corrupt or truncated input.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)


def _check_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """`size` as (height, width), or None."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else size
    if (
        isinstance(size, bool)
        or not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair)
    ):
        raise ConfigError(
            f"image size must be a positive int or (height, width) of positive ints, got {size!r}"
        )
    return int(pair[0]), int(pair[1])


def _check_channels(channels: int | None) -> None:
    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _stat_problem(path: Path) -> tuple[os.stat_result | None, str | None]:
    """os.stat(path) (following links), or None and the reason it cannot be read."""
    try:
        return path.stat(), None
    except FileNotFoundError:
        if path.is_symlink():
            return None, "is a broken symbolic link (its target does not exist)"
        return None, "was not found"
    except PermissionError:
        return None, "cannot be read: permission denied"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "is a symbolic link loop"
        return None, f"cannot be read ({exc.strerror or exc})"


def _check_file(path: Path) -> None:
    info, problem = _stat_problem(path)
    if info is None:
        if problem == "was not found":
            raise ImageLoadError(
                f"image not found: '{path}'. Check the path and choose an existing file."
            )
        raise ImageLoadError(f"image '{path}' {problem}. Choose another file.")
    if stat.S_ISDIR(info.st_mode):
        raise ImageLoadError(
            f"'{path}' is a folder, not an image file. Choose an image file, or load the "
            "folder as an image-folder data set."
        )
    if not stat.S_ISREG(info.st_mode):
        raise ImageLoadError(
            f"'{path}' is {_file_kind(info.st_mode)}, not an image file. Choose an image file."
        )
    if info.st_size == 0:
        raise ImageLoadError(f"image '{path}' is an empty file (0 bytes). Choose another file.")


def _open_regular(path: Path) -> BinaryIO:
    """Open `path` for reading without blocking, and only if it is a regular file.

    O_NONBLOCK: opening a named pipe must not wait for a writer (it would hang the app);
    the check after opening closes the race with a file swapped after `_check_file`.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ImageLoadError(
                f"'{path}' is {_file_kind(mode)}, not an image file. Choose an image file."
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _draft_request(
    width: int, height: int, max_side: int, target: tuple[int, int] | None
) -> tuple[int, int] | None:
    """Smallest (w, h) that a JPEG may be decoded at (Image.draft), or None for full size."""
    factor = min(1.0, max_side / max(width, height))
    if target is not None:
        # The later centre-crop needs the short side to cover the target in either
        # orientation (EXIF rotation happens after decoding), so keep max(target)/short side.
        factor = min(factor, max(target) / min(width, height))
    if factor >= 1.0:
        return None
    return math.ceil(width * factor), math.ceil(height * factor)


def _over_white(im: Image.Image) -> Image.Image:
    """Composite an image with alpha over a white background -> RGBA, fully opaque."""
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba)


def _is_grey(rgb: Image.Image) -> bool:
    r, g, b = (np.asarray(band) for band in rgb.split())
    return bool(np.array_equal(r, g) and np.array_equal(g, b))


def _normalise_mode(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> "L" (8-bit grey), "RGB", or "F" (grey in [0, 1], from 16-bit).

    Transparency is composited over white; palette images whose colours are all grey
    become "L"; CMYK / YCbCr / HSV go through Pillow's conversion to RGB.
    """
    mode = im.mode
    if mode in ("1", "L"):
        return im.convert("L")
    if mode in _HIGH_DEPTH_GREY:
        values = np.asarray(im).astype(np.float32) / 65535.0
        return Image.fromarray(np.clip(values, 0.0, 1.0), mode="F")
    if mode == "F":
        values = np.asarray(im).astype(np.float32) / 255.0
        return Image.fromarray(np.clip(values, 0.0, 1.0), mode="F")
    if mode in ("LA", "La"):
        return _over_white(im).convert("L")
    if mode in ("P", "PA"):
        if mode == "PA" or "transparency" in im.info:
            rgb = _over_white(im).convert("RGB")
        else:
            rgb = im.convert("RGB")
        return rgb.convert("L") if _is_grey(rgb) else rgb
    if mode in _WITH_ALPHA:
        return _over_white(im).convert("RGB")
    return im.convert("RGB")


def _decode(
    im: Image.Image, path: Path, max_side: int, target: tuple[int, int] | None
) -> Image.Image:
    """Open image -> loaded, upright working image in mode L / RGB / F, at most max_side."""
    width, height = im.size
    if width == 0 or height == 0:
        raise ImageLoadError(
            f"image '{path}' has zero width or height ({width}x{height}). Choose another file."
        )
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageLoadError(
            f"image '{path}' is too large to load safely ({width}x{height} = "
            f"{width * height:,} pixels, limit {limit:,}). Downscale it in an image editor first."
        )
    request = _draft_request(width, height, max_side, target)
    if request is not None:
        im.draft(None, request)  # JPEG: decode at 1/2, 1/4 or 1/8 scale; others: no-op
    if im.size[0] * im.size[1] > MAX_DECODE_PIXELS:  # checked before a single pixel is decoded
        how = "" if im.format == "JPEG" else ", or save it as a JPEG (decoded at reduced size)"
        raise ImageLoadError(
            f"image '{path}' is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
            f"images that would take over {MAX_DECODE_PIXELS / 1e6:.0f} megapixels to decode "
            f"are refused so that memory stays bounded. Downscale it to at most "
            f"{max_side}x{max_side} in an image editor{how}."
        )
    im.load()  # force a full decode so that truncated / corrupt files fail here
    try:
        im = ImageOps.exif_transpose(im)
    except _DECODE_ERRORS:
        im = im.copy()  # unreadable EXIF: keep the pixels as stored
    im = _normalise_mode(im)
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


def load_image(
    path: str | os.PathLike[str],
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    max_side: int = 4096,
) -> np.ndarray:
    """Load one image file as float32 (C, H, W) in [-1, 1] (white = 1).

    path: PNG, JPEG, BMP, GIF (first frame), TIFF, WebP, ... in any common mode
      (grey, grey+alpha, RGB, RGBA, palette, 16-bit grey, CMYK); transparency is
      composited over white and the EXIF orientation applied.
    size: None keeps the size; an int centre-crops to a square and resizes to
      (size, size); (height, width) centre-crops to that aspect ratio and resizes.
      Resampling is Lanczos (antialiased when shrinking).
    channels: None keeps the image's own (1 for grey, 3 otherwise); 1 converts to
      luma (ITU-R 601-2, as Pillow), 3 repeats grey.
    max_side: larger images are downscaled (JPEGs already while decoding) so that
      neither side exceeds it; memory stays bounded. An image that would still take more
      than MAX_DECODE_PIXELS to decode is refused from its header, before decoding.

    Raises ImageLoadError for a missing, empty, unreadable, corrupt, truncated or
    oversized (decompression bomb, or over MAX_DECODE_PIXELS) file, one that is not an
    image, a folder, a named pipe or device (never read, so nothing blocks),
    a broken symbolic link or a link loop.
    """
    target = _check_size(size)
    _check_channels(channels)
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise ConfigError(f"max_side must be a positive integer, got {max_side!r}")
    path = Path(path).expanduser()
    _check_file(path)
    try:
        with _open_regular(path) as file, Image.open(file) as opened:
            im = _decode(opened, path, max_side, target)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(
            f"image '{path}' is too large to load safely ({exc}). Downscale it in an image "
            "editor first."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            f"'{path}' is not an image Pillow can read (unknown format or invalid header). "
            "Choose a PNG, JPEG, BMP, GIF, TIFF or WebP file."
        ) from exc
    except PermissionError as exc:
        raise ImageLoadError(
            f"cannot read image '{path}': permission denied. Check the file's permissions."
        ) from exc
    except MemoryError as exc:
        raise ImageLoadError(
            f"not enough memory to load image '{path}'. Downscale it first."
        ) from exc
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(
            f"image '{path}' is truncated or corrupt ({type(exc).__name__}: {exc}). "
            "Re-export or re-download it, or remove it."
        ) from exc

    if target is not None:
        height, width = target
        im = ImageOps.fit(im, (width, height), method=Image.Resampling.LANCZOS)

    if im.mode == "F":
        array = np.asarray(im, dtype=np.float32)
    else:
        array = np.asarray(im, dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)
    if channels == 1 and array.shape[0] == 3:
        luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        array = np.tensordot(luma, array, axes=1)[None]
    elif channels == 3 and array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    return np.ascontiguousarray(np.clip(array, 0.0, 1.0) * 2.0 - 1.0, dtype=np.float32)


# --------------------------------------------------------------------------- image folders


def _ignore_walk_error(_error: OSError) -> None:
    """os.walk's onerror: unreadable sub-folders are skipped."""


def scan_image_folder(folder: str | os.PathLike[str]) -> tuple[list[Path], list[str]]:
    """Image files under `folder` and the entries named like images that cannot be used.

    Returns (files, unusable): the regular files with an image suffix (IMAGE_SUFFIXES,
    case-insensitive), sorted, and one "path: reason" line for each other entry with an
    image suffix (a named pipe, socket or device, a broken symbolic link, a link loop, an
    entry that cannot be read), sorted; none of those is ever opened.
    Recursive. Hidden files and folders (name starting with ".") are left out, symlinked
    sub-folders are not followed (so symlink loops are harmless), symlinked files count
    when they point at a regular file, and unreadable sub-folders are left out. A folder
    whose name ends in an image suffix is searched like any other sub-folder.
    Raises DataError when `folder` is missing or not a folder.
    """
    root = Path(folder).expanduser()
    if not root.exists():
        raise DataError(f"folder not found: '{root}'. Check the path.")
    if not root.is_dir():
        raise DataError(f"'{root}' is not a folder. Choose a folder that contains images.")
    found: list[Path] = []
    unusable: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_ignore_walk_error):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            candidate = Path(dirpath) / name
            info, problem = _stat_problem(candidate)
            if info is None:
                unusable.append(f"{candidate}: {problem}")
            elif stat.S_ISREG(info.st_mode):
                found.append(candidate)
            elif stat.S_ISDIR(info.st_mode):
                unusable.append(f"{candidate}: is a link to a folder (not followed)")
            else:
                unusable.append(f"{candidate}: is {_file_kind(info.st_mode)}, not an image file")
    return sorted(found), sorted(unusable)


def list_image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files under `folder`, sorted: `scan_image_folder(folder)[0]`.

    Only regular files (or links to them) are listed, so a caller can open each without
    hanging on a named pipe. Raises DataError when `folder` is missing or not a folder.
    """
    return scan_image_folder(folder)[0]


@dataclass(frozen=True, eq=False)
class LoadedImages:
    """The result of `load_image_folder`.

    images: float32 (N, C, H, W) in [-1, 1]; paths: the N files, in order;
    skipped: one "path: reason" line per file that could not be loaded, and per entry named
      like an image that is not a usable file (see `scan_image_folder`); so
      len(paths) + len(skipped) entries were found.
    """

    images: torch.Tensor
    paths: tuple[Path, ...]
    skipped: tuple[str, ...]


def _check_folder_fits_in_memory(
    folder: str | os.PathLike[str], count: int, image_size: int, channels: int
) -> None:
    """Refuse, before decoding anything, a folder whose images at `image_size` would not fit
    in free memory: float32 (count, C, S, S), held twice while the batch is stacked."""
    needed = 2 * count * channels * image_size * image_size * 4
    available = memory.available_memory("cpu")
    if available is not None and needed > available:
        raise DataError(
            f"the {count} images in '{folder}' at {image_size}x{image_size} need about "
            f"{memory.format_bytes(needed)} of memory, this machine has "
            f"{memory.format_bytes(available)} free: "
            "use a smaller image size or a folder with fewer images"
        )


def load_image_folder(
    folder: str | os.PathLike[str],
    image_size: int,
    channels: int,
    max_images: int | None = None,
) -> LoadedImages:
    """Load the images under `folder` as a batch (see `LoadedImages`).

    Each file goes through `load_image(path, image_size, channels)` (centre-crop to a
    square, resize). Files that fail to load are skipped and listed in `.skipped`;
    at most `max_images` images are kept (the first ones in sorted order).
    Raises DataError when the folder holds no image files or none of them loads.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image size must be a positive integer, got {image_size!r}")
    _check_channels(channels)
    if max_images is not None and (
        isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1
    ):
        raise ConfigError(f"max_images must be a positive integer or None, got {max_images!r}")
    files, unusable = scan_image_folder(folder)
    if not files and not unusable:
        raise DataError(
            f"no image files in folder '{folder}' (looked for {', '.join(IMAGE_SUFFIXES)}). "
            "Choose a folder that contains images."
        )
    _check_folder_fits_in_memory(
        folder, min(len(files), max_images or len(files)), image_size, channels
    )
    arrays: list[np.ndarray] = []
    paths: list[Path] = []
    skipped: list[str] = list(unusable)
    for path in files:
        if max_images is not None and len(arrays) >= max_images:
            break
        try:
            arrays.append(load_image(path, size=image_size, channels=channels))
        except ImageLoadError as exc:
            skipped.append(f"{path}: {exc}")
            continue
        paths.append(path)
    if not arrays:
        first = "; ".join(skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        raise DataError(
            f"none of the {len(files) + len(unusable)} image files in '{folder}' could be "
            f"loaded ({first}). Check the files or choose another folder."
        )
    images = torch.from_numpy(np.stack(arrays))
    return LoadedImages(images=images, paths=tuple(paths), skipped=tuple(skipped))


# --------------------------------------------------------------------------- sample photos


def sample_photo_paths() -> list[Path]:
    """The shipped sample photographs (resources/photos), sorted by name."""
    folder = resource_path("photos")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def default_photo_path() -> Path:
    """The default photograph for the Forward panel: 512x512 RGB astronaut."""
    return resource_path("photos", "astronaut.png")


# --------------------------------------------------------------------------- data sets


@dataclass(frozen=True, eq=False)
class Dataset:
    """A training data set.

    kind "images": data float32 (N, C, H, W) in [-1, 1]; kind "points": float32 (N, 2).
    skipped: "path: reason" lines for folder files that could not be loaded.
    labels: int64 (N,) class labels 0..num_classes-1 (the built-in digits), or None.
    """

    name: str
    kind: Literal["images", "points"]
    data: torch.Tensor
    skipped: tuple[str, ...] = ()
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind == "images" and self.data.ndim != 4:
            raise DataError(f"image data must be (N, C, H, W), got {tuple(self.data.shape)}")
        if self.kind == "points" and (self.data.ndim != 2 or self.data.shape[1] != 2):
            raise DataError(f"point data must be (N, 2), got {tuple(self.data.shape)}")
        if self.kind not in ("images", "points"):
            raise DataError(f"data set kind must be 'images' or 'points', got {self.kind!r}")
        if self.labels is not None and tuple(self.labels.shape) != (self.data.shape[0],):
            raise DataError(
                f"a data set needs one label per sample: {self.data.shape[0]} samples, "
                f"labels of shape {tuple(self.labels.shape)}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes (largest label + 1), 0 without labels."""
        return 0 if self.labels is None or not len(self.labels) else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) or (2,)."""
        return tuple(self.data.shape[1:])

    @property
    def channels(self) -> int | None:
        """C for images, None for points."""
        return int(self.data.shape[1]) if self.kind == "images" else None

    @property
    def image_size(self) -> int | None:
        """H (= W) for images, None for points."""
        return int(self.data.shape[2]) if self.kind == "images" else None


def make_dataset(
    source: str,
    image_size: int = 28,
    channels: int = 1,
    num_points: int = 20000,
    seed: int = 0,
) -> Dataset:
    """Build a data set from a source name.

    source: "digits" (the shipped MNIST subset, resized when image_size != 28,
      repeated to 3 channels when channels == 3), "digits-train" (the same without the 1,000
      held out for checking models, `digits_train_indices`), one of TOY_DATASETS (num_points
      points drawn with a generator seeded by `seed`), or a folder of images
      (centre-cropped and resized to image_size, converted to `channels`).
    Raises DataError for an unknown source or an unusable folder.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image size must be a positive integer, got {image_size!r}")
    _check_channels(channels)
    if source == "digits":
        labels = torch.from_numpy(load_digits()[1].copy())  # 0..9, in the images' order
        return Dataset("digits", "images", _digits_tensor(image_size, channels), labels=labels)
    if source == "digits-train":
        index = digits_train_indices()
        labels = torch.from_numpy(load_digits()[1][index].copy())
        images = _digits_tensor(image_size, channels, index)
        return Dataset("digits-train", "images", images, labels=labels)
    if source in TOY_DATASETS:
        generator = torch.Generator().manual_seed(int(seed))
        return Dataset(source, "points", toy_points(source, num_points, generator))
    folder = Path(str(source)).expanduser()
    if folder.is_dir():
        loaded = load_image_folder(folder, image_size, channels)
        return Dataset(folder.name or str(folder), "images", loaded.images, loaded.skipped)
    choices = ", ".join((*DIGIT_SOURCES, *TOY_DATASETS))
    if folder.exists():
        raise DataError(
            f"data source '{source}' is a file, not a folder: choose {choices}, or a folder "
            "of images"
        )
    raise DataError(
        f"unknown data source {source!r}: choose {choices}, or an existing folder of images"
    )
