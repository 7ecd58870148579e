"""diffusion_studio.core.convergence on a model whose exact answer is known: 2-D Gaussian data N(mu, s^2 I),
for which the ideal noise prediction and the probability-flow ODE's solution have closed forms.

With z = x_t / sqrt(alphabar_t) and sigma_t^2 = (1 - alphabar_t) / alphabar_t, the ideal
eps(x_t, t) = sigma_t (z - mu) / (s^2 + sigma_t^2), and the ODE dz/dsigma = eps carries z from
sigma_T to 0 as z - mu proportional to sqrt(s^2 + sigma^2): x_0 = mu + (z_T - mu) s / sqrt(s^2 +
sigma_T^2). So each sampler's error against the exact x_0 is its own discretisation error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_studio.core.convergence import (
    ConvergenceProgress,
    ConvergenceRecord,
    checkpoint_convergence,
    convergence,
    convergence_slope,
    default_step_counts,
    deterministic_samplers,
    records_table,
    reference_config,
    step_counts_up_to,
)
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import save_csv
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.samplers import REGISTRY, samplers_for_objective
from diffusion_studio.core.samplers.sigmas import schedule_sigmas
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig

MU = torch.tensor([0.5, -0.3])
S = 0.5
N = 64
SEED = 3
# the expected order of the samplers these tests know; another registered sampler is checked
# to converge at least at first order
ORDERS = {"ddim": 1, "euler": 1, "heun": 2, "dpmpp-2m": 2}


class GaussianEps(nn.Module):
    """The ideal epsilon prediction for data N(MU, S^2 I), at integer or fractional t (log sigma
    interpolated linearly in t, as core.samplers.sigmas.sigma_to_t inverts)."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.log_sigmas = torch.from_numpy(np.log(schedule_sigmas(schedule)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.double()
        low = t.floor().long().clamp(0, len(self.log_sigmas) - 2)
        w = (t - low).clamp(0, 1)
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]
        sigma = log_sigma.exp()[:, None]
        z = x.double() * torch.sqrt(1 + sigma**2)  # x_t / sqrt(alphabar)
        return (sigma * (z - MU) / (S**2 + sigma**2)).float()


def exact_x0(schedule: NoiseSchedule, seed: int = SEED, n: int = N) -> torch.Tensor:
    """The ODE's solution from the initial noise `core.sampling.sample` draws (N(0, I) at
    t = T - 1, the first timestep of every trailing-spaced run)."""
    x_T = torch.randn((n, 2), generator=torch.Generator().manual_seed(seed)).double()
    sigma_T = float(schedule_sigmas(schedule)[-1])
    z_T = x_T * math.sqrt(1 + sigma_T**2)
    return (MU + (z_T - MU) * S / math.sqrt(S**2 + sigma_T**2)).float()


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig("linear", 1000))


def run(schedule, samplers, counts, **kwargs) -> list[ConvergenceRecord]:
    model = GaussianEps(schedule)
    out = convergence(
        model, schedule, "epsilon", (2,), samplers, counts, seed=SEED, num_samples=N, **kwargs
    )
    return [r for r in out if isinstance(r, ConvergenceRecord)]


def test_the_analytic_model_is_what_the_samplers_solve(schedule):
    """A long DDIM run lands on the closed-form answer (the test's own check)."""
    records = run(schedule, ["ddim"], [1000], reference_samples=exact_x0(schedule))
    assert records[0].rms_error < 3e-3


DIFFUSION_DETERMINISTIC = [s.name for s in samplers_for_objective("diffusion") if s.deterministic]
FLOW_DETERMINISTIC = [s.name for s in samplers_for_objective("flow") if s.deterministic]


class GaussianVelocity(nn.Module):
    """The exact flow-matching velocity for data N(MU, S^2 I) on x_t = (1 - t) x_0 + t eps:
    x_t's marginal is N((1 - t) MU, r_t^2 I) with r_t^2 = (1 - t)^2 S^2 + t^2, and the flow
    carries z = (x_t - (1 - t) MU) / r_t unchanged, so v = -MU + z dr_t/dt with
    dr_t/dt = (t - (1 - t) S^2) / r_t. The network input is t * T (core.flow)."""

    def __init__(self, path: FlowPath) -> None:
        super().__init__()
        self.T = path.num_timesteps

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = (t.double() / self.T)[:, None]
        r = torch.sqrt((1 - tt) ** 2 * S**2 + tt**2)
        z = (x.double() - (1 - tt) * MU) / r
        return (-MU + z * (tt - (1 - tt) * S**2) / r).float()


@pytest.mark.parametrize("name", FLOW_DETERMINISTIC)
def test_flow_samplers_converge_to_the_exact_flow(name):
    """A flow sampler on the exact velocity converges to the flow's exact end point
    x_0 = MU + S x_1 (z is constant along the flow; x_1 is the initial noise at t = 1)."""
    path = FlowPath(1000)
    x_1 = torch.randn((N, 2), generator=torch.Generator().manual_seed(SEED))
    exact = (MU + S * x_1).float()
    out = convergence(
        GaussianVelocity(path),
        path,
        "velocity",
        (2,),
        [name],
        [5, 10, 20],
        seed=SEED,
        num_samples=N,
        reference_samples=exact,
    )
    errors = [r.rms_error for r in out if isinstance(r, ConvergenceRecord)]
    assert len(errors) == 3 and errors[-1] < errors[0] / 2, errors


