"""The timestep inspector: what the model sees at a timestep t, and what it gets wrong.

For one image x_0 (C, H, W) in [-1, 1] and one seeded noise eps (the same at every t, so the
curve over t is smooth and its points comparable):

    x_t     = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps                     (DDPM eq. 4)
    out     = f(x_t, t[, label])                                       the network's output
    pred_x0, pred_eps from out                                         (core.samplers.base.split_prediction)
    loss    = mean (out - target)^2, target = eps | v | x_0            (core.training's objective,
                                                                        unweighted, per sample)
    x0_mse  = mean (pred_x0 - x_0)^2                                   [-1, 1] pixel scale, unclipped
    eps_mse = mean (pred_eps - eps)^2

`inspect_at` gives all of it at one t (`InspectRecord`); `iter_curve` the three errors for
t = 0..T-1 in batches (`CurveBatch`: a GUI worker shows the progress and cancels by no longer
iterating), `inspect_curve` collects them (`InspectCurve`, with log-SNR_t from the schedule),
`save_curve_csv` writes them. The model runs in eval mode under torch.inference_mode.

A flow-matching model (core.flow) is inspected on its own path: at index k, t = (k + 1) / T and

    x_t     = (1 - t) x_0 + t eps                                      (rectified flow)
    v       = f(x_t, t T[, label])                                     the predicted velocity
    pred_x0 = x_t - t v,   pred_eps = x_t + (1 - t) v                  (FlowPath.split_velocity)
    loss    = mean (v - (eps - x_0))^2                                 (the velocity MSE it trains on)

and log-SNR_t = 2 log((1 - t) / t). Records and curves keep their fields (`t` is the index k);
`InspectRecord.time` is the flow time t (None for diffusion).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffusion_studio.core.checkpoint import Checkpoint, build_model_from_checkpoint
from diffusion_studio.core.data import load_image
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import save_csv
from diffusion_studio.core.flow import FlowPath, ForwardPath, forward_path
from diffusion_studio.core.guidance import class_labels, num_classes
from diffusion_studio.core.samplers import PredictionType
from diffusion_studio.core.samplers.base import split_prediction
from diffusion_studio.core.schedule_table import csv_cell
from diffusion_studio.core.training import training_target

CURVE_BATCH = 50  # timesteps per network evaluation of the curve (T = 1000: 20 progress steps)
CURVE_COLUMNS = ("t", "log_snr", "loss", "x0_mse", "eps_mse")


def seeded_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """eps ~ N(0, I) of `shape` from a CPU generator seeded with `seed`: the same draw as
    core.forward.ForwardProcess makes for an image of that shape, so the forward panel and the
    inspector show the same noise for one seed."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))


@dataclass(frozen=True, eq=False)
class InspectSetup:
    """What is inspected: the model, its forward path (a NoiseSchedule, or a FlowPath for a
    flow-matching model) and prediction type ("velocity" for flow), the image x_0 and the
    noise eps (both float32 (C, H, W), CPU), and the class label (a class-conditional model:
    0..K-1, or None for "no label"; an unconditional model: None). device: where the model is."""

    model: nn.Module
    schedule: ForwardPath
    prediction_type: PredictionType
    image: torch.Tensor
    noise: torch.Tensor
    label: int | None = None
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise ConfigError(f"the image must be (C, H, W), got shape {tuple(self.image.shape)}")
        if self.noise.shape != self.image.shape:
            raise ConfigError(
                f"the noise {tuple(self.noise.shape)} must have the image's shape "
                f"{tuple(self.image.shape)}"
            )
        if self.label is not None:  # refuses a label for an unconditional model, or out of range
            class_labels(num_classes(self.model), 1, self.label)

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    @property
    def is_flow(self) -> bool:
        return isinstance(self.schedule, FlowPath)


