"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"), as diffusers' UniPCMultistepScheduler with its defaults: data prediction
(predict_x0), B(h) = e^h - 1 ("bh2"), lower-order final steps.

Each step i, with the network's x_0 estimate m_i at the state x_i:
  1. UniC (the corrector): the previous step's predictor went x_{i-1} -> x_i with the estimates
     it had; now that m_i is known, redo that step with m_i among them (one order higher, at no
     extra network evaluation): x_i^c. The network is not evaluated again at x_i^c.
  2. UniP-p (the predictor): x_i^c -> x_{i+1} from m_i and the p - 1 estimates before it.
Notation and the VP scale (x is x_t itself; lambda = log(alpha_t / sigma_t)) as in
`core.samplers.dpm_solver`, whose timesteps, noise levels and history UniPC shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.samplers.base import (
    PredictionType,
    SamplerSpec,
    StepOutput,
    option,
    register,
    unsupported_settings,
)
from diffusion_studio.core.samplers.dpm_solver import VPMultistepSampler
from diffusion_studio.core.schedule import NoiseSchedule


@dataclass(frozen=True)
class UniPCOptions:
    """solver_order: how many earlier x_0 estimates each step uses (UniP-p; the corrector
    UniC-p then reaches order p + 1)."""

    solver_order: int = option(
        2,
        "earlier x_0 estimates per step: 1 = DDIM + corrector, 2 (default), 3",
        minimum=1,
        maximum=3,
    )


