"""Noise schedules: beta_t and everything derived from it.

Notation (Ho et al. 2020, "DDPM"), with timestep indices t = 0 .. T-1 as in diffusers:

    alpha_t    = 1 - beta_t
    alphabar_t = prod_{s <= t} alpha_s            (a cumulative PRODUCT, not a sum)
    x_t        = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps,   eps ~ N(0, I)   (DDPM eq. 4)
    SNR_t      = alphabar_t / (1 - alphabar_t)

Everything is computed in float64 and handed to callers in their dtype.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

import numpy as np
import torch

from diffusion_studio.core.errors import ConfigError

ScheduleKind = Literal["linear", "scaled_linear", "cosine", "sigmoid"]
SCHEDULE_KINDS: tuple[str, ...] = get_args(ScheduleKind)

MAX_TIMESTEPS = 100_000
COSINE_S = 0.008  # offset s of the squared-cosine schedule (Nichol & Dhariwal 2021, eq. 17)
COSINE_MAX_BETA = 0.999  # betas of the cosine schedule are capped here (ibid.)


@dataclass(frozen=True)
class ScheduleConfig:
    """How to build a `NoiseSchedule`.

    `betas`, when given, overrides `kind`, `beta_start` and `beta_end` (and sets T).
    `beta_start` / `beta_end` are ignored by the cosine kind.
    """

    kind: ScheduleKind = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    zero_terminal_snr: bool = False
    betas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.betas is not None:
            object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
            object.__setattr__(self, "num_timesteps", len(self.betas))
        _validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.betas is not None:
            data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScheduleConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"schedule config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown schedule setting(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        if values.get("betas") is not None:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


def _validate_config(config: ScheduleConfig) -> None:
    if config.kind not in SCHEDULE_KINDS:
        raise ConfigError(
            f"unknown schedule kind {config.kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}"
        )
    T = config.num_timesteps
    if isinstance(T, bool) or not isinstance(T, int):
        raise ConfigError(f"number of timesteps T must be an integer, got {T!r}")
    if T < 2:
        raise ConfigError(f"number of timesteps T = {T} is too small: use at least 2")
    if T > MAX_TIMESTEPS:
        raise ConfigError(f"number of timesteps T = {T} is too large: use at most {MAX_TIMESTEPS}")
    if config.betas is not None:
        betas = np.asarray(config.betas, dtype=np.float64)
        if not np.all(np.isfinite(betas)):
            raise ConfigError("explicit betas must be finite numbers")
        bad = np.flatnonzero((betas <= 0) | (betas >= 1))
        # Only the very last beta may be exactly 1 (zero terminal SNR).
        bad = [i for i in bad if not (i == len(betas) - 1 and betas[i] == 1.0)]
        if bad:
            i = bad[0]
            raise ConfigError(
                f"explicit beta[{i}] = {betas[i]!r} is out of range: every beta must lie in (0, 1)"
            )
        return
    if config.kind != "cosine":
        start, end = config.beta_start, config.beta_end
        for name, value in (("beta_start", start), ("beta_end", end)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{name} = {value} is out of range: it must lie in (0, 1)")
        if start > end:
            raise ConfigError(
                f"beta_start = {start} is larger than beta_end = {end}: betas must not decrease"
            )


def _betas_for_kind(config: ScheduleConfig) -> torch.Tensor:
    """beta_t for t = 0 .. T-1, float64, shape (T,)."""
    T = config.num_timesteps
    if config.betas is not None:
        return torch.tensor(config.betas, dtype=torch.float64)
    if config.kind == "linear":
        return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
    if config.kind == "scaled_linear":
        # Linear in sqrt(beta) (Stable Diffusion / latent diffusion).
        start, end = math.sqrt(config.beta_start), math.sqrt(config.beta_end)
        return torch.linspace(start, end, T, dtype=torch.float64) ** 2
    if config.kind == "sigmoid":
        # GeoDiff's sigmoid schedule: beta_start + (beta_end - beta_start) * sigmoid(-6 .. 6).
        x = torch.linspace(-6.0, 6.0, T, dtype=torch.float64)
        return torch.sigmoid(x) * (config.beta_end - config.beta_start) + config.beta_start
    # cosine: alphabar(u) = cos^2(((u + s) / (1 + s)) * pi / 2), u = t / T (Nichol & Dhariwal eq. 17),
    # beta_t = min(1 - alphabar(t+1) / alphabar(t), 0.999)
    u = torch.arange(T + 1, dtype=torch.float64) / T
    alphabar = torch.cos((u + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2
    return torch.clamp(1 - alphabar[1:] / alphabar[:-1], max=COSINE_MAX_BETA)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so that alphabar_{T-1} = 0 (Lin et al. 2024, Algorithm 1).

    sqrt(alphabar) is shifted so its last value is 0 and scaled so its first value is unchanged.
    """
    sqrt_alphabar = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_alphabar[0].clone(), sqrt_alphabar[-1].clone()
    sqrt_alphabar = (sqrt_alphabar - last) * first / (first - last)
    alphabar = sqrt_alphabar**2
    alphas = torch.cat([alphabar[:1], alphabar[1:] / alphabar[:-1]])
    return 1 - alphas


