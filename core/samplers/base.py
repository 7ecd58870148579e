"""What every sampler shares: the registry entry, the base class, timesteps, x_0 / eps algebra.

A sampler walks `num_inference_steps` steps from noise to data. The sampling loop
(`core.sampling.sample`) asks it for three things per step i = 0..n-1:

  x_in  = sampler.scale_model_input(x, i)           what the network sees (the x_t of DDPM eq. 4)
  out   = sampler.advance(model_fn, i, x, generator) one whole step: it calls
          model_fn(x_in, sampler.timesteps[i]) once (twice for Heun) and returns the next state
          and the network's estimate of x_0 (`StepOutput`).

`x` is the sampler's own state: x_t itself for DDPM, DDIM, DPM-Solver++ and UniPC (the
"variance-preserving" scale), x_t / sqrt(alphabar_t) = x_0 + sigma_t eps for the Karras-style
samplers (Euler, Heun; sigma_t = sqrt((1 - alphabar_t) / alphabar_t), Karras et al. 2022 eq. 1).
`init_noise_sigma` scales the initial N(0, I) draw into that state, `add_noise` noises a clean
image into it, and `scale_model_input` maps it back to x_t, so frames always show x_t.

Every sampler is described by a `SamplerSpec` in `REGISTRY` (name, label, help, its options
dataclass, the diffusers scheduler classes it matches, network evaluations per step, whether it
is deterministic). The CLI's choices, Playback's sampler form and the diffusers-folder mapping
are all generated from the registry: adding a sampler is one module that registers itself.
Each entry names the objective it samples (`SamplerSpec.objective`): "diffusion" (DDPM, DDIM,
the Karras and DPM families, over a `NoiseSchedule`) or "flow" (`core.samplers.flow_match`,
over a `core.flow.FlowPath`, on a network that predicts the velocity); `samplers_for_objective`
lists one kind, for forms and the CLI.

Clipping: when `clip_sample` is on, the x_0 estimate is clamped to [-r, r] and the noise
estimate is **recomputed from the clamped x_0** (eps = (x_t - sqrt(ab) x_0) / sqrt(1 - ab)), so
that every update uses one consistent (x_0, eps) pair. Measured on the shipped digits model
(DDIM 50, guidance 2, 256 samples; README "Clipping x_0, with guidance"): mixing the clipped
x_0 with the unclipped eps (diffusers' default `use_clipped_model_output=False`) gives 50 %
confident digits (28 % the digit asked for), the consistent pair 99.2 % (100 %).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, NamedTuple, get_args

import numpy as np
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.flow import OBJECTIVES, check_objective
from diffusion_studio.core.schedule import NoiseSchedule

# What a network outputs: epsilon, v (= sqrt(ab) eps - sqrt(1 - ab) x_0) or x_0 for diffusion;
# "velocity" (= eps - x_0) is a flow-matching model's output (core.flow).
PredictionType = Literal["epsilon", "v", "x0", "velocity"]
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
DIFFUSION_PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v", "x0")
TimestepSpacing = Literal["leading", "trailing", "linspace"]
TIMESTEP_SPACINGS: tuple[str, ...] = get_args(TimestepSpacing)

# The network, as a sampler calls it: (x_t (B, ...), timestep) -> the prediction (B, ...).
# The timestep is one number for the whole batch (an int, or a float on Karras sigmas).
ModelFn = Callable[[torch.Tensor, float], torch.Tensor]


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Refuse a value outside `choices` with a message naming them."""
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


class StepOutput(NamedTuple):
    """prev_sample: the state after the step, shaped like x; pred_x0: the model's estimate of
    x_0 at this step (the x_t scale, so images lie about [-1, 1]), same shape."""

    prev_sample: torch.Tensor
    pred_x0: torch.Tensor


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class NoOptions:
    """A sampler without options of its own."""


def option(default: Any, help: str, **limits: Any) -> Any:
    """A field of a sampler's options dataclass, with what the CLI and the GUI need to offer it:
    help text and, for numbers, `minimum` / `maximum`; for text, `choices`."""
    return field(default=default, metadata={"help": help, **limits})


