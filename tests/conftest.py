"""Shared test set-up.

Tests use tiny models, for which one torch thread is fastest and is not disturbed by other
work on the machine (with two threads on two busy cores, OpenMP waits can cost 10x).
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
