"""Tiny models saved as files, for CLI tests: our own checkpoints (an MLP on points, a UNet on
8x8 images) and a random diffusers UNet2DModel saved as a folder with a scheduler config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffusion_studio.core.checkpoint import Checkpoint, save_checkpoint
from diffusion_studio.core.models import MLPConfig, UNetConfig, build_model
from diffusion_studio.core.schedule import ScheduleConfig

T = 50  # timesteps of our tiny checkpoints

# A diffusers UNet2DModel small enough to run 20 steps in a blink on one CPU thread.
DIFFUSERS_UNET_KWARGS: dict[str, Any] = {
    "sample_size": 8,
    "layers_per_block": 1,
    "block_out_channels": (8, 16),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 4,
    "attention_head_dim": 8,
}


def _jitter(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (output layers start at zero), so the net says something."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


def save_tiny_checkpoint(path: Path, points: bool, meta: dict[str, Any] | None = None) -> Path:
    """Our .safetensors checkpoint of a tiny random model: 2-D points (MLP) or 1x8x8 images."""
    if points:
        config: Any = MLPConfig(hidden=16, layers=1)
        data: dict[str, Any] = {"name": "moons", "kind": "points"}
    else:
        config = UNetConfig(
            in_channels=1, image_size=8, channels=(8, 8), attention_heads=0, norm_groups=4
        )
        data = {"name": "tiny", "kind": "images", "image_size": 8, "channels": 1}
    model = build_model(config)
    _jitter(model)
    ckpt = Checkpoint(
        model_config=config,
        schedule_config=ScheduleConfig("linear", T),
        prediction_type="epsilon",
        model_state=model.state_dict(),
        data=data,
        meta=meta or {},
    )
    return save_checkpoint(path, ckpt)


def tiny_diffusers_unet(diffusers: Any, channels: int, seed: int = 0) -> Any:
    """A random diffusers UNet2DModel on channels x 8 x 8 images, in eval mode."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(
        in_channels=channels, out_channels=channels, **DIFFUSERS_UNET_KWARGS
    )
    _jitter(unet, seed)
    return unet.eval()


def save_diffusers_folder(folder: Path, unet: Any, scheduler: Any) -> Path:
    """The UNet and its scheduler saved side by side in one folder, as users share them."""
    unet.save_pretrained(folder)
    scheduler.save_pretrained(folder)
    return folder
