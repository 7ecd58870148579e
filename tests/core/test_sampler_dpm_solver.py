"""DPM-Solver++ 2M and 2M SDE: step-by-step and whole-run parity with diffusers'
DPMSolverMultistepScheduler ("dpmsolver++" / "sde-dpmsolver++", solver_order 2, midpoint,
lower_order_final), starts from a noised image, and the equations themselves."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.samplers import (
    DIFFUSION_PREDICTION_TYPES,
    SamplerConfig,
    make_sampler,
    spec_for_diffusers_class,
)
from diffusion_studio.core.samplers.dpm_solver import DPMSolverPP2M, multistep_timesteps
from diffusion_studio.core.samplers.sigmas import sigma_to_t
from diffusion_studio.core.sampling import first_step, sample
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig
from tests.core.multistep_parity import SHAPE, diffusers_scheduler, step_by_step, whole_run
from tests.core.sampler_common import SamplerCommonTests, _Constant

DPM = "DPMSolverMultistepScheduler"
SDE = {"algorithm_type": "sde-dpmsolver++"}


def _both(name, kind, prediction, spacing, karras, steps, tables="ours", **schedule):
    """Our sampler and diffusers' on the same settings (diffusers on our tables by default)."""
    config = ScheduleConfig(kind, 1000, **schedule)
    ours = make_sampler(
        SamplerConfig(name, steps, spacing, karras=karras), NoiseSchedule(config), prediction
    )
    extra = SDE if name == "dpmpp-2m-sde" else {}
    ref = diffusers_scheduler(DPM, config, prediction, spacing, karras, steps, tables, **extra)
    return ours, ref


# Every prediction type, spacing, Karras on/off and step count (1, 2, odd, 20), the linear
# schedule at 1, 2 and 20 steps, the cosine at 7 (and 20 with Karras, where diffusers leaves the
# timesteps unrounded before truncating them).
GRID = [
    (*p, "cosine" if p[4] == 7 or (p[3] and p[4] == 20) else "linear")
    for p in itertools.product(
        ["dpmpp-2m", "dpmpp-2m-sde"],
        DIFFUSION_PREDICTION_TYPES,
        ["leading", "trailing", "linspace"],
        [False, True],  # Karras sigmas
        [1, 2, 7, 20],
    )
]


@pytest.mark.parametrize("name,prediction,spacing,karras,steps,kind", GRID)
def test_each_step_matches_diffusers(name, prediction, spacing, karras, steps, kind):
    ours, ref = _both(name, kind, prediction, spacing, karras, steps)
    assert step_by_step(ours, ref, stochastic=name == "dpmpp-2m-sde") < 1e-5


@pytest.mark.parametrize("name,prediction,spacing,karras,steps,kind", GRID)
def test_whole_runs_match_diffusers(name, prediction, spacing, karras, steps, kind):
    """Our sampling loop against diffusers' pipeline loop: same initial noise and (SDE) the
    same per-step noise from one generator each."""
    ours, ref = _both(name, kind, prediction, spacing, karras, steps)
    assert whole_run(ours, ref, seed=steps, stochastic=name == "dpmpp-2m-sde") < 1e-5


