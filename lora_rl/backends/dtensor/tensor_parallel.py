"""Tensor parallelism for decoder models, LoRA-aware (docs/architecture.md, measured facts).

The plan is the family's own (`lora_rl.architecture`, transformers' `base_model_tp_plan`):
Llama-style q/k/v and gate/up are column-parallel, o and down row-parallel; fused projections
whose parts are split by size after the matmul (Phi-3's qkv_proj, gate_up_proj) gather their
output and the next row-parallel layer splits its input again. Embeddings, norms (Qwen3's
q_norm/k_norm included: they act per head) and lm_head stay replicated, so logits are whole on
every rank. A LoRA-wrapped linear is sharded to match its base (`LORA_SHARDING`):
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

from lora_rl.architecture import LORA_SHARDING, Architecture, architecture_of
from lora_rl.backends.dtensor.sharding import decoder_layers
from lora_rl.errors import SetupError


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


def _style(name: str) -> ParallelStyle:
    if name == "colwise":
        return ColwiseParallel()
    if name == "colwise_gather_output":
        return ColwiseParallel(output_layouts=Replicate())
    if name == "rowwise":
        return RowwiseParallel()
    if name == "rowwise_split_input":
        return RowwiseParallel(input_layouts=Replicate())
    if name == "replicate":
        return ReplicateParallel()
    raise ValueError(f"no DTensor parallel style for {name!r}")


def _plan_for(name: str, module: torch.nn.Module, style: str) -> dict[str, ParallelStyle]:
    if not _is_lora(module):
        return {name: _style(style)}
    a_style, b_style = LORA_SHARDING[style]
    return {f"{name}.base": _style(style), f"{name}.lora_A": _style(a_style),
            f"{name}.lora_B": _style(b_style)}


def layer_plans(model: torch.nn.Module,
                arch: Architecture | None = None) -> list[dict[str, ParallelStyle]]:
    """One parallelize_module plan per decoder layer, from the family's description."""
    arch = arch or architecture_of(model.config)
    problem = arch.unsupported("dtensor", tensor_parallel=2)
    if problem:
        raise SetupError(problem)
    plans = []
    for index, layer in enumerate(decoder_layers(model)):
        plan: dict[str, ParallelStyle] = {}
        for linear in arch.linears(index):
            plan.update(_plan_for(linear.path, layer.get_submodule(linear.path), linear.style))
        plans.append(plan)
    return plans


def apply_tensor_parallel(model: torch.nn.Module, tp_mesh: DeviceMesh) -> None:
    for layer, plan in zip(decoder_layers(model), layer_plans(model), strict=True):
        parallelize_module(layer, tp_mesh, plan)
    _replicate_rest(model, tp_mesh)


def _replicate_rest(model: torch.nn.Module, tp_mesh: DeviceMesh) -> None:
    """Embeddings, norms and lm_head: Replicate DTensors with local tensors in and out."""
    for module in model.modules():
        own = list(module.named_parameters(recurse=False))
        if own and not any(isinstance(p, DTensor) for _, p in own):
            ReplicateParallel()._apply(module, tp_mesh)


