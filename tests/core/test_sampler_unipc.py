"""UniPC: step-by-step and whole-run parity with diffusers' UniPCMultistepScheduler (bh2,
predict_x0, lower_order_final) at solver orders 1-3, starts from a noised image, and the
predictor / corrector equations themselves."""

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
from diffusion_studio.core.samplers.sigmas import sigma_to_t
from diffusion_studio.core.samplers.unipc import UniPCSampler
from diffusion_studio.core.sampling import first_step, sample
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig
from tests.core.multistep_parity import SHAPE, diffusers_scheduler, step_by_step, whole_run
from tests.core.sampler_common import SamplerCommonTests, _Constant

UNIPC = "UniPCMultistepScheduler"


def _both(kind, prediction, spacing, karras, steps, order=2, tables="ours", **schedule):
    """Our UniPC and diffusers' on the same settings (diffusers on our tables by default)."""
    config = ScheduleConfig(kind, 1000, **schedule)
    ours = make_sampler(
        SamplerConfig("unipc", steps, spacing, karras=karras, options={"solver_order": order}),
        NoiseSchedule(config),
        prediction,
    )
    ref = diffusers_scheduler(
        UNIPC, config, prediction, spacing, karras, steps, tables, solver_order=order
    )
    return ours, ref


# Every prediction type, spacing, Karras on/off, step count (1, 2, odd, 20) and solver order;
# the cosine schedule at 7 steps and at 20 with Karras, the linear one otherwise.
GRID = [
    (*p, "cosine" if p[3] == 7 or (p[2] and p[3] == 20) else "linear")
    for p in itertools.product(
        DIFFUSION_PREDICTION_TYPES,
        ["leading", "trailing", "linspace"],
        [False, True],  # Karras sigmas
        [1, 2, 7, 20],
        [1, 2, 3],  # solver order
    )
]


@pytest.mark.parametrize("prediction,spacing,karras,steps,order,kind", GRID)
def test_each_step_matches_diffusers(prediction, spacing, karras, steps, order, kind):
    ours, ref = _both(kind, prediction, spacing, karras, steps, order)
    assert step_by_step(ours, ref) < 1e-5


@pytest.mark.parametrize("prediction,spacing,karras,steps,order,kind", GRID)
def test_whole_runs_match_diffusers(prediction, spacing, karras, steps, order, kind):
    ours, ref = _both(kind, prediction, spacing, karras, steps, order)
    assert whole_run(ours, ref, seed=steps) < 1e-5


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("t_start", [700, 300])
def test_a_run_from_a_noised_image_matches_diffusers(order, karras, t_start):
    """Starting at a later step (diffusers' set_begin_index): no corrector on the first step
    (nothing to correct) and the predictor's order ramps up from 1 as at the start."""
    ours, ref = _both("linear", "epsilon", "trailing", karras, 20, order)
    x_start = torch.rand(SHAPE[1:], generator=torch.Generator().manual_seed(9)) * 2 - 1
    assert first_step(ours, t_start) > 0
    assert whole_run(ours, ref, 3, x_start, t_start) < 1e-5


@pytest.mark.parametrize("prediction", DIFFUSION_PREDICTION_TYPES)
def test_clipped_x0_matches_diffusers_thresholding_at_one(prediction):
    """Our clip to [-1, 1] is diffusers' dynamic thresholding with sample_max_value = 1; UniPC
    with predict_x0 uses only x_0 (predictor and corrector)."""
    config = ScheduleConfig("linear", 1000)
    ours = make_sampler(
        SamplerConfig("unipc", 10, "trailing", clip_sample=True), NoiseSchedule(config), prediction
    )
    ref = diffusers_scheduler(
        UNIPC, config, prediction, "trailing", False, 10, thresholding=True, sample_max_value=1.0
    )
    assert step_by_step(ours, ref) < 1e-5


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_zero_terminal_snr_matches_diffusers(prediction):
    ours, ref = _both("linear", prediction, "trailing", False, 20, zero_terminal_snr=True)
    assert math.isclose(ours.sigmas[0], math.sqrt(2.0**24 - 1))
    assert step_by_step(ours, ref) < 1e-5


def test_agrees_with_diffusers_own_float32_tables():
    """End to end against an untouched diffusers scheduler: equal up to its float32 tables."""
    ours, ref = _both("linear", "epsilon", "linspace", False, 20, tables="theirs")
    assert whole_run(ours, ref) < 1e-4


