"""Schedules panel: the plotted curves are the engine's, bad values are refused, exports work."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from diffusion_studio.app.panels.schedule_panel import CURVES, SchedulesPanel
from diffusion_studio.app.widgets import set_combo_data
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig


@pytest.fixture
def panel(show):
    return show(SchedulesPanel())


def plotted(panel, key):
    x, y = panel.curves[key].getOriginalDataset()
    return np.asarray(x), np.asarray(y)


def test_changing_the_schedule_redraws_the_engines_curves(panel, qtbot):
    with qtbot.waitSignal(panel.schedule_changed) as changed:
        set_combo_data(panel.kind, "cosine")
    panel.steps.setValue(250)
    config = ScheduleConfig("cosine", 250)
    assert changed.args[0].kind == "cosine"
    table = NoiseSchedule(config).table()
    for key, _, _ in CURVES:
        x, y = plotted(panel, key)
        np.testing.assert_array_equal(x, table["t"])
        finite = np.isfinite(table[key])
        np.testing.assert_allclose(y[finite], table[key][finite], rtol=1e-12)
    # alphabar_t is the cumulative PRODUCT of alpha_s
    _, alphabar = plotted(panel, "alpha_bar")
    np.testing.assert_allclose(alphabar, np.cumprod(1 - table["beta"]), rtol=1e-10)


def test_zero_terminal_snr_leaves_a_gap_instead_of_minus_infinity(panel):
    panel.zero_snr.setChecked(True)
    _, log_snr = plotted(panel, "log_snr")
    assert np.isnan(log_snr[-1]) and np.isfinite(log_snr[:-1]).all()


def test_beta_start_above_beta_end_is_refused_with_a_message(panel):
    before = plotted(panel, "beta")[1].copy()
    panel.beta_start.setValue(0.05)  # beta_end stays 0.02
    assert panel.error.isVisible() or panel.error.text()
    assert "beta_start" in panel.error.text()
    np.testing.assert_array_equal(plotted(panel, "beta")[1], before)
    assert panel.schedule.config.beta_start == pytest.approx(1e-4)


def test_comparison_overlays_and_readout(panel):
    panel.add_to_comparison()
    set_combo_data(panel.kind, "cosine")
    panel.add_to_comparison()
    assert len(panel.comparison) == 2
    assert len(panel.legend.items) == 3
    panel.set_hover_t(10)
    text = panel.readout.text()
    assert "t = 10" in text and "cosine" in text
    value = NoiseSchedule(ScheduleConfig("linear")).table()["alpha_bar"][10]
    assert f"{value:.5g}" in text
    panel.clear_comparison()
    assert panel.comparison == [] and len(panel.legend.items) == 1


def test_export_csv_and_plot(panel, tmp_path, fake_dialogs):
    csv_path = tmp_path / "curves.csv"
    fake_dialogs.paths.append(csv_path)
    panel.csv_button.click()
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    table = panel.schedule.table()
    assert len(rows) == panel.schedule.num_timesteps
    assert float(rows[500]["alpha_bar"]) == table["alpha_bar"][500]
    for suffix in ("png", "svg"):
        path = tmp_path / f"plot.{suffix}"
        fake_dialogs.paths.append(path)
        panel.plot_button.click()
        assert path.stat().st_size > 1000
    assert fake_dialogs.errors == []


def test_export_csv_holds_the_whole_comparison(panel, tmp_path, fake_dialogs):
    """One column set per schedule on the plots; log-SNR -inf (zero terminal SNR) is an empty
    cell, as the button's tooltip says."""
    panel.add_to_comparison()  # linear
    set_combo_data(panel.kind, "cosine")
    panel.zero_snr.setChecked(True)  # the current schedule, not kept
    path = tmp_path / "all.csv"
    fake_dialogs.paths.append(path)
    panel.csv_button.click()
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["t"] + [
        f"{name}_{key}" for name in ("cosine_zsnr", "linear") for key, _, _ in CURVES
    ]
    linear = NoiseSchedule(ScheduleConfig("linear")).table()
    assert float(rows[10]["linear_alpha_bar"]) == linear["alpha_bar"][10]
    assert rows[-1]["cosine_zsnr_log_snr"] == "" and rows[-1]["cosine_zsnr_alpha_bar"] == "0.0"
    assert all(row[key] != "" for row in rows[:-1] for key in row)
    assert "empty" in panel.csv_button.toolTip()


def test_cosine_says_it_has_no_beta_range_instead_of_freezing_it(panel):
    form = panel.schedule_box.layout()
    set_combo_data(panel.kind, "cosine")
    assert not form.isRowVisible(panel.beta_start) and not form.isRowVisible(panel.beta_end)
    assert form.isRowVisible(panel.range_note) and "no beta range" in panel.range_note.text()
    set_combo_data(panel.kind, "sigmoid")
    assert form.isRowVisible(panel.beta_start) and not form.isRowVisible(panel.range_note)


