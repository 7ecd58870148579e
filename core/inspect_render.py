"""The timestep inspector's row of panels as one picture (the PNG export of core.inspect).

Panels, left to right: x_t, the true noise, the predicted noise, the predicted x_0 and a
heatmap of the x_0 error, each captioned, under a title with t and the numbers. Images are
shown in [-1, 1] (black..white, clipped), noise as eps / NOISE_SIGMAS (so +-3 sigma spans
black..white), the error as |pred_x0 - x_0| (root of the channel-mean squared error) on a
black-red-yellow-white ramp that saturates at ERROR_MAX, the same scale at every t.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from diffusion_studio.core.export import (
    caption_frame,
    make_grid,
    pad_to_width,
    save_png,
    to_uint8_images,
    upscale_nearest,
)
from diffusion_studio.core.inspect import InspectRecord

NOISE_SIGMAS = 3.0  # noise panels show eps / 3: +-3 standard deviations fill black..white
ERROR_MAX = 1.0  # an x_0 error of 1 (half the [-1, 1] range) or more is white in the heatmap
PANEL_PX = 128  # panels are upscaled (nearest) by whole factors to about this size
PANEL_GAP_PX = 4  # white pixels between panels
PANEL_CAPTIONS = ("x_t", "true noise", "predicted noise", "predicted x0", "x0 error")


def error_heatmap(error_map: np.ndarray, error_max: float = ERROR_MAX) -> np.ndarray:
    """A squared-error map (H, W) -> uint8 (H, W, 3): v = min(sqrt(err) / error_max, 1) on the
    "hot" ramp red = 3v, green = 3v - 1, blue = 3v - 2 (each clipped to [0, 1])."""
    v = np.clip(
        np.sqrt(np.maximum(np.nan_to_num(error_map, nan=0.0, posinf=4.0), 0)) / error_max, 0, 1
    )
    ramp = np.stack([np.clip(3 * v - k, 0.0, 1.0) for k in (0, 1, 2)], axis=-1)
    return np.rint(ramp * 255).astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    """A float (C, H, W) in [-1, 1] -> uint8 (H, W, 3) (grey repeated)."""
    pixels = to_uint8_images(image)
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[..., :3]


def panel_pictures(record: InspectRecord) -> list[np.ndarray]:
    """The five panels (`PANEL_CAPTIONS`) at the model's resolution, uint8 (H, W, 3) each."""
    return [
        _rgb(record.x_t),
        _rgb(record.noise / NOISE_SIGMAS),
        _rgb(record.pred_noise / NOISE_SIGMAS),
        _rgb(record.pred_x0),
        error_heatmap(record.error_map),
    ]


def row_title(record: InspectRecord) -> str:
    """The row's title: t (a flow model's time and index), log-SNR, the loss (and its
    parametrisation: "velocity" for flow) and the two MSEs."""
    label = "" if record.label is None else f"   label {record.label}"
    # a flow model's time t in [0, 1], with the index it stands at
    when = f"t = {record.t}" if record.time is None else f"t = {record.time:.4g} (k = {record.t})"
    return (
        f"{when}   log-SNR {record.log_snr:.2f}   loss ({record.prediction_type}) "
        f"{record.loss:.4g}   x0 MSE {record.x0_mse:.4g}   eps MSE {record.eps_mse:.4g}{label}"
    )


def render_row(record: InspectRecord, panel_px: int = PANEL_PX) -> np.ndarray:
    """The captioned row of panels under its title, uint8 (H', W', 3). Each panel is upscaled
    by max(1, panel_px // its longest side)."""
    pictures = panel_pictures(record)
    scale = max(1, panel_px // max(pictures[0].shape[:2]))
    framed = [
        caption_frame(upscale_nearest(picture, scale), caption)
        for picture, caption in zip(pictures, PANEL_CAPTIONS)
    ]
    width = max(frame.shape[1] for frame in framed)  # a wide caption widened its panel
    row = make_grid(
        np.stack([pad_to_width(frame, width) for frame in framed]),
        ncols=len(framed),
        padding=PANEL_GAP_PX,
        pad_value=255,
    )
    return caption_frame(row, row_title(record))


def save_row_png(path: str | os.PathLike[str], record: InspectRecord) -> Path:
    """Write `render_row(record)` as a PNG. Returns the path."""
    return save_png(path, render_row(record))
