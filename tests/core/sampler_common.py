"""The checks every registered sampler must pass (as diffusers' SchedulerCommonTest).

A sampler's test module subclasses `SamplerCommonTests` and sets `name`:

    class TestEuler(SamplerCommonTests):
        name = "euler"

and adds its own parity tests against diffusers. `tests/core/test_sampler_registry.py` checks
that every registered sampler has such a subclass. A flow sampler (`SamplerSpec.objective`
"flow") runs the same checks on a FlowPath with a velocity-predicting network.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.samplers import REGISTRY, SamplerConfig, make_sampler, sampler_spec
from diffusion_studio.core.sampling import first_step, sample
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig

SHAPE = (4, 1, 3, 3)


class _Constant(torch.nn.Module):
    """A perfect network for a data set of one image: x0 itself (x0 prediction), or for a flow
    model on T grid points the velocity (x_t - x0) / t at t = timestep / T."""

    def __init__(self, x0: torch.Tensor, flow_T: int | None = None) -> None:
        super().__init__()
        self.x0 = x0
        self.flow_T = flow_T
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert x.shape == self.x0.shape and t.shape == (x.shape[0],)
        self.calls += 1
        if self.flow_T is None:
            return self.x0.clone()
        time = (t.double() / self.flow_T).view(-1, *([1] * (x.dim() - 1)))
        return ((x.double() - self.x0.double()) / time).to(x.dtype)


class SamplerCommonTests:
    """Subclass with `name` set to a registered sampler's name."""

    name: ClassVar[str] = ""

    # ---- helpers

    @property
    def is_flow(self) -> bool:
        return sampler_spec(self.name).objective == "flow"

    def config(self, steps: int = 10, **changes) -> SamplerConfig:
        return SamplerConfig(self.name, steps, "trailing", **changes)

    def schedule(self, kind: str = "cosine", T: int = 1000) -> NoiseSchedule | FlowPath:
        """The sampler's path: the schedule (diffusion), or a flow path of T points (flow)."""
        return FlowPath(T) if self.is_flow else NoiseSchedule(ScheduleConfig(kind, T))

    def prediction(self, diffusion_type: str) -> str:
        """What the network predicts: `diffusion_type`, or the velocity for a flow sampler."""
        return "velocity" if self.is_flow else diffusion_type

    def perfect(self, x0: torch.Tensor, schedule) -> _Constant:
        """A network that knows x0 (its output in this sampler's prediction type "x0" or the
        velocity)."""
        return _Constant(x0, schedule.num_timesteps if self.is_flow else None)

    def run(self, sampler, model, seed: int = 0, x_start=None, t_start=None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        frames = list(
            sample(
                model,
                sampler.schedule,
                sampler,
                SHAPE[0],
                SHAPE[1:],
                generator,
                x_start=x_start,
                t_start=t_start,
            )
        )
        return frames

    # ---- the registry entry

    def test_registry_entry_is_complete(self) -> None:
        spec = sampler_spec(self.name)
        assert REGISTRY[self.name] is spec and spec.sampler_class.spec is spec
        assert spec.label and spec.help and spec.paper
        assert spec.evaluations_per_step >= 1 and spec.default_steps >= 1

    def test_config_round_trips_through_its_dict(self) -> None:
        config = self.config(7, clip_sample=True)
        assert SamplerConfig.from_dict(config.to_dict()) == config

    def test_karras_offered_only_where_the_spec_says(self) -> None:
        if sampler_spec(self.name).karras:
            plain = make_sampler(self.config(10), self.schedule(), self.prediction("x0"))
            karras = make_sampler(
                self.config(10, karras=True), self.schedule(), self.prediction("x0")
            )
            assert not torch.equal(plain.timesteps.double(), karras.timesteps.double())
        else:
            with pytest.raises(ConfigError, match="Karras"):
                self.config(10, karras=True)

    # ---- timesteps

    @pytest.mark.parametrize("steps", [1, 2, 7, 50])
    @pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
    def test_timesteps_descend_within_the_schedule(self, steps, spacing) -> None:
        schedule = self.schedule("linear", 100)
        config = SamplerConfig(self.name, steps, spacing)
        sampler = make_sampler(config, schedule, self.prediction("epsilon"))
        assert len(sampler.timesteps) == steps == sampler.num_inference_steps
        shown = [sampler.frame_timestep(i) for i in range(steps)]
        assert all(0 <= t <= 99 for t in shown)
        assert all(a >= b for a, b in zip(shown, shown[1:], strict=False))

    # ---- the sampling loop

    @pytest.mark.parametrize("schedule_kind", ["linear", "cosine"])
    @pytest.mark.parametrize("steps", [1, 4, 25])
    def test_a_perfect_denoiser_lands_on_its_image(self, schedule_kind, steps) -> None:
        """Every sampler, deterministic or not, must end exactly on x_0 when the network
        always knows x_0 (the probability-flow ODE and the SDE both end there)."""
        x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(3)) * 2 - 1
        schedule = self.schedule(schedule_kind)
        sampler = make_sampler(self.config(steps), schedule, self.prediction("x0"))
        frames = self.run(sampler, self.perfect(x0, schedule))
        torch.testing.assert_close(frames[-1].x_t, x0, rtol=1e-4, atol=1e-4)
        assert [f.step for f in frames] == list(range(steps + 1))
        assert frames[-1].t == -1 and all(f.t >= 0 for f in frames[:-1])
        for frame in frames:
            assert frame.x_t.shape == SHAPE and frame.pred_x0.shape == SHAPE
            assert torch.isfinite(frame.x_t).all()

    def test_frames_show_x_t_in_the_models_scale(self) -> None:
        """The first frame is pure noise in the x_t scale (unit variance), whatever the
        sampler's own state scale (sigma-space samplers start at sigma_max)."""
        x0 = torch.zeros(64, 1, 8, 8)
        schedule = self.schedule("linear")
        sampler = make_sampler(self.config(10), schedule, self.prediction("x0"))
        generator = torch.Generator().manual_seed(0)
        model = self.perfect(x0, schedule)
        first = next(iter(sample(model, sampler.schedule, sampler, 64, (1, 8, 8), generator)))
        assert 0.9 < float(first.x_t.std()) < 1.1

    def test_counts_its_network_evaluations(self) -> None:
        x0 = torch.zeros(SHAPE)
        for steps in (1, 5, 12):
            schedule = self.schedule()
            sampler = make_sampler(self.config(steps), schedule, self.prediction("x0"))
            model = self.perfect(x0, schedule)
            self.run(sampler, model)
            assert model.calls == sampler.total_evaluations()

    def test_same_seed_same_samples_and_determinism_as_declared(self) -> None:
        schedule = self.schedule()
        torch.manual_seed(0)
        net = torch.nn.Conv2d(1, 1, 3, padding=1)

        class Net(torch.nn.Module):
            def forward(self, x, t):
                return torch.tanh(net(x)) + 1e-3 * t.float().view(-1, 1, 1, 1)

        def final(seed: int, noise_seed: int) -> torch.Tensor:
            sampler = make_sampler(self.config(8), schedule, self.prediction("epsilon"))
            x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(noise_seed))
            g = torch.Generator().manual_seed(seed)
            sampler.begin()
            with torch.no_grad():
                for i in range(len(sampler.timesteps)):
                    x = sampler.advance(lambda x_in, t: Net()(x_in, torch.full((4,), t)), i, x, g)
                    x = x.prev_sample
            return x

        torch.testing.assert_close(final(1, 0), final(1, 0), rtol=0, atol=0)
        if make_sampler(self.config(8), schedule, self.prediction("epsilon")).is_deterministic:
            torch.testing.assert_close(final(1, 0), final(2, 0), rtol=0, atol=0)
        else:
            assert not torch.equal(final(1, 0), final(2, 0))

    def test_a_run_does_not_depend_on_an_earlier_one(self) -> None:
        """Multistep history is forgotten between runs (`Sampler.begin`)."""
        x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(5))
        sampler = make_sampler(self.config(6), self.schedule(), self.prediction("epsilon"))

        class Net(torch.nn.Module):
            def forward(self, x, t):
                return 0.5 * x + x0

        once = self.run(sampler, Net())[-1].x_t
        again = self.run(sampler, Net())[-1].x_t
        torch.testing.assert_close(once, again, rtol=0, atol=0)

    def test_start_from_a_noised_image(self) -> None:
        x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(4)) * 2 - 1
        schedule = self.schedule()
        sampler = make_sampler(self.config(20), schedule, self.prediction("x0"))
        first = first_step(sampler, 500)
        assert first > 0 and sampler.frame_timestep(first) <= 500
        frames = self.run(sampler, self.perfect(x0, schedule), x_start=x0, t_start=500)
        assert len(frames) == 20 - first + 1 and frames[0].t <= 500
        torch.testing.assert_close(frames[-1].x_t, x0, rtol=1e-4, atol=1e-4)
