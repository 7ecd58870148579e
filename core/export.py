"""Export: pure functions from arrays to files (PNG, PNG frames, GIF, CSV) and to pictures.

Images here are uint8 (H, W, C) or (N, H, W, C) with C = 1 or 3 (`to_uint8_images`
turns the model's float (C, H, W) in [-1, 1] into that). Every file is written
atomically: to a temporary file in the same folder, then `os.replace`d over the
target, so a failed or interrupted export never leaves a half-written file. Failed
writes raise `ExportError` naming the path.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from diffusion_studio.core.errors import ExportError
from diffusion_studio.core.files import atomic_write
from diffusion_studio.core.flow import FlowPath, ForwardPath

# ----------------------------------------------------------------------------- arrays


def _to_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, torch tensor (any device, any float type) or list."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype != torch.float64:
            x = x.to(torch.float32)
        return x.numpy()
    return np.asarray(x)


def to_uint8_images(x: Any) -> np.ndarray:
    """Float images in [-1, 1] -> uint8 images.

    x: (C, H, W) or (N, C, H, W), numpy or torch. Values are clipped to [-1, 1] (NaN
    counts as 0) and mapped with round((x + 1) * 127.5).
    Returns (H, W, C) or (N, H, W, C) uint8.
    """
    array = _to_numpy(x)
    if array.ndim not in (3, 4):
        raise ExportError(f"images must be (C, H, W) or (N, C, H, W), got shape {array.shape}")
    array = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    array = np.rint((np.clip(array, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(array, -3, -1))


def _check_image(image: Any, what: str = "image") -> np.ndarray:
    """A uint8 (H, W) or (H, W, C) array with C in 1, 3, 4 -> (H, W) or (H, W, 3|4)."""
    array = _to_numpy(image)
    if array.dtype != np.uint8:
        raise ExportError(
            f"{what} must be uint8 (use to_uint8_images first), got dtype {array.dtype}"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ExportError(f"{what} must be (H, W) or (H, W, 1|3|4), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ExportError(f"{what} is empty: shape {array.shape}")
    return np.ascontiguousarray(array)


def make_grid(
    images: Any, ncols: int | None = None, padding: int = 2, pad_value: int = 0
) -> np.ndarray:
    """Tile uint8 images (N, H, W, C) or (N, H, W) into one picture.

    ncols: images per row (default ceil(sqrt(N)), at most N). Every image gets
    `padding` pixels of `pad_value` on each side, shared between neighbours (as
    torchvision): the result is (rows*(H+p)+p, ncols*(W+p)+p, C); empty cells are
    pad_value.
    """
    array = _to_numpy(images)
    if array.dtype != np.uint8:
        raise ExportError(f"images must be uint8 (use to_uint8_images first), got {array.dtype}")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[0] == 0:
        raise ExportError(f"images must be (N, H, W, C) with N >= 1, got shape {array.shape}")
    if padding < 0 or not 0 <= pad_value <= 255:
        raise ExportError(f"padding must be >= 0 and pad_value 0..255, got {padding}, {pad_value}")
    n, h, w, c = array.shape
    cols = math.ceil(math.sqrt(n)) if ncols is None else ncols
    if cols < 1:
        raise ExportError(f"ncols must be >= 1, got {ncols}")
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    grid = np.full(
        (rows * (h + padding) + padding, cols * (w + padding) + padding, c),
        pad_value,
        dtype=np.uint8,
    )
    for i in range(n):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        grid[top : top + h, left : left + w] = array[i]
    return grid


def upscale_nearest(img: Any, scale: int) -> np.ndarray:
    """Repeat every pixel `scale` x `scale` times: (H, W[, C]) -> (H*scale, W*scale[, C])."""
    array = _to_numpy(img)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ExportError(f"scale must be a positive integer, got {scale!r}")
    if array.ndim not in (2, 3):
        raise ExportError(f"image must be (H, W) or (H, W, C), got shape {array.shape}")
    if scale == 1:
        return array.copy()
    return np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)


def select_frame_indices(n_total: int, n_frames: int) -> np.ndarray:
    """`n_frames` evenly spaced indices into range(n_total), int64, increasing, unique.

    Includes the first and the last index; all of them when n_frames >= n_total;
    just the last (the final result) when n_frames == 1.
    """
    if n_total < 1 or n_frames < 1:
        raise ExportError(f"need n_total >= 1 and n_frames >= 1, got {n_total}, {n_frames}")
    if n_frames >= n_total:
        return np.arange(n_total, dtype=np.int64)
    if n_frames == 1:
        return np.array([n_total - 1], dtype=np.int64)
    # Spacing (n_total-1)/(n_frames-1) >= 1, so the rounded indices are unique.
    return np.rint(np.linspace(0, n_total - 1, n_frames)).astype(np.int64)


# ----------------------------------------------------------------------------- atomic files


def _atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically (core.files.atomic_write); failures raise ExportError."""
    return atomic_write(path, write, ExportError)


