"""The schedules' CSV table: one column set per schedule, empty cells where no value is finite."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from diffusion_studio.core.export import save_csv
from diffusion_studio.core.flow import FlowPath
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig
from diffusion_studio.core.schedule_table import (
    CURVE_KEYS,
    FLOW_CURVE_KEYS,
    column_prefixes,
    path_prefixes,
    save_schedule_csv,
    schedule_columns,
)


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_one_schedule_keeps_the_plain_column_names_and_values(tmp_path):
    schedule = NoiseSchedule(ScheduleConfig("linear", 100))
    save_schedule_csv(tmp_path / "new.csv", [schedule])
    save_csv(tmp_path / "old.csv", schedule.table())  # what the CLI wrote so far
    assert (tmp_path / "new.csv").read_text() == (tmp_path / "old.csv").read_text()


def test_log_snr_at_zero_snr_is_an_empty_cell_not_minus_infinity(tmp_path):
    schedule = NoiseSchedule(ScheduleConfig("cosine", 50, zero_terminal_snr=True))
    assert np.isneginf(schedule.table()["log_snr"][-1])
    rows = read(save_schedule_csv(tmp_path / "z.csv", [schedule]))
    assert rows[-1]["log_snr"] == "" and rows[-1]["alpha_bar"] == "0.0"
    assert "inf" not in (tmp_path / "z.csv").read_text()
    np.testing.assert_array_equal(
        [float(r["log_snr"]) for r in rows[:-1]], schedule.table()["log_snr"][:-1]
    )


def test_a_comparison_has_one_column_set_per_schedule(tmp_path):
    short = NoiseSchedule(ScheduleConfig("cosine", 3))
    long = NoiseSchedule(ScheduleConfig("linear", 5))
    rows = read(save_schedule_csv(tmp_path / "c.csv", [long, short]))
    assert list(rows[0]) == ["t"] + [f"{p}_{k}" for p in ("linear", "cosine") for k in CURVE_KEYS]
    assert [r["t"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert float(rows[2]["cosine_beta"]) == short.table()["beta"][2]
    assert all(rows[i][f"cosine_{k}"] == "" for i in (3, 4) for k in CURVE_KEYS)  # past T


def test_names_stay_short_and_become_distinct_only_where_needed():
    configs = [
        ScheduleConfig("linear", 1000),
        ScheduleConfig("linear", 500),
        ScheduleConfig("cosine", 1000, zero_terminal_snr=True),
        ScheduleConfig("sigmoid", 1000),
        ScheduleConfig("sigmoid", 1000, beta_end=0.03),
        ScheduleConfig("sigmoid", 1000, beta_end=0.03),
    ]
    assert column_prefixes(configs) == [
        "linear_T1000",
        "linear_T500",
        "cosine_zsnr",
        "sigmoid_T1000_0.0001to0.02",
        "sigmoid_T1000_0.0001to0.03",
        "sigmoid_T1000_0.0001to0.03_2",
    ]
    columns = schedule_columns([NoiseSchedule(c) for c in configs[:2]])
    assert len(columns) == 1 + 2 * len(CURVE_KEYS)


def test_a_flow_path_beside_a_schedule_writes_its_own_columns(tmp_path):
    """Flow matching has no beta or alphabar: time, signal (1 - t), noise (t), log-SNR."""
    cosine = NoiseSchedule(ScheduleConfig("cosine", 6))
    flow = FlowPath(4)
    rows = read(save_schedule_csv(tmp_path / "f.csv", [cosine, flow]))
    assert list(rows[0]) == ["t"] + [f"cosine_{k}" for k in CURVE_KEYS] + [
        f"flow_{k}" for k in FLOW_CURVE_KEYS
    ]
    assert [float(r["flow_time"]) for r in rows[:4]] == [0.25, 0.5, 0.75, 1.0]
    assert [float(r["flow_signal"]) for r in rows[:4]] == [0.75, 0.5, 0.25, 0.0]
    assert [float(r["flow_noise"]) for r in rows[:4]] == flow.noise_coefficients.tolist()
    assert float(rows[0]["flow_log_snr"]) == flow.log_snr[0].item()
    assert float(rows[0]["flow_log_snr"]) == pytest.approx(2 * np.log(3), rel=1e-15)
    assert rows[3]["flow_log_snr"] == ""  # t = 1: log-SNR -inf
    assert all(rows[i][f"flow_{k}"] == "" for i in (4, 5) for k in FLOW_CURVE_KEYS)  # past T


def test_one_flow_path_alone_keeps_plain_names_and_two_are_told_apart_by_t():
    columns = schedule_columns([FlowPath(3)])
    assert list(columns) == ["t", *FLOW_CURVE_KEYS]
    assert path_prefixes(
        [FlowPath(3), NoiseSchedule(ScheduleConfig("linear", 3)), FlowPath(5)]
    ) == [
        "flow_T3",
        "linear",
        "flow_T5",
    ]
    assert path_prefixes([FlowPath(3), FlowPath(3)]) == ["flow", "flow_2"]