def unipc_coefficients(
    h: float, rks: list[float], order: int
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The B(h) system of UniP-p / UniC-p for data prediction (Zhao et al. 2023, sec. 3; the
    phi-function recursion of diffusers' `multistep_uni_*_bh_update`).

    h = lambda_t - lambda_s0 > 0; rks (order - 1,): r_k = (lambda_{s_k} - lambda_s0) / h of the
    earlier points. Returns h phi_1 = e^{-h} - 1, B(h) = e^{-h} - 1 (bh2), and R (order, order)
    with rows r^0, r^1, ... (r = (*rks, 1)) and b (order,), b_k = k! h phi_{k+1} / B(h).
    """
    hh = -h  # data prediction integrates in -lambda
    h_phi_1 = math.expm1(hh)
    b_h = h_phi_1  # B2(h) = e^h - 1 in -lambda ("bh2")
    r = np.array([*rks, 1.0])
    rows, b = [], []
    h_phi_k = h_phi_1 / hh - 1.0
    factorial = 1
    for k in range(1, order + 1):
        rows.append(r ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, np.array(rows), np.array(b)


class UniPCSampler(VPMultistepSampler):
    """UniPC-p with B(h) = e^h - 1 on the x_0 estimates; deterministic, one evaluation a step."""

    round_karras_on_cosine: ClassVar[bool] = True

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        solver_order: int = 2,
        clip_sample: bool = False,
        clip_range: float = 1.0,
        karras: bool = False,
    ) -> None:
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            raise ConfigError(f"UniPC solver_order = {solver_order!r} must be 1, 2 or 3")
        self.solver_order = int(solver_order)
        self.history_length = self.solver_order
        self._last: tuple[torch.Tensor, float, int] | None = None  # x, sigma_t, order
        super().__init__(schedule, prediction_type, clip_sample, clip_range, karras)

    @classmethod
    def options_from_diffusers(cls, scheduler_config: dict[str, Any]) -> dict[str, Any]:
        order = scheduler_config.get("solver_order", 2)
        return {"solver_order": order} if order in (1, 2, 3) else {}

    @classmethod
    def diffusers_notes(cls, scheduler_config: dict[str, Any]) -> list[str]:
        """UniPCMultistepScheduler settings other than the variant implemented here."""
        return unsupported_settings(
            scheduler_config,
            {
                "solver_type": ("bh2",),
                "predict_x0": (True,),
                "lower_order_final": (True,),
                "disable_corrector": ([],),
                "final_sigmas_type": ("zero",),
                "solver_order": (2, 1, 3),
            },
        )

    def begin(self) -> None:
        """Forget the history and the sample the corrector would correct."""
        super().begin()
        self._last = None

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """x_i -> x_{i+1}: correct x_i with this step's x_0 estimate (UniC), then predict
        (UniP). model_output, x: (B, ...). Deterministic: generator and noise are unused."""
        alpha_s, sigma_s, lambda_s = self.vp(i)
        pred_x0, _ = self.denoise(model_output, alpha_s * alpha_s, x)
        # 1. UniC: the previous step x_prev -> x again, with this step's estimate added
        if self._last is not None and self.history and self.history[-1].lam != lambda_s:
            last_x, last_sigma, last_order = self._last
            x = self._update(last_x, last_sigma, alpha_s, sigma_s, lambda_s, last_order, pred_x0)
        # 2. UniP-p from the (corrected) x, with lower orders while the history fills up and
        #    at the end (diffusers' lower_order_final)
        self.remember(lambda_s, pred_x0)
        order = min(self.solver_order, len(self.timesteps) - i, len(self.history))
        self._last = (x, sigma_s, order)
        alpha_t, sigma_t, lambda_t = self.vp(i + 1)
        if sigma_t == 0:
            # the last step (first order, h = inf): x_{i+1} = 0 x - alpha (e^{-inf} - 1) m = m
            prev_sample = pred_x0.clone()
        elif lambda_t == lambda_s:
            prev_sample = x  # h = 0: the update is the identity
        else:
            prev_sample = self._update(x, sigma_s, alpha_t, sigma_t, lambda_t, order, None)
        return StepOutput(prev_sample, pred_x0)

    def _update(
        self,
        x: torch.Tensor,
        sigma_s: float,
        alpha_t: float,
        sigma_t: float,
        lambda_t: float,
        order: int,
        model_t: torch.Tensor | None,
    ) -> torch.Tensor:
        """One UniP-p step (model_t None) or UniC-p step (model_t: the x_0 estimate at t) from x
        at the newest history point s0 to lambda_t. The history holds the estimates m_k.

        x_t = (sigma_t / sigma_s0) x - alpha_t h phi_1 m0 - alpha_t B(h) sum_k rho_k D_k,
        D_k = (m_k - m0) / r_k for the earlier points (and D = m_t - m0 at r = 1 for UniC).
        UniP: rho solves R[:-1, :-1] rho = b[:-1] (rho = 1/2 at order 2); UniC: R rho = b
        (rho = 1/2 at order 1). (Zhao et al. 2023, sec. 3, UniP-p and UniC-p.)
        """
        s0 = self.history[-1]
        h = lambda_t - s0.lam
        earlier = self.history[-2::-1][: order - 1]  # s_1, s_2, ... newest first
        rks = [(p.lam - s0.lam) / h for p in earlier]
        h_phi_1, b_h, rows, b = unipc_coefficients(h, rks, order)
        x_t = (sigma_t / sigma_s) * x - (alpha_t * h_phi_1) * s0.x0
        corrections: list[tuple[float, torch.Tensor]] = []
        if model_t is None:
            if order >= 2:
                rhos = [0.5] if order == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1]).tolist()
                corrections = [
                    (rho, (p.x0 - s0.x0) / r) for rho, p, r in zip(rhos, earlier, rks, strict=False)
                ]
        else:
            rhos = [0.5] if order == 1 else np.linalg.solve(rows, b).tolist()
            corrections = [
                (rho, (p.x0 - s0.x0) / r) for rho, p, r in zip(rhos, earlier, rks, strict=False)
            ]
            corrections.append((rhos[-1], model_t - s0.x0))
        if corrections:
            total = sum(rho * d for rho, d in corrections)
            x_t = x_t - (alpha_t * b_h) * total
        return x_t


UNIPC = register(
    SamplerSpec(
        name="unipc",
        label="UniPC",
        help="predictor-corrector multistep solver: each step corrects the last with the new "
        "estimate at no extra cost; good samples in 10-20 steps (Zhao et al. 2023)",
        sampler_class=UniPCSampler,
        options_class=UniPCOptions,
        diffusers_classes=("UniPCMultistepScheduler",),
        deterministic=True,
        karras=True,
        default_steps=20,
        paper="Zhao et al. 2023, UniPC: A Unified Predictor-Corrector Framework for Fast "
        "Sampling of Diffusion Models",
    )
)
