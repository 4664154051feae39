"""LoRA on Megatron's parallel linears, via the LoRA core, sharded like each base layer.

Matching runs on the global module names of the *whole* model (every pipeline stage agrees on
what is adapted, zero matches is an error everywhere, `*.layers.1.*` means global layer 1).

Column-parallel base (`linear_qkv`, `linear_fc1`, `output_layer`): A is replicated, B is split on
its output like the base. Each rank's B shard sees only its slice of the output gradient, so B's
input gradient is summed over tensor-parallel ranks (identity forward): A's gradient and the
input gradient are then complete and identical on every rank, with an r-wide all-reduce.
Row-parallel base (`linear_proj`, `linear_fc2`): A is split on its input like the base, its
r-wide output is summed over ranks, and B is replicated.

A and B are initialised whole, from a seed and the module's global name, and then sharded: the
initial adapter is the same whatever the tp/pp layout, and xavier/kaiming see the true fan-in.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lora_rl.backends.megatron.model import global_name
from lora_rl.backends.megatron.sharding import Sharder, kind_of
from lora_rl.config.lora import MegatronPeftConfig
from lora_rl.lora import LoraLinear, linear_module_names, lora_spec_from_config, match_names
from lora_rl.lora.init import init_weight


class _SumGradOverTensorParallel(nn.Linear):
    """B of a column-parallel base: identity forward, input gradient all-reduced."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

        return F.linear(copy_to_tensor_model_parallel_region(x), self.weight)


class _SumOutputOverTensorParallel(nn.Linear):
    """A of a row-parallel base: the partial products of the input shards are summed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

        return reduce_from_tensor_model_parallel_region(F.linear(x, self.weight))


@dataclass(frozen=True)
class MegatronLora:
    adapted: tuple[str, ...]
    """Global names of every adapted module of the whole model (all stages)."""
    local: tuple[str, ...]
    """Those on this rank's stage."""
    scale: float


def _with_communication(linear: nn.Linear, cls: type[nn.Linear]) -> nn.Linear:
    swapped = cls(linear.in_features, linear.out_features, bias=False, device="meta")
    swapped.weight = linear.weight  # same Parameter: dtype, values and name are kept
    return swapped


@torch.no_grad()
def _init_whole(layer: LoraLinear, name: str, spec, sharder: Sharder, seed: int) -> None:
    """Initialise A and B at their whole shapes with a per-module seed, then keep this shard."""
    tp = sharder.layout.tp
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + zlib.crc32(name.encode()))
        for part, method in (("lora_A", spec.a_init), ("lora_B", spec.b_init)):
            key = f"{name}.{part}.weight"
            param = getattr(layer, part).weight
            kind = kind_of(key)
            rows, cols = param.shape
            whole_shape = {"rows": (rows * tp, cols), "gated_rows": (rows * tp, cols),
                           "vocab_rows": (sharder.vocab_size, cols),
                           "cols": (rows, cols * tp)}.get(kind, (rows, cols))
            whole = torch.empty(whole_shape, dtype=torch.float32)
            init_weight(whole, method, spec.rank)
            param.copy_(sharder.shard(key, whole).to(param.dtype))


def apply_megatron_lora(model: nn.Module, cfg: MegatronPeftConfig, all_linear: list[str],
                        sharder: Sharder, seed: int) -> MegatronLora:
    """Freeze `model` and wrap the matched linears of this stage (in place)."""
    from megatron.core.tensor_parallel import ColumnParallelLinear

    spec = lora_spec_from_config(cfg)
    adapted = match_names(all_linear, cfg)
    chosen = set(adapted)
    model.requires_grad_(False)
    local = []
    for name in linear_module_names(model):
        full = global_name(model, name)
        if full not in chosen:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        layer = LoraLinear(base, spec)
        if isinstance(base, ColumnParallelLinear):
            layer.lora_B = _with_communication(layer.lora_B, _SumGradOverTensorParallel)
        else:
            layer.lora_A = _with_communication(layer.lora_A, _SumOutputOverTensorParallel)
        _init_whole(layer, full, spec, sharder, seed)
        setattr(parent, child, layer)
        local.append(full)
    return MegatronLora(tuple(adapted), tuple(local), spec.scale)
