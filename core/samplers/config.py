"""How to sample: `SamplerConfig` (one sampler's name, steps, spacing, clipping and its own
options), the default a model starts from, and `make_sampler`, which also refuses a sampler of
the other objective (a diffusion sampler on a flow model, or the reverse)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.flow import FLOW_PREDICTION_TYPE, FlowPath, check_objective
from diffusion_studio.core.samplers.base import (
    PREDICTION_TYPES,
    REGISTRY,
    TIMESTEP_SPACINGS,
    PredictionType,
    Sampler,
    SamplerSpec,
    TimestepSpacing,
    check_choice,
    check_options,
    check_sampler_objective,
    sampler_spec,
)
from diffusion_studio.core.schedule import NoiseSchedule

COMMON_KEYS = ("kind", "num_inference_steps", "spacing", "clip_sample", "clip_range", "karras")
# Written by every sampler's dict before samplers had options of their own (DDPM's dicts held
# eta = 0, DDIM's variance_type): read and dropped when the sampler has no such option.
LEGACY_KEYS = ("eta", "variance_type")


@dataclass(frozen=True)
class SamplerConfig:
    """One way to sample.

    kind: a registered sampler's name (`core.samplers.REGISTRY`); num_inference_steps: 1..T;
    spacing: how the steps spread over 0..T-1; clip_sample / clip_range: clamp the x_0 estimate
    to [-r, r] (images; the noise estimate follows it, `Sampler.denoise`); karras: Karras et al.
    2022's sigma spacing (eq. 5, rho = 7), for samplers that offer it; options: the sampler's
    own options (its `options_class` fields, e.g. {"eta": 0.5} for DDIM), defaults filled in.
    """

    kind: str = "ddim"
    num_inference_steps: int = 50
    spacing: TimestepSpacing = "leading"
    clip_sample: bool = False
    clip_range: float = 1.0
    karras: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = sampler_spec(self.kind)
        check_choice("timestep spacing", self.spacing, TIMESTEP_SPACINGS)
        n = self.num_inference_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"number of sampling steps must be a whole number >= 1, got {n!r}")
        if not isinstance(self.clip_range, (int, float)) or not self.clip_range > 0:
            raise ConfigError(f"clip range must be > 0, got {self.clip_range!r}")
        if self.karras and not spec.karras:
            raise ConfigError(f"{spec.label} has no Karras sigma spacing (--karras)")
        known = [f.name for f in fields(spec.options_class)]
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            has = f"its options are {', '.join(known)}" if known else "it has no options"
            raise ConfigError(f"{spec.label} has no option {', '.join(unknown)}: {has}")
        options = spec.options_class(**self.options)
        check_options(options, spec.label)
        object.__setattr__(self, "options", asdict(options))

    @property
    def spec(self) -> SamplerSpec:
        """The registry entry of this config's sampler."""
        return REGISTRY[self.kind]

    def option(self, name: str) -> Any:
        """One of the sampler's own options (KeyError when it has no such option)."""
        return self.options[name]

    def summary(self) -> str:
        """'DDIM, 50 steps, eta 0.3' (Karras spacing and options only when they apply)."""
        parts = [self.spec.label, f"{self.num_inference_steps} steps"]
        if self.karras:
            parts.append("Karras sigmas")
        defaults = asdict(self.spec.options_class())
        for name, value in self.options.items():
            if value != defaults[name] or name == "eta":
                parts.append(
                    f"{name.replace('_', ' ')} {value:g}"
                    if isinstance(value, float)
                    else f"{name.replace('_', ' ')} {value}"
                )
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A flat dict: the common settings and the sampler's options side by side."""
        common = {key: getattr(self, key) for key in COMMON_KEYS}
        return {**common, **self.options}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerConfig:
        """Read `to_dict`'s form (and the older one where every sampler carried eta and
        variance_type)."""
        data = dict(data)
        common = {key: data.pop(key) for key in COMMON_KEYS if key in data}
        spec = sampler_spec(common.get("kind", cls.kind))
        known = {f.name for f in fields(spec.options_class)}
        for key in LEGACY_KEYS:
            if key in data and key not in known:
                del data[key]
        unknown = sorted(set(data) - known)
        if unknown:
            allowed = sorted({*COMMON_KEYS, *known})
            raise ConfigError(f"unknown sampler setting(s) {unknown}; known: {allowed}")
        return cls(**common, options=data)


