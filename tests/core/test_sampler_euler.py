"""Euler and Euler ancestral: step-by-step and whole-run parity with diffusers'
EulerDiscreteScheduler and EulerAncestralDiscreteScheduler, and their closed forms (Euler is
DDIM with eta = 0, Euler ancestral DDIM with eta = 1, both in the sigma scale).

The helpers here (`reference`, `gap`, `Net`, `diffusers_run`) are shared with
test_sampler_heun.py.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math

import numpy as np
import pytest
import torch

from diffusion_studio.core.samplers import (
    DIFFUSION_PREDICTION_TYPES,
    SamplerConfig,
    make_sampler,
    sampler_spec,
)
from diffusion_studio.core.sampling import sample
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig
from tests.core.sampler_common import SamplerCommonTests

DIFFUSERS_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction", "x0": "sample"}
DIFFUSERS_KIND = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
SHAPE = (3, 1, 4, 4)


def diffusers_class(name: str):
    """The diffusers scheduler class a sampler stands for (skips without diffusers, a
    test-only dependency)."""
    diffusers = pytest.importorskip("diffusers")
    return getattr(diffusers, sampler_spec(name).diffusers_classes[0])


def reference(
    name: str,
    config: ScheduleConfig,
    prediction: str,
    spacing: str,
    karras: bool = False,
    schedule: NoiseSchedule | None = None,
    **extra,
):
    """diffusers' scheduler for sampler `name`; with `schedule`, stepping on our float64
    alphabar table (diffusers' own is float32: compared end to end separately), alphabar = 0
    read as 2^-24 as diffusers does for a zero-terminal-SNR schedule."""
    kwargs = dict(
        num_train_timesteps=config.num_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=DIFFUSERS_KIND[config.kind],
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        timestep_spacing=spacing,
        **extra,
    )
    if karras:
        kwargs["use_karras_sigmas"] = True
    if config.zero_terminal_snr:
        kwargs["rescale_betas_zero_snr"] = True
    ref = diffusers_class(name)(**kwargs)
    if schedule is not None:
        alphabar = schedule.alphas_cumprod.clone()
        if alphabar[-1] == 0:
            alphabar[-1] = 2.0**-24
        ref.alphas_cumprod = alphabar
    return ref


def gap(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> float:
    """The largest |a - b| relative to 1 + |b| + |x|, x the step's input: a float32 step from
    x rounds at |x| * 1e-7 (x reaches sigma_max: 157 on the linear schedule, 2e4 on cosine)."""
    assert a.shape == b.shape and a.dtype == b.dtype and a.dtype.is_floating_point
    return float(((a - b).abs() / (1 + b.abs() + x.abs())).max())


def check_tables(ours, ref, heun: bool = False) -> None:
    """Timesteps, sigmas and init_noise_sigma as diffusers' (Heun's diffusers tables repeat
    every entry after the first: t_0, t_1, t_1, t_2, t_2, ...)."""
    timesteps, sigmas = ref.timesteps.double(), ref.sigmas.double()
    if heun:
        timesteps = timesteps[[0, *range(1, len(timesteps), 2)]]
        sigmas = sigmas[[0, *range(1, len(sigmas), 2)]]
    assert len(ours.timesteps) == len(timesteps) and len(ours.sigmas) == len(sigmas)
    torch.testing.assert_close(ours.timesteps.double(), timesteps, rtol=0, atol=1e-3)
    torch.testing.assert_close(torch.from_numpy(ours.sigmas), sigmas, rtol=1e-6, atol=1e-7)
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)
    assert all(ours.frame_timestep(i) == round(float(t)) for i, t in enumerate(timesteps))


class Net(torch.nn.Module):
    """A fixed small network that depends on x and t (float t as diffusers passes it)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.5)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)
        return torch.tanh(self.conv(x)) + 0.3 * torch.sin(t / 150)


def diffusers_run(ref, net, steps: int, seed: int, ancestral: bool = False):
    """diffusers' own loop (as its pipelines): noise * init_noise_sigma, then per timestep
    scale_model_input, the network, step. Returns the states before every step and the last."""
    ref.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=generator) * ref.init_noise_sigma
    states = [x]
    with torch.no_grad():
        for t in ref.timesteps:
            out = net(ref.scale_model_input(x, t), t)
            extra = {"generator": generator} if ancestral else {}
            x = ref.step(out, t, x, **extra).prev_sample
            states.append(x)
    return states


def our_run(sampler, net, seed: int):
    """The real sampling loop (core.sampling.sample): its frames."""
    generator = torch.Generator().manual_seed(seed)
    return list(sample(net, sampler.schedule, sampler, SHAPE[0], SHAPE[1:], generator))