def inspect_image(ckpt: Checkpoint, path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as the checkpoint's model takes it: float32 (C, H, W) in [-1, 1], resized
    (centre-cropped) to the model's sample shape. ConfigError for a 2-D point model."""
    if ckpt.is_points:
        raise ConfigError(
            "the timestep inspector is for image models; this checkpoint is a 2-D point model"
        )
    channels, height, width = ckpt.sample_shape
    return load_image(path, size=(height, width), channels=channels)


def setup_from_checkpoint(
    ckpt: Checkpoint,
    image: np.ndarray | torch.Tensor,
    seed: int = 0,
    label: int | None = None,
    device: str | torch.device = "cpu",
) -> InspectSetup:
    """An InspectSetup for the checkpoint's model (in eval mode on `device`) and an image
    (C, H, W) of its sample shape (`inspect_image`), with the noise seeded by `seed`."""
    if ckpt.is_points:
        raise ConfigError(
            "the timestep inspector is for image models; this checkpoint is a 2-D point model"
        )
    x0 = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if tuple(x0.shape) != tuple(ckpt.sample_shape):
        raise ConfigError(
            f"the image is {tuple(x0.shape)} but the model takes {tuple(ckpt.sample_shape)} "
            "(C, H, W): resize it first (inspect_image)"
        )
    device = torch.device(device)
    model = build_model_from_checkpoint(ckpt, device)
    return InspectSetup(
        model=model,
        schedule=forward_path(ckpt.objective, ckpt.schedule_config),
        prediction_type=ckpt.prediction_type,
        image=x0,
        noise=seeded_noise(tuple(x0.shape), seed),
        label=label,
        device=device,
    )


# --------------------------------------------------------------------------- one batch of t


@dataclass(frozen=True)
class _Evaluation:
    """The network on the image at timesteps t (B,): every tensor (B, C, H, W) or (B,), CPU."""

    x_t: torch.Tensor
    pred_eps: torch.Tensor
    pred_x0: torch.Tensor
    loss: torch.Tensor
    x0_mse: torch.Tensor
    eps_mse: torch.Tensor


def _mean_square(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared difference: (B, ...) x 2 -> (B,), as core.training computes it."""
    return ((a - b) ** 2).flatten(1).mean(dim=1)


def _check_indices(setup: InspectSetup, t: torch.Tensor) -> torch.Tensor:
    """Timestep indices (B,) long, validated against the path (ConfigError out of range)."""
    if isinstance(setup.schedule, FlowPath):
        setup.schedule.time_of_index(t)  # refuses indices outside 0..T-1
        return torch.as_tensor(t, dtype=torch.long)
    return setup.schedule.check_timesteps(t)


def _evaluate(setup: InspectSetup, t: torch.Tensor) -> _Evaluation:
    """Run the network once on the image noised to each of the timesteps t (B,)."""
    t = _check_indices(setup, t)
    if isinstance(setup.schedule, FlowPath):
        return _evaluate_flow(setup, setup.schedule, t)
    b, device = t.shape[0], setup.device
    x0 = setup.image.to(device, torch.float32).expand(b, *setup.image.shape)
    eps = setup.noise.to(device, torch.float32).expand(b, *setup.noise.shape)
    t_dev = t.to(device)
    model = setup.model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x_t = setup.schedule.add_noise(x0, eps, t_dev)  # DDPM eq. 4
            if setup.label is None:  # unconditional, or "no label" for a class-conditional net
                out = model(x_t, t_dev)
            else:
                out = model(x_t, t_dev, torch.full((b,), setup.label, device=device))
            out = out.float()
            # the model's x_0 and eps estimates, each row at its own alphabar_t
            pairs = [
                split_prediction(
                    setup.schedule, out[i : i + 1], x_t[i : i + 1], int(t[i]), setup.prediction_type
                )
                for i in range(b)
            ]
            pred_x0 = torch.cat([p[0] for p in pairs])
            pred_eps = torch.cat([p[1] for p in pairs])
            target = training_target(setup.schedule, setup.prediction_type, x0, eps, t_dev)
            return _Evaluation(
                x_t=x_t.cpu(),
                pred_eps=pred_eps.cpu(),
                pred_x0=pred_x0.cpu(),
                loss=_mean_square(out, target).cpu(),
                x0_mse=_mean_square(pred_x0, x0).cpu(),
                eps_mse=_mean_square(pred_eps, eps).cpu(),
            )
    finally:
        model.train(was_training)


def _evaluate_flow(setup: InspectSetup, path: FlowPath, k: torch.Tensor) -> _Evaluation:
    """The flow model on the image at indices k (B,): t = (k + 1) / T, x_t = (1 - t) x_0 + t eps,
    the network given t T; its velocity v gives x_0 = x_t - t v and eps = x_t + (1 - t) v."""
    b, device = k.shape[0], setup.device
    x0 = setup.image.to(device, torch.float32).expand(b, *setup.image.shape)
    eps = setup.noise.to(device, torch.float32).expand(b, *setup.noise.shape)
    t = path.time_of_index(k).to(device, torch.float32)  # (B,) in (0, 1]
    model = setup.model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x_t = path.add_noise(x0, eps, t)
            model_t = path.model_timesteps(t)  # what core.training gives the network
            if setup.label is None:
                velocity = model(x_t, model_t)
            else:
                velocity = model(x_t, model_t, torch.full((b,), setup.label, device=device))
            velocity = velocity.float()
            pred_x0, pred_eps = path.split_velocity(x_t, velocity, t)
            return _Evaluation(
                x_t=x_t.cpu(),
                pred_eps=pred_eps.cpu(),
                pred_x0=pred_x0.cpu(),
                loss=_mean_square(velocity, path.velocity(x0, eps)).cpu(),
                x0_mse=_mean_square(pred_x0, x0).cpu(),
                eps_mse=_mean_square(pred_eps, eps).cpu(),
            )
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- one t


@dataclass(frozen=True)
class InspectRecord:
    """Everything at one timestep t. Arrays float32 numpy: x_t, noise (the true eps),
    pred_noise, pred_x0 (C, H, W) in the x_t scale (images about [-1, 1], noise about N(0, 1));
    error_map (H, W) the squared x_0 error averaged over channels (its mean is x0_mse).
    loss: the training loss in the model's own parametrisation (unweighted; the velocity MSE
    for flow); x0_mse: in the [-1, 1] pixel scale; log_snr: log(alphabar_t / (1 - alphabar_t)),
    -inf where alphabar_t = 0 (flow: 2 log((1 - t) / t), -inf at t = 1).
    t: the timestep index; time: a flow model's time t = (t + 1) / T (None for diffusion).
    """

    t: int
    log_snr: float
    x_t: np.ndarray
    noise: np.ndarray
    pred_noise: np.ndarray
    pred_x0: np.ndarray
    error_map: np.ndarray
    loss: float
    x0_mse: float
    eps_mse: float
    prediction_type: str
    label: int | None
    time: float | None = None

    @property
    def is_flow(self) -> bool:
        return self.time is not None


def inspect_at(setup: InspectSetup, t: int) -> InspectRecord:
    """The inspector's view at timestep t (0..T-1; ConfigError otherwise)."""
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise ConfigError(f"the timestep must be a whole number, got {t!r}")
    result = _evaluate(setup, torch.tensor([int(t)]))
    pred_x0 = result.pred_x0[0].numpy()
    error_map = ((result.pred_x0[0] - setup.image.float()) ** 2).mean(dim=0).numpy()
    return InspectRecord(
        t=int(t),
        log_snr=float(setup.schedule.log_snr[int(t)]),
        x_t=result.x_t[0].numpy(),
        noise=setup.noise.float().numpy(),
        pred_noise=result.pred_eps[0].numpy(),
        pred_x0=pred_x0,
        error_map=error_map,
        loss=float(result.loss[0]),
        x0_mse=float(result.x0_mse[0]),
        eps_mse=float(result.eps_mse[0]),
        prediction_type=setup.prediction_type,
        label=setup.label,
        time=float(setup.schedule.time_of_index(int(t))) if setup.is_flow else None,
    )


# --------------------------------------------------------------------------- the curve over t


@dataclass(frozen=True)
class CurveBatch:
    """One batch of the curve: t (b,) int64 and the errors at them (b,) float64;
    done / total: timesteps computed so far / T (the progress fraction is done / total)."""

    t: np.ndarray
    loss: np.ndarray
    x0_mse: np.ndarray
    eps_mse: np.ndarray
    done: int
    total: int


@dataclass(frozen=True)
class InspectCurve:
    """The errors for t = 0..T-1 (each (T,)): t int64, log_snr, loss, x0_mse, eps_mse float64
    (log_snr -inf where alphabar_t = 0; for a flow model, the path's log-SNR at (t + 1) / T)."""

    t: np.ndarray
    log_snr: np.ndarray
    loss: np.ndarray
    x0_mse: np.ndarray
    eps_mse: np.ndarray


def iter_curve(setup: InspectSetup, batch_size: int = CURVE_BATCH) -> Iterator[CurveBatch]:
    """The curve over t = 0..T-1, `batch_size` timesteps per network evaluation, one
    CurveBatch per evaluation. Stopping the iteration (a GUI's cancel) stops the work; nothing
    is held between batches (no inference mode, the model's mode restored)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    total = setup.num_timesteps
    for start in range(0, total, batch_size):
        t = torch.arange(start, min(start + batch_size, total))
        result = _evaluate(setup, t)
        yield CurveBatch(
            t=t.numpy(),
            loss=result.loss.double().numpy(),
            x0_mse=result.x0_mse.double().numpy(),
            eps_mse=result.eps_mse.double().numpy(),
            done=int(t[-1]) + 1,
            total=total,
        )


def collect_curve(
    setup: InspectSetup, batches: Iterator[CurveBatch] | list[CurveBatch]
) -> InspectCurve:
    """An InspectCurve from all of a curve's batches (`iter_curve`), in any order."""
    parts = sorted(batches, key=lambda batch: int(batch.t[0]))
    t = np.concatenate([p.t for p in parts]) if parts else np.zeros(0, np.int64)
    if not np.array_equal(t, np.arange(setup.num_timesteps)):
        raise ConfigError(f"the batches cover {len(t)} timesteps, not 0..{setup.num_timesteps - 1}")
    return InspectCurve(
        t=t.astype(np.int64),
        log_snr=setup.schedule.log_snr.numpy().copy(),
        loss=np.concatenate([p.loss for p in parts]),
        x0_mse=np.concatenate([p.x0_mse for p in parts]),
        eps_mse=np.concatenate([p.eps_mse for p in parts]),
    )


def inspect_curve(setup: InspectSetup, batch_size: int = CURVE_BATCH) -> InspectCurve:
    """The whole curve at once (`iter_curve`, collected)."""
    return collect_curve(setup, list(iter_curve(setup, batch_size)))


def curve_columns(curve: InspectCurve) -> dict[str, list[str]]:
    """The CSV's columns as text cells (`CURVE_COLUMNS`); a non-finite value (log-SNR -inf
    where alphabar_t = 0) is an empty cell, as in core.schedule_table."""
    return {
        "t": [str(int(t)) for t in curve.t],
        **{
            name: [csv_cell(v) for v in getattr(curve, name).tolist()] for name in CURVE_COLUMNS[1:]
        },
    }


def save_curve_csv(path: str | os.PathLike[str], curve: InspectCurve) -> Path:
    """Write the curve as CSV: header `t,log_snr,loss,x0_mse,eps_mse`, one row per t."""
    return save_csv(path, curve_columns(curve))
