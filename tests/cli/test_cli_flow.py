"""Flow matching from the command line: `train --objective flow`, its flags and refusals,
`sample` on a flow checkpoint, and the acceptance check (moons, 3000 steps) as a slow test."""

from __future__ import annotations

import numpy as np
import pytest

from diffusion_studio.app.cli import build_parser, main
from diffusion_studio.core.checkpoint import load_checkpoint
from diffusion_studio.core.data import toy_points
from diffusion_studio.core.quality import point_quality
from diffusion_studio.core.samplers import (
    DIFFUSION_PREDICTION_TYPES,
    FLOW_DEFAULT_STEPS,
    REGISTRY,
    SamplerConfig,
    samplers_for_objective,
)
from diffusion_studio.core.sampling import sample_checkpoint
from diffusion_studio.core.training import resume_config
from tests.cli.test_cli import run
from tests.cli.tiny_models import save_tiny_checkpoint

FLOW_NAMES = ", ".join(s.name for s in samplers_for_objective("flow"))
DIFFUSION_NAMES = ", ".join(s.name for s in samplers_for_objective("diffusion"))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line an exit-2 refusal printed on stderr."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffusion-studio: error:"), lines
    return lines[0]


def train_action(dest: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    return next(a for a in sub._actions if a.dest == dest)


@pytest.fixture(scope="module")
def flow_ckpt(tmp_path_factory):
    """A flow model of moons trained for 5 steps through the CLI, uniform t."""
    out = tmp_path_factory.mktemp("flow") / "flow.safetensors"
    args = ["train", "--data", "moons", "--objective", "flow", "--steps", "5", "--out", str(out)]
    assert main([*args, "--flow-time-sampling", "uniform", "--preview-every", "0"]) == 0
    return out


# ----------------------------------------------------------------------------- train


def test_prediction_offers_the_diffusion_types_only():
    assert tuple(train_action("prediction").choices) == DIFFUSION_PREDICTION_TYPES
    assert "velocity" not in train_action("prediction").choices
    assert tuple(train_action("objective").choices) == ("diffusion", "flow")
    assert tuple(train_action("flow_time_sampling").choices) == ("logit-normal", "uniform")


def test_train_flow_writes_a_flow_checkpoint(flow_ckpt):
    ckpt = load_checkpoint(flow_ckpt)
    assert (ckpt.objective, ckpt.prediction_type) == ("flow", "velocity")
    config = resume_config(ckpt)
    assert config.objective == "flow" and config.flow_time_sampling == "uniform"
    assert ckpt.training["step"] == 5


def test_train_defaults_to_diffusion(tmp_path):
    out = tmp_path / "d.safetensors"
    args = ["train", "--data", "moons", "--steps", "2", "--out", str(out), "--preview-every", "0"]
    assert main(args) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.objective == "diffusion" and ckpt.prediction_type in DIFFUSION_PREDICTION_TYPES


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--objective", "flow", "--prediction", "v"], "--prediction applies to --objective"),
        (["--flow-time-sampling", "uniform"], "--flow-time-sampling applies to --objective flow"),
        (
            ["--objective", "diffusion", "--flow-time-sampling", "logit-normal"],
            "--flow-time-sampling applies to --objective flow",
        ),
    ],
)
def test_train_refuses_flags_of_the_other_objective(capsys, tmp_path, flags, needle):
    out = tmp_path / "o.safetensors"
    assert main(["train", "--data", "moons", "--steps", "2", "--out", str(out), *flags]) == 2
    assert needle in one_error_line(capsys)
    assert not out.exists()


def test_a_prediction_type_on_the_flow_digits_preset_asks_for_diffusion(capsys, tmp_path):
    """The digits preset trains flow matching: --prediction without --objective is refused,
    naming the flag that makes it apply; with --objective diffusion it is taken."""
    from diffusion_studio.core.training import preset_config

    assert preset_config("digits").objective == "flow"
    out = tmp_path / "p.safetensors"
    args = ["train", "--data", "digits", "--steps", "1", "--out", str(out), "--prediction", "v"]
    assert main(args) == 2
    assert "add --objective diffusion" in one_error_line(capsys)
    assert not out.exists()