def sampler_defaults(name: str, clip_sample: bool) -> SamplerConfig:
    """A registered sampler as it is used by default: its default step count, trailing
    spacing, Karras sigmas where it defaults to them, its options' defaults."""
    spec = sampler_spec(name)
    return SamplerConfig(
        name, spec.default_steps, "trailing", clip_sample=clip_sample, karras=spec.default_karras
    )


# A flow model's default: Flow Euler with this many steps, trailing spacing (equal steps in t).
# Measured on moons (`train --data moons --objective flow --steps 3000`, 2000 samples against
# 2000 fresh points, core.quality.point_quality: precision / recall within 0.1): Flow Euler
# 10 steps 0.955 / 0.994, 20: 0.979 / 0.998, 50: 0.983 / 0.999, 100: 0.989 / 0.999; Flow Heun
# 10 steps (19 evaluations) 0.989 / 0.996, 25: 0.991 / 0.999. 50 Euler steps: the cost of the
# diffusion previews' DDIM 50, well inside the 0.95 bar (tests/cli/test_cli_flow.py).
FLOW_DEFAULT_SAMPLER = "flow-euler"
FLOW_DEFAULT_STEPS = 50


def default_sampler_config(
    is_points: bool, model_defaults: dict[str, Any] | None = None, objective: str = "diffusion"
) -> SamplerConfig:
    """The sampler Playback, the CLI, training previews and the benchmarks start from.

    A model that names its own sampler (`model_defaults`, e.g. from a diffusers scheduler
    config) gets it. A flow model (objective "flow") otherwise gets Flow Euler,
    FLOW_DEFAULT_STEPS steps, trailing spacing, no clipping (x_0 = x - t v is well conditioned
    at every t). A diffusion model otherwise gets DDPM, 100 steps, trailing spacing, with the
    x_0 estimate clipped
    to [-1, 1] for images (their data range, as diffusers' DDPMScheduler does by default) and
    not for 2-D points (which extend beyond it). Without the clip an epsilon-prediction model
    on the cosine schedule (alphabar_T ~ 2e-9) blows up in the first steps:
    pred_x0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t) multiplies the network's error
    by ~2e4 (measured: |x| up to 1.8e4 and pure-noise scores without the clip; recognizable
    digits with it). v- and x0-prediction models are unaffected (the same scores either way).
    """
    check_objective(objective)
    if model_defaults is not None:
        return SamplerConfig.from_dict(dict(model_defaults))
    if objective == "flow":
        return SamplerConfig(FLOW_DEFAULT_SAMPLER, FLOW_DEFAULT_STEPS, "trailing")
    return SamplerConfig("ddpm", 100, "trailing", clip_sample=not is_points)


def make_sampler(
    config: SamplerConfig, schedule: NoiseSchedule | FlowPath, prediction_type: PredictionType
) -> Sampler:
    """Build the sampler `config` describes, with its timesteps already set.

    schedule: the model's path, a NoiseSchedule for a diffusion model or a FlowPath for a flow
    model (prediction type "velocity"). A sampler of the other objective is refused
    (ConfigError, one line naming the samplers that fit).
    """
    check_choice("prediction type", prediction_type, PREDICTION_TYPES)
    objective = "flow" if prediction_type == FLOW_PREDICTION_TYPE else "diffusion"
    if isinstance(schedule, FlowPath) != (objective == "flow"):
        raise ConfigError(
            f"a model that predicts {prediction_type!r} cannot be sampled on a "
            f"{'flow path' if isinstance(schedule, FlowPath) else 'diffusion noise schedule'}"
        )
    spec = config.spec
    check_sampler_objective(spec, objective)
    if (
        isinstance(schedule, NoiseSchedule)
        and schedule.config.zero_terminal_snr
        and prediction_type == "epsilon"
    ):
        raise ConfigError(
            "a zero-terminal-SNR schedule cannot be sampled with epsilon prediction "
            "(x_0 cannot be recovered from pure noise): train with v or x0 prediction"
        )
    extra: dict[str, Any] = dict(config.options)
    if spec.karras:
        extra["karras"] = config.karras
    sampler = spec.sampler_class(
        schedule,  # type: ignore[arg-type]
        prediction_type,
        clip_sample=config.clip_sample,
        clip_range=config.clip_range,
        **extra,
    )
    sampler.set_timesteps(config.num_inference_steps, config.spacing)
    return sampler
