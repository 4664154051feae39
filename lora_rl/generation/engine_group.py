"""Training ranks that share one multi-process vLLM engine (NeMo RL's layout: one engine per
`tensor_parallel_size * pipeline_parallel_size` GPUs).

With `vllm_cfg.tensor_parallel_size * vllm_cfg.pipeline_parallel_size = size > 1` and several
training ranks, the ranks are split into consecutive groups of `size` (one per engine worker).
The group's first rank, its owner, starts the engine (engine core in that process, TP x PP
workers in processes of their own: lora_rl.generation.vllm_processes) and pushes the weights into
it; the other members start nothing. At each step every member still picks its own requests; the
members hand them to the owner over a gloo group of their own, the owner generates for the whole
group in one engine call and sends each member its results. The group acts like one engine per
member: a request's result does not depend on which rank asked for it (each keeps the seed of
its index in the step).

Placement: the owner's workers run on its machine, beside the group's training ranks. On CPU the
group takes its share of the process's CPUs (groups of one machine split them evenly); on GPUs
its workers see the group's devices (`CUDA_VISIBLE_DEVICES`), rank `owner + i` holding vLLM's
worker i (TP rank `i % tp` of pipeline stage `i // tp`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed as dist

from lora_rl.errors import LoraRlError

Request = tuple[int, list[int]]
"""(index of the request in the step, prompt token ids)."""


class EngineGroup:
    def __init__(self, size: int, world: int, rank: int, local_rank: int | None = None,
                 local_world: int | None = None) -> None:
        """`size`: the engine's workers (tp x pp). Collective when `world > 1`: every rank
        creates every group's gloo group, in order. `size` dividing the ranks per node is
        validated up front (rule LR308)."""
        self.size = size
        self.owner = rank - rank % size if world > 1 else rank
        self.is_owner = rank == self.owner
        local_rank = rank if local_rank is None else local_rank
        local_world = world if local_world is None else local_world
        self.local_index = local_rank // size if world > 1 else 0
        """This group's place among the groups of this machine."""
        self.local_groups = max(1, local_world // size) if world > 1 else 1
        self._pg = None
        if world > 1:
            for first in range(0, world, size):
                pg = dist.new_group(list(range(first, first + size)), backend="gloo")
                if first == self.owner:
                    self._pg = pg

    def cpus(self, allowed: set[int]) -> set[int]:
        """This group's share of the machine's CPUs (all of them when there are too few to
        give every group one per worker)."""
        ordered = sorted(allowed)
        per = len(ordered) // self.local_groups
        if per < self.size:
            return set(ordered)
        return set(ordered[self.local_index * per:(self.local_index + 1) * per])

    @contextlib.contextmanager
    def visible_devices(self) -> Iterator[None]:
        """GPUs: while the owner starts the engine, its workers inherit the group's devices
        (the machine's devices `size * local_index ...`, through any CUDA_VISIBLE_DEVICES the
        process was given). The owner's own CUDA context is already made, so it is unaffected."""
        if self.local_index == 0:
            yield
            return
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = previous.split(",") if previous else \
            [str(i) for i in range(self.local_groups * self.size)]
        start = self.local_index * self.size
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices[start:start + self.size])
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = previous

    def served(self, requests: list[Request],
               generate: Callable[[list[Request]], list[Any]]) -> list[Any]:
        """Results of this rank's `requests`, one per request, in order. Collective over the
        group: the owner runs `generate` once on every member's requests (member order) and
        returns each member its part; alone, this rank's engine serves it directly. A
        LoraRlError from the owner's `generate` is raised on every member."""
        if self._pg is None:
            return generate(requests)
        gathered: list | None = [None] * self.size if self.is_owner else None
        dist.gather_object(requests, gathered, dst=self.owner, group=self._pg)
        parts: list | None = None
        failure: LoraRlError | None = None
        if gathered is not None:
            try:
                results = generate([request for member in gathered for request in member])
            except LoraRlError as exc:
                # An expected failure (a dead vLLM worker): every member raises it too, so the
                # whole group stops as one, with one error line, instead of the others
                # stopping later as ranks that lost a peer.
                failure, parts = exc, [exc] * self.size
            else:
                parts, start = [], 0
                for member in gathered:
                    parts.append(results[start:start + len(member)])
                    start += len(member)
        mine: list = [None]
        dist.scatter_object_list(mine, parts, src=self.owner, group=self._pg)
        if failure is not None:
            raise failure
        if isinstance(mine[0], LoraRlError):
            raise mine[0]
        return mine[0]
