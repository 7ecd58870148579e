"""Class-conditional sampling with classifier-free guidance (Ho & Salimans 2022).

A class-conditional net (`UNetConfig.num_classes` = K > 0) is trained on labels 0..K-1, with
a share of them (`TrainConfig.label_dropout`) replaced by K, "no label", so that one net is
both the conditional model and the unconditional one. Sampling then uses

    out = out_uncond + s * (out_cond - out_uncond)          (Ho & Salimans, eq. 6, with s = 1 + w)

for the net's output (epsilon, v or x0: the combination is linear in each). s = 1 is the plain
conditional model; s > 1 trades variety within a class for samples that look more like it.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusion_studio.core.errors import ConfigError

DEFAULT_GUIDANCE_SCALE = 2.0  # benchmarks/README.md, "Class-conditional digits"
MAX_GUIDANCE_SCALE = 20.0


def num_classes(model: nn.Module) -> int:
    """K for a class-conditional net, 0 otherwise."""
    config = getattr(model, "config", None)
    return int(getattr(config, "num_classes", 0) or 0)


def class_labels(count: int, n: int, label: int | None = None) -> torch.Tensor:
    """Labels (n,) for sampling: every class in turn (0, 1, ..., K-1, 0, ...), or one class."""
    if count < 1:
        raise ConfigError("this model is not class-conditional: it takes no class label")
    if label is None:
        return torch.arange(n, dtype=torch.long) % count
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < count:
        raise ConfigError(f"class label must be an integer from 0 to {count - 1}, got {label!r}")
    return torch.full((n,), label, dtype=torch.long)


def check_guidance_scale(scale: float) -> float:
    """A guidance scale as a float in [0, MAX_GUIDANCE_SCALE], or a ConfigError."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ConfigError(f"guidance scale must be a number, got {scale!r}")
    if not 0.0 <= float(scale) <= MAX_GUIDANCE_SCALE:
        raise ConfigError(
            f"guidance scale must be between 0 and {MAX_GUIDANCE_SCALE:g} (1 = no guidance), "
            f"got {scale}"
        )
    return float(scale)


def guided_output(
    model: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, scale: float
) -> torch.Tensor:
    """The guided prediction for x (B, ...) at t (B,) and labels (B,): one net evaluation
    when scale is 1 (purely conditional), else one on a batch of 2B (conditional and
    unconditional halves)."""
    if scale == 1.0:
        return model(x, t, labels)
    b = x.shape[0]
    no_label = torch.full_like(labels, num_classes(model))
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, no_label]))
    conditional, unconditional = both[:b], both[b:]
    return unconditional + scale * (conditional - unconditional)


def sampling_labels(model: nn.Module, n: int, label: int | None = None) -> torch.Tensor | None:
    """What `core.sampling.sample` takes as `labels` for n samples of `model`: None for an
    unconditional net (which then refuses a label), else `class_labels`."""
    count = num_classes(model)
    if count == 0 and label is None:
        return None
    return class_labels(count, n, label)  # refuses a label for an unconditional net
