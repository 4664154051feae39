"""This rank's pipeline stage of a Megatron Core GPTModel, filled with a HF decoder's weights
(the families `bridge.LlamaShape` maps: Llama, Mistral, Qwen2, Qwen3, and the MoE families
Mixtral and Qwen3-MoE with Megatron's MoE layer: SequentialMLP local experts, no grouped GEMM,
the alltoall token dispatcher, no load-balancing loss; the router is frozen like every base
weight).

The model uses Megatron's local layer spec (torch modules, no Transformer Engine). Parameter
names inside a stage count layers from 0; lora-rl names them by *global* layer index everywhere
(checkpoints, LoRA matching), via `global_name`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lora_rl.backends.megatron import cpu_shim
from lora_rl.backends.megatron.bridge import LlamaShape, hf_to_megatron
from lora_rl.backends.megatron.parallel import Layout
from lora_rl.backends.megatron.sharding import Sharder, padded_vocab_size
from lora_rl.errors import SetupError

_LOCAL_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_LOCAL_EXPERT = re.compile(r"^mlp\.experts\.local_experts\.(\d+)\.")


def load_shape(model_dir: Path, trust_remote_code: bool) -> LlamaShape:
    from transformers import AutoConfig

    return LlamaShape.from_hf(AutoConfig.from_pretrained(model_dir,
                                                         trust_remote_code=trust_remote_code))


def transformer_config(shape: LlamaShape, layout: Layout, dtype: torch.dtype):
    from megatron.core.transformer.transformer_config import TransformerConfig

    fields = dict(
        num_layers=shape.num_layers, hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size, num_attention_heads=shape.num_heads,
        num_query_groups=shape.num_kv_heads, kv_channels=shape.head_dim,
        normalization="RMSNorm", layernorm_epsilon=shape.rms_norm_eps,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False,
        add_qkv_bias=shape.qkv_bias, qk_layernorm=shape.qk_norm,
        hidden_dropout=0.0, attention_dropout=shape.attention_dropout,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
        expert_model_parallel_size=layout.ep, expert_tensor_parallel_size=1,
        sequence_parallel=layout.sp,
        # Weights come from the HF checkpoint: skip Megatron's random init, build on the CPU.
        use_cpu_initialization=True, perform_initialization=False,
        # Micro-batches are padded per batch, so shapes differ; pipeline stages exchange them.
        variable_seq_lengths=True,
        # Losses arrive normalised for the global batch: the schedule must not rescale them.
        calculate_per_token_loss=True,
        # The default dispatcher ("allgather") rejects variable_seq_lengths at config time (a
        # dense model does not use it at all).
        moe_token_dispatcher_type="alltoall",
        **_moe_fields(shape),
        **(cpu_shim.CPU_CONFIG if cpu_shim.needed() else {}),
    )
    with warnings.catch_warnings():
        # Megatron warns about its own default CUDA-graph scope, which is unused here.
        warnings.filterwarnings("ignore", message="full scope is deprecated")
        return TransformerConfig(**fields)


def _moe_fields(shape: LlamaShape) -> dict:
    if not shape.num_experts:
        return {}
    return dict(
        num_moe_experts=shape.num_experts, moe_ffn_hidden_size=shape.moe_ffn_hidden_size,
        moe_router_topk=shape.moe_topk, moe_router_pre_softmax=shape.moe_pre_softmax,
        # HF computes no auxiliary loss unless output_router_logits (refused by the bridge).
        moe_router_load_balancing_type="none", moe_aux_loss_coeff=0.0,
        # SequentialMLP: one ColumnParallelLinear/RowParallelLinear pair per local expert, the
        # linears LoRA wraps; the fused kernels need Transformer Engine.
        moe_grouped_gemm=False, moe_permute_fusion=False, moe_router_fusion=False,
    )


def build_stage(shape: LlamaShape, layout: Layout, dtype: torch.dtype,
                activation_checkpointing: bool) -> torch.nn.Module:
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    if shape.num_experts and layout.tp > 1 and not layout.sp:
        # validate refuses it first (LR415); this guards callers that skipped validation.
        raise SetupError(f"model_type {shape.model_type!r} has MoE layers, which megatron-core "
                         "trains under tensor parallelism only with sequence parallelism: set "
                         "policy.megatron_cfg.sequence_parallel: true")
    config = transformer_config(shape, layout, dtype)
    spec = get_gpt_layer_local_spec(num_experts=shape.num_experts or None,
                                    moe_grouped_gemm=False, normalization="RMSNorm",
                                    qk_layernorm=shape.qk_norm)
    model = GPTModel(
        config, _with_rms_norms(spec, config),
        vocab_size=padded_vocab_size(shape.vocab_size, layout.tp),
        max_sequence_length=shape.max_positions,
        pre_process=layout.first_stage, post_process=layout.last_stage,
        parallel_output=True, share_embeddings_and_output_weights=False,
        position_embedding_type="rope", rotary_base=int(shape.rope_theta),
    )
    if activation_checkpointing:
        for layer in model.decoder.layers:
            # torch's non-reentrant checkpoint, not Megatron's recompute: the latter saves and
            # restores CUDA RNG states.
            layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
    return model


class RMSNorm:
    """torch's RMSNorm for Megatron's layer specs (what the local spec's `WrappedTorchNorm`
    builds), whose weight is marked `sequence_parallel` under sequence parallelism: each
    tensor-parallel rank then normalises its own slice of the sequence, so the weight's gradient
    is summed over those ranks (`optim.partial_over_tensor_parallel`). The local spec's class
    refuses sequence parallelism for want of that mark. A class, not a function: Megatron's
    `build_module` calls classes but returns functions as they are."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **_: object) -> torch.nn.Module:
        norm = torch.nn.RMSNorm(hidden_size, eps=eps)
        norm.weight.sequence_parallel = config.sequence_parallel
        return norm


