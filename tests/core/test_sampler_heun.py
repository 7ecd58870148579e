"""Heun (Karras et al. 2022, Algorithm 1): every network evaluation and every whole step
against diffusers' HeunDiscreteScheduler (which interleaves the predictor and the corrector in its
timesteps: t_0, t_1, t_1, t_2, t_2, ...), whole runs through the sampling loop, 2n - 1
evaluations, and second-order convergence where the ODE has a closed-form solution."""

from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch

from diffusion_studio.core.samplers import (
    DIFFUSION_PREDICTION_TYPES,
    SamplerConfig,
    make_sampler,
    sampler_spec,
)
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig
from tests.core.sampler_common import SamplerCommonTests
from tests.core.test_sampler_euler import (
    SHAPE,
    Net,
    check_tables,
    diffusers_class,
    diffusers_run,
    float64_run,
    gap,
    our_run,
    reference,
)


def test_spec_and_karras_as_diffusers_offers_it():
    spec = sampler_spec("heun")
    parameters = inspect.signature(diffusers_class("heun").__init__).parameters
    assert spec.karras and "use_karras_sigmas" in parameters
    assert spec.deterministic and spec.evaluations_per_step == 2
    assert spec.diffusers_classes == ("HeunDiscreteScheduler",)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_timesteps_sigmas_and_initial_sigma_match_diffusers(kind, spacing, karras, steps):
    config = ScheduleConfig(kind, 1000)
    schedule = NoiseSchedule(config)
    ours = make_sampler(SamplerConfig("heun", steps, spacing, karras=karras), schedule, "epsilon")
    ref = reference("heun", config, "epsilon", spacing, karras, schedule)
    ref.set_timesteps(steps)
    check_tables(ours, ref, heun=True)
    assert ours.total_evaluations() == 2 * steps - 1 == len(ref.timesteps)


# --------------------------------------------------------------------------- every evaluation


def diffusers_evaluations(ref, net, seed: int):
    """diffusers' loop over its 2n - 1 timesteps (set), in the dtype of `net`: per evaluation
    (t, network input, pred_original_sample), and the state before each whole step and after
    the last."""
    dtype = net.conv.weight.dtype
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)).to(dtype)
    x = x * float(ref.init_noise_sigma)
    evaluations, states = [], [x]
    last = len(ref.timesteps) - 1
    with torch.no_grad():
        for k, t in enumerate(ref.timesteps):
            x_in = ref.scale_model_input(x, t)
            out = ref.step(net(x_in, t), t, x)
            evaluations.append((float(t), x_in, out.pred_original_sample))
            x = out.prev_sample
            if k % 2 == 1 or k == last:  # a corrector ends a whole step, as does the last Euler
                states.append(x)
    return evaluations, states


def heun_both(ours, ref, steps: int, seed: int = 0) -> float:
    """Each whole step of ours from diffusers' state before it: its evaluations (timestep and
    network input) are diffusers' evaluations 2i and 2i + 1, its result diffusers' state after
    2i + 1 (2i at the last step), its x_0 estimate the predictor's. The largest gap.

    In float64, on our float64 sigmas (diffusers' Heun steps in the sample's dtype; its tables,
    float32, are checked first): the corrector divides by sigma_{i+1} what it multiplies by
    sigma_i - sigma_{i+1}, so a float32 rounding (of x~, or of a sigma) comes back
    sigma_i / sigma_{i+1} times larger, up to 1.6e4 (linspace: sigma(999) to sigma(0)), in
    diffusers' result as in ours. Float32 runs are compared whole, below."""
    ref.set_timesteps(steps)
    check_tables(ours, ref, heun=True)
    sigmas = torch.from_numpy(ours.sigmas)  # diffusers' layout: s0, s1, s1, ..., s_n-1, s_n-1, 0
    ref.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
    net = Net(seed).double()
    evaluations, states = diffusers_evaluations(ref, net, seed)
    assert len(evaluations) == 2 * steps - 1 and len(states) == steps + 1
    worst = 0.0
    for i in range(steps):
        calls: list[tuple[float, torch.Tensor]] = []

        def model_fn(x_in: torch.Tensor, t: float, calls=calls) -> torch.Tensor:
            calls.append((t, x_in))
            return net(x_in, t)

        x = states[i]
        with torch.no_grad():
            out = ours.advance(model_fn, i, x)
        assert len(calls) == (2 if i < steps - 1 else 1)
        for k, (t, x_in) in enumerate(calls):
            t_ref, x_in_ref, _ = evaluations[2 * i + k]
            assert t == pytest.approx(t_ref, abs=1e-3)
            worst = max(worst, gap(x_in, x_in_ref, x_in_ref))
        worst = max(
            worst,
            gap(out.prev_sample, states[i + 1], x),
            gap(out.pred_x0, evaluations[2 * i][2], x),
        )
    return worst


