"""Trainer: progress records, learning, pause/cancel, exact resume, failures."""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest
import torch

from diffusion_studio.core.checkpoint import for_sampling, load_checkpoint
from diffusion_studio.core.errors import ConfigError, TrainingError
from diffusion_studio.core.models import MLPConfig, UNetConfig
from diffusion_studio.core.schedule import ScheduleConfig
from diffusion_studio.core.training import (
    TrainConfig,
    TrainControl,
    Trainer,
    TrainPreview,
    TrainProgress,
    learning_rate_at,
    min_snr_weights,
    preset_config,
    resume_config,
)

TINY_UNET = UNetConfig(in_channels=1, image_size=28, channels=(8, 16), attention_heads=2)


def points_config(**overrides) -> TrainConfig:
    base = dict(
        data="moons",
        model=MLPConfig(hidden=32, layers=2),
        schedule=ScheduleConfig("linear", 100),
        prediction_type="epsilon",
        batch_size=64,
        learning_rate=3e-3,
        warmup_steps=5,
        max_steps=40,
        max_minutes=None,
        num_points=512,
        device="cpu",
    )
    base.update(overrides)
    return TrainConfig(**base)


def test_progress_records_and_loss_falls():
    records = list(Trainer(points_config(max_steps=150)).run())
    progress = [r for r in records if isinstance(r, TrainProgress)]
    assert [r.step for r in progress] == list(range(1, 151))
    first = progress[0]
    assert (
        first.total_steps == 150 and first.timesteps.shape == (64,) and first.losses.shape == (64,)
    )
    assert first.timesteps.min() >= 0 and first.timesteps.max() < 100
    assert progress[-1].fraction_done == 1.0 and progress[-1].eta_s == 0.0
    early = np.mean([r.loss for r in progress[:10]])
    late = np.mean([r.loss for r in progress[-10:]])
    assert late < 0.8 * early


def test_previews_come_every_n_steps_with_sample_shape():
    config = TrainConfig(
        data="digits",
        model=TINY_UNET,
        schedule=ScheduleConfig("cosine", 50),
        batch_size=8,
        max_steps=4,
        max_minutes=None,
        preview_every=2,
        preview_count=3,
        preview_steps=5,
        device="cpu",
    )
    previews = [r for r in Trainer(config).run() if isinstance(r, TrainPreview)]
    assert [p.step for p in previews] == [2, 4]
    assert previews[0].samples.shape == (3, 1, 28, 28)
    assert np.isfinite(previews[0].samples).all()


def test_learning_rate_warmup_and_cosine_decay():
    config = points_config(learning_rate=1.0 / 1000, warmup_steps=10)
    cosine = lambda f: 0.5 * (1 + math.cos(math.pi * f))  # noqa: E731
    assert learning_rate_at(config, 0, 0.0) == pytest.approx(1e-4)
    assert learning_rate_at(config, 9, 0.1) == pytest.approx(1e-3 * cosine(0.1))
    assert learning_rate_at(config, 50, 0.5) == pytest.approx(0.5e-3)
    assert learning_rate_at(config, 100, 1.0) == pytest.approx(0.0)


def test_learning_rate_does_not_jump_where_the_warmup_ends():
    """A run of 300 steps with 100 of warm-up: from step to step the rate changes by at most
    one warm-up increment (it used to drop by a quarter at step 100)."""
    config = points_config(learning_rate=3e-3, warmup_steps=100)
    rates = [learning_rate_at(config, s, s / 300) for s in range(300)]
    assert max(abs(b - a) for a, b in zip(rates, rates[1:])) <= 3e-3 / 100 + 1e-12
    assert max(rates) == pytest.approx(rates[99]) and rates[99] < 3e-3


def test_min_snr_weights():
    snr = torch.tensor([0.5, 5.0, 50.0])
    torch.testing.assert_close(min_snr_weights(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 0.1]))
    torch.testing.assert_close(
        min_snr_weights(snr, 5.0, "v"), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51])
    )
    torch.testing.assert_close(min_snr_weights(snr, 5.0, "x0"), torch.tensor([0.5, 5.0, 5.0]))
    torch.testing.assert_close(min_snr_weights(snr, None, "v"), torch.ones(3))


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_resume_continues_the_exact_same_run(tmp_path, prediction):
    config = points_config(prediction_type=prediction, max_steps=30, min_snr_gamma=5.0)
    straight = [r.loss for r in Trainer(config).run()]

    first = Trainer(config)
    losses = []
    for record in first.run():
        losses.append(record.loss)
        if record.step == 12:
            break
    path = tmp_path / "half.safetensors"
    first.save(path)
    ckpt = load_checkpoint(path)
    resumed = Trainer(resume_config(ckpt), resume=ckpt)
    assert resumed.step == 12
    losses += [r.loss for r in resumed.run()]
    np.testing.assert_allclose(losses, straight, rtol=1e-6, atol=1e-7)


