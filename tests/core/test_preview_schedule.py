"""When the trainer samples previews: every N steps, after every so many seconds of training
time (a fake clock, no sleeping), after the last step; each announced by the record before it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.models import build_model
from diffusion_studio.core.schedule import ScheduleConfig
from diffusion_studio.core.training import (
    TrainControl,
    Trainer,
    TrainPreview,
    TrainProgress,
    preset_config,
)


class FakeClock:
    """A clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def points_config(**overrides):
    values = dict(
        max_steps=12,
        max_minutes=None,
        device="cpu",
        num_points=256,
        batch_size=16,
        schedule=ScheduleConfig("cosine", 50),
        preview_every=1000,
        preview_count=8,
        preview_steps=3,
        preview_interval_s=30.0,
    )
    values.update(overrides)
    return preset_config("moons", "small", **values)


def timed_trainer(config, step_s: float, preview_s: float = 0.0, control=None) -> Trainer:
    """A trainer whose every step takes `step_s` and every preview `preview_s` on a fake clock."""
    clock = FakeClock()
    trainer = Trainer(config, control=control, clock=clock)
    train_step, preview = trainer._train_step, trainer.preview

    def slow_step():
        clock.now += step_s
        return train_step()

    def slow_preview(*args, **kwargs):
        clock.now += preview_s
        return preview(*args, **kwargs)

    trainer._train_step = slow_step
    trainer.preview = slow_preview
    return trainer


def preview_steps(records) -> list[tuple[int, bool]]:
    return [(r.step, r.final) for r in records if isinstance(r, TrainPreview)]


def assert_announced(records) -> None:
    """Each preview follows the progress record of its step, which says a preview follows."""
    for i, record in enumerate(records):
        if isinstance(record, TrainProgress):
            follows = i + 1 < len(records) and isinstance(records[i + 1], TrainPreview)
            assert record.preview_follows == follows, record.step
        else:
            before = records[i - 1]
            assert isinstance(before, TrainProgress) and before.step == record.step


def test_previews_come_after_every_30_s_of_training_and_after_the_last_step():
    records = list(timed_trainer(points_config(), step_s=7.0).run())
    # 7 s a step: 35 s of training at step 5, 70 s at step 10; step 12 is the last
    assert preview_steps(records) == [(5, False), (10, False), (12, True)]
    assert_announced(records)


def test_a_step_preview_restarts_the_time_interval():
    config = points_config(preview_every=4, max_steps=8)
    records = list(timed_trainer(config, step_s=10.0).run())
    # 30 s at step 3 (time), step 4 (steps), 30 s after step 4 at step 7, step 8 (steps, last)
    assert preview_steps(records) == [(3, False), (4, False), (7, False), (8, True)]
    assert_announced(records)


def test_slow_previews_stretch_the_interval_to_four_times_their_cost():
    config = points_config(max_steps=20)
    records = list(timed_trainer(config, step_s=10.0, preview_s=20.0).run())
    # the first after 30 s (step 3); it took 20 s, so the next waits 80 s (steps 11 and 19)
    assert preview_steps(records) == [(3, False), (11, False), (19, False), (20, True)]
    assert_announced(records)


def test_no_previews_when_they_are_off_and_steps_only_without_an_interval():
    off = list(timed_trainer(points_config(preview_every=0), step_s=60.0).run())
    assert preview_steps(off) == []
    assert not any(r.preview_follows for r in off)
    steps_only = points_config(preview_every=5, preview_interval_s=None)
    records = list(timed_trainer(steps_only, step_s=60.0).run())
    assert preview_steps(records) == [(5, False), (10, False), (12, True)]
    assert_announced(records)


def test_the_final_preview_samples_the_checkpoints_ema_weights():
    config = points_config(max_steps=6, ema_decay=0.9)
    trainer = timed_trainer(config, step_s=1.0)
    final = [r for r in trainer.run() if isinstance(r, TrainPreview)][-1]
    assert final.final and final.step == trainer.step == 6
    ckpt = trainer.checkpoint()
    saved = build_model(ckpt.model_config)
    saved.load_state_dict(ckpt.model_state)  # the weights Playback gets: the EMA model's
    trainer.ema_model = saved.eval()
    np.testing.assert_array_equal(trainer.preview().samples, final.samples)
    trainer.ema_model.load_state_dict(trainer.model.state_dict())  # the raw weights differ
    assert not np.array_equal(trainer.preview().samples, final.samples)


def test_stop_during_a_preview_gives_it_up():
    control = TrainControl()
    run = timed_trainer(points_config(), step_s=7.0, control=control).run()
    for record in run:
        if isinstance(record, TrainProgress) and record.preview_follows:
            control.cancel()
            break
    assert record.step == 5
    assert list(run) == []  # no preview, no further step


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True, "30"])
def test_a_bad_preview_interval_is_refused(bad):
    with pytest.raises(ConfigError, match="preview interval"):
        replace(points_config(), preview_interval_s=bad)
