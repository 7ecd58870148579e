"""Will a training run fit in memory? Estimate before starting, refuse with a clear message.

On Linux a CPU allocation far too large for the machine does not raise: the kernel's OOM
killer ends the whole process (the app, the unsaved run). So `Trainer` estimates the peak
memory of a training step before its first step and refuses a batch that cannot fit.

The estimate (bytes) is

    fixed      = PARAMETER_COPIES * 4 * P
    per_sample = ACTIVATION_SAFETY * (A + IO_COPIES * 4 * S)
    peak       = fixed + batch_size * per_sample

with P the number of parameters, S the elements of one sample (C*H*W, or 2 for points) and
A the bytes autograd keeps for the backward pass of one sample, measured with one forward
pass of a single sample (`activation_bytes_per_sample`): the model itself is asked, so the
estimate follows any architecture (ours or a diffusers UNet) without a second description
of it.

PARAMETER_COPIES = 9: weights, gradients, AdamW's two moments and the EMA copy (5), plus
the transient copies a checkpoint save makes of raw weights, EMA weights and optimizer (4).

Measured on the CPU (torch 2.13, fp32, one `Trainer._train_step`, 1 thread): the growth of
the peak resident set size (VmHWM) per sample between batch 16 and 64 (MLP: 4096 and 32768),
for the presets of `default_model_config`, against A (what autograd
really keeps) and the estimate per sample:

    model, image size x channels   measured / sample   A             estimate   est / measured
    UNet small   28 x 1            1.29 MB             0.76 MB       2.00 MB    1.55
    UNet default 28 x 1            2.47 MB             1.52 MB       3.90 MB    1.58
    UNet large   28 x 1            4.60 MB             3.04 MB       7.69 MB    1.67
    UNet default 32 x 3            3.10 MB             2.00 MB       5.34 MB    1.72
    UNet default 64 x 1            9.40 MB             6.58 MB       16.9 MB    1.80
    UNet default 128 x 3           29.6 MB             26.4 MB       71.7 MB    2.42
    MLP default (points)           21.9 KB             10.6 KB       26.8 KB    1.22

The measured cost is 1.1x to 2x A (the gradients of the activations and the
backward pass's temporaries); ACTIVATION_SAFETY = 2.5 keeps the estimate above every
measurement, so it errs on the large side and the check refuses only a batch that would
not fit even so. CPU attention runs a fused kernel (no tokens x tokens matrix is kept).
bf16 autocast halves most activations; the estimate ignores that (it stays conservative).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from diffusion_studio.core.errors import TrainingError
from diffusion_studio.core.models import DiffusersUNetConfig, MLPConfig, ModelConfig, UNetConfig

if TYPE_CHECKING:
    from torch import nn

    from diffusion_studio.core.training import TrainConfig

BYTES_PER_FLOAT = 4
PARAMETER_COPIES = 9
ACTIVATION_SAFETY = 2.5
IO_COPIES = 12  # x0, noise, x_t, target, output, the loss terms and their gradients
GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of a training step: fixed_bytes + batch_size * per_sample_bytes."""

    fixed_bytes: int
    per_sample_bytes: int
    batch_size: int

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + self.batch_size * self.per_sample_bytes

    def max_batch_size(self, available_bytes: int) -> int:
        """The largest batch whose estimate fits in `available_bytes` (0 if none does)."""
        room = available_bytes - self.fixed_bytes
        return max(0, room // self.per_sample_bytes)


# --------------------------------------------------------------------------- activations


def sample_shape(model_config: ModelConfig) -> tuple[int, ...]:
    """The shape of one sample the model denoises: (C, H, W) or (dim,)."""
    if isinstance(model_config, MLPConfig):
        return (model_config.dim,)
    if isinstance(model_config, UNetConfig):
        size = model_config.image_size
        return (model_config.in_channels, size, size)
    if isinstance(model_config, DiffusersUNetConfig):
        return tuple(model_config.sample_shape)
    raise TypeError(f"not a model config: {model_config!r}")


def activation_bytes_per_sample(
    model: nn.Module, shape: tuple[int, ...], device: torch.device | str = "cpu"
) -> int:
    """Bytes autograd keeps for the backward pass of one sample, measured, not modelled: one
    forward pass of a single zero sample with `saved_tensors_hooks` summing the storages it
    saves (the parameters excluded). Costs one small forward pass; nothing is kept."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.zeros((1, *shape), device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, t)
    finally:
        model.train(was_training)
    return sum(saved.values())


def estimate_training_memory(
    activation_bytes: int, sample_elements: int, num_parameters: int, batch_size: int
) -> MemoryEstimate:
    """The peak memory of one training step (see the module docstring for the formula)."""
    per_sample = ACTIVATION_SAFETY * (
        activation_bytes + IO_COPIES * BYTES_PER_FLOAT * sample_elements
    )
    return MemoryEstimate(
        fixed_bytes=PARAMETER_COPIES * BYTES_PER_FLOAT * int(num_parameters),
        per_sample_bytes=max(1, int(per_sample)),
        batch_size=int(batch_size),
    )


# --------------------------------------------------------------------------- free memory


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    """MemAvailable from /proc/meminfo in bytes (Linux), or None."""
    try:
        with open(path, encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def _cgroup_available(
    base: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> int | None:
    """Room left under this process's cgroup memory limit (containers), or None.

    cgroup v2: <base>/<group>/memory.max - memory.current; v1: <base>/memory/<group>/
    memory.limit_in_bytes - memory.usage_in_bytes; each also at the hierarchy's root.
    """
    v2 = ("memory.max", "memory.current")
    v1 = ("memory.limit_in_bytes", "memory.usage_in_bytes")
    candidates: list[tuple[Path, tuple[str, str]]] = []
    try:
        lines = membership.read_text(encoding="ascii").splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        group = parts[2].strip().lstrip("/")
        if parts[0] == "0" and parts[1] == "":  # "0::/group"
            candidates.append((base / group, v2))
        elif "memory" in parts[1].split(","):  # "4:memory:/group"
            candidates.append((base / "memory" / group, v1))
    candidates += [(base, v2), (base / "memory", v1)]
    for folder, (limit_name, usage_name) in candidates:
        limit = _read_int(folder / limit_name)
        usage = _read_int(folder / usage_name)
        if limit is not None and usage is not None and limit < 2**60:  # v1 "no limit": ~2**63
            return max(0, limit - usage)
    return None


def _sysconf_available() -> int | None:
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    if pages <= 0 or page_size <= 0:
        return None
    return int(pages) * int(page_size)


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes free for a new allocation on `device`, or None where that cannot be read.

    cpu: MemAvailable from /proc/meminfo (Linux; without swap), else free physical pages
    (os.sysconf), the smaller of that and the room under a container's cgroup limit.
    cuda: torch.cuda.mem_get_info. Other devices (mps): None.
    """
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError):
            return None
        return int(free)
    if device.type != "cpu":
        return None
    system = _meminfo_available()
    if system is None:
        system = _sysconf_available()
    container = _cgroup_available()
    if system is None:
        return container
    return system if container is None else min(system, container)


