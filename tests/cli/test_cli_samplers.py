"""The sampler flags of `sample` and the `samplers` table, generated from the registry, run
in-process through the real entry point (`app.cli.main`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_studio.app.cli import build_parser, main, sampler_option_flags
from diffusion_studio.core.checkpoint import load_checkpoint, save_checkpoint
from diffusion_studio.core.samplers import REGISTRY, SamplerConfig
from diffusion_studio.core.sampling import Trajectory, sample_checkpoint
from tests.cli.tiny_models import T, save_tiny_checkpoint


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line an exit-2 refusal printed on stderr."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffusion-studio: error:"), lines
    return lines[0]


@pytest.fixture(scope="module")
def points_ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("p") / "points.safetensors", points=True)


@pytest.fixture(scope="module")
def images_ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("i") / "images.safetensors", points=False)


@pytest.fixture(scope="module")
def flow_points_ckpt(tmp_path_factory) -> Path:
    """The tiny points model as a flow model (objective flow, velocity prediction)."""
    folder = tmp_path_factory.mktemp("f")
    ckpt = load_checkpoint(save_tiny_checkpoint(folder / "diffusion.safetensors", points=True))
    flow = dataclasses.replace(ckpt, objective="flow", prediction_type="velocity")
    return save_checkpoint(folder / "flow.safetensors", flow)


@pytest.fixture
def ckpt_for(points_ckpt, flow_points_ckpt):
    """The tiny points checkpoint a sampler can sample: flow for flow samplers."""
    return lambda name: flow_points_ckpt if REGISTRY[name].objective == "flow" else points_ckpt


def sample_action(dest: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["sample"]
    return next(a for a in sub._actions if a.dest == dest)


# ----------------------------------------------------------------------------- the parser


def test_sampler_choices_and_help_come_from_the_registry():
    action = sample_action("sampler")
    assert list(action.choices) == list(REGISTRY)
    for spec in REGISTRY.values():
        assert spec.label in action.help and spec.help in action.help


def test_one_flag_per_option_field_of_every_sampler():
    flags = {option.name: option for option in sampler_option_flags()}
    for spec in REGISTRY.values():
        for field in dataclasses.fields(spec.options_class):
            option = flags[field.name]
            assert spec.name in option.owners
            action = sample_action(option.dest)
            assert set(option.flags) <= set(action.option_strings)
            assert field.metadata["help"] in action.help
            if field.metadata.get("choices") is not None:
                assert tuple(action.choices) == tuple(field.metadata["choices"])
    # today's flags keep working
    assert "--eta" in sample_action("sampler_option_eta").option_strings
    assert "--variance" in sample_action("sampler_option_variance_type").option_strings


def test_samplers_table_lists_the_registry(capsys):
    assert main(["samplers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:7] == [
        "name",
        "label",
        "objective",
        "evals/step",
        "deterministic",
        "karras",
        "steps",
    ]
    assert len(lines) == 1 + len(REGISTRY)
    for line, spec in zip(lines[1:], REGISTRY.values()):
        words = line.split()
        assert words[0] == spec.name and spec.label in line and line.endswith(spec.help)
        assert spec.objective in words
        assert str(spec.evaluations_per_step) in words and str(spec.default_steps) in words
        karras_and_deterministic = (
            "yes" if spec.deterministic else "no",
            "yes" if spec.karras else "no",
        )
        assert " ".join(karras_and_deterministic) in " ".join(words)


# ----------------------------------------------------------------------------- refusals


def option_cases() -> list[tuple[str, str, str]]:
    """(flag, a value, a sampler that lacks the option) for every option flag and sampler."""
    cases = []
    for option in sampler_option_flags():
        meta, default = option.field.metadata, option.field.default
        value = meta["choices"][0] if meta.get("choices") is not None else str(default)
        for name in REGISTRY:
            if name not in option.owners:
                cases.append((option.flags[0], str(value), name))
    return cases


@pytest.mark.parametrize("flag,value,name", option_cases())
def test_an_option_the_sampler_lacks_is_refused(capsys, ckpt_for, tmp_path, flag, value, name):
    out = tmp_path / "s.npy"
    args = ["sample", "--checkpoint", str(ckpt_for(name)), "--sampler", name, "--npy", str(out)]
    assert main([*args, flag, value]) == 2
    line = one_error_line(capsys)
    owners = next(o.owners for o in sampler_option_flags() if flag in o.flags)
    assert f"{flag} applies to {', '.join(owners)} only" in line
    assert not out.exists()


def test_eta_for_ddpm_says_so(capsys, points_ckpt, tmp_path):
    if not {"ddpm", "ddim"} <= set(REGISTRY):
        pytest.skip("needs DDPM and DDIM")
    args = ["sample", "--checkpoint", str(points_ckpt), "--npy", str(tmp_path / "s.npy")]
    assert main([*args, "--sampler", "ddpm", "--eta", "0.5"]) == 2
    assert "--eta applies to ddim only" in one_error_line(capsys)
    assert main([*args, "--sampler", "ddim", "--variance", "fixed_large"]) == 2
    assert "--variance applies to ddpm only" in one_error_line(capsys)
    assert main([*args, "--sampler", "ddim", "--eta", "1.5"]) == 2
    assert "eta = 1.5 is out of range" in one_error_line(capsys)


@pytest.mark.parametrize("name", [s.name for s in REGISTRY.values() if not s.karras])
def test_karras_is_refused_where_the_sampler_lacks_it(capsys, ckpt_for, tmp_path, name):
    args = ["sample", "--checkpoint", str(ckpt_for(name)), "--npy", str(tmp_path / "s.npy")]
    assert main([*args, "--sampler", name, "--karras"]) == 2
    line = one_error_line(capsys)
    assert "--karras applies to" in line and f"the sampler here is {name}" in line


def test_start_image_needs_start_t(capsys, images_ckpt, tmp_path):
    args = ["sample", "--checkpoint", str(images_ckpt), "--npy", str(tmp_path / "s.npy")]
    assert main([*args, "--start-image", "x.png"]) == 2
    assert "--start-image and --start-t go together" in one_error_line(capsys)


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_sampler_samples_through_the_cli(capsys, ckpt_for, tmp_path, name):
    """Each registered sampler, its options at their defaults given explicitly, gives what
    core's sample_checkpoint gives for the same config and seed (a flow sampler on a flow
    model)."""
    spec = REGISTRY[name]
    points_ckpt = ckpt_for(name)
    out = tmp_path / "s.npy"
    options = []
    for field in dataclasses.fields(spec.options_class):
        flag = next(o.flags[0] for o in sampler_option_flags() if o.name == field.name)
        if isinstance(field.default, bool):
            options.append(flag if field.default else "--no-" + flag[2:])
        else:
            options += [flag, str(field.default)]
    args = ["sample", "--checkpoint", str(points_ckpt), "--sampler", name, "--steps", "5"]
    assert main([*args, *options, "--spacing", "linspace", "--n", "6", "--npy", str(out)]) == 0
    ours = np.load(out)
    assert ours.shape == (6, 2) and np.isfinite(ours).all()
    # a sampler other than the model's starts from its own defaults (Heun: Karras sigmas)
    config = SamplerConfig(name, 5, "linspace", clip_sample=False, karras=spec.default_karras)
    expected = sample_checkpoint(load_checkpoint(points_ckpt), 6, config, seed=0)
    np.testing.assert_array_equal(ours, expected)
    assert spec.label in capsys.readouterr().err  # the sampler it used is named


def test_unset_options_come_from_the_model(tmp_path):
    """A model that names its sampler (as a diffusers folder does) gets its options, unless
    another sampler is chosen; then that sampler's own defaults apply (its step count and
    Karras choice; the model's clip)."""
    if not {"ddpm", "ddim"} <= set(REGISTRY):
        pytest.skip("needs DDPM and DDIM")
    from diffusion_studio.app.cli import _sampler_config

    own = SamplerConfig(
        "ddpm", 7, "leading", clip_sample=True, options={"variance_type": "fixed_large"}
    )
    path = save_tiny_checkpoint(
        tmp_path / "m.safetensors", points=False, meta={"sampler_defaults": own.to_dict()}
    )
    ckpt = load_checkpoint(path)
    parser = build_parser()

    def config(*flags: str) -> SamplerConfig:
        args = parser.parse_args(["sample", "--checkpoint", str(path), "--npy", "x", *flags])
        return _sampler_config(args, ckpt)

    assert config() == own
    assert config("--variance", "fixed_small").options == {"variance_type": "fixed_small"}
    ddim = config("--sampler", "ddim")
    assert (ddim.kind, ddim.options, ddim.num_inference_steps) == ("ddim", {"eta": 0.0}, 50)
    assert config("--sampler", "ddim", "--steps", "7").num_inference_steps == 7
    assert ddim.clip_sample and config("--sampler", "ddim", "--no-clip").clip_sample is False
    assert config("--sampler", "ddim", "--eta", "0.25").options == {"eta": 0.25}
    # our own checkpoints without a sampler: core's default
    plain = load_checkpoint(save_tiny_checkpoint(tmp_path / "p.safetensors", points=True))
    args = parser.parse_args(["sample", "--checkpoint", "p", "--npy", "x"])
    assert _sampler_config(args, plain) == SamplerConfig("ddpm", 100, "trailing")


