"""`train --data FOLDER` names the files it skipped, in one line, before training."""

from __future__ import annotations

import numpy as np
from PIL import Image

from diffusion_studio.app.cli import skipped_summary
from diffusion_studio.core.checkpoint import load_checkpoint
from tests.cli.test_cli import run


def test_train_on_a_folder_names_the_skipped_files_in_one_line(tmp_path):
    """Three good 8x8 images and seven files that cannot be loaded (an empty file and six text
    files named .png): one line names five of them with their reason and counts the rest, and
    the run trains on the three good images."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"good{i}.png")
    (folder / "a_empty.png").write_bytes(b"")
    for i in range(6):
        (folder / f"b_text{i}.png").write_text("not an image")
    result = run(
        "train",
        "--data",
        str(folder),
        "--image-size",
        "8",
        "--channels",
        "1",
        "--model-size",
        "small",
        "--steps",
        "1",
        "--out",
        "m.safetensors",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert lines == [
        "skipped 7 of 10 files: a_empty.png (an empty file), "
        "b_text0.png (not an image Pillow can read), b_text1.png (not an image Pillow can read), "
        "b_text2.png (not an image Pillow can read), b_text3.png (not an image Pillow can read), "
        "and 2 more"
    ], result.stderr
    training_on = next(
        i for i, line in enumerate(result.stderr.splitlines()) if "training on" in line
    )
    assert result.stderr.splitlines().index(lines[0]) == training_on + 1  # before any step
    assert load_checkpoint(tmp_path / "m.safetensors").training["step"] == 1


def test_train_on_a_clean_folder_prints_no_skipped_line(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    result = run(
        "train", "--data", str(folder), "--image-size", "8", "--model-size", "small",
        "--steps", "1", "--out", "m.safetensors", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stderr


def test_skipped_summary_shortens_reasons_and_counts_the_rest():
    lines = [
        "/d/x.png: image '/d/x.png' is truncated or corrupt (broken data stream). Re-export it.",
        "/d/y.png: '/d/y.png' is not an image Pillow can read (unknown format). Choose a PNG.",
    ]
    assert skipped_summary(lines, 118) == (
        "skipped 2 of 120 files: x.png (truncated or corrupt), y.png (not an image Pillow can read)"
    )
    many = [f"/d/{i}.png: image '/d/{i}.png' is an empty file (0 bytes)." for i in range(12)]
    text = skipped_summary(many, 0)
    assert text.startswith("skipped 12 of 12 files: 0.png (an empty file), 1.png")
    assert text.count("(an empty file)") == 5 and text.endswith(", and 7 more")
