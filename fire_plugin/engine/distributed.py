"""DDP under torchrun: rank and world size, the process group, unwrapping, sharded loaders."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

__all__ = ["DistInfo", "distributed_info", "setup_distributed", "unwrap_model"]


_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    world_size: int
    rank: int
    local_rank: int

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_info() -> DistInfo:
    """World size, rank and local rank from torchrun's environment (1, 0, 0 when not launched by torchrun)."""
    return DistInfo(
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def setup_distributed() -> DistInfo:
    """Initialize the default process group when launched by torchrun (idempotent); nccl on CUDA, gloo on CPU.

    On CUDA it also selects the device ``cuda:LOCAL_RANK``.
    """
    info = distributed_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
        _logger.info("initialized process group: backend=%s world_size=%d", backend, info.world_size)
    return info


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _distributed_loader(loader: DataLoader, *, seed: int) -> DataLoader:
    """The same loader, sharded over ranks with a DistributedSampler (shuffling when the original did).

    A loader whose batch sampler has a ``shard(num_replicas, rank)`` method (the mixed original/extra batches of
    :func:`fire_plugin.data.mixed_loader`) is sharded by that method instead, so that every batch keeps its mix.
    """
    workers: dict[str, Any] = {"num_workers": loader.num_workers, "collate_fn": loader.collate_fn,
                               "pin_memory": loader.pin_memory, "persistent_workers": loader.persistent_workers}
    if loader.num_workers > 0:
        workers["prefetch_factor"] = loader.prefetch_factor
    # worker seeds come from this generator (checkpointed by fit), not from the global RNG the attacks draw from
    workers["generator"] = loader.generator if loader.generator is not None else torch.Generator().manual_seed(seed)
    shard = getattr(loader.batch_sampler, "shard", None)
    if callable(shard):
        info = distributed_info()
        return DataLoader(loader.dataset, batch_sampler=shard(info.world_size, info.rank), **workers)
    shuffle = not isinstance(loader.sampler, torch.utils.data.SequentialSampler)
    sampler: DistributedSampler = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last,
                      **workers)
