"""Guidance, shown: one grid of samples, guidance scales down, classes across, same noise.

Every row is one sampler run (`core.sampling.sample`) over all the chosen classes at one
classifier-free guidance scale (a scale is per run), started from the same seed: column j
gets the same initial noise (and, for an ancestral sampler, the same step noise) in every
row, so a column shows what guidance alone changes. The first row is the unconditional
model (no label); s = 0 gives the same samples, s = 1 is the plain conditional model and
s > 1 pushes the samples towards their class (`core.guidance`).

A class-conditional flow-matching model is swept the same way on its path
(`core.flow.forward_path`) with a flow sampler: guidance mixes its two velocities as it mixes
a diffusion model's two outputs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from diffusion_studio.core.checkpoint import Checkpoint, build_model_from_checkpoint
from diffusion_studio.core.data import is_builtin_digits
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import (
    CAPTION_MAX_PX,
    CAPTION_MIN_PX,
    caption_font,
    caption_frame,
    make_grid,
    pad_to_width,
    save_png,
    to_uint8_images,
    upscale_nearest,
)
from diffusion_studio.core.flow import forward_path
from diffusion_studio.core.guidance import check_guidance_scale, class_labels
from diffusion_studio.core.samplers import SamplerConfig, make_sampler
from diffusion_studio.core.sampling import sample, sampling_timesteps

DEFAULT_SCALES = (0.0, 1.0, 2.0, 4.0, 8.0)
MAX_SCALES = 16  # rows of guided samples in one sweep
NO_LABEL_TITLE = "no label"
CELL_PX = 64  # cells are upscaled (nearest) by whole factors to about this size
CELL_GAP_PX = 2  # white pixels between cells


@dataclass(frozen=True)
class SweepRequest:
    """One sweep's settings.

    classes: the columns (labels 0..K-1); scales: the guided rows, in order; seed: every row's
    CPU generator is seeded with it (same noise down each column); unconditional_row: add a
    first row sampled with no label.
    """

    sampler: SamplerConfig
    classes: tuple[int, ...]
    scales: tuple[float, ...] = DEFAULT_SCALES
    seed: int = 0
    unconditional_row: bool = True


@dataclass(frozen=True)
class SweepProgress:
    """Where a sweep is: run `run` of `runs` (1-based, one per row), its step `step` of
    `steps` (frames: sampler steps + the final sample); `title`: the row being sampled."""

    run: int
    runs: int
    step: int
    steps: int
    title: str

    @property
    def fraction(self) -> float:
        return ((self.run - 1) * self.steps + self.step) / (self.runs * self.steps)


@dataclass(frozen=True)
class GuidanceSweep:
    """A finished sweep.

    samples: float32 (rows, cols, C, H, W) in [-1, 1] (clipped by the sampler or not);
    scales: each row's guidance scale, None for the unconditional row; classes: each
    column's label; row_titles / column_titles: the grid's captions; description: the
    sampler and seed ("DDIM, 50 steps, seed 0").
    """

    samples: np.ndarray
    scales: tuple[float | None, ...]
    classes: tuple[int, ...]
    row_titles: tuple[str, ...]
    column_titles: tuple[str, ...]
    description: str


def parse_scales(text: str) -> tuple[float, ...]:
    """'0, 1, 2, 4, 8' -> (0.0, 1.0, 2.0, 4.0, 8.0); ConfigError with the reason otherwise."""
    parts = [p for p in re.split(r"[,\s;]+", text.strip()) if p]
    if not parts:
        raise ConfigError("give at least one guidance scale, e.g. 0, 1, 2, 4, 8")
    scales = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(
                f"'{part}' is not a number: give guidance scales separated by commas, "
                "e.g. 0, 1, 2, 4, 8"
            ) from None
        scales.append(check_guidance_scale(value))
    if len(scales) > MAX_SCALES:
        raise ConfigError(f"at most {MAX_SCALES} guidance scales, got {len(scales)}")
    return tuple(scales)


def parse_classes(text: str, count: int) -> tuple[int, ...]:
    """'all' or '' -> every class 0..count-1; '0, 3, 7' -> (0, 3, 7); ConfigError otherwise."""
    if count < 1:
        raise ConfigError("this model is not class-conditional: it takes no class label")
    parts = [p for p in re.split(r"[,\s;]+", text.strip()) if p]
    if not parts or (len(parts) == 1 and parts[0].lower() == "all"):
        return tuple(range(count))
    classes = []
    for part in parts:
        if not re.fullmatch(r"\d+", part) or int(part) >= count:
            raise ConfigError(
                f"'{part}' is not a class: give labels from 0 to {count - 1} separated by "
                "commas, or 'all'"
            )
        classes.append(int(part))
    return tuple(classes)


def row_title(scale: float | None) -> str:
    """'no label', 's = 0', 's = 1 (no guidance)', 's = 4'."""
    if scale is None:
        return NO_LABEL_TITLE
    return f"s = {scale:g}" + (" (no guidance)" if scale == 1.0 else "")


def column_title(ckpt: Checkpoint, label: int) -> str:
    """'7' for the built-in digits, 'class 7' otherwise."""
    digits = is_builtin_digits(str((ckpt.data or {}).get("name")))
    return str(label) if digits else f"class {label}"


def sweep_classes(ckpt: Checkpoint) -> int:
    """The model's number of classes K; ConfigError unless it is a class-conditional image
    model (the only kind a sweep can show)."""
    count = int(getattr(ckpt.model_config, "num_classes", 0) or 0)
    if count < 1 or ckpt.is_points:
        raise ConfigError(
            "a guidance sweep needs a class-conditional image model (trained with class "
            "labels, such as the pretrained digits); this model is unconditional"
        )
    return count


def check_sweep(ckpt: Checkpoint, request: SweepRequest) -> int:
    """Refuse what cannot be swept (ConfigError with the reason); returns the model's K."""
    count = sweep_classes(ckpt)
    if not request.classes:
        raise ConfigError("choose at least one class for the guidance sweep")
    for label in request.classes:
        class_labels(count, 1, label)  # ConfigError for a label out of 0..K-1
    if not request.scales:
        raise ConfigError("give at least one guidance scale, e.g. 0, 1, 2, 4, 8")
    if len(request.scales) > MAX_SCALES:
        raise ConfigError(f"at most {MAX_SCALES} guidance scales, got {len(request.scales)}")
    for scale in request.scales:
        check_guidance_scale(scale)
    return count


