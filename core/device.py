"""Choosing the torch device: auto-detect CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch

from diffusion_studio.core.errors import ConfigError

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; otherwise the named device, checked to exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, str) or (
        device not in DEVICE_CHOICES and not device.startswith("cuda:")
    ):
        raise ConfigError(f"unknown device {device!r}: choose auto, cpu, cuda or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but no CUDA GPU is available: use cpu or auto"
        )
    if device == "mps" and not _mps_available():
        raise ConfigError("device 'mps' was asked for but Apple's MPS is not available: use cpu")
    return torch.device(device)