HEUN_GRID = list(
    itertools.product(
        DIFFUSION_PREDICTION_TYPES,
        ["leading", "trailing", "linspace"],
        [False, True],  # Karras sigmas
        [False, True],  # clip x_0
        [25, 7, 2, 1],
    )
)


@pytest.mark.parametrize("prediction,spacing,karras,clip,steps", HEUN_GRID)
def test_every_evaluation_and_step_matches_diffusers(prediction, spacing, karras, clip, steps):
    config = ScheduleConfig("cosine" if steps == 7 else "linear", 1000)
    schedule = NoiseSchedule(config)
    ours = make_sampler(
        SamplerConfig("heun", steps, spacing, clip_sample=clip, karras=karras), schedule, prediction
    )
    ref = reference("heun", config, prediction, spacing, karras, schedule, clip_sample=clip)
    assert heun_both(ours, ref, steps) < 1e-9  # measured: 2e-12 at most


def test_step_alone_is_refused():
    sampler = make_sampler(SamplerConfig("heun", 5), NoiseSchedule(ScheduleConfig()), "epsilon")
    with pytest.raises(NotImplementedError, match="advance"):
        sampler.step(torch.zeros(SHAPE), 0, torch.zeros(SHAPE))


# --------------------------------------------------------------------------- whole runs


# Not here: cosine + trailing without Karras sigmas, whose first step goes from sigma = 2e4 to
# 7.7 (the corrector's sigma ratio: 2.6e3 times the rounding of x~, in diffusers' result as in
# ours): test_where_diffusers_rounding_grows_ours_stays_near_float64 checks that case.
WHOLE_RUN_GRID = [
    ("linear", "leading", False, "epsilon"),
    ("linear", "trailing", False, "epsilon"),
    ("linear", "linspace", False, "v"),
    ("linear", "trailing", True, "v"),
    ("cosine", "linspace", True, "x0"),
    ("cosine", "trailing", True, "v"),
    ("cosine", "trailing", True, "epsilon"),
]


@pytest.mark.parametrize("kind,spacing,karras,prediction", WHOLE_RUN_GRID)
def test_whole_run_through_the_sampling_loop_matches_diffusers(kind, spacing, karras, prediction):
    """diffusion_studio.core.sampling.sample against diffusers' loop over its 2n - 1 timesteps: the state before
    every whole step (frames show it as x_t) and the sample."""
    config = ScheduleConfig(kind, 1000)
    schedule = NoiseSchedule(config)
    sampler = make_sampler(SamplerConfig("heun", 12, spacing, karras=karras), schedule, prediction)
    ref = reference("heun", config, prediction, spacing, karras, schedule)
    net = Net()
    states = diffusers_run(ref, net, 12, seed=7)
    assert len(states) == 2 * 12  # the noise, then one state per evaluation
    whole = states[:1] + states[2:-1:2] + states[-1:]  # after each corrector, and the last
    frames = our_run(sampler, net, seed=7)
    assert len(frames) == len(whole) == 13
    for i, (frame, state) in enumerate(zip(frames[:-1], whole[:-1], strict=True)):
        shown = state / math.sqrt(sampler.sigma(i) ** 2 + 1)
        assert gap(frame.x_t, shown, shown) < 1e-5
    assert gap(frames[-1].x_t, whole[-1], whole[-1]) < 1e-5


@pytest.mark.parametrize("prediction", DIFFUSION_PREDICTION_TYPES)
def test_where_diffusers_rounding_grows_ours_stays_near_float64(prediction):
    """Cosine, trailing, float32: the first step goes from sigma = 2e4 (|x| ~ 5e4) to 7.7, and
    the corrector brings float32 rounding back 2.6e3 times larger. diffusers' corrector
    (d' = (x~ - D(x~)) / sigma' with x~ = x + d dt, rounded at |x|) ends 1e-4 (epsilon), 4e-2
    (v) and 7e-3 (x0) from the float64 run; ours (x~ = x_0 + sigma' eps, then
    x~ + (sigma' - sigma)(eps~ - eps) / 2, each eps as directly as the network gives it)
    6e-7, 4e-5 and 5e-6."""
    config = ScheduleConfig("cosine", 1000)
    schedule = NoiseSchedule(config)
    sampler = make_sampler(SamplerConfig("heun", 12, "trailing"), schedule, prediction)
    net = Net()
    truth = float64_run(sampler, net, seed=7).float()
    ours = our_run(sampler, net, seed=7)[-1].x_t
    ref = reference("heun", config, prediction, "trailing", schedule=schedule)
    theirs = diffusers_run(ref, net, 12, 7)[-1]
    assert gap(ours, truth, truth) < 1e-4
    assert gap(theirs, truth, truth) < 0.1  # diffusers: its own rounding, not another method