def run_guidance_sweep(
    ckpt: Checkpoint, request: SweepRequest, device: str | torch.device = "cpu"
) -> Iterator[SweepProgress | GuidanceSweep]:
    """Sample the sweep one row (one `sample` run) at a time: a SweepProgress after every
    step of every run (a caller stops between them to cancel), then the GuidanceSweep.
    ConfigError before any step for a refused request (`check_sweep`)."""
    check_sweep(ckpt, request)
    schedule = forward_path(ckpt.objective, ckpt.schedule_config)  # a FlowPath for flow
    make_sampler(request.sampler, schedule, ckpt.prediction_type)  # refuse bad settings now
    model = build_model_from_checkpoint(ckpt, device)
    rows: list[float | None] = [None] if request.unconditional_row else []
    rows += [float(s) for s in request.scales]
    labels = torch.tensor(request.classes, dtype=torch.long)
    out = []
    for run, scale in enumerate(rows, start=1):
        sampler = make_sampler(request.sampler, schedule, ckpt.prediction_type)
        steps = len(sampling_timesteps(sampler, None)) + 1
        frames = sample(
            model,
            schedule,
            sampler,
            len(request.classes),
            ckpt.sample_shape,
            torch.Generator().manual_seed(request.seed),
            device,
            labels=None if scale is None else labels,
            guidance_scale=1.0 if scale is None else scale,
        )
        final = None
        for frame in frames:
            final = frame.x_t
            yield SweepProgress(run, len(rows), frame.step + 1, steps, row_title(scale))
        assert final is not None
        out.append(final.numpy().astype(np.float32))
    yield GuidanceSweep(
        samples=np.stack(out),
        scales=tuple(rows),
        classes=tuple(request.classes),
        row_titles=tuple(row_title(s) for s in rows),
        column_titles=tuple(column_title(ckpt, k) for k in request.classes),
        description=f"{request.sampler.summary()}, seed {request.seed}",
    )


