"""Open diffusers `UNet2DModel` folders (as written by `save_pretrained`) as our checkpoints.

A model folder holds `config.json` + `diffusion_pytorch_model.safetensors`; its noise schedule
is a `scheduler_config.json` beside it or one level above (a pipeline folder with `unet/` and
`scheduler/`, as `DDPMPipeline.save_pretrained` writes it). The scheduler's settings map onto
ours:

    num_train_timesteps            -> ScheduleConfig.num_timesteps
    beta_schedule                  -> kind: linear, scaled_linear, squaredcos_cap_v2 -> cosine,
                                      sigmoid
    beta_start, beta_end           -> beta_start, beta_end
    trained_betas                  -> betas (explicit)
    rescale_betas_zero_snr         -> zero_terminal_snr
    prediction_type                -> epsilon -> epsilon, v_prediction -> v, sample -> x0
    timestep_spacing, clip_sample, clip_sample_range, variance_type
                                   -> the suggested SamplerConfig (Checkpoint.meta)

The network is wrapped so that it is called like ours: `model(x (B, C, H, W), t (B,))`.

The other way, `export_diffusers(ckpt, folder)` writes one of our image UNets as a diffusers
DDPM pipeline folder (unet/, scheduler/, model_index.json) that `DDPMPipeline.from_pretrained`
loads: our UNet is laid out like `UNet2DModel` block for block, so only names change (and our
fused q/k/v projection is split in three). Models that run on a pixel-unshuffled input, and the
2-D point MLP, have no diffusers counterpart (`diffusers_export_problem` says why).

`diffusers` is an optional dependency (`pip install diffusion-studio[diffusers]`): it is
imported only when such a model is loaded or built, so `core` imports without it. Finding a
folder and mapping a scheduler config need no diffusers at all.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from diffusion_studio.core.errors import CheckpointError, ConfigError, ExportError
from diffusion_studio.core.models import DiffusersUNetConfig, ModelConfig, UNetConfig
from diffusion_studio.core.samplers import (
    TIMESTEP_SPACINGS,
    PredictionType,
    SamplerConfig,
    sampler_spec,
    spec_for_diffusers_class,
)
from diffusion_studio.core.schedule import ScheduleConfig

__all__ = [
    "DIFFUSERS_CONFIG",
    "DIFFUSERS_WEIGHTS",
    "SCHEDULER_CONFIG",
    "DiffusersFolder",
    "DiffusersUNet",
    "diffusers_available",
    "diffusers_export_problem",
    "export_diffusers",
    "find_diffusers_model",
    "import_diffusers",
    "is_diffusers_model",
    "load_diffusers_checkpoint",
    "scheduler_settings",
]

DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG = "scheduler_config.json"
PIPELINE_INDEX = "model_index.json"
# Files inside a model or pipeline folder that stand for the folder when a user picks one.
_FOLDER_FILES = (DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS, SCHEDULER_CONFIG, PIPELINE_INDEX)

_BETA_SCHEDULES = {
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "squaredcos_cap_v2": "cosine",
    "sigmoid": "sigmoid",
}
_PREDICTION_TYPES: dict[str, PredictionType] = {
    "epsilon": "epsilon",
    "v_prediction": "v",
    "sample": "x0",
}
# Pipeline components that mean "the UNet works in a latent space": its samples are not images.
_LATENT_COMPONENTS = ("vae", "vqvae", "vqvae_model")


def install_hint() -> str:
    """What to do when diffusers is missing (a bundle cannot pip-install it)."""
    if getattr(sys, "frozen", False):
        return (
            "this desktop bundle is built without diffusers; to open diffusers models install "
            "Diffusion Studio with pip: pip install 'diffusion-studio[diffusers]'"
        )
    return "install the optional diffusers extra: pip install 'diffusion-studio[diffusers]'"


def diffusers_available() -> bool:
    """True when `import diffusers` would work (checked without importing it)."""
    try:
        return importlib.util.find_spec("diffusers") is not None
    except (ImportError, ValueError):
        return False


def import_diffusers() -> ModuleType:
    """The diffusers module, or CheckpointError saying how to install it."""
    try:
        return importlib.import_module("diffusers")
    except ImportError as exc:
        raise CheckpointError(
            f"opening a diffusers model needs diffusers: {install_hint()}"
        ) from exc


# ----------------------------------------------------------------------------- finding folders


@dataclass(frozen=True)
class DiffusersFolder:
    """Where a diffusers model's parts are.

    root: the folder the user meant (the pipeline folder, or the model folder itself);
    unet_dir: holds config.json + diffusion_pytorch_model.safetensors;
    scheduler_config: the scheduler_config.json found for it, or None.
    """

    root: Path
    unet_dir: Path
    scheduler_config: Path | None


def _is_model_dir(folder: Path) -> bool:
    return (folder / DIFFUSERS_CONFIG).is_file() and (folder / DIFFUSERS_WEIGHTS).is_file()


def _find_scheduler_config(unet_dir: Path) -> Path | None:
    """scheduler_config.json beside the model, or one level above (also in a scheduler/ folder)."""
    for candidate in _scheduler_candidates(unet_dir):
        if candidate.is_file():
            return candidate
    return None


def _scheduler_candidates(unet_dir: Path) -> list[Path]:
    parent = unet_dir.parent
    return [
        unet_dir / SCHEDULER_CONFIG,
        unet_dir / "scheduler" / SCHEDULER_CONFIG,
        parent / SCHEDULER_CONFIG,
        parent / "scheduler" / SCHEDULER_CONFIG,
    ]


def find_diffusers_model(path: str | Path) -> DiffusersFolder | None:
    """The diffusers model at `path`, or None if there is none. Never imports diffusers.

    `path` may be a model folder (config.json + diffusion_pytorch_model.safetensors), a
    pipeline folder holding such a model in `unet/`, or one of those folders' files
    (config.json, the weights, scheduler_config.json, model_index.json).
    """
    path = Path(path).expanduser()
    if path.is_file() and path.name in _FOLDER_FILES:
        path = path.parent
        if path.name == "scheduler" and _is_model_dir(path.parent / "unet"):
            path = path.parent
    if not path.is_dir():
        return None
    if _is_model_dir(path):
        unet_dir = path
        root = path.parent if (path.parent / PIPELINE_INDEX).is_file() else path
    elif _is_model_dir(path / "unet"):
        unet_dir, root = path / "unet", path
    else:
        return None
    return DiffusersFolder(root, unet_dir, _find_scheduler_config(unet_dir))


def is_diffusers_model(path: str | Path) -> bool:
    """True when `path` is (or is a file of) a diffusers UNet model or pipeline folder."""
    return find_diffusers_model(path) is not None


# ----------------------------------------------------------------------------- scheduler mapping


def scheduler_settings(
    config: dict[str, Any],
) -> tuple[ScheduleConfig, PredictionType, SamplerConfig, list[str]]:
    """Map a diffusers scheduler config onto ours.

    Returns (schedule, prediction type, the sampler the config suggests, notes on settings that
    have no equivalent here). Raises ConfigError for a schedule or prediction type we lack.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"a scheduler config must be a JSON object, got {type(config).__name__}")
    notes: list[str] = []
    name = str(config.get("_class_name", "DDPMScheduler"))

    # 1. the noise schedule
    beta_schedule = config.get("beta_schedule", "linear")
    trained = config.get("trained_betas")
    if trained is None and beta_schedule not in _BETA_SCHEDULES:
        raise ConfigError(
            f"scheduler beta_schedule {beta_schedule!r} is not supported; known: "
            f"{', '.join(_BETA_SCHEDULES)} (or explicit trained_betas)"
        )
    num_timesteps = config.get("num_train_timesteps", 1000)
    schedule = ScheduleConfig(
        kind=_BETA_SCHEDULES.get(beta_schedule, "linear"),  # type: ignore[arg-type]
        num_timesteps=num_timesteps,
        beta_start=float(config.get("beta_start", 1e-4)),
        beta_end=float(config.get("beta_end", 0.02)),
        zero_terminal_snr=bool(config.get("rescale_betas_zero_snr", False)),
        betas=tuple(float(b) for b in trained) if trained is not None else None,
    )

    # 2. what the network predicts
    raw_prediction = config.get("prediction_type", "epsilon")
    if raw_prediction not in _PREDICTION_TYPES:
        raise ConfigError(
            f"scheduler prediction_type {raw_prediction!r} is not supported; known: "
            f"{', '.join(_PREDICTION_TYPES)}"
        )
    prediction = _PREDICTION_TYPES[raw_prediction]

    # 3. the sampler it was made for (diffusers' defaults where a key is absent)
    spec = spec_for_diffusers_class(name, config)
    if spec is None:
        spec = sampler_spec("ddpm")
        notes.append(f"scheduler {name} is not available; {spec.label} is used")
    spacing = config.get("timestep_spacing", spec.diffusers_spacing)
    if spacing not in TIMESTEP_SPACINGS:
        notes.append(f"timestep_spacing {spacing!r} is not available; 'leading' is used")
        spacing = "leading"
    options = spec.options_from_diffusers(config)
    notes.extend(spec.sampler_class.diffusers_notes(config))
    if "variance_type" in config and config["variance_type"] != options.get("variance_type"):
        if "variance_type" in {f.name for f in dataclasses.fields(spec.options_class)}:
            notes.append(
                f"variance_type {config['variance_type']!r} is not available; 'fixed_small' is used"
            )
    if config.get("steps_offset", 0):
        notes.append(
            f"steps_offset {config['steps_offset']} is ignored (timesteps are not shifted)"
        )
    if config.get("thresholding", False):
        notes.append("dynamic thresholding is not available; plain clipping is used")
    if config.get("set_alpha_to_one", True) is False:
        notes.append("set_alpha_to_one = false is ignored: the last DDIM step goes to alphabar = 1")
    sampler = SamplerConfig(
        kind=spec.name,
        num_inference_steps=min(50, schedule.num_timesteps),
        spacing=spacing,
        # diffusers' DDPM and DDIM clip x_0 unless told not to; its other schedulers never do
        clip_sample=bool(config.get("clip_sample", spec.diffusers_clip_default)),
        clip_range=float(config.get("clip_sample_range", 1.0)),
        karras=bool(config.get("use_karras_sigmas", False)) and spec.karras,
        options=options,
    )
    return schedule, prediction, sampler, notes


