"""Checkpoints: one `.safetensors` file holding weights, training state and a JSON config.

Layout of the file (safetensors: a JSON header, then raw tensor bytes; it cannot run code):
  tensors   "model/<name>"   the weights to sample with (the EMA weights when training kept them)
            "train/<name>"   training state packed by the trainer (raw weights, optimizer, RNG)
  metadata  "format"         "diffusion-studio"
            "format_version" "1"
            "config"         JSON: model, schedule, prediction_type, data, training, meta

Writes are atomic (core.files.atomic_write). Loading checks the header, the format version,
every config and every tensor shape against the model the config describes before any
weights are loaded. Legacy PyTorch files are read only with `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers: a file crafted to run code on load
is rejected, never executed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from diffusion_studio.core import __version__
from diffusion_studio.core.diffusers_models import find_diffusers_model, load_diffusers_checkpoint
from diffusion_studio.core.errors import CheckpointError, DiffusionStudioError
from diffusion_studio.core.files import atomic_write
from diffusion_studio.core.flow import FLOW_PREDICTION_TYPE, OBJECTIVES, Objective
from diffusion_studio.core.models import ModelConfig, build_model, model_config_from_dict
from diffusion_studio.core.resources import resources_dir
from diffusion_studio.core.samplers import PREDICTION_TYPES, PredictionType
from diffusion_studio.core.schedule import ScheduleConfig

FORMAT_NAME = "diffusion-studio"
FORMAT_VERSION = 1
MODEL_PREFIX = "model/"
TRAIN_PREFIX = "train/"
CHECKPOINT_SUFFIX = ".safetensors"
LEGACY_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass
class Checkpoint:
    """Everything needed to rebuild a model, sample from it, or resume its training.

    model_state: the weights to sample with; training_state: tensors the trainer packed
    (empty when the checkpoint is for sampling only); training: the JSON side of that state.
    data: {"name", "kind": "images"|"points", "image_size", "channels"}.
    """

    model_config: ModelConfig
    schedule_config: ScheduleConfig
    prediction_type: PredictionType
    model_state: dict[str, torch.Tensor]
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None
    training_state: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    # "diffusion" or "flow" (core.flow); checkpoints written before flow matching have none
    objective: Objective = "diffusion"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) for a UNet, (dim,) for the MLP."""
        config = self.model_config
        if config.kind == "unet":
            return (config.in_channels, config.image_size, config.image_size)
        if config.kind == "diffusers_unet":
            return config.sample_shape
        return (config.dim,)

    @property
    def is_points(self) -> bool:
        return self.model_config.kind == "mlp"

    @property
    def can_resume(self) -> bool:
        return self.training is not None and bool(self.training_state)

    def config_json(self) -> dict[str, Any]:
        return {
            "model": self.model_config.to_dict(),
            "schedule": self.schedule_config.to_dict(),
            "prediction_type": self.prediction_type,
            "objective": self.objective,
            "data": self.data,
            "training": self.training,
            "meta": self.meta,
        }


def _versions() -> dict[str, str]:
    return {"diffusion_studio": __version__, "torch": torch.__version__.split("+")[0]}


def checkpoint_bytes(ckpt: Checkpoint) -> bytes:
    """The checkpoint serialized as safetensors bytes."""
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in ckpt.model_state.items():
        tensors[MODEL_PREFIX + name] = tensor.detach().cpu().contiguous()
    for name, tensor in ckpt.training_state.items():
        tensors[TRAIN_PREFIX + name] = tensor.detach().cpu().contiguous()
    meta = dict(ckpt.meta)
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta["versions"] = _versions()
    config = ckpt.config_json() | {"meta": meta}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config, allow_nan=False),
    }
    return safetensors_save(tensors, metadata=metadata)


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint) -> Path:
    """Write `ckpt` to `path` atomically (old file intact if anything fails). Returns the path."""
    data = checkpoint_bytes(ckpt)
    return atomic_write(path, lambda f: f.write(data), CheckpointError)