def check_options(options: Any, owner: str = "") -> None:
    """Check each option against its field's limits (ConfigError naming the option and, when
    given, its `owner`: "DDIM eta = 1.5 is out of range ...")."""
    for f in fields(options):
        value = getattr(options, f.name)
        choices = f.metadata.get("choices")
        if choices is not None:
            check_choice(f"{owner} {f.name.replace('_', ' ')}".strip(), value, tuple(choices))
            continue
        low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
        if low is None and high is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ConfigError(f"{owner} {f.name} = {value!r} must be a number".strip())
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(
                f"{owner} {f.name} = {value!r} is out of range: it must lie in [{low}, {high}]".strip()
            )


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SamplerSpec:
    """One registry entry: everything the CLI, the GUI and the diffusers mapping need to know.

    name: the CLI name ("dpmpp-2m"); label: what the GUI shows ("DPM-Solver++ 2M");
    help: one sentence for tooltips and --help; options_class: its own options dataclass;
    diffusers_classes: scheduler class names in a diffusers folder it stands for;
    evaluations_per_step: network evaluations per step (Heun: 2);
    deterministic: the same noise gives the same samples (at default options);
    karras: it offers Karras sigma spacing (diffusers' `use_karras_sigmas`);
    default_steps: the step count it is used with by default (with Karras sigmas when
    default_karras); paper: the reference it cites;
    diffusers_clip_default: whether its diffusers scheduler clips x_0 when `clip_sample` is
    absent from the config (DDPM, DDIM); diffusers_spacing: the timestep_spacing it uses when
    the config has none ("leading" for DDPM and DDIM, "linspace" for the others);
    objective: the kind of model it samples, "diffusion" (a NoiseSchedule, epsilon / v / x0
    prediction) or "flow" (a FlowPath, velocity prediction; `core.flow`).
    """

    name: str
    label: str
    help: str
    sampler_class: type[Sampler]
    options_class: type = NoOptions
    diffusers_classes: tuple[str, ...] = ()
    evaluations_per_step: int = 1
    deterministic: bool = True
    karras: bool = False
    default_steps: int = 50
    paper: str = ""
    diffusers_clip_default: bool = False  # its diffusers scheduler clips x_0 by default
    diffusers_spacing: str = "linspace"  # its diffusers scheduler's default timestep_spacing
    default_karras: bool = False  # Karras sigmas on unless the user says otherwise
    objective: str = "diffusion"  # "diffusion" or "flow" (core.flow.OBJECTIVES)

    def options_from_diffusers(self, scheduler_config: dict[str, Any]) -> dict[str, Any]:
        """The options a diffusers scheduler config sets (keys named as our option fields)."""
        return self.sampler_class.options_from_diffusers(scheduler_config)


REGISTRY: dict[str, SamplerSpec] = {}


def register(spec: SamplerSpec) -> SamplerSpec:
    """Add a sampler to the registry (in import order: the order the GUI and CLI list them)."""
    if spec.name in REGISTRY:
        raise ValueError(f"sampler {spec.name!r} is registered twice")
    if spec.objective not in OBJECTIVES:
        raise ValueError(f"sampler {spec.name!r} has an unknown objective {spec.objective!r}")
    spec.sampler_class.spec = spec
    REGISTRY[spec.name] = spec
    return spec


def sampler_spec(name: str) -> SamplerSpec:
    """The registry entry for a sampler name (ConfigError naming the choices otherwise)."""
    check_choice("sampler", name, tuple(REGISTRY))
    return REGISTRY[name]


def samplers_for_objective(objective: str) -> list[SamplerSpec]:
    """The registered samplers of one objective ("diffusion" or "flow"), in registry order."""
    check_objective(objective)
    return [spec for spec in REGISTRY.values() if spec.objective == objective]


def check_sampler_objective(spec: SamplerSpec, objective: str) -> None:
    """Refuse a sampler of the other objective, in one line naming the samplers that fit."""
    check_objective(objective)
    if spec.objective != objective:
        names = ", ".join(s.name for s in samplers_for_objective(objective))
        raise ConfigError(
            f"{spec.label} samples {spec.objective} models, not {objective} models: "
            f"choose one of {names}"
        )


