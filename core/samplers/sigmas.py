"""Noise levels as sigmas, shared by the Karras-style and the DPM / UniPC samplers.

sigma_t = sqrt((1 - alphabar_t) / alphabar_t): the noise-to-signal ratio of x_t, so that
x_t / sqrt(alphabar_t) = x_0 + sigma_t eps (Karras et al. 2022, eq. 1 with s(t) = 1). The
functions follow diffusers' schedulers (`_sigma_to_t`, `_convert_to_karras`) step for step,
in float64.
"""

from __future__ import annotations

import numpy as np

from diffusion_studio.core.schedule import NoiseSchedule

KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5 and Table 1
# diffusers' stand-in for alphabar_{T-1} = 0 on a zero-terminal-SNR schedule, where sigma would
# be infinite ("close to 0 without being 0"): fp16's smallest subnormal, sigma_max ~ 4096.
ZERO_SNR_ALPHABAR = 2.0**-24


def schedule_sigmas(schedule: NoiseSchedule) -> np.ndarray:
    """sigma_t for t = 0..T-1, float64 (T,), ascending; alphabar = 0 (zero terminal SNR) is
    read as 2^-24, as diffusers' sigma-based and multistep schedulers do."""
    alphabar = schedule.alphas_cumprod.double().numpy()
    alphabar = np.where(alphabar > 0, alphabar, ZERO_SNR_ALPHABAR)
    return np.sqrt((1.0 - alphabar) / alphabar)


def karras_sigmas(
    sigma_min: float, sigma_max: float, n: int, rho: float = KARRAS_RHO
) -> np.ndarray:
    """n sigmas from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho)
    (Karras et al. 2022, eq. 5), float64 (n,)."""
    ramp = np.linspace(0.0, 1.0, n)
    max_inv_rho, min_inv_rho = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) timesteps of the given sigmas: linear interpolation of t in log sigma
    between the two neighbouring table entries (diffusers' `_sigma_to_t`).

    sigma: float64 (n,); log_sigmas: log of `schedule_sigmas`, (T,). Returns float64 (n,).
    """
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0.0, 1.0)
    return ((1.0 - w) * low + w * high).reshape(np.shape(sigma))
