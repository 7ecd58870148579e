"""Noise schedules as one table: the CSV the Schedules panel and `diffusion-studio schedule`
write.

Columns: `t`, then for each schedule `beta`, `alpha_bar`, `sqrt_alpha_bar`,
`sqrt_one_minus_alpha_bar` and `log_snr` (`NoiseSchedule.table()`'s keys). One schedule keeps
these plain names; several (a comparison) get each schedule's name in front, e.g.
`t, linear_beta, linear_alpha_bar, ..., cosine_beta, ...`, named by `column_prefixes`.

A cell with no finite value is left empty: log SNR_t = log(alphabar_t / (1 - alphabar_t)) is
-inf where alphabar_t = 0 (the last step of a zero-terminal-SNR schedule), and a schedule with
fewer steps has no values past its last t. Spreadsheets and `pandas.read_csv` read an empty
cell as missing; the text "-inf" would turn the column into text in a spreadsheet.

A flow-matching path (core.flow.FlowPath, shown beside the schedules) has no beta_t and no
alphabar_t: it writes `time` (t_k = (k + 1) / T at row k), `signal` (1 - t_k), `noise` (t_k)
and `log_snr` (2 log((1 - t_k) / t_k)), `FlowPath.table()`'s keys, prefixed `flow_` in a
comparison (`flow_T<T>_` where two flow paths differ in T). Its `signal` and `noise` stand
beside a schedule's `sqrt_alpha_bar` and `sqrt_one_minus_alpha_bar`: both are x_t's weights.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import save_csv
from diffusion_studio.core.flow import FlowPath, ForwardPath
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig

CURVE_KEYS = ("beta", "alpha_bar", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "log_snr")
# A flow path's columns: FlowPath.table()'s keys, with t (the continuous time) written `time`
# so that it cannot be mistaken for the table's index column `t`.
FLOW_CURVE_KEYS = ("time", "signal", "noise", "log_snr")


def column_prefixes(configs: Sequence[ScheduleConfig]) -> list[str]:
    """A short, distinct name for each schedule: its kind (with `_zsnr` for a zero terminal
    SNR), and only where two would share a name, its T, then its beta range, then a number."""

    def name(config: ScheduleConfig, detail: int) -> str:
        parts = [config.kind + ("_zsnr" if config.zero_terminal_snr else "")]
        if detail >= 1:
            parts.append(f"T{config.num_timesteps}")
        if detail >= 2 and config.kind != "cosine":
            parts.append(f"{config.beta_start:g}to{config.beta_end:g}")
        return "_".join(parts)

    names = [name(c, 0) for c in configs]
    for detail in (1, 2):
        clashing = {n for n in names if names.count(n) > 1}
        names = [name(c, detail) if n in clashing else n for c, n in zip(configs, names)]
    seen: dict[str, int] = {}
    unique = []
    for n in names:  # the same schedule twice: number the repeats
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return unique


def csv_cell(value: float) -> str:
    """A float as its shortest round-trip text; no finite value -> an empty cell."""
    return repr(float(value)) if math.isfinite(value) else ""


def path_prefixes(paths: Sequence[ForwardPath]) -> list[str]:
    """Each path's column prefix in a comparison: a schedule's `column_prefixes` name, a flow
    path `flow` (`flow_T<T>` where flow paths of different T are shown; numbered repeats)."""
    schedules = [p for p in paths if isinstance(p, NoiseSchedule)]
    flows = [p for p in paths if isinstance(p, FlowPath)]
    schedule_names = iter(column_prefixes([s.config for s in schedules]))
    several_t = len({f.num_timesteps for f in flows}) > 1
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        if isinstance(path, FlowPath):
            name = f"flow_T{path.num_timesteps}" if several_t else "flow"
            seen[name] = seen.get(name, 0) + 1
            names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
        else:
            names.append(next(schedule_names))
    return names


def _path_table(path: ForwardPath) -> tuple[tuple[str, ...], dict]:
    """(column keys, table) of a schedule or a flow path (a flow's `t` renamed `time`)."""
    if isinstance(path, FlowPath):
        table = path.table()
        return FLOW_CURVE_KEYS, {"time": table["t"], **table}
    return CURVE_KEYS, path.table()


def schedule_columns(schedules: Sequence[ForwardPath]) -> dict[str, list[str]]:
    """The table's columns as text cells, name -> one cell per t = 0 .. (largest T) - 1.
    `schedules`: NoiseSchedules and flow paths (FlowPath), in column order."""
    if not schedules:
        raise ConfigError("no schedule to write")
    for path in schedules:
        if not isinstance(path, (NoiseSchedule, FlowPath)):
            raise ConfigError(f"cannot write {path!r}: not a noise schedule or a flow path")
    rows = max(s.num_timesteps for s in schedules)
    columns: dict[str, list[str]] = {"t": [str(t) for t in range(rows)]}
    prefixes = [""] if len(schedules) == 1 else [p + "_" for p in path_prefixes(schedules)]
    for prefix, schedule in zip(prefixes, schedules):
        keys, table = _path_table(schedule)
        missing = [""] * (rows - schedule.num_timesteps)
        for key in keys:
            columns[prefix + key] = [csv_cell(v) for v in table[key].tolist()] + missing
    return columns


def save_schedule_csv(path: str | os.PathLike[str], schedules: Sequence[ForwardPath]) -> Path:
    """Write one schedule (or flow path), or a comparison of several, as the CSV table
    described above."""
    return save_csv(path, schedule_columns(schedules))
