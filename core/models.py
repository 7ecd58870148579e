"""Denoising networks: an image UNet and a small MLP for 2-D points.

Both are built from a frozen config dataclass alone (`build_model(config)`), so a
checkpoint needs only `config.to_dict()` plus a state_dict. Both are called as
`model(x, t)` with `t` the timestep indices 0..T-1 and return a tensor of `x`'s
shape and dtype (the noise, velocity or x_0 prediction; the network does not care which).

The UNet follows DDPM (Ho et al. 2020, appendix B) and diffusers' `UNet2DModel`:
sinusoidal time embedding, residual blocks (GroupNorm, SiLU, time-embedding
injection), self-attention only at the lowest resolution, skip connections from
every encoder stage to the decoder (which has one block more per level), and a
zero-initialised output convolution so that an untrained net predicts 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_studio.core.errors import ConfigError

__all__ = [
    "DiffusersUNetConfig",
    "MLPConfig",
    "MLPDenoiser",
    "ModelConfig",
    "UNet",
    "UNetConfig",
    "build_model",
    "count_parameters",
    "model_config_from_dict",
    "timestep_embedding",
]

_PIXEL_UNSHUFFLE_FACTORS = (1, 2, 4)
_MAX_LEVELS = 6
MAX_CLASSES = 1000


# --------------------------------------------------------------------------- validation helpers


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")


def _check_kind(cls_name: str, value: object, expected: str) -> None:
    if value != expected:
        raise ConfigError(f"{cls_name}.kind must be {expected!r}, got {value!r}")


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class UNetConfig:
    """Image UNet settings.

    channels: width of each resolution level, highest resolution first; there is a
        2x downsampling between consecutive levels.
    layers_per_level: residual blocks per encoder level (the decoder has one more).
    attention_heads: heads of the self-attention at the lowest resolution (0 = none).
    pixel_unshuffle: 1, 2 or 4; with p > 1 the net runs on the pixel-unshuffled input
        (C, H, W) -> (p*p*C, H/p, W/p) and pixel-shuffles its output back.
    num_classes: 0 = unconditional; K > 0 = class-conditional on labels 0..K-1, with label K
        meaning "no label" (the unconditional model of classifier-free guidance, core.guidance).
    """

    kind: Literal["unet"] = "unet"
    in_channels: int = 1
    image_size: int = 28
    channels: tuple[int, ...] = (32, 64, 64)
    layers_per_level: int = 1
    attention_heads: int = 4
    norm_groups: int = 8
    pixel_unshuffle: int = 1
    dropout: float = 0.0
    num_classes: int = 0

    def __post_init__(self) -> None:
        _check_kind("UNetConfig", self.kind, "unet")
        _check_int("in_channels", self.in_channels, 1)
        if self.in_channels not in (1, 3):
            raise ConfigError(
                f"in_channels must be 1 (grayscale) or 3 (RGB), got {self.in_channels}"
            )
        if isinstance(self.channels, list):
            object.__setattr__(self, "channels", tuple(self.channels))
        if not isinstance(self.channels, tuple) or not self.channels:
            raise ConfigError(
                f"channels must be a non-empty list of widths such as (32, 64, 64), got {self.channels!r}"
            )
        if len(self.channels) > _MAX_LEVELS:
            raise ConfigError(
                f"channels has {len(self.channels)} levels {self.channels}; use at most {_MAX_LEVELS}"
            )
        for width in self.channels:
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ConfigError(
                    f"every width in channels must be a positive integer, got {width!r} in {self.channels}"
                )
        _check_int("layers_per_level", self.layers_per_level, 1)
        _check_int("attention_heads", self.attention_heads, 0)
        _check_int("norm_groups", self.norm_groups, 1)
        _check_int("pixel_unshuffle", self.pixel_unshuffle, 1)
        _check_int("image_size", self.image_size, 1)
        _check_int("num_classes", self.num_classes, 0)
        if self.num_classes > MAX_CLASSES:
            raise ConfigError(f"num_classes must be at most {MAX_CLASSES}, got {self.num_classes}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

        for width in self.channels:
            if width % self.norm_groups:
                raise ConfigError(
                    f"norm_groups {self.norm_groups} does not divide width {width} of channels "
                    f"{self.channels}: use widths that are multiples of {self.norm_groups} "
                    "or fewer groups"
                )
        lowest = self.channels[-1]
        if self.attention_heads and lowest % self.attention_heads:
            raise ConfigError(
                f"attention_heads {self.attention_heads} does not divide the lowest-resolution "
                f"width {lowest}: pick a divisor of {lowest} (or 0 for no attention)"
            )
        if self.pixel_unshuffle not in _PIXEL_UNSHUFFLE_FACTORS:
            raise ConfigError(
                f"pixel_unshuffle must be one of {_PIXEL_UNSHUFFLE_FACTORS}, got {self.pixel_unshuffle}"
            )
        factor = self.size_factor
        if self.image_size % factor:
            below = self.image_size // factor * factor
            above = below + factor
            hint = f"use {below} or {above}" if below > 0 else f"use {above}"
            raise ConfigError(
                f"image size {self.image_size} is not divisible by {factor} "
                f"({self.num_downsamples} downsamplings x pixel-unshuffle {self.pixel_unshuffle}): "
                f"{hint}, or fewer levels in channels"
            )

    @property
    def num_downsamples(self) -> int:
        """Number of 2x downsamplings inside the net (levels - 1)."""
        return len(self.channels) - 1

    @property
    def size_factor(self) -> int:
        """Image height and width must be multiples of this."""
        return (2**self.num_downsamples) * self.pixel_unshuffle

    @property
    def lowest_resolution(self) -> int:
        """Side length at which the attention runs, for `image_size` inputs."""
        return self.image_size // self.size_factor

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (channels as a list); `model_config_from_dict` reverses it."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        """Validate and build from a dict such as `to_dict()` returns."""
        return _config_from_dict(cls, d)


@dataclass(frozen=True)
class MLPConfig:
    """Residual MLP denoiser for points of dimension `dim` (2-D toy data).

    hidden: width of the residual stream; layers: number of residual blocks;
    time_embed_dim: size of the sinusoidal timestep embedding (even).
    """

    kind: Literal["mlp"] = "mlp"
    dim: int = 2
    hidden: int = 128
    layers: int = 3
    time_embed_dim: int = 32

    def __post_init__(self) -> None:
        _check_kind("MLPConfig", self.kind, "mlp")
        _check_int("dim", self.dim, 1)
        _check_int("hidden", self.hidden, 1)
        _check_int("layers", self.layers, 1)
        _check_int("time_embed_dim", self.time_embed_dim, 2)
        if self.time_embed_dim % 2:
            raise ConfigError(
                f"time_embed_dim must be even (sine and cosine halves), got {self.time_embed_dim}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; `model_config_from_dict` reverses it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MLPConfig:
        """Validate and build from a dict such as `to_dict()` returns."""
        return _config_from_dict(cls, d)


@dataclass(frozen=True)
class DiffusersUNetConfig:
    """A diffusers `UNet2DModel`, described by its own `config.json`.

    config: that JSON object, kept as canonical JSON text (sorted keys) so that the dataclass
        stays frozen and hashable; a dict is accepted and converted. Checked here without
        importing diffusers: an unconditional UNet2DModel whose output has the input's
        channels (1 or 3), with a known `sample_size` (int or [height, width]).
    The network itself is built by `core.diffusers_models` (needs the `diffusers` extra).
    """

    kind: Literal["diffusers_unet"] = "diffusers_unet"
    config: str = "{}"

    def __post_init__(self) -> None:
        _check_kind("DiffusersUNetConfig", self.kind, "diffusers_unet")
        raw: Any = self.config
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"diffusers UNet config is not valid JSON: {exc}") from exc
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"diffusers UNet config must be a JSON object, got {type(raw).__name__}"
            )
        object.__setattr__(self, "config", json.dumps(dict(raw), sort_keys=True))
        cls_name = raw.get("_class_name", "UNet2DModel")
        if cls_name != "UNet2DModel":
            raise ConfigError(
                f"this is a diffusers {cls_name}, but only unconditional UNet2DModel models "
                "(DDPM/DDIM pipelines) can be opened"
            )
        in_ch = raw.get("in_channels", 3)
        out_ch = raw.get("out_channels", 3)
        if in_ch not in (1, 3) or isinstance(in_ch, bool):
            raise ConfigError(
                f"diffusers UNet has in_channels = {in_ch!r}; only image models with 1 "
                "(grayscale) or 3 (RGB) channels can be opened (latent models need a VAE)"
            )
        if out_ch != in_ch:
            raise ConfigError(
                f"diffusers UNet has out_channels = {out_ch!r} but in_channels = {in_ch}: "
                "models with a learned variance output are not supported"
            )
        for key in ("num_class_embeds", "class_embed_type"):
            if raw.get(key) is not None:
                raise ConfigError(
                    f"diffusers UNet is class-conditional ({key} = {raw[key]!r}); "
                    "only unconditional models can be opened"
                )
        size = raw.get("sample_size")
        if isinstance(size, int) and not isinstance(size, bool):
            size = [size, size]
        if (
            not isinstance(size, (list, tuple))
            or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
        ):
            raise ConfigError(
                f"diffusers UNet config has sample_size = {raw.get('sample_size')!r}; "
                "it needs a positive int or [height, width] to know the image size"
            )

    @property
    def unet_config(self) -> dict[str, Any]:
        """The diffusers config as a fresh dict (for `UNet2DModel.from_config`)."""
        return json.loads(self.config)

    @property
    def in_channels(self) -> int:
        return int(self.unet_config.get("in_channels", 3))

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of the images the model makes."""
        size = self.unet_config["sample_size"]
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def image_size(self) -> int:
        """Longest side in pixels (height = width for almost every model)."""
        return max(self.image_shape)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        return (self.in_channels, *self.image_shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (the diffusers config as an object); `model_config_from_dict` reverses it."""
        return {"kind": self.kind, "config": self.unet_config}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DiffusersUNetConfig:
        """Validate and build from a dict such as `to_dict()` returns."""
        return _config_from_dict(cls, d)


ModelConfig = Union[UNetConfig, MLPConfig, DiffusersUNetConfig]

_CONFIG_CLASSES: dict[str, type[UNetConfig] | type[MLPConfig] | type[DiffusersUNetConfig]] = {
    "unet": UNetConfig,
    "mlp": MLPConfig,
    "diffusers_unet": DiffusersUNetConfig,
}


def _config_from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"a model config must be a dict, got {type(d).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(str(k) for k in d if k not in names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {cls.__name__}; allowed keys are {names}")
    kwargs = dict(d)
    if "channels" in kwargs and isinstance(kwargs["channels"], list):
        kwargs["channels"] = tuple(kwargs["channels"])
    return cls(**kwargs)  # __post_init__ checks types and values


def model_config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
    """Build a model config from a dict, dispatching on d["kind"] (unet, mlp, diffusers_unet).

    Raises ConfigError for a missing or unknown kind, unknown keys, wrong types or values.
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"a model config must be a dict, got {type(d).__name__}")
    if "kind" not in d:
        raise ConfigError(f"model config has no 'kind'; expected one of {sorted(_CONFIG_CLASSES)}")
    kind = d["kind"]
    if not isinstance(kind, str) or kind not in _CONFIG_CLASSES:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {sorted(_CONFIG_CLASSES)}")
    return _CONFIG_CLASSES[kind].from_dict(d)


