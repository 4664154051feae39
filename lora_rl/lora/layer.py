"""`LoraLinear`: a frozen base linear plus a trainable low-rank update.

y = base(x) + scale * B(A(dropout(x)))          dropout_position "pre"
y = base(x) + dropout(scale * B(A(x)))          dropout_position "post"

A and B are `nn.Linear` submodules (`lora_A`, `lora_B`) so that tensor-parallel styles and
state-dict names work on them like on any linear layer. The base may be a Megatron parallel
linear whose forward returns `(output, bias)`; the update is added to the output.
"""

from __future__ import annotations

import torch
from torch import nn

from lora_rl.lora.init import init_weight
from lora_rl.lora.spec import LoraSpec


def _features(base: nn.Module) -> tuple[int, int]:
    weight = base.weight
    # Megatron parallel linears keep [out_per_rank, in_per_rank] like nn.Linear.
    return int(weight.shape[1]), int(weight.shape[0])


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Module, spec: LoraSpec) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        in_features, out_features = _features(base)
        dtype = getattr(torch, spec.dtype) if spec.dtype else base.weight.dtype
        device = base.weight.device
        self.lora_A = nn.Linear(in_features, spec.rank, bias=False, dtype=dtype, device=device)
        self.lora_B = nn.Linear(spec.rank, out_features, bias=False, dtype=dtype, device=device)
        init_weight(self.lora_A.weight, spec.a_init, spec.rank)
        init_weight(self.lora_B.weight, spec.b_init, spec.rank)
        self.scale = spec.scale
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.dropout_position = spec.dropout_position
        self.use_triton = spec.use_triton
        self.disabled = False
        self.merged = False
        self._unmerged_weight: torch.Tensor | None = None

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """scale * B(A(x)) with the configured dropout, in the adapter dtype."""
        adapter_dtype = self.lora_A.weight.dtype
        h = x.to(adapter_dtype) if x.dtype != adapter_dtype else x
        if self.dropout_position == "pre":
            h = self.dropout(h)
        if self.use_triton and h.is_cuda:
            from lora_rl.lora.triton_kernel import fused_lora

            out = fused_lora(h, self.lora_A.weight, self.lora_B.weight, self.scale)
        else:
            # Scaling the [tokens, rank] intermediate is cheaper than the [tokens, out] output.
            out = self.lora_B(self.lora_A(h) * self.scale)
        if self.dropout_position == "post":
            out = self.dropout(out)
        return out

    def forward(self, x: torch.Tensor, *args, **kwargs):
        result = self.base(x, *args, **kwargs)
        if self.disabled or self.merged:
            return result
        if isinstance(result, tuple):
            output, *rest = result
            return (output + self.lora_delta(x).to(output.dtype), *rest)
        return result + self.lora_delta(x).to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """scale * B @ A in fp32 (the merge is computed in fp32, then cast)."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            raise RuntimeError("LoRA layer is already merged; unmerge it first")
        weight = self.base.weight
        # Keep the exact original: unmerge must restore it bit for bit, which subtracting the
        # delta in low precision cannot guarantee.
        self._unmerged_weight = weight.detach().clone()
        weight.copy_((weight.float() + self.delta_weight()).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged or self._unmerged_weight is None:
            raise RuntimeError("LoRA layer is not merged")
        self.base.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.lora_A.out_features}, scale={self.scale:g}"