def spec_for_diffusers_class(
    class_name: str, scheduler_config: dict[str, Any] | None = None
) -> SamplerSpec | None:
    """The sampler that stands for a diffusers scheduler class, or None. With the scheduler's
    config, a class that stands for several samplers picks one (`Sampler.diffusers_variant`:
    DPMSolverMultistepScheduler with algorithm_type "sde-dpmsolver++" is dpmpp-2m-sde)."""
    for spec in REGISTRY.values():
        if class_name in spec.diffusers_classes:
            if scheduler_config is not None:
                variant = spec.sampler_class.diffusers_variant(scheduler_config)
                return REGISTRY.get(variant, spec) if variant else spec
            return spec
    return None


def unsupported_settings(
    scheduler_config: dict[str, Any], supported: dict[str, tuple[Any, ...]]
) -> list[str]:
    """A note for each key of `supported` whose value in the config is not one we implement
    (keys absent from the config take diffusers' default, which we implement)."""
    return [
        f"{key} {scheduler_config[key]!r} is not available; {supported[key][0]!r} is used"
        for key in supported
        if key in scheduler_config and scheduler_config[key] not in supported[key]
    ]


# --------------------------------------------------------------------------- maths


def make_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str) -> np.ndarray:
    """Descending int64 timesteps for sampling (Lin et al. 2024, Table 2 names the spacings).

    leading:  0, k, 2k, ... with k = T // n        (then reversed)
    trailing: round(T, T - T/n, ...) - 1          (always starts at T-1)
    linspace: round(linspace(0, T-1, n))           (then reversed)
    """
    T, n = num_train_timesteps, num_inference_steps
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= T:
        raise ConfigError(
            f"number of sampling steps {n!r} is out of range: it must lie in 1..{T} "
            f"(the schedule's T)"
        )
    check_choice("timestep spacing", spacing, TIMESTEP_SPACINGS)
    if spacing == "leading":
        steps = (np.arange(0, n) * (T // n)).round()[::-1]
    elif spacing == "trailing":
        # diffusers writes np.arange(T, 0, -T / n), which yields n + 1 values when rounding
        # leaves T - n * (T / n) a hair above 0 (e.g. T = 17, n = 7); same values, exactly n here.
        steps = np.round(T - np.arange(n) * (T / n)) - 1
    else:
        steps = np.linspace(0, T - 1, n).round()[::-1]
    return steps.copy().astype(np.int64)


def split_prediction_at(
    alphabar: float,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    prediction_type: PredictionType,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn the network's output at a noise level alphabar into (pred_x0, pred_eps).

    From x_t = sqrt(ab) x0 + sqrt(1-ab) eps (DDPM eq. 4) and v = sqrt(ab) eps - sqrt(1-ab) x0:
      epsilon: x0 = (x_t - sqrt(1-ab) eps) / sqrt(ab)               (DDPM eq. 15)
      v:       x0 = sqrt(ab) x_t - sqrt(1-ab) v,  eps = sqrt(ab) v + sqrt(1-ab) x_t
      x0:      eps = (x_t - sqrt(ab) x0) / sqrt(1-ab)
    x_t, model_output: (B, ...) in the x_t scale; both results have their shape.
    """
    sqrt_ab, sqrt_1m_ab = math.sqrt(alphabar), math.sqrt(1.0 - alphabar)
    if prediction_type == "epsilon":
        pred_eps = model_output
        pred_x0 = (x_t - sqrt_1m_ab * model_output) / sqrt_ab
    elif prediction_type == "v":
        pred_x0 = sqrt_ab * x_t - sqrt_1m_ab * model_output
        pred_eps = sqrt_ab * model_output + sqrt_1m_ab * x_t
    elif prediction_type == "x0":
        pred_x0 = model_output
        pred_eps = (x_t - sqrt_ab * model_output) / sqrt_1m_ab
    else:
        # "velocity" is a flow model's output: core.samplers.flow_match samples those
        raise ConfigError(
            f"a diffusion sampler cannot use prediction type {prediction_type!r}; choose one of "
            f"{', '.join(DIFFUSION_PREDICTION_TYPES)}"
        )
    return pred_x0, pred_eps


def split_prediction(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    prediction_type: PredictionType,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`split_prediction_at` at the schedule's alphabar_t (t an integer timestep)."""
    return split_prediction_at(
        float(schedule.alphas_cumprod[int(t)]), model_output, x_t, prediction_type
    )


def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device (CPU by default)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


# --------------------------------------------------------------------------- base class


class Sampler:
    """The interface the sampling loop uses, and what every sampler shares.

    After `set_timesteps`: `timesteps` (n,) holds the network's timestep at each step (int64,
    or float64 where Karras sigmas fall between integer timesteps), `num_inference_steps` = n.
    A subclass implements `set_timesteps` (when it needs more tables than the timesteps) and
    `step`; a multi-evaluation sampler (Heun) overrides `advance`.
    """

    spec: ClassVar[SamplerSpec]

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        clip_sample: bool = False,
        clip_range: float = 1.0,
    ) -> None:
        check_choice("prediction type", prediction_type, PREDICTION_TYPES)
        self.schedule = schedule
        self.prediction_type: PredictionType = prediction_type
        self.clip_sample = clip_sample
        self.clip_range = clip_range
        self.num_inference_steps = schedule.num_timesteps
        self.timesteps = torch.arange(schedule.num_timesteps - 1, -1, -1, dtype=torch.long)

    # ---- what the registry and make_sampler use

    @classmethod
    def options_from_diffusers(cls, scheduler_config: dict[str, Any]) -> dict[str, Any]:
        """Options read from a diffusers scheduler config (none by default)."""
        return {}

    @classmethod
    def diffusers_notes(cls, scheduler_config: dict[str, Any]) -> list[str]:
        """Settings of a diffusers config of this sampler's class that have no equivalent here
        (one line each, shown with the model; none by default)."""
        return []

    @classmethod
    def diffusers_variant(cls, scheduler_config: dict[str, Any]) -> str | None:
        """The registered sampler a diffusers config of this sampler's class stands for, when
        one class stands for several (None: this one)."""
        return None

    @property
    def is_deterministic(self) -> bool:
        """Whether the same initial noise always gives the same samples."""
        return self.spec.deterministic

    def total_evaluations(self) -> int:
        """Network evaluations of a whole run (per sample, without guidance's doubling)."""
        return len(self.timesteps) * self.spec.evaluations_per_step

    # ---- timesteps

    def set_timesteps(self, num_inference_steps: int, spacing: TimestepSpacing = "leading") -> None:
        """Choose `num_inference_steps` timesteps out of 0..T-1 (1 <= n <= T)."""
        steps = make_timesteps(self.schedule.num_timesteps, num_inference_steps, spacing)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(steps)

    def frame_timestep(self, i: int) -> int:
        """The timestep step i starts from, as a whole number (what frames and captions show)."""
        return int(round(float(self.timesteps[i])))

    def _alphabar(self, t: int) -> float:
        return float(self.schedule.alphas_cumprod[t])

    # ---- the sampling loop's interface

    @property
    def init_noise_sigma(self) -> float:
        """The standard deviation of the initial state (1 in the x_t scale)."""
        return 1.0

    def begin(self) -> None:
        """Forget what earlier steps left behind (multistep history): called before a run."""

    def scale_model_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The state at step i in the x_t scale (what the network takes); the identity here."""
        return x

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """Noise a clean x_0 (B, ...) to the noise level of step i, in the sampler's state."""
        t = torch.full((x0.shape[0],), self.frame_timestep(i), dtype=torch.long)
        return self.schedule.add_noise(x0, noise, t)

    def advance(
        self,
        model_fn: ModelFn,
        i: int,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One whole step from the state x at step i: evaluates the network, then `step`."""
        t = self.timesteps[i].item()
        model_output = model_fn(self.scale_model_input(x, i), t)
        return self.step(model_output, i, x, generator=generator)

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """Step i given the network's output at it (diffusers' `step`, by index)."""
        raise NotImplementedError

    # ---- the x_0 estimate, consistently clipped

    def denoise(
        self, model_output: torch.Tensor, alphabar: float, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred_x0, pred_eps) at noise level alphabar from x_t in the x_t scale.

        With `clip_sample`, x_0 is clamped to [-clip_range, clip_range] and eps recomputed from
        the clamped x_0 (DDPM eq. 4 solved for eps), so the pair stays consistent.
        """
        pred_x0, pred_eps = split_prediction_at(alphabar, model_output, x_t, self.prediction_type)
        if self.clip_sample:
            pred_x0 = pred_x0.clamp(-self.clip_range, self.clip_range)
            pred_eps = (x_t - math.sqrt(alphabar) * pred_x0) / math.sqrt(1.0 - alphabar)
        return pred_x0, pred_eps
