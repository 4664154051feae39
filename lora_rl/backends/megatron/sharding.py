"""How each Megatron tensor is split over tensor-parallel ranks, and whole <-> shard.

- `rows` (dim 0): `linear_qkv` and the LoRA B of a column-parallel base (B is split on its
  output like the base);
- `vocab_rows`: the embedding and `output_layer` (and its LoRA B), split by vocabulary rows.
  Megatron needs the vocabulary divisible by tp, so the shards are padded with zero rows (the
  padded logits are masked in `schedule.token_logprobs`); whole tensors never include padding;
- `cols` (dim 1): row-parallel weights (`linear_proj`, `linear_fc2`) and their LoRA A (A is
  split on its input);
- `gated_rows`: `linear_fc1` and its LoRA B. Each rank holds [gate shard; up shard], because the
  MLP halves its *local* output into gate and up, so the whole tensor is not a plain row concat;
- `replicated`: norms, the LoRA A of a column-parallel base / B of a row-parallel base, and
  MoE experts with their adapters (expert_tensor_parallel_size is 1: expert parallelism, not
  tensor parallelism, splits them).
A DoRA magnitude (`<module>.lora_magnitude_vector`, one per output row) is split like its B.
Canonical LoRA's per-projection adapters (`linear_qkv.adapter_q.lora_B`, ...) have A replicated
and B in `rows`: each projection's rows are ordered by head (q) or by half (gate/up), so a row
split hands each rank the projection's slice for its own query groups or gate/up shard.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist

from lora_rl.backends.megatron.parallel import Layout, is_expert_parameter

Kind = Literal["rows", "vocab_rows", "cols", "gated_rows", "replicated"]
STATE_SEPARATOR = "::"
"""Optimizer state entries are named `<parameter>::<state key>` (as in optimizer_state.py)."""

_ROW_PARALLEL = ("linear_proj", "linear_fc2")
_VOCAB = ("output_layer", "word_embeddings")


def kind_of(name: str) -> Kind:
    """Sharding of a Megatron parameter, from its name (LoRA wrappers add `.base` / `.lora_*`)."""
    if is_expert_parameter(name):
        return "replicated"
    parts = name.split(".")
    if parts[-1] == "lora_magnitude_vector":
        # DoRA's magnitude, one per output row: split like B
        parts = [*parts[:-1], "lora_B", "weight"]
    lora = parts[-2] if parts[-2] in ("lora_A", "lora_B") else None
    module = parts[-3] if lora or parts[-2] == "base" else parts[-2]
    if lora and module.startswith("adapter_"):
        return "rows" if lora == "lora_B" else "replicated"
    if module in _ROW_PARALLEL:
        return "replicated" if lora == "lora_B" else "cols"
    if module in (*_VOCAB, "linear_qkv", "linear_fc1"):
        if lora == "lora_A":
            return "replicated"
        return {"linear_fc1": "gated_rows", "linear_qkv": "rows"}.get(module, "vocab_rows")
    return "replicated"


def kind_of_entry(key: str, tensor: torch.Tensor) -> Kind:
    """Sharding of a parameter (`name`) or of its optimizer state (`name::exp_avg`); scalar
    state such as Adam's step count is the same on every rank."""
    return kind_of(key.split(STATE_SEPARATOR)[0]) if tensor.dim() else "replicated"


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    return -(-vocab_size // tp) * tp


class Sharder:
    """whole <-> this rank's shard for one model and parallel layout."""

    def __init__(self, layout: Layout, vocab_size: int) -> None:
        self.layout = layout
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size(vocab_size, layout.tp)

    def shard(self, key: str, whole: torch.Tensor) -> torch.Tensor:
        kind, rank, size = kind_of_entry(key, whole), self.layout.tp_rank, self.layout.tp
        if kind == "vocab_rows":
            extra = self.padded_vocab_size - whole.shape[0]
            whole = torch.cat([whole, whole.new_zeros(extra, *whole.shape[1:])]) if extra else whole
        if kind == "replicated" or size == 1:
            return whole
        if kind in ("rows", "vocab_rows"):
            return whole.chunk(size, dim=0)[rank]
        if kind == "cols":
            return whole.chunk(size, dim=1)[rank]
        gate, up = whole.chunk(2, dim=0)
        return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]], dim=0)

    def gather(self, key: str, local: torch.Tensor) -> torch.Tensor:
        """The whole tensor on every tensor-parallel rank (collective over the tp group); a
        copy, never a view of the live parameter or optimizer state."""
        kind, size = kind_of_entry(key, local), self.layout.tp
        if kind == "replicated":
            return local.detach().clone()
        parts = [local.detach()]
        if size > 1:
            parts = [torch.empty_like(local) for _ in range(size)]
            # gloo silently mishandles non-contiguous buffers (docs/architecture.md, measured facts)
            dist.all_gather(parts, local.detach().contiguous(), group=self.layout.tp_group)
        if kind == "rows":
            return torch.cat(parts, dim=0)
        if kind == "vocab_rows":
            return torch.cat(parts, dim=0)[: self.vocab_size]
        if kind == "cols":
            return torch.cat(parts, dim=1)
        halves = [p.chunk(2, dim=0) for p in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)

    def gather_whole(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Whole tensors of every pipeline stage, on every rank (collective over tp, then pp).
        `local` is keyed by global names; each stage contributes its own layers. Every rank of
        a tensor-parallel group must pass the same keys in the same order."""
        whole = {key: self.gather(key, t) for key, t in local.items()}
        if self.layout.ep > 1:
            # Expert-parallel ranks hold different experts: each contributes its own.
            ranks: list[dict[str, torch.Tensor] | None] = [None] * self.layout.ep
            mine = {k: t for k, t in whole.items() if is_expert_parameter(k)}
            dist.all_gather_object(ranks, mine, group=self.layout.ep_group)
            whole.update({k: t for part in ranks for k, t in (part or {}).items()})
        if self.layout.pp == 1:
            return whole
        stages: list[dict[str, torch.Tensor] | None] = [None] * self.layout.pp
        dist.all_gather_object(stages, whole, group=self.layout.pp_group)
        return {key: t for stage in stages for key, t in (stage or {}).items()}
