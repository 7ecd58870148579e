"""Data-parallel `train` under torchrun with 2 CPU processes (gloo), as a user starts it:
`torchrun --standalone --nproc_per_node 2 $(which diffusion-studio) train ...`.

Two processes train the weights one process does (global batch split across them), rank 0
alone writes the checkpoint (world_size in its metadata) and the metrics log, a run resumes
with another world size, a batch that does not split is refused in one line, Ctrl-C stops
every process and saves once, and a failing rank ends the run instead of hanging it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffusion_studio.core.checkpoint import Checkpoint, load_checkpoint
from diffusion_studio.core.run_log import (
    EndRecord,
    PreviewRecord,
    RunHeader,
    StepRecord,
    metrics_log_path,
    read_log,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240  # a hung rendezvous or collective fails the test instead of hanging it
RUN = ["--data", "moons", "--batch-size", "64", "--seed", "0"]


def entry_point() -> list[str]:
    """The console script, as `$(which diffusion-studio)` gives it (the module otherwise)."""
    script = Path(sys.executable).with_name("diffusion-studio")
    found = script if script.exists() else shutil.which("diffusion-studio")
    return [str(found)] if found else ["-m", "diffusion_studio.app.cli"]


def environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), QT_QPA_PLATFORM="offscreen")


def torchrun_command(*args: str, script: list[str] | None = None) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc_per_node", "2", *(script or entry_point()), *args]


def torchrun(*args: str, cwd: Path, script: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_command(*args, script=script),
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def single(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diffusion_studio.app.cli", *args],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def assert_same_weights(a: Checkpoint, b: Checkpoint, atol: float = 1e-4) -> None:
    """Every raw and EMA weight of a and b equal within atol."""
    raw = [k for k in a.training_state if k.startswith("raw/")]
    assert raw and sorted(raw) == sorted(k for k in b.training_state if k.startswith("raw/"))
    for name in raw:
        torch.testing.assert_close(
            a.training_state[name], b.training_state[name], atol=atol, rtol=0
        )
    assert a.model_state.keys() == b.model_state.keys()
    for name, value in a.model_state.items():
        torch.testing.assert_close(value, b.model_state[name], atol=atol, rtol=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """one.safetensors (1 process) and two.safetensors (2 processes): 50 steps, same flags."""
    folder = tmp_path_factory.mktemp("ddp")
    result = single("train", *RUN, "--steps", "50", "--out", "one.safetensors", cwd=folder)
    assert result.returncode == 0, result.stderr
    result = torchrun("train", *RUN, "--steps", "50", "--out", "two.safetensors", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote two.safetensors") == 1  # rank 0 alone reports
    return folder


def test_two_processes_train_the_weights_of_one(runs):
    one, two = load_checkpoint(runs / "one.safetensors"), load_checkpoint(runs / "two.safetensors")
    assert one.training["step"] == two.training["step"] == 50
    assert (one.training["world_size"], two.training["world_size"]) == (1, 2)
    assert two.training["config"]["batch_size"] == 64  # the global batch
    assert_same_weights(one, two)


@pytest.mark.parametrize(
    "flags",
    [
        ["--data", "moons", "--objective", "flow", "--batch-size", "32", "--steps", "20"],
        # a class-conditional UNet: the dropped labels are drawn for the global batch too
        ["--data", "digits", "--batch-size", "16", "--steps", "6"],
    ],
    ids=["flow", "class-conditional-digits"],
)
def test_two_processes_train_flow_and_labelled_models_like_one(tmp_path, flags):
    common = ["train", *flags, "--model-size", "small", "--preview-every", "0"]
    result = single(*common, "--out", "one.safetensors", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = torchrun(*common, "--out", "two.safetensors", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    one, two = (
        load_checkpoint(tmp_path / "one.safetensors"),
        load_checkpoint(tmp_path / "two.safetensors"),
    )
    assert one.objective == two.objective and two.training["world_size"] == 2
    assert_same_weights(one, two)


def test_rank_0_writes_the_metrics_log_beside_the_checkpoint(runs):
    records = read_log(metrics_log_path(runs / "two.safetensors"))
    header, end = records[0], records[-1]
    assert isinstance(header, RunHeader) and header.world_size == 2
    assert end == EndRecord("finished", 50, "")
    steps = [r for r in records if isinstance(r, StepRecord)]
    assert [r.step for r in steps] == list(range(1, 51))  # one line per step: rank 0 alone
    # the loss is the global batch's: the one-process run logged the same numbers
    one = [
        r for r in read_log(metrics_log_path(runs / "one.safetensors")) if isinstance(r, StepRecord)
    ]
    assert [r.loss for r in steps] == pytest.approx([r.loss for r in one], abs=1e-4)
    for mine, theirs in zip(steps, one):
        assert [v is None for v in mine.loss_by_t] == [v is None for v in theirs.loss_by_t]
    previews = [r for r in records if isinstance(r, PreviewRecord)]
    assert [(p.step, p.final) for p in previews] == [(50, True)]
    assert (runs / previews[0].png).exists()


def test_a_run_resumes_with_another_world_size(runs):
    shutil.copy(runs / "one.safetensors", runs / "one-on-two.safetensors")
    shutil.copy(runs / "two.safetensors", runs / "two-on-one.safetensors")
    more = ["--steps", "60"]
    result = torchrun(
        "train",
        "--data",
        "moons",
        "--resume",
        "one-on-two.safetensors",
        *more,
        "--out",
        "one-on-two.safetensors",
        cwd=runs,
    )
    assert result.returncode == 0, result.stderr
    result = single(
        "train",
        "--data",
        "moons",
        "--resume",
        "two-on-one.safetensors",
        *more,
        "--out",
        "two-on-one.safetensors",
        cwd=runs,
    )
    assert result.returncode == 0, result.stderr
    a, b = (
        load_checkpoint(runs / "one-on-two.safetensors"),
        load_checkpoint(runs / "two-on-one.safetensors"),
    )
    assert a.training["step"] == b.training["step"] == 60
    assert (a.training["world_size"], b.training["world_size"]) == (2, 1)
    assert_same_weights(a, b)  # the same run, whichever way its parts were split


def test_a_batch_that_does_not_split_is_refused_in_one_line(tmp_path):
    result = torchrun(
        "train",
        "--data",
        "moons",
        "--steps",
        "5",
        "--batch-size",
        "63",
        "--out",
        "bad.safetensors",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("diffusion-studio:")]
    assert ours == [
        "diffusion-studio: error: batch size 63 does not split evenly across 2 processes: "
        "use a multiple of 2"
    ]
    assert not (tmp_path / "bad.safetensors").exists()


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)


def worker_of_rank(torchrun_pid: int, rank: int, seconds: float = 30) -> int:
    """The pid of the worker of `rank` that torchrun (`torchrun_pid`) started (Linux /proc)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"PPid:\t{torchrun_pid}\n" in status and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no worker of rank {rank} under torchrun {torchrun_pid}")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm-to-rank-1"])
