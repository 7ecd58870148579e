"""Tests for core.export: uint8 conversion, grids, PNG, GIF, CSV, point pictures, atomic writes."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_studio.core import export
from diffusion_studio.core.errors import ExportError


def _gif_frames(path: Path) -> tuple[list[np.ndarray], list[int], dict]:
    """All frames of a GIF as RGB arrays, their durations in ms, and the file's info."""
    with Image.open(path) as im:
        info = dict(im.info)
        frames, durations = [], []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
            durations.append(im.info["duration"])
    return frames, durations, info


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- arrays


def test_to_uint8_images_values_and_layout() -> None:
    x = np.array([[[-1.0, 0.0, 1.0], [2.0, -3.0, np.nan]]], dtype=np.float32)  # (1, 2, 3)
    out = export.to_uint8_images(x)
    assert out.shape == (2, 3, 1) and out.dtype == np.uint8
    assert out[..., 0].tolist() == [[0, 128, 255], [255, 0, 128]]

    batch = torch.linspace(-1, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    as_uint8 = export.to_uint8_images(batch)
    assert as_uint8.shape == (2, 4, 5, 3)
    expected = np.rint((batch.numpy() + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(as_uint8, expected)
    with pytest.raises(ExportError):
        export.to_uint8_images(np.zeros((4, 4)))


def test_make_grid_geometry() -> None:
    images = np.stack([np.full((4, 6, 1), 10 * (i + 1), dtype=np.uint8) for i in range(5)])
    grid = export.make_grid(images, ncols=3, padding=2, pad_value=7)
    assert grid.shape == (2 * (4 + 2) + 2, 3 * (6 + 2) + 2, 1)
    for i in range(5):
        top, left = 2 + (i // 3) * 6, 2 + (i % 3) * 8
        assert np.all(grid[top : top + 4, left : left + 6] == 10 * (i + 1))
    assert np.all(grid[:2] == 7) and np.all(grid[:, :2] == 7)
    assert np.all(grid[8:12, 18:24] == 7)  # the empty sixth cell
    assert export.make_grid(images).shape == (14, 26, 1)  # default ncols = ceil(sqrt(5)) = 3
    assert export.make_grid(images[:2, ..., 0], ncols=10, padding=0).shape == (4, 12, 1)
    with pytest.raises(ExportError):
        export.make_grid(images.astype(np.float32))


def test_upscale_nearest() -> None:
    img = np.arange(6, dtype=np.uint8).reshape(2, 3)
    big = export.upscale_nearest(img, 3)
    assert big.shape == (6, 9)
    assert big[0:3, 3:6].tolist() == [[1] * 3] * 3
    assert export.upscale_nearest(np.zeros((2, 3, 3), np.uint8), 2).shape == (4, 6, 3)
    with pytest.raises(ExportError):
        export.upscale_nearest(img, 0)


def test_select_frame_indices() -> None:
    idx = export.select_frame_indices(1000, 5)
    assert idx.tolist() == [0, 250, 500, 749, 999]
    for total in (2, 7, 50, 1001):
        for count in (2, 3, 10, 49):
            got = export.select_frame_indices(total, count)
            assert got[0] == 0 and got[-1] == total - 1
            assert len(got) == min(total, count) and np.all(np.diff(got) > 0)
    assert export.select_frame_indices(3, 10).tolist() == [0, 1, 2]
    assert export.select_frame_indices(10, 1).tolist() == [9]
    with pytest.raises(ExportError):
        export.select_frame_indices(0, 3)


# ----------------------------------------------------------------------------- PNG


def test_save_png_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    path = export.save_png(tmp_path / "rgb.png", rgb)
    assert path == tmp_path / "rgb.png"
    with Image.open(path) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), rgb)
    grey = rng.integers(0, 256, (5, 4, 1), dtype=np.uint8)
    export.save_png(tmp_path / "grey.png", grey)
    with Image.open(tmp_path / "grey.png") as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), grey[..., 0])
    assert _leftovers(tmp_path) == []
    with pytest.raises(ExportError, match="uint8"):
        export.save_png(tmp_path / "bad.png", rgb.astype(np.float32))


def test_png_grid_file_geometry(tmp_path: Path) -> None:
    x = torch.zeros(6, 1, 8, 8)
    grid = export.make_grid(export.to_uint8_images(x), ncols=3, padding=1, pad_value=255)
    export.save_png(tmp_path / "grid.png", grid)
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size == (3 * 9 + 1, 2 * 9 + 1)


