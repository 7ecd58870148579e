"""Every CLI training run writes a metrics log beside its checkpoint (core.run_log): a header,
a line per step, preview PNGs, and how it ended (finished, stopped by a signal, failed). Run
in-process through the real entry point, on a tiny model."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from PIL import Image

from diffusion_studio.app.cli import main
from diffusion_studio.core.checkpoint import load_checkpoint
from diffusion_studio.core.run_log import (
    EndRecord,
    PreviewRecord,
    RunHeader,
    StepRecord,
    metrics_log_path,
    read_log,
)
from diffusion_studio.core.training import Trainer

TRAIN = ["train", "--data", "moons", "--model-size", "small", "--batch-size", "8"]


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """`train` installs SIGINT/SIGTERM handlers while it trains: check it puts them back."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    after = {sig: signal.getsignal(sig) for sig in before}
    for sig, handler in before.items():
        signal.signal(sig, handler)
    assert after == before


def kinds(records) -> list[type]:
    return [type(r) for r in records]


def test_a_run_writes_header_steps_previews_and_end(tmp_path):
    out = tmp_path / "run.safetensors"
    assert main([*TRAIN, "--steps", "12", "--preview-every", "5", "--out", str(out)]) == 0
    log = metrics_log_path(out)
    assert log == tmp_path / "run.metrics.jsonl" and log.exists()
    lines = log.read_text().splitlines()
    assert all(json.loads(line)["kind"] for line in lines)  # JSON lines, each whole
    records = read_log(log)
    header, *body, end = records
    assert isinstance(header, RunHeader)
    assert (header.world_size, header.objective, header.start_step) == (1, "diffusion", 0)
    assert header.config["max_steps"] == 12 and header.checkpoint == "run.safetensors"
    assert end == EndRecord("finished", 12, "")
    steps = [r for r in body if isinstance(r, StepRecord)]
    assert [r.step for r in steps] == list(range(1, 13))
    ckpt = load_checkpoint(out)
    saved = dict(
        zip(ckpt.training_state["history/step"].tolist(), ckpt.training_state["history/loss"])
    )
    for r in steps:
        assert np.isfinite([r.loss, r.lr, r.grad_norm, r.images_per_s]).all()
        assert r.loss == pytest.approx(float(saved[r.step]), rel=1e-6)  # the checkpoint's curve
        assert len(r.loss_by_t) == header.t_bins
        assert any(v is not None for v in r.loss_by_t)
    previews = [r for r in body if isinstance(r, PreviewRecord)]
    assert [(p.step, p.final) for p in previews] == [(5, False), (10, False), (12, True)]
    for p in previews:
        png = tmp_path / p.png
        assert png.exists()
        with Image.open(png) as image:
            assert image.size[0] > 16 and np.asarray(image).std() > 0  # a scatter, not blank
    # each preview's line comes after its step's line
    order = [(type(r).__name__, r.step) for r in body]
    assert order.index(("PreviewRecord", 5)) == order.index(("StepRecord", 5)) + 1


def test_resuming_appends_and_a_fresh_run_replaces_the_log(tmp_path):
    out = tmp_path / "run.safetensors"
    assert main([*TRAIN, "--steps", "4", "--preview-every", "0", "--out", str(out)]) == 0
    assert (
        main(
            ["train", "--data", "moons", "--resume", str(out), "--steps", "6"]
            + ["--preview-every", "0", "--out", str(out)]
        )
        == 0
    )
    records = read_log(metrics_log_path(out))
    headers = [r for r in records if isinstance(r, RunHeader)]
    assert [h.start_step for h in headers] == [0, 4]
    assert [r.step for r in records if isinstance(r, StepRecord)] == [1, 2, 3, 4, 5, 6]
    assert [r.step for r in records if isinstance(r, EndRecord)] == [4, 6]
    assert not any(isinstance(r, PreviewRecord) for r in records)  # --preview-every 0
    assert main([*TRAIN, "--steps", "2", "--overwrite", "--out", str(out)]) == 0
    fresh = read_log(metrics_log_path(out))
    assert kinds(fresh)[0] is RunHeader and sum(isinstance(r, RunHeader) for r in fresh) == 1
    assert [r.step for r in fresh if isinstance(r, StepRecord)] == [1, 2]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_run_at_the_next_step_and_the_log_says_stopped(
    tmp_path, capsys, monkeypatch, signum
):
    good_step = Trainer._train_step

    def signalled_step(trainer):
        result = good_step(trainer)
        if trainer.step == 2:  # during step 3: as if Ctrl-C came while it computed
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(Trainer, "_train_step", signalled_step)
    out = tmp_path / "run.safetensors"
    assert main([*TRAIN, "--steps", "1000", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted: saved step 3 to {out}" in err
    assert load_checkpoint(out).training["step"] == 3
    records = read_log(metrics_log_path(out))
    assert [r.step for r in records if isinstance(r, StepRecord)] == [1, 2, 3]
    end = records[-1]
    assert isinstance(end, EndRecord) and (end.status, end.step) == ("stopped", 3)
    assert signal.Signals(signum).name in end.message


def test_a_failed_run_ends_its_log_with_the_error(tmp_path, capsys, fails_at_step_4):
    out = tmp_path / "run.safetensors"
    assert main([*TRAIN, "--steps", "10", "--out", str(out)]) == 2
    assert "saved the last good step (3)" in capsys.readouterr().err
    end = read_log(metrics_log_path(out))[-1]
    assert isinstance(end, EndRecord) and (end.status, end.step) == ("failed", 3)
    assert "the loss became nan at step 4" in end.message


def test_a_negative_preview_interval_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run.safetensors"
    assert main([*TRAIN, "--steps", "2", "--preview-every", "-1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["diffusion-studio: error: --preview-every must be >= 0 (0: no previews), got -1"]
    assert not out.exists() and not metrics_log_path(out).exists()
