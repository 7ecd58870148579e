"""The flow-matching samplers (core.samplers.flow_match): parity with diffusers'
FlowMatchEulerDiscreteScheduler / FlowMatchHeunDiscreteScheduler step by step and through
`core.sampling.sample`, the refusals between objectives, the registry helper and defaults."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from diffusion_studio.core.checkpoint import load_checkpoint
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.models import MLPConfig
from diffusion_studio.core.samplers import (
    FLOW_DEFAULT_SAMPLER,
    FLOW_DEFAULT_STEPS,
    REGISTRY,
    SamplerConfig,
    default_sampler_config,
    make_sampler,
    samplers_for_objective,
)
from diffusion_studio.core.sampling import (
    SampleRequest,
    checkpoint_sampler_config,
    first_step,
    prepare_sampling,
    sample,
    sample_checkpoint,
)
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig
from diffusion_studio.core.training import (
    TrainConfig,
    Trainer,
    TrainPreview,
    TrainProgress,
    resume_config,
)
from tests.cli.tiny_models import T as TINY_T
from tests.cli.tiny_models import save_tiny_checkpoint
from tests.core.sampler_common import SamplerCommonTests

diffusers = pytest.importorskip("diffusers")

T = 1000
SHAPE = (3, 2, 4, 4)


class TestFlowEuler(SamplerCommonTests):
    name = "flow-euler"


class TestFlowHeun(SamplerCommonTests):
    name = "flow-heun"


class _Net(torch.nn.Module):
    """A fixed random velocity field v(x, t) (B, 2, 4, 4) that depends on x and on t."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time = (t.float() / T).view(-1, 1, 1, 1)
        return torch.tanh(self.conv(x)) * (1 + time) - x * time


def _theirs(kind: str, shift: float):
    cls = {
        "flow-euler": diffusers.FlowMatchEulerDiscreteScheduler,
        "flow-heun": diffusers.FlowMatchHeunDiscreteScheduler,
    }[kind]
    return cls(num_train_timesteps=T, shift=shift)


def _ours(kind: str, steps: int, shift: float):
    config = SamplerConfig(kind, steps, "linspace", options={"shift": shift})
    return make_sampler(config, FlowPath(T), "velocity")


@pytest.mark.parametrize("kind", ["flow-euler", "flow-heun"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 7, 28])
def test_sigmas_and_timesteps_match_diffusers(kind, shift, steps):
    theirs = _theirs(kind, shift)
    theirs.set_timesteps(steps)
    ours = _ours(kind, steps, shift)
    # diffusers' Heun lists each inner sigma and timestep twice (predictor, corrector)
    their_sigmas = theirs.sigmas if kind == "flow-euler" else theirs.sigmas[::2]
    their_sigmas = (
        torch.cat([their_sigmas, torch.zeros(1)]) if kind == "flow-heun" else their_sigmas
    )
    their_steps = theirs.timesteps if kind == "flow-euler" else theirs.timesteps[::2]
    torch.testing.assert_close(torch.from_numpy(ours.sigmas).float(), their_sigmas, rtol=0, atol=0)
    torch.testing.assert_close(ours.timesteps.float(), their_steps, rtol=0, atol=0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_steps_match_diffusers_step_by_step(shift):
    """The same state and network output at each step give the same next state."""
    steps = 12
    theirs = _theirs("flow-euler", shift)
    theirs.set_timesteps(steps)
    ours = _ours("flow-euler", steps, shift)
    net = _Net()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    for i, t in enumerate(theirs.timesteps):
        with torch.no_grad():
            v = net(x, t.expand(SHAPE[0]))
        expected = theirs.step(v, t, x).prev_sample
        out = ours.step(v, i, x)
        torch.testing.assert_close(out.prev_sample, expected, rtol=0, atol=1e-6)
        # the step's x_0 estimate: x - sigma v (FlowPath.split_velocity)
        torch.testing.assert_close(out.pred_x0, x - theirs.sigmas[i] * v, rtol=0, atol=1e-6)
        x = expected
    assert float(x.abs().max()) > 0.1  # the walk went somewhere


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_heun_evaluations_and_states_match_diffusers(shift, dtype):
    """diffusers interleaves predictor and corrector in its timesteps; one `advance` of ours
    is a whole step. Every network evaluation (input, timestep) and the final state agree.

    In float32 diffusers' slope (x - (x - sigma v)) / sigma loses ~1e-6 of |x| (~5 here) to
    rounding at the last sigma, 1 / T; ours uses v itself. In float64 both agree within 1e-6.
    """
    steps = 9
    atol = 1e-5 if dtype == torch.float32 else 1e-6
    net = _Net().to(dtype)
    x_init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)).to(dtype)

    theirs = _theirs("flow-heun", shift)
    theirs.set_timesteps(steps)
    their_calls = []
    x = x_init.clone()
    for t in theirs.timesteps:
        their_calls.append((x.clone(), float(t)))
        with torch.no_grad():
            v = net(x, t.expand(SHAPE[0]))
        x = theirs.step(v, t, x).prev_sample.to(dtype)
    their_final = x

    ours = _ours("flow-heun", steps, shift)
    our_calls = []

    def model_fn(x_in, t):
        our_calls.append((x_in.clone(), float(t)))
        with torch.no_grad():
            return net(x_in, torch.full((SHAPE[0],), float(t), dtype=dtype))

    x = x_init.clone()
    for i in range(steps):
        x = ours.advance(model_fn, i, x).prev_sample
    assert len(our_calls) == len(their_calls) == ours.total_evaluations() == 2 * steps - 1
    for (x_ours, t_ours), (x_theirs, t_theirs) in zip(our_calls, their_calls, strict=True):
        assert t_ours == pytest.approx(t_theirs, abs=1e-4)
        torch.testing.assert_close(x_ours, x_theirs, rtol=0, atol=atol)
    torch.testing.assert_close(x, their_final, rtol=0, atol=atol)