def test_start_from_an_image_takes_the_steps_below_start_t(images_ckpt, tmp_path):
    image = tmp_path / "start.png"
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(image)
    sampler = next(iter(REGISTRY))
    out, gif = tmp_path / "s.npy", tmp_path / "r.gif"
    args = ["sample", "--checkpoint", str(images_ckpt), "--sampler", sampler, "--steps", "10"]
    args += ["--spacing", "trailing", "--n", "2", "--npy", str(out), "--gif", str(gif)]
    assert main([*args, "--start-image", str(image), "--start-t", "9"]) == 0
    # T = 50, 10 trailing steps: 49, 44, ..., 4; those at or below 9 are 9 and 4
    assert Image.open(gif).n_frames == 3  # t = 9, t = 4, the final samples
    near = np.load(out)
    assert main([*args, "--start-image", str(image), "--start-t", str(T - 1)]) == 0
    far = np.load(out)
    # started close to the (bright) image, the samples stay near it
    assert abs(near.mean() - (200 / 127.5 - 1)) < abs(far.mean() - (200 / 127.5 - 1))


def test_gif_views(images_ckpt, points_ckpt, tmp_path):
    for ckpt in (images_ckpt, points_ckpt):
        sizes = {}
        for view in ("xt", "x0", "both"):
            gif = tmp_path / f"{view}.gif"
            args = ["sample", "--checkpoint", str(ckpt), "--steps", "4", "--n", "4"]
            assert main([*args, "--gif", str(gif), "--gif-view", view, "--frames", "3"]) == 0
            sizes[view] = Image.open(gif).size
            assert Image.open(gif).n_frames == 3
        assert sizes["xt"] == sizes["x0"]
        # "both" shows the two side by side: about twice as wide for its height
        aspect = {view: width / height for view, (width, height) in sizes.items()}
        assert aspect["both"] > 1.5 * aspect["xt"]


def test_reverse_pictures_carry_their_t():
    import torch

    from diffusion_studio.core.export import reverse_pictures
    from diffusion_studio.core.sampling import Frame

    trajectory = Trajectory()
    for step, t in enumerate([90, 60, 30, 0, -1]):
        x = torch.full((4, 1, 8, 8), step / 5.0)
        trajectory.append(Frame(step, t, x, x))
    frames, captions = reverse_pictures(trajectory, range(5), "both")
    assert len(frames) == 5
    assert captions == ["t = 90", "t = 60", "t = 30", "t = 0", "x_0 (final)"]