# --------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", ["euler", "euler-ancestral"])
def test_karras_offered_exactly_where_diffusers_offers_it(name):
    """diffusers 0.42's EulerDiscreteScheduler has use_karras_sigmas, its
    EulerAncestralDiscreteScheduler does not."""
    parameters = inspect.signature(diffusers_class(name).__init__).parameters
    assert ("use_karras_sigmas" in parameters) == sampler_spec(name).karras
    assert sampler_spec("euler").karras and not sampler_spec("euler-ancestral").karras


def test_specs():
    euler, ancestral = sampler_spec("euler"), sampler_spec("euler-ancestral")
    assert euler.deterministic and not ancestral.deterministic
    assert euler.evaluations_per_step == ancestral.evaluations_per_step == 1
    assert euler.diffusers_classes == ("EulerDiscreteScheduler",)
    assert ancestral.diffusers_classes == ("EulerAncestralDiscreteScheduler",)


@pytest.mark.parametrize("name", ["euler", "euler-ancestral", "heun"])
def test_diffusers_defaults_need_no_note_and_other_settings_get_one(name):
    sampler_class = sampler_spec(name).sampler_class
    defaults = dict(diffusers_class(name)().config)
    assert sampler_class.diffusers_notes(defaults) == []
    odd = {"use_exponential_sigmas": True, "interpolation_type": "log_linear"}
    notes = sampler_class.diffusers_notes({**defaults, **odd})
    if name == "euler-ancestral":  # its diffusers class has neither setting
        assert notes == []
    else:
        assert any("use_exponential_sigmas True is not available" in n for n in notes)
        assert any("log_linear" in n for n in notes) == (name == "euler")


# --------------------------------------------------------------------------- tables


TABLE_GRID = list(
    itertools.product(
        ["euler", "euler-ancestral"],
        ["linear", "cosine"],
        ["leading", "trailing", "linspace"],
        [False, True],  # Karras sigmas
        [1, 2, 7, 50, 1000],
    )
)
TABLE_GRID = [p for p in TABLE_GRID if not (p[0] == "euler-ancestral" and p[3])]


@pytest.mark.parametrize("name,kind,spacing,karras,steps", TABLE_GRID)
def test_timesteps_sigmas_and_initial_sigma_match_diffusers(name, kind, spacing, karras, steps):
    config = ScheduleConfig(kind, 1000)
    schedule = NoiseSchedule(config)
    ours = make_sampler(SamplerConfig(name, steps, spacing, karras=karras), schedule, "epsilon")
    ref = reference(name, config, "epsilon", spacing, karras, schedule)
    ref.set_timesteps(steps)
    check_tables(ours, ref)


def test_linspace_keeps_diffusers_fractional_timesteps_and_frames_round_them():
    schedule = NoiseSchedule(ScheduleConfig("linear", 1000))
    sampler = make_sampler(SamplerConfig("euler", 7, "linspace"), schedule, "epsilon")
    assert sampler.timesteps.dtype == torch.float64
    assert sampler.timesteps.tolist() == [999.0, 832.5, 666.0, 499.5, 333.0, 166.5, 0.0]
    assert [sampler.frame_timestep(i) for i in range(7)] == [999, 832, 666, 500, 333, 166, 0]
    # sigma between two timesteps: linear in sigma, as diffusers' np.interp
    table = ((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod).sqrt().numpy()
    assert sampler.sigma(1) == pytest.approx((table[832] + table[833]) / 2, rel=1e-12)
    trailing = make_sampler(SamplerConfig("euler", 7, "trailing"), schedule, "epsilon")
    assert trailing.timesteps.dtype == torch.int64


def test_zero_terminal_snr_reads_alphabar_zero_as_diffusers_does():
    config = ScheduleConfig("linear", 1000, zero_terminal_snr=True)
    schedule = NoiseSchedule(config)
    for name in ("euler", "euler-ancestral"):
        ours = make_sampler(SamplerConfig(name, 10, "trailing"), schedule, "v")
        assert np.isfinite(ours.sigmas).all()
        assert ours.sigma(0) == pytest.approx(math.sqrt((1 - 2.0**-24) / 2.0**-24))
        ref = reference(name, config, "v", "trailing", schedule=schedule)
        ref.set_timesteps(10)
        check_tables(ours, ref)


# --------------------------------------------------------------------------- step by step


def run_both(ours, ref, steps: int, seed: int = 0) -> float:
    """Walk ours and diffusers' over the same steps with the same model outputs and the same
    noise, each step from diffusers' state; the largest gap of the network's input, prev_sample
    and pred_x0."""
    ref.set_timesteps(steps)
    check_tables(ours, ref)
    data = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=data) * ref.init_noise_sigma
    worst = 0.0
    for i, t in enumerate(ref.timesteps):
        worst = max(worst, gap(ours.scale_model_input(x, i), ref.scale_model_input(x, t), x))
        model_output = torch.randn(SHAPE, generator=data)
        mine = ours.step(model_output, i, x, generator=torch.Generator().manual_seed(1000 + i))
        theirs = ref.step(model_output, t, x, generator=torch.Generator().manual_seed(1000 + i))
        worst = max(
            worst,
            gap(mine.prev_sample, theirs.prev_sample, x),
            gap(mine.pred_x0, theirs.pred_original_sample, x),
        )
        x = theirs.prev_sample
    return worst