# --------------------------------------------------------------------------- the check


def format_bytes(n: int) -> str:
    """Bytes in words: "512 MB", "3.2 GB", "72 TB"."""
    if n >= 1024 * GIB:
        return f"{n / (1024 * GIB):,.0f} TB"
    return f"{n / GIB:.1f} GB" if n >= GIB / 10 else f"{n / 1024**2:.0f} MB"


def _describe_samples(model_config: ModelConfig) -> str:
    if isinstance(model_config, MLPConfig):
        return f"{model_config.dim}-D points"
    if isinstance(model_config, UNetConfig):
        size = model_config.image_size
        return f"{size}x{size} images"
    height, width = model_config.image_shape
    return f"{height}x{width} images"


def estimate_for(
    model_config: ModelConfig, model: nn.Module, batch_size: int, device: torch.device | str
) -> MemoryEstimate:
    """The estimate for training `model` (built from `model_config`) at `batch_size`."""
    shape = sample_shape(model_config)
    return estimate_training_memory(
        activation_bytes_per_sample(model, shape, device),
        math.prod(shape),
        sum(p.numel() for p in model.parameters()),
        batch_size,
    )


def check_training_memory(
    config: TrainConfig, model: nn.Module, device: torch.device, available: int | None = None
) -> MemoryEstimate:
    """Raise TrainingError when a training step of `config` would not fit in free memory.

    available: bytes free (None: read them with `available_memory(device)`; where they cannot
    be read, nothing is checked). Returns the estimate.
    """
    assert config.model is not None
    if available is None:
        available = available_memory(device)
    estimate = estimate_for(config.model, model, config.batch_size, device)
    if available is None or estimate.total_bytes <= available:
        return estimate
    where = "this GPU has" if torch.device(device).type == "cuda" else "this machine has"
    needs = (
        f"batch {config.batch_size} of {_describe_samples(config.model)} needs about "
        f"{format_bytes(estimate.total_bytes)} to train, {where} {format_bytes(available)} free"
    )
    largest = estimate.max_batch_size(available)
    if largest >= 1:
        raise TrainingError(f"{needs}: use a batch of at most {largest}")
    raise TrainingError(f"{needs}: even a batch of 1 does not fit; use a smaller model or images")