@pytest.mark.parametrize("kind", ["flow-euler", "flow-heun"])
def test_sample_loop_matches_a_diffusers_loop(kind):
    """End to end through core.sampling.sample: the same seed, the same network, diffusers'
    pipeline loop (x ~ N(0, I), step at each timestep) gives the same frames and samples."""
    steps = 10
    net = _Net()
    ours = _ours(kind, steps, 1.0)
    frames = list(
        sample(net, FlowPath(T), ours, SHAPE[0], SHAPE[1:], torch.Generator().manual_seed(5))
    )
    theirs = _theirs(kind, 1.0)
    theirs.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    states = [x]
    with torch.no_grad():
        for t in theirs.timesteps:
            x = theirs.step(net(x, t.expand(SHAPE[0])), t, x).prev_sample
            states.append(x)
    if kind == "flow-heun":
        # the state after each whole step (predictor + corrector; the last is Euler's alone)
        states = [*states[:-1:2], states[-1]]
    assert len(frames) == steps + 1
    for frame, state in zip(frames, states, strict=True):
        torch.testing.assert_close(frame.x_t, state, rtol=1e-5, atol=1e-5)  # float32 rounding
    assert frames[-1].t == -1 and frames[0].t == T - 1


def test_frames_show_the_flow_path_index_and_pred_x0():
    """Frame t is the path index k of sigma (t_k = (k + 1) / T); pred_x0 = x - sigma v."""
    net = _Net()
    sampler = make_sampler(SamplerConfig("flow-euler", 4, "trailing"), FlowPath(T), "velocity")
    frames = list(sample(net, FlowPath(T), sampler, 3, SHAPE[1:], torch.Generator()))
    assert [f.t for f in frames] == [999, 749, 499, 249, -1]
    for frame, sigma in zip(frames[:-1], sampler.sigmas, strict=False):
        with torch.no_grad():
            v = net(frame.x_t, torch.full((3,), sigma * T))
        torch.testing.assert_close(frame.pred_x0, frame.x_t - sigma * v, rtol=0, atol=1e-5)


def test_trailing_spacing_takes_equal_steps_from_one_to_zero():
    sampler = make_sampler(SamplerConfig("flow-euler", 5, "trailing"), FlowPath(T), "velocity")
    torch.testing.assert_close(
        torch.from_numpy(sampler.sigmas),
        torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0], dtype=torch.float64),
        rtol=0,
        atol=1e-7,
    )