def save_png(path: str | os.PathLike[str], image: Any) -> Path:
    """Save one uint8 image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) as PNG. Returns the path."""
    array = _check_image(image)
    picture = Image.fromarray(array)
    return _atomic_write(path, lambda f: picture.save(f, format="PNG"))


def save_png_frames(
    folder: str | os.PathLike[str], frames: Sequence[Any], prefix: str = "frame"
) -> list[Path]:
    """Save frames as `<prefix>_0000.png`, `<prefix>_0001.png`, ... in `folder`.

    The folder itself is created if its parent exists. Digits grow beyond 4 when
    there are more than 10,000 frames. Returns the paths in frame order.
    """
    if len(frames) == 0:
        raise ExportError("no frames to save: the sequence is empty")
    arrays = [_check_image(frame, f"frame {i}") for i, frame in enumerate(frames)]
    out = Path(folder).expanduser()
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise ExportError(
            f"cannot create folder '{out}': {exc.strerror or exc}. Choose an existing location."
        ) from exc
    digits = max(4, len(str(len(arrays) - 1)))
    return [save_png(out / f"{prefix}_{i:0{digits}d}.png", array) for i, array in enumerate(arrays)]


# ----------------------------------------------------------------------------- captions

CAPTION_MIN_PX = 13  # the smallest font size (pixels): legible on a 28x28 digit GIF
CAPTION_MAX_PX = 28


def forward_caption(step: int) -> str:
    """The caption of a forward-process frame at display step `step` (core.forward's
    convention: 0 is the clean image, k >= 1 is timestep index k - 1)."""
    return "x_0 (clean)" if step == 0 else f"t = {step - 1}"


def reverse_caption(t: int, path: ForwardPath | None = None) -> str:
    """The caption of a reverse-process frame at timestep t (t < 0: the final samples, as
    core.sampling's Frame marks them). On a flow path t is the grid index k and the caption
    says its time, "t = 0.500" (= (k + 1) / T); otherwise "t = 437"."""
    if t < 0:
        return "x_0 (final)"
    if isinstance(path, FlowPath):
        return f"t = {float(path.times[t]):.3f}"
    return f"t = {t}"


def caption_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's default font at `size` pixels (its fixed bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # no FreeType: the bitmap font, about 11 px
        return ImageFont.load_default()