def test_resume_refuses_another_objective(capsys, flow_ckpt, tmp_path):
    out = tmp_path / "r.safetensors"
    args = ["train", "--data", "moons", "--resume", str(flow_ckpt), "--steps", "6"]
    assert main([*args, "--objective", "diffusion", "--out", str(out)]) == 2
    assert "--objective diffusion does not match" in one_error_line(capsys)
    assert not out.exists()


# ----------------------------------------------------------------------------- sample


def test_sample_a_flow_checkpoint_with_the_flow_default(capsys, flow_ckpt, tmp_path):
    out = tmp_path / "s.npy"
    assert main(["sample", "--checkpoint", str(flow_ckpt), "--n", "8", "--npy", str(out)]) == 0
    assert REGISTRY["flow-euler"].label in capsys.readouterr().err
    expected = sample_checkpoint(
        load_checkpoint(flow_ckpt), 8, SamplerConfig("flow-euler", FLOW_DEFAULT_STEPS, "trailing")
    )
    np.testing.assert_array_equal(np.load(out), expected)


def test_sample_flow_heun_with_a_shift(flow_ckpt, tmp_path):
    out = tmp_path / "s.npy"
    args = ["sample", "--checkpoint", str(flow_ckpt), "--sampler", "flow-heun", "--steps", "4"]
    assert main([*args, "--shift", "3", "--n", "5", "--npy", str(out), "--seed", "2"]) == 0
    config = SamplerConfig("flow-heun", 4, "trailing", options={"shift": 3.0})
    expected = sample_checkpoint(load_checkpoint(flow_ckpt), 5, config, seed=2)
    np.testing.assert_array_equal(np.load(out), expected)


@pytest.mark.parametrize("name", [s.name for s in samplers_for_objective("diffusion")])
def test_sample_refuses_a_diffusion_sampler_for_a_flow_model(capsys, flow_ckpt, tmp_path, name):
    out = tmp_path / "s.npy"
    args = ["sample", "--checkpoint", str(flow_ckpt), "--sampler", name, "--npy", str(out)]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "not flow models" in line and FLOW_NAMES in line
    assert not out.exists()


@pytest.mark.parametrize("name", [s.name for s in samplers_for_objective("flow")])
def test_sample_refuses_a_flow_sampler_for_a_diffusion_model(capsys, tmp_path, name):
    ckpt = save_tiny_checkpoint(tmp_path / "d.safetensors", points=True)
    out = tmp_path / "s.npy"
    assert main(["sample", "--checkpoint", str(ckpt), "--sampler", name, "--npy", str(out)]) == 2
    line = one_error_line(capsys)
    assert "not diffusion models" in line and DIFFUSION_NAMES in line
    assert not out.exists()


# ----------------------------------------------------------------------------- acceptance


@pytest.mark.slow
def test_a_flow_model_of_moons_samples_the_data(tmp_path):
    """The acceptance check, as a user runs it: `train --data moons --objective flow --steps
    3000`, then `sample --n 2000` with the flow default: >= 95 % of the samples within 0.1 of
    a data point and >= 95 % of 2000 fresh data points with a sample within 0.1 (measured:
    0.983 / 0.999)."""
    result = run(
        "train",
        "--data",
        "moons",
        "--objective",
        "flow",
        "--steps",
        "3000",
        "--preview-every",
        "0",
        "--out",
        "m.safetensors",
        cwd=tmp_path,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr
    result = run(
        "sample", "--checkpoint", "m.safetensors", "--n", "2000", "--npy", "s.npy", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (2000, 2)
    import torch

    data = toy_points("moons", 2000, torch.Generator().manual_seed(1)).numpy()
    quality = point_quality(samples, data)
    assert quality.precision >= 0.95 and quality.recall >= 0.95, quality
