"""Data parallelism for `trellis pretrain` under torchrun: process group, DDP wrap, rank-0-only writes.

Every rank draws the same global batch (same seed) and trains on its contiguous share of it
(batching.micro_batches), so the data of a step does not depend on the number of ranks. Evaluation is
run on every rank over the same windows (no collective needed); only rank 0 writes anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from trellis.run import StageRun


@dataclass(frozen=True)
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


def init_distributed(device_name: str) -> tuple[DistInfo, Any]:
    """(rank info, this rank's device); starts the process group when torchrun launched several ranks."""
    import torch

    from trellis.device import resolve_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), resolve_device(device_name)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank), device


def wrap_ddp(model, info: DistInfo, device):
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def mean_over_ranks(value: float, info: DistInfo, device) -> float:
    if not info.enabled:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def any_rank(flag: bool, info: DistInfo, device) -> bool:
    if not info.enabled:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


class QuietRun(StageRun):
    """The run directory as seen from ranks other than 0: readable, never written."""

    def __init__(self, root, stage: str) -> None:
        super().__init__(root, stage, None, tensorboard=False)

    def log(self, step: int, **metrics: float) -> None:
        pass

    def truncate_metrics_after(self, step: int) -> None:
        pass

    def write_summary(self, summary: dict[str, Any], done: bool = True) -> None:
        pass

    def prune_checkpoints(self, keep_last: int) -> None:
        pass

    def progress(self, total: int, desc: str | None = None, initial: int = 0):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, disable=True)
