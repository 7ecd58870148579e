"""`train` saves by core.training_session's policy: the last good step of a failed run, in-process
through the real entry point."""

from __future__ import annotations

import signal

import pytest

from diffusion_studio.app.cli import main
from diffusion_studio.core.checkpoint import load_checkpoint


@pytest.fixture(autouse=True)
def keep_sigterm():
    """`train` installs its own SIGTERM handler: give the test process its own back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


TRAIN = ["train", "--data", "moons", "--model-size", "small", "--steps", "10", "--batch-size", "8"]


def test_a_failed_run_saves_its_last_good_step(tmp_path, capsys, fails_at_step_4):
    out = tmp_path / "run.safetensors"
    assert main([*TRAIN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"saved the last good step (3) to {out}" in err
    assert "error: the loss became nan at step 4" in err
    assert load_checkpoint(out).training["step"] == 3


def test_a_failed_run_says_when_its_last_good_step_cannot_be_saved(
    tmp_path, capsys, fails_at_step_4, monkeypatch
):
    import diffusion_studio.core.training_session  # noqa: F401
    from diffusion_studio import core

    def refuse(path, ckpt):
        from diffusion_studio.core.errors import CheckpointError

        raise CheckpointError(f"cannot write '{path}': the disk is full")

    monkeypatch.setattr(core.training_session, "save_checkpoint", refuse)
    out = tmp_path / "run.safetensors"
    assert main([*TRAIN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the last good step (3) was not saved: cannot write" in err and "disk is full" in err
    assert "error: the loss became nan at step 4" in err and not out.exists()
