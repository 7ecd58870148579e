"""Reverse-process samplers: one module per family, one registry entry per sampler.

    from diffusion_studio.core.samplers import REGISTRY, SamplerConfig, make_sampler
    sampler = make_sampler(SamplerConfig("ddim", 50, "trailing"), schedule, "epsilon")

`base` holds the interface and the registry, `config` the SamplerConfig; each family module
registers its samplers when imported (below, in the order the GUI and the CLI list them);
`flow_match` holds the samplers of flow-matching models (`samplers_for_objective("flow")`).
Equations are cited in each module.
"""

# Each family module registers its samplers; this order is the order they are listed in.
from diffusion_studio.core.samplers import ddpm  # noqa: F401, I001
from diffusion_studio.core.samplers import ddim  # noqa: F401, I001
from diffusion_studio.core.samplers import euler  # noqa: F401, I001
from diffusion_studio.core.samplers import heun  # noqa: F401, I001
from diffusion_studio.core.samplers import dpm_solver  # noqa: F401, I001
from diffusion_studio.core.samplers import unipc  # noqa: F401, I001
from diffusion_studio.core.samplers import flow_match  # noqa: F401, I001
from diffusion_studio.core.samplers.base import (
    DIFFUSION_PREDICTION_TYPES,
    PREDICTION_TYPES,
    REGISTRY,
    TIMESTEP_SPACINGS,
    ModelFn,
    NoOptions,
    PredictionType,
    Sampler,
    SamplerSpec,
    StepOutput,
    TimestepSpacing,
    check_sampler_objective,
    make_timesteps,
    sampler_spec,
    samplers_for_objective,
    spec_for_diffusers_class,
    split_prediction,
    split_prediction_at,
)
from diffusion_studio.core.samplers.config import (
    FLOW_DEFAULT_SAMPLER,
    FLOW_DEFAULT_STEPS,
    SamplerConfig,
    default_sampler_config,
    make_sampler,
    sampler_defaults,
)
from diffusion_studio.core.samplers.ddim import DDIMOptions, DDIMSampler
from diffusion_studio.core.samplers.flow_match import (
    FlowEulerSampler,
    FlowHeunSampler,
    FlowOptions,
    FlowSampler,
)
from diffusion_studio.core.samplers.ddpm import (
    VARIANCE_TYPES,
    DDPMOptions,
    DDPMSampler,
    VarianceType,
)

SAMPLER_KINDS: tuple[str, ...] = tuple(REGISTRY)

__all__ = [
    "FLOW_DEFAULT_SAMPLER",
    "FLOW_DEFAULT_STEPS",
    "FlowEulerSampler",
    "FlowHeunSampler",
    "FlowOptions",
    "FlowSampler",
    "check_sampler_objective",
    "samplers_for_objective",
    "DIFFUSION_PREDICTION_TYPES",
    "PREDICTION_TYPES",
    "REGISTRY",
    "SAMPLER_KINDS",
    "TIMESTEP_SPACINGS",
    "VARIANCE_TYPES",
    "DDIMOptions",
    "DDIMSampler",
    "DDPMOptions",
    "DDPMSampler",
    "ModelFn",
    "NoOptions",
    "PredictionType",
    "Sampler",
    "SamplerConfig",
    "SamplerSpec",
    "StepOutput",
    "TimestepSpacing",
    "VarianceType",
    "default_sampler_config",
    "make_sampler",
    "make_timesteps",
    "sampler_defaults",
    "sampler_spec",
    "spec_for_diffusers_class",
    "split_prediction",
    "split_prediction_at",
]
