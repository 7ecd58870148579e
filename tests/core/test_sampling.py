"""sample() generator and Trajectory storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import to_uint8_images
from diffusion_studio.core.models import MLPConfig, build_model
from diffusion_studio.core.samplers import SamplerConfig, make_sampler
from diffusion_studio.core.sampling import Frame, Trajectory, sample
from diffusion_studio.core.schedule import NoiseSchedule


class ExactNoise(nn.Module):
    """A 'model' that knows x0 and returns the exact eps of x_t (so DDIM must land on x0)."""

    def __init__(self, schedule: NoiseSchedule, x0: torch.Tensor) -> None:
        super().__init__()
        self.schedule, self.x0 = schedule, x0

    def forward(self, x, t):
        ab = self.schedule.alphas_cumprod[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()


def test_frames_and_landing_on_x0():
    schedule = NoiseSchedule.from_kind("linear", 100)
    x0 = torch.rand(3, 1, 4, 4) * 2 - 1
    sampler = make_sampler(SamplerConfig("ddim", 10), schedule, "epsilon")
    frames = list(
        sample(
            ExactNoise(schedule, x0),
            schedule,
            sampler,
            3,
            (1, 4, 4),
            torch.Generator().manual_seed(0),
        )
    )
    assert [f.step for f in frames] == list(range(11))
    assert [f.t for f in frames] == sampler.timesteps.tolist() + [-1]
    assert all(f.x_t.shape == (3, 1, 4, 4) and f.x_t.dtype == torch.float32 for f in frames)
    torch.testing.assert_close(frames[-1].x_t, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(frames[3].pred_x0, x0, atol=1e-4, rtol=1e-4)


def test_same_seed_same_frames_and_points_shape():
    schedule = NoiseSchedule.from_kind("cosine", 50)
    model = build_model(MLPConfig(hidden=8, layers=1))
    sampler = make_sampler(SamplerConfig("ddpm", 5), schedule, "epsilon")

    def run(seed):
        return list(sample(model, schedule, sampler, 4, (2,), torch.Generator().manual_seed(seed)))

    a, b = run(1), run(1)
    torch.testing.assert_close(a[-1].x_t, b[-1].x_t)
    assert a[-1].x_t.shape == (4, 2)
    assert not torch.equal(a[-1].x_t, run(2)[-1].x_t)


def test_start_from_a_noised_image():
    schedule = NoiseSchedule.from_kind("linear", 100)
    image = torch.rand(1, 4, 4) * 2 - 1
    sampler = make_sampler(SamplerConfig("ddim", 20), schedule, "epsilon")
    model = ExactNoise(schedule, image.expand(2, 1, 4, 4))
    frames = list(
        sample(
            model,
            schedule,
            sampler,
            2,
            (1, 4, 4),
            torch.Generator().manual_seed(0),
            x_start=image,
            t_start=30,
        )
    )
    assert frames[0].t <= 30 and frames[0].t == 30
    torch.testing.assert_close(frames[-1].x_t, image.expand(2, 1, 4, 4), atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="start timestep"):
        list(sample(model, schedule, sampler, 2, (1, 4, 4), x_start=image, t_start=-5))


def _frame(step, t, value, shape=(2, 1, 3, 3)):
    x = torch.full(shape, value)
    return Frame(step, t, x, -x)


def test_trajectory_stores_uint8_and_final_in_float():
    traj = Trajectory()
    traj.append(_frame(0, 9, -1.0))
    traj.append(_frame(1, -1, 1.0))
    assert len(traj) == 2 and traj.x_t(0).dtype == np.uint8 and traj.x_t(0).shape == (2, 3, 3, 1)
    assert traj.x_t(0).max() == 0 and traj.x_t(1).min() == 255 and traj.pred_x0(1).max() == 0
    np.testing.assert_array_equal(traj.timesteps, [9, -1])
    assert traj.final_samples.dtype == np.float32 and traj.is_complete


def test_trajectory_bounds_frames_evenly():
    traj = Trajectory(max_frames=10)
    for step in range(101):
        traj.append(_frame(step, 100 - step if step < 100 else -1, 0.0))
    assert len(traj) <= 10
    steps = traj.steps
    assert steps[0] == 0 and steps[-1] == 100
    gaps = np.diff(steps[:-1])
    assert len(set(gaps.tolist())) == 1  # evenly spread (the newest frame aside)


def test_trajectory_frames_keep_their_own_pixels_through_thinning():
    """Each stored frame still holds the image of its own step after the store is thinned
    (frames live in shared blocks, so a wrong row would show another step's picture)."""
    traj = Trajectory(max_frames=7)
    for step in range(41):  # frame `step` is filled with the value -1 + step / 20
        traj.append(_frame(step, 40 - step if step < 40 else -1, -1.0 + step / 20))
    for i, step in enumerate(traj.steps):
        expected = to_uint8_images(torch.full((1, 1, 1), -1.0 + step / 20)).item()
        assert traj.x_t(i).min() == traj.x_t(i).max() == expected, (i, step)
    with pytest.raises(ValueError):
        traj.x_t(0)[...] = 0  # read-only views: a caller cannot overwrite the stored frame


def test_trajectory_memory_for_64_digits_and_1000_frames_is_uint8_sized():
    traj = Trajectory(max_frames=1000)
    for step in range(1001):
        traj.append(_frame(step, 999 - step, 0.0, shape=(64, 1, 28, 28)))
    assert len(traj) <= 1000
    assert traj.nbytes < 120e6


def test_trajectory_keeps_every_frame_of_a_1000_step_run_by_default():
    traj = Trajectory()
    for step in range(1001):  # 1000 sampler steps and the final sample
        traj.append(_frame(step, 999 - step if step < 1000 else -1, 0.0, shape=(1, 1, 2, 2)))
    assert len(traj) == 1001
    np.testing.assert_array_equal(traj.steps, np.arange(1001))
    assert traj.timesteps[-1] == -1 and traj.is_complete


def test_trajectory_points():
    traj = Trajectory()
    traj.append(Frame(0, 5, torch.ones(4, 2), torch.zeros(4, 2)))
    assert traj.is_points and traj.x_t(0).dtype == np.float32 and traj.x_t(0).shape == (4, 2)


def _saved_checkpoint(tmp_path, points: bool):
    from diffusion_studio.core.checkpoint import load_checkpoint
    from tests.cli.tiny_models import save_tiny_checkpoint

    name = "points" if points else "images"
    return load_checkpoint(save_tiny_checkpoint(tmp_path / f"{name}.safetensors", points=points))


def test_prepare_sampling_builds_one_run_from_a_request(tmp_path):
    from diffusion_studio.core.sampling import SampleRequest, prepare_sampling, sample_checkpoint

    ckpt = _saved_checkpoint(tmp_path, points=True)
    config = SamplerConfig("ddim", 6, "trailing", options={"eta": 1.0})
    run = prepare_sampling(ckpt, SampleRequest(config, num_samples=5, seed=3))
    assert run.num_steps == 6 and run.labels is None and run.x_start is None
    assert run.sampler.spec.name == "ddim" and run.sampler.eta == 1.0
    frames = list(run.frames)
    assert [f.step for f in frames] == list(range(7)) and frames[-1].t == -1
    # the same request, the same samples (every draw comes from the seed); another seed differs
    again = sample_checkpoint(ckpt, 5, config, seed=3)
    np.testing.assert_array_equal(frames[-1].x_t.numpy(), again)
    assert not np.array_equal(again, sample_checkpoint(ckpt, 5, config, seed=4))


def test_prepare_sampling_from_a_start_image(tmp_path):
    from PIL import Image

    from diffusion_studio.core.sampling import SampleRequest, prepare_sampling, start_image_tensor

    ckpt = _saved_checkpoint(tmp_path, points=False)
    path = tmp_path / "start.png"
    Image.fromarray(np.full((20, 20, 3), 255, np.uint8)).save(path)
    config = SamplerConfig("ddpm", 10, "trailing")
    request = SampleRequest(config, 2, seed=0, start_image=path, start_t=9)
    image = start_image_tensor(ckpt, request)
    assert image.shape == (1, 8, 8) and torch.allclose(image, torch.ones(1, 8, 8))
    run = prepare_sampling(ckpt, request)
    assert run.num_steps == 2  # T = 50, 10 trailing steps: those at or below t = 9 are 9 and 4
    assert [f.t for f in run.frames] == [9, 4, -1]
    with pytest.raises(ConfigError, match="below every sampling timestep"):
        prepare_sampling(ckpt, SampleRequest(config, 2, start_image=path, start_t=2))
    with pytest.raises(ConfigError, match="timestep out of range"):
        prepare_sampling(ckpt, SampleRequest(config, 2, start_image=path, start_t=50))
    points = _saved_checkpoint(tmp_path, points=True)
    with pytest.raises(ConfigError, match="needs an image model"):
        prepare_sampling(points, SampleRequest(config, 2, start_image=path, start_t=9))


def test_prepare_sampling_refuses_before_any_step(tmp_path):
    from diffusion_studio.core.sampling import SampleRequest, prepare_sampling

    ckpt = _saved_checkpoint(tmp_path, points=True)
    config = SamplerConfig("ddpm", 10)
    with pytest.raises(ConfigError, match="not class-conditional"):
        prepare_sampling(ckpt, SampleRequest(config, 2, label=3))
    with pytest.raises(ConfigError, match="guidance"):
        prepare_sampling(ckpt, SampleRequest(config, 2, guidance_scale=-1.0))
    with pytest.raises(ConfigError, match="at least 1"):
        prepare_sampling(ckpt, SampleRequest(config, 0))
    with pytest.raises(ConfigError, match="1..50"):
        prepare_sampling(ckpt, SampleRequest(SamplerConfig("ddpm", 51), 2))
