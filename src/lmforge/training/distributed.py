"""torchrun / DDP plumbing: the same code runs as one process or under ``torchrun --nproc_per_node=N``.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; ``init()`` reads them and starts a process group
(nccl when CUDA is there, gloo otherwise). Without them everything here is a cheap no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from lmforge.errors import UserError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks, in place (itself when not distributed): what a task's evaluator
        is handed, so that it needs no import of the training code."""
        return all_reduce_sum(t, self)


def init(device_type: str = "cpu") -> DistInfo:
    """Start the process group if launched by torchrun (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (a one-element list when not distributed)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank (used to share errors raised by rank-0-only work)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(info: DistInfo, clean: bool = False) -> None:
    """End the process group. ``clean``: every rank got here normally, so wait for all of them first:
    a rank that tears gloo down while a peer still uses its pairs can abort the peer at exit."""
    if info.enabled and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def main_first(info: DistInfo, fn: Callable[[], Any]) -> None:
    """Run ``fn`` on rank 0 while the others wait; a UserError there is raised on every rank."""
    err, raised = None, None
    if info.is_main:
        try:
            fn()
        except UserError as e:
            err, raised = (str(e), getattr(e, "exit_code", 2)), e
    err = broadcast_object(err, info)
    if raised is not None:
        raise raised
    if err is not None:
        e = UserError(err[0])
        e.exit_code = err[1]
        raise e