def test_start_from_an_image_noises_it_to_the_first_steps_time():
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    sampler = make_sampler(SamplerConfig("flow-euler", 10, "trailing"), FlowPath(T), "velocity")
    first = first_step(sampler, 500)  # path index 500: t = 0.501
    assert sampler.sigma(first) == pytest.approx(0.5, abs=1e-6)
    torch.testing.assert_close(
        sampler.add_noise(x0, noise, first), 0.5 * x0 + 0.5 * noise, rtol=0, atol=1e-6
    )


def test_clipping_keeps_x0_and_velocity_consistent():
    sampler = make_sampler(
        SamplerConfig("flow-euler", 4, "trailing", clip_sample=True), FlowPath(T), "velocity"
    )
    x = torch.full((2, 2), 3.0)
    v = torch.zeros(2, 2)  # x_0 = x = 3, clamped to 1, so v = (x - 1) / sigma = 2 at sigma 1
    out = sampler.step(v, 0, x)
    torch.testing.assert_close(out.pred_x0, torch.ones(2, 2))
    torch.testing.assert_close(out.prev_sample, x + (0.75 - 1.0) * 2.0 * torch.ones(2, 2))


# --------------------------------------------------------------------------- registry


def test_samplers_for_objective_split_the_registry():
    flow = [s.name for s in samplers_for_objective("flow")]
    diffusion = [s.name for s in samplers_for_objective("diffusion")]
    assert flow == ["flow-euler", "flow-heun"]
    assert "ddpm" in diffusion and "ddim" in diffusion
    assert sorted(flow + diffusion) == sorted(REGISTRY)
    assert all(REGISTRY[n].objective == "diffusion" for n in diffusion)
    with pytest.raises(ConfigError, match="objective"):
        samplers_for_objective("score")


def test_diffusers_flow_scheduler_settings_are_read():
    """The shift of a FlowMatch scheduler config, and a note for each setting not offered."""
    euler = REGISTRY["flow-euler"].sampler_class
    assert REGISTRY["flow-euler"].options_from_diffusers({"shift": 3.0}) == {"shift": 3.0}
    assert REGISTRY["flow-heun"].options_from_diffusers({}) == {}
    notes = euler.diffusers_notes({"use_dynamic_shifting": True, "stochastic_sampling": False})
    assert len(notes) == 1 and "use_dynamic_shifting" in notes[0]