# ----------------------------------------------------------------------------- loading


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors JSON header, read by hand so that a mangled file gets a clear message."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"'{path}' is empty or truncated ({size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"'{path}' is not a safetensors file or is truncated "
                f"(its header claims {header_len} bytes, the file has {size})"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{path}' has a damaged header: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"'{path}' has a damaged header (not a JSON object)")
    return header


def _parse_config(path: Path, metadata: dict[str, str] | None) -> dict[str, Any]:
    if not metadata or metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"'{path}' is a safetensors file but not a Diffusion Studio checkpoint "
            "(no 'diffusion-studio' format tag in its metadata)"
        )
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError as exc:
        raise CheckpointError(f"'{path}' has an unreadable format version") from exc
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' uses checkpoint format {version}, newer than this Diffusion Studio "
            f"understands ({FORMAT_VERSION}): update Diffusion Studio to open it"
        )
    if version < 1:
        raise CheckpointError(f"'{path}' has an invalid format version {version}")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{path}' has a missing or damaged config: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"'{path}' has a damaged config (not a JSON object)")
    return config


def _configs(path: Path, config: dict[str, Any]) -> tuple[ModelConfig, ScheduleConfig, str, str]:
    """(model config, schedule config, prediction type, objective) of a checkpoint's config."""
    try:
        model_config = model_config_from_dict(config["model"])
        schedule_config = ScheduleConfig.from_dict(config["schedule"])
        prediction_type = config["prediction_type"]
        objective = config.get("objective", "diffusion")  # none before flow matching
    except KeyError as exc:
        raise CheckpointError(f"'{path}' config lacks {exc}") from exc
    except (DiffusionStudioError, TypeError) as exc:
        raise CheckpointError(f"'{path}' has an invalid config: {exc}") from exc
    if prediction_type not in PREDICTION_TYPES:
        raise CheckpointError(
            f"'{path}' has unknown prediction type {prediction_type!r} "
            f"(known: {', '.join(PREDICTION_TYPES)})"
        )
    if objective not in OBJECTIVES:
        raise CheckpointError(
            f"'{path}' has unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})"
        )
    if (objective == "flow") != (prediction_type == FLOW_PREDICTION_TYPE):
        raise CheckpointError(
            f"'{path}' is inconsistent: objective {objective!r} with prediction type "
            f"{prediction_type!r} (a flow model predicts the velocity, a diffusion model does not)"
        )
    return model_config, schedule_config, prediction_type, objective