@pytest.mark.parametrize("name", ["dpmpp-2m", "dpmpp-2m-sde"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("t_start", [700, 300])
def test_a_run_from_a_noised_image_matches_diffusers(name, karras, t_start):
    """Starting at a later step (img2img: diffusers' set_begin_index) the history is empty, so
    the first step taken is first order, exactly as diffusers' lower_order_nums = 0."""
    ours, ref = _both(name, "linear", "epsilon", "trailing", karras, 20)
    x_start = torch.rand(SHAPE[1:], generator=torch.Generator().manual_seed(9)) * 2 - 1
    assert first_step(ours, t_start) > 0
    stochastic = name == "dpmpp-2m-sde"
    assert whole_run(ours, ref, 3, x_start, t_start, stochastic=stochastic) < 1e-5


@pytest.mark.parametrize("name", ["dpmpp-2m", "dpmpp-2m-sde"])
@pytest.mark.parametrize("prediction", DIFFUSION_PREDICTION_TYPES)
def test_clipped_x0_matches_diffusers_thresholding_at_one(name, prediction):
    """Our clip to [-1, 1] is diffusers' dynamic thresholding with sample_max_value = 1 (its
    threshold s is clamped to [1, 1]); DPM-Solver++ uses only x_0, so the updates agree."""
    config = ScheduleConfig("linear", 1000)
    ours = make_sampler(
        SamplerConfig(name, 10, "trailing", clip_sample=True), NoiseSchedule(config), prediction
    )
    extra = SDE if name == "dpmpp-2m-sde" else {}
    ref = diffusers_scheduler(
        DPM,
        config,
        prediction,
        "trailing",
        False,
        10,
        thresholding=True,
        sample_max_value=1.0,
        **extra,
    )
    assert step_by_step(ours, ref, stochastic=bool(extra)) < 1e-5


@pytest.mark.parametrize("name", ["dpmpp-2m", "dpmpp-2m-sde"])
@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_zero_terminal_snr_matches_diffusers(name, prediction):
    """alphabar_{T-1} = 0 becomes 2^-24, as in diffusers (its first sigma stays finite)."""
    ours, ref = _both(name, "linear", prediction, "trailing", False, 20, zero_terminal_snr=True)
    assert ours.timesteps[0] == 999 and math.isclose(ours.sigmas[0], math.sqrt(2.0**24 - 1))
    assert step_by_step(ours, ref, stochastic=name == "dpmpp-2m-sde") < 1e-5


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_sde_with_karras_on_the_linear_schedule_matches_diffusers(prediction):
    """The CLI parity case (linear, trailing, 20 steps, Karras, SDE) on identical tables: equal
    to float32 rounding (measured: bitwise). Against diffusers' own tables it differs by up to
    2e-5, because its float32 alphabar loses 1 - alphabar to cancellation at small t (its
    sigma_0 = sqrt((1 - alphabar_0) / alphabar_0), Karras' sigma_min, is 8e-5 off), and every
    Karras sigma near the end moves with it."""
    ours, ref = _both("dpmpp-2m-sde", "linear", prediction, "trailing", True, 20)
    assert whole_run(ours, ref, stochastic=True) < 1e-6
    _, theirs = _both("dpmpp-2m-sde", "linear", prediction, "trailing", True, 20, "theirs")
    assert abs(theirs.sigmas[-2].item() / ours.sigmas[-2] - 1) > 1e-5  # the tables' difference


@pytest.mark.parametrize("name", ["dpmpp-2m", "dpmpp-2m-sde"])
def test_agrees_with_diffusers_own_float32_tables(name):
    """End to end against an untouched diffusers scheduler: equal up to its float32 tables."""
    ours, ref = _both(name, "linear", "epsilon", "linspace", False, 20, tables="theirs")
    assert whole_run(ours, ref, stochastic=name == "dpmpp-2m-sde") < 1e-4


def test_diffusers_timesteps_quirks():
    """linspace and leading take n of n + 1 points (not DDIM's); trailing is DDIM's; leading
    with n = T (diffusers: all timesteps 0) is refused."""
    np.testing.assert_array_equal(multistep_timesteps(10, 4, "linspace"), [9, 7, 4, 2])
    np.testing.assert_array_equal(multistep_timesteps(10, 4, "leading"), [8, 6, 4, 2])
    np.testing.assert_array_equal(multistep_timesteps(10, 4, "trailing"), [9, 7, 4, 1])
    np.testing.assert_array_equal(multistep_timesteps(10, 9, "leading"), np.arange(9, 0, -1))
    with pytest.raises(ConfigError, match="leading"):
        multistep_timesteps(10, 10, "leading")
    schedule = NoiseSchedule(ScheduleConfig("linear", 10))
    karras = make_sampler(SamplerConfig("dpmpp-2m", 10, "leading", karras=True), schedule, "x0")
    assert len(karras.timesteps) == 10  # Karras ignores the spacing


def test_karras_timesteps_truncate_on_cosine_and_round_otherwise():
    """diffusers' quirk: sigma_to_t is rounded except on squaredcos_cap_v2, then cast to int64."""
    for kind in ("linear", "cosine"):
        schedule = NoiseSchedule(ScheduleConfig(kind, 1000))
        sampler = make_sampler(SamplerConfig("dpmpp-2m", 10, karras=True), schedule, "v")
        exact = sigma_to_t(sampler.sigmas[:-1], np.log(sampler.table))
        expected = np.trunc(exact) if kind == "cosine" else np.round(exact)
        np.testing.assert_array_equal(sampler.timesteps.numpy(), expected.astype(np.int64))
        assert sampler.timesteps.dtype == torch.int64


def test_first_step_is_ddim_and_the_last_lands_on_x0():
    """DPM-Solver++ first order is DDIM (eta 0) between the two noise levels (Lu et al. 2022,
    sec. 4): x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps; its last step returns the x_0 estimate."""
    schedule = NoiseSchedule(ScheduleConfig("linear", 1000))
    sampler = make_sampler(SamplerConfig("dpmpp-2m", 10, "trailing"), schedule, "epsilon")
    g = torch.Generator().manual_seed(0)
    x, eps = (torch.randn(2, 5, generator=g, dtype=torch.float64) for _ in range(2))
    ab_s, ab_t = (float(schedule.alphas_cumprod[int(t)]) for t in sampler.timesteps[:2])
    x0 = (x - math.sqrt(1 - ab_s) * eps) / math.sqrt(ab_s)
    out = sampler.step(eps, 0, x)
    torch.testing.assert_close(out.pred_x0, x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        out.prev_sample, math.sqrt(ab_t) * x0 + math.sqrt(1 - ab_t) * eps, rtol=1e-10, atol=1e-10
    )
    last = sampler.step(eps, 9, x)
    torch.testing.assert_close(last.prev_sample, last.pred_x0, rtol=0, atol=0)


def test_second_order_step_is_algorithm_2():
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2: with h_i = lambda_i - lambda_{i-1},
    r = h_{i-1} / h_i and D = (1 + 1/(2r)) x_0(i-1) - 1/(2r) x_0(i-2),
    x_i = (sigma_i / sigma_{i-1}) x - alpha_i (e^{-h_i} - 1) D."""
    schedule = NoiseSchedule(ScheduleConfig("cosine", 1000))
    sampler = make_sampler(SamplerConfig("dpmpp-2m", 6, "linspace"), schedule, "x0")
    g = torch.Generator().manual_seed(1)
    m0, m1, x = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    sampler.step(m0, 0, x)  # first order; remembers x_0(step 0) = m0
    ab = [float(schedule.alphas_cumprod[int(t)]) for t in sampler.timesteps[:3]]
    lam = [0.5 * math.log(a / (1 - a)) for a in ab]
    h, h_prev = lam[2] - lam[1], lam[1] - lam[0]
    r = h_prev / h
    d = (1 + 1 / (2 * r)) * m1 - 1 / (2 * r) * m0
    expected = math.sqrt((1 - ab[2]) / (1 - ab[1])) * x - math.sqrt(ab[2]) * math.expm1(-h) * d
    torch.testing.assert_close(sampler.step(m1, 1, x).prev_sample, expected, rtol=1e-9, atol=1e-9)


def test_sde_noise_is_drawn_as_diffusers_randn_tensor_every_step():
    """One float32 draw of the sample's shape per step, the last step included (where it is
    multiplied by sigma = 0), so one generator stays in step with diffusers' over a run."""
    schedule = NoiseSchedule(ScheduleConfig("linear", 1000))
    sampler = make_sampler(SamplerConfig("dpmpp-2m-sde", 3, "trailing"), schedule, "epsilon")
    x, out = torch.randn(SHAPE), torch.randn(SHAPE)
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        sampler.step(out, i, x, generator=g)
    g_expected = torch.Generator().manual_seed(0)
    for _ in range(3):
        torch.randn(SHAPE, generator=g_expected, dtype=torch.float32)
    assert torch.equal(torch.randn(4, generator=g), torch.randn(4, generator=g_expected))
    # given noise replaces the draw
    sampler.begin()
    a = sampler.step(out, 0, x, noise=torch.zeros(SHAPE))
    sampler.begin()
    b = sampler.step(out, 0, x, noise=torch.ones(SHAPE))
    assert not torch.equal(a.prev_sample, b.prev_sample)


def test_history_is_forgotten_by_begin_and_a_later_start_is_first_order():
    """begin() clears the history: a step after it equals the same step on a fresh sampler,
    which is first order (no history) even at a later index."""
    schedule = NoiseSchedule(ScheduleConfig("linear", 1000))
    config = SamplerConfig("dpmpp-2m", 10, "trailing")
    g = torch.Generator().manual_seed(2)
    x, m0, m1 = (torch.randn(SHAPE, generator=g) for _ in range(3))
    used = make_sampler(config, schedule, "x0")
    used.step(m0, 3, x)
    second_order = used.step(m1, 4, x).prev_sample
    used.begin()
    after_begin = used.step(m1, 4, x).prev_sample
    fresh = make_sampler(config, schedule, "x0").step(m1, 4, x).prev_sample
    assert torch.equal(after_begin, fresh) and not torch.equal(second_order, fresh)


@pytest.mark.parametrize("name", ["dpmpp-2m", "dpmpp-2m-sde"])
def test_repeated_timesteps_stay_finite(name):
    """linspace with n close to T repeats timesteps; diffusers then divides by h = 0 (nan).
    Here a repeated noise level is a no-op step and the history keeps one entry per level."""
    schedule = NoiseSchedule(ScheduleConfig("linear", 100))
    sampler = make_sampler(SamplerConfig(name, 100, "linspace"), schedule, "x0")
    shown = sampler.timesteps.tolist()
    assert len(set(shown)) < len(shown)  # there are repeats
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    frames = list(sample(_Constant(x0), schedule, sampler, SHAPE[0], SHAPE[1:], torch.Generator()))
    assert all(torch.isfinite(f.x_t).all() for f in frames)
    torch.testing.assert_close(frames[-1].x_t, x0, rtol=1e-4, atol=1e-4)


def test_diffusers_class_and_config_pick_the_sampler():
    """DPMSolverMultistepScheduler maps to dpmpp-2m; its config's algorithm_type names the SDE
    variant (`DPMSolverPP2M.diffusers_variant`, for the diffusers-folder mapping)."""
    assert spec_for_diffusers_class(DPM).name == "dpmpp-2m"
    assert DPMSolverPP2M.diffusers_variant({}) == "dpmpp-2m"
    assert DPMSolverPP2M.diffusers_variant({"algorithm_type": "dpmsolver++"}) == "dpmpp-2m"
    variant = DPMSolverPP2M.diffusers_variant({"algorithm_type": "sde-dpmsolver++"})
    assert variant == "dpmpp-2m-sde"


class TestDPMSolverPP2MCommon(SamplerCommonTests):
    name = "dpmpp-2m"


class TestDPMSolverPP2MSDECommon(SamplerCommonTests):
    name = "dpmpp-2m-sde"
