"""Canonical LoRA: one adapter per projection inside Megatron's fused column-parallel linears.

`linear_qkv` computes q, k and v in one matmul, its output interleaved per query group
([q heads of group 0, k0, v0, q heads of group 1, ...]); `linear_fc1` computes [gate; up]. Plain
LoRA on them trains one A shared by the projections. Canonical LoRA (Megatron-Bridge's
`CanonicalLoRA`) gives each projection its own A and B, as PEFT does on q/k/v_proj and
gate/up_proj, so an adapter moves between the two backends (and PEFT) without loss.

Each projection's adapter is sharded like its slice of the fused output: A is replicated and B
is split by rows, so each tensor-parallel rank computes whole query groups (q heads, k and v of
its groups) or its [gate; up] shard. The per-projection updates are then laid out the way the
base layer lays out its local output, and added to it. A projection the recipe does not target
contributes nothing (zeros), so `[linear_q, linear_v]` is exactly PEFT's q/v LoRA.

PiSSA/OLoRA (`start_from_residual`, tensor_model_parallel_size 1): each projection's A and B
come from its own rows of the fused weight (the q, k, v or gate, up weight PEFT factorises),
and those rows are rewritten to the residual; the disabled layer (the reference policy) adds
the init back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lora_rl.lora.layer import AdapterLayer, low_rank_update
from lora_rl.lora.matching import CANONICAL_PARTS
from lora_rl.lora.residual_init import residual_factors, set_adapter
from lora_rl.lora.spec import LoraSpec

ADAPTER_PREFIX = "adapter_"
"""Child module names: `adapter_q`, `adapter_k`, `adapter_v`, `adapter_gate`, `adapter_up`
(Megatron-Bridge's names for the same adapters)."""


def adapter_module_name(projection: str) -> str:
    """`linear_q` -> `adapter_q`, `linear_fc1_gate` -> `adapter_gate`."""
    return ADAPTER_PREFIX + projection.rsplit("_", 1)[-1]


class ProjectionAdapter(nn.Module):
    """The A and B of one projection inside a fused linear. `a_class` and `b_class` are the
    caller's communicating linears (B's input gradient is summed over tensor-parallel ranks;
    under sequence parallelism A gathers the sequence)."""

    def __init__(self, in_features: int, out_features: int, spec: LoraSpec,
                 weight: torch.Tensor, a_class: type[nn.Linear],
                 b_class: type[nn.Linear]) -> None:
        super().__init__()
        dtype = getattr(torch, spec.dtype) if spec.dtype else weight.dtype
        self.lora_A = a_class(in_features, spec.rank, bias=False, dtype=dtype,
                                device=weight.device)
        self.lora_B = b_class(spec.rank, out_features, bias=False, dtype=dtype,
                              device=weight.device)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.register_buffer("lora_A_init", None, persistent=False)
        self.register_buffer("lora_B_init", None, persistent=False)
        """PiSSA/OLoRA's init factors (what the base rows lost); None otherwise."""

    def forward(self, x: torch.Tensor, scale: float, dropout_position: str) -> torch.Tensor:
        return low_rank_update(x, self.lora_A, self.lora_B, scale, self.dropout, dropout_position)

    def init_delta(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        """scale * B0 A0 x, what a residual init took out of the base rows (no dropout)."""
        a0, b0 = self.lora_A_init, self.lora_B_init
        h = x.to(a0.dtype) if x.dtype != a0.dtype else x
        return nn.functional.linear(nn.functional.linear(h, a0) * scale, b0)


class SplitLoraLinear(AdapterLayer):
    """A fused Megatron linear (`linear_qkv` or `linear_fc1`) with per-projection adapters."""

    def __init__(self, base: nn.Module, fused: str, projections: list[str], spec: LoraSpec,
                 local_rows: dict[str, int], local_groups: int, a_class: type[nn.Linear],
                 b_class: type[nn.Linear]) -> None:
        """`local_rows`: this rank's output rows of every projection of the fused module;
        `local_groups`: this rank's query groups (linear_qkv only)."""
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.fused = fused
        self.order = CANONICAL_PARTS[fused]
        self.local_rows = local_rows
        self.local_groups = local_groups
        self.scale = spec.scale
        self.dropout_position = spec.dropout_position
        in_features = int(base.weight.shape[1])
        for projection in projections:
            self.add_module(adapter_module_name(projection),
                            ProjectionAdapter(in_features, local_rows[projection], spec,
                                              base.weight, a_class, b_class))

    def adapters(self) -> dict[str, ProjectionAdapter]:
        return {p: getattr(self, adapter_module_name(p)) for p in self.order
                if hasattr(self, adapter_module_name(p))}

    def projection_rows(self) -> dict[str, torch.Tensor]:
        """This rank's rows of the fused weight that each projection's output comes from, in
        the projection's own order (linear_q: the q rows of every query group, in turn)."""
        ids, start = [], 0
        for p in self.order:
            ids.append(torch.arange(start, start + self.local_rows[p]))
            start += self.local_rows[p]
        where = torch.argsort(self._fused_layout(ids))  # projection row id -> fused row
        return {p: where[int(i[0]):int(i[-1]) + 1] for p, i in zip(self.order, ids, strict=True)}

    @torch.no_grad()
    def start_from_residual(self, method: str) -> None:
        """PiSSA/OLoRA (`method`): each adapter's A and B from the factorisation of its
        projection's rows of the base weight (PEFT's per-module init), and those rows rewritten
        to the residual. The weight must be whole (tensor_model_parallel_size 1)."""
        weight = self.base.weight
        rows = self.projection_rows()
        for projection, adapter in self.adapters().items():
            index = rows[projection].to(weight.device)
            residual, a, b = residual_factors(weight.index_select(0, index),
                                              adapter.lora_A.out_features, method, self.scale,
                                              what=projection)
            weight.index_copy_(0, index, residual)
            adapter.lora_A_init, adapter.lora_B_init = set_adapter(adapter.lora_A,
                                                                   adapter.lora_B, a, b)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        output, *rest = self.base(x, *args, **kwargs)
        adapters = self.adapters()
        if not self.disabled:
            def update(adapter: ProjectionAdapter) -> torch.Tensor:
                return adapter(x, self.scale, self.dropout_position)
        elif any(a.lora_A_init is not None for a in adapters.values()):
            # A residual init: the reference policy is the original base, W_res + s B0 A0.
            def update(adapter: ProjectionAdapter) -> torch.Tensor:
                return adapter.init_delta(x, self.scale)
        else:
            return (output, *rest)
        updates = [update(adapters[p]) if p in adapters
                   else output.new_zeros(*output.shape[:-1], self.local_rows[p])
                   for p in self.order]
        return (output + self._fused_layout(updates).to(output.dtype), *rest)

    def _fused_layout(self, updates: list[torch.Tensor]) -> torch.Tensor:
        """The projections' local outputs in the order the base layer emits them."""
        if self.fused == "linear_fc1":
            return torch.cat(updates, dim=-1)  # [gate shard; up shard]
        lead = updates[0].shape[:-1]
        grouped = [u.reshape(*lead, self.local_groups, -1) for u in updates]
        return torch.cat(grouped, dim=-1).reshape(*lead, -1)

    def extra_repr(self) -> str:
        return f"{self.fused}: {', '.join(self.adapters())}, scale={self.scale:g}"
