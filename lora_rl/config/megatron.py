"""`policy.megatron_cfg`: the Megatron Core backend, with NeMo RL's key names."""


from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema

from lora_rl.config.base import DType, NonNegativeInt, PositiveInt, Section, compat, section_default
from lora_rl.config.lora import MegatronPeftConfig


def _none_as_empty(value: Any) -> Any:
    # NeMo RL's grpo_math_1B.yaml writes `env_vars: null`: no variables.
    return {} if value is None else value


EnvVars = Annotated[
    dict[str, str],
    BeforeValidator(_none_as_empty),
    WithJsonSchema({"anyOf": [{"type": "object", "additionalProperties": {"type": "string"}},
                              {"type": "null"}]}),
]
"""Environment variables by name; null means none."""


class MegatronOptimizerConfig(Section):
    """Megatron's optimizer settings (NeMo RL names)."""

    optimizer: Literal["adam", "sgd"] = "adam"
    """Optimizer family."""
    lr: float = Field(5.0e-6, gt=0)
    """Peak learning rate."""
    min_lr: float = Field(0.0, ge=0)
    """Floor of the decayed learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay."""
    bf16: bool = compat(True)
    """Megatron bf16 mixed precision (lora-rl follows `policy.precision`)."""
    fp16: bool = compat(False)
    """Megatron fp16 mixed precision (lora-rl follows `policy.precision`)."""
    params_dtype: DType = "float32"
    """Dtype of the main (master) parameters."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    adam_eps: float = Field(1.0e-8, gt=0)
    """Adam epsilon."""
    sgd_momentum: float = 0.9
    """SGD momentum."""
    use_distributed_optimizer: bool = compat(True)
    """Shard optimizer state over data-parallel ranks."""
    use_precision_aware_optimizer: bool = compat(True)
    """Transformer Engine's precision-aware optimizer."""
    clip_grad: float | None = Field(1.0, ge=0)
    """Global gradient-norm clip; null or 0 disables it (Megatron: clipping only when > 0)."""
    optimizer_cpu_offload: bool = compat(False)
    """Offload optimizer state to CPU."""
    optimizer_offload_fraction: float = compat(0.0)
    """Share of optimizer state offloaded."""
    overlap_cpu_optimizer_d2h_h2d: bool = compat(False)
    """Overlap host/device copies of an offloaded optimizer."""


class MegatronSchedulerConfig(Section):
    """Megatron's LR / weight-decay schedule (NeMo RL names)."""

    start_weight_decay: float | None = compat(None)
    """Weight decay at step 0 (lora-rl keeps `optimizer.weight_decay` constant)."""
    end_weight_decay: float | None = compat(None)
    """Weight decay at the end (lora-rl keeps `optimizer.weight_decay` constant)."""
    weight_decay_incr_style: Literal["constant", "linear", "cosine"] = compat("constant")
    """How weight decay moves between start and end."""
    lr_decay_style: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate decay after warm-up."""
    lr_decay_iters: PositiveInt | None = None
    """Steps over which the LR decays to `min_lr`; null means the whole run."""
    lr_warmup_iters: int = Field(0, ge=0)
    """Linear warm-up steps."""
    lr_warmup_init: float = Field(0.0, ge=0)
    """Learning rate at step 0 of warm-up."""


class DistributedDataParallelConfig(Section):
    """Megatron DDP settings; lora-rl's CPU path uses plain gradient all-reduce."""

    grad_reduce_in_fp32: bool = compat(False)
    """Reduce gradients in fp32."""
    overlap_grad_reduce: bool = compat(True)
    """Overlap gradient reduce with backward."""
    overlap_param_gather: bool = compat(True)
    """Overlap parameter all-gather with forward."""
    average_in_collective: bool = compat(True)
    """Average inside the collective."""
    data_parallel_sharding_strategy: str = compat("optim_grads_params")
    """Megatron-FSDP sharding strategy."""
    use_custom_fsdp: bool = compat(False)
    """Use Megatron-FSDP."""


class MegatronCheckpointConfig(Section):
    """Megatron distributed-checkpoint settings (lora-rl writes safetensors, see
    `checkpointing`)."""

    async_save: bool = compat(False)
    """Save checkpoints asynchronously."""
    ckpt_assume_constant_structure: bool = compat(False)
    """Cache the checkpoint layout between saves."""