STEP_GRID = list(
    itertools.product(
        DIFFUSION_PREDICTION_TYPES,
        ["leading", "trailing", "linspace"],
        [False, True],  # Karras sigmas
        [50, 7, 1],
    )
)


@pytest.mark.parametrize("prediction,spacing,karras,steps", STEP_GRID)
def test_euler_step_matches_diffusers(prediction, spacing, karras, steps):
    config = ScheduleConfig("cosine" if steps == 7 else "linear", 1000)
    schedule = NoiseSchedule(config)
    ours = make_sampler(SamplerConfig("euler", steps, spacing, karras=karras), schedule, prediction)
    ref = reference("euler", config, prediction, spacing, karras, schedule)
    assert run_both(ours, ref, steps) < 1e-5


# diffusers' EulerAncestralDiscreteScheduler has no x0 ("sample") prediction and no Karras sigmas
ANCESTRAL_GRID = [p for p in STEP_GRID if p[0] != "x0" and not p[2]]


@pytest.mark.parametrize("prediction,spacing,karras,steps", ANCESTRAL_GRID)
def test_euler_ancestral_step_matches_diffusers(prediction, spacing, karras, steps):
    config = ScheduleConfig("cosine" if steps == 7 else "linear", 1000)
    schedule = NoiseSchedule(config)
    ours = make_sampler(SamplerConfig("euler-ancestral", steps, spacing), schedule, prediction)
    ref = reference("euler-ancestral", config, prediction, spacing, schedule=schedule)
    assert run_both(ours, ref, steps) < 1e-5


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_euler_ancestral_x0_prediction_is_diffusers_with_the_equivalent_eps(spacing):
    """diffusers' ancestral scheduler refuses x0 ("sample") prediction; ours takes it, and
    steps as diffusers does with the eps that x0 implies, (x - x0) / sigma."""
    config = ScheduleConfig("cosine", 1000)
    schedule = NoiseSchedule(config)
    ours = make_sampler(SamplerConfig("euler-ancestral", 9, spacing), schedule, "x0")
    ref = reference("euler-ancestral", config, "epsilon", spacing, schedule=schedule)
    ref.set_timesteps(9)
    data = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=data) * ref.init_noise_sigma
    for i, t in enumerate(ref.timesteps):
        x0 = torch.randn(SHAPE, generator=data)
        eps = (x - x0) / ours.sigma(i)
        mine = ours.step(x0, i, x, generator=torch.Generator().manual_seed(i))
        theirs = ref.step(eps, t, x, generator=torch.Generator().manual_seed(i))
        assert gap(mine.prev_sample, theirs.prev_sample, x) < 1e-5
        x = theirs.prev_sample


@pytest.mark.parametrize(
    "name,prediction", [("euler", "v"), ("euler", "x0"), ("euler-ancestral", "v")]
)
def test_zero_terminal_snr_matches_diffusers(name, prediction):
    """v and x0 prediction (epsilon cannot sample a zero-terminal-SNR schedule; diffusers'
    ancestral scheduler has no x0 prediction)."""
    config = ScheduleConfig("linear", 1000, zero_terminal_snr=True)
    schedule = NoiseSchedule(config)
    ours = make_sampler(SamplerConfig(name, 20, "trailing"), schedule, prediction)
    ref = reference(name, config, prediction, "trailing", schedule=schedule)
    assert run_both(ours, ref, 20) < 1e-5


@pytest.mark.parametrize("name", ["euler", "euler-ancestral"])
def test_add_noise_matches_diffusers(name):
    config = ScheduleConfig("linear", 1000)
    schedule = NoiseSchedule(config)
    ours = make_sampler(SamplerConfig(name, 10, "linspace"), schedule, "epsilon")
    ref = reference(name, config, "epsilon", "linspace", schedule=schedule)
    ref.set_timesteps(10)
    data = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(SHAPE, generator=data) * 2 - 1, torch.randn(SHAPE, generator=data)
    for i in (0, 3, 9):
        ref.set_begin_index(i)
        theirs = ref.add_noise(x0, noise, ref.timesteps[i : i + 1])
        assert gap(ours.add_noise(x0, noise, i), theirs, theirs) < 1e-6


