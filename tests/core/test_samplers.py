"""DDPM and DDIM samplers: step-by-step parity with diffusers across the option grid, and checks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.samplers import (
    DIFFUSION_PREDICTION_TYPES,
    DDIMSampler,
    DDPMSampler,
    SamplerConfig,
    make_sampler,
    make_timesteps,
    split_prediction,
)
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig
from tests.core.sampler_common import SamplerCommonTests


def _diffusers():
    """diffusers, a test-only dependency: only the parity tests need it (and skip without it)."""
    return pytest.importorskip("diffusers")


DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}
DIFFUSERS_KIND = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
SHAPE = (3, 1, 4, 4)


def _reference(kind: str, config: ScheduleConfig, prediction: str, spacing: str, **extra):
    diffusers = _diffusers()
    cls = diffusers.DDPMScheduler if kind == "ddpm" else diffusers.DDIMScheduler
    return cls(
        num_train_timesteps=config.num_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=DIFFUSERS_KIND[config.kind],
        rescale_betas_zero_snr=config.zero_terminal_snr,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        timestep_spacing=spacing,
        **extra,
    )


def _reference_on_our_tables(kind, schedule, config, prediction, spacing, **extra):
    """diffusers' scheduler stepping on our float64 alphabar table.

    diffusers keeps alphabar in float32, and forms beta_t = 1 - alphabar_t / alphabar_prev in
    float32 too, which costs up to ~1e-4 relative on small betas (cancellation). The tables are
    compared with diffusers' in test_schedule (1e-6); here the step maths is compared on
    identical tables. Model outputs, samples and noise stay float32 on both sides.
    """
    ref = _reference(kind, config, prediction, spacing, **extra)
    ref.alphas_cumprod = schedule.alphas_cumprod.clone()
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    if kind == "ddim":
        ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return ref


def _run_both(ours, ref, num_steps: int, seed: int = 0):
    """Walk both samplers over the same timesteps with the same model outputs and noise;
    return the largest differences of prev_sample and pred_x0 (relative to 1 + |value|)."""
    ref.set_timesteps(num_steps)
    torch.testing.assert_close(ours.timesteps, ref.timesteps.long(), rtol=0, atol=0)
    data = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=data)
    worst = 0.0
    for i, t in enumerate(ours.timesteps.tolist()):
        model_output = torch.randn(SHAPE, generator=data)
        g_ours = torch.Generator().manual_seed(1000 + i)
        g_ref = torch.Generator().manual_seed(1000 + i)
        mine = ours.step(model_output, i, x, generator=g_ours)
        theirs = ref.step(model_output, t, x, generator=g_ref)
        for a, b in (
            (mine.prev_sample, theirs.prev_sample),
            (mine.pred_x0, theirs.pred_original_sample),
        ):
            assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
            worst = max(worst, float(((a - b).abs() / (1 + b.abs())).max()))
        x = theirs.prev_sample
    return worst


DDPM_GRID = list(
    itertools.product(
        DIFFUSION_PREDICTION_TYPES,
        ["fixed_small", "fixed_large"],
        ["leading", "trailing", "linspace"],
        [False, True],  # clip x0
        [1000, 37, 1],  # inference steps
    )
)
# The full 1000-step walk for every prediction type would be slow; epsilon covers it.
DDPM_GRID = [p for p in DDPM_GRID if p[4] != 1000 or p[0] == "epsilon"]


@pytest.mark.parametrize("prediction,variance,spacing,clip,steps", DDPM_GRID)
def test_ddpm_step_matches_diffusers(prediction, variance, spacing, clip, steps):
    config = ScheduleConfig("linear" if steps != 37 else "cosine", 1000)
    schedule = NoiseSchedule(config)
    ours = make_sampler(
        SamplerConfig(
            "ddpm", steps, spacing, clip_sample=clip, options={"variance_type": variance}
        ),
        schedule,
        prediction,
    )
    ref = _reference_on_our_tables(
        "ddpm", schedule, config, prediction, spacing, variance_type=variance, clip_sample=clip
    )
    assert _run_both(ours, ref, steps) < 1e-5


DDIM_GRID = list(
    itertools.product(
        DIFFUSION_PREDICTION_TYPES,
        [0.0, 0.3, 1.0],  # eta
        ["leading", "trailing", "linspace"],
        [False, True],  # clip x0
        [50, 7, 1],  # inference steps
    )
)


@pytest.mark.parametrize("prediction,eta,spacing,clip,steps", DDIM_GRID)
def test_ddim_step_matches_diffusers(prediction, eta, spacing, clip, steps):
    config = ScheduleConfig("cosine" if steps == 7 else "linear", 1000)
    schedule = NoiseSchedule(config)
    ours = make_sampler(
        SamplerConfig("ddim", steps, spacing, clip_sample=clip, options={"eta": eta}),
        schedule,
        prediction,
    )
    ref = _reference_on_our_tables("ddim", schedule, config, prediction, spacing, clip_sample=clip)
    # diffusers' DDIMScheduler takes eta in step(); bind it so _run_both can call step uniformly.
    # A clipped x_0 comes with the eps recomputed from it (core.samplers.base: measured to
    # matter with guidance), which is diffusers' use_clipped_model_output=True.
    ref_step = ref.step
    ref.step = lambda out, t, x, generator=None: ref_step(
        out, t, x, eta=eta, use_clipped_model_output=clip, generator=generator
    )
    assert _run_both(ours, ref, steps) < 1e-5


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_zero_terminal_snr_matches_diffusers(kind, prediction):
    config = ScheduleConfig("linear", 1000, zero_terminal_snr=True)
    schedule = NoiseSchedule(config)
    options = {"eta": 1.0} if kind == "ddim" else {}
    ours = make_sampler(SamplerConfig(kind, 20, "trailing", options=options), schedule, prediction)
    ref = _reference_on_our_tables(
        kind, schedule, config, prediction, "trailing", clip_sample=False
    )
    if kind == "ddim":
        ref_step = ref.step
        ref.step = lambda out, t, x, generator=None: ref_step(
            out, t, x, eta=1.0, generator=generator
        )
    assert _run_both(ours, ref, 20) < 1e-5


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_agrees_with_diffusers_own_float32_tables(kind):
    """End to end against an untouched diffusers scheduler: equal up to its float32 tables."""
    config = ScheduleConfig("linear", 1000)
    options = {"eta": 1.0} if kind == "ddim" else {}
    ours = make_sampler(SamplerConfig(kind, 50, options=options), NoiseSchedule(config), "epsilon")
    ref = _reference(kind, config, "epsilon", "leading", clip_sample=False)
    if kind == "ddim":
        ref_step = ref.step
        ref.step = lambda out, t, x, generator=None: ref_step(
            out, t, x, eta=1.0, generator=generator
        )
    assert _run_both(ours, ref, 50) < 3e-4


def test_zero_terminal_snr_with_epsilon_is_refused():
    schedule = NoiseSchedule(ScheduleConfig("linear", 100, zero_terminal_snr=True))
    with pytest.raises(ConfigError, match="v or x0"):
        make_sampler(SamplerConfig("ddim", 10), schedule, "epsilon")


def test_ddpm_with_all_steps_is_ho_et_al_eq_11():
    """With n = T and epsilon prediction, x_{t-1} = (x_t - beta_t / sqrt(1-ab_t) eps) / sqrt(alpha_t)
    + sigma_t z (DDPM eq. 11, Algorithm 2), sigma_t^2 = beta_t (fixed_large)."""
    schedule = NoiseSchedule.from_kind("linear", 50)
    sampler = DDPMSampler(schedule, "epsilon", "fixed_large")
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 5, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (49, 20, 1):
        beta, alpha, ab = (
            float(v[t]) for v in (schedule.betas, schedule.alphas, schedule.alphas_cumprod)
        )
        expected = (x - beta / math.sqrt(1 - ab) * eps) / math.sqrt(alpha) + math.sqrt(beta) * z
        out = sampler.step(eps, 49 - t, x, noise=z)  # all 50 steps: step i is at t = 49 - i
        torch.testing.assert_close(out.prev_sample, expected, rtol=1e-10, atol=1e-10)
    # the last step adds no noise
    out0 = sampler.step(eps, 49, x, noise=z)
    torch.testing.assert_close(out0.prev_sample, out0.pred_x0)


def test_ddim_eta0_is_deterministic_and_recovers_x0_from_exact_noise():
    """If the model predicts the true noise, DDIM (eta = 0) lands exactly on x0 in any step count."""
    schedule = NoiseSchedule.from_kind("cosine", 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    for n in (1, 3, 50):
        sampler = make_sampler(SamplerConfig("ddim", n), schedule, "epsilon")
        t0 = int(sampler.timesteps[0])
        x = schedule.add_noise(x0, eps, torch.full((2,), t0))
        for i, t in enumerate(sampler.timesteps.tolist()):
            # the exact eps of x_t relative to x0
            ab = float(schedule.alphas_cumprod[t])
            true_eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
            x = sampler.step(true_eps, i, x).prev_sample
        torch.testing.assert_close(x, x0, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction", DIFFUSION_PREDICTION_TYPES)
def test_split_prediction_inverts_the_forward_process(prediction):
    schedule = NoiseSchedule.from_kind("linear", 100)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = 40
    x_t = schedule.add_noise(x0, eps, torch.tensor(t))
    target = {"epsilon": eps, "x0": x0, "v": schedule.velocity(x0, eps, torch.tensor(t))}[
        prediction
    ]
    pred_x0, pred_eps = split_prediction(schedule, target, x_t, t, prediction)
    torch.testing.assert_close(pred_x0, x0)
    torch.testing.assert_close(pred_eps, eps)


def test_same_generator_seed_same_samples():
    schedule = NoiseSchedule.from_kind("linear", 100)
    out = torch.zeros(2, 3)

    def run(seed):
        sampler = make_sampler(SamplerConfig("ddpm", 10), schedule, "epsilon")
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 3, generator=g)
        for i in range(len(sampler.timesteps)):
            x = sampler.step(out, i, x, generator=g).prev_sample
        return x

    torch.testing.assert_close(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_timestep_spacings():
    np.testing.assert_array_equal(make_timesteps(10, 5, "leading"), [8, 6, 4, 2, 0])
    np.testing.assert_array_equal(make_timesteps(10, 5, "trailing"), [9, 7, 5, 3, 1])
    np.testing.assert_array_equal(make_timesteps(10, 4, "linspace"), [9, 6, 3, 0])
    np.testing.assert_array_equal(make_timesteps(10, 10, "leading"), np.arange(9, -1, -1))
    # diffusers' trailing formula gives 8 values here; we give exactly the 7 asked for
    np.testing.assert_array_equal(make_timesteps(17, 7, "trailing"), [16, 14, 11, 9, 6, 4, 1])


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("steps", [0, -3])
def test_step_counts_below_one_rejected(kind, steps):
    with pytest.raises(ConfigError, match=f"got {steps}"):
        SamplerConfig(kind, steps)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("steps", [1001, 10**9])
def test_step_counts_above_T_rejected(kind, steps):
    schedule = NoiseSchedule.from_kind("linear", 1000)
    with pytest.raises(ConfigError, match=rf"{steps} is out of range: it must lie in 1\.\.1000"):
        make_sampler(SamplerConfig(kind, steps), schedule, "epsilon")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kind="plms"), "plms"),
        (dict(spacing="uniform"), "uniform"),
        (dict(kind="ddpm", options={"variance_type": "learned"}), "learned"),
        (dict(options={"eta": 1.5}), "1.5"),
        (dict(options={"eta": -0.1}), "-0.1"),
        (dict(kind="ddpm", options={"eta": 0.5}), "DDPM has no option eta"),
        (dict(clip_range=0.0), "clip range"),
    ],
)
def test_unknown_options_rejected(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SamplerConfig(**kwargs)


def test_unknown_prediction_type_rejected():
    schedule = NoiseSchedule.from_kind("linear", 10)
    with pytest.raises(ConfigError, match="score"):
        make_sampler(SamplerConfig(), schedule, "score")
    with pytest.raises(ConfigError, match="score"):
        DDIMSampler(schedule, "score")


@settings(max_examples=50, deadline=None)
@given(
    kind=st.sampled_from(["ddpm", "ddim"]),
    T=st.integers(2, 300),
    frac=st.floats(0.0, 1.0),
    spacing=st.sampled_from(["leading", "trailing", "linspace"]),
    prediction=st.sampled_from(DIFFUSION_PREDICTION_TYPES),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_sampler_properties(kind, T, frac, spacing, prediction, dtype):
    """For random valid settings: timesteps strictly descending within 0..T-1, shapes and dtypes hold."""
    n = max(1, round(frac * T))
    schedule = NoiseSchedule.from_kind("linear", T)
    options = {"eta": 0.5} if kind == "ddim" else {}
    sampler = make_sampler(SamplerConfig(kind, n, spacing, options=options), schedule, prediction)
    ts = sampler.timesteps.numpy()
    assert len(ts) == n
    assert np.all(np.diff(ts) < 0) and ts.min() >= 0 and ts.max() <= T - 1
    x = torch.randn(2, 1, 2, 2, dtype=dtype)
    out = sampler.step(torch.zeros_like(x), 0, x, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.shape == x.shape and out.prev_sample.dtype == dtype
    assert out.pred_x0.shape == x.shape and out.pred_x0.dtype == dtype
    assert torch.isfinite(out.prev_sample).all()


def test_default_sampler_clips_images_but_not_points_and_keeps_a_models_own():
    from diffusion_studio.core.samplers import default_sampler_config

    image, points = default_sampler_config(False), default_sampler_config(True)
    assert (image.kind, image.num_inference_steps, image.spacing) == ("ddpm", 100, "trailing")
    assert image.clip_sample and not points.clip_sample
    own = SamplerConfig("ddim", 25, "leading", clip_sample=False)
    assert default_sampler_config(False, own.to_dict()) == own


def test_default_sampler_keeps_an_untrained_epsilon_model_on_cosine_bounded():
    """An untrained epsilon net predicts eps ~ 0, so pred_x0 = x_t / sqrt(alphabar_t), and
    alphabar_T of the cosine schedule is ~2e-9: without the clip the first step multiplies
    x_T by ~2e4 and the sample explodes; with the default sampler it stays in [-1, 1]."""
    from diffusion_studio.core.samplers import default_sampler_config

    schedule = NoiseSchedule(ScheduleConfig("cosine", 1000))

    def zero_eps(x, t):
        return torch.zeros_like(x)

    def final(config):
        sampler = make_sampler(config, schedule, "epsilon")
        x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        generator = torch.Generator().manual_seed(1)
        for i, t in enumerate(sampler.timesteps.tolist()):
            x = sampler.step(zero_eps(x, t), i, x, generator=generator).prev_sample
        return x

    default = default_sampler_config(False)
    assert final(default).abs().max() <= 1.0 + 1e-6
    unclipped = SamplerConfig(default.kind, default.num_inference_steps, default.spacing)
    assert final(unclipped).abs().max() > 100


class TestDDPMCommon(SamplerCommonTests):
    name = "ddpm"


class TestDDIMCommon(SamplerCommonTests):
    name = "ddim"
