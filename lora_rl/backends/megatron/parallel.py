"""Megatron's model-parallel state over the run's torch.distributed process group.

Rank order is Megatron's default `tp-cp-ep-dp-pp`: tensor-parallel ranks are adjacent, then
data-parallel replicas, then pipeline stages. Every rank of one data-parallel replica (all its
tensor- and pipeline-parallel ranks) receives the same micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lora_rl.backends.megatron import cpu_shim
from lora_rl.errors import SetupError
from lora_rl.training.runtime import Runtime


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    ep: int = 1
    """MoE expert parallelism: each rank of an expert-parallel group (Megatron's; data-parallel
    ranks, and under sequence parallelism tensor-parallel ones too) holds 1/ep of every MoE
    layer's experts (`is_expert_parameter`); the other parameters are replicated."""
    sp: bool = False
    """Megatron sequence parallelism (tp > 1): outside attention and the MLP's parallel
    linears (embeddings, norms, MoE layers) each tensor-parallel rank holds 1/tp of the
    sequence. Experts are never split by tensor parallelism (expert_tensor_parallel_size 1):
    each rank's experts see that rank's tokens."""

    @property
    def first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def tp_group(self) -> dist.ProcessGroup:
        from megatron.core import parallel_state

        return parallel_state.get_tensor_model_parallel_group()

    @property
    def pp_group(self) -> dist.ProcessGroup:
        from megatron.core import parallel_state

        return parallel_state.get_pipeline_model_parallel_group()

    @property
    def dp_group(self) -> dist.ProcessGroup:
        from megatron.core import parallel_state

        return parallel_state.get_data_parallel_group()

    @property
    def ep_group(self) -> dist.ProcessGroup:
        from megatron.core import parallel_state

        return parallel_state.get_expert_model_parallel_group()

    @property
    def expert_dp_group(self) -> dist.ProcessGroup:
        """The ranks holding the same experts (Megatron's expert data-parallel group)."""
        from megatron.core import parallel_state

        return parallel_state.get_expert_data_parallel_group()

    @property
    def expert_dp(self) -> int:
        return self.dp * self.tp // self.ep

    @property
    def model_parallel_group(self) -> dist.ProcessGroup:
        from megatron.core import parallel_state

        return parallel_state.get_model_parallel_group()

    def last_stage_rank(self) -> int:
        """Global rank of this rank's counterpart on the last pipeline stage."""
        from megatron.core import parallel_state

        return parallel_state.get_pipeline_model_parallel_last_rank()


def is_expert_parameter(name: str) -> bool:
    """A MoE expert's parameter (global name), held by one expert-parallel rank only."""
    return ".mlp.experts.local_experts." in name


def init_model_parallel(runtime: Runtime, tp: int, pp: int, seed: int, ep: int = 1,
                        sp: bool = False) -> Layout:
    """Create Megatron's tp/pp/dp groups (collective). A one-process run gets a one-rank group:
    Megatron's layers call collectives even when they have nobody to talk to."""
    from megatron.core import parallel_state

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if runtime.world_size % (tp * pp):
        raise SetupError(f"world size {runtime.world_size} is not a multiple of tensor x pipeline "
                         f"parallel size {tp} x {pp}")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    # The default group is gloo already on CPU; Megatron's extra gloo copies would only cost time.
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp,
                                             pipeline_model_parallel_size=pp,
                                             expert_model_parallel_size=ep,
                                             expert_tensor_parallel_size=1,
                                             create_gloo_process_groups=False)
    if not cpu_shim.needed():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)
    return Layout(tp=tp, pp=pp, dp=parallel_state.get_data_parallel_world_size(),
                  tp_rank=parallel_state.get_tensor_model_parallel_rank(),
                  pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
                  dp_rank=parallel_state.get_data_parallel_rank(), ep=ep, sp=sp and tp > 1)


def from_last_stage(value: Any, layout: Layout) -> Any:
    """The last pipeline stage's `value` on every stage of this pipeline (collective)."""
    if layout.pp == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=layout.last_stage_rank(), group=layout.pp_group)
    return box[0]


def all_reduce_sum(values: list[float], group: dist.ProcessGroup, size: int) -> list[float]:
    if size == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, group=group)
    return tensor.tolist()
