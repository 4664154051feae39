"""`policy.generation`: how GRPO rollouts are sampled, and how LoRA weights reach the sampler."""


from typing import Any, Literal

from pydantic import Field

from lora_rl.config.base import DType, NonNegativeInt, PositiveInt, Section, compat, section_default


class VllmConfig(Section):
    """vLLM engine settings (NeMo RL names). Used when `generation.backend: vllm`."""

    tensor_parallel_size: PositiveInt = 1
    """vLLM tensor-parallel degree. 1: the engine runs inside each training process (no extra
    processes; fastest for models that fit one device). More: the model is sharded over that
    many vLLM worker processes; with several training ranks, each `tensor_parallel_size`
    consecutive ranks share one such engine, owned by the first (rule LR308: it must divide
    `cluster.gpus_per_node`)."""
    pipeline_parallel_size: PositiveInt = 1
    """vLLM pipeline-parallel degree: the layers are split into that many stages, each in worker
    processes of its own (`tensor_parallel_size` per stage). The engine then has tp x pp
    workers and, with several training ranks, serves tp x pp consecutive ranks (rule LR308: the
    product must divide `cluster.gpus_per_node`)."""
    expert_parallel_size: PositiveInt = compat(1)
    """vLLM expert parallelism."""
    gpu_memory_utilization: float = Field(0.6, gt=0, le=1)
    """Share of device memory vLLM may take (weights + KV cache)."""
    max_model_len: PositiveInt | None = None
    """Longest sequence vLLM serves; null means `policy.max_total_sequence_length`."""
    precision: DType | None = None
    """vLLM dtype; null means `policy.precision`."""
    enforce_eager: bool = False
    """Disable CUDA graphs (always eager on CPU)."""
    kv_cache_memory_bytes: PositiveInt | None = None
    """Explicit KV cache size; on CPU this avoids vLLM's memory probe."""
    async_engine: bool = compat(False)
    """vLLM's async engine."""
    use_deep_gemm: bool = compat(False)
    """DeepGEMM kernels."""
    num_last_layers_in_bf16: int = compat(0)
    """FP8 generation detail."""
    load_format: str = compat("auto")
    """vLLM weight load format."""
    skip_tokenizer_init: bool = compat(False)
    """Skip loading the tokenizer in vLLM."""
    hf_overrides: dict[str, Any] | None = compat(None)
    """Overrides applied to the HF config in vLLM."""
    kv_cache_dtype: str = compat("auto")
    """KV cache dtype (e.g. fp8)."""
    logprobs_mode: str = compat("processed_logprobs")
    """Which log-probs vLLM returns."""
    use_tqdm: bool = compat(True)
    """vLLM progress bars."""
    num_first_layers_in_bf16: NonNegativeInt = compat(0)
    """FP8 generation detail."""
    enable_vllm_metrics_logger: bool = compat(True)
    """Log vLLM engine metrics."""
    vllm_metrics_logger_interval: float = compat(0.5)
    """Seconds between vLLM metrics samples."""
    http_refit_api_key_env_var: str | None = compat(None)
    """Environment variable holding the HTTP refit API key."""
    http_refit_server_port: PositiveInt | None = compat(None)
    """HTTP weight-refit server port."""
    zmq_refit_server_port: PositiveInt | None = compat(None)
    """ZMQ weight-refit server port."""
    reset_encoder_cache_after_weight_update: bool = compat(False)
    """Drop vLLM's encoder cache after a weight update."""


class ColocatedResources(Section):
    """Devices for a non-colocated generator."""

    gpus_per_node: PositiveInt | None = None
    """Devices per node given to generation."""
    num_nodes: PositiveInt | None = None
    """Nodes given to generation."""


class ColocatedConfig(Section):
    """Whether generation shares the training devices."""

    enabled: bool = True
    """Share devices with training (lora-rl only implements colocated generation)."""
    resources: ColocatedResources = Field(default_factory=section_default(ColocatedResources))
    """Devices for a separate generator."""


class GenerationConfig(Section):
    """Rollout sampling."""

    backend: Literal["torch", "vllm"] = "torch"
    """`torch`: lora-rl's native generator (KV cache, batched). `vllm`: the vllm extra."""
    max_new_tokens: PositiveInt = 16
    """Tokens sampled per response."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature; 0 is greedy."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    top_k: PositiveInt | None = None
    """Sample only from the k likeliest tokens; null disables."""
    stop_token_ids: list[int] | None = None
    """Extra token ids that end a response (EOS always does)."""
    stop_strings: list[str] | None = None
    """Strings that end a response."""
    lora_weight_sync: Literal["merge", "split"] = "merge"
    """`merge`: LoRA folded into the base weights (in fp32) for generation — fastest.
    `split`: the generator runs base + adapter unmerged — exact train/generate parity."""
    model_name: str | None = compat(None)
    """Generator model; always `policy.model_name` in lora-rl."""
    val_temperature: float | None = compat(None)
    """Validation sampling temperature (lora-rl validates greedily)."""
    val_top_p: float | None = compat(None)
    """Validation nucleus mass."""
    val_top_k: PositiveInt | None = compat(None)
    """Validation top-k."""
    port_range_low: PositiveInt = compat(3000)
    """Lowest port of the generation servers."""
    port_range_high: PositiveInt = compat(4999)
    """Highest port of the generation servers."""
    refit_transport: str | None = compat(None)
    """Weight-refit transport to a separate generator."""
    real_quant_export_cpu_offload: bool = compat(True)
    """Offload during quantized weight export."""
    refit_cfg: dict[str, Any] | None = compat(None)
    """Weight-refit settings (NIXL buckets, device, backend)."""
    mcore_generation_config: dict[str, Any] | None = compat(None)
    """Megatron Core inference engine settings."""
    vllm_kwargs: dict[str, Any] | None = compat({})
    """Extra arguments to the vLLM engine."""
    vllm_cfg: VllmConfig = Field(default_factory=section_default(VllmConfig))
    """vLLM engine settings."""
    colocated: ColocatedConfig = Field(default_factory=section_default(ColocatedConfig))
    """Device placement of the generator."""
