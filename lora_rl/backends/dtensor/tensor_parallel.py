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

MoE experts (`moe_tp_experts`, transformers' fused 3-D `gate_up_proj` [E, 2I, H] and
`down_proj` [E, H, I]) are split on the expert intermediate size, as transformers' own plan
does: gate_up column-parallel and packed (each rank holds its slice of gate *and* of up, a
`_StridedShard`), down row-parallel. Every rank routes all tokens (the router is replicated),
runs the experts' own computation on its local slices and the partial outputs are summed. An
expert adapter follows its parameter by the same `LORA_SHARDING` rule: gate_up's A replicated
and B split (packed) on its output rows, down's A split on its input and B replicated; each
rank adds its shard of B_e A_e to its shard of the expert weight.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import (
    DTensor,
    Placement,
    Replicate,
    Shard,
    distribute_module,
    distribute_tensor,
)
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)
from torch.distributed.tensor.placement_types import _StridedShard
from torch.func import functional_call

from lora_rl.architecture import LORA_SHARDING, Architecture, architecture_of
from lora_rl.backends.dtensor.sharding import decoder_layers
from lora_rl.errors import SetupError
from lora_rl.lora.experts import ExpertsLora


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
            if isinstance(output, tuple):  # a MoE router: (logits, weights, expert indices)
                return tuple(to_local(mod, t, mesh) for t in output)
            if not isinstance(output, DTensor):
                return output
            return output.to_local(grad_placements=[Replicate()])

        return distribute_module(module, device_mesh, replicate_params, to_dtensor, to_local)


def _weight_placement(style: str, ndim: int) -> Placement:
    """Where a [..., out, in] weight of a module in `style` is split (a 3-D expert parameter
    or a 2-D LoRA weight alike)."""
    out_dim, in_dim = ndim - 2, ndim - 1
    if style == "colwise":
        return Shard(out_dim)
    if style == "packed_colwise":
        return _StridedShard(out_dim, split_factor=2)  # [gate; up]: a slice of each half
    if style == "rowwise":
        return Shard(in_dim)
    if style == "replicate":
        return Replicate()
    raise ValueError(f"no expert-parameter placement for style {style!r}")


class _SumForward(torch.autograd.Function):
    """All-reduce (sum) in the forward pass; the gradient passes through."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        tensor = tensor.clone(memory_format=torch.contiguous_format)  # gloo: contiguous only
        torch.distributed.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _SumBackward(torch.autograd.Function):
    """Identity in the forward pass; the gradient is all-reduced (sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


class MoeExpertsParallel(ParallelStyle):
    """transformers' `moe_tp_experts` for an experts module (plain or `ExpertsLora`): its 3-D
    parameters split by their styles (`mlp.experts.gate_up_proj: packed_colwise`, ...), their
    adapters by `LORA_SHARDING`; the forward runs the module's own computation on the local
    shards and sums the ranks' partial outputs. Idempotent: tensors that are already DTensors
    (a shared base in a multi-adapter run) are left as they are."""

    def __init__(self, styles: dict[str, str]) -> None:
        super().__init__()
        self.styles = styles
        """Parameter name (`gate_up_proj`) -> its tensor-parallel style."""

    def _apply(self, module: torch.nn.Module, device_mesh: DeviceMesh) -> torch.nn.Module:
        base = module.base if isinstance(module, ExpertsLora) else module
        for name, param in list(base.named_parameters(recurse=False)):
            _distribute(base, name, _weight_placement(self.styles.get(name, "replicate"),
                                                      param.dim()), device_mesh)
        group = device_mesh.get_group()
        if not hasattr(base, "_tensor_parallel_group"):
            _shard_forward(base, lambda: {}, group)
        if isinstance(module, ExpertsLora):
            for name, adapter in module.adapters.items():
                a_style, b_style = LORA_SHARDING[self.styles[name]]
                _distribute(adapter.lora_A, "weight", _weight_placement(a_style, 2), device_mesh)
                _distribute(adapter.lora_B, "weight", _weight_placement(b_style, 2), device_mesh)
            _shard_forward(module, lambda: module.adapted_weights(partial(_local, group=group)),
                           group)
        return module


def _local(tensor: torch.Tensor, group) -> torch.Tensor:
    """This rank's shard of a (possibly DTensor) weight, for the experts' own computation."""
    if not isinstance(tensor, DTensor):
        return tensor
    shard = tensor.to_local()
    if tensor.requires_grad and all(p.is_replicate() for p in tensor.placements):
        # Each rank's slice of the experts gives part of the gradient of a replicated weight
        # (gate_up's A, down's B): sum them.
        shard = _SumBackward.apply(shard, group)
    return shard


def _shard_forward(module: torch.nn.Module, adapted: Callable[[], dict[str, torch.Tensor]],
                   group) -> None:
    """Replace `module.forward` (an experts module, or an `ExpertsLora` around one) by its
    tensor-parallel form: the experts' class forward on this rank's shards (`adapted()`
    overrides some with W + B A), the ranks' partial outputs summed. The experts module keeps
    its own such forward, for when it runs unwrapped (a multi-adapter run between adapters);
    reached from a wrapper, whose weights are already local, it is the class forward."""
    base = module.base if isinstance(module, ExpertsLora) else module
    module._tensor_parallel_group = group
    class_forward = type(base).forward

    def forward(hidden_states, top_k_index, top_k_weights, *args, **kwargs):
        own = dict(base.named_parameters(recurse=False))
        if module is base and not any(isinstance(p, DTensor) for p in own.values()):
            return class_forward(base, hidden_states, top_k_index, top_k_weights, *args,
                                 **kwargs)
        weights = {name: _local(p, group) for name, p in own.items()}
        weights.update(adapted())
        # Every rank sees all tokens; its slice of each expert gives part of the gradient of
        # the input and of the routing weights.
        inputs = (_SumBackward.apply(hidden_states, group), top_k_index,
                  _SumBackward.apply(top_k_weights, group), *args)
        partial_output = functional_call(base, weights, inputs, kwargs, strict=False)
        return _SumForward.apply(partial_output, group)

    module.forward = forward


def _distribute(module: torch.nn.Module, name: str, placement: Placement,
                mesh: DeviceMesh) -> None:
    param = getattr(module, name)
    if isinstance(param, DTensor):
        return
    module.register_parameter(name, torch.nn.Parameter(
        distribute_tensor(param.data, mesh, [placement]), requires_grad=param.requires_grad))


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
        if index in arch.moe_layers:
            plan[arch.experts_module()] = MoeExpertsParallel(
                {p.short: p.style for p in arch.expert_params()})
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