def expected_shapes(model_config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of the model `model_config` describes (built on the meta
    device: no memory, no weights)."""
    with torch.device("meta"):
        model = build_model(model_config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _check_shapes(
    path: Path, model_config: ModelConfig, shapes: dict[str, tuple[int, ...]]
) -> None:
    expected = expected_shapes(model_config)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"'{path}' does not fit its model config ({model_config.kind}): "
            f"{len(missing)} weight(s) missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise CheckpointError(
                f"'{path}' does not fit its model config: weight '{name}' has shape "
                f"{list(shapes[name])}, the config needs {list(shape)}"
            )


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and validate a checkpoint. Raises CheckpointError with a clear message on any problem.

    `path` may also be a diffusers UNet2DModel folder (or a pipeline folder holding one in
    unet/, or one of their files): see core.diffusers_models (needs the diffusers extra).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if find_diffusers_model(path) is not None:
        return load_diffusers_checkpoint(path)
    if path.is_dir():
        raise CheckpointError(
            f"'{path}' is a folder, not a checkpoint file nor a diffusers model folder "
            "(config.json + diffusion_pytorch_model.safetensors)"
        )
    if path.suffix.lower() in LEGACY_SUFFIXES:
        return _load_legacy(path)
    try:
        header = _read_header(path)
        config = _parse_config(path, header.get("__metadata__"))
        model_config, schedule_config, prediction_type, objective = _configs(path, config)
        shapes = {
            name[len(MODEL_PREFIX) :]: tuple(info.get("shape", ()))
            for name, info in header.items()
            if name.startswith(MODEL_PREFIX) and isinstance(info, dict)
        }
        _check_shapes(path, model_config, shapes)
        model_state: dict[str, torch.Tensor] = {}
        training_state: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name.startswith(MODEL_PREFIX):
                    model_state[name[len(MODEL_PREFIX) :]] = f.get_tensor(name)
                elif name.startswith(TRAIN_PREFIX):
                    training_state[name[len(TRAIN_PREFIX) :]] = f.get_tensor(name)
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"'{path}' could not be read (damaged or truncated?): {exc}") from exc
    for name, tensor in model_state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"'{path}' holds non-finite values in weight '{name}'")
    training = config.get("training")
    return Checkpoint(
        model_config=model_config,
        schedule_config=schedule_config,
        prediction_type=prediction_type,
        model_state=model_state,
        data=dict(config.get("data") or {}),
        training=training if isinstance(training, dict) else None,
        training_state=training_state if isinstance(training, dict) else {},
        meta=dict(config.get("meta") or {}),
        objective=objective,
    )


def _load_legacy(path: Path) -> Checkpoint:
    """A PyTorch pickle holding {"config": <the JSON config>, "model": state_dict}.

    Only `torch.load(weights_only=True)` is used: it unpickles tensors and plain containers and
    refuses any other object, so a crafted pickle cannot run code here.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for refused or broken pickles
        raise CheckpointError(
            f"'{path}' was refused: it is not a plain PyTorch weights file "
            f"(it may be damaged, or contain code, which is never run). Details: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    if not (isinstance(obj, dict) and "config" in obj and isinstance(obj.get("model"), dict)):
        raise CheckpointError(
            f"'{path}' is a PyTorch file but not a Diffusion Studio checkpoint "
            "(expected a dict with 'config' and 'model')"
        )
    config = obj["config"]
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"'{path}' has a damaged config: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"'{path}' has a damaged config (not a mapping)")
    model_config, schedule_config, prediction_type, objective = _configs(path, config)
    state = obj["model"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"'{path}' holds non-tensor weights")
    _check_shapes(path, model_config, {k: tuple(v.shape) for k, v in state.items()})
    return Checkpoint(
        model_config=model_config,
        schedule_config=schedule_config,
        prediction_type=prediction_type,
        model_state=dict(state),
        data=dict(config.get("data") or {}),
        meta=dict(config.get("meta") or {}),
        objective=objective,
    )


def for_sampling(ckpt: Checkpoint, half: bool = False) -> Checkpoint:
    """A copy with only what sampling needs: no training state, optionally float16 weights
    (half the size; they are cast back to float32 when loaded)."""
    state = {
        name: tensor.half() if half and tensor.is_floating_point() else tensor
        for name, tensor in ckpt.model_state.items()
    }
    return Checkpoint(
        model_config=ckpt.model_config,
        schedule_config=ckpt.schedule_config,
        prediction_type=ckpt.prediction_type,
        model_state=state,
        data=dict(ckpt.data),
        meta={k: v for k, v in ckpt.meta.items() if k not in ("created", "versions")}
        | {"trained_steps": (ckpt.training or {}).get("step")},
        objective=ckpt.objective,
    )


def build_model_from_checkpoint(ckpt: Checkpoint, device: str | torch.device = "cpu") -> nn.Module:
    """The checkpoint's model with its sampling weights loaded, in eval mode."""
    model = build_model(ckpt.model_config)
    model.load_state_dict(ckpt.model_state)
    return model.to(device).eval()


def pretrained_checkpoint_paths() -> dict[str, Path]:
    """The pretrained models shipped in resources/models, by name (file stem)."""
    folder = resources_dir() / "models"
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*" + CHECKPOINT_SUFFIX))}