def test_a_signal_stops_every_process_and_rank_0_saves_once(tmp_path, how):
    if how == "sigterm-to-rank-1" and not sys.platform.startswith("linux"):
        pytest.skip("finds the worker through /proc")
    out = tmp_path / "run.safetensors"
    proc = subprocess.Popen(
        torchrun_command(
            "train", *RUN, "--steps", "1000000", "--save-every", "20", "--out", str(out)
        ),
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job is
        # a test run started in the background inherits SIGINT ignored: a terminal's Ctrl-C
        # finds the default disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for(out, proc)
        assert out.exists(), "training never saved"
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # every process of the job gets it
        else:
            os.kill(worker_of_rank(proc.pid, 1), signal.SIGTERM)  # one process only
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert err.count("interrupted: saved step") == 1, err
    assert "diffusion-studio: error" not in err
    records = read_log(metrics_log_path(out))
    ends = [r for r in records if isinstance(r, EndRecord)]
    assert len(ends) == 1 and ends[0].status == "stopped", err
    last_step = [r.step for r in records if isinstance(r, StepRecord)][-1]
    assert ends[0].step == last_step == load_checkpoint(out).training["step"] >= 20


FAILING_RANK = """
import os
import sys

from diffusion_studio.core.errors import DataError
from diffusion_studio.core.training import Trainer

good_step = Trainer._train_step


def failing_step(trainer):
    if os.environ["RANK"] == "1" and trainer.step == 25:
        raise DataError("the data disk went away")
    return good_step(trainer)


Trainer._train_step = failing_step
from diffusion_studio.app.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_a_failing_rank_ends_the_run_with_its_message(tmp_path):
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    out = tmp_path / "run.safetensors"
    result = torchrun(
        "train",
        *RUN,
        "--steps",
        "100000",
        "--save-every",
        "20",
        "--out",
        str(out),
        cwd=tmp_path,
        script=[str(script)],
    )
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("diffusion-studio:")]
    assert len(ours) == 2, result.stderr
    assert ours[0] == "diffusion-studio: error: rank 1: the data disk went away"
    # rank 0 says what it means for the run
    assert ours[1].startswith("diffusion-studio: error: another process of the data-parallel run")
    assert ours[1].endswith(f"; saved the last good step (25) to {out}")
    # rank 1 failed before its step 26, so rank 0's step 26 never completed
    assert load_checkpoint(out).training["step"] == 25
    end = read_log(metrics_log_path(out))[-1]
    assert isinstance(end, EndRecord) and (end.status, end.step) == ("failed", 25)


def test_a_rank_that_stops_answering_fails_the_run_after_the_timeout(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("finds the worker through /proc")
    out = tmp_path / "run.safetensors"
    # torchrun waits this long for the frozen worker to end before it kills it
    env = dict(environment(), TORCH_ELASTIC_SHUTDOWN_TIMEOUT="2")
    proc = subprocess.Popen(
        torchrun_command(
            "train",
            *RUN,
            "--steps",
            "1000000",
            "--save-every",
            "20",
            "--ddp-timeout",
            "5",
            "--out",
            str(out),
        ),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(out, proc)
        assert out.exists(), "training never saved"
        os.kill(worker_of_rank(proc.pid, 1), signal.SIGSTOP)  # alive, but never answers
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("diffusion-studio:")]
    assert len(ours) == 1, err
    assert "another process of the data-parallel run failed or stopped answering" in ours[0]
    assert "; saved the last good step (" in ours[0]
    end = read_log(metrics_log_path(out))[-1]
    assert isinstance(end, EndRecord) and end.status == "failed"
    # a whole step: the one the log ended at
    assert load_checkpoint(out).training["step"] == end.step >= 20