class MegatronConfig(Section):
    """The Megatron Core backend (GPTModel, tensor/pipeline/data parallel)."""

    enabled: bool = False
    """Train on this backend. Exactly one of `dtensor_cfg.enabled` / `megatron_cfg.enabled`."""
    bridge_type: Literal["megatron-bridge", "mbridge"] = "megatron-bridge"
    """HF<->Megatron bridge (AReaL's key). Only megatron-bridge has a LoRA path."""
    tensor_model_parallel_size: PositiveInt = 1
    """Tensor-parallel degree."""
    pipeline_model_parallel_size: PositiveInt = 1
    """Pipeline-parallel degree (number of stages)."""
    context_parallel_size: PositiveInt = 1
    """Context-parallel degree; lora-rl implements only 1."""
    expert_tensor_parallel_size: PositiveInt = compat(1)
    """MoE expert tensor parallelism."""
    expert_model_parallel_size: PositiveInt = 1
    """MoE expert parallelism: each group of this many ranks splits every MoE layer's experts
    among its ranks (tokens move by all-to-all); must divide the experts and the data-parallel
    size, times tensor_model_parallel_size under sequence parallelism (LR414)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism: with tensor parallelism, embeddings, norms and MoE layers
    each hold 1/tp of the sequence (less activation memory; micro-batches are right-padded to
    a multiple of tp). Needs tensor_model_parallel_size > 1 (LR207); MoE families need it at
    tp > 1 (LR415), as megatron-core does."""
    activation_checkpointing: bool = False
    """Full activation recompute per layer."""
    pipeline_dtype: DType | None = None
    """Dtype of pipeline activations; null means `policy.precision`."""
    num_layers_in_first_pipeline_stage: PositiveInt | None = compat(None)
    """Uneven first stage."""
    num_layers_in_last_pipeline_stage: PositiveInt | None = compat(None)
    """Uneven last stage."""
    empty_unused_memory_level: int = compat(1)
    """CUDA cache emptying level."""
    freeze_moe_router: bool = compat(False)
    """Freeze MoE router weights."""
    moe_router_dtype: str | None = compat(None)
    """MoE router dtype."""
    moe_router_load_balancing_type: str = compat("aux_loss")
    """MoE load balancing."""
    moe_router_bias_update_rate: float = compat(1.0e-3)
    """MoE router bias update rate."""
    moe_permute_fusion: bool = compat(True)
    """Fused MoE permute."""
    apply_rope_fusion: bool = compat(True)
    """Fused RoPE kernel (CUDA only)."""
    bias_activation_fusion: bool = compat(True)
    """Fused bias + activation kernel (CUDA only)."""
    defer_fp32_logits: bool | None = compat(False)
    """Keep logits in low precision until the loss."""
    moe_per_layer_logging: bool = compat(False)
    """Log MoE statistics per layer."""
    moe_enable_deepep: bool = compat(False)
    """DeepEP MoE dispatch."""
    moe_token_dispatcher_type: str = compat("alltoall")
    """MoE token dispatcher."""
    moe_shared_expert_overlap: bool = compat(False)
    """Overlap shared-expert compute with dispatch."""
    mtp_num_layers: NonNegativeInt = compat(0)
    """Multi-token-prediction layers."""
    mtp_loss_scaling_factor: float = compat(0.0)
    """Weight of the multi-token-prediction loss."""
    mtp_use_repeated_layer: bool = compat(False)
    """Share one MTP layer across prediction depths."""
    mtp_detach_heads: bool = compat(False)
    """Detach MTP heads from the trunk's gradient."""
    use_fused_linear_logprobs: bool = compat(False)
    """Fused output-layer + log-prob kernel."""
    fused_linear_logprobs_chunk_size: PositiveInt = compat(256)
    """Chunk of the fused log-prob kernel."""
    force_reconvert_from_hf: bool = compat(False)
    """Re-convert the HF checkpoint to Megatron format on every start (lora-rl maps
    HF weights in memory each time)."""
    cuda_graph_impl: str = compat("none")
    """CUDA graph implementation."""
    cuda_graph_modules: list[str] = compat([])
    """Modules captured in CUDA graphs."""
    cuda_graph_warmup_steps: NonNegativeInt = compat(3)
    """Eager steps before CUDA graph capture."""
    fine_grained_activation_offloading: bool = compat(False)
    """Offload chosen activations to CPU."""
    offload_modules: list[str] | None = compat(None)
    """Modules whose activations are offloaded."""
    recompute_granularity: str = compat("full")
    """Activation recompute granularity (`activation_checkpointing` turns on lora-rl's
    full-layer recompute)."""
    recompute_modules: list[str] | None = compat(None)
    """Modules recomputed under selective recompute."""
    use_gloo_process_groups: bool = compat(False)
    """Extra gloo process groups (lora-rl on CPU always uses gloo)."""
    gradient_accumulation_fusion: bool = compat(False)
    """Fused weight-gradient accumulation (CUDA only)."""
    use_fused_weighted_squared_relu: bool = compat(False)
    """Fused weighted squared-ReLU kernel."""
    model_overrides: dict[str, Any] | None = compat({})
    """Overrides applied to the Megatron model provider."""
    fp8_cfg: dict[str, Any] | None = compat(None)
    """FP8 training (`enabled`, `fp8`, `fp8_recipe`, `fp8_param`)."""
    env_vars: EnvVars = Field(default_factory=dict)
    """Environment variables set in every worker process."""
    checkpoint: MegatronCheckpointConfig = Field(
        default_factory=section_default(MegatronCheckpointConfig))
    """Megatron distributed-checkpoint settings."""
    optimizer: MegatronOptimizerConfig = Field(
        default_factory=section_default(MegatronOptimizerConfig))
    """Optimizer (Megatron names)."""
    scheduler: MegatronSchedulerConfig = Field(
        default_factory=section_default(MegatronSchedulerConfig))
    """LR schedule (Megatron names)."""
    distributed_data_parallel_config: DistributedDataParallelConfig = Field(
        default_factory=section_default(DistributedDataParallelConfig)
    )
    """Data-parallel gradient handling."""
    peft: MegatronPeftConfig = Field(default_factory=section_default(MegatronPeftConfig))
    """LoRA on this backend."""
