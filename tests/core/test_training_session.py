"""The save policy of a training run (core.training_session): when to autosave, what the end
of a run (finished, stopped, interrupted, failed) saves, and that a failed write keeps the
model."""

from __future__ import annotations

import pytest
import torch

from diffusion_studio.core.checkpoint import load_checkpoint
from diffusion_studio.core.errors import ConfigError, TrainingError
from diffusion_studio.core.models import MLPConfig
from diffusion_studio.core.schedule import ScheduleConfig
from diffusion_studio.core.training import TrainConfig, Trainer
from diffusion_studio.core.training_session import AutosavePolicy, RunSaver


def tiny_trainer(max_steps: int = 10) -> Trainer:
    config = TrainConfig(
        data="moons",
        model=MLPConfig(hidden=16, layers=1),
        schedule=ScheduleConfig("linear", 50),
        prediction_type="epsilon",
        batch_size=16,
        max_steps=max_steps,
        max_minutes=None,
        num_points=128,
        device="cpu",
        preview_every=0,
        preview_interval_s=None,
    )
    return Trainer(config)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_policy_by_steps_or_seconds():
    every_3 = AutosavePolicy(every_steps=3)
    assert [s for s in range(1, 10) if every_3.due(s, 0.0)] == [3, 6, 9]
    assert not every_3.due(4, 1e9)  # steps given: time does not count
    minute = AutosavePolicy(every_s=60.0)
    assert not minute.due(1, 59.9) and minute.due(1, 60.0)
    never = AutosavePolicy(every_steps=None, every_s=None)
    assert not never.due(1000, 1e9)
    for bad in ({"every_steps": 0}, {"every_s": 0.0}, {"every_s": float("nan")}):
        with pytest.raises(ConfigError, match="autosave interval"):
            AutosavePolicy(**bad)


def test_autosave_when_due_and_the_end_saves_the_last_step(tmp_path):
    trainer = tiny_trainer(max_steps=7)
    clock = FakeClock()
    saver = RunSaver(trainer, tmp_path / "run.safetensors", AutosavePolicy(every_s=10.0), clock)
    saved_at = []
    for record in trainer.run():
        clock.now += 4.0  # a save every third step: 12 s, 24 s
        result = saver.autosave()
        if result is not None:
            assert result.error is None and result.path == saver.path
            saved_at.append((record.step, load_checkpoint(saver.path).training["step"]))
    assert saved_at == [(3, 3), (6, 6)]
    end = saver.save_run()
    assert (end.step, end.path) == (7, saver.path)
    assert load_checkpoint(saver.path).training["step"] == 7
    # the state on disk is not written again
    mtime = saver.path.stat().st_mtime_ns
    assert saver.save_run().path == saver.path and saver.path.stat().st_mtime_ns == mtime


def test_a_run_without_a_step_saves_nothing(tmp_path):
    saver = RunSaver(tiny_trainer(), tmp_path / "run.safetensors")
    result = saver.save_run()
    assert result.step == 0 and result.path is None and result.error is None
    assert not saver.path.exists()


def test_a_failed_run_saves_its_last_good_step(tmp_path, monkeypatch):
    trainer = tiny_trainer(max_steps=10)
    saver = RunSaver(trainer, tmp_path / "run.safetensors", AutosavePolicy(every_steps=2))
    good_step = Trainer._train_step

    def failing_step(self):
        if self.step == 3:  # raises before the optimizer step, as a non-finite loss does
            raise TrainingError("the loss became nan at step 4")
        return good_step(self)

    monkeypatch.setattr(Trainer, "_train_step", failing_step)
    with pytest.raises(TrainingError):
        for _record in trainer.run():
            saver.autosave()
    assert load_checkpoint(saver.path).training["step"] == 2  # the autosave at step 2
    result = saver.save_run()
    assert (result.step, result.path) == (3, saver.path)
    saved = load_checkpoint(saver.path)
    assert saved.training["step"] == 3
    for name, value in trainer.ema_model.state_dict().items():
        torch.testing.assert_close(saved.model_state[name], value)


