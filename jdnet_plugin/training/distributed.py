"""torchrun (DDP) setup: one process per device, NCCL on CUDA, gloo on CPU."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "resolve_device", "cleanup_distributed", "all_reduce"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: this process's CUDA device when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda was asked for, but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device, backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); one process otherwise. ``backend``:
    NCCL on CUDA and gloo on the CPU by default."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if device.type == "cuda" else "gloo"))
    return DistInfo(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                    world_size=dist.get_world_size())


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM, timeout_s: float = 5.0) -> torch.Tensor:
    """``dist.all_reduce`` in place, returning once the backend has let go of a CPU ``tensor`` (at most
    ``timeout_s`` later).

    gloo's worker thread drops its reference to a collective's tensors just after ``wait()`` returns. After the
    last collective of a process, that drop can fall into interpreter shutdown, where releasing a tensor that
    Python has seen needs the GIL, and the process aborts ("terminate called without an active exception", seen
    in a torchrun test; pytorch/pytorch PR 179291 describes it)."""
    before = tensor._use_count() if hasattr(tensor, "_use_count") else None
    dist.all_reduce(tensor, op=op)
    if before is not None and tensor.device.type == "cpu":
        deadline = time.monotonic() + timeout_s
        while tensor._use_count() > before and time.monotonic() < deadline:
            time.sleep(0.0005)
    return tensor