# --------------------------------------------------------------------------- shared pieces


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps, (B,) -> (B, dim) float32.

    Transformer position encoding as used by DDPM: frequencies
    w_k = max_period^(-k / (dim/2)), k = 0..dim/2-1, output [cos(t w), sin(t w)].
    Equals diffusers `get_timestep_embedding(t, dim, flip_sin_to_cos=True,
    downscale_freq_shift=0)` (the `UNet2DModel` default).
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) * (
        -math.log(max_period) / half
    )
    args = t.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _timesteps_as_tensor(t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    """Timestep indices as a (B,) tensor on `device`; an int or 0-d tensor is broadcast."""
    if not isinstance(t, torch.Tensor):
        t = torch.tensor(t)
    t = t.to(device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be an int or have shape ({batch},), got shape {tuple(t.shape)}")
    return t


def _labels_as_tensor(
    labels: torch.Tensor | None, batch: int, num_classes: int, device: torch.device
) -> torch.Tensor:
    """Class labels as a (B,) long tensor on `device`; None = "no label" (index num_classes)."""
    if labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if (
        labels.device.type == "cpu"
        and batch
        and not 0 <= int(labels.min()) <= int(labels.max()) <= num_classes
    ):
        raise ValueError(f"labels must be in 0..{num_classes}, got {labels.min()}..{labels.max()}")
    return labels.to(device=device, dtype=torch.long)


# --------------------------------------------------------------------------- UNet


class _ResBlock(nn.Module):
    """GN-SiLU-conv, + time embedding, GN-SiLU-dropout-conv, + (1x1-projected) input."""

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x (B, cin, H, W), temb (B, temb_dim) already through SiLU -> (B, cout, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class _Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, pre-GroupNorm, residual."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).view(b, h * w, 3, self.heads, c // self.heads).unbind(2)
        # softmax(q k^T / sqrt(d)) v per head; (B, heads, HW, d)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        a = self.out(a.transpose(1, 2).reshape(b, h * w, c))
        return x + a.transpose(1, 2).reshape(b, c, h, w)


class _Downsample(nn.Module):
    """3x3 convolution with stride 2: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 convolution: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: residual blocks, each optionally followed by attention."""

    def __init__(self, blocks: list[_ResBlock], attentions: list[nn.Module] | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attentions = nn.ModuleList(attentions) if attentions else None


class UNet(nn.Module):
    """DDPM-style UNet. forward(x (B, C, H, W), t (B,) or int) -> (B, C, H, W)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        chans = config.channels
        groups = config.norm_groups
        heads = config.attention_heads
        drop = config.dropout
        levels = len(chans)
        p2 = config.pixel_unshuffle**2
        self.base_dim = chans[0]
        temb_dim = 4 * chans[0]

        self.time_mlp = nn.Sequential(
            nn.Linear(chans[0], temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim)
        )
        # Class-conditional: a learned vector per label (and one for "no label", index K)
        # added to the timestep embedding, as in the guided diffusion UNets.
        self.class_embed: nn.Embedding | None = None
        if config.num_classes:
            # N(0, 1) as nn.Embedding's own init, drawn on the CPU even when the net is built
            # on the meta device (core.checkpoint checks shapes there), where random fills go
            # through torch._refs and import sympy and torch._dynamo (1-2 s at start-up)
            weight = torch.randn(config.num_classes + 1, temb_dim, device="cpu")
            self.class_embed = nn.Embedding(config.num_classes + 1, temb_dim, _weight=weight)
        self.conv_in = nn.Conv2d(config.in_channels * p2, chans[0], 3, padding=1)

        def attn(width: int) -> _Attention:
            return _Attention(width, heads, groups)

        # Encoder. Skips: conv_in output, every block output, every downsample output.
        self.down_levels = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skip_widths = [chans[0]]
        width = chans[0]
        for i, out in enumerate(chans):
            lowest = i == levels - 1
            blocks = []
            for _ in range(config.layers_per_level):
                blocks.append(_ResBlock(width, out, temb_dim, groups, drop))
                width = out
                skip_widths.append(width)
            attns = [attn(out) for _ in blocks] if lowest and heads else None
            self.down_levels.append(_Level(blocks, attns))
            if not lowest:
                self.downsamples.append(_Downsample(width))
                skip_widths.append(width)

        # Middle: block, attention, block at the lowest resolution.
        self.mid_block1 = _ResBlock(width, width, temb_dim, groups, drop)
        self.mid_attn = attn(width) if heads else None
        self.mid_block2 = _ResBlock(width, width, temb_dim, groups, drop)

        # Decoder: layers_per_level + 1 blocks per level, each eats one skip (concatenated).
        self.up_levels = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i, out in reversed(list(enumerate(chans))):
            lowest = i == levels - 1
            blocks = []
            for _ in range(config.layers_per_level + 1):
                blocks.append(_ResBlock(width + skip_widths.pop(), out, temb_dim, groups, drop))
                width = out
            attns = [attn(out) for _ in blocks] if lowest and heads else None
            self.up_levels.append(_Level(blocks, attns))
            if i > 0:
                self.upsamples.append(_Upsample(width))
        assert not skip_widths

        self.norm_out = nn.GroupNorm(groups, width)
        self.conv_out = nn.Conv2d(width, config.in_channels * p2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # untrained net predicts exactly 0
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | int, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C, H, W) with H, W multiples of `config.size_factor`; t (B,) indices or int;
        labels (B,) in 0..num_classes (num_classes = no label; None = no label for all), only
        for a class-conditional net."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"UNet expects x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}"
            )
        factor = cfg.size_factor
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ConfigError(
                f"image size {x.shape[2]}x{x.shape[3]} is not divisible by {factor}, "
                f"which this model ({cfg.num_downsamples} downsamplings x pixel-unshuffle "
                f"{cfg.pixel_unshuffle}) needs"
            )
        t = _timesteps_as_tensor(t, x.shape[0], x.device)
        temb = self.time_mlp(timestep_embedding(t, self.base_dim))
        if self.class_embed is not None:
            temb = temb + self.class_embed(
                _labels_as_tensor(labels, x.shape[0], cfg.num_classes, x.device)
            )
        elif labels is not None:
            raise ConfigError("this model is not class-conditional: it takes no labels")
        temb = F.silu(temb)  # SiLU once, for all blocks

        h = x
        if cfg.pixel_unshuffle > 1:
            h = F.pixel_unshuffle(h, cfg.pixel_unshuffle)
        h = self.conv_in(h)
        skips = [h]
        for i, level in enumerate(self.down_levels):
            for j, block in enumerate(level.blocks):
                h = block(h, temb)
                if level.attentions is not None:
                    h = level.attentions[j](h)
                skips.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
                skips.append(h)

        h = self.mid_block1(h, temb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid_block2(h, temb)

        for i, level in enumerate(self.up_levels):
            for j, block in enumerate(level.blocks):
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
                if level.attentions is not None:
                    h = level.attentions[j](h)
            if i < len(self.upsamples):
                h = self.upsamples[i](h)

        h = self.conv_out(F.silu(self.norm_out(h)))
        if cfg.pixel_unshuffle > 1:
            h = F.pixel_shuffle(h, cfg.pixel_unshuffle)
        return h.to(x.dtype)  # under autocast the convs return bf16


# --------------------------------------------------------------------------- MLP


class _MLPBlock(nn.Module):
    """h + fc2(SiLU(fc1(SiLU(LN(h))) + proj(temb)))."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.time_proj = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """h (B, hidden), temb (B, hidden) already through SiLU -> (B, hidden)."""
        y = self.fc1(F.silu(self.norm(h))) + self.time_proj(temb)
        return h + self.fc2(F.silu(y))


class MLPDenoiser(nn.Module):
    """Residual MLP. forward(x (B, dim), t (B,) or int) -> (B, dim)."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.time_mlp = nn.Sequential(
            nn.Linear(config.time_embed_dim, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, config.hidden),
        )
        self.inp = nn.Linear(config.dim, config.hidden)
        self.blocks = nn.ModuleList(_MLPBlock(config.hidden) for _ in range(config.layers))
        self.norm_out = nn.LayerNorm(config.hidden)
        self.out = nn.Linear(config.hidden, config.dim)
        nn.init.zeros_(self.out.weight)  # untrained net predicts exactly 0
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x (B, dim), t (B,) timestep indices or an int."""
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(
                f"MLPDenoiser expects x of shape (B, {self.config.dim}), got {tuple(x.shape)}"
            )
        t = _timesteps_as_tensor(t, x.shape[0], x.device)
        temb = F.silu(self.time_mlp(timestep_embedding(t, self.config.time_embed_dim)))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(F.silu(self.norm_out(h))).to(x.dtype)


# --------------------------------------------------------------------------- factory


def build_model(config: ModelConfig) -> nn.Module:
    """The network a config describes (fresh weights; load a state_dict for trained ones)."""
    if isinstance(config, UNetConfig):
        return UNet(config)
    if isinstance(config, MLPConfig):
        return MLPDenoiser(config)
    if isinstance(config, DiffusersUNetConfig):
        from diffusion_studio.core.diffusers_models import (
            DiffusersUNet,  # imports diffusers: only when needed
        )

        return DiffusersUNet(config)
    raise ConfigError(f"not a model config: {config!r}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