def test_save_png_frames(tmp_path: Path) -> None:
    frames = [np.full((4, 4, 3), i * 20, dtype=np.uint8) for i in range(12)]
    paths = export.save_png_frames(tmp_path / "frames", frames, prefix="step")
    assert [p.name for p in paths[:2]] == ["step_0000.png", "step_0001.png"]
    assert len(paths) == 12 and all(p.is_file() for p in paths)
    with Image.open(paths[5]) as im:
        assert np.asarray(im)[0, 0].tolist() == [100, 100, 100]
    with pytest.raises(ExportError):
        export.save_png_frames(tmp_path / "frames", [])


# ----------------------------------------------------------------------------- GIF


def test_save_gif_grey_round_trip_durations_and_scale(tmp_path: Path) -> None:
    frames = [np.full((5, 6), 40 * i, dtype=np.uint8) for i in range(6)]
    frames[0][0, 0] = 255
    path = tmp_path / "grey.gif"
    written = export.save_gif(path, frames, fps=20, scale=3, hold_last_s=1.5)
    assert written == 6
    got, durations, info = _gif_frames(path)
    assert len(got) == 6
    assert got[0].shape == (15, 18, 3)
    assert durations == [50, 50, 50, 50, 50, 1500]
    assert info["loop"] == 0
    for frame, expected in zip(got, frames):
        np.testing.assert_array_equal(frame[::3, ::3, 0], expected)
        np.testing.assert_array_equal(frame[1::3, 2::3, 1], expected)


def test_save_gif_rgb_round_trip_and_no_loop(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    colours = rng.integers(0, 256, (40, 3), dtype=np.uint8)  # < 256 colours: exact round trip
    frames = [colours[rng.integers(0, 40, (8, 8))] for _ in range(4)]
    path = tmp_path / "rgb.gif"
    assert export.save_gif(path, frames, fps=4, loop=False, hold_last_s=0) == 4
    got, durations, info = _gif_frames(path)
    assert "loop" not in info
    assert durations == [250, 250, 250, 250]  # the hold is never shorter than a frame
    for frame, expected in zip(got, frames):
        np.testing.assert_array_equal(frame, expected)


def test_save_gif_merges_identical_frames_and_keeps_total_time(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = np.full((4, 4, 3), 200, dtype=np.uint8)
    frames = [a, b, b, b, a, a]
    path = tmp_path / "merged.gif"
    written = export.save_gif(path, frames, fps=10, hold_last_s=1.0)
    got, durations, _ = _gif_frames(path)
    assert written == len(got) == 3
    # 1 frame of a, 3 of b, then a + the 1 s hold on the last (merged) frame.
    assert durations == [100, 300, 100 + 1000]
    assert sum(durations) == 5 * 100 + 1000
    single = tmp_path / "single.gif"
    assert export.save_gif(single, [a, a, a], fps=10, hold_last_s=0) == 1
    with Image.open(single) as im:
        assert getattr(im, "n_frames", 1) == 1 and im.info["duration"] == 300


def test_save_gif_frame_durations_are_rounded_to_centiseconds(tmp_path: Path) -> None:
    frames = [np.full((2, 2), v, dtype=np.uint8) for v in (0, 100, 200)]
    path = tmp_path / "fps.gif"
    export.save_gif(path, frames, fps=30, hold_last_s=0)
    assert _gif_frames(path)[1] == [30, 30, 30]  # 100/30 = 3.33 cs -> 3 cs
    export.save_gif(path, frames, fps=1000, hold_last_s=0)
    assert _gif_frames(path)[1] == [20, 20, 20]  # at least 2 cs


def test_save_gif_refusals(tmp_path: Path) -> None:
    frame = np.zeros((4, 4), dtype=np.uint8)
    path = tmp_path / "x.gif"
    with pytest.raises(ExportError, match="no frames"):
        export.save_gif(path, [])
    for fps in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ExportError, match="frame rate"):
            export.save_gif(path, [frame], fps=fps)
    with pytest.raises(ExportError, match="same size"):
        export.save_gif(path, [frame, np.zeros((5, 4), dtype=np.uint8)])
    with pytest.raises(ExportError):
        export.save_gif(path, [frame], scale=0)
    assert not path.exists() and _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- CSV


def test_save_csv_round_trip(tmp_path: Path) -> None:
    steps = np.arange(5)
    loss64 = np.array([1.0, 0.5, 1 / 3, 1e-8, 2.5e10])
    loss32 = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float32)
    path = export.save_csv(tmp_path / "loss.csv", {"step": steps, "loss": loss64, "l32": loss32})
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "loss", "l32"]
    assert len(rows) == 6
    assert [int(r[0]) for r in rows[1:]] == steps.tolist()
    assert [float(r[1]) for r in rows[1:]] == loss64.tolist()
    assert [r[2] for r in rows[1:]] == ["0.1", "0.2", "0.3", "0.4", "0.5"]
    assert _leftovers(tmp_path) == []


