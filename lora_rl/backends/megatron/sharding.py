"""How each Megatron tensor is split over tensor-parallel ranks, and whole <-> shard.

- `rows` (dim 0): column-parallel weights (`linear_qkv`, `output_layer`), the vocab-parallel
  embedding, and the LoRA B of a column-parallel base (B is split on its output);
- `cols` (dim 1): row-parallel weights (`linear_proj`, `linear_fc2`) and their LoRA A (A is
  split on its input);
- `gated_rows`: `linear_fc1` and its LoRA B. Each rank holds [gate shard; up shard], because the
  MLP halves its *local* output into gate and up, so the whole tensor is not a plain row concat;
- `replicated`: norms, and the LoRA A of a column-parallel base / B of a row-parallel base.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist

from lora_rl.backends.megatron.parallel import Layout

Kind = Literal["rows", "cols", "gated_rows", "replicated"]

_ROW_PARALLEL = ("linear_proj", "linear_fc2")
_COLUMN_PARALLEL = ("linear_qkv", "output_layer", "word_embeddings")


def kind_of(name: str) -> Kind:
    """Sharding of a Megatron parameter, from its name (LoRA wrappers add `.base` / `.lora_*`)."""
    parts = name.split(".")
    lora = parts[-2] if parts[-2] in ("lora_A", "lora_B") else None
    module = parts[-3] if lora or parts[-2] == "base" else parts[-2]
    if module in _ROW_PARALLEL:
        return "replicated" if lora == "lora_B" else "cols"
    if module in _COLUMN_PARALLEL or module == "linear_fc1":
        if lora == "lora_A":
            return "replicated"
        return "gated_rows" if module == "linear_fc1" else "rows"
    return "replicated"


def shard(whole: torch.Tensor, kind: Kind, rank: int, size: int) -> torch.Tensor:
    if kind == "replicated" or size == 1:
        return whole
    if kind == "rows":
        return whole.chunk(size, dim=0)[rank]
    if kind == "cols":
        return whole.chunk(size, dim=1)[rank]
    gate, up = whole.chunk(2, dim=0)
    return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]], dim=0)


def gather(local: torch.Tensor, kind: Kind, layout: Layout) -> torch.Tensor:
    """The whole tensor on every tensor-parallel rank (collective over the tp group)."""
    if kind == "replicated" or layout.tp == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(layout.tp)]
    # gloo silently mishandles non-contiguous buffers (DESIGN.md §4)
    dist.all_gather(parts, local.detach().contiguous(), group=layout.tp_group)
    if kind == "rows":
        return torch.cat(parts, dim=0)
    if kind == "cols":
        return torch.cat(parts, dim=1)
    halves = [p.chunk(2, dim=0) for p in parts]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)


def gather_whole(local: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """Whole tensors of every pipeline stage, on every rank (collective over tp, then pp).
    `local` is keyed by global names; each stage contributes its own layers."""
    whole = {name: gather(t, kind_of(name), layout) for name, t in local.items()}
    if layout.pp == 1:
        return whole
    stages: list[dict[str, torch.Tensor] | None] = [None] * layout.pp
    dist.all_gather_object(stages, whole, group=layout.pp_group)
    return {name: t for stage in stages for name, t in (stage or {}).items()}