class NoiseSchedule:
    """beta_t, alpha_t, alphabar_t and SNR_t for t = 0 .. T-1 (float64 CPU tensors, shape (T,))."""

    def __init__(self, config: ScheduleConfig | None = None) -> None:
        self.config = config if config is not None else ScheduleConfig()
        betas = _betas_for_kind(self.config)
        if self.config.zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas: torch.Tensor = betas
        self.alphas: torch.Tensor = 1.0 - betas
        self.alphas_cumprod: torch.Tensor = torch.cumprod(self.alphas, dim=0)  # a PRODUCT
        self.sqrt_alphas_cumprod: torch.Tensor = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod: torch.Tensor = (1.0 - self.alphas_cumprod).sqrt()
        self.snr: torch.Tensor = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        self.log_snr: torch.Tensor = torch.log(self.snr)
        self._cache: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    @classmethod
    def from_kind(
        cls,
        kind: ScheduleKind = "linear",
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        zero_terminal_snr: bool = False,
    ) -> NoiseSchedule:
        return cls(ScheduleConfig(kind, num_timesteps, beta_start, beta_end, zero_terminal_snr))

    @property
    def num_timesteps(self) -> int:
        return self.config.num_timesteps

    def __len__(self) -> int:
        return self.num_timesteps

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.config!r})"

    def coefficient(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A (T,) coefficient table in `like`'s dtype and device, cached."""
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def check_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """t as a long tensor, all in 0 .. T-1 (ConfigError otherwise)."""
        t = torch.as_tensor(t, dtype=torch.long)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ConfigError(
                f"timestep out of range: got {int(t.min())}..{int(t.max())}, "
                f"valid are 0..{self.num_timesteps - 1}"
            )
        return t

    def _gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """coefficient[t] reshaped to broadcast over `like`: (B,) -> (B, 1, ..., 1)."""
        t = self.check_timesteps(t).to(like.device)
        values = self.coefficient(name, like)[t]
        return values.reshape(values.shape + (1,) * (like.dim() - values.dim()))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps  (DDPM eq. 4).

        x0, noise: (B, ...) ; t: (B,) timestep indices (or a scalar for all). Returns (B, ...).
        """
        return (
            self._gather("sqrt_alphas_cumprod", t, x0) * x0
            + self._gather("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v_t = sqrt(alphabar_t) eps - sqrt(1 - alphabar_t) x_0  (Salimans & Ho 2022, sec. 4)."""
        return (
            self._gather("sqrt_alphas_cumprod", t, x0) * noise
            - self._gather("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def table(self) -> dict[str, np.ndarray]:
        """Every curve as float64 numpy arrays of shape (T,), keyed as in the CSV export."""
        return {
            "t": np.arange(self.num_timesteps),
            "beta": self.betas.numpy().copy(),
            "alpha_bar": self.alphas_cumprod.numpy().copy(),
            "sqrt_alpha_bar": self.sqrt_alphas_cumprod.numpy().copy(),
            "sqrt_one_minus_alpha_bar": self.sqrt_one_minus_alphas_cumprod.numpy().copy(),
            "log_snr": self.log_snr.numpy().copy(),
        }
