"""Solver convergence: how close each deterministic sampler's samples come to the exact ones.

Every deterministic sampler (DDIM at eta = 0, Euler, Heun, DPM-Solver++, UniPC, ...) solves
the same probability-flow ODE (Song et al. 2021, "Score-Based Generative Modeling through
SDEs", eq. 13) from the same initial noise, so as its step count rises its final samples
approach one solution; how fast (the slope of log error against log network evaluations) is
its order: -1 for a first-order solver, -2 for a second-order one (the classic
solver-convergence plot, e.g. Lu et al. 2022, DPM-Solver, Fig. 3).

The "exact" solution is approximated by a reference run: the most accurate deterministic
sampler registered (`REFERENCE_PREFERENCE`: DPM-Solver++ 2M, second order at one evaluation
per step, so the most accurate per evaluation; then Heun, second order at two; then UniPC;
for a flow model flow Heun, second order; then any deterministic sampler, e.g. DDIM, first
order) at the largest step count the schedule
allows (T steps). Its own error is O(1/T^2) for a second-order solver (O(1/T) for DDIM): far
below the errors of runs of at most T / 4 steps (`default_step_counts`). Measured on 2-D
Gaussian data with the ideal noise prediction (tests/core/test_convergence.py's model, T = 1000,
RMS error against the closed-form solution at T steps): DPM-Solver++ 2M 3.7e-5 (linear
schedule) / 2.1e-5 (cosine), UniPC 7.6e-5 / 3.3e-5, Heun 1.0e-4 / 3.3e-5, DDIM 1.4e-3 / 7.7e-4.

All runs use "trailing" spacing, so that every run starts at t = T - 1 (the same noise level:
with "leading" spacing a 5-step run would start at t = 800 of 1000 and solve another problem).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from diffusion_studio.core.checkpoint import Checkpoint, build_model_from_checkpoint
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.flow import FlowPath, ForwardPath, forward_path
from diffusion_studio.core.guidance import sampling_labels
from diffusion_studio.core.samplers import (
    REGISTRY,
    PredictionType,
    SamplerConfig,
    check_sampler_objective,
    make_sampler,
    samplers_for_objective,
)
from diffusion_studio.core.sampling import sample

# Samplers tried as the reference, most accurate per network evaluation first (see above);
# a name not registered is skipped, and any deterministic sampler serves when none is.
REFERENCE_PREFERENCE = ("dpmpp-2m", "heun", "unipc", "flow-heun")
SPACING = "trailing"  # every run starts at t = T - 1


@dataclass(frozen=True)
class ConvergenceRecord:
    """One run: `sampler` (registry name) at `steps` steps took `evaluations` network
    evaluations per sample (guidance doubles the actual calls) and `seconds`; its final samples
    lie `rms_error` (root mean square over every sample and value) from the reference's.
    The reference run itself is a record with is_reference=True and rms_error 0."""

    sampler: str
    steps: int
    evaluations: int
    rms_error: float
    seconds: float
    is_reference: bool = False


@dataclass(frozen=True)
class ConvergenceProgress:
    """Work done so far: `evaluations_done` of `evaluations_total` network evaluations (per
    sample), during the run of `sampler` at `steps` steps."""

    sampler: str
    steps: int
    evaluations_done: int
    evaluations_total: int

    @property
    def fraction(self) -> float:
        return self.evaluations_done / max(1, self.evaluations_total)


def deterministic_samplers(schedule: ForwardPath, prediction_type: PredictionType) -> list[str]:
    """The registered samplers of the path's objective (flow for a FlowPath, else diffusion)
    that are deterministic at their default options, in registry order
    (`Sampler.is_deterministic`)."""
    objective = "flow" if isinstance(schedule, FlowPath) else "diffusion"
    names = []
    for spec in samplers_for_objective(objective):
        name = spec.name
        sampler = make_sampler(SamplerConfig(name, 1, SPACING), schedule, prediction_type)
        if sampler.is_deterministic:
            names.append(name)
    return names


def reference_config(
    schedule: ForwardPath, prediction_type: PredictionType, clip_sample: bool = False
) -> SamplerConfig:
    """The reference run: the first of REFERENCE_PREFERENCE that is registered and
    deterministic, else the first deterministic sampler, at T steps (the schedule's most)."""
    available = deterministic_samplers(schedule, prediction_type)
    if not available:
        raise ConfigError("no deterministic sampler is registered: nothing converges")
    name = next((n for n in REFERENCE_PREFERENCE if n in available), available[0])
    return SamplerConfig(name, schedule.num_timesteps, SPACING, clip_sample=clip_sample)


STEP_LADDER = (2, 5, 10, 20, 50, 100, 200, 500, 1000)  # about evenly spaced in log steps


def step_counts_up_to(most: int) -> list[int]:
    """The STEP_LADDER's counts up to `most` (`most` itself last when it is not on it)."""
    counts = [c for c in STEP_LADDER if c <= most]
    return counts if most in counts or most < 1 else [*counts, most]


def default_step_counts(num_timesteps: int) -> list[int]:
    """Step counts for a convergence plot: 2, 5, 10, 20, 50, ... up to T / 4 (the reference's
    T steps stay well beyond them; at least 2 and 5)."""
    most = max(5, num_timesteps // 4)
    return [c for c in STEP_LADDER if c <= min(most, num_timesteps)]


def check_step_counts(step_counts: Sequence[int], num_timesteps: int) -> list[int]:
    """Sorted distinct step counts, each 1..T (ConfigError otherwise)."""
    counts = sorted(set(step_counts))
    if not counts:
        raise ConfigError("give at least one step count")
    for n in counts:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= num_timesteps:
            raise ConfigError(
                f"step count {n!r} is out of range: it must lie in 1..{num_timesteps} (T)"
            )
    return counts


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean square of a - b over every value (a, b: the same shape)."""
    return math.sqrt(float(((a.double() - b.double()) ** 2).mean()))


def convergence(
    model: nn.Module,
    schedule: ForwardPath,
    prediction_type: PredictionType,
    sample_shape: tuple[int, ...],
    samplers: Sequence[str],
    step_counts: Sequence[int],
    seed: int = 0,
    num_samples: int = 16,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    clip_sample: bool = False,
    reference: SamplerConfig | None = None,
    reference_samples: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[ConvergenceRecord | ConvergenceProgress]:
    """Run every sampler in `samplers` at every step count from the same initial noise
    (a CPU generator seeded with `seed`) and yield a ConvergenceRecord per run, after the
    reference's (first), with ConvergenceProgress records between network evaluations (a
    caller can stop between any two).

    samplers: registry names; a sampler that is not deterministic is refused (its error would
    measure its noise, not its accuracy). reference: the run the others are compared with
    (default `reference_config`); reference_samples: (num_samples, *sample_shape) final
    samples to compare with instead (e.g. a known exact solution; no reference run then).
    """
    deterministic = deterministic_samplers(schedule, prediction_type)
    objective = "flow" if isinstance(schedule, FlowPath) else "diffusion"
    for name in samplers:
        if name not in REGISTRY:
            raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(REGISTRY)}")
        check_sampler_objective(REGISTRY[name], objective)
        if name not in deterministic:
            raise ConfigError(
                f"{REGISTRY[name].label} is not deterministic: its samples differ from the "
                "reference by its own noise, not by its accuracy"
            )
    counts = check_step_counts(step_counts, schedule.num_timesteps)
    # each sampler as it is used by default (Heun on Karras sigmas: `SamplerSpec.default_karras`)
    runs = [
        SamplerConfig(n, c, SPACING, clip_sample=clip_sample, karras=REGISTRY[n].default_karras)
        for n in samplers
        for c in counts
    ]
    if reference_samples is None:
        reference = reference or reference_config(schedule, prediction_type, clip_sample)
        runs.insert(0, reference)
    made = [make_sampler(config, schedule, prediction_type) for config in runs]
    total = sum(s.total_evaluations() for s in made)
    done = 0
    target = reference_samples.detach().cpu().float() if reference_samples is not None else None
    for i, (config, sampler) in enumerate(zip(runs, made)):
        per_step = config.spec.evaluations_per_step
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        final: torch.Tensor | None = None
        for frame in sample(
            model,
            schedule,
            sampler,
            num_samples,
            sample_shape,
            generator,
            device,
            labels=labels,
            guidance_scale=guidance_scale,
        ):
            if frame.t >= 0:
                evaluations = min(done + (frame.step + 1) * per_step, total)
                yield ConvergenceProgress(
                    config.kind, config.num_inference_steps, evaluations, total
                )
            else:
                final = frame.x_t
        seconds = time.perf_counter() - started
        done += sampler.total_evaluations()
        assert final is not None
        is_reference = target is None and i == 0
        if is_reference:
            target = final
        assert target is not None
        yield ConvergenceRecord(
            config.kind,
            config.num_inference_steps,
            sampler.total_evaluations(),
            0.0 if is_reference else rms(final, target),
            seconds,
            is_reference,
        )


def checkpoint_convergence(
    ckpt: Checkpoint,
    samplers: Sequence[str] | None = None,
    step_counts: Sequence[int] | None = None,
    seed: int = 0,
    num_samples: int = 16,
    guidance_scale: float = 1.0,
    clip_sample: bool | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[ConvergenceRecord | ConvergenceProgress]:
    """`convergence` for a checkpoint's model: every deterministic sampler by default, at
    `default_step_counts`; a class-conditional model draws every class in turn (guided with
    `guidance_scale`); clip_sample: None = core's default for the kind of model (images
    clipped, points not: `default_sampler_config`)."""
    from diffusion_studio.core.samplers import default_sampler_config

    schedule = forward_path(ckpt.objective, ckpt.schedule_config)
    model = build_model_from_checkpoint(ckpt, device)
    if samplers is None:
        samplers = deterministic_samplers(schedule, ckpt.prediction_type)
    if step_counts is None:
        step_counts = default_step_counts(schedule.num_timesteps)
    if clip_sample is None:
        clip_sample = default_sampler_config(ckpt.is_points, None, ckpt.objective).clip_sample
    labels = sampling_labels(model, num_samples)
    yield from convergence(
        model,
        schedule,
        ckpt.prediction_type,
        ckpt.sample_shape,
        samplers,
        step_counts,
        seed=seed,
        num_samples=num_samples,
        labels=labels,
        guidance_scale=guidance_scale if labels is not None else 1.0,
        clip_sample=clip_sample,
        device=device,
    )


def records_table(records: Sequence[ConvergenceRecord]) -> dict[str, list]:
    """The records as CSV columns (`core.export.save_csv`): sampler, steps, evaluations,
    rms_error, seconds, reference (1 for the reference run)."""
    return {
        "sampler": [r.sampler for r in records],
        "steps": [r.steps for r in records],
        "evaluations": [r.evaluations for r in records],
        "rms_error": [r.rms_error for r in records],
        "seconds": [r.seconds for r in records],
        "reference": [int(r.is_reference) for r in records],
    }


def convergence_slope(records: Sequence[ConvergenceRecord], sampler: str) -> float:
    """The least-squares slope of log(rms error) against log(evaluations) of one sampler's
    runs (about -order); NaN with fewer than two runs of positive error."""
    points = [
        (math.log(r.evaluations), math.log(r.rms_error))
        for r in records
        if r.sampler == sampler and not r.is_reference and r.rms_error > 0
    ]
    if len(points) < 2:
        return math.nan
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx if sxx > 0 else math.nan
