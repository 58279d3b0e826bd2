"""Data-parallel training with PyTorch's own engine: ``torch.distributed`` and DDP under torchrun.

``torchrun --nproc_per_node N -m unirank.training train ...`` starts N processes; each reads the
same data and builds the same seeded sampler, so every process draws the same global batch (the
single-process batch) and scores its own share of its rows (every N-th row). DDP averages the
gradients; the loss is written so that the shares add up to the single-process loss, so one step
is the single-process step up to floating-point summation order. Only rank 0 validates, decides
early stopping (broadcast to the others), evaluates and writes the artifact; the others return
after the last step.

The process group is ``gloo`` on the CPU and ``nccl`` when training on CUDA (``--device cuda``;
each process then takes ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

TIMEOUT = dt.timedelta(minutes=30)
"""How long a collective waits for the other processes (rank 0's validation included)."""


def backend_for(device: str) -> str:
    """The process-group backend for a training device: NCCL for CUDA, gloo for the CPU."""
    return "nccl" if device.split(":", 1)[0] == "cuda" else "gloo"


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def primary(self) -> bool:
        """Rank 0: validates, decides early stopping, evaluates and writes the artifact."""
        return self.rank == 0

    def rows(self, batch_size: int) -> np.ndarray:
        """Positions of this process's rows in a global batch: every ``world_size``-th from ``rank``.

        Interleaving keeps each process's task mix close to the batch's, since the stratified
        sampler lays a batch out task by task.
        """
        return np.arange(self.rank, batch_size, self.world_size)

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """DDP over ``model`` (already on this process's device). Buffers hold item content that
        never changes during training: synced once at the start, not before every step."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce ``tensor`` in place (sum over processes); returns it."""
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def decide(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every process (the others' argument is ignored)."""
        value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        torch_dist.broadcast(value, src=0)
        return bool(value.item())

    def close(self) -> None:
        if torch_dist.is_initialized():
            # Every rank leaves together: a rank tearing gloo down while rank 0 still writes the
            # artifact was aborted now and then ("terminate called without an active exception").
            torch_dist.barrier()
            torch_dist.destroy_process_group()


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """True inside a torchrun (``torch.distributed.run``) worker of a group of more than one."""
    env = os.environ if environ is None else environ
    return "RANK" in env and int(env.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str, environ: Mapping[str, str] | None = None) -> Distributed | None:
    """Join the process group torchrun set up (its ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT``); None when not launched as one of several processes."""
    env = os.environ if environ is None else environ
    if not launched_by_torchrun(env):
        return None
    rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", "0"))
    backend = backend_for(device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device}: CUDA is not available on this machine")
        where = torch.device("cuda", local_rank)
        torch.cuda.set_device(where)
    else:
        where = torch.device("cpu")
    torch_dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=TIMEOUT)
    return Distributed(rank, world_size, local_rank, backend, where)