def caption_frame(frame: Any, text: str) -> np.ndarray:
    """A uint8 frame with `text` written in black on a white band above it.

    frame: (H, W), (H, W, 1) or (H, W, 3|4) uint8, already at its final size (captions are
    drawn after any upscaling, so the letters stay sharp). The font is Pillow's default at
    W / 10 pixels, within CAPTION_MIN_PX..CAPTION_MAX_PX; a frame narrower than its text gets
    white margins. The band's height depends on the font size only (the font's ascent and
    descent), so frames of one size with different captions keep one size. Returns
    (H + band, W', ...) with the frame's channels.
    """
    array = _check_image(frame, "frame")
    if not isinstance(text, str):
        raise ExportError(f"a caption must be text, got {text!r}")
    height, width = array.shape[:2]
    size = int(min(CAPTION_MAX_PX, max(CAPTION_MIN_PX, width // 10)))
    font = caption_font(size)
    left, _top, right, _bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox(
        (0, 0), text, font=font
    )
    ascent, descent = font.getmetrics()
    pad = max(2, size // 5)
    band_h = ascent + descent + 2 * pad
    out_w = max(width, right - left + 2 * pad)
    band = Image.new("L", (out_w, band_h), 255)
    ImageDraw.Draw(band).text((pad - left, pad), text, fill=0, font=font)
    channels = () if array.ndim == 2 else (array.shape[2],)
    out = np.full((band_h + height, out_w, *channels), 255, dtype=np.uint8)
    text_pixels = np.asarray(band)
    out[:band_h] = text_pixels if not channels else text_pixels[..., None]
    if channels and channels[0] == 4:
        out[:, :, 3] = 255  # opaque band and margins
        out[band_h:, :width, 3] = array[..., 3]
    x0 = (out_w - width) // 2
    out[band_h:, x0 : x0 + width] = array
    return out


def caption_frames(frames: Sequence[Any], captions: Sequence[str], scale: int = 1) -> list:
    """Upscale each frame `scale` times (nearest) and write its caption above it
    (`caption_frame`). The GUI's and the CLI's GIFs are made with this (through save_gif)."""
    if len(captions) != len(frames):
        raise ExportError(f"{len(captions)} captions for {len(frames)} frames: give one each")
    return [
        caption_frame(upscale_nearest(_check_image(f, f"frame {i}"), scale), str(text))
        for i, (f, text) in enumerate(zip(frames, captions))
    ]


# ----------------------------------------------------------------------------- GIF


def _gif_frames(arrays: list[np.ndarray]) -> list[Image.Image]:
    """uint8 frames -> Pillow frames with one shared colour table.

    Grey frames -> "L". RGB(A) frames -> "P" quantised with one 256-colour palette
    built from all frames (median cut, no dithering), so colours do not flicker
    between frames.
    """
    if all(a.ndim == 2 for a in arrays):
        return [Image.fromarray(a, mode="L") for a in arrays]
    rgb = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3] for a in arrays]
    pixels = np.concatenate([a.reshape(-1, 3) for a in rgb])
    step = max(1, pixels.shape[0] // (1 << 18))  # at most ~262k pixels to build the palette
    sample = Image.fromarray(np.ascontiguousarray(pixels[::step][None]), mode="RGB")
    palette = sample.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    return [
        Image.fromarray(np.ascontiguousarray(a), mode="RGB").quantize(
            palette=palette, dither=Image.Dither.NONE
        )
        for a in rgb
    ]


def save_gif(
    path: str | os.PathLike[str],
    frames: Sequence[Any],
    fps: float = 10,
    loop: bool = True,
    scale: int = 1,
    hold_last_s: float = 1.0,
    captions: Sequence[str] | None = None,
) -> int:
    """Save uint8 frames (H, W), (H, W, 1) or (H, W, 3) as an animated GIF.

    fps: frames per second. GIF stores delays in 1/100 s, so each frame lasts
      round(100 / fps) centiseconds, at least 2 (50 fps; browsers slow shorter
      delays down to 1/10 s).
    loop: True repeats forever (GIF loop count 0); False plays once.
    scale: nearest-neighbour upscaling factor, for small images.
    hold_last_s: the last frame stays at least this long before the loop restarts.
    captions: one text per frame (e.g. `forward_caption` / `reverse_caption`: "t = 437"),
      written above the frame after upscaling (`caption_frames`), so it stays legible.

    Consecutive frames that are identical after colour quantisation are merged into
    one frame whose delay is the sum (Pillow would do the same silently); this keeps
    the timing exact. Returns the number of frames in the file.
    """
    if len(frames) == 0:
        raise ExportError(f"cannot save GIF '{path}': there are no frames")
    if (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float))
        or not (math.isfinite(fps) and fps > 0)
    ):
        raise ExportError(f"GIF frame rate must be a positive number, got {fps!r}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ExportError(f"GIF scale must be a positive integer, got {scale!r}")
    if not (math.isfinite(hold_last_s) and hold_last_s >= 0):
        raise ExportError(f"hold_last_s must be >= 0 seconds, got {hold_last_s!r}")
    arrays = [_check_image(frame, f"frame {i}") for i, frame in enumerate(frames)]
    if any(a.shape[:2] != arrays[0].shape[:2] for a in arrays):
        shapes = sorted({a.shape[:2] for a in arrays})
        raise ExportError(f"all GIF frames must have the same size, got {shapes}")
    if captions is not None:
        arrays = caption_frames(arrays, captions, scale)
        scale = 1  # done: the captions are drawn at the final size
        width = max(a.shape[1] for a in arrays)  # a wider caption widened its frame
        arrays = [pad_to_width(a, width) for a in arrays]

    frame_cs = max(2, round(100.0 / fps))
    durations_cs = [frame_cs] * len(arrays)
    durations_cs[-1] = max(frame_cs, round(hold_last_s * 100.0))

    pictures: list[Image.Image] = []
    merged_cs: list[int] = []
    previous: np.ndarray | None = None
    for picture, duration in zip(_gif_frames(arrays), durations_cs):
        indices = np.asarray(picture)
        if previous is not None and np.array_equal(indices, previous):
            merged_cs[-1] += duration
            continue
        previous = indices
        pictures.append(picture)
        merged_cs.append(duration)
    if scale > 1:
        pictures = [
            p.resize((p.width * scale, p.height * scale), Image.Resampling.NEAREST)
            for p in pictures
        ]

    options: dict[str, Any] = {
        "format": "GIF",
        "save_all": True,
        "append_images": pictures[1:],
        "duration": [cs * 10 for cs in merged_cs],  # ms, exact multiples of 10
        "optimize": False,
    }
    if loop:
        options["loop"] = 0
    _atomic_write(path, lambda f: pictures[0].save(f, **options))
    return len(pictures)


def pad_to_width(array: np.ndarray, width: int) -> np.ndarray:
    """Centre a frame on white up to `width` columns (frames of one GIF share one size)."""
    extra = width - array.shape[1]
    if extra <= 0:
        return array
    pad = [(0, 0), (extra // 2, extra - extra // 2)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, constant_values=255)


# ----------------------------------------------------------------------------- CSV


def _csv_column(name: str, values: Any) -> list[Any]:
    array = _to_numpy(values)
    if array.ndim != 1:
        raise ExportError(f"CSV column {name!r} must be 1-D, got shape {array.shape}")
    if array.dtype.kind == "f" and array.dtype != np.float64:
        return [str(v) for v in array]  # shortest text that round-trips this precision
    return array.tolist()


def save_csv(path: str | os.PathLike[str], columns: Mapping[str, Any]) -> Path:
    """Save equal-length 1-D columns as CSV with a header row of the column names.

    Floats are written in their shortest round-trip form. Returns the path.
    """
    if not columns:
        raise ExportError(f"cannot save CSV '{path}': there are no columns")
    names = [str(name) for name in columns]
    data = [_csv_column(name, values) for name, values in zip(names, columns.values())]
    lengths = {name: len(col) for name, col in zip(names, data)}
    if len(set(lengths.values())) != 1:
        raise ExportError(f"CSV columns must have equal lengths, got {lengths}")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(names)
    writer.writerows(zip(*data))
    payload = text.getvalue().encode("utf-8")
    return _atomic_write(path, lambda f: f.write(payload))


# ----------------------------------------------------------------------------- points


def _check_color(color: Sequence[int], what: str) -> np.ndarray:
    array = np.asarray(color)
    if array.shape != (3,) or array.min() < 0 or array.max() > 255:
        raise ExportError(f"{what} must be three values 0..255, got {color!r}")
    return array.astype(np.float64)


def _scatter(
    image: np.ndarray, points: np.ndarray, extent: float, color: np.ndarray, dot: int
) -> None:
    """Paint (N, 2) points as dot x dot squares into image (size, size, 3), y up."""
    size = image.shape[0]
    finite = np.isfinite(points).all(axis=1)
    points = points[finite]
    col = np.floor((points[:, 0] + extent) / (2.0 * extent) * size).astype(np.int64)
    row = np.floor((extent - points[:, 1]) / (2.0 * extent) * size).astype(np.int64)
    offsets = range(-(dot // 2), dot - dot // 2)
    for dy in offsets:
        for dx in offsets:
            r, c = row + dy, col + dx
            inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
            image[r[inside], c[inside]] = color


def render_points(
    points: Any,
    size: int = 256,
    extent: float = 2.5,
    trails: Any | None = None,
    background: Sequence[int] = (255, 255, 255),
    color: Sequence[int] = (31, 119, 180),
    dot: int = 2,
) -> np.ndarray:
    """Rasterise a 2-D scatter plot: uint8 (size, size, 3).

    points: (N, 2); the square [-extent, extent]^2 fills the picture, y points up,
    points outside (or NaN) are left out. trails: optional (K, N, 2) earlier
    positions (oldest first), drawn under the points in a colour that fades from
    near the background (oldest) towards `color`. dot: side of each point's square
    in pixels.
    """
    pts = _to_numpy(points).astype(np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ExportError(f"points must be (N, 2), got shape {pts.shape}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ExportError(f"picture size must be a positive integer, got {size!r}")
    if not (math.isfinite(extent) and extent > 0):
        raise ExportError(f"extent must be a positive number, got {extent!r}")
    if isinstance(dot, bool) or not isinstance(dot, int) or dot < 1:
        raise ExportError(f"dot must be a positive integer, got {dot!r}")
    bg = _check_color(background, "background")
    fg = _check_color(color, "color")
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = bg
    if trails is not None:
        history = _to_numpy(trails).astype(np.float64)
        if history.ndim != 3 or history.shape[2] != 2:
            raise ExportError(f"trails must be (K, N, 2), got shape {history.shape}")
        k = history.shape[0]
        for i in range(k):
            weight = 0.15 + 0.35 * (i + 1) / k  # oldest faint, newest half-way to `color`
            _scatter(image, history[i], extent, bg + weight * (fg - bg), max(1, dot - 1))
    _scatter(image, pts, extent, fg, dot)
    return np.rint(image).astype(np.uint8)


# ----------------------------------------------------------------------------- reverse process


class FramesLike(Protocol):
    """What `reverse_pictures` reads of a trajectory (`core.sampling.Trajectory`)."""

    is_points: bool | None

    @property
    def timesteps(self) -> np.ndarray: ...

    def x_t(self, index: int) -> np.ndarray: ...

    def pred_x0(self, index: int) -> np.ndarray: ...


REVERSE_VIEWS = ("xt", "x0", "both", "pair")
VIEW_GAP_PX = 8  # white pixels between the two halves of a "both" / "pair" picture of points


def reverse_pictures(
    trajectory: FramesLike,
    indices: Sequence[int],
    view: str = "xt",
    sample_index: int = 0,
    scale: int = 1,
    point_size: int = 256,
    point_extent: float = 2.5,
    trail_frames: int = 0,
    padding: int = 2,
    pad_value: int = 0,
    path: ForwardPath | None = None,
) -> tuple[list[np.ndarray], list[str]]:
    """The pictures of a sampling run's frames `indices` and their captions ("t = 437",
    "x_0 (final)": `reverse_caption` on the model's `path`, so a flow model's frames say its
    t in [0, 1]), as the CLI's and Playback's GIFs and PNG frames show them.

    view: "xt" x_t, "x0" the x_0 prediction, "both" the two side by side, "pair" one sample
    (`sample_index`) as x_t | x_0 prediction. Images: uint8 grids (`make_grid` with `padding`,
    `pad_value`), upscaled `scale` times. Points: `render_points` pictures of `point_size`
    pixels covering [-point_extent, point_extent]^2, x_t with the `trail_frames` frames before
    it drawn as trails ("pair" shows x_t | x_0 like "both").
    """
    if view not in REVERSE_VIEWS:
        raise ExportError(f"unknown view {view!r}; choose one of {', '.join(REVERSE_VIEWS)}")
    captions = [reverse_caption(int(trajectory.timesteps[int(i)]), path) for i in indices]
    pictures = []
    for index in indices:
        i = int(index)
        which = {"xt": ["xt"], "x0": ["x0"]}.get(view, ["xt", "x0"])
        if trajectory.is_points:
            parts = []
            for part in which:
                if part == "xt":
                    first = max(0, i - trail_frames)
                    trails = (
                        np.stack([trajectory.x_t(j) for j in range(first, i)])
                        if i > first
                        else None
                    )
                    points = trajectory.x_t(i)
                else:
                    trails, points = None, trajectory.pred_x0(i)
                parts.append(render_points(points, point_size, point_extent, trails=trails))
            picture = parts[0]
            if len(parts) == 2:
                gap = np.full((point_size, VIEW_GAP_PX, 3), 255, np.uint8)
                picture = np.concatenate([parts[0], gap, parts[1]], axis=1)
            pictures.append(picture)
            continue
        if view == "pair":
            k = min(sample_index, trajectory.x_t(i).shape[0] - 1)
            images = np.stack([trajectory.x_t(i)[k], trajectory.pred_x0(i)[k]])
            picture = make_grid(images, padding=padding, pad_value=pad_value)
        else:
            grids = [
                make_grid(
                    trajectory.x_t(i) if part == "xt" else trajectory.pred_x0(i),
                    padding=padding,
                    pad_value=pad_value,
                )
                for part in which
            ]
            picture = grids[0]
            if len(grids) == 2:
                gap = np.full((picture.shape[0], VIEW_GAP_PX, picture.shape[2]), 255, np.uint8)
                picture = np.concatenate([grids[0], gap, grids[1]], axis=1)
        pictures.append(upscale_nearest(picture, scale))
    return pictures, captions