def test_a_failed_write_keeps_the_model(tmp_path):
    trainer = tiny_trainer(max_steps=2)
    for _record in trainer.run():
        pass
    saver = RunSaver(trainer, tmp_path / "missing-folder" / "run.safetensors")
    result = saver.save_run()
    assert result.path is None and result.step == 2 and "does not exist" in result.error
    assert result.checkpoint.training["step"] == 2  # still in memory, to save elsewhere


def test_the_recorder_logs_steps_previews_and_the_end_once(tmp_path):
    from diffusion_studio.core.run_log import (
        EndRecord,
        PreviewRecord,
        RunHeader,
        StepRecord,
        read_log,
    )
    from diffusion_studio.core.training import TrainPreview
    from diffusion_studio.core.training_session import RunRecorder

    trainer = tiny_trainer(max_steps=3)
    path = tmp_path / "run.safetensors"
    recorder = RunRecorder(trainer, path, fresh=True)
    assert recorder.error is None
    for record in trainer.run():
        assert recorder.record(record) is None
    points = trainer.preview().samples
    assert recorder.record(TrainPreview(3, points, final=True)) is None
    assert recorder.end("finished") is None
    assert recorder.end("failed", "again") is None  # once only
    records = read_log(recorder.path)
    assert [type(r) for r in records] == [RunHeader, *[StepRecord] * 3, PreviewRecord, EndRecord]
    assert records[0].world_size == 1 and records[0].num_timesteps == 50
    assert records[-1] == EndRecord("finished", 3, "")
    assert (tmp_path / records[-2].png).exists()


def test_a_log_that_cannot_be_written_never_stops_training(tmp_path):
    from diffusion_studio.core.training_session import RunRecorder

    trainer = tiny_trainer(max_steps=2)
    recorder = RunRecorder(trainer, tmp_path / "missing" / "run.safetensors", fresh=True)
    assert recorder.error is not None and "metrics log" in recorder.error
    steps = [record.step for record in trainer.run() if recorder.record(record) is None]
    assert steps == [1, 2] and recorder.end("finished") is None


def test_a_log_that_fails_midway_says_so_once_and_stops(tmp_path, monkeypatch):
    from diffusion_studio.core import run_log
    from diffusion_studio.core.training_session import RunRecorder

    trainer = tiny_trainer(max_steps=4)
    recorder = RunRecorder(trainer, tmp_path / "run.safetensors", fresh=True)
    warnings = []
    for record in trainer.run():
        if record.step == 2:

            def full(self, record):
                raise run_log.RunLogError("cannot write the metrics log: the disk is full")

            monkeypatch.setattr(run_log.MetricsLogWriter, "write", full)
        warnings.append(recorder.record(record))
    assert warnings[0] is None and warnings[2:] == [None, None]
    assert "the disk is full" in warnings[1] and "stops here" in warnings[1]
    assert recorder.end("finished") is None
    monkeypatch.undo()
    lines = run_log.read_log(recorder.path)
    assert [type(r).__name__ for r in lines] == ["RunHeader", "StepRecord"]


def test_the_last_good_step_of_a_failed_step_resumes_the_exact_run(tmp_path, monkeypatch):
    straight = tiny_trainer(max_steps=6)
    for _record in straight.run():
        pass
    failing = tiny_trainer(max_steps=6)
    good_step_on = Trainer._step_on

    def step_on(self, drawn):
        if self.step == 3:  # after the batch was drawn: a peer failed, the loss became nan...
            raise TrainingError("the loss became nan at step 4")
        return good_step_on(self, drawn)

    monkeypatch.setattr(Trainer, "_step_on", step_on)
    with pytest.raises(TrainingError):
        for _record in failing.run():
            pass
    monkeypatch.undo()
    saved = RunSaver(failing, tmp_path / "run.safetensors").save_run()
    assert saved.step == 3
    resumed = Trainer(failing.config, resume=load_checkpoint(saved.path))
    for _record in resumed.run():
        pass
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=1e-6)