def _message(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("kind", [s.name for s in samplers_for_objective("diffusion")])
def test_a_diffusion_sampler_refuses_a_flow_model(kind):
    with pytest.raises(ConfigError) as error:
        make_sampler(SamplerConfig(kind, 10, "trailing"), FlowPath(100), "velocity")
    assert "flow-euler, flow-heun" in _message(error)


@pytest.mark.parametrize("kind", ["flow-euler", "flow-heun"])
@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_a_flow_sampler_refuses_a_diffusion_model(kind, prediction):
    schedule = NoiseSchedule(ScheduleConfig("linear", 100))
    with pytest.raises(ConfigError) as error:
        make_sampler(SamplerConfig(kind, 10, "trailing"), schedule, prediction)
    message = _message(error)
    assert "ddpm" in message and "flow-heun" not in message


def test_a_path_of_the_other_objective_is_refused():
    schedule = NoiseSchedule(ScheduleConfig("linear", 100))
    with pytest.raises(ConfigError, match="velocity"):
        make_sampler(SamplerConfig("flow-euler", 10), schedule, "velocity")
    with pytest.raises(ConfigError, match="flow path"):
        make_sampler(SamplerConfig("ddim", 10), FlowPath(100), "epsilon")


def test_shift_is_checked():
    with pytest.raises(ConfigError, match="shift"):
        SamplerConfig("flow-euler", 10, options={"shift": 0.0})
    with pytest.raises(ConfigError, match="no option shift"):
        SamplerConfig("ddim", 10, options={"shift": 2.0})


def test_default_sampler_config_by_objective():
    flow = default_sampler_config(True, objective="flow")
    assert flow == SamplerConfig(FLOW_DEFAULT_SAMPLER, FLOW_DEFAULT_STEPS, "trailing")
    assert default_sampler_config(False, objective="flow") == flow  # no clip for flow images
    # diffusion's defaults are unchanged
    assert default_sampler_config(True) == SamplerConfig("ddpm", 100, "trailing")
    assert default_sampler_config(False, objective="diffusion") == SamplerConfig(
        "ddpm", 100, "trailing", clip_sample=True
    )
    with pytest.raises(ConfigError, match="objective"):
        default_sampler_config(True, objective="score")


# --------------------------------------------------------------------------- flow checkpoints


def _flow_train_config(**overrides) -> TrainConfig:
    base = dict(
        data="moons",
        model=MLPConfig(hidden=32, layers=2),
        schedule=ScheduleConfig("linear", 100),
        objective="flow",
        batch_size=64,
        learning_rate=3e-3,
        warmup_steps=5,
        max_steps=20,
        max_minutes=None,
        num_points=512,
        device="cpu",
    )
    base.update(overrides)
    return TrainConfig(**base)


def test_a_flow_checkpoint_round_trips_samples_and_resumes_exactly(tmp_path):
    config = _flow_train_config()
    straight = [r.loss for r in Trainer(config).run() if isinstance(r, TrainProgress)]

    first = Trainer(config)
    losses = []
    for record in first.run():
        losses.append(record.loss)
        if record.step == 8:
            break
    path = tmp_path / "flow.safetensors"
    first.save(path)
    ckpt = load_checkpoint(path)
    assert (ckpt.objective, ckpt.prediction_type) == ("flow", "velocity")
    # the flow default sampler, and samples through it
    assert checkpoint_sampler_config(ckpt) == default_sampler_config(True, objective="flow")
    samples = sample_checkpoint(ckpt, 16, SamplerConfig("flow-heun", 4, "trailing"), seed=3)
    assert samples.shape == (16, 2) and np.isfinite(samples).all()
    with pytest.raises(ConfigError, match="flow-euler, flow-heun"):
        sample_checkpoint(ckpt, 4, SamplerConfig("ddim", 4, "trailing"))
    # resume continues the very same run
    resumed = Trainer(resume_config(ckpt), resume=ckpt)
    assert resumed.step == 8 and resumed.config.objective == "flow"
    losses += [r.loss for r in resumed.run() if isinstance(r, TrainProgress)]
    np.testing.assert_allclose(losses, straight, rtol=1e-6, atol=1e-7)


def test_a_flow_run_previews_with_the_flow_sampler():
    config = _flow_train_config(max_steps=4, preview_every=2, preview_count=3, preview_steps=5)
    previews = [r for r in Trainer(config).run() if isinstance(r, TrainPreview)]
    assert [p.step for p in previews] == [2, 4]
    assert previews[-1].samples.shape == (3, 2) and np.isfinite(previews[-1].samples).all()


def _without_objective(path, out):
    """A copy of a checkpoint as written before flow matching: no "objective" in its config."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    config = json.loads(metadata["config"])
    del config["objective"]
    metadata["config"] = json.dumps(config)
    save_file(tensors, str(out), metadata=metadata)
    return out


def test_an_old_checkpoint_without_objective_opens_as_diffusion(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "new.safetensors", points=True)
    old = load_checkpoint(_without_objective(path, tmp_path / "old.safetensors"))
    assert old.objective == "diffusion" and old.prediction_type == "epsilon"
    assert checkpoint_sampler_config(old) == default_sampler_config(True)
    run = prepare_sampling(old, SampleRequest(SamplerConfig("ddim", 3, "trailing"), 2))
    assert isinstance(run.schedule, NoiseSchedule)


def test_a_flow_image_model_starts_from_a_noised_image(tmp_path):
    """prepare_sampling on a flow checkpoint: its FlowPath, the start index checked against
    the path's grid, the image noised to the first step's time."""
    from PIL import Image

    ckpt = load_checkpoint(save_tiny_checkpoint(tmp_path / "d.safetensors", points=False))
    flow = dataclasses.replace(ckpt, objective="flow", prediction_type="velocity")
    image = tmp_path / "start.png"
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(image)
    request = SampleRequest(
        SamplerConfig("flow-euler", 10, "trailing"), 2, start_image=image, start_t=24
    )
    run = prepare_sampling(flow, request)
    assert isinstance(run.schedule, FlowPath) and run.schedule.num_timesteps == TINY_T
    frames = list(run.frames)
    assert len(frames) == run.num_steps + 1 and frames[0].t <= 24
    assert run.sampler.sigma(first_step(run.sampler, 24)) <= (24 + 1) / TINY_T
    with pytest.raises(ConfigError, match="out of range"):
        prepare_sampling(flow, dataclasses.replace(request, start_t=TINY_T))
