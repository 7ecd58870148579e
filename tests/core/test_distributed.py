"""core.distributed without torchrun: the environment it reads, the single-process context
(torch.distributed untouched), the split of a global batch, and a real one-process gloo group
(the collectives and a DDP-wrapped Trainer training the same weights as a plain one)."""

from __future__ import annotations

import socket

import pytest
import torch

from diffusion_studio.core.distributed import (
    DistributedContext,
    DistributedError,
    check_batch_split,
    init_distributed,
    is_collective_failure,
    torchrun_environment,
)
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.models import MLPConfig
from diffusion_studio.core.schedule import ScheduleConfig
from diffusion_studio.core.training import TrainConfig, Trainer

TORCHRUN = {
    "RANK": "1",
    "LOCAL_RANK": "0",
    "WORLD_SIZE": "2",
    "MASTER_ADDR": "10.0.0.5",
    "MASTER_PORT": "29500",
}


def test_the_environment_torchrun_sets():
    assert torchrun_environment({}) is None  # a plain process
    env = torchrun_environment(TORCHRUN)
    assert env is not None
    assert (env.rank, env.local_rank, env.world_size) == (1, 0, 2)
    assert (env.master_addr, env.master_port) == ("10.0.0.5", 29500)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"RANK": None}, "RANK not"),
        ({"RANK": "2"}, "inconsistent: RANK=2"),
        ({"WORLD_SIZE": "two"}, "not understood"),
        ({"LOCAL_RANK": "-1"}, "inconsistent"),
    ],
)
def test_a_broken_environment_is_refused(change, needle):
    env = {k: v for k, v in {**TORCHRUN, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=needle):
        torchrun_environment(env)


def test_without_torchrun_one_process_and_no_process_group():
    context = init_distributed("cpu", environ={})
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    assert not context.is_distributed and context.device == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    values = torch.arange(6.0).reshape(2, 3)
    assert context.gather_batch(values) is values
    assert context.agree(0.25, True) == (0.25, True)
    context.barrier()
    context.close()
    assert not torch.distributed.is_initialized()


def test_a_global_batch_splits_into_equal_contiguous_parts():
    parts = [DistributedContext(rank=r, world_size=4).part(64) for r in range(4)]
    assert parts == [(0, 16), (16, 32), (32, 48), (48, 64)]
    check_batch_split(7, 1)  # one process takes any batch
    with pytest.raises(ConfigError, match="batch size 63 does not split evenly across 2 processes"):
        DistributedContext(rank=0, world_size=2).part(63)


def test_collective_failures_are_told_from_other_errors():
    assert is_collective_failure(RuntimeError("[gloo/transport/tcp/pair.cc] Connection closed"))
    assert is_collective_failure(torch.distributed.DistBackendError("NCCL error"))
    assert not is_collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_process_group(monkeypatch):
    """A real gloo process group of one rank, as `torchrun --nproc-per-node 1` would make."""
    env = {**TORCHRUN, "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(_free_port())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    context = init_distributed("cpu", timeout_s=60)
    yield context
    context.close()


def tiny_config(**overrides) -> TrainConfig:
    values = dict(
        data="moons",
        model=MLPConfig(hidden=16, layers=1),
        schedule=ScheduleConfig("linear", 50),
        prediction_type="epsilon",
        batch_size=16,
        max_steps=6,
        max_minutes=None,
        num_points=128,
        device="cpu",
        preview_every=0,
        preview_interval_s=None,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.slow
def test_a_one_process_group_gathers_agrees_and_trains_like_no_group(one_process_group):
    context = one_process_group
    assert (
        context.is_distributed and context.backend == "gloo" and torch.distributed.is_initialized()
    )
    values = torch.arange(6.0).reshape(2, 3)
    torch.testing.assert_close(context.gather_batch(values), values)
    assert context.agree(0.5, False) == (0.5, False)
    assert context.agree(0.5, True) == (0.5, True)
    for objective in ("diffusion", "flow"):
        config = tiny_config(objective=objective)
        plain = Trainer(config)
        wrapped = Trainer(config, distributed=context)
        assert isinstance(wrapped.train_model, torch.nn.parallel.DistributedDataParallel)
        plain_losses = [r.loss for r in plain.run()]
        wrapped_records = list(wrapped.run())
        assert [r.loss for r in wrapped_records] == pytest.approx(plain_losses, abs=1e-6)
        assert wrapped_records[-1].timesteps.shape == (16,)
        for name, value in plain.model.state_dict().items():
            torch.testing.assert_close(wrapped.model.state_dict()[name], value)
        assert wrapped.checkpoint().training["world_size"] == 1


def test_a_peer_failure_is_one_distributed_error(one_process_group, monkeypatch):
    def broken(*args):
        raise RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:4242")

    monkeypatch.setattr(torch.distributed, "all_reduce", broken)
    with pytest.raises(DistributedError, match="another process of the data-parallel run failed"):
        one_process_group.agree(0.1, False)
