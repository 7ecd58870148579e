"""Draw the application icon: `resources/icons/diffusion-studio.svg` and PNGs at every size.

The icon is the reverse process in one picture: a grid of cells that starts as scattered grey
dots of random size and brightness (noise, top left) and settles, cell by cell along the
diagonal, into even squares that make a smooth warm "sun" gradient (the image, bottom right).

The SVG and the PNGs come from the same list of shapes, so they agree. The PNGs are drawn with
Pillow (4x supersampled, then area-averaged down), so no SVG rasterizer is needed. The files are
committed; run this again only after changing the design:

    .venv/bin/python packaging/make_icons.py
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ICON_NAME = "diffusion-studio"
SIZES = (16, 32, 48, 64, 128, 256, 512)
CANVAS = 512  # design units (the SVG viewBox)
GRID = 8  # cells per side
MARGIN = 64  # from the canvas edge to the grid
GAP = 5  # between cells
BG_INSET = 16  # the rounded background square leaves this much transparent edge
BG_RADIUS = 104
BG_TOP = (27, 31, 64)  # vertical gradient of the background
BG_BOTTOM = (47, 22, 79)
SEED = 7

OUT_DIR = Path(__file__).resolve().parent.parent / "resources" / "icons"


@dataclass(frozen=True)
class Cell:
    """One rounded square (a circle when radius = size / 2), in design units."""

    x: float
    y: float
    size: float
    radius: float
    color: tuple[int, int, int]


def _smoothstep(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3.0 - 2.0 * u)


def _lerp(a: float, b: float, w: float) -> float:
    return a + (b - a) * w


def _image_color(u: float, v: float) -> tuple[float, float, float]:
    """The clean picture at (u, v) in [0, 1]^2: a warm sun low right, fading to violet-blue."""
    d = math.hypot(u - 0.72, v - 0.70) / 0.95
    stops = [  # (distance, colour)
        (0.00, (255, 236, 140)),
        (0.25, (255, 170, 70)),
        (0.55, (232, 82, 120)),
        (0.85, (120, 70, 190)),
        (1.20, (60, 80, 200)),
    ]
    for (d0, c0), (d1, c1) in zip(stops, stops[1:]):
        if d <= d1:
            w = (max(d, d0) - d0) / (d1 - d0)
            return tuple(_lerp(a, b, w) for a, b in zip(c0, c1))  # type: ignore[return-value]
    return stops[-1][1]


def icon_cells() -> list[Cell]:
    """The grid, noise at the top left turning into the picture at the bottom right."""
    rng = random.Random(SEED)
    pitch = (CANVAS - 2 * MARGIN) / GRID
    full = pitch - GAP
    cells = []
    for row in range(GRID):
        for col in range(GRID):
            # progress of the reverse process along the diagonal: 0 = noise, 1 = image
            w = _smoothstep((row + col) / (2 * (GRID - 1)) * 1.5 - 0.2)
            grey = rng.uniform(40, 235)
            noise_size = full * rng.uniform(0.25, 0.7)
            dx, dy = (rng.uniform(-1, 1) * (full - noise_size) / 2 for _ in range(2))
            u, v = (col + 0.5) / GRID, (row + 0.5) / GRID
            target = _image_color(u, v)
            color = tuple(int(round(_lerp(grey, c, w))) for c in target)
            size = _lerp(noise_size, full, w)
            radius = _lerp(size / 2, full * 0.22, w)
            cx = MARGIN + col * pitch + GAP / 2 + full / 2 + _lerp(dx, 0.0, w)
            cy = MARGIN + row * pitch + GAP / 2 + full / 2 + _lerp(dy, 0.0, w)
            cells.append(Cell(cx - size / 2, cy - size / 2, size, radius, color))  # type: ignore[arg-type]
    return cells


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


def svg_text() -> str:
    """The icon as SVG 1.1 text (viewBox 0 0 512 512)."""
    bg_size = CANVAS - 2 * BG_INSET
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CANVAS}" height="{CANVAS}" '
        f'viewBox="0 0 {CANVAS} {CANVAS}">',
        "  <title>Diffusion Studio</title>",
        "  <defs>",
        '    <linearGradient id="bg" x1="0" y1="0" x2="0" y2="1">',
        f'      <stop offset="0" stop-color="{_hex(BG_TOP)}"/>',
        f'      <stop offset="1" stop-color="{_hex(BG_BOTTOM)}"/>',
        "    </linearGradient>",
        "  </defs>",
        f'  <rect x="{BG_INSET}" y="{BG_INSET}" width="{bg_size}" height="{bg_size}" '
        f'rx="{BG_RADIUS}" fill="url(#bg)"/>',
    ]
    for c in icon_cells():
        lines.append(
            f'  <rect x="{c.x:.2f}" y="{c.y:.2f}" width="{c.size:.2f}" height="{c.size:.2f}" '
            f'rx="{c.radius:.2f}" fill="{_hex(c.color)}"/>'
        )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def render_png(size: int, supersample: int = 4) -> Image.Image:
    """The icon as an RGBA image of size x size pixels."""
    big = size * supersample
    scale = big / CANVAS
    # background: vertical gradient, cut out by the rounded square
    t = np.linspace(0.0, 1.0, big, dtype=np.float32)[:, None, None]
    gradient = (1 - t) * np.array(BG_TOP, np.float32) + t * np.array(BG_BOTTOM, np.float32)
    rgb = np.broadcast_to(gradient, (big, big, 3)).astype(np.uint8)
    mask = Image.new("L", (big, big), 0)
    inset, end = BG_INSET * scale, (CANVAS - BG_INSET) * scale - 1
    ImageDraw.Draw(mask).rounded_rectangle(
        (inset, inset, end, end), radius=BG_RADIUS * scale, fill=255
    )
    image = Image.fromarray(rgb, "RGB").convert("RGBA")
    image.putalpha(mask)
    draw = ImageDraw.Draw(image)
    for c in icon_cells():
        box = (c.x * scale, c.y * scale, (c.x + c.size) * scale - 1, (c.y + c.size) * scale - 1)
        draw.rounded_rectangle(box, radius=c.radius * scale, fill=(*c.color, 255))
    return image.resize((size, size), Image.Resampling.BOX)  # area average: no ringing


def main(out_dir: Path = OUT_DIR) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{ICON_NAME}.svg").write_text(svg_text(), encoding="utf-8")
    for size in SIZES:
        render_png(size).save(out_dir / f"{ICON_NAME}-{size}.png", optimize=True)
    print(f"wrote {ICON_NAME}.svg and {len(SIZES)} PNGs to {out_dir}")


if __name__ == "__main__":
    main()
