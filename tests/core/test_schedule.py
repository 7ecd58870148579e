"""NoiseSchedule: closed forms, parity with diffusers' DDPMScheduler, and argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.schedule import SCHEDULE_KINDS, NoiseSchedule, ScheduleConfig


@pytest.fixture(scope="module")
def diffusers():
    """diffusers, a test-only dependency: only the parity tests need it (and skip without it)."""
    return pytest.importorskip("diffusers")


DIFFUSERS_KIND = {
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "cosine": "squaredcos_cap_v2",
    "sigmoid": "sigmoid",
}


def diffusers_scheduler(diffusers, config: ScheduleConfig):
    return diffusers.DDPMScheduler(
        num_train_timesteps=config.num_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=DIFFUSERS_KIND[config.kind],
        rescale_betas_zero_snr=config.zero_terminal_snr,
    )


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize(
    "steps,beta_start,beta_end", [(1000, 1e-4, 0.02), (50, 1e-3, 0.05), (2, 1e-4, 0.02)]
)
def test_schedule_matches_diffusers(diffusers, kind, zero_snr, steps, beta_start, beta_end):
    from diffusers.schedulers.scheduling_ddpm import (
        rescale_zero_terminal_snr as rescale_zero_terminal_snr_diffusers,
    )

    config = ScheduleConfig(kind, steps, beta_start, beta_end, zero_snr)
    ours = NoiseSchedule(config)
    ref = diffusers_scheduler(diffusers, config)
    # alphabar (what every formula uses) agrees with diffusers' float32 tables in relative
    # terms: measured worst 1.3e-5 (cosine), 1.3e-5 (sigmoid, zero SNR). An absolute 1e-6 would
    # be 400x slack at the cosine tail (alphabar 2.4e-9), where sampling is most sensitive.
    ours_ab, ref_ab = ours.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy()
    if zero_snr:  # the last alphabar is exactly 0 on both sides (no relative error to take)
        assert ours_ab[-1] == 0.0 and ref_ab[-1] == 0.0
        ours_ab, ref_ab = ours_ab[:-1], ref_ab[:-1]
    np.testing.assert_allclose(ours_ab, ref_ab, rtol=2e-5, atol=0)
    if not zero_snr:
        for name in ("betas", "alphas"):
            np.testing.assert_allclose(
                getattr(ours, name).numpy(),
                getattr(ref, name).double().numpy(),
                rtol=0,
                atol=1e-7,
                err_msg=name,
            )
    else:
        # diffusers rescales in float32, whose cancellation costs ~3e-6 on the last betas; its
        # own rescale function run in float64 on our un-rescaled betas agrees to 1e-12.
        plain = NoiseSchedule(ScheduleConfig(kind, steps, beta_start, beta_end, False))
        ref_betas = rescale_zero_terminal_snr_diffusers(plain.betas.clone())
        np.testing.assert_allclose(ours.betas.numpy(), ref_betas.numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            ours.betas.numpy(), ref.betas.double().numpy(), rtol=0, atol=5e-6
        )


def test_alphabar_is_cumulative_product_not_sum():
    s = NoiseSchedule.from_kind("linear", 10, 0.1, 0.2)
    betas = s.betas.numpy()
    expected = np.cumprod(1 - betas)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), expected, rtol=1e-15)
    assert s.alphas_cumprod[3] == pytest.approx(
        (0.9) * (1 - betas[1]) * (1 - betas[2]) * (1 - betas[3])
    )


def test_linear_closed_form_and_derived_curves():
    s = NoiseSchedule.from_kind("linear", 5, 0.1, 0.5)
    np.testing.assert_allclose(s.betas.numpy(), [0.1, 0.2, 0.3, 0.4, 0.5])
    ab = np.cumprod([0.9, 0.8, 0.7, 0.6, 0.5])
    table = s.table()
    assert list(table) == [
        "t",
        "beta",
        "alpha_bar",
        "sqrt_alpha_bar",
        "sqrt_one_minus_alpha_bar",
        "log_snr",
    ]
    np.testing.assert_array_equal(table["t"], np.arange(5))
    np.testing.assert_allclose(table["alpha_bar"], ab)
    np.testing.assert_allclose(table["sqrt_alpha_bar"], np.sqrt(ab))
    np.testing.assert_allclose(table["sqrt_one_minus_alpha_bar"], np.sqrt(1 - ab))
    np.testing.assert_allclose(table["log_snr"], np.log(ab / (1 - ab)))


def test_cosine_closed_form():
    T = 1000
    s = NoiseSchedule.from_kind("cosine", T)

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    # alphabar_t = f((t+1)/T) / f(0) while no beta hits the 0.999 cap
    for t in (0, 10, 500, 900):
        assert float(s.alphas_cumprod[t]) == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)
    assert float(s.betas.max()) == pytest.approx(0.999)


def test_zero_terminal_snr():
    s = NoiseSchedule.from_kind("linear", 1000, zero_terminal_snr=True)
    assert float(s.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-12)
    plain = NoiseSchedule.from_kind("linear", 1000)
    assert float(s.alphas_cumprod[0]) == pytest.approx(float(plain.alphas_cumprod[0]))
    assert s.log_snr[-1] == -math.inf


def test_explicit_betas():
    s = NoiseSchedule(ScheduleConfig(betas=(0.1, 0.2, 0.3)))
    assert s.num_timesteps == 3
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), [0.9, 0.72, 0.504])
    round_trip = ScheduleConfig.from_dict(s.config.to_dict())
    assert round_trip == s.config


def test_add_noise_batch_of_timesteps_and_dtype():
    s = NoiseSchedule.from_kind("linear", 100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 3, 3, generator=g)
    noise = torch.randn(4, 1, 3, 3, generator=g)
    t = torch.tensor([0, 10, 50, 99])
    xt = s.add_noise(x0, noise, t)
    assert xt.shape == x0.shape and xt.dtype == torch.float32
    for i, ti in enumerate(t.tolist()):
        ab = float(s.alphas_cumprod[ti])
        expected = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i]
        torch.testing.assert_close(xt[i], expected)
    assert s.add_noise(x0.double(), noise.double(), t).dtype == torch.float64


def test_add_noise_and_velocity_match_diffusers(diffusers):
    s = NoiseSchedule.from_kind("linear", 100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 3, 3, generator=g)
    noise = torch.randn(4, 1, 3, 3, generator=g)
    t = torch.tensor([0, 10, 50, 99])
    xt = s.add_noise(x0, noise, t)
    ref = diffusers.DDPMScheduler(num_train_timesteps=100)
    torch.testing.assert_close(xt, ref.add_noise(x0, noise, t), atol=1e-6, rtol=1e-6)
    # diffusers forms 1 - alphabar in float32 (cancellation near t = 0), hence 1e-5 here
    torch.testing.assert_close(
        s.velocity(x0, noise, t), ref.get_velocity(x0, noise, t), atol=1e-5, rtol=1e-5
    )


def test_add_noise_same_seed_same_result():
    s = NoiseSchedule.from_kind("cosine", 50)
    x0 = torch.zeros(2, 3)

    def noisy(seed):
        g = torch.Generator().manual_seed(seed)
        return s.add_noise(x0, torch.randn(2, 3, generator=g), torch.tensor([5, 40]))

    torch.testing.assert_close(noisy(3), noisy(3))
    assert not torch.equal(noisy(3), noisy(4))


def test_add_noise_rejects_timestep_out_of_range():
    s = NoiseSchedule.from_kind("linear", 10)
    with pytest.raises(ConfigError, match="0..9"):
        s.add_noise(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([10]))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_timesteps=0), "T = 0"),
        (dict(num_timesteps=1), "at least 2"),
        (dict(num_timesteps=10**9), "1000000000"),
        (dict(kind="quadratic"), "quadratic"),
        (dict(beta_start=-0.1), "-0.1"),
        (dict(beta_end=1.5), "1.5"),
        (dict(beta_start=0.05, beta_end=0.01), "0.05"),
        (dict(betas=(0.1, 0.0, 0.2)), r"beta\[1\]"),
        (dict(betas=(0.1, float("nan"))), "finite"),
    ],
)
def test_bad_settings_rejected_with_value(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ScheduleConfig(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="colour"):
        ScheduleConfig.from_dict({"kind": "linear", "colour": "red"})


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(SCHEDULE_KINDS),
    steps=st.integers(2, 2000),
    beta_start=st.floats(1e-5, 0.05),
    span=st.floats(0.0, 0.2),
    zero_snr=st.booleans(),
)
def test_alphabar_strictly_decreasing_in_unit_interval(kind, steps, beta_start, span, zero_snr):
    beta_end = min(beta_start + span, 0.5)
    s = NoiseSchedule(ScheduleConfig(kind, steps, beta_start, beta_end, zero_snr))
    ab = s.alphas_cumprod.numpy()
    assert ab.shape == (steps,)
    assert np.all(np.diff(ab) < 0)
    assert np.all(ab <= 1) and np.all(ab[:-1] > 0)
    # zero terminal SNR: the last alphabar is exactly 0 (pure noise), otherwise above 0
    assert ab[-1] == 0.0 if zero_snr else ab[-1] > 0
    assert s.betas.dtype == torch.float64


@settings(max_examples=40, deadline=None)
@given(steps=st.one_of(st.integers(-10, 1), st.integers(100_001, 10**12)))
def test_invalid_step_counts_raise(steps):
    with pytest.raises(ConfigError):
        ScheduleConfig(num_timesteps=steps)
