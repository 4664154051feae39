"""The process a rank runs in: torch.distributed (gloo on CPU, nccl on GPU), seeds, threads."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def start_runtime(timeout_s: float = 600.0) -> Runtime:
    """Join the process group described by torchrun-style env vars (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        from datetime import timedelta

        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    # DTensor logs a "suboptimal redistribute" warning per 2-D gradient norm; on these small
    # meshes it is noise that would bury the run's own output.
    logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
    threads = os.environ.get("LORA_RL_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    return Runtime(rank, world, local_rank, device)


def stop_runtime() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_step(seed: int, step: int, rank: int) -> torch.Generator:
    """Seed torch's global RNG (dropout) for one step and return a generator for sampling:
    a pure function of (seed, step, rank), which makes resumed runs reproduce exactly."""
    value = (seed * 1_000_003 + step * 7919 + rank) % (2**63)
    torch.manual_seed(value)
    generator = torch.Generator()
    generator.manual_seed(value + 1)
    return generator
