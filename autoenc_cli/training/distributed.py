"""Data-parallel training under ``torchrun``: one process per device, gradients averaged by DDP.

Every rank draws the same batch order and noise; each trains on its own slice of every global batch,
so N ranks with batch size B follow the single-process run with batch size B. Only rank 0 writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch (every size-th sample from its rank on)."""
        return batch[self.rank :: self.size] if self.is_distributed else batch


def current_world() -> World:
    """The process group torchrun describes in the environment (a world of one otherwise)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_process_group(world: World, device: torch.device) -> None:
    if world.is_distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