def test_karras_timesteps_are_rounded_on_every_schedule():
    """Unlike DPM-Solver++ (which truncates on the cosine schedule), UniPC rounds."""
    schedule = NoiseSchedule(ScheduleConfig("cosine", 1000))
    sampler = make_sampler(SamplerConfig("unipc", 10, karras=True), schedule, "v")
    exact = sigma_to_t(sampler.sigmas[:-1], np.log(sampler.table))
    np.testing.assert_array_equal(sampler.timesteps.numpy(), np.round(exact).astype(np.int64))


def _vp(ab: float) -> tuple[float, float, float]:
    """alpha, sigma and lambda = log(alpha / sigma) at alphabar = ab."""
    return math.sqrt(ab), math.sqrt(1 - ab), 0.5 * math.log(ab / (1 - ab))


def test_order_one_is_ddim_then_the_trapezoidal_corrector():
    """UniPC-1 with B(h) = e^h - 1 (Zhao et al. 2023, sec. 3): the predictor is DDIM in lambda,
    x_1 = (sigma_1 / sigma_0) x_0 - alpha_1 (e^{-h} - 1) m_0, and UniC-1 redoes that step with
    the mean of the two x_0 estimates (rho = 1/2): x_1^c = (sigma_1 / sigma_0) x_0
    - alpha_1 (e^{-h} - 1) (m_0 + m_1) / 2, from which the next predictor step starts."""
    schedule = NoiseSchedule(ScheduleConfig("linear", 1000))
    sampler = make_sampler(
        SamplerConfig("unipc", 5, "trailing", options={"solver_order": 1}), schedule, "x0"
    )
    g = torch.Generator().manual_seed(0)
    x0, m0, m1 = (torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(3))
    (a0, s0, l0), (a1, s1, l1), (a2, s2, l2) = (
        _vp(float(schedule.alphas_cumprod[int(t)])) for t in sampler.timesteps[:3]
    )
    x1 = sampler.step(m0, 0, x0).prev_sample
    torch.testing.assert_close(x1, s1 / s0 * x0 - a1 * math.expm1(-(l1 - l0)) * m0)
    corrected = s1 / s0 * x0 - a1 * math.expm1(-(l1 - l0)) * (m0 + m1) / 2
    x2 = sampler.step(m1, 1, x1).prev_sample
    torch.testing.assert_close(x2, s2 / s1 * corrected - a2 * math.expm1(-(l2 - l1)) * m1)


def test_first_step_equals_dpm_solver_pp():
    """With no history both are the first-order exponential integrator (= DDIM)."""
    schedule = NoiseSchedule(ScheduleConfig("cosine", 1000))
    g = torch.Generator().manual_seed(1)
    x, out = (torch.randn(SHAPE, generator=g) for _ in range(2))
    steps = [
        make_sampler(SamplerConfig(name, 8, "linspace"), schedule, "v").step(out, 0, x)
        for name in ("unipc", "dpmpp-2m")
    ]
    torch.testing.assert_close(steps[0].prev_sample, steps[1].prev_sample, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_repeated_timesteps_stay_finite(order):
    """linspace with n = T repeats timesteps (diffusers: h = 0, nan at orders 2-3); here a
    repeated noise level is a no-op and the history keeps one entry per level."""
    schedule = NoiseSchedule(ScheduleConfig("linear", 100))
    config = SamplerConfig("unipc", 100, "linspace", options={"solver_order": order})
    sampler = make_sampler(config, schedule, "x0")
    shown = sampler.timesteps.tolist()
    assert len(set(shown)) < len(shown)
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    frames = list(sample(_Constant(x0), schedule, sampler, SHAPE[0], SHAPE[1:], torch.Generator()))
    assert all(torch.isfinite(f.x_t).all() for f in frames)
    torch.testing.assert_close(frames[-1].x_t, x0, rtol=1e-4, atol=1e-4)


def test_solver_order_option():
    assert SamplerConfig("unipc").options == {"solver_order": 2}
    for bad in (0, 4):
        with pytest.raises(ConfigError, match="solver_order"):
            SamplerConfig("unipc", options={"solver_order": bad})
    schedule = NoiseSchedule(ScheduleConfig("linear", 100))
    with pytest.raises(ConfigError, match="solver_order"):
        UniPCSampler(schedule, solver_order=True)
    assert "solver order 3" in SamplerConfig("unipc", options={"solver_order": 3}).summary()


def test_diffusers_mapping():
    spec = spec_for_diffusers_class(UNIPC)
    assert spec is not None and spec.name == "unipc"
    assert spec.options_from_diffusers({"solver_order": 3}) == {"solver_order": 3}
    assert spec.options_from_diffusers({}) == {"solver_order": 2}
    assert spec.options_from_diffusers({"solver_order": 5}) == {}


class TestUniPCCommon(SamplerCommonTests):
    name = "unipc"