def test_resume_of_unet_run_matches(tmp_path):
    config = TrainConfig(
        data="digits",
        model=TINY_UNET,
        schedule=ScheduleConfig("cosine", 100),
        batch_size=4,
        max_steps=6,
        max_minutes=None,
        device="cpu",
    )
    straight = Trainer(config)
    straight_losses = [r.loss for r in straight.run()]
    first = Trainer(config)
    losses = [r.loss for _, r in zip(range(3), first.run())]
    first.save(tmp_path / "u.safetensors")
    ckpt = load_checkpoint(tmp_path / "u.safetensors")
    resumed = Trainer(config, resume=ckpt)
    losses += [r.loss for r in resumed.run()]
    np.testing.assert_allclose(losses, straight_losses, rtol=1e-5)
    for name, value in straight.ema_model.state_dict().items():
        torch.testing.assert_close(
            resumed.ema_model.state_dict()[name], value, rtol=1e-5, atol=1e-6
        )


def test_resume_with_other_settings_is_refused(tmp_path):
    trainer = Trainer(points_config(max_steps=2))
    list(trainer.run())
    trainer.save(tmp_path / "a.safetensors")
    ckpt = load_checkpoint(tmp_path / "a.safetensors")
    with pytest.raises(ConfigError, match="prediction type"):
        Trainer(points_config(prediction_type="v"), resume=ckpt)


def test_cancel_stops_between_steps():
    control = TrainControl()
    trainer = Trainer(points_config(max_steps=1000), control=control)
    steps = []
    for record in trainer.run():
        steps.append(record.step)
        if record.step == 5:
            control.cancel()
    assert steps == [1, 2, 3, 4, 5]
    assert trainer.step == 5


class _WatchedControl(TrainControl):
    """A TrainControl that tells (an Event) when the trainer is waiting while paused."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait_while_paused(self, poll_s: float = 0.1) -> None:
        if self.is_paused:
            self.waiting.set()
        super().wait_while_paused(poll_s)


def test_pause_blocks_until_resumed():
    """Paused after step 2, the trainer waits before step 3 and takes no step until resumed
    (events and counts, no wall-clock window)."""
    control = _WatchedControl()
    trainer = Trainer(points_config(max_steps=4), control=control)
    seen = []

    def consume():
        for record in trainer.run():
            seen.append(record.step)
            if record.step == 2:
                control.pause()

    worker = threading.Thread(target=consume)
    worker.start()
    assert control.waiting.wait(timeout=60), "the trainer never waited while paused"
    assert seen == [1, 2] and trainer.step == 2 and control.is_paused
    control.resume()
    worker.join(timeout=60)
    assert not worker.is_alive() and seen == [1, 2, 3, 4]


def test_cancel_while_paused_returns():
    control = TrainControl()
    control.pause()
    control.cancel()
    assert list(Trainer(points_config(), control=control).run()) == []


def test_nan_loss_stops_with_message_and_keeps_last_good_weights():
    trainer = Trainer(points_config(max_steps=500))
    with pytest.raises(TrainingError, match="Lower the learning rate") as info:
        for record in trainer.run():
            if record.step == 3:
                # make the next step diverge, as a far too large learning rate would
                with torch.no_grad():
                    for p in trainer.model.parameters():
                        p.mul_(1e30)
    assert "step 4" in str(info.value)
    assert trainer.step == 3
    ckpt = trainer.checkpoint()
    assert all(torch.isfinite(v).all() for v in ckpt.model_state.values())


def fake_clock(step_s: float = 0.05):
    """A clock that advances `step_s` per call: each training step (timed by two calls) lasts
    `step_s` seconds of training time, whatever the machine's speed."""
    ticks = itertools.count()
    return lambda: next(ticks) * step_s


def test_time_budget_ends_the_run_after_its_training_time():
    """0.01 min = 0.6 s of training time at 0.05 s a step: exactly 12 steps."""
    config = points_config(max_steps=None, max_minutes=0.01)
    records = list(Trainer(config, clock=fake_clock()).run())
    assert [r.step for r in records] == list(range(1, 13))
    assert records[-1].fraction_done == 1.0 and records[5].fraction_done == pytest.approx(0.5)
    assert records[-1].elapsed_s == pytest.approx(0.6)
    assert records[-1].total_steps == 12


def test_resume_of_a_time_budget_run_spends_only_the_time_left(tmp_path):
    config = points_config(max_steps=None, max_minutes=0.01)
    straight = [r.loss for r in Trainer(config, clock=fake_clock()).run()]
    first = Trainer(config, clock=fake_clock())
    losses = [r.loss for _, r in zip(range(5), first.run())]
    first.save(tmp_path / "t.safetensors")
    ckpt = load_checkpoint(tmp_path / "t.safetensors")
    resumed = Trainer(resume_config(ckpt), resume=ckpt, clock=fake_clock())
    assert resumed.elapsed_s == pytest.approx(0.25)
    losses += [r.loss for r in resumed.run()]
    assert resumed.step == 12
    np.testing.assert_allclose(losses, straight, rtol=1e-6, atol=1e-7)


