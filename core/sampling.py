"""The reverse process as a generator of frames, and a compact store of those frames.

`sample` drives a model and a sampler from noise (or from a noised image) to samples and
yields every intermediate x_t with the model's x_0 prediction; the CLI, the GUI worker and
the tests all iterate the same generator. `Trajectory` keeps the frames for playback and
export in uint8 (images) or float16 (2-D points), with a bounded number of frames.

Diffusion and flow-matching models run through the same loop: a checkpoint's path is
`core.flow.forward_path(ckpt.objective, ckpt.schedule_config)` (a NoiseSchedule or a FlowPath),
and `make_sampler` pairs it with a sampler of the same objective. A flow run's frames carry
the path index k of their time t = (k + 1) / T (T-1: pure noise), as diffusion's carry t.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffusion_studio.core.checkpoint import Checkpoint, build_model_from_checkpoint
from diffusion_studio.core.data import load_image
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import to_uint8_images
from diffusion_studio.core.flow import FlowPath, ForwardPath, forward_path
from diffusion_studio.core.guidance import (
    DEFAULT_GUIDANCE_SCALE,
    check_guidance_scale,
    guided_output,
    sampling_labels,
)
from diffusion_studio.core.samplers import (
    Sampler,
    SamplerConfig,
    default_sampler_config,
    make_sampler,
)
from diffusion_studio.core.threads import AdaptiveThreads, ThreadState


@dataclass(frozen=True)
class Frame:
    """One moment of the reverse process.

    step: 0..n (n = number of sampler steps); t: timestep of x_t, or -1 for the final sample;
    x_t, pred_x0: float32 CPU tensors (B, C, H, W) or (B, 2). The final frame has pred_x0 = x_t.
    threads: the CPU threads the step ran with, and whether another program keeps a core busy
    (None on a GPU), as TrainProgress reports them.
    """

    step: int
    t: int
    x_t: torch.Tensor
    pred_x0: torch.Tensor
    threads: ThreadState | None = None


def first_step(sampler: Sampler, t_start: int | None) -> int:
    """The index of the first step to run: 0, or when starting from a noised image the first
    step whose timestep is at or below t_start."""
    if t_start is None:
        return 0
    timesteps = [sampler.frame_timestep(i) for i in range(len(sampler.timesteps))]
    for i, t in enumerate(timesteps):
        if t <= t_start:
            return i
    raise ConfigError(
        f"start timestep {t_start} is below every sampling timestep ({timesteps[-1]} is the "
        "smallest): choose a larger start t or more sampling steps"
    )


def sampling_timesteps(sampler: Sampler, t_start: int | None) -> list[int]:
    """The timesteps of the steps a run takes (those at or below t_start when starting from a
    noised image), as whole numbers."""
    first = first_step(sampler, t_start)
    return [sampler.frame_timestep(i) for i in range(first, len(sampler.timesteps))]


def sample(
    model: nn.Module,
    schedule: ForwardPath,
    sampler: Sampler,
    num_samples: int,
    sample_shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    x_start: torch.Tensor | None = None,
    t_start: int | None = None,
    autocast_bf16: bool = False,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    threads: AdaptiveThreads | None = None,
) -> Iterator[Frame]:
    """Run the reverse process and yield a Frame per step, then the final sample.

    model: maps (x_t (B, *sample_shape), t (B,)) to the sampler's prediction type.
    schedule: the model's path (a NoiseSchedule, or a FlowPath for a flow model); the sampler
              holds what it needs of it.
    sample_shape: (C, H, W) for images, (2,) for points.
    x_start: optional clean input (B, *sample_shape) or (*sample_shape) to noise to t_start
             and denoise from there ("what does the model make of this image?").
    labels: (B,) class labels for a class-conditional model (`core.guidance.sampling_labels`),
            with classifier-free guidance of strength `guidance_scale` (1 = none).
    Random draws (initial noise, forward noise, ancestral noise) all come from `generator`.
    threads: the CPU thread chooser to time the steps with (a trainer passes its own for its
             previews); None: a new one on the CPU, which gives the thread its count back at
             the end (`core.threads`).
    """
    if num_samples < 1:
        raise ConfigError(f"number of samples must be at least 1, got {num_samples}")
    guidance_scale = check_guidance_scale(guidance_scale)
    if labels is not None and tuple(labels.shape) != (num_samples,):
        raise ConfigError(f"expected {num_samples} class labels, got shape {tuple(labels.shape)}")
    device = torch.device(device)
    first = first_step(sampler, t_start)
    shape = (num_samples, *sample_shape)
    with torch.inference_mode():
        if x_start is None:
            # the sampler's initial state: N(0, I) scaled to its own scale (diffusers' loop)
            x = torch.randn(shape, generator=generator, dtype=torch.float32)
            x = x * sampler.init_noise_sigma
        else:
            x0 = x_start.detach().to(torch.float32).cpu()
            x0 = x0.expand(shape) if x0.shape == tuple(sample_shape) else x0
            if tuple(x0.shape) != shape:
                raise ConfigError(
                    f"start image has shape {tuple(x_start.shape)}, expected {tuple(sample_shape)}"
                )
            noise = torch.randn(shape, generator=generator, dtype=torch.float32)
            x = sampler.add_noise(x0, noise, first)
        x = x.to(device)
        if labels is not None:
            labels = labels.to(device)

        def model_fn(x_in: torch.Tensor, t: float) -> torch.Tensor:
            """The network (guided for a class-conditional model) at one timestep, float32."""
            whole = float(t).is_integer()
            t_batch = torch.full(
                (num_samples,),
                int(t) if whole else float(t),
                dtype=torch.long if whole else torch.float32,
                device=device,
            )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
                if labels is None:
                    output = model(x_in, t_batch)
                else:
                    output = guided_output(model, x_in, t_batch, labels, guidance_scale)
            return output.float()

        was_training = model.training
        model.eval()
        own_threads = threads is None and device.type == "cpu"
        tuner = AdaptiveThreads() if own_threads else threads
        sampler.begin()
        try:
            for step, i in enumerate(range(first, len(sampler.timesteps))):
                if tuner is not None:
                    tuner.before_step()
                started = time.perf_counter()
                out = sampler.advance(model_fn, i, x, generator=generator)
                if tuner is not None:
                    tuner.after_step(time.perf_counter() - started)
                shown = sampler.scale_model_input(x, i)  # x_t, whatever the sampler's own scale
                state = tuner.state() if tuner is not None else None
                yield Frame(step, sampler.frame_timestep(i), shown.cpu(), out.pred_x0.cpu(), state)
                x = out.prev_sample
            final = x.cpu()
            yield Frame(len(sampler.timesteps) - first, -1, final, final)
        finally:
            model.train(was_training)
            if own_threads and tuner is not None:
                tuner.restore()


@dataclass(frozen=True)
class SampleRequest:
    """One sampling run's settings, as the CLI and Playback ask for it.

    sampler: how to sample; num_samples: N; seed: every random draw (initial noise, the start
    image's forward noise, ancestral noise) comes from a CPU generator seeded with it, so a run
    gives the same samples on every device; start_image / start_t: start from this image noised
    to timestep start_t instead of from pure noise (image models only; for a flow model start_t
    is the path index k, t = (k + 1) / T, and the image is noised to the first step's t at or
    below it); label /
    guidance_scale: for a class-conditional model, one class (None = every class in turn) and
    the classifier-free guidance scale.
    """

    sampler: SamplerConfig
    num_samples: int
    seed: int = 0
    start_image: Path | None = None
    start_t: int | None = None
    label: int | None = None  # a class-conditional model: one class, None = every class in turn
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE


def start_image_tensor(ckpt: Checkpoint, request: SampleRequest) -> torch.Tensor | None:
    """The request's start image as the model's input, float32 (C, H, W) in [-1, 1], loaded
    and resized with `core.data.load_image`; None without one. ConfigError for a point model
    or a start image without a start t."""
    if request.start_image is None:
        return None
    if ckpt.is_points:
        raise ConfigError("'start from an image' needs an image model, not a 2-D point model")
    if request.start_t is None:
        raise ConfigError("starting from an image needs a start timestep t")
    channels, height, width = ckpt.sample_shape
    image = load_image(request.start_image, size=(height, width), channels=channels)
    return torch.from_numpy(image)


@dataclass
class SamplingRun:
    """What `prepare_sampling` built for one request, and its frames.

    frames: the reverse process (`sample`), lazy: nothing runs until it is iterated;
    num_steps: the sampler steps it takes (frames yielded = num_steps + 1, the final sample
    last).
    """

    model: nn.Module
    schedule: ForwardPath  # a NoiseSchedule, or a FlowPath for a flow model
    sampler: Sampler
    labels: torch.Tensor | None
    x_start: torch.Tensor | None
    frames: Iterator[Frame]
    num_steps: int


def prepare_sampling(
    ckpt: Checkpoint,
    request: SampleRequest,
    device: str | torch.device = "cpu",
    threads: AdaptiveThreads | None = None,
) -> SamplingRun:
    """Everything one sampling run needs, from a checkpoint and a request: the model on
    `device`, its path (schedule or flow path), the sampler, the class labels, the generator seeded with
    `request.seed` and the start image. Errors the request can cause (a label for an
    unconditional model, steps out of range, a start t below every step, an unreadable start
    image) are raised here as ConfigError / DataError, before any step runs."""
    if request.num_samples < 1:
        raise ConfigError(f"number of samples must be at least 1, got {request.num_samples}")
    check_guidance_scale(request.guidance_scale)
    schedule = forward_path(ckpt.objective, ckpt.schedule_config)
    sampler = make_sampler(request.sampler, schedule, ckpt.prediction_type)
    t_start = None if request.start_image is None else request.start_t
    if t_start is not None:
        if isinstance(schedule, FlowPath):
            schedule.time_of_index(t_start)  # an index 0..T-1 of the flow path's grid
        else:
            schedule.check_timesteps(torch.tensor([t_start]))
    x_start = start_image_tensor(ckpt, request)
    num_steps = len(sampling_timesteps(sampler, t_start))
    model = build_model_from_checkpoint(ckpt, device)
    labels = sampling_labels(model, request.num_samples, request.label)
    generator = torch.Generator().manual_seed(request.seed)
    frames = sample(
        model,
        schedule,
        sampler,
        request.num_samples,
        ckpt.sample_shape,
        generator,
        device,
        x_start=x_start,
        t_start=t_start,
        labels=labels,
        guidance_scale=request.guidance_scale,
        threads=threads,
    )
    return SamplingRun(model, schedule, sampler, labels, x_start, frames, num_steps)


def checkpoint_sampler_config(ckpt: Checkpoint) -> SamplerConfig:
    """The sampler a checkpoint starts from: its own (a diffusers scheduler config, kept in
    `meta["sampler_defaults"]`), else core's default for its objective and kind of data."""
    defaults = (ckpt.meta or {}).get("sampler_defaults")
    return default_sampler_config(
        ckpt.is_points, defaults if isinstance(defaults, dict) else None, ckpt.objective
    )


def sample_checkpoint(
    ckpt: Checkpoint,
    num_samples: int,
    sampler_config: SamplerConfig | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    label: int | None = None,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
) -> np.ndarray:
    """The final samples of a checkpoint's model, float32 (N, C, H, W) in [-1, 1] or (N, 2).

    sampler_config: None = the model's own (`checkpoint_sampler_config`). All random
    draws come from a CPU generator seeded with `seed` (the same samples on every device).
    label, guidance_scale: for a class-conditional model, one class (None = every class in
    turn) and the classifier-free guidance scale (an unconditional model refuses a label).
    """
    request = SampleRequest(
        sampler=sampler_config or checkpoint_sampler_config(ckpt),
        num_samples=num_samples,
        seed=seed,
        label=label,
        guidance_scale=guidance_scale,
    )
    final = None
    for frame in prepare_sampling(ckpt, request, device).frames:
        final = frame.x_t
    assert final is not None
    return final.numpy().astype(np.float32)


MAX_FRAMES = 1001  # a 1000-step run plus its final sample: every frame kept


class Trajectory:
    """Frames of one sampling run, stored compactly for playback and export.

    Images are kept as uint8 (B, H, W, C) (what a screen shows; 4x smaller than float32),
    points as float16 (B, 2). At most `max_frames` frames are kept (default 1001: a
    1000-step run and its final sample, none dropped): when full, every other
    stored frame is dropped (the first and the newest always stay) and from then on only every
    `stride`-th frame is taken, so memory is bounded and frames stay evenly spread.
    The final samples are also kept in full precision (`final_samples`).
    """

    def __init__(self, max_frames: int = MAX_FRAMES) -> None:
        if max_frames < 2:
            raise ConfigError(f"a trajectory needs room for at least 2 frames, got {max_frames}")
        self.max_frames = max_frames
        self.stride = 1
        self._steps: list[int] = []
        self._timesteps: list[int] = []
        self._x_t = _FrameStore()
        self._pred_x0 = _FrameStore()
        self._final: np.ndarray | None = None
        self.is_points: bool | None = None

    def _encode(self, x: torch.Tensor) -> np.ndarray:
        if self.is_points:
            return x.detach().cpu().to(torch.float16).numpy()
        return to_uint8_images(x)

    def append(self, frame: Frame) -> None:
        """Store a frame (the newest is always kept; older ones are thinned to the stride)."""
        if self.is_points is None:
            self.is_points = frame.x_t.dim() == 2
        if frame.t == -1:
            self._final = frame.x_t.detach().cpu().float().numpy().copy()
        # the previous newest frame stays only if it sits on the stride
        if self._steps and self._steps[-1] % self.stride != 0 and len(self._steps) > 1:
            self._pop_last()
        self._steps.append(frame.step)
        self._timesteps.append(frame.t)
        self._x_t.append(self._encode(frame.x_t))
        self._pred_x0.append(self._encode(frame.pred_x0))
        if len(self._steps) > self.max_frames:
            self._thin()

    def _pop_last(self) -> None:
        for store in (self._steps, self._timesteps, self._x_t, self._pred_x0):
            store.pop()

    def _thin(self) -> None:
        """Double the stride and keep only frames on it (plus the newest one)."""
        self.stride *= 2
        keep = [i for i, s in enumerate(self._steps) if s % self.stride == 0]
        if keep[-1] != len(self._steps) - 1:
            keep.append(len(self._steps) - 1)
        self._steps = [self._steps[i] for i in keep]
        self._timesteps = [self._timesteps[i] for i in keep]
        self._x_t = self._x_t.subset(keep)
        self._pred_x0 = self._pred_x0.subset(keep)

    def __len__(self) -> int:
        return len(self._steps)

    @property
    def steps(self) -> np.ndarray:
        """Sampler step of each stored frame, (F,)."""
        return np.asarray(self._steps, dtype=np.int64)

    @property
    def timesteps(self) -> np.ndarray:
        """Timestep t of each stored frame (-1 = final sample), (F,)."""
        return np.asarray(self._timesteps, dtype=np.int64)

    def x_t(self, index: int) -> np.ndarray:
        """x_t of frame `index`: uint8 (B, H, W, C) for images, float32 (B, 2) for points."""
        return self._decode(self._x_t[index])

    def pred_x0(self, index: int) -> np.ndarray:
        """The x_0 prediction at frame `index`, in the same layout as `x_t`."""
        return self._decode(self._pred_x0[index])

    def _decode(self, stored: np.ndarray) -> np.ndarray:
        return stored.astype(np.float32) if self.is_points else stored

    @property
    def final_samples(self) -> np.ndarray | None:
        """The final samples in float32, (B, C, H, W) in [-1, 1] or (B, 2); None until the end."""
        return self._final

    @property
    def is_complete(self) -> bool:
        return self._final is not None

    @property
    def nbytes(self) -> int:
        stored = self._x_t.nbytes + self._pred_x0.nbytes
        return stored + (self._final.nbytes if self._final is not None else 0)


class _FrameStore:
    """Equal-shaped frames in preallocated blocks of `block` frames (F, *frame_shape).

    One array per block instead of one per frame: a 1000-frame trajectory of 64 digits makes
    63 block allocations, not 1000 small ones that fragment the heap (RSS growth 135 MB against
    100.6 MB of data with a list of arrays; see benchmarks/speed_playback.py).
    """

    def __init__(self, block: int = 16) -> None:
        self.block = block
        self._blocks: list[np.ndarray] = []
        self._count = 0

    def append(self, frame: np.ndarray) -> None:
        if self._count % self.block == 0:
            self._blocks.append(np.empty((self.block, *frame.shape), dtype=frame.dtype))
        self._blocks[-1][self._count % self.block] = frame
        self._count += 1

    def pop(self) -> None:
        self._count -= 1
        if self._count % self.block == 0:
            self._blocks.pop()

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(f"frame {index} of {self._count}")
        view = self._blocks[index // self.block][index % self.block]
        view.flags.writeable = False  # callers get a read-only view, never a copy
        return view

    def __len__(self) -> int:
        return self._count

    def subset(self, indices: list[int]) -> _FrameStore:
        """A new store holding the frames at `indices`, in that order."""
        out = _FrameStore(self.block)
        for i in indices:
            out.append(self[i])
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the stored frames (the last block's unused rows not counted)."""
        if not self._blocks:
            return 0
        return self._count * self._blocks[0][0].nbytes
