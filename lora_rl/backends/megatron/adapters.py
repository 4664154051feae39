"""LoRA on Megatron's parallel linears, via the LoRA core, sharded like each base layer.

Matching runs on the global module names of the *whole* model (every pipeline stage agrees on
what is adapted, zero matches is an error everywhere, `*.layers.1.*` means global layer 1).

Column-parallel base (`linear_qkv`, `linear_fc1`, `output_layer`): A is replicated, B is split on
its output like the base. Each rank's B shard sees only its slice of the output gradient, so B's
input gradient is summed over tensor-parallel ranks (identity forward): A's gradient and the
input gradient are then complete and identical on every rank, with an r-wide all-reduce.
Row-parallel base (`linear_proj`, `linear_fc2`): A is split on its input like the base, its
r-wide output is summed over ranks, and B is replicated.
DoRA's magnitude goes with B: split by rows on a column-parallel base, whose rows are whole on
each rank; replicated on a row-parallel one, whose row norms are summed over ranks.
Under sequence parallelism a column-parallel base gathers its sequence-split input and a
row-parallel one reduce-scatters its output by sequence; the adapter follows: A of a column
base runs on the gathered input (its backward keeps this rank's part of the input gradient,
already whole after B's all-reduce), and B of a row base keeps this rank's part of the sequence
(its backward gathers the output gradient, so B's gradient is whole on every rank). Every
adapter weight then sees the whole sequence, and its gradient needs no further sum over
tensor-parallel ranks, except the DoRA magnitude of a row-parallel base: it scales the base's
sequence-split output, so it is marked `sequence_parallel` like a norm (summed in `optim`).
MoE expert linears are never split by tensor parallelism (expert_tensor_parallel_size 1) and
see their own rank's tokens: their adapters communicate nothing, and `optim` sums their
gradients over the ranks holding the same experts.

A and B are initialised whole, from a seed and the module's global name, and then sharded: the
initial adapter is the same whatever the tp/pp layout, and xavier/kaiming see the true fan-in.

Canonical targets (`linear_q`, `linear_fc1_up`, ...) give a fused module one adapter per
projection instead (canonical_lora.py); each is column-parallel like its slice of the output.

PiSSA/OLoRA (`init_lora_weights`) replace that init after it: each adapter is factorised from
its own (whole, tensor_model_parallel_size 1) weight, or a canonical projection's rows of the
fused weight, and the base is rewritten to the residual (`_refuse_residual` says what is not
built; validate refuses the same as LR158/LR159).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from lora_rl.backends.megatron.canonical_lora import SplitLoraLinear, adapter_module_name
from lora_rl.backends.megatron.model import global_name
from lora_rl.backends.megatron.parallel import is_expert_parameter
from lora_rl.backends.megatron.sharding import Sharder, kind_of
from lora_rl.config.lora import MegatronPeftConfig
from lora_rl.errors import SetupError
from lora_rl.lora import LoraLinear, linear_module_names, lora_spec_from_config, match_names
from lora_rl.lora.init import init_weight
from lora_rl.lora.matching import (
    CANONICAL_PARTS,
    LoraMatchError,
    ModuleMatcher,
    fused_module_of,
    short_name,
)


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


class _GatherSequenceFirst(nn.Linear):
    """A of a column-parallel base under sequence parallelism: on the whole sequence."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

        whole = gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False)
        return F.linear(whole, self.weight)


class _ScatterSequenceAfter(nn.Linear):
    """B of a row-parallel base under sequence parallelism: this rank's part of the sequence."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import scatter_to_sequence_parallel_region

        return scatter_to_sequence_parallel_region(F.linear(x, self.weight))


def _communicating_classes(base: nn.Module, sp: bool
                           ) -> tuple[type[nn.Linear], type[nn.Linear]]:
    """(A's class, B's class) for an adapter on the parallel linear `base`."""
    from megatron.core.tensor_parallel import ColumnParallelLinear

    if getattr(base, "is_expert", False):
        return nn.Linear, nn.Linear
    if isinstance(base, ColumnParallelLinear):
        return (_GatherSequenceFirst if sp else nn.Linear), _SumGradOverTensorParallel
    return _SumOutputOverTensorParallel, (_ScatterSequenceAfter if sp else nn.Linear)


@dataclass(frozen=True)
class MegatronLora:
    adapted: tuple[str, ...]
    """Global names of every adapted module of the whole model (all stages); with canonical
    targets, the projections of fused modules (`...linear_qkv` -> `...linear_q`, ...)."""
    local: tuple[str, ...]
    """Those on this rank's stage."""
    scale: float


def _with_communication(linear: nn.Linear, cls: type[nn.Linear]) -> nn.Linear:
    if cls is nn.Linear:
        return linear
    swapped = cls(linear.in_features, linear.out_features, bias=False, device="meta")
    swapped.weight = linear.weight  # same Parameter: dtype, values and name are kept
    return swapped


@torch.no_grad()
def _init_whole(layer: nn.Module, name: str, spec, sharder: Sharder, seed: int) -> None:
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
    if getattr(layer, "use_dora", False):
        layer.reset_magnitude()  # m = ||W + scale * B A|| for the A and B just set


