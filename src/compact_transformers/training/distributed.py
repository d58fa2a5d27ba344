"""torchrun / DistributedDataParallel glue: one process per device, NCCL on GPUs, gloo on CPUs (and, beside NCCL,
a gloo group for the host's yes/no questions, which must not wait for the GPUs)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Beside an NCCL process group: a gloo group over the same processes for `any_rank`, whose flags live on the host.
_host_group: dist.ProcessGroup | None = None


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    global _host_group
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            _host_group = dist.new_group(backend="gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_sum(tensors: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """Sum each tensor over all processes (in place); a no-op for a single process."""
    if info.enabled:
        for tensor in tensors.values():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensors


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every process when ``flag`` is true on any of them, so that all take the same decision.
    The flags travel between the hosts (a gloo group beside NCCL): asked after every training step, an
    all-reduce on the GPU would make each step wait for the device to finish the one before."""
    if not info.enabled:
        return flag
    tensor = torch.tensor(float(flag))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=_host_group)
    return tensor.item() > 0


def from_rank0(value: object, info: DistInfo) -> object:
    """Rank 0's ``value`` (any picklable object) on every process."""
    if not info.enabled:
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def gather_objects(value: object, info: DistInfo) -> list:
    """Every process's ``value``, in rank order (a one-element list for a single process)."""
    if not info.enabled:
        return [value]
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def cleanup(info: DistInfo) -> None:
    global _host_group
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()  # every group, the host group too
        _host_group = None
