"""Shared test set-up.

Tests use tiny models, for which one torch thread is fastest and is not disturbed by other
work on the machine (with two threads on two busy cores, OpenMP waits can cost 10x).
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def fails_at_step_4(monkeypatch):
    """Trainer steps 1-3 run; step 4 raises the TrainingError of a loss that became NaN."""
    from diffusion_studio.core.errors import TrainingError
    from diffusion_studio.core.training import Trainer

    good_step = Trainer._train_step

    def failing_step(trainer):
        if trainer.step == 3:
            raise TrainingError("the loss became nan at step 4: training is unstable.")
        return good_step(trainer)

    monkeypatch.setattr(Trainer, "_train_step", failing_step)