@pytest.mark.parametrize("screen", [(1280, 720), (1366, 768)])
def test_a_long_comparison_does_not_squeeze_the_plots(window, qtbot, screen):
    """Eight kept schedules and the hover readout at 1280x720: the readout scrolls, each of
    the five plots keeps a usable height."""
    panel = window.schedules
    window.resize(screen[0], screen[1] - 40)
    window.tabs.setCurrentWidget(panel)
    for steps in (1000, 500):
        for kind in ("linear", "scaled_linear", "sigmoid", "cosine"):
            set_combo_data(panel.kind, kind)
            panel.steps.setValue(steps)
            panel.add_to_comparison()
    panel.show_flow.setChecked(True)  # the flow path too, with its formulas
    panel.set_hover_t(100)
    qtbot.wait(50)
    assert len(panel.comparison) == 8
    assert panel.readout_area.height() <= 110
    assert panel.plots.height() >= 360
    for plot in panel.plot_items.values():
        assert plot.height() >= 100
    assert window.height() <= screen[1] - 40


def flow_plotted(panel, key):
    x, y = panel.flow_curves[key].getOriginalDataset()
    return np.asarray(x), np.asarray(y)


def test_flow_matching_is_drawn_beside_the_schedules_from_core_flow(panel):
    """The flow path on the current T: 1 - t, t and log-SNR on the signal, noise and log-SNR
    plots at index k (t = (k + 1) / T), FlowPath's own tables; beta and alphabar say it has none."""
    set_combo_data(panel.kind, "cosine")
    panel.steps.setValue(200)
    assert not any(item.isVisible() for item in panel.flow_curves.values())
    panel.show_flow.setChecked(True)
    flow = FlowPath(200).table()
    for key, flow_key in (
        ("sqrt_alpha_bar", "signal"),
        ("sqrt_one_minus_alpha_bar", "noise"),
        ("log_snr", "log_snr"),
    ):
        x, y = flow_plotted(panel, key)
        assert panel.flow_curves[key].isVisible()
        np.testing.assert_array_equal(x, np.arange(200))
        finite = np.isfinite(flow[flow_key])
        np.testing.assert_allclose(y[finite], flow[flow_key][finite], rtol=1e-12)
        assert np.isnan(y[~finite]).all()  # log-SNR -inf at t = 1: a gap
    np.testing.assert_allclose(
        flow_plotted(panel, "sqrt_alpha_bar")[1], 1 - (np.arange(200) + 1) / 200
    )
    assert "no beta_t" in panel.plot_items["beta"].titleLabel.text
    assert "no alphabar_t" in panel.plot_items["alpha_bar"].titleLabel.text
    assert panel.flow_label() in [label.text for _, label in panel.legend.items]
    assert panel.flow_formulas.isVisible() and "(1 - t) x_0 + t eps" in panel.flow_formulas.text()
    # the cosine curve stays the schedule's; the flow follows T
    _, cosine = plotted(panel, "log_snr")
    np.testing.assert_allclose(cosine, NoiseSchedule(ScheduleConfig("cosine", 200)).log_snr.numpy())
    panel.steps.setValue(50)
    np.testing.assert_allclose(
        flow_plotted(panel, "sqrt_one_minus_alpha_bar")[1], FlowPath(50).noise_coefficients.numpy()
    )
    panel.set_hover_t(24)
    assert "flow, t = 0.5" in panel.readout.text()
    panel.show_flow.setChecked(False)
    assert not any(item.isVisible() for item in panel.flow_curves.values())
    assert "flow" not in panel.plot_items["beta"].titleLabel.text
    assert not panel.flow_formulas.isVisible()
    assert len(panel.legend.items) == 1 and "flow" not in panel.readout.text()


def test_export_csv_with_flow_shown_has_flows_columns(panel, tmp_path, fake_dialogs):
    panel.steps.setValue(100)
    panel.show_flow.setChecked(True)
    path = tmp_path / "with_flow.csv"
    fake_dialogs.paths.append(path)
    panel.csv_button.click()
    with path.open() as f:
        rows = list(csv.DictReader(f))
    flow_columns = ["flow_time", "flow_signal", "flow_noise", "flow_log_snr"]
    assert list(rows[0]) == ["t"] + [f"linear_{key}" for key, _, _ in CURVES] + flow_columns
    flow = FlowPath(100)
    assert [float(r["flow_time"]) for r in rows] == flow.times.tolist()
    assert [float(r["flow_signal"]) for r in rows] == flow.signal_coefficients.tolist()
    assert [float(r["flow_log_snr"]) for r in rows[:-1]] == flow.log_snr[:-1].tolist()
    assert rows[-1]["flow_log_snr"] == ""  # t = 1: -inf
    assert fake_dialogs.errors == []
