"""diffusion_studio.core.memory: the training-memory estimate, free memory, and the check in Trainer."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion_studio.core import memory
from diffusion_studio.core.data import Dataset
from diffusion_studio.core.errors import TrainingError
from diffusion_studio.core.models import MLPConfig, UNetConfig, build_model, count_parameters
from diffusion_studio.core.schedule import ScheduleConfig
from diffusion_studio.core.training import (
    MAX_BATCH_SIZE,
    TrainConfig,
    Trainer,
    default_model_config,
)

MB = 1024**2


@pytest.mark.parametrize(
    "config",
    [
        default_model_config("images", 28, 1, "small"),
        default_model_config("images", 64, 3, "small"),
        UNetConfig(in_channels=1, image_size=16, channels=(8,), attention_heads=2),
        UNetConfig(
            in_channels=3, image_size=16, channels=(8, 16, 16), layers_per_level=2, norm_groups=4
        ),
        MLPConfig(hidden=64, layers=3),
    ],
    ids=["preset-28", "preset-64-rgb", "one-level-attention", "three-levels-two-layers", "mlp"],
)
def test_one_sample_measures_the_per_sample_activations(config) -> None:  # type: ignore[no-untyped-def]
    """What one sample keeps for backward, times 8, is what a batch of 8 keeps (within 10 %):
    measuring a single sample is enough to extrapolate to the batch."""
    torch.manual_seed(0)
    model = build_model(config)
    shape = memory.sample_shape(config)
    one = memory.activation_bytes_per_sample(model, shape)
    assert one > 4 * math.prod(shape)  # more than the input itself: the net's activations
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.randn(8, *shape), torch.zeros(8, dtype=torch.long))
    eight = sum(n for ptr, n in saved.items() if ptr not in parameters)
    assert 0.9 < 8 * one / eight < 1.1, (one, eight)


def test_activations_grow_with_batch_and_image_size() -> None:
    small = UNetConfig(image_size=28, channels=(32, 64), pixel_unshuffle=2)
    big = UNetConfig(image_size=56, channels=(32, 64), pixel_unshuffle=2)
    e_small = memory.estimate_for(small, build_model(small), 64, "cpu")
    e_big = memory.estimate_for(big, build_model(big), 64, "cpu")
    assert 3.5 < e_big.per_sample_bytes / e_small.per_sample_bytes < 6  # ~4x the pixels
    twice = memory.estimate_for(small, build_model(small), 128, "cpu")
    assert twice.total_bytes - e_small.total_bytes == 64 * e_small.per_sample_bytes
    parameters = count_parameters(build_model(small))
    assert e_small.fixed_bytes == memory.PARAMETER_COPIES * 4 * parameters


MEASURE_A_STEP = """
import json, torch
from pathlib import Path
from diffusion_studio.core import memory
from diffusion_studio.core.data import Dataset
from diffusion_studio.core.training import TrainConfig, Trainer, default_model_config

def status_kb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])