# --------------------------------------------------------------------------- whole runs


# Not here: cosine + trailing without Karras sigmas with v or x0 prediction, whose first step
# goes from sigma = 2e4 to 7.7, where diffusers' float32 x + d dt cancels (2e-3 lost, carried to
# the end); test_where_diffusers_step_cancels_ours_keeps_float32_accuracy checks that case.
WHOLE_RUN_GRID = [
    ("euler", "linear", "leading", False, "epsilon"),
    ("euler", "linear", "leading", False, "v"),
    ("euler", "cosine", "trailing", False, "epsilon"),
    ("euler", "linear", "linspace", True, "v"),
    ("euler", "cosine", "trailing", True, "v"),
    ("euler", "cosine", "linspace", True, "x0"),
    ("euler", "linear", "trailing", False, "x0"),
    ("euler-ancestral", "linear", "leading", False, "epsilon"),
    ("euler-ancestral", "linear", "leading", False, "v"),
    ("euler-ancestral", "cosine", "trailing", False, "epsilon"),
    ("euler-ancestral", "linear", "linspace", False, "v"),
]


@pytest.mark.parametrize("name,kind,spacing,karras,prediction", WHOLE_RUN_GRID)
def test_whole_run_through_the_sampling_loop_matches_diffusers(
    name, kind, spacing, karras, prediction
):
    """diffusion_studio.core.sampling.sample against diffusers' own loop: the same network, the same seed
    (initial noise and, for ancestral, every step's noise from one generator), every frame."""
    config = ScheduleConfig(kind, 1000)
    schedule = NoiseSchedule(config)
    sampler = make_sampler(SamplerConfig(name, 12, spacing, karras=karras), schedule, prediction)
    ref = reference(name, config, prediction, spacing, karras, schedule)
    net = Net()
    states = diffusers_run(ref, net, 12, seed=7, ancestral=name == "euler-ancestral")
    frames = our_run(sampler, net, seed=7)
    assert len(frames) == len(states) == 13
    for i, (frame, state) in enumerate(zip(frames[:-1], states[:-1], strict=True)):
        shown = state / math.sqrt(sampler.sigma(i) ** 2 + 1)  # x_t
        assert frame.t == round(float(ref.timesteps[i]))
        assert gap(frame.x_t, shown, shown) < 1e-5
    assert gap(frames[-1].x_t, states[-1], states[-1]) < 1e-5


def float64_run(sampler, net, seed: int) -> torch.Tensor:
    """A deterministic sampler's run by hand in float64 (the same initial noise as `sample`):
    the answer float32 rounding is measured against."""
    net64 = copy.deepcopy(net).double()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=generator).double() * sampler.init_noise_sigma
    sampler.begin()
    with torch.no_grad():
        for i in range(len(sampler.timesteps)):
            x = sampler.advance(lambda x_in, t: net64(x_in, t), i, x).prev_sample
    return x


def test_where_diffusers_step_cancels_ours_keeps_float32_accuracy():
    """Cosine, trailing, v prediction: the first step goes from sigma = 2e4 (|x| ~ 5e4) to 7.7.
    diffusers' float32 x + d dt keeps |x| * 6e-8 ~ 2e-3 of rounding in a result of size 10;
    ours (x_0 + sigma' eps, with a v model's eps as it gives it) stays at the float32 rounding
    of the result (measured: 2e-7 against diffusers' 3e-4, relative)."""
    config = ScheduleConfig("cosine", 1000)
    schedule = NoiseSchedule(config)
    sampler = make_sampler(SamplerConfig("euler", 12, "trailing"), schedule, "v")
    net = Net()
    truth = float64_run(sampler, net, seed=7).float()
    ours = our_run(sampler, net, seed=7)[-1].x_t
    theirs = diffusers_run(
        reference("euler", config, "v", "trailing", schedule=schedule), net, 12, 7
    )
    assert gap(ours, truth, truth) < 1e-5
    assert gap(theirs[-1], truth, truth) < 1e-3  # diffusers: within its own rounding