# ----------------------------------------------------------------------------- the network


class DiffusersUNet(nn.Module):
    """A diffusers `UNet2DModel` called like our models.

    forward(x (B, C, H, W), t (B,) timestep indices or an int) -> (B, C, H, W).
    The diffusers module is `self.unet`, so state-dict keys are "unet." + diffusers' keys.
    """

    def __init__(self, config: DiffusersUNetConfig) -> None:
        super().__init__()
        diffusers = import_diffusers()
        self.config = config
        self.unet = diffusers.UNet2DModel.from_config(config.unet_config)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        channels = self.config.in_channels
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(
                f"diffusers UNet expects x of shape (B, {channels}, H, W), got {tuple(x.shape)}"
            )
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t)
        t = t.to(x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.unet(x, t, return_dict=False)[0].to(x.dtype)


# ----------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{path}' could not be read as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"'{path}' is not a JSON object")
    return data


def _refuse_latent_pipeline(root: Path) -> None:
    index = root / PIPELINE_INDEX
    if not index.is_file():
        return
    components = _read_json(index)
    latent = [c for c in _LATENT_COMPONENTS if components.get(c)]
    if latent:
        raise CheckpointError(
            f"'{root}' is a latent diffusion pipeline (it has a {latent[0]}): its UNet makes "
            "latents, not images, and cannot be played back here"
        )


def load_diffusers_checkpoint(path: str | Path) -> Any:
    """Load the diffusers UNet2DModel at `path` (see `find_diffusers_model`) as a Checkpoint.

    The schedule and prediction type come from its scheduler_config.json; the sampler that
    config suggests is in `meta["sampler_defaults"]` (a SamplerConfig dict) and settings
    without an equivalent here are listed in `meta["notes"]`.
    Raises CheckpointError for anything that is missing, unsupported or damaged.
    """
    from diffusion_studio.core.checkpoint import (
        Checkpoint,  # imported here: core.checkpoint imports this module
    )

    path = Path(path).expanduser()
    found = find_diffusers_model(path)
    if found is None:
        raise CheckpointError(
            f"'{path}' is not a diffusers model folder: it needs {DIFFUSERS_CONFIG} and "
            f"{DIFFUSERS_WEIGHTS} (in the folder itself or in its unet/ folder)"
        )
    _refuse_latent_pipeline(found.root)
    unet_json = _read_json(found.unet_dir / DIFFUSERS_CONFIG)
    try:
        model_config = DiffusersUNetConfig(config=json.dumps(unet_json))
    except ConfigError as exc:
        raise CheckpointError(f"'{found.unet_dir}' cannot be opened: {exc}") from exc
    if found.scheduler_config is None:
        looked = ", ".join(str(p) for p in _scheduler_candidates(found.unet_dir))
        raise CheckpointError(
            f"'{found.unet_dir}' has no {SCHEDULER_CONFIG} (looked in {looked}); save the "
            "scheduler beside the model, e.g. with DDPMPipeline(unet, scheduler).save_pretrained"
        )
    scheduler_json = _read_json(found.scheduler_config)
    try:
        schedule, prediction, sampler, notes = scheduler_settings(scheduler_json)
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"'{found.scheduler_config}' cannot be used: {exc}") from exc

    diffusers = import_diffusers()
    try:
        unet = diffusers.UNet2DModel.from_pretrained(
            str(found.unet_dir),
            use_safetensors=True,  # never a pickle
            local_files_only=True,  # never the network
            # the memory-saving loader needs `accelerate`; without it diffusers prints a warning
            low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
        )
    except Exception as exc:  # noqa: BLE001 - diffusers raises many types for bad folders
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"diffusers could not load the model in '{found.unet_dir}' (damaged?): {first}"
        ) from exc
    model_state: dict[str, torch.Tensor] = {}
    for name, tensor in unet.state_dict().items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
            if not torch.isfinite(tensor).all():
                raise CheckpointError(f"'{found.unet_dir}' holds non-finite values in '{name}'")
        model_state["unet." + name] = tensor.contiguous()
    channels, height, _ = model_config.sample_shape
    return Checkpoint(
        model_config=model_config,
        schedule_config=schedule,
        prediction_type=prediction,
        model_state=model_state,
        data={
            "name": found.root.name,
            "kind": "images",
            "image_size": height,
            "channels": channels,
        },
        training=None,
        meta={
            "source": "diffusers",
            "path": str(found.root),
            "diffusers": {
                "unet_dir": str(found.unet_dir),
                "scheduler_config": str(found.scheduler_config),
                "scheduler_class": scheduler_json.get("_class_name"),
                "saved_with": unet_json.get("_diffusers_version"),
            },
            "sampler_defaults": sampler.to_dict(),
            "notes": notes,
        },
    )