def test_a_flow_models_reference_is_second_order():
    """The reference of a flow model is flow Heun at T steps (flow Euler's error at T steps
    would floor every second-order curve)."""
    config = reference_config(FlowPath(1000), "velocity")
    assert (config.kind, config.num_inference_steps) == ("flow-heun", 1000)


def test_a_sampler_of_the_other_objective_is_refused(schedule):
    with pytest.raises(ConfigError, match="flow"):
        run(schedule, [FLOW_DETERMINISTIC[0]], [10])


@pytest.mark.parametrize("name", DIFFUSION_DETERMINISTIC)
def test_error_falls_as_steps_rise(schedule, name):
    """Every deterministic sampler converges: 4 times the steps, at least half the error; the
    ones whose order this test knows at about that order (log-log slope against evaluations;
    Heun's and DPM-Solver++'s last step to sigma = 0 is first order, so their slope on this
    grid lies between -1.5 and -2 or steeper)."""
    counts = [10, 20, 40]
    records = run(schedule, [name], counts, reference_samples=exact_x0(schedule))
    assert [r.steps for r in records] == counts
    per_step = REGISTRY[name].evaluations_per_step
    assert records[-1].evaluations >= 40 * per_step - 1  # Heun's last step may be Euler's
    errors = [r.rms_error for r in records]
    assert errors[-1] < errors[0] / 2, errors
    slope = convergence_slope(records, name)
    order = ORDERS.get(name)
    if order == 1:
        assert -1.4 < slope < -0.7, (name, slope, errors)
    elif order == 2:
        assert slope < -1.4, (name, slope, errors)
    else:  # a sampler this test does not know: at least first order
        assert slope < -0.7, (name, slope, errors)


def test_first_and_second_order_slopes_differ(schedule):
    """DDIM (first order) against a registered second-order solver, when one is."""
    second = [n for n, order in ORDERS.items() if order == 2 and n in REGISTRY]
    if not second:
        pytest.skip("no second-order sampler registered yet")
    records = run(schedule, ["ddim", second[0]], [10, 20, 40], reference_samples=exact_x0(schedule))
    assert convergence_slope(records, second[0]) < convergence_slope(records, "ddim") - 0.4


def test_the_reference_run_comes_first_and_is_accurate(schedule):
    reference = reference_config(schedule, "epsilon")
    assert reference.num_inference_steps == 1000 and reference.spacing == "trailing"
    assert REGISTRY[reference.kind].deterministic
    model = GaussianEps(schedule)
    items = list(
        convergence(model, schedule, "epsilon", (2,), ["ddim"], [5, 20], seed=SEED, num_samples=N)
    )
    records = [r for r in items if isinstance(r, ConvergenceRecord)]
    assert records[0].is_reference and records[0].rms_error == 0.0
    assert [(r.sampler, r.steps) for r in records[1:]] == [("ddim", 5), ("ddim", 20)]
    # the measured errors are the runs' own: the reference is far closer to the exact answer
    exact = run(schedule, ["ddim"], [5, 20], reference_samples=exact_x0(schedule))
    for measured, true in zip(records[1:], exact):
        assert measured.rms_error == pytest.approx(true.rms_error, rel=0.05)
    # progress: evaluations rise to the total, between the records
    progress = [p for p in items if isinstance(p, ConvergenceProgress)]
    done = [p.evaluations_done for p in progress]
    assert done == sorted(done) and done[-1] == progress[-1].evaluations_total
    assert progress[-1].evaluations_total == sum(r.evaluations for r in records)


def test_only_deterministic_samplers_and_valid_step_counts(schedule):
    model = GaussianEps(schedule)
    names = deterministic_samplers(schedule, "epsilon")
    assert "ddim" in names and "ddpm" not in names
    with pytest.raises(ConfigError, match="not deterministic"):
        next(convergence(model, schedule, "epsilon", (2,), ["ddpm"], [5]))
    with pytest.raises(ConfigError, match="out of range"):
        next(convergence(model, schedule, "epsilon", (2,), ["ddim"], [0, 5]))
    with pytest.raises(ConfigError, match="unknown sampler"):
        next(convergence(model, schedule, "epsilon", (2,), ["nope"], [5]))
    assert default_step_counts(1000) == [2, 5, 10, 20, 50, 100, 200]
    assert default_step_counts(100) == [2, 5, 10, 20]
    assert step_counts_up_to(20) == [2, 5, 10, 20] and step_counts_up_to(30) == [2, 5, 10, 20, 30]


def test_a_checkpoint_and_the_csv_table(tmp_path):
    from diffusion_studio.core.training import Trainer, preset_config

    trainer = Trainer(
        preset_config("moons", "small", max_steps=5, max_minutes=None, device="cpu", num_points=64)
    )
    for _ in trainer.run():
        pass
    items = list(checkpoint_convergence(trainer.checkpoint(), ["ddim"], [2, 4], num_samples=8))
    records = [r for r in items if isinstance(r, ConvergenceRecord)]
    assert len(records) == 3 and records[0].is_reference
    assert all(r.rms_error > 0 and r.seconds >= 0 for r in records[1:])
    path = save_csv(tmp_path / "convergence.csv", records_table(records))
    lines = path.read_text().splitlines()
    assert lines[0] == "sampler,steps,evaluations,rms_error,seconds,reference"
    assert lines[2].startswith("ddim,2,2,")