def test_resume_of_a_class_conditional_run_matches(tmp_path):
    """Labels and label dropout (drawn from the training generator) resume exactly, and
    resume_config rebuilds the class-conditional model from the checkpoint alone."""
    config = TrainConfig(
        data="digits",
        model=UNetConfig(
            in_channels=1, image_size=28, channels=(8, 16), attention_heads=2, num_classes=10
        ),
        schedule=ScheduleConfig("cosine", 100),
        batch_size=4,
        max_steps=6,
        max_minutes=None,
        class_conditional=True,
        label_dropout=0.5,
        device="cpu",
    )
    straight = [r.loss for r in Trainer(config).run()]
    first = Trainer(config)
    losses = [r.loss for _, r in zip(range(3), first.run())]
    first.save(tmp_path / "c.safetensors")
    ckpt = load_checkpoint(tmp_path / "c.safetensors")
    assert ckpt.model_config.num_classes == 10
    resumed_config = resume_config(ckpt)
    assert resumed_config.class_conditional and resumed_config.label_dropout == 0.5
    resumed = Trainer(resumed_config, resume=ckpt)
    losses += [r.loss for r in resumed.run()]
    np.testing.assert_allclose(losses, straight, rtol=1e-5)


def test_a_sampling_only_checkpoint_cannot_be_resumed(tmp_path):
    trainer = Trainer(points_config(max_steps=2))
    list(trainer.run())
    slim = for_sampling(trainer.checkpoint())
    assert not slim.can_resume
    with pytest.raises(ConfigError, match="sampling only"):
        Trainer(points_config(), resume=slim)
    with pytest.raises(ConfigError, match="no training state"):
        resume_config(slim)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(model=MLPConfig(hidden=16, layers=2)), "model differ"),
        (dict(schedule=ScheduleConfig("cosine", 100)), "schedule differ"),
        (dict(schedule=ScheduleConfig("linear", 50)), "schedule differ"),
    ],
)
def test_resume_with_another_model_or_schedule_is_refused(overrides, match):
    trainer = Trainer(points_config(max_steps=2))
    list(trainer.run())
    with pytest.raises(ConfigError, match=match):
        Trainer(points_config(**overrides), resume=trainer.checkpoint())


def test_previews_do_not_touch_the_training_random_generator():
    """The same run with and without previews takes the very same steps."""
    plain = [r.loss for r in Trainer(points_config(max_steps=12)).run()]
    config = points_config(
        max_steps=12, preview_every=3, preview_count=4, preview_steps=5, preview_interval_s=None
    )
    records = list(Trainer(config).run())
    assert [r.step for r in records if isinstance(r, TrainPreview)] == [3, 6, 9, 12]
    with_previews = [r.loss for r in records if isinstance(r, TrainProgress)]
    assert with_previews == plain


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory"),
    ],
)
def test_out_of_memory_in_a_step_says_so_with_the_batch_size(monkeypatch, error):
    trainer = Trainer(points_config(max_steps=10, batch_size=48))

    def step():
        raise error

    monkeypatch.setattr(trainer, "_train_step", step)
    with pytest.raises(TrainingError, match="out of memory at batch size 48: use a smaller batch"):
        list(trainer.run())
    assert trainer.step == 0


def test_other_runtime_errors_are_not_called_out_of_memory(monkeypatch):
    trainer = Trainer(points_config(max_steps=10))

    def step():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(trainer, "_train_step", step)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        list(trainer.run())


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(batch_size=0), "batch size"),
        (dict(learning_rate=-1e-3), "learning rate"),
        (dict(learning_rate=10.0), "too large"),
        (dict(max_steps=0), "steps"),
        (dict(max_steps=None, max_minutes=None), "steps or a time budget"),
        (dict(prediction_type="score"), "score"),
        (dict(ema_decay=1.0), "EMA"),
        (dict(device="tpu"), "tpu"),
    ],
)
def test_bad_settings_rejected(overrides, match):
    with pytest.raises(ConfigError, match=match):
        Trainer(points_config(**overrides))


def test_model_must_fit_data():
    with pytest.raises(ConfigError, match="MLP"):
        Trainer(points_config(data="digits"))
    with pytest.raises(ConfigError, match="28x28"):
        Trainer(points_config(data="digits", model=UNetConfig(image_size=32, channels=(8, 16))))


def test_presets_build():
    assert isinstance(preset_config("digits").model, UNetConfig)
    assert isinstance(preset_config("moons").model, MLPConfig)
    config = TrainConfig.from_dict(preset_config("swissroll").to_dict())
    assert config == preset_config("swissroll")