# ----------------------------------------------------------------------------- export


_EXPORT_RESNET_NAMES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "time_proj": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "shortcut": "conv_shortcut",
}
_EXPORT_SCHEDULES = {ours: theirs for theirs, ours in _BETA_SCHEDULES.items()}
_EXPORT_PREDICTIONS = {ours: theirs for theirs, ours in _PREDICTION_TYPES.items()}
_MIN_DIFFUSERS_VERSION = "0.30.0"


def diffusers_export_problem(model_config: ModelConfig) -> str | None:
    """Why this model cannot be written as a diffusers UNet2DModel, or None when it can."""
    if isinstance(model_config, DiffusersUNetConfig):
        return None
    if not isinstance(model_config, UNetConfig):
        return (
            "2-D point models (MLP) have no diffusers counterpart; only image UNets can be "
            "exported to diffusers"
        )
    if model_config.pixel_unshuffle != 1:
        return (
            f"this UNet runs on a pixel-unshuffled input (factor {model_config.pixel_unshuffle}), "
            "which diffusers' UNet2DModel cannot do; models trained with pixel_unshuffle 1 "
            "can be exported"
        )
    return None


def _unet2d_config(config: UNetConfig) -> dict[str, Any]:
    """The UNet2DModel config that has exactly our UNet's layers (see core.models.UNet)."""
    levels = len(config.channels)
    attention = config.attention_heads > 0
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if attention:  # attention only at the lowest resolution: last down block, first up block
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return {
        "_class_name": "UNet2DModel",
        "sample_size": config.image_size,
        "in_channels": config.in_channels,
        "out_channels": config.in_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",  # sinusoidal, [cos, sin], no frequency shift
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": down,
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": up,
        "block_out_channels": list(config.channels),
        "layers_per_block": config.layers_per_level,
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": config.dropout,
        "act_fn": "silu",
        "attention_head_dim": config.channels[-1] // config.attention_heads if attention else None,
        "norm_num_groups": config.norm_groups,
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": "default",
        "add_attention": attention,
    }


