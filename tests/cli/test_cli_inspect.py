"""`diffusion-studio inspect`: the numbers at t, the PNG row, the CSV curve, and its refusals."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_studio.core.checkpoint import pretrained_checkpoint_paths
from diffusion_studio.core.inspect import CURVE_COLUMNS
from tests.cli.test_cli import assert_one_line_error, run
from tests.cli.tiny_models import T, save_tiny_checkpoint


@pytest.fixture
def files(tmp_path):
    """A tiny unconditional 8x8 image model (T = 50, epsilon), a point model and an image."""
    save_tiny_checkpoint(tmp_path / "tiny.safetensors", points=False)
    save_tiny_checkpoint(tmp_path / "points.safetensors", points=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    return tmp_path


def numbers_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("t = "))


def test_inspect_writes_the_row_and_the_curve(files):
    result = run(
        "inspect",
        "in.png",
        "--checkpoint",
        "tiny.safetensors",
        "--t",
        "7",
        "--seed",
        "3",
        "--png",
        "row.png",
        "--csv",
        "curve.csv",
        cwd=files,
    )
    assert result.returncode == 0, result.stderr
    line = numbers_line(result.stdout)
    assert line.startswith("t = 7:") and "loss (epsilon)" in line and "x0_mse" in line
    row = np.asarray(Image.open(files / "row.png"))
    # five 8x8 panels, each upscaled 16x to 128 px, side by side under captions
    assert row.ndim == 3 and row.shape[2] == 3
    assert row.shape[1] >= 5 * 128 and row.shape[0] > 128
    with (files / "curve.csv").open() as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CURVE_COLUMNS == ("t", "log_snr", "loss", "x0_mse", "eps_mse")
    assert [int(r[0]) for r in rows[1:]] == list(range(T))
    values = np.array([[float(c) for c in r[1:]] for r in rows[1:]])
    assert np.all(np.isfinite(values)) and np.all(values[:, 1:] >= 0)
    assert np.all(np.diff(values[:, 0]) < 0)  # log-SNR falls with t
    # the CSV's row at t agrees with the numbers printed for t
    loss = float(line.split("loss (epsilon) ")[1].split(",")[0])
    assert values[7, 1] == pytest.approx(loss, rel=1e-4)


def test_inspect_defaults_to_the_middle_timestep(files):
    result = run("inspect", "in.png", "--checkpoint", "tiny.safetensors", cwd=files)
    assert result.returncode == 0, result.stderr
    assert numbers_line(result.stdout).startswith(f"t = {T // 2}:")
    assert not list(files.glob("*.csv"))  # nothing written unless asked


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--t", str(T)), f"0..{T - 1}"),
        (("--t", "-1"), "out of range"),
        (("--label", "1"), "not class-conditional"),
    ],
)
def test_inspect_refuses_bad_values(files, args, needle):
    result = run("inspect", "in.png", "--checkpoint", "tiny.safetensors", *args, cwd=files)
    assert_one_line_error(result, needle)


def test_inspect_refuses_bad_files(files):
    (files / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (files / "bad.safetensors").write_bytes(b"not a checkpoint")
    cases = [
        (("missing.png", "--checkpoint", "tiny.safetensors"), "missing.png"),
        (("corrupt.png", "--checkpoint", "tiny.safetensors"), "corrupt.png"),
        (("in.png", "--checkpoint", "bad.safetensors"), "bad.safetensors"),
        (("in.png", "--checkpoint", "nowhere.safetensors"), "does not exist"),
        (("in.png", "--checkpoint", "points.safetensors"), "image model"),
    ]
    for args, needle in cases:
        result = run("inspect", *args, "--csv", "c.csv", "--png", "r.png", cwd=files)
        assert_one_line_error(result, needle)
    assert not (files / "c.csv").exists() and not (files / "r.png").exists()


def test_inspect_labels_on_the_digits_model(files):
    """The shipped class-conditional digits model: a label in 0..9 is taken, 10 is refused."""
    digits = str(pretrained_checkpoint_paths()["digits"])
    ok = run("inspect", "in.png", "--checkpoint", digits, "--label", "3", "--t", "400", cwd=files)
    assert ok.returncode == 0, ok.stderr
    assert numbers_line(ok.stdout).startswith("t = 400:") and "loss (v)" in ok.stdout
    bad = run("inspect", "in.png", "--checkpoint", digits, "--label", "10", cwd=files)
    assert_one_line_error(bad, "0 to 9")


def test_inspect_a_flow_checkpoint(tmp_path):
    """A flow-matching checkpoint is inspected on its path: the loss is the velocity MSE, the
    numbers printed are core.inspect's at that index, log-SNR is 2 log((1 - t) / t)."""
    from diffusion_studio.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from diffusion_studio.core.inspect import inspect_at, inspect_image, setup_from_checkpoint
    from diffusion_studio.core.models import UNetConfig, build_model
    from diffusion_studio.core.schedule import ScheduleConfig

    config = UNetConfig(
        in_channels=1, image_size=8, channels=(8, 8), attention_heads=0, norm_groups=4
    )
    model = build_model(config)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    save_checkpoint(
        tmp_path / "flow.safetensors",
        Checkpoint(
            config,
            ScheduleConfig("linear", 20),
            "velocity",
            model.state_dict(),
            data={"name": "tiny", "kind": "images", "image_size": 8, "channels": 1},
            objective="flow",
        ),
    )
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "in.png")
    result = run(
        "inspect",
        "in.png",
        "--checkpoint",
        "flow.safetensors",
        "--t",
        "4",
        "--seed",
        "2",
        "--csv",
        "curve.csv",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    line = numbers_line(result.stdout)
    assert line.startswith("t = 4:") and "loss (velocity)" in line
    ckpt = load_checkpoint(tmp_path / "flow.safetensors")
    setup = setup_from_checkpoint(ckpt, inspect_image(ckpt, tmp_path / "in.png"), seed=2)
    record = inspect_at(setup, 4)
    assert float(line.split("loss (velocity) ")[1].split(",")[0]) == pytest.approx(
        record.loss, rel=1e-4
    )
    assert float(line.split("log_snr ")[1].split(",")[0]) == pytest.approx(
        2 * np.log((1 - 0.25) / 0.25), rel=1e-3
    )
    with (tmp_path / "curve.csv").open() as f:
        rows = list(csv.reader(f))
    assert len(rows) == 21 and rows[-1][1] == ""  # t = 1 (pure noise): log-SNR -inf, empty
    assert float(rows[5][2]) == pytest.approx(record.loss, rel=1e-4)