def test_save_csv_refusals(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="equal lengths"):
        export.save_csv(tmp_path / "a.csv", {"a": [1, 2], "b": [1]})
    with pytest.raises(ExportError, match="1-D"):
        export.save_csv(tmp_path / "a.csv", {"a": np.zeros((2, 2))})
    with pytest.raises(ExportError, match="no columns"):
        export.save_csv(tmp_path / "a.csv", {})
    assert not (tmp_path / "a.csv").exists()


# ----------------------------------------------------------------------------- points


def test_render_points() -> None:
    white, blue = (255, 255, 255), (31, 119, 180)
    pts = np.array([[0.0, 0.0], [0.0, 2.4], [5.0, 0.0], [np.nan, 0.0]])
    img = export.render_points(pts, size=100, extent=2.5, dot=1)
    assert img.shape == (100, 100, 3) and img.dtype == np.uint8
    assert img[50, 50].tolist() == list(blue)  # the origin is the centre
    assert img[2, 50].tolist() == list(blue)  # y points up: y = 2.4 is near the top row
    coloured = np.argwhere(np.any(img != white, axis=2))
    assert len(coloured) == 2  # the point outside the extent and the NaN are left out

    trails = np.array([[[-1.0, -1.0]], [[-0.5, -0.5]]])
    with_trails = export.render_points(torch.tensor([[1.0, 1.0]]), size=100, trails=trails, dot=2)
    newest_trail = with_trails[60, 40]  # (-0.5, -0.5)
    oldest_trail = with_trails[70, 30]  # (-1, -1)
    assert np.all(newest_trail < np.array(white)) and np.all(newest_trail > np.array(blue) - 1)
    assert np.all(oldest_trail > newest_trail - 1) and np.any(oldest_trail > newest_trail)
    assert with_trails[30, 70].tolist() == list(blue)
    with pytest.raises(ExportError):
        export.render_points(np.zeros((4, 3)))
    with pytest.raises(ExportError):
        export.render_points(np.zeros((4, 2)), trails=np.zeros((4, 2)))


# ----------------------------------------------------------------------------- atomic writes


def test_failed_replace_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "curve.csv"
    export.save_csv(path, {"x": [1, 2, 3]})
    before = path.read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ExportError, match="No space left") as info:
        export.save_csv(path, {"x": [4, 5, 6]})
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_overwrite_keeps_permissions(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    export.save_png(path, np.zeros((2, 2), np.uint8))
    assert (path.stat().st_mode & 0o777) == 0o644
    path.chmod(0o600)
    export.save_png(path, np.ones((2, 2), np.uint8))
    assert (path.stat().st_mode & 0o777) == 0o600


def test_unwritable_paths_raise_export_error(tmp_path: Path) -> None:
    image = np.zeros((2, 2), np.uint8)
    missing = tmp_path / "no_such_folder" / "a.png"
    with pytest.raises(ExportError, match="does not exist") as info:
        export.save_png(missing, image)
    assert str(missing) in str(info.value)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ExportError):
        export.save_gif(a_file / "a.gif", [image])
    with pytest.raises(ExportError, match="is a folder"):
        export.save_csv(tmp_path, {"a": [1]})
    with pytest.raises(ExportError):
        export.save_png_frames(tmp_path / "missing" / "frames", [image])


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write to read-only folders"
)
def test_read_only_folder_raises_export_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ExportError) as info:
            export.save_png(folder / "a.png", np.zeros((2, 2), np.uint8))
        assert str(folder / "a.png") in str(info.value)
    finally:
        folder.chmod(0o700)


# ----------------------------------------------------------------------------- captions


def test_captions_name_t_in_each_process() -> None:
    assert export.forward_caption(0) == "x_0 (clean)"  # display step 0: the clean image
    assert export.forward_caption(438) == "t = 437"  # display step k: timestep index k - 1
    assert export.reverse_caption(437) == "t = 437"
    assert export.reverse_caption(-1) == "x_0 (final)"
    # on a flow path the index k is shown as its time t = (k + 1) / T
    from diffusion_studio.core.flow import FlowPath
    from diffusion_studio.core.schedule import NoiseSchedule

    assert export.reverse_caption(499, FlowPath(1000)) == "t = 0.500"
    assert export.reverse_caption(-1, FlowPath(1000)) == "x_0 (final)"
    assert export.reverse_caption(437, NoiseSchedule()) == "t = 437"


