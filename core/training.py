"""Training as a generator of progress records.

`Trainer.run()` yields a `TrainProgress` after every optimizer step and a `TrainPreview`
every so often; between steps it honours a `TrainControl` (pause, resume, cancel). The CLI
wraps it in a progress bar, the GUI in a worker thread, the tests iterate it directly.

Objective (DDPM eq. 14, generalised to the three prediction targets):
    t ~ U{0..T-1}, eps ~ N(0, I), x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps
    loss = E[ w(t) * || f(x_t, t) - target ||^2 ]
    target = eps (epsilon) | v = sqrt(ab_t) eps - sqrt(1-ab_t) x_0 (v) | x_0 (x0)
with optional min-SNR-gamma weights w(t) (Hang et al. 2023), which make all three targets
weigh timesteps like min(SNR_t, gamma) does for x_0.

Objective "flow" (flow matching, core.flow): t ~ logit-normal or U(0, 1),
    x_t = (1 - t) x_0 + t eps,  loss = E[ || f(x_t, T t) - (eps - x_0) ||^2 ]
(no min-SNR weights; the prediction type is the velocity whatever `prediction_type` says).

Every random draw of a step is made for the whole batch from one generator (`_draw_batch`), so
a data-parallel run can take its share of the same draws: with a `DistributedContext`
(core.distributed, under torchrun) each of N ranks draws the global batch, trains on its
contiguous 1/N of it through DistributedDataParallel (which averages the gradients, so the
gradient is the global batch's), and gathers the per-sample losses; clipping, AdamW and EMA
then see the same numbers on every rank, and N processes train the model one process would.
Only rank 0 samples previews (from the EMA copy, outside DDP); the ranks agree on each step's
time (rank 0's) and on stopping, so a time budget or a signal ends them at the same step.

Previews (`TrainPreview`, samples from the EMA model) come every `preview_every` steps, after
every `preview_interval_s` seconds of training time as well (so a slow machine still sees
them), and after the last step (`final=True`); a `TrainProgress` whose `preview_follows` is set
announces the preview that comes next, so a front end can say "Sampling a preview…" meanwhile.

A checkpoint taken between steps (`checkpoint()`) holds the raw and EMA weights, the
optimizer, the RNG and the elapsed time, so a resumed run continues the exact same run.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from diffusion_studio.core.checkpoint import Checkpoint, save_checkpoint
from diffusion_studio.core.data import Dataset, make_dataset
from diffusion_studio.core.device import resolve_device
from diffusion_studio.core.distributed import (
    DistributedContext,
    DistributedError,
    is_collective_failure,
    peer_failure_message,
)
from diffusion_studio.core.errors import ConfigError, TrainingError
from diffusion_studio.core.flow import (
    FLOW_PREDICTION_TYPE,
    FLOW_TIME_SAMPLINGS,
    FlowPath,
    FlowTimeSampling,
    Objective,
    check_objective,
    draw_flow_times,
)
from diffusion_studio.core.guidance import DEFAULT_GUIDANCE_SCALE, sampling_labels
from diffusion_studio.core.memory import check_training_memory
from diffusion_studio.core.models import (
    MLPConfig,
    ModelConfig,
    UNetConfig,
    build_model,
    model_config_from_dict,
)
from diffusion_studio.core.samplers import (
    DIFFUSION_PREDICTION_TYPES,
    PredictionType,
    SamplerConfig,
    default_sampler_config,
    make_sampler,
)
from diffusion_studio.core.sampling import sample
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig
from diffusion_studio.core.threads import AdaptiveThreads, ThreadState

ModelSize = Literal["small", "default", "large"]
MODEL_SIZES: tuple[str, ...] = ("small", "default", "large")
MAX_BATCH_SIZE = 65_536
DIGIT_CLASSES = 10
MAX_STEPS = 100_000_000
LOSS_HISTORY_LIMIT = 4096
# A time-based preview waits at least this many times the last preview's duration, so that
# previews take at most 1 / (1 + PREVIEW_COST_FACTOR) = 20 % of the wall time on a slow machine
# (where sampling one preview can take a minute).
PREVIEW_COST_FACTOR = 4.0
# Points in a 2-D model's preview (its shape shows as a cloud; images preview 16 samples)
PREVIEW_POINTS = 2000
# The sampler of a flow run's previews (core.samplers: Euler on the velocity)
PREVIEW_FLOW_SAMPLER = "flow-euler"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    data: "digits", a 2-D toy set name, or a folder of images. model: None = the default
    model for the data (see `default_model_config`). The run ends at `max_steps` optimizer
    steps or after `max_minutes` of training time (not counting pauses and previews),
    whichever comes first; the learning rate warms up over `warmup_steps` and then follows
    `lr_decay` to zero at that end. objective: "diffusion" (schedule, prediction_type and
    min_snr_gamma apply) or "flow" (core.flow: t drawn by `flow_time_sampling`, the network
    predicts the velocity; of the schedule only T is used, as the network's time scale). Previews (when preview_every > 0) come every `preview_every`
    steps, after every `preview_interval_s` seconds of training time (None: by steps only) and
    after the last step. class_conditional: train on the data's class labels when
    it has them (the built-in digits), for sampling one class with classifier-free guidance
    (core.guidance); `label_dropout` of the labels are replaced by "no label" for that.
    """

    data: str = "digits"
    image_size: int = 28
    channels: int = 1
    model: ModelConfig | None = None
    schedule: ScheduleConfig = ScheduleConfig("cosine", 1000)
    prediction_type: PredictionType = "v"
    min_snr_gamma: float | None = 5.0
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_decay: Literal["cosine", "constant"] = "cosine"
    max_steps: int | None = None
    max_minutes: float | None = 5.0
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    num_points: int = 20_000
    preview_every: int = 0
    preview_count: int = 16
    preview_steps: int = 50
    preview_interval_s: float | None = 30.0
    class_conditional: bool = True
    label_dropout: float = 0.1
    objective: Objective = "diffusion"
    flow_time_sampling: FlowTimeSampling = "logit-normal"

    def __post_init__(self) -> None:
        _validate_train_config(self)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict() if self.model is not None else None
        data["schedule"] = self.schedule.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        if values.get("model") is not None:
            values["model"] = model_config_from_dict(values["model"])
        if "schedule" in values:
            values["schedule"] = ScheduleConfig.from_dict(values["schedule"])
        return cls(**values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_train_config(c: TrainConfig) -> None:
    check_objective(c.objective)
    if c.flow_time_sampling not in FLOW_TIME_SAMPLINGS:
        raise ConfigError(
            f"unknown flow time sampling {c.flow_time_sampling!r}; "
            f"choose one of {', '.join(FLOW_TIME_SAMPLINGS)}"
        )
    if c.prediction_type not in DIFFUSION_PREDICTION_TYPES:
        raise ConfigError(
            f"unknown prediction type {c.prediction_type!r}; choose one of "
            f"{', '.join(DIFFUSION_PREDICTION_TYPES)} (a flow run predicts the velocity by itself)"
        )
    if not _is_int(c.batch_size) or not 1 <= c.batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(
            f"batch size must be a whole number in 1..{MAX_BATCH_SIZE}, got {c.batch_size!r}"
        )
    lowest = {"learning_rate": "> 0", "weight_decay": ">= 0"}
    for name, bound in lowest.items():
        value = getattr(c, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"{name.replace('_', ' ')} must be a finite number {bound}, got {value!r}"
            )
    if c.learning_rate <= 0:
        raise ConfigError(f"learning rate must be > 0, got {c.learning_rate!r}")
    if c.learning_rate > 1:
        raise ConfigError(
            f"learning rate {c.learning_rate} is far too large: use at most 1 (try 1e-3)"
        )
    if c.max_steps is None and c.max_minutes is None:
        raise ConfigError("give a number of steps or a time budget in minutes (or both)")
    if c.max_steps is not None and (not _is_int(c.max_steps) or not 1 <= c.max_steps <= MAX_STEPS):
        raise ConfigError(
            f"number of steps must be a whole number in 1..{MAX_STEPS}, got {c.max_steps!r}"
        )
    if c.max_minutes is not None and (
        not isinstance(c.max_minutes, (int, float))
        or not math.isfinite(c.max_minutes)
        or not 0 < c.max_minutes <= 60 * 24 * 30
    ):
        raise ConfigError(f"time budget must be between 0 and 43200 minutes, got {c.max_minutes!r}")
    if not _is_int(c.warmup_steps) or c.warmup_steps < 0:
        raise ConfigError(f"warm-up steps must be a whole number >= 0, got {c.warmup_steps!r}")
    if c.lr_decay not in ("cosine", "constant"):
        raise ConfigError(f"unknown learning-rate decay {c.lr_decay!r}; choose cosine or constant")
    if not isinstance(c.ema_decay, (int, float)) or not 0 <= c.ema_decay < 1:
        raise ConfigError(f"EMA decay must lie in [0, 1), got {c.ema_decay!r}")
    if c.min_snr_gamma is not None and (
        not isinstance(c.min_snr_gamma, (int, float)) or not c.min_snr_gamma > 0
    ):
        raise ConfigError(f"min-SNR gamma must be > 0 (or none), got {c.min_snr_gamma!r}")
    if c.grad_clip is not None and not c.grad_clip > 0:
        raise ConfigError(f"gradient clipping must be > 0 (or none), got {c.grad_clip!r}")
    if not _is_int(c.seed):
        raise ConfigError(f"seed must be a whole number, got {c.seed!r}")
    for name in ("preview_every", "preview_count", "preview_steps", "num_points"):
        value = getattr(c, name)
        if not _is_int(value) or value < 0:
            raise ConfigError(
                f"{name.replace('_', ' ')} must be a whole number >= 0, got {value!r}"
            )
    if c.preview_interval_s is not None and (
        isinstance(c.preview_interval_s, bool)
        or not isinstance(c.preview_interval_s, (int, float))
        or not math.isfinite(c.preview_interval_s)
        or c.preview_interval_s <= 0
    ):
        raise ConfigError(
            f"preview interval must be a number of seconds > 0 (or none), got {c.preview_interval_s!r}"
        )
    if not isinstance(c.class_conditional, bool):
        raise ConfigError(f"class conditional must be true or false, got {c.class_conditional!r}")
    if (
        isinstance(c.label_dropout, bool)
        or not isinstance(c.label_dropout, (int, float))
        or not 0.0 <= c.label_dropout < 1.0
    ):
        raise ConfigError(f"label dropout must be a number in [0, 1), got {c.label_dropout!r}")
    if c.preview_every and (c.preview_count < 1 or c.preview_steps < 1):
        raise ConfigError("previews need at least 1 sample and 1 sampling step")
    if c.preview_every and c.preview_steps > c.schedule.num_timesteps:
        raise ConfigError(
            f"preview sampling steps {c.preview_steps} exceed the schedule's T = "
            f"{c.schedule.num_timesteps}"
        )


def default_model_config(
    dataset_kind: str,
    image_size: int = 28,
    channels: int = 1,
    size: ModelSize = "default",
    num_classes: int = 0,
) -> ModelConfig:
    """The model preset for a data kind ("images" or "points") and a size; images with
    `num_classes` > 0 get a class-conditional UNet."""
    if size not in MODEL_SIZES:
        raise ConfigError(f"unknown model size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    if dataset_kind == "points":
        hidden = {"small": 64, "default": 128, "large": 256}[size]
        return MLPConfig(hidden=hidden, layers=3)
    # Speed wins on a CPU (benchmarks/README.md): the net runs on a 2x pixel-unshuffled input
    # (C, H, W) -> (4C, H/2, W/2), with two resolution levels for small images, three for big.
    widths = {"small": (16, 32), "default": (32, 64), "large": (64, 128)}[size]
    if image_size >= 48:
        widths = (*widths, widths[-1])
    unshuffle = 2 if image_size % 2 == 0 else 1
    levels = len(widths)
    while levels > 1 and (image_size // unshuffle) % (2 ** (levels - 1)):
        levels -= 1
    # No self-attention on the two-level nets of small images: a step costs ~20 % less (165 vs
    # 210 ms at batch 64) and digits are as good, so a minute gives more steps: flow-matching
    # digits 91.4 % confident after the first minute (380 steps) against 81.6 % with attention
    # (300 steps); diffusion 77.0 against 55.1 % (benchmarks/README.md, "Flow matching and
    # diffusion (issue 17)").
    attention_heads = 0 if levels == 2 else 4
    return UNetConfig(
        in_channels=channels,
        image_size=image_size,
        channels=widths[:levels],
        attention_heads=attention_heads,
        pixel_unshuffle=unshuffle,
        norm_groups=8,
        num_classes=num_classes,
    )


def preset_config(
    data: str = "digits", size: ModelSize = "default", **overrides: Any
) -> TrainConfig:
    """A ready-to-run TrainConfig for a data source and model size; keyword overrides win."""
    from diffusion_studio.core.data import TOY_DATASETS, is_builtin_digits

    base: dict[str, Any]
    if data in TOY_DATASETS:
        base = dict(
            data=data,
            model=default_model_config("points", size=size),
            # v + cosine draws thin structures sharper than epsilon + linear (samples within
            # 0.1 of the data, 8000 steps: spiral 0.95 vs 0.70, rings 0.88 vs 0.72;
            # benchmarks/README.md, "2-D toy sets")
            schedule=ScheduleConfig("cosine", 1000),
            prediction_type="v",
            min_snr_gamma=None,
            batch_size=256,
            learning_rate=3e-3,
            max_minutes=0.5,
            ema_decay=0.995,
            preview_count=PREVIEW_POINTS,  # a point cloud, not 16 dots
        )
    else:
        image_size = overrides.get("image_size", 28)
        channels = overrides.get("channels", 1)
        # The digits are labelled: class-conditional with guidance gets recognisable digits
        # sooner (benchmarks/README.md, "Class-conditional digits")
        labelled = is_builtin_digits(data) and overrides.get("class_conditional", True)
        classes = DIGIT_CLASSES if labelled else 0
        base = dict(
            data=data, model=default_model_config("images", image_size, channels, size, classes)
        )
        if is_builtin_digits(data):
            # Flow matching with logit-normal t draws digits sooner than diffusion with the same
            # net, batch, learning rate and EMA: after the first minute of the 5-minute run
            # (step 300 of 1500) 81.6 % confident against diffusion's 55.1 %, and at 1500 steps
            # 99.2 % against 97.7 % (benchmarks/README.md, "Flow matching and diffusion
            # (issue 17)").
            # `objective="diffusion"` gets the v + cosine + min-SNR 5 recipe (the TrainConfig
            # defaults; "Time to quality: results").
            base.update(objective="flow", flow_time_sampling="logit-normal")
    base.update(overrides)
    return TrainConfig(**base)


def training_target(
    schedule: NoiseSchedule,
    prediction_type: PredictionType,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """What the network is trained to output (the objective above): eps (epsilon),
    v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0 (v; Salimans & Ho 2022) or x_0 (x0).
    x0, noise: (B, ...); t: (B,). Returns (B, ...)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v":
        return schedule.velocity(x0, noise, t)
    if prediction_type == "x0":
        return x0
    raise ConfigError(f"unknown prediction type {prediction_type!r}")


@dataclass(frozen=True)
class TrainProgress:
    """One optimizer step.

    loss: the training objective of the step, mean_b w(t_b) * MSE_b (min-SNR weights w, or 1).
    timesteps / losses: (B,) each sample's timestep and its unweighted MSE against the target
    (eps, v or x_0). preview_follows: the next record is a TrainPreview, sampled now.
    threads: the CPU threads the step computed with, and whether another program keeps a core
    busy (None on a GPU). grad_norm: the gradient's global L2 norm before clipping.
    timesteps are indices 0..T-1 for diffusion and T t (float, t in [0, 1]) for flow, so both
    share one axis.
    """

    step: int
    total_steps: int | None
    loss: float
    timesteps: np.ndarray
    losses: np.ndarray
    lr: float
    samples_per_s: float
    elapsed_s: float
    eta_s: float | None
    fraction_done: float
    preview_follows: bool = False
    threads: ThreadState | None = None
    grad_norm: float = float("nan")


@dataclass(frozen=True)
class TrainPreview:
    """Samples from the EMA model at `step`: (n, C, H, W) in [-1, 1] or (n, 2).

    final: sampled after the run's last step (from the weights the checkpoint holds)."""

    step: int
    samples: np.ndarray
    final: bool = False


@dataclass(frozen=True)
class DrawnBatch:
    """The random draws of one step for the whole (global) batch of B samples, in the order
    they are drawn from the training generator: data indices (B,) long, times (B,) (diffusion:
    long indices 0..T-1; flow: float t in (0, 1)), noise (B, ...), and which labels are
    dropped to "no label" (B,) bool (None for an unconditional model)."""

    index: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    label_dropped: torch.Tensor | None

    def part(self, start: int, stop: int) -> DrawnBatch:
        """Samples start..stop-1 (a data-parallel rank's share)."""
        dropped = self.label_dropped
        return DrawnBatch(
            self.index[start:stop],
            self.t[start:stop],
            self.noise[start:stop],
            None if dropped is None else dropped[start:stop],
        )


class TrainControl:
    """Thread-safe pause / resume / cancel flags, checked by the trainer between steps."""

    def __init__(self) -> None:
        self._running = threading.Event()
        self._running.set()
        self._cancelled = threading.Event()
        self._holding = threading.Event()  # set while the trainer waits in wait_while_paused

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def cancel(self) -> None:
        self._cancelled.set()
        self._running.set()

    @property
    def is_paused(self) -> bool:
        return not self._running.is_set()

    @property
    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def is_holding(self) -> bool:
        """Whether the trainer is paused between steps now (no step under way)."""
        return self._holding.is_set()

    def wait_while_paused(self, poll_s: float = 0.1) -> None:
        """Block while paused; return at once when resumed or cancelled."""
        if self._running.is_set():
            return
        self._holding.set()
        try:
            while not self._running.wait(poll_s):
                pass
        finally:
            self._holding.clear()


def min_snr_weights(snr: torch.Tensor, gamma: float | None, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting"): min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v,
    min(SNR, gamma) for x0. gamma None: all ones."""
    if gamma is None:
        return torch.ones_like(snr)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr.clamp(min=1e-20)
    if prediction_type == "v":
        return clipped / (snr + 1)
    return clipped


def learning_rate_at(config: TrainConfig, step: int, fraction_done: float) -> float:
    """lr * warm-up(step) * decay(fraction_done): a linear warm-up over warmup_steps times a
    constant or a cosine to zero at fraction_done = 1. The product is continuous: the decay
    runs from the first step, so the rate never jumps where the warm-up ends (the ramp to lr
    then a cosine begun at the run's fraction done dropped at once, e.g. from 3e-3 to 2.25e-3
    at step 100 of 300, seen on the training dashboard's learning-rate curve)."""
    lr = config.learning_rate
    if config.warmup_steps and step < config.warmup_steps:
        lr *= (step + 1) / config.warmup_steps
    if config.lr_decay == "constant":
        return lr
    return lr * 0.5 * (1 + math.cos(math.pi * min(max(fraction_done, 0.0), 1.0)))


def _pack_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optim/{index}/{key}"] = torch.as_tensor(value)
    return tensors, {"param_groups": state["param_groups"]}


def _unpack_optimizer(tensors: dict[str, torch.Tensor], groups: dict) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": groups["param_groups"]}


class Trainer:
    """One training run: data, model, EMA model, optimizer and RNG, stepped by `run()`."""

    def __init__(
        self,
        config: TrainConfig,
        control: TrainControl | None = None,
        resume: Checkpoint | None = None,
        dataset: Dataset | None = None,
        clock: Callable[[], float] = time.perf_counter,
        distributed: DistributedContext | None = None,
    ) -> None:
        """clock: seconds (monotonic) for step times and the preview interval (tests fake it).
        distributed: this process's rank in a data-parallel run (core.distributed); None: a
        single process on `config.device`."""
        self.control = control if control is not None else TrainControl()
        self.clock = clock
        self.distributed = distributed
        if distributed is not None:
            distributed.part(config.batch_size)  # refuse a batch that does not split evenly
            self.device = distributed.device
        else:
            self.device = resolve_device(config.device)
        # CPU threads chosen step by step from measured speed (core.threads); created here,
        # it reads the thread count at the first step, in the thread that trains
        self.threads = AdaptiveThreads() if self.device.type == "cpu" else None
        self.dataset = (
            dataset
            if dataset is not None
            else make_dataset(
                config.data, config.image_size, config.channels, config.num_points, config.seed
            )
        )
        if config.model is None:
            config = replace(
                config,
                model=default_model_config(
                    self.dataset.kind,
                    config.image_size,
                    config.channels,
                    num_classes=self.dataset.num_classes if config.class_conditional else 0,
                ),
            )
        self.config = config
        self._check_model_fits_data()
        self.schedule = NoiseSchedule(config.schedule)
        # flow matching's path (None for diffusion); the network's time scale is the schedule's T
        self.flow_path = FlowPath(config.schedule.num_timesteps) if self.is_flow else None
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG untouched
            torch.manual_seed(config.seed)
            self.model: nn.Module = build_model(config.model).to(self.device)
        self.ema_model: nn.Module = copy.deepcopy(self.model).eval().requires_grad_(False)
        # what a step calls: the model itself, or DDP around it (which averages the gradients)
        self.train_model: nn.Module = self.model
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.elapsed_s = 0.0
        self.loss_history: list[tuple[int, float]] = []
        self.last_grad_norm = float("nan")
        self._history_stride = 1
        self._snr = self.schedule.snr.to(torch.float32)
        if resume is not None:
            self._restore(resume)
        if distributed is not None and distributed.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            # after the restore: DDP broadcasts rank 0's weights, equal to every rank's anyway
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self._previewed_at_s = self.elapsed_s  # training time of the last preview
        self._preview_cost_s = 0.0  # how long the last preview took
        # refuse before an OOM kill; one GPU per rank holds its part of the global batch (CPU
        # ranks share the machine's memory, so there the whole batch counts)
        per_device = self.config
        if distributed is not None and self.device.type == "cuda":
            share = self.config.batch_size // distributed.world_size
            per_device = replace(self.config, batch_size=share)
        check_training_memory(per_device, self.model, self.device)

    # ------------------------------------------------------------------ set-up and state

    @property
    def is_flow(self) -> bool:
        return self.config.objective == "flow"

    @property
    def world_size(self) -> int:
        return self.distributed.world_size if self.distributed is not None else 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes and previews (rank 0, or the only process)."""
        return self.distributed is None or self.distributed.is_main

    @property
    def prediction_type(self) -> str:
        """What the network outputs: the velocity for flow, else the config's prediction type."""
        return FLOW_PREDICTION_TYPE if self.is_flow else self.config.prediction_type

    def _check_model_fits_data(self) -> None:
        model, data = self.config.model, self.dataset
        if data.kind == "points":
            if not isinstance(model, MLPConfig):
                raise ConfigError("2-D point data needs the MLP model, not a UNet")
            return
        if not isinstance(model, UNetConfig):
            raise ConfigError("image data needs the UNet model, not the MLP")
        if model.num_classes and data.labels is None:
            raise ConfigError(
                f"the model is class-conditional ({model.num_classes} classes) but the data "
                f"'{data.name}' have no class labels: use an unconditional model"
            )
        if model.num_classes and data.num_classes > model.num_classes:
            raise ConfigError(
                f"the data have {data.num_classes} classes but the model only {model.num_classes}"
            )
        shape = tuple(data.data.shape[1:])
        expected = (model.in_channels, model.image_size, model.image_size)
        if shape != expected:
            raise ConfigError(
                f"the data are {shape[0]}x{shape[1]}x{shape[2]} (channels x height x width) but "
                f"the model expects {expected[0]}x{expected[1]}x{expected[2]}"
            )

    def _restore(self, ckpt: Checkpoint) -> None:
        if not ckpt.can_resume:
            raise ConfigError(
                "this checkpoint holds no training state (it is for sampling only) and cannot be resumed"
            )
        mismatches = [
            name
            for name, mine, theirs in (
                ("model", self.config.model, ckpt.model_config),
                ("schedule", self.config.schedule, ckpt.schedule_config),
                ("objective", self.config.objective, ckpt.objective),
                ("prediction type", self.prediction_type, ckpt.prediction_type),
            )
            if mine != theirs
        ]
        if mismatches:
            raise ConfigError(
                f"cannot resume: the checkpoint's {', '.join(mismatches)} differ from this run's "
                "settings (resume with the checkpoint's own settings)"
            )
        training = ckpt.training or {}
        tensors = ckpt.training_state
        raw = {k[len("raw/") :]: v for k, v in tensors.items() if k.startswith("raw/")}
        try:
            self.model.load_state_dict(raw)
            self.ema_model.load_state_dict(ckpt.model_state)
            self.optimizer.load_state_dict(_unpack_optimizer(tensors, training["optimizer"]))
            self.generator.set_state(tensors["rng/train"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"the checkpoint's training state is incomplete or damaged: {exc}"
            ) from exc
        self.step = int(training.get("step", 0))
        self.elapsed_s = float(training.get("elapsed_s", 0.0))
        if "history/step" in tensors and "history/loss" in tensors:
            self.loss_history = list(
                zip(tensors["history/step"].tolist(), tensors["history/loss"].tolist())
            )
            self._history_stride = int(training.get("history_stride", 1))

    def checkpoint(self) -> Checkpoint:
        """The current state (call between steps). model_state = EMA weights."""
        tensors: dict[str, torch.Tensor] = {
            "raw/" + k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
        }
        optim_tensors, optim_json = _pack_optimizer(self.optimizer)
        tensors.update({k: v.detach().cpu().clone() for k, v in optim_tensors.items()})
        tensors["rng/train"] = self.generator.get_state()
        if self.loss_history:
            steps, losses = zip(*self.loss_history)
            tensors["history/step"] = torch.tensor(steps, dtype=torch.int64)
            tensors["history/loss"] = torch.tensor(losses, dtype=torch.float32)
        data = {
            "name": self.dataset.name,
            "kind": self.dataset.kind,
            "image_size": self.config.image_size if self.dataset.kind == "images" else None,
            "channels": self.config.channels if self.dataset.kind == "images" else None,
        }
        return Checkpoint(
            model_config=self.config.model,
            schedule_config=self.config.schedule,
            prediction_type=self.prediction_type,
            objective=self.config.objective,
            model_state={
                k: v.detach().cpu().clone() for k, v in self.ema_model.state_dict().items()
            },
            data=data,
            training={
                "step": self.step,
                "elapsed_s": self.elapsed_s,
                "config": self.config.to_dict(),
                "optimizer": optim_json,
                "history_stride": self._history_stride,
                "world_size": self.world_size,
            },
            training_state=tensors,
        )

    def save(self, path: str) -> None:
        """Write the current state to `path` atomically."""
        save_checkpoint(path, self.checkpoint())

    # ------------------------------------------------------------------ progress

    def fraction_done(self) -> float:
        """How far the run is, 0..1, by steps or time, whichever is further."""
        parts = []
        if self.config.max_steps is not None:
            parts.append(self.step / self.config.max_steps)
        if self.config.max_minutes is not None:
            parts.append(self.elapsed_s / (60.0 * self.config.max_minutes))
        return min(max(parts), 1.0)

    @property
    def is_done(self) -> bool:
        return self.fraction_done() >= 1.0

    def _record_loss(self, loss: float) -> None:
        """Keep a bounded loss history: every `stride`-th step, thinned when full."""
        if self.step % self._history_stride == 0:
            self.loss_history.append((self.step, loss))
        if len(self.loss_history) > LOSS_HISTORY_LIMIT:
            self._history_stride *= 2
            self.loss_history = [p for p in self.loss_history if p[0] % self._history_stride == 0]

    # ------------------------------------------------------------------ the loop

    def _draw_batch(self, batch_size: int) -> DrawnBatch:
        """All random draws of one step for `batch_size` samples, from self.generator on the
        CPU in a fixed order (exact resume; a data-parallel rank draws the whole global batch
        and keeps its part, so N ranks train as one process does)."""
        data = self.dataset.data
        index = torch.randint(0, data.shape[0], (batch_size,), generator=self.generator)
        if self.is_flow:
            t = draw_flow_times(batch_size, self.generator, self.config.flow_time_sampling)
        else:
            t = torch.randint(
                0, self.schedule.num_timesteps, (batch_size,), generator=self.generator
            )
        noise = torch.randn((batch_size, *data.shape[1:]), generator=self.generator)
        dropped = None
        if getattr(self.config.model, "num_classes", 0):
            dropped = (
                torch.rand((batch_size,), generator=self.generator) < self.config.label_dropout
            )
        return DrawnBatch(index, t, noise, dropped)

    def _train_step(self) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One optimizer step. Returns (objective, timesteps (B,), per-sample MSE (B,)); flow's
        timesteps are T t (floats on the diffusion axis)."""
        config = self.config
        generator_state = self.generator.get_state()
        try:
            drawn = self._draw_batch(config.batch_size)
            if self.distributed is None:
                return self._step_on(drawn)
            # this rank's part; the loss and per-sample MSE come back for the global batch
            loss, _, mse = self._step_on(drawn.part(*self.distributed.part(config.batch_size)))
            return loss, self._reported_timesteps(drawn.t), mse
        except Exception:
            # a step that raised (non-finite loss, out of memory, a peer that failed: all before
            # the optimizer step) leaves the trainer at the last good step, its RNG included,
            # so a save now resumes exactly
            self.generator.set_state(generator_state)
            raise

    def _reported_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Drawn times (B,) on the diffusion axis: the indices, or flow's T t."""
        return self.flow_path.model_timesteps(t) if self.flow_path is not None else t

    def _step_on(self, drawn: DrawnBatch) -> tuple[float, torch.Tensor, torch.Tensor]:
        """The optimizer step on the samples `drawn` (see `_train_step`). A data-parallel rank
        gets its part of the global batch; the objective and the per-sample MSE it returns are
        the global batch's (gathered from every rank), the timesteps its part's."""
        config = self.config
        x0 = self.dataset.data[drawn.index]
        labels = self._labels_for(drawn.index, drawn.label_dropped)
        x0, noise, t_dev = x0.to(self.device), drawn.noise.to(self.device), drawn.t.to(self.device)
        if self.flow_path is not None:
            x_t = self.flow_path.add_noise(x0, noise, t_dev)  # x_t = (1 - t) x0 + t eps
            target = self.flow_path.velocity(x0, noise)  # eps - x0
            model_t = self.flow_path.model_timesteps(t_dev)
            weights = None
        else:
            x_t = self.schedule.add_noise(x0, noise, t_dev)  # DDPM eq. 4
            target = training_target(self.schedule, config.prediction_type, x0, noise, t_dev)
            model_t = t_dev
            weights = min_snr_weights(
                self._snr[drawn.t].to(self.device), config.min_snr_gamma, config.prediction_type
            )
        lr = learning_rate_at(config, self.step, self.fraction_done())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model = self.train_model
        model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            output = model(x_t, model_t) if labels is None else model(x_t, model_t, labels)
        mse = ((output.float() - target) ** 2).flatten(1).mean(dim=1)  # (b,)
        weighted = mse if weights is None else weights * mse  # (b,)
        loss = weighted.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP: the gradients averaged over the ranks (equal parts: the global mean)
        max_norm = config.grad_clip if config.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if self.distributed is not None:
            # (2, B): the global batch's per-sample MSE and weighted MSE, in draw order
            gathered = self.distributed.gather_batch(torch.stack([mse, weighted]).detach())
            mse, loss = gathered[0], gathered[1].mean()
        # one device sync per step: loss and gradient norm are read together
        loss_value, grad_norm_value = torch.stack([loss.detach(), grad_norm]).tolist()
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"the loss became {loss_value} at step {self.step + 1}: training is unstable. "
                f"Lower the learning rate (now {config.learning_rate:g}); the weights of the last "
                "good step are kept."
            )
        if not math.isfinite(grad_norm_value):
            raise TrainingError(
                f"the gradients became non-finite at step {self.step + 1}: training is unstable. "
                f"Lower the learning rate (now {config.learning_rate:g}); the weights of the last "
                "good step are kept."
            )
        # With a finite gradient and lr <= 1 (validated), an AdamW step keeps the weights finite:
        # no per-parameter check (it cost a device sync per tensor on a GPU).
        self.optimizer.step()
        self._update_ema()
        self.last_grad_norm = grad_norm_value
        return loss_value, self._reported_timesteps(drawn.t), mse.detach().cpu()

    def _labels_for(self, index: torch.Tensor, dropped: torch.Tensor | None) -> torch.Tensor | None:
        """Class labels (B,) of the drawn samples for a class-conditional model, those `dropped`
        replaced by "no label" (index K; drawn with probability `label_dropout`); None for an
        unconditional one."""
        classes = getattr(self.config.model, "num_classes", 0)
        if not classes:
            return None
        assert self.dataset.labels is not None and dropped is not None  # _check_model_fits_data
        labels = self.dataset.labels[index].clone()
        labels[dropped] = classes
        return labels.to(self.device)

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * raw, with warm-up d = min(decay, (1 + n) / (10 + n))."""
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        ema_params = list(self.ema_model.parameters())
        raw_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, raw_params, 1.0 - decay)
        for ema_buffer, raw_buffer in zip(self.ema_model.buffers(), self.model.buffers()):
            ema_buffer.copy_(raw_buffer)

    def preview(self, cancellable: bool = False) -> TrainPreview | None:
        """Samples from the EMA model with DDIM and a fixed seed (does not touch the training RNG).
        After the last step it is the final preview (`final`). cancellable: give up (None) when
        the run is cancelled while sampling (a preview can take a minute on a slow machine)."""
        config = self.config
        if self.flow_path is not None:
            # flow: Euler on the velocity, the flow counterpart of DDIM
            sampler_config = SamplerConfig(PREVIEW_FLOW_SAMPLER, config.preview_steps, "trailing")
            path: NoiseSchedule | FlowPath = self.flow_path
        else:
            clip = default_sampler_config(self.dataset.kind == "points").clip_sample
            sampler_config = SamplerConfig(
                "ddim", config.preview_steps, "trailing", clip_sample=clip
            )
            path = self.schedule
        sampler = make_sampler(sampler_config, path, self.prediction_type)
        generator = torch.Generator().manual_seed(config.seed + 1)
        final = None
        for frame in sample(
            self.ema_model,
            path,
            sampler,
            config.preview_count,
            tuple(self.dataset.sample_shape),
            generator,
            self.device,
            labels=sampling_labels(self.ema_model, config.preview_count),  # every class in turn
            guidance_scale=DEFAULT_GUIDANCE_SCALE,
            # with the training's current thread count: a preview's steps are no training steps
            threads=AdaptiveThreads(fixed=torch.get_num_threads()),
        ):
            final = frame.x_t
            if cancellable and self.control.is_cancelled:
                return None
        assert final is not None
        return TrainPreview(self.step, final.numpy().copy(), final=self.is_done)

    def preview_due(self) -> bool:
        """Whether a preview follows the step just taken: previews on (preview_every > 0) and
        the run done, or a multiple of preview_every steps, or preview_interval_s of training
        time since the last preview, stretched to PREVIEW_COST_FACTOR times that preview's
        duration (previews at most ~20 % of the wall time)."""
        config = self.config
        if not config.preview_every or not self.is_main:
            return False
        if self.is_done or self.step % config.preview_every == 0:
            return True
        if config.preview_interval_s is None:
            return False
        interval = max(config.preview_interval_s, PREVIEW_COST_FACTOR * self._preview_cost_s)
        return self.elapsed_s - self._previewed_at_s >= interval

    def _timed_preview(self) -> TrainPreview | None:
        started = self.clock()
        preview = self.preview(cancellable=True)
        self._preview_cost_s = max(self.clock() - started, 0.0)
        self._previewed_at_s = self.elapsed_s
        return preview

    def run(self) -> Iterator[TrainProgress | TrainPreview]:
        """Train until the step or time budget is spent or the run is cancelled. Data-parallel
        ranks stop together: at the step after any rank's control was cancelled."""
        config = self.config
        synced = self.distributed is not None and self.distributed.is_distributed
        stop = False  # data-parallel: agreed by all ranks after each step
        try:
            while not self.is_done:
                self.control.wait_while_paused()
                if stop or (not synced and self.control.is_cancelled):
                    return
                if self.threads is not None:
                    self.threads.before_step()
                started = self.clock()
                try:
                    loss, t, mse = self._train_step()
                except torch.OutOfMemoryError as exc:
                    raise TrainingError(
                        f"out of memory at batch size {config.batch_size}: use a smaller batch or model"
                    ) from exc
                except RuntimeError as exc:
                    if "memory" in str(exc).lower():
                        raise TrainingError(
                            f"out of memory at batch size {config.batch_size}: use a smaller batch or model"
                        ) from exc
                    if synced and is_collective_failure(exc):  # DDP's gradient all-reduce
                        raise DistributedError(peer_failure_message(exc)) from exc
                    raise
                seconds = self.clock() - started
                if self.threads is not None:
                    self.threads.after_step(seconds)
                if synced:
                    assert self.distributed is not None
                    # every rank counts rank 0's time, so a time budget ends all at one step
                    try:
                        seconds, stop = self.distributed.agree(seconds, self.control.is_cancelled)
                    except DistributedError:
                        # this rank's step is whole (optimizer and EMA stepped): count it, so
                        # the last good step saved is this one
                        self.step += 1
                        self.elapsed_s += seconds
                        self._record_loss(loss)
                        raise
                self.step += 1
                self.elapsed_s += seconds
                self._record_loss(loss)
                fraction = self.fraction_done()
                rate = config.batch_size / seconds if seconds > 0 else float("inf")
                eta = self.elapsed_s * (1 - fraction) / fraction if fraction > 0 else None
                # steps at the end of the run: exact for a step budget, an estimate for a time budget
                total = round(self.step / fraction) if fraction > 0 else config.max_steps
                preview_due = self.preview_due()
                yield TrainProgress(
                    step=self.step,
                    total_steps=total,
                    loss=loss,
                    timesteps=t.numpy(),
                    losses=mse.numpy(),
                    lr=self.optimizer.param_groups[0]["lr"],
                    samples_per_s=rate,
                    elapsed_s=self.elapsed_s,
                    eta_s=eta,
                    fraction_done=fraction,
                    preview_follows=preview_due,
                    threads=self.threads.state() if self.threads is not None else None,
                    grad_norm=self.last_grad_norm,
                )
                if preview_due:
                    preview = self._timed_preview()
                    if preview is not None:
                        yield preview
        finally:
            if self.threads is not None:
                self.threads.restore()  # the thread that trained gets its count back


def train(
    config: TrainConfig,
    control: TrainControl | None = None,
    resume: Checkpoint | None = None,
    distributed: DistributedContext | None = None,
) -> Iterator[TrainProgress | TrainPreview]:
    """Convenience: `Trainer(config, control, resume, distributed=distributed).run()`."""
    return Trainer(config, control, resume, distributed=distributed).run()


def resume_config(ckpt: Checkpoint, **overrides: Any) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with, with overrides (e.g. a new max_steps)."""
    if not ckpt.can_resume:
        raise ConfigError("this checkpoint holds no training state and cannot be resumed")
    try:
        config = TrainConfig.from_dict(dict(ckpt.training["config"]))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"the checkpoint's training settings are damaged: {exc}") from exc
    return replace(config, **overrides) if overrides else config
