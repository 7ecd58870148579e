"""Plot axes with ticks a learner can trust."""

from __future__ import annotations

import math

import pyqtgraph as pg


class IntegerAxis(pg.AxisItem):
    """A linear axis for counts (optimizer steps, timesteps): ticks only at whole numbers,
    never at 1.2 or 0.5, however far the view is zoomed in."""

    def tickValues(self, minVal, maxVal, size):  # noqa: N802, N803 (pyqtgraph's names)
        levels = []
        for spacing, values in super().tickValues(minVal, maxVal, size):
            whole = [v for v in values if abs(v - round(v)) < 1e-9]
            if spacing >= 1 and whole:
                levels.append((max(1.0, float(round(spacing))), whole))
        if not levels and math.isfinite(minVal) and math.isfinite(maxVal):
            first, last = math.ceil(minVal), math.floor(maxVal)
            if last - first <= 10:  # zoomed in to a few whole numbers: label each
                levels = [(1.0, [float(v) for v in range(first, last + 1)])]
        return levels


def use_integer_ticks(plot: pg.PlotWidget, side: str = "bottom") -> IntegerAxis:
    """Give `plot` an IntegerAxis on `side` (keeping the axis label)."""
    old = plot.getPlotItem().getAxis(side)
    axis = IntegerAxis(side)
    plot.setAxisItems({side: axis})
    label = old.labelText
    if label:
        axis.setLabel(label, units=old.labelUnits)
    return axis