def _projection_rows(base: nn.Module, fused: str, tp: int) -> tuple[dict[str, int], int]:
    """This rank's output rows of each projection of a fused linear, and its query groups."""
    if fused == "linear_fc1":
        half = int(base.weight.shape[0]) // 2
        return {"linear_fc1_gate": half, "linear_fc1_up": half}, 0
    config = base.config
    heads = config.num_attention_heads
    all_groups = config.num_query_groups or heads
    groups, d = all_groups // tp, config.kv_channels
    return {"linear_q": groups * (heads // all_groups) * d, "linear_k": groups * d,
            "linear_v": groups * d}, groups


def _split_lora(base: nn.Module, full: str, projections: list[str], spec, sharder: Sharder,
                seed: int) -> SplitLoraLinear:
    fused = short_name(full)
    rows, groups = _projection_rows(base, fused, sharder.layout.tp)
    layer = SplitLoraLinear(base, fused, projections, spec, rows, groups,
                            *_communicating_classes(base, sharder.layout.sp))
    for projection, adapter in layer.adapters().items():
        _init_whole(adapter, f"{full}.{adapter_module_name(projection)}", spec, sharder, seed)
    if spec.weight_init != "default":
        try:
            layer.start_from_residual(spec.weight_init)
        except ValueError as exc:
            raise SetupError(str(exc)) from None
    return layer


def _refuse_residual(adapted: list[str], projections: dict[str, list[str]], method: str,
                     tp: int) -> None:
    """What PiSSA/OLoRA is not built for on this backend (validate: LR158, LR159)."""
    problems = []
    if tp > 1:
        problems.append(f"tensor_model_parallel_size {tp} (the factorisation needs whole "
                        "weights; use 1)")
    fused = sorted({short_name(m) for m, parts in projections.items()
                    if short_name(m) in CANONICAL_PARTS and not parts})
    if fused:
        canonical = ", ".join(p for f in fused for p in CANONICAL_PARTS[f])
        problems.append(f"fused targets {', '.join(fused)} (one A shared by their projections, "
                        f"not PEFT's per-module init; name the projections: {canonical})")
    if any(is_expert_parameter(unit + ".") for unit in adapted):
        problems.append("MoE expert linears")
    if problems:
        raise SetupError(f"peft.init_lora_weights {method} is not supported with "
                         + "; ".join(problems))


def _sum_over_tp(row_squares: torch.Tensor) -> torch.Tensor:
    """DoRA on a row-parallel base (its weight split by columns): each rank holds part of every
    row, so the rows' squared norms are summed over the tensor-parallel ranks."""
    from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region

    return reduce_from_tensor_model_parallel_region(row_squares)


def _refuse_dora(adapted: list[str]) -> None:
    """What DoRA is not built for on this backend (validate refuses canonical targets as LR169;
    MoE models are only known here)."""
    problems = []
    if any(fused_module_of(unit)[1] for unit in adapted):
        problems.append("canonical targets (one adapter per projection)")
    if any(is_expert_parameter(unit + ".") for unit in adapted):
        problems.append("MoE expert linears (their PEFT layout has no DoRA magnitude)")
    if problems:
        raise SetupError("peft.use_dora is not supported with " + "; ".join(problems)
                         + ": set peft.use_dora: false")


def apply_megatron_lora(model: nn.Module, cfg: MegatronPeftConfig, all_linear: list[str],
                        sharder: Sharder, seed: int) -> MegatronLora:
    """Freeze `model` and wrap the matched linears of this stage (in place)."""
    conflict = ModuleMatcher.from_config(cfg).conflict()
    if conflict:
        raise LoraMatchError(conflict)
    spec = lora_spec_from_config(cfg)
    adapted = match_names(all_linear, cfg)
    if spec.use_dora:
        _refuse_dora(adapted)
    projections: dict[str, list[str]] = {}
    for unit in adapted:
        module, projection = fused_module_of(unit)
        projections.setdefault(module, [])
        if projection:
            projections[module].append(projection)
    if spec.weight_init != "default":
        _refuse_residual(adapted, projections, spec.weight_init, sharder.layout.tp)
    model.requires_grad_(False)
    local = []
    for name in linear_module_names(model):
        full = global_name(model, name)
        if full not in projections:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        if projections[full]:
            layer = _split_lora(base, full, projections[full], spec, sharder, seed)
            local += [f"{full.rpartition('.')[0]}.{p}" for p in projections[full]]
        else:
            a_class, b_class = _communicating_classes(base, sharder.layout.sp)
            row_split = a_class is _SumOutputOverTensorParallel and sharder.layout.tp > 1
            # The residual init runs after the seeded init below, on the parallel linear.
            layer = LoraLinear(base, replace(spec, weight_init="default"),
                               row_norm_reduce=_sum_over_tp if row_split else None)
            layer.lora_A = _with_communication(layer.lora_A, a_class)
            layer.lora_B = _with_communication(layer.lora_B, b_class)
            if spec.use_dora and b_class is _ScatterSequenceAfter:
                # It scales this rank's part of the sequence only: its gradient is partial.
                layer.lora_magnitude_vector.sequence_parallel = True
            _init_whole(layer, full, spec, sharder, seed)
            if spec.weight_init != "default":
                layer.spec = spec
                layer.start_from_residual(spec.weight_init)
            local.append(full)
        setattr(parent, child, layer)
    return MegatronLora(tuple(adapted), tuple(local), spec.scale)
