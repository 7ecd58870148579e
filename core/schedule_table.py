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
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.export import save_csv
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig

CURVE_KEYS = ("beta", "alpha_bar", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "log_snr")


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


def schedule_columns(schedules: Sequence[NoiseSchedule]) -> dict[str, list[str]]:
    """The table's columns as text cells, name -> one cell per t = 0 .. (largest T) - 1."""
    if not schedules:
        raise ConfigError("no schedule to write")
    rows = max(s.num_timesteps for s in schedules)
    columns: dict[str, list[str]] = {"t": [str(t) for t in range(rows)]}
    prefixes = (
        [""]
        if len(schedules) == 1
        else [p + "_" for p in column_prefixes([s.config for s in schedules])]
    )
    for prefix, schedule in zip(prefixes, schedules):
        table = schedule.table()
        missing = [""] * (rows - schedule.num_timesteps)
        for key in CURVE_KEYS:
            columns[prefix + key] = [csv_cell(v) for v in table[key].tolist()] + missing
    return columns


def save_schedule_csv(path: str | os.PathLike[str], schedules: Sequence[NoiseSchedule]) -> Path:
    """Write one schedule, or a comparison of several, as the CSV table described above."""
    return save_csv(path, schedule_columns(schedules))
