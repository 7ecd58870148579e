"""The timestep inspector on a flow-matching model: x_t, the velocity, x_0, eps and the losses
at t = (k + 1) / T against direct arithmetic on core.flow's path."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_studio.core.checkpoint import Checkpoint
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.inspect import (
    InspectSetup,
    inspect_at,
    inspect_curve,
    save_curve_csv,
    seeded_noise,
    setup_from_checkpoint,
)
from diffusion_studio.core.inspect_render import render_row, row_title
from diffusion_studio.core.models import build_model
from diffusion_studio.core.schedule import ScheduleConfig
from tests.core.test_inspect import TINY, image, tiny_model


class VelocityOracle(nn.Module):
    """Outputs exactly the flow's target eps - x_0 (written out here), whatever it is given."""

    def __init__(self, x0: torch.Tensor, eps: torch.Tensor):
        super().__init__()
        self.x0, self.eps = x0, eps

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (self.eps - self.x0).expand_as(x).float()


def test_a_perfect_flow_model_has_no_error():
    path = FlowPath(40)
    x0, eps = image(), seeded_noise((1, 8, 8), 3)
    setup = InspectSetup(VelocityOracle(x0, eps), path, "velocity", x0, eps)
    for k in (0, 9, 19, 38):
        t = (k + 1) / 40
        record = inspect_at(setup, k)
        assert record.t == k and record.time == pytest.approx(t) and record.is_flow
        expected_x_t = (1 - t) * x0.numpy() + t * eps.numpy()
        np.testing.assert_allclose(record.x_t, expected_x_t, atol=1e-6)
        np.testing.assert_allclose(record.pred_x0, x0.numpy(), atol=1e-5)
        np.testing.assert_allclose(record.pred_noise, eps.numpy(), atol=1e-5)
        assert record.loss < 1e-12 and record.x0_mse < 1e-10 and record.eps_mse < 1e-10
        assert record.log_snr == pytest.approx(2 * np.log((1 - t) / t))


def test_a_flow_model_is_inspected_on_its_path():
    """A random tiny UNet: its velocity at t T on (1 - t) x_0 + t eps gives x_0 = x_t - t v and
    eps = x_t + (1 - t) v; the loss is the velocity MSE, as the flow trainer computes it."""
    model = tiny_model(seed=2)
    x0, eps = image(4), seeded_noise((1, 8, 8), 5)
    setup = InspectSetup(model, FlowPath(30), "velocity", x0, eps)
    k = 11
    t = (k + 1) / 30
    record = inspect_at(setup, k)
    x_t = (1 - t) * x0 + t * eps
    with torch.no_grad():
        v = model(x_t[None], torch.tensor([t * 30], dtype=torch.float32))[0]
    pred_x0, pred_eps = x_t - t * v, x_t + (1 - t) * v
    np.testing.assert_allclose(record.x_t, x_t.numpy(), atol=1e-6)
    np.testing.assert_allclose(record.pred_x0, pred_x0.numpy(), atol=1e-5)
    np.testing.assert_allclose(record.pred_noise, pred_eps.numpy(), atol=1e-5)
    assert record.loss == pytest.approx(float(((v - (eps - x0)) ** 2).mean()), rel=1e-5)
    assert record.x0_mse == pytest.approx(float(((pred_x0 - x0) ** 2).mean()), rel=1e-5)
    assert record.eps_mse == pytest.approx(float(((pred_eps - eps) ** 2).mean()), rel=1e-5)
    assert record.prediction_type == "velocity"
    assert record.loss > 1e-3  # the random net is wrong: the numbers are not trivially zero
    title = row_title(record)
    assert f"t = {t:.4g} (k = {k})" in title and "loss (velocity)" in title
    assert render_row(record, panel_px=16).dtype == np.uint8


def test_a_flow_curve_has_the_paths_log_snr(tmp_path):
    path = FlowPath(17)
    setup = InspectSetup(tiny_model(seed=1), path, "velocity", image(), seeded_noise((1, 8, 8), 0))
    curve = inspect_curve(setup, batch_size=5)
    np.testing.assert_array_equal(curve.t, np.arange(17))
    np.testing.assert_array_equal(curve.log_snr, path.log_snr.numpy())
    singles = [inspect_at(setup, k) for k in range(17)]
    for name in ("loss", "x0_mse", "eps_mse"):
        np.testing.assert_allclose(
            [getattr(r, name) for r in singles], getattr(curve, name), rtol=1e-5
        )
    with save_curve_csv(tmp_path / "flow.csv", curve).open() as f:
        rows = list(csv.reader(f))
    assert rows[-1][1] == ""  # t = 1: log-SNR -inf, an empty cell
    assert float(rows[1][1]) == pytest.approx(2 * np.log(16))
    for k in (-1, 17):
        with pytest.raises(ConfigError, match="0..16"):
            inspect_at(setup, k)


def test_setup_from_a_flow_checkpoint_uses_the_flow_path():
    model = build_model(TINY)
    ckpt = Checkpoint(
        TINY,
        ScheduleConfig("cosine", 25),
        "velocity",
        model.state_dict(),
        objective="flow",
    )
    setup = setup_from_checkpoint(ckpt, image().numpy(), seed=2)
    assert isinstance(setup.schedule, FlowPath) and setup.num_timesteps == 25
    assert setup.is_flow and setup.prediction_type == "velocity"
