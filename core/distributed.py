"""Data-parallel training under torchrun: the process group and the few collectives we need.

torchrun starts one process per device and tells each who it is through its environment
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). `init_distributed` reads that,
joins the process group (gloo on the CPU, NCCL on CUDA with one GPU per process, chosen by
LOCAL_RANK) and returns a `DistributedContext`. Without torchrun's environment it returns the
single-process context (world_size 1) and torch.distributed is not touched.

The trainer (core.training) wraps its model in PyTorch's DistributedDataParallel, which
averages the gradients; these helpers add what it does not do: gather the per-sample losses
of the global batch, agree on a step's time and on stopping (a signal may reach one rank
only), and tear the group down. Every collective has the group's timeout, so a peer that
died or hangs ends the run with an error instead of a hang.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from diffusion_studio.core.device import resolve_device
from diffusion_studio.core.errors import ConfigError, DiffusionStudioError

# How long a collective waits for the other processes (a rank-0 preview or save included)
DEFAULT_TIMEOUT_S = 600.0
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(DiffusionStudioError):
    """Another process of a data-parallel run failed, or the processes cannot meet."""


@dataclass(frozen=True)
class TorchrunEnvironment:
    """What torchrun told this process: its rank among all processes, its rank on this
    machine (which GPU it takes), how many processes there are, and where rank 0 listens."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int


def torchrun_environment(
    environ: Mapping[str, str] | None = None,
) -> TorchrunEnvironment | None:
    """torchrun's variables from `environ` (default os.environ); None when WORLD_SIZE is unset
    (a plain single process). ConfigError when they are incomplete or inconsistent."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if name not in env]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE is set but {', '.join(missing)} not: start data-parallel runs with torchrun"
        )
    try:
        values = {name: int(env[name]) for name in TORCHRUN_VARIABLES if name != "MASTER_ADDR"}
    except ValueError as exc:
        raise ConfigError(f"torchrun's environment is not understood: {exc}") from None
    rank, local_rank, world = values["RANK"], values["LOCAL_RANK"], values["WORLD_SIZE"]
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise ConfigError(
            f"torchrun's environment is inconsistent: RANK={rank}, LOCAL_RANK={local_rank}, "
            f"WORLD_SIZE={world}"
        )
    return TorchrunEnvironment(rank, local_rank, world, env["MASTER_ADDR"], values["MASTER_PORT"])


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a run: rank 0..world_size-1, the device it trains on, and
    whether it is rank 0 (which alone writes checkpoints, logs and previews)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # "gloo" | "nccl"; None: no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None

    def part(self, global_batch: int) -> tuple[int, int]:
        """(start, stop) of this rank's samples in a global batch split evenly."""
        check_batch_split(global_batch, self.world_size)
        share = global_batch // self.world_size
        return self.rank * share, (self.rank + 1) * share

    # ------------------------------------------------------------------ collectives

    def gather_batch(self, values: torch.Tensor) -> torch.Tensor:
        """(K, b) per-sample values of this rank -> (K, world_size * b) of the global batch,
        in rank order (the order the samples were drawn in). Single process: `values`."""
        if not self.is_distributed:
            return values
        parts = [torch.empty_like(values) for _ in range(self.world_size)]
        _collective(torch.distributed.all_gather, parts, values.contiguous())
        return torch.cat(parts, dim=-1)

    def agree(self, seconds: float, stop: bool) -> tuple[float, bool]:
        """After a step: rank 0's step time (so every rank counts the same training time and
        ends a time budget at the same step) and whether any rank wants to stop."""
        if not self.is_distributed:
            return seconds, stop
        values = torch.tensor(
            [seconds if self.is_main else 0.0, 1.0 if stop else 0.0],
            dtype=torch.float64,
            device=self.device,
        )
        _collective(torch.distributed.all_reduce, values)
        agreed_seconds, stops = values.tolist()
        return agreed_seconds, stops > 0

    def barrier(self) -> None:
        if self.is_distributed:
            _collective(torch.distributed.barrier)

    def close(self) -> None:
        """Leave the process group (nothing to do for a single process)."""
        if self.is_distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _collective(function, *args) -> None:
    """Run a torch.distributed collective; a peer that failed becomes a DistributedError."""
    try:
        function(*args)
    except RuntimeError as exc:  # DistBackendError, gloo's closed connection, a timeout
        raise DistributedError(peer_failure_message(exc)) from exc


COLLECTIVE_FAILURE_WORDS = ("gloo", "nccl", "connection", "peer", "timed out", "timeout", "socket")


def is_collective_failure(exc: BaseException) -> bool:
    """Whether an error raised inside a step came from a collective (a peer that died or
    hung), not from the step's own computation."""
    if isinstance(exc, torch.distributed.DistError):
        return True
    text = str(exc).lower()
    return any(word in text for word in COLLECTIVE_FAILURE_WORDS)


def peer_failure_message(exc: BaseException) -> str:
    """One line for a collective that failed (a peer died, hung past the timeout, or left)."""
    detail = re.sub(r"\[[^\]]*\]:?\d*\s*", "", " ".join(str(exc).split()))  # no [file:line]
    detail = detail.split(". ")[0].strip().rstrip(".")
    if len(detail) > 100:
        detail = detail[:97] + "..."
    return f"another process of the data-parallel run failed or stopped answering ({detail})"


def check_batch_split(batch_size: int, world_size: int) -> None:
    """ConfigError unless the global batch splits evenly across the processes."""
    if world_size > 1 and batch_size % world_size:
        raise ConfigError(
            f"batch size {batch_size} does not split evenly across {world_size} processes: "
            f"use a multiple of {world_size}"
        )


def init_distributed(
    device: str = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> DistributedContext:
    """Join torchrun's process group, or the single-process context without torchrun.

    device: the requested device ("auto", "cpu", "cuda", ...). Under torchrun a CUDA device
    becomes cuda:LOCAL_RANK with the NCCL backend; anything else trains on the CPU with gloo
    (MPS has no collective backend). timeout_s: how long a collective waits for the others.
    """
    env = torchrun_environment(environ)
    if env is None:
        return DistributedContext(device=resolve_device(device))
    wanted = resolve_device(device)
    if wanted.type == "cuda":
        count = torch.cuda.device_count()
        if env.local_rank >= count:
            raise ConfigError(
                f"process {env.rank} wants GPU {env.local_rank} but this machine has {count}: "
                f"start at most {count} processes per node (--nproc-per-node)"
            )
        chosen, backend = torch.device("cuda", env.local_rank), "nccl"
        torch.cuda.set_device(chosen)
    elif wanted.type == "cpu" or device == "auto":
        chosen, backend = torch.device("cpu"), "gloo"
    else:
        raise ConfigError(
            f"data-parallel training runs on CUDA GPUs or on the CPU, not on {wanted.type}: "
            "use --device cpu or cuda"
        )
    if not torch.distributed.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed: train in one process")
    try:
        torch.distributed.init_process_group(
            backend=backend,
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": chosen} if backend == "nccl" else {}),
        )
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"cannot join the data-parallel run at {env.master_addr}:{env.master_port}: "
            + " ".join(str(exc).split())[:160]
        ) from exc
    return DistributedContext(env.rank, env.world_size, env.local_rank, chosen, backend)