def guidance_sweep(
    ckpt: Checkpoint, request: SweepRequest, device: str | torch.device = "cpu"
) -> GuidanceSweep:
    """`run_guidance_sweep` to the end: the finished sweep."""
    for record in run_guidance_sweep(ckpt, request, device):
        if isinstance(record, GuidanceSweep):
            return record
    raise AssertionError("run_guidance_sweep ended without its result")


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 1|3|4) -> (..., H, W, 3)."""
    return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels[..., :3]


def column_header(titles: tuple[str, ...], cell_width: int, gap: int) -> np.ndarray:
    """The column titles, each centred over its column, uint8 (band, W, 3), for a grid of
    columns `cell_width` wide (widened to the widest title) `gap` pixels apart (make_grid's
    padding). The font is the captions' (Pillow's default) at about a third of a cell."""
    size = int(min(CAPTION_MAX_PX, max(CAPTION_MIN_PX, cell_width // 3)))
    font = caption_font(size)
    pad = max(2, size // 5)
    boxes = [ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), t, font=font) for t in titles]
    width = max([cell_width] + [right - left + 2 * pad for left, _, right, _ in boxes])
    ascent, descent = font.getmetrics()
    band = Image.new("L", (len(titles) * (width + gap) + gap, ascent + descent + 2 * pad), 255)
    draw = ImageDraw.Draw(band)
    for j, (title, (left, _, right, _)) in enumerate(zip(titles, boxes)):
        x = gap + j * (width + gap) + (width - (right - left)) // 2 - left
        draw.text((x, pad), title, fill=0, font=font)
    return np.repeat(np.asarray(band)[..., None], 3, axis=2)


def render_sweep(sweep: GuidanceSweep, cell_px: int = CELL_PX) -> np.ndarray:
    """The sweep as one picture, uint8 (H', W', 3): the description on top, the column
    titles, then each row of cells under its title. Cells are upscaled (nearest) by
    max(1, cell_px // their longest side)."""
    rows, cols = sweep.samples.shape[:2]
    pixels = _rgb(to_uint8_images(sweep.samples.reshape(rows * cols, *sweep.samples.shape[2:])))
    scale = max(1, cell_px // max(pixels.shape[1:3]))
    cells = [upscale_nearest(p, scale) for p in pixels]
    header = column_header(sweep.column_titles, cells[0].shape[1], CELL_GAP_PX)
    width = (header.shape[1] - CELL_GAP_PX) // cols - CELL_GAP_PX  # a wide title widens cells
    grids = []
    for r in range(rows):
        row = [pad_to_width(c, width) for c in cells[r * cols : (r + 1) * cols]]
        grids.append(make_grid(np.stack(row), cols, CELL_GAP_PX, 255))
    # every piece padded on the right to the widest captioned row, so none is re-centred
    widest = max(caption_frame(g, t).shape[1] for g, t in zip(grids, sweep.row_titles))
    pieces = [_pad_right(header, widest)]
    pieces += [caption_frame(_pad_right(g, widest), t) for g, t in zip(grids, sweep.row_titles)]
    return caption_frame(np.concatenate(pieces, axis=0), sweep.description)


def _pad_right(image: np.ndarray, width: int) -> np.ndarray:
    """White columns on the right of (H, W, 3) up to `width`."""
    extra = width - image.shape[1]
    if extra <= 0:
        return image
    return np.pad(image, [(0, 0), (0, extra), (0, 0)], constant_values=255)


def save_sweep_png(
    path: str | os.PathLike[str], sweep: GuidanceSweep, cell_px: int = CELL_PX
) -> Path:
    """Write `render_sweep(sweep)` as a PNG. Returns the path."""
    return save_png(path, render_sweep(sweep, cell_px))