@pytest.mark.parametrize("name", ["euler", "euler-ancestral"])
def test_agrees_with_diffusers_own_float32_tables(name):
    """End to end against an untouched diffusers scheduler: equal up to its float32 tables."""
    config = ScheduleConfig("linear", 1000)
    sampler = make_sampler(SamplerConfig(name, 30, "linspace"), NoiseSchedule(config), "epsilon")
    ref = reference(name, config, "epsilon", "linspace")
    net = Net()
    states = diffusers_run(ref, net, 30, seed=3, ancestral=name == "euler-ancestral")
    frames = our_run(sampler, net, seed=3)
    assert gap(frames[-1].x_t, states[-1], states[-1]) < 3e-4


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("prediction", DIFFUSION_PREDICTION_TYPES)
@pytest.mark.parametrize("clip", [False, True])
def test_euler_is_ddim_eta0_in_the_sigma_scale(prediction, clip):
    """On DDIM's timesteps (leading spacing: the next timestep is t - T // n, then alphabar = 1)
    Euler's x / sqrt(sigma^2 + 1) is DDIM's x_t at every step, clipped x_0 included: both step
    x_0 + sigma eps along the same (x_0, eps) pair (Karras et al. 2022, sec. 3 and Appendix)."""
    schedule = NoiseSchedule(ScheduleConfig("cosine", 1000))
    euler = make_sampler(
        SamplerConfig("euler", 20, "leading", clip_sample=clip), schedule, prediction
    )
    ddim = make_sampler(
        SamplerConfig("ddim", 20, "leading", clip_sample=clip), schedule, prediction
    )
    assert torch.equal(euler.timesteps, ddim.timesteps)
    data = torch.Generator().manual_seed(0)
    x_t = torch.randn(SHAPE, generator=data)
    x = x_t * euler.init_noise_sigma  # leading: sqrt(sigma^2 + 1) = 1 / sqrt(alphabar)
    for i in range(20):
        assert gap(euler.scale_model_input(x, i), x_t, x_t) < 1e-6
        model_output = torch.randn(SHAPE, generator=data)
        e, d = euler.step(model_output, i, x), ddim.step(model_output, i, x_t)
        assert gap(e.pred_x0, d.pred_x0, x_t) < 1e-5
        x, x_t = e.prev_sample, d.prev_sample
    assert gap(x, x_t, x_t) < 1e-5  # the samples (sigma = 0: x is x_0)


def test_euler_ancestral_is_ddim_eta1_in_the_sigma_scale():
    """Euler ancestral's sigma_up^2 = sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2 is
    DDPM's posterior variance (Ho et al. eq. 7) over alphabar_prev: through the real sampling
    loop, with one seed, it gives DDIM eta = 1's samples (same timesteps, same noise)."""
    schedule = NoiseSchedule(ScheduleConfig("linear", 1000))
    ancestral = make_sampler(SamplerConfig("euler-ancestral", 25, "leading"), schedule, "epsilon")
    ddim = make_sampler(
        SamplerConfig("ddim", 25, "leading", options={"eta": 1.0}), schedule, "epsilon"
    )
    net = Net()
    ours, theirs = our_run(ancestral, net, seed=5), our_run(ddim, net, seed=5)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.t == b.t
        x = b.x_t * math.sqrt(ancestral.sigma(i) ** 2 + 1)  # the state in the sigma scale
        assert gap(a.x_t, b.x_t, b.x_t) < 1e-5 and gap(a.pred_x0, b.pred_x0, x) < 1e-5


def test_ancestral_sigmas_split_the_variance():
    for sigma_from, sigma_to in [(157.4, 41.1), (2.0, 1.0), (0.5, 0.0)]:
        down, up = sampler_spec("euler-ancestral").sampler_class.ancestral_sigmas(
            sigma_from, sigma_to
        )
        assert down**2 + up**2 == pytest.approx(sigma_to**2)
        assert down == pytest.approx(sigma_to**2 / sigma_from)


def test_the_last_step_lands_exactly_on_the_x0_estimate():
    """Euler to sigma = 0 returns x_0 itself: x_0 + 0 eps (x + d dt would keep |x| * 6e-8 of
    rounding, 2e-3 from the cosine schedule's sigma_max = 2e4 in one step)."""
    schedule = NoiseSchedule(ScheduleConfig("cosine", 1000))
    for name in ("euler", "euler-ancestral"):
        sampler = make_sampler(SamplerConfig(name, 1, "trailing"), schedule, "x0")
        x = (
            torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
            * sampler.init_noise_sigma
        )
        x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))
        assert torch.equal(sampler.step(x0, 0, x).prev_sample, x0)


# --------------------------------------------------------------------------- common checks


class TestEulerCommon(SamplerCommonTests):
    name = "euler"


class TestEulerAncestralCommon(SamplerCommonTests):
    name = "euler-ancestral"
