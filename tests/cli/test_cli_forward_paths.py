"""`forward` on a 2-D set and on flow matching's path (issues 16 and 17), in-process through the
real entry point: the PNG frames are core's pictures (ForwardPoints / ForwardProcess on the
chosen path), and a name that is neither a file nor a set is one line, exit 2."""

from __future__ import annotations

import numpy as np
from PIL import Image

from diffusion_studio.app.cli import main
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.forward import ForwardProcess
from diffusion_studio.core.forward_points import ForwardPoints
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig


def png_frames(folder) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


def test_a_2d_set_on_the_flow_path(tmp_path, capsys):
    out = tmp_path / "frames"
    args = ["forward", "moons", "--path", "flow", "--steps", "100", "--frames", "5"]
    assert (
        main([*args, "--size", "128", "--png-dir", str(out), "--gif", str(tmp_path / "m.gif")]) == 0
    )
    points = ForwardPoints(FlowPath(100), "moons", seed=0)
    steps, expected = points.frames(5, 128)
    frames = png_frames(out)
    assert len(frames) == 5
    for got, want in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert Image.open(tmp_path / "m.gif").n_frames == 5
    assert "x_0 (clean) .. t = 1.000" in capsys.readouterr().out


def test_an_image_on_the_flow_path_ends_in_its_noise(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    out = tmp_path / "frames"
    args = ["forward", str(tmp_path / "in.png"), "--path", "flow", "--steps", "50"]
    assert main([*args, "--frames", "3", "--size", "24", "--png-dir", str(out)]) == 0
    image = np.asarray(Image.open(tmp_path / "in.png"), dtype=np.float32) / 127.5 - 1
    flow = ForwardProcess(FlowPath(50), image.transpose(2, 0, 1), seed=0)
    diffusion = ForwardProcess(
        NoiseSchedule(ScheduleConfig("linear", 50)), image.transpose(2, 0, 1)
    )
    frames = png_frames(out)
    np.testing.assert_array_equal(frames[-1], flow.x_t_uint8(50))  # t = 1: the noise alone
    np.testing.assert_array_equal(frames[1], flow.x_t_uint8(int(flow.frame_steps(3)[1])))
    assert not np.array_equal(frames[1], diffusion.x_t_uint8(int(flow.frame_steps(3)[1])))


def test_neither_a_file_nor_a_set_is_one_line(tmp_path, capsys):
    assert main(["forward", str(tmp_path / "moonz"), "--gif", str(tmp_path / "x.gif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