def test_agrees_with_diffusers_own_float32_tables():
    config = ScheduleConfig("linear", 1000)
    sampler = make_sampler(SamplerConfig("heun", 15, "linspace"), NoiseSchedule(config), "epsilon")
    states = diffusers_run(reference("heun", config, "epsilon", "linspace"), Net(), 15, seed=3)
    assert gap(our_run(sampler, Net(), seed=3)[-1].x_t, states[-1], states[-1]) < 3e-4


# --------------------------------------------------------------------------- the method's order


GAUSSIAN_STD = 0.5


def gaussian_run(sampler, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` steps of a sampler (x0 prediction) on data x_0 ~ N(0, c^2), c = GAUSSIAN_STD,
    whose exact denoiser is D(x; sigma) = c^2 / (c^2 + sigma^2) x; float64. Returns the start
    and the end state. The ODE dx/dsigma = (x - D) / sigma solves to
    x(sigma) = x(sigma_max) sqrt((c^2 + sigma^2) / (c^2 + sigma_max^2))."""
    c = GAUSSIAN_STD
    sigma_at = dict(zip(sampler.timesteps.tolist(), sampler.sigmas[:-1].tolist(), strict=True))

    def denoiser(x_in: torch.Tensor, t: float) -> torch.Tensor:
        sigma = sigma_at[t]
        return c**2 / (c**2 + sigma**2) * x_in * math.sqrt(1 + sigma**2)

    start = torch.randn(4096, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = start * sampler.init_noise_sigma
    first = x
    for i in range(steps):
        x = sampler.advance(denoiser, i, x).prev_sample
    return first, x


def gaussian_ode_error(name: str, intervals: int) -> float:
    """Linspace spacing with Karras sigmas runs from sigma(T-1) to sigma(0) whatever n, evenly
    in sigma^(1/7): the relative error at sigma_min after `intervals` steps (before the last
    step, to sigma = 0, where Heun is Euler)."""
    schedule = NoiseSchedule(ScheduleConfig("linear", 1000))
    config = SamplerConfig(name, intervals + 1, "linspace", karras=True)
    sampler = make_sampler(config, schedule, "x0")
    first, x = gaussian_run(sampler, intervals)
    c2, sigma_min, sigma_max = GAUSSIAN_STD**2, sampler.sigma(intervals), sampler.sigma(0)
    exact = first * math.sqrt((c2 + sigma_min**2) / (c2 + sigma_max**2))
    return float((x - exact).abs().max() / exact.abs().max())


def test_heun_is_second_order_and_euler_first():
    """Halving the step: Euler's error halves, Heun's quarters (measured: 1.91, 1.95 and
    4.29, 4.14 from 16 to 64 steps)."""
    for name, order in (("euler", 1), ("heun", 2)):
        errors = [gaussian_ode_error(name, n) for n in (16, 32, 64)]
        for coarse, fine in zip(errors, errors[1:]):
            assert 2**order * 0.85 < coarse / fine < 2**order * 1.15
    # 32 Heun steps (63 evaluations) beat 64 Euler steps (64): measured 0.017 and 0.046
    assert gaussian_ode_error("heun", 32) < gaussian_ode_error("euler", 64) / 2


@pytest.mark.parametrize(
    "spacing,karras,std",
    [("trailing", False, 0.80), ("linspace", False, 0.85), ("leading", False, 0.50)],
)
def test_a_first_step_down_from_sigma_2e4_is_beyond_heun(spacing, karras, std):
    """The cosine schedule's sigma_max is 2e4: with trailing or linspace spacing (25 steps) the
    first step goes from there to sigma = 16, over which the slope (x - D) / sigma is nothing
    like linear, and Heun's trapezoid lands far off even with the exact denoiser (data of std
    0.5 come out with std 0.80, 0.85; Euler 0.47; diffusers' Heun is the same method). Leading
    spacing starts at sigma(960) = 16 and halves it: 0.50. Hence the advice in Heun's help."""
    schedule = NoiseSchedule(ScheduleConfig("cosine", 1000))
    sampler = make_sampler(SamplerConfig("heun", 25, spacing, karras=karras), schedule, "x0")
    _, x = gaussian_run(sampler, 25)
    assert float(x.std()) == pytest.approx(std, abs=0.02)


# --------------------------------------------------------------------------- common checks


class TestHeunCommon(SamplerCommonTests):
    name = "heun"