def test_caption_frame_writes_legible_text_above_the_frame() -> None:
    digit = np.full((28 * 4, 28 * 4), 0, dtype=np.uint8)  # a 28x28 digit upscaled 4x
    out = export.caption_frame(digit, "t = 437")
    band = out.shape[0] - digit.shape[0]
    np.testing.assert_array_equal(out[band:], digit)  # the picture itself is untouched
    text = out[:band] < 128
    rows, cols = np.nonzero(text)
    assert 9 <= rows.max() - rows.min() + 1 <= band  # digits at least 9 px tall
    assert cols.max() - cols.min() > 30  # "t = 437", not a dot
    other = export.caption_frame(digit, "x_0 (final)")
    assert other.shape == out.shape  # one band height for every caption of a size
    assert not np.array_equal(out[:band], other[:band])  # the text is drawn, not a fixed band
    rgb = export.caption_frame(np.zeros((8, 8, 3), np.uint8), "x_0 (final)")
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[1] > 8  # widened for its text


def test_save_gif_with_captions_scales_first_then_writes_t(tmp_path: Path) -> None:
    frames = [np.full((28, 28), v, np.uint8) for v in (0, 128, 255)]
    captions = ["t = 999", "t = 500", "x_0 (final)"]
    path = tmp_path / "captioned.gif"
    assert export.save_gif(path, frames, fps=10, scale=4, captions=captions) == 3
    expected = export.caption_frames(frames, captions, scale=4)
    with Image.open(path) as gif:
        assert gif.size == (expected[0].shape[1], expected[0].shape[0])
        for i, picture in enumerate(expected):
            gif.seek(i)
            np.testing.assert_array_equal(np.asarray(gif.convert("L")), picture)
    with pytest.raises(ExportError, match="2 captions for 3 frames"):
        export.save_gif(path, frames, captions=captions[:2])


def _trajectory(points: bool):
    """A 4-frame run (t = 30, 20, 10, final) whose x_t is step/4 and x_0 prediction -x_t."""
    from diffusion_studio.core.sampling import Frame, Trajectory

    trajectory = Trajectory()
    for step, t in enumerate([30, 20, 10, -1]):
        x = torch.full((3, 2) if points else (3, 1, 4, 4), step / 4.0)
        x[0] = 0.9  # sample 0 stays bright in x_t
        trajectory.append(Frame(step, t, x, -x))
    return trajectory


def test_reverse_pictures_views_of_images() -> None:
    trajectory = _trajectory(points=False)
    xt, captions = export.reverse_pictures(trajectory, [0, 3], "xt", padding=1, pad_value=255)
    assert captions == ["t = 30", "x_0 (final)"]
    expected = export.make_grid(trajectory.x_t(3), padding=1, pad_value=255)
    np.testing.assert_array_equal(xt[1], expected)
    x0, _ = export.reverse_pictures(trajectory, [3], "x0")
    np.testing.assert_array_equal(x0[0], export.make_grid(trajectory.pred_x0(3)))
    both, _ = export.reverse_pictures(trajectory, [3], "both")
    grid = export.make_grid(trajectory.x_t(3))
    assert both[0].shape == (grid.shape[0], 2 * grid.shape[1] + export.VIEW_GAP_PX, 1)
    np.testing.assert_array_equal(both[0][:, : grid.shape[1]], grid)
    np.testing.assert_array_equal(both[0][:, -grid.shape[1] :], x0[0])
    # one sample, x_t | x_0 prediction, upscaled
    pair, _ = export.reverse_pictures(trajectory, [2], "pair", sample_index=0, scale=3)
    one = export.make_grid(np.stack([trajectory.x_t(2)[0], trajectory.pred_x0(2)[0]]))
    np.testing.assert_array_equal(pair[0], export.upscale_nearest(one, 3))
    with pytest.raises(ExportError, match="unknown view"):
        export.reverse_pictures(trajectory, [0], "sideways")


def test_reverse_pictures_of_points_with_trails() -> None:
    trajectory = _trajectory(points=True)
    plain, _ = export.reverse_pictures(trajectory, [2], "xt", point_size=64)
    trailed, _ = export.reverse_pictures(trajectory, [2], "xt", point_size=64, trail_frames=2)
    assert plain[0].shape == (64, 64, 3)
    np.testing.assert_array_equal(plain[0], export.render_points(trajectory.x_t(2), 64))
    assert (trailed[0] != plain[0]).any()  # the two earlier positions are drawn under
    both, _ = export.reverse_pictures(trajectory, [2], "both", point_size=64)
    assert both[0].shape == (64, 128 + export.VIEW_GAP_PX, 3)
    np.testing.assert_array_equal(both[0][:, -64:], export.render_points(trajectory.pred_x0(2), 64))
