"""LoRA on MoE experts stored as fused 3-D parameters (transformers 5).

transformers keeps a MoE layer's experts as one module with `gate_up_proj` [E, out, in] and
`down_proj` [E, out, in] parameters, not `nn.Linear`s. Each adapted parameter gets one adapter
per expert, laid out exactly as PEFT's `target_parameters` (`lora.ParamWrapper`) does, so an
export is a rename:
- `lora_A.weight` [r * E, in]: expert e's A is rows e*r .. e*r + r - 1;
- `lora_B.weight` [out, r * E]: expert e's B is columns e, E + e, 2E + e, ... (PEFT reshapes B
  to [out, r, E]).
The experts module's own (grouped) computation runs unchanged on W + scale * B_e A_e: the delta
of all experts is one batched matmul per forward, as PEFT computes it. LoRA dropout is not
possible here (x cannot be factored out of the merged weight), as in PEFT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from lora_rl.errors import SetupError
from lora_rl.lora.init import init_weight
from lora_rl.lora.layer import AdapterLayer
from lora_rl.lora.spec import LoraSpec


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class ExpertAdapter(AdapterLayer):
    """One adapter per expert on one 3-D parameter [E, out, in] of an experts module."""

    def __init__(self, weight: torch.Tensor, spec: LoraSpec) -> None:
        super().__init__()
        if weight.dim() != 3:
            raise ValueError(f"expert LoRA needs a 3-D [experts, out, in] parameter, got shape "
                             f"{tuple(weight.shape)}")
        if spec.dropout > 0:
            raise SetupError("LoRA dropout cannot be applied to MoE expert parameters (the "
                             "update is merged into the expert weights per forward); set "
                             "dropout: 0 or leave the experts out of the targets")
        if spec.use_dora:
            raise SetupError("DoRA is not implemented for MoE expert parameters; set use_dora: "
                             "false or leave the experts out of the targets")
        if spec.weight_init != "default":
            raise SetupError(f"{spec.weight_init} is not implemented for MoE expert parameters; "
                             "set init_lora_weights: true or leave the experts out of the "
                             "targets")
        experts, out_features, in_features = (int(n) for n in weight.shape)
        dtype = getattr(torch, spec.dtype) if spec.dtype else weight.dtype
        self.num_experts = experts
        self.rank = spec.rank
        self.lora_A = nn.Linear(in_features, spec.rank * experts, bias=False, dtype=dtype,
                                device=weight.device)
        self.lora_B = nn.Linear(spec.rank * experts, out_features, bias=False, dtype=dtype,
                                device=weight.device)
        init_weight(self.lora_A.weight, spec.a_init, spec.rank)
        init_weight(self.lora_B.weight, spec.b_init, spec.rank)
        self.spec = spec
        self.scale = spec.scale
        self._unmerged_weight: torch.Tensor | None = None

    def delta_weight(self, view: Callable[[torch.Tensor], torch.Tensor] = _whole) -> torch.Tensor:
        """scale * B_e @ A_e for every expert, [E, out, in]. `view` maps A and B to the tensors
        used: under tensor parallelism their local shards (A split on `in`, or B on `out`),
        giving this rank's shard of the delta."""
        a, b = view(self.lora_A.weight), view(self.lora_B.weight)
        a = a.reshape(self.num_experts, self.rank, -1)  # [E, r, in]
        b = b.reshape(b.shape[0], self.rank, self.num_experts)  # [out, r, E]
        return torch.einsum("ore,eri->eoi", b, a) * self.scale

    def _param(self) -> torch.Tensor:
        # Set by ExpertsLora; kept out of the module tree (the base belongs to ExpertsLora).
        owner, name = self.__dict__["_target"]
        return getattr(owner, name)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            raise RuntimeError("LoRA layer is already merged; unmerge it first")
        weight = self._param()
        self._unmerged_weight = weight.detach().clone()
        weight.copy_((weight.float() + self.delta_weight().float()).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged or self._unmerged_weight is None:
            raise RuntimeError("LoRA layer is not merged, so there is nothing to unmerge")
        self._param().copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, rank={self.rank}, scale={self.scale:g}"


class ExpertsLora(nn.Module):
    """An experts module (`base`) with an `ExpertAdapter` on some of its 3-D parameters, each
    registered under the parameter's name, so that state-dict keys read like lora-rl's adapter
    names: `...mlp.experts.gate_up_proj.lora_A.weight`."""

    def __init__(self, base: nn.Module, names: list[str], spec: LoraSpec) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.adapted = tuple(names)
        for name in names:
            adapter = ExpertAdapter(getattr(base, name), spec)
            adapter.__dict__["_target"] = (base, name)
            self.add_module(name, adapter)

    @property
    def adapters(self) -> dict[str, ExpertAdapter]:
        return {name: getattr(self, name) for name in self.adapted}

    def adapted_weights(self, view: Callable[[torch.Tensor], torch.Tensor] = _whole
                        ) -> dict[str, torch.Tensor]:
        """W + scale * B_e A_e for each parameter with a live (unmerged, enabled) adapter;
        `view` maps every stored tensor to the one used (tensor parallelism: its local shard)."""
        weights = {}
        for name, adapter in self.adapters.items():
            if adapter.merged or adapter.disabled:
                continue
            base = view(getattr(self.base, name))
            weights[name] = base + adapter.delta_weight(view).to(base.dtype)
        return weights

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        weights = self.adapted_weights()
        if not weights:
            return self.base(*args, **kwargs)
        return functional_call(self.base, weights, args, kwargs, strict=False)