def _unet2d_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our UNet's state dict under UNet2DModel's names (q, k, v split from our fused qkv)."""
    out: dict[str, torch.Tensor] = {}

    def resnet(prefix: str, rest: list[str], value: torch.Tensor) -> None:
        out[f"{prefix}.{_EXPORT_RESNET_NAMES[rest[0]]}.{rest[1]}"] = value

    def attention(prefix: str, rest: list[str], value: torch.Tensor) -> None:
        layer, param = rest
        if layer == "norm":
            out[f"{prefix}.group_norm.{param}"] = value
        elif layer == "out":
            out[f"{prefix}.to_out.0.{param}"] = value
        else:  # qkv: output features ordered [q | k | v], each head-major as in diffusers
            for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{param}"] = part

    for key, value in state.items():
        p = key.split(".")
        if p[0] == "time_mlp":  # Sequential(Linear, SiLU, Linear)
            out[f"time_embedding.linear_{1 if p[1] == '0' else 2}.{p[2]}"] = value
        elif p[0] in ("conv_in", "conv_out"):
            out[key] = value
        elif p[0] == "norm_out":
            out[f"conv_norm_out.{p[1]}"] = value
        elif p[0] in ("down_levels", "up_levels"):
            block = f"{'down' if p[0] == 'down_levels' else 'up'}_blocks.{p[1]}"
            if p[2] == "blocks":
                resnet(f"{block}.resnets.{p[3]}", p[4:], value)
            else:
                attention(f"{block}.attentions.{p[3]}", p[4:], value)
        elif p[0] == "downsamples":
            out[f"down_blocks.{p[1]}.downsamplers.0.conv.{p[3]}"] = value
        elif p[0] == "upsamples":
            out[f"up_blocks.{p[1]}.upsamplers.0.conv.{p[3]}"] = value
        elif p[0] in ("mid_block1", "mid_block2"):
            resnet(f"mid_block.resnets.{0 if p[0] == 'mid_block1' else 1}", p[1:], value)
        elif p[0] == "mid_attn":
            attention("mid_block.attentions.0", p[1:], value)
        else:
            raise ExportError(f"unexpected weight {key!r} in the UNet: cannot export it")
    return out


def _scheduler_config(schedule: ScheduleConfig, prediction: str, version: str) -> dict[str, Any]:
    """A DDPMScheduler config with our schedule; timesteps 'trailing' and no clipping, as the
    app samples by default."""
    return {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": version,
        "num_train_timesteps": schedule.num_timesteps,
        "beta_start": schedule.beta_start,
        "beta_end": schedule.beta_end,
        "beta_schedule": _EXPORT_SCHEDULES[schedule.kind],
        "trained_betas": list(schedule.betas) if schedule.betas is not None else None,
        "variance_type": "fixed_small",
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "prediction_type": _EXPORT_PREDICTIONS[prediction],
        "thresholding": False,
        "timestep_spacing": "trailing",
        "steps_offset": 0,
        "rescale_betas_zero_snr": schedule.zero_terminal_snr,
    }


def export_diffusers(ckpt: Any, folder: str | Path, overwrite: bool = False) -> Path:
    """Write `ckpt` (a core.checkpoint.Checkpoint) as a diffusers DDPM pipeline folder.

    Layout: folder/model_index.json, folder/unet/{config.json, diffusion_pytorch_model.safetensors},
    folder/scheduler/scheduler_config.json. Needs no diffusers. The folder is built beside the
    target and renamed into place, so a failed export leaves nothing half-written.
    Raises ExportError when the model has no diffusers form or the folder cannot be written.
    """
    from safetensors.torch import save_file

    problem = diffusers_export_problem(ckpt.model_config)
    if problem is not None:
        raise ExportError(f"cannot export to diffusers: {problem}")
    folder = Path(folder).expanduser()
    if folder.exists() and not (overwrite and folder.is_dir()):
        raise ExportError(
            f"'{folder}' already exists: choose a new folder name"
            + (" (or allow overwriting)" if folder.is_dir() else "")
        )
    try:
        version = importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        version = _MIN_DIFFUSERS_VERSION
    config = ckpt.model_config
    if isinstance(config, DiffusersUNetConfig):
        unet_config = config.unet_config
        state = {k.removeprefix("unet."): v for k, v in ckpt.model_state.items()}
    else:
        unet_config = _unet2d_config(config)
        state = _unet2d_state(ckpt.model_state)
    unet_config["_diffusers_version"] = version
    state = {k: v.detach().cpu().float().contiguous().clone() for k, v in state.items()}
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": version,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    scheduler = _scheduler_config(ckpt.schedule_config, ckpt.prediction_type, version)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            (tmp / "unet").mkdir()
            (tmp / "scheduler").mkdir()
            (tmp / PIPELINE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
            (tmp / "unet" / DIFFUSERS_CONFIG).write_text(json.dumps(unet_config, indent=2) + "\n")
            save_file(state, str(tmp / "unet" / DIFFUSERS_WEIGHTS), metadata={"format": "pt"})
            (tmp / "scheduler" / SCHEDULER_CONFIG).write_text(
                json.dumps(scheduler, indent=2) + "\n"
            )
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise ExportError(f"cannot write '{folder}': {exc.strerror or exc}") from exc
    return folder