def _with_rms_norms(spec, config):
    """The block spec of `spec`'s layers with every norm built by `RMSNorm`, the final one
    too."""
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_block import (
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    def swap(node):
        if node is WrappedTorchNorm:
            return RMSNorm
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            return dataclasses.replace(node, **{f.name: swap(getattr(node, f.name))
                                                for f in dataclasses.fields(node)
                                                if f.init})
        return node

    layer = swap(spec)
    return TransformerBlockSubmodules(layer_specs=[layer] * get_num_layers_to_build(config),
                                      layer_norm=RMSNorm)


def global_name(model: torch.nn.Module, local: str) -> str:
    match = _LOCAL_LAYER.match(local)
    if match is None:
        return local
    layer = model.decoder.layers[int(match[1])]
    rest = local[match.end():]
    expert = _LOCAL_EXPERT.match(rest)
    if expert is not None:
        # Under expert parallelism each rank numbers its own experts from 0.
        index = layer.mlp.local_expert_indices[int(expert[1])]
        rest = f"mlp.experts.local_experts.{index}.{rest[expert.end():]}"
    return f"decoder.layers.{layer.layer_number - 1}.{rest}"


def named_parameters(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(global name, parameter) for this stage."""
    for local, param in model.named_parameters():
        yield global_name(model, local), param


@torch.no_grad()
def load_whole(params: dict[str, torch.Tensor], whole: dict[str, torch.Tensor],
               sharder: Sharder, names: list[str]) -> None:
    """Copy this rank's shard of each whole tensor into the parameters named `names`."""
    for name in names:
        local = sharder.shard(name, whole[name])
        if local.shape != params[name].shape:
            raise ValueError(f"{name}: shard shape {tuple(local.shape)} does not fit the "
                             f"parameter {tuple(params[name].shape)}")
        params[name].copy_(local)


def load_hf_weights(model: torch.nn.Module, model_dir: Path, shape: LlamaShape, sharder: Sharder,
                    dtype: torch.dtype, trust_remote_code: bool) -> None:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                              trust_remote_code=trust_remote_code)
    params = dict(named_parameters(model))
    names = list(params)
    load_whole(params, hf_to_megatron(hf.state_dict(), names, shape), sharder, names)