torch.set_num_threads(1)
model = default_model_config("images", 28, 1, "small")
config = TrainConfig(
    data="digits", model=model, batch_size=64, max_steps=2, max_minutes=None, device="cpu"
)
trainer = Trainer(config, dataset=Dataset("d", "images", torch.zeros(8, 1, 28, 28)))
before = status_kb("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
trainer._train_step()
used = (status_kb("VmHWM") - before) * 1024
estimate = memory.estimate_for(model, trainer.model, config.batch_size, "cpu")
print(json.dumps({"used": used, "estimate": estimate.total_bytes}))
"""


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset"
)
def test_estimate_covers_a_real_training_step() -> None:
    """The estimate is above the peak memory a real step adds (peak RSS, reset first). Run in
    a fresh interpreter: in a long test session the allocator reuses memory freed by earlier
    tests, and the step's growth would not show."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", MEASURE_A_STEP], capture_output=True, text=True, cwd=root
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["used"] > 20 * MB  # the step really allocated (so the comparison means something)
    assert result["estimate"] > result["used"], (result["estimate"] / MB, result["used"] / MB)


def _digits_config(batch_size: int) -> TrainConfig:
    return TrainConfig(
        data="digits",
        model=default_model_config("images", 28, 1, "small"),
        schedule=ScheduleConfig("linear", 50),
        batch_size=batch_size,
        max_steps=1,
        max_minutes=None,
        device="cpu",
    )


def _tiny_digits() -> Dataset:
    return Dataset("digits", "images", torch.zeros(4, 1, 28, 28))


def test_trainer_refuses_a_batch_that_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 1 GB free, batch 10000 of 28x28 digits is refused before any step, and the
    message names the batch, both sizes and the largest batch that fits."""
    free = 1024**3
    monkeypatch.setattr(memory, "available_memory", lambda device: free)
    config = _digits_config(10_000)
    with pytest.raises(TrainingError) as info:
        Trainer(config, dataset=_tiny_digits())
    message = str(info.value)
    model = build_model(config.model)
    estimate = memory.estimate_for(config.model, model, 10_000, "cpu")
    largest = estimate.max_batch_size(free)
    assert 1 <= largest < 10_000
    assert message.startswith("batch 10000 of 28x28 images needs about ")
    assert f"{estimate.total_bytes / 1024**3:.1f} GB" in message
    assert "this machine has 1.0 GB free" in message
    assert message.endswith(f"use a batch of at most {largest}")
    # the suggested batch is accepted
    Trainer(_digits_config(largest), dataset=_tiny_digits())
    with pytest.raises(TrainingError):
        Trainer(_digits_config(largest + 1), dataset=_tiny_digits())


def test_no_batch_fits_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda device: 1000)
    with pytest.raises(TrainingError, match="even a batch of 1 does not fit"):
        Trainer(_digits_config(1), dataset=_tiny_digits())


def test_unknown_free_memory_skips_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda device: None)
    Trainer(_digits_config(MAX_BATCH_SIZE), dataset=_tiny_digits())  # no estimate to refuse


def test_the_largest_batch_of_big_images_exceeds_any_machine() -> None:
    """What the CLI test relies on: batch MAX_BATCH_SIZE of 512x512 RGB needs over 50 TB."""
    config = default_model_config("images", 512, 3)
    estimate = memory.estimate_for(config, build_model(config), MAX_BATCH_SIZE, "cpu")
    assert estimate.total_bytes > 50 * 1024**4
    assert estimate.per_sample_bytes > 100 * MB


def test_sizes_in_words() -> None:
    assert memory.format_bytes(50 * MB) == "50 MB"
    assert memory.format_bytes(300 * MB) == "0.3 GB"
    assert memory.format_bytes(3 * 1024**3 + 200 * MB) == "3.2 GB"
    assert memory.format_bytes(72 * 1024**4) == "72 TB"


def test_meminfo_is_read_in_kilobytes(tmp_path: Path) -> None:
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:  16000000 kB\nMemFree:  1000 kB\nMemAvailable:  8000000 kB\n")
    assert memory._meminfo_available(str(fake)) == 8_000_000 * 1024
    fake.write_text("MemTotal:  16000000 kB\n")  # kernels before 3.14 have no MemAvailable
    assert memory._meminfo_available(str(fake)) is None
    assert memory._meminfo_available(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/meminfo")
def test_available_memory_on_this_machine() -> None:
    free = memory.available_memory("cpu")
    total = memory._sysconf_available()
    assert free is not None and 0 < free
    assert total is not None and total > 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            assert free <= int(line.split()[1]) * 1024


def test_available_memory_falls_back_and_takes_the_container_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "_meminfo_available", lambda: None)
    monkeypatch.setattr(memory, "_sysconf_available", lambda: 5 * 1024**3)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: None)
    assert memory.available_memory("cpu") == 5 * 1024**3
    monkeypatch.setattr(memory, "_cgroup_available", lambda: 2 * 1024**3)
    assert memory.available_memory("cpu") == 2 * 1024**3  # the container's limit is lower
    monkeypatch.setattr(memory, "_sysconf_available", lambda: None)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: None)
    assert memory.available_memory("cpu") is None
    assert memory.available_memory("mps") is None


def test_available_memory_on_cuda_asks_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (123_000, 456_000))
    assert memory.available_memory(torch.device("cuda")) == 123_000


@pytest.mark.parametrize("version", [1, 2])
def test_cgroup_limit_is_read(tmp_path: Path, version: int) -> None:
    membership = tmp_path / "cgroup"
    if version == 2:
        membership.write_text("0::/jobs/run1\n")
        group = tmp_path / "jobs" / "run1"
        group.mkdir(parents=True)
        (group / "memory.max").write_text("4294967296\n")
        (group / "memory.current").write_text("1073741824\n")
    else:
        membership.write_text("5:cpu:/\n4:memory:/jobs/run1\n0::/\n")
        group = tmp_path / "memory" / "jobs" / "run1"
        group.mkdir(parents=True)
        (group / "memory.limit_in_bytes").write_text("4294967296\n")
        (group / "memory.usage_in_bytes").write_text("1073741824\n")
    assert memory._cgroup_available(tmp_path, membership) == 3 * 1024**3
    if version == 2:
        (group / "memory.max").write_text("max\n")  # no limit
    else:
        (group / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "none"
    assert memory._cgroup_available(tmp_path, membership) is None
