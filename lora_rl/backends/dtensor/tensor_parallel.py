"""Tensor parallelism for Llama-style decoders, LoRA-aware (DESIGN.md §4).

Attention q/k/v and MLP gate/up are column-parallel, o and down row-parallel; embeddings, norms
and lm_head stay replicated, so logits are whole on every rank. A LoRA-wrapped linear is
sharded to match its base:
- column-parallel base: A replicated (every rank sees the whole input), B split on its output,
  so the LoRA output is split exactly like the base output;
- row-parallel base: A split on its input (like the base), its r-dim output all-reduced,
  B replicated.
Replicated LoRA weights are `Replicate()` DTensors, not plain tensors: optimizers and norm
computations reject mixed plain/DTensor parameter lists.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)

from lora_rl.backends.dtensor.sharding import decoder_layers

COLUMN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj",
          "mlp.up_proj")
ROW = ("self_attn.o_proj", "mlp.down_proj")


class ReplicateParallel(ParallelStyle):
    """Weights replicated as DTensors; local tensors in and out."""

    def _apply(self, module: torch.nn.Module, device_mesh: DeviceMesh) -> torch.nn.Module:
        def replicate_params(name, mod, mesh):
            for key, param in list(mod.named_parameters(recurse=False)):
                mod.register_parameter(key, torch.nn.Parameter(
                    distribute_tensor(param.data, mesh, [Replicate()]),
                    requires_grad=param.requires_grad))

        def to_dtensor(mod, inputs, mesh):
            return tuple(DTensor.from_local(t, mesh, [Replicate()], run_check=False)
                         if isinstance(t, torch.Tensor) and not isinstance(t, DTensor) else t
                         for t in inputs)

        def to_local(mod, output, mesh):
            return output.to_local(grad_placements=[Replicate()])

        return distribute_module(module, device_mesh, replicate_params, to_dtensor, to_local)


def _is_lora(module: torch.nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "lora_B") and hasattr(module, "base")


def _plan_for(name: str, module: torch.nn.Module, column: bool) -> dict[str, ParallelStyle]:
    if not _is_lora(module):
        return {name: ColwiseParallel() if column else RowwiseParallel()}
    if column:
        return {f"{name}.base": ColwiseParallel(), f"{name}.lora_A": ReplicateParallel(),
                f"{name}.lora_B": ColwiseParallel()}
    return {f"{name}.base": RowwiseParallel(), f"{name}.lora_A": RowwiseParallel(),
            f"{name}.lora_B": ReplicateParallel()}


def apply_tensor_parallel(model: torch.nn.Module, tp_mesh: DeviceMesh) -> None:
    for layer in decoder_layers(model):
        plan: dict[str, ParallelStyle] = {}
        for names, column in ((COLUMN, True), (ROW, False)):
            for name in names:
                plan.update(_plan_for(name, layer.get_submodule(name), column))
        parallelize_module(layer, tp_mesh, plan)
    _replicate_rest(model, tp_mesh)


def _replicate_rest(model: torch.nn.Module, tp_mesh: DeviceMesh) -> None:
    """Embeddings, norms and lm_head: Replicate DTensors with local tensors in and out."""
    for module in model.modules():
        own = list(module.named_parameters(recurse=False))
        if own and not any(isinstance(p, DTensor) for _, p in own):
            ReplicateParallel()._apply(module, tp_mesh)


