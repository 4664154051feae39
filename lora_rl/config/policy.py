"""`policy`: the model being trained, its backend (DTensor or Megatron Core) and its generator."""


import difflib
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from lora_rl.config.base import DType, PositiveInt, Section, compat, section_default
from lora_rl.config.generation import GenerationConfig
from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig
from lora_rl.config.megatron import EnvVars, MegatronConfig
from lora_rl.config.quantization import QuantizationConfig


class TokenizerConfig(Section):
    """Tokenizer to load; defaults to the model's own."""

    name: str | None = None
    """Local path or name of the tokenizer; null means `policy.model_name`."""
    chat_template: str | None = "default"
    """Chat template, as in NeMo RL: `default` uses the tokenizer's own (chat data then needs
    one; plain prompt/response records are concatenated when it has none), a path ending in
    `.jinja` is read from that file, any other text is the Jinja template itself, and null
    concatenates the messages' text (BOS first, EOS after each response) with no template."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Extra variables for the chat template (e.g. `enable_thinking: false`)."""
    use_fastokens: bool = compat(False)
    """NeMo RL's fast tokenizer wrapper."""


class SequencePackingConfig(Section):
    """NeMo RL's sequence packing; lora-rl packs SFT training batches on the DTensor
    backend."""

    enabled: bool = False
    """Pack several examples into each row of `max_total_sequence_length` tokens, first-fit
    decreasing; position ids restart and a block-diagonal causal mask keeps attention inside
    each example, so the loss equals unpacked training."""
    train_mb_tokens: PositiveInt | None = None
    """Token budget of a packed micro-batch (rows x max_total_sequence_length); null means
    `max_total_sequence_length x train_micro_batch_size`."""
    logprob_mb_tokens: PositiveInt | None = compat(None)
    """Token budget of packed log-prob batches (GRPO)."""
    algorithm: str | None = compat("modified_first_fit_decreasing")
    """Bin-packing algorithm (lora-rl: first-fit decreasing)."""
    sequence_length_round: PositiveInt | None = compat(64)
    """Round packed lengths to a multiple of this."""
    microbatch_order: str | None = compat(None)
    """Order of packed micro-batches."""


OptimizerName = Literal["torch.optim.AdamW", "torch.optim.Adam", "torch.optim.SGD"]


class OptimizerKwargs(Section):
    """Keyword arguments of the torch optimizer (typos here are caught like anywhere else)."""

    lr: float = Field(5.0e-6, gt=0)
    """Peak learning rate. LoRA typically wants 10-100x the full fine-tuning rate (1e-4..1e-3)."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay (AdamW) or L2 (Adam, SGD)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam moment decay rates."""
    eps: float = Field(1.0e-8, gt=0)
    """Adam denominator epsilon."""
    momentum: float = Field(0.0, ge=0)
    """SGD momentum (SGD only)."""
    foreach: bool | None = None
    """Use the multi-tensor implementation; null lets torch decide."""
    fused: bool | None = compat(False)
    """Fused CUDA kernels; ignored on CPU."""


class OptimizerConfig(Section):
    """Optimizer over the trainable parameters only (the LoRA adapters when LoRA is on)."""

    name: OptimizerName = "torch.optim.AdamW"
    """Import path of the torch optimizer class."""
    kwargs: OptimizerKwargs = Field(default_factory=section_default(OptimizerKwargs))
    """Arguments passed to the optimizer."""


SchedulerName = Literal[
    "torch.optim.lr_scheduler.LinearLR",
    "torch.optim.lr_scheduler.ConstantLR",
    "torch.optim.lr_scheduler.CosineAnnealingLR",
]


class SchedulerStep(Section):
    """One torch LR scheduler; several in a list are chained with SequentialLR."""

    name: SchedulerName
    """Import path of the torch scheduler class."""
    kwargs: dict[str, float | int] = Field(default_factory=dict)
    """Arguments of the scheduler (e.g. start_factor, end_factor, total_iters, T_max, eta_min)."""


class SchedulerMilestones(Section):
    """Optimizer steps at which SequentialLR switches to the next scheduler in the list."""

    milestones: list[PositiveInt]
    """One milestone fewer than there are schedulers, increasing."""


def _scheduler_entry_kind(entry: Any) -> str:
    """Which kind of scheduler list item `entry` is meant to be, so that a wrong item is judged
    as that kind only: a `milestones` entry when it has no `name` and a key that is (nearly)
    `milestones`, else a scheduler."""
    if isinstance(entry, SchedulerMilestones):
        return "milestones"
    if not isinstance(entry, dict) or "name" in entry:
        return "step"
    near = any(difflib.get_close_matches(str(key), ["milestones"], n=1, cutoff=0.6)
               for key in entry)
    return "milestones" if near else "step"


SchedulerEntry = Annotated[
    Annotated[SchedulerStep, Tag("step")] | Annotated[SchedulerMilestones, Tag("milestones")],
    Discriminator(_scheduler_entry_kind),
]


class DTensorConfig(Section):
    """The PyTorch DTensor backend: FSDP2 data parallel plus tensor parallel."""

    enabled: bool = True
    """Train on this backend. Exactly one of `dtensor_cfg.enabled` / `megatron_cfg.enabled`."""
    v2: bool = Field(False, alias="_v2")
    """NeMo RL's DTensor v2 worker (Automodel). LoRA needs it; false by default as in NeMo RL."""
    tensor_parallel_size: PositiveInt = 1
    """Tensor-parallel degree; must divide attention heads, KV heads and hidden size."""
    context_parallel_size: PositiveInt = 1
    """Context-parallel degree; lora-rl implements only 1."""
    sequence_parallel: bool = compat(False)
    """Shard norm/dropout activations along the sequence under TP."""
    activation_checkpointing: bool = False
    """Recompute decoder-layer activations in backward: less memory, ~30% more compute."""
    cpu_offload: bool = compat(False)
    """Offload parameters to CPU (FSDP2 CPUOffloadPolicy)."""
    custom_parallel_plan: str | None = compat(None)
    """Import path of a custom TP plan."""
    clear_cache_every_n_steps: int | None = compat(None)
    """Empty the CUDA cache every n steps."""
    dp_replicate_size: PositiveInt = compat(1)
    """HSDP replica groups (lora-rl shards over all data-parallel ranks)."""
    expert_parallel_size: PositiveInt = compat(1)
    """MoE expert parallelism."""
    defer_fsdp_grad_sync: bool | None = compat(None)
    """Defer FSDP gradient sync to the last micro-batch (lora-rl always does)."""
    moe_parallelizer: dict[str, Any] | None = compat(None)
    """Automodel MoE parallelizer settings."""
    automodel_kwargs: dict[str, Any] | None = compat({})
    """Extra arguments to NeMo Automodel (e.g. `force_hf`, `use_liger_kernel`)."""
    env_vars: EnvVars = Field(default_factory=dict)
    """Environment variables set in every worker process."""
    lora_cfg: DTensorLoraConfig = Field(default_factory=section_default(DTensorLoraConfig))
    """LoRA on this backend."""


class PolicyConfig(Section):
    """The model being trained."""

    model_name: str
    """A local Hugging Face model directory, or `lora-rl/tiny-llama` for the embedded tiny
    model (built locally on first use)."""
    tokenizer: TokenizerConfig = Field(default_factory=section_default(TokenizerConfig))
    """Tokenizer settings."""
    precision: DType = "bfloat16"
    """Dtype of the base weights and compute. Use float32 on CPU."""
    quantization: QuantizationConfig | None = None
    """Load the frozen base quantized to 4 or 8 bits with bitsandbytes (QLoRA: LoRA trains on
    top in `lora_cfg.lora_dtype`); null loads it in `precision`. DTensor LoRA, one process."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code when loading it. Only for sources you trust."""
    allow_pickle_weights: bool = False
    """Accept a model directory whose weights are pickle files only (`pytorch_model.bin`, `.pt`):
    they are opened with `torch.load(weights_only=True)`. Off: such a model is refused (LR804)
    with the command that converts it to safetensors."""
    init_adapter_path: str | None = None
    """Start from an existing PEFT adapter directory (continued training, or GRPO from an SFT
    adapter) instead of freshly initialised LoRA weights."""
    train_global_batch_size: PositiveInt = 32
    """Samples per optimizer step across all data-parallel ranks."""
    train_micro_batch_size: PositiveInt = 1
    """Samples per forward/backward on one rank; the rest is gradient accumulation."""
    logprob_batch_size: PositiveInt | None = None
    """Samples per forward when computing log-probabilities (DPO/GRPO). lora-rl computes them
    per train micro-batch: null or `train_micro_batch_size`; another value is warned about."""
    max_total_sequence_length: PositiveInt = 1024
    """Longest prompt + response, in tokens."""
    generation_batch_size: PositiveInt | None = compat(None)
    """Prompts per generation call."""
    logprob_chunk_size: PositiveInt | None = compat(None)
    """Sequence chunk of the log-prob computation."""
    offload_optimizer_for_logprob: bool = compat(False)
    """Move optimizer state off the device while computing log-probs."""
    hf_config_overrides: dict[str, Any] | None = compat({})
    """Overrides applied to the model's Hugging Face config."""
    draft: dict[str, Any] | None = compat(None)
    """Draft model for speculative decoding (`enabled`, `model_name`, ...)."""
    router_replay: dict[str, Any] | None = compat(None)
    """Replay vLLM's MoE expert routing in training (`enabled`, ...)."""
    max_grad_norm: float | None = Field(1.0, ge=0)
    """Clip the global gradient norm to this; null or 0 disables clipping (0 as in Megatron's
    `clip_grad`, which NeMo RL recipes interpolate from this key)."""
    make_sequence_length_divisible_by: PositiveInt = compat(1)
    """Pad sequence lengths to a multiple of this (lora-rl pads to the longest in the
    micro-batch)."""
    refit_buffer_size_gb: float | None = compat(None)
    """Weight-refit buffer for a separate generation engine."""
    dynamic_batching: dict[str, Any] | None = compat(None)
    """NeMo RL's token-budget micro-batching."""
    sequence_packing: SequencePackingConfig = Field(
        default_factory=section_default(SequencePackingConfig))
    """Several SFT examples per row (attention kept inside each example)."""
    optimizer: OptimizerConfig | None = Field(default_factory=section_default(OptimizerConfig))
    """DTensor optimizer. Megatron uses `megatron_cfg.optimizer`; NeMo RL's Megatron recipes set
    this to null to say so (the DTensor backend needs it, rule LR131)."""
    scheduler: list[SchedulerEntry] | None = None
    """LR schedule: one scheduler, or several with a final `milestones` entry; null is constant."""
    dtensor_cfg: DTensorConfig = Field(default_factory=section_default(DTensorConfig))
    """DTensor (FSDP2 + TP) backend."""
    megatron_cfg: MegatronConfig = Field(default_factory=section_default(MegatronConfig))
    """Megatron Core backend."""
    generation: GenerationConfig | None = None
    """Rollout generation (GRPO; optional elsewhere)."""

    @property
    def active_lora_key(self) -> str:
        """Dotted recipe key of the LoRA block of the backend that runs, enabled or not."""
        return "policy.megatron_cfg.peft" if self.megatron_cfg.enabled \
            else "policy.dtensor_cfg.lora_cfg"

    @property
    def active_lora(self) -> DTensorLoraConfig | MegatronPeftConfig | None:
        """The LoRA block of the backend that runs, when it is enabled."""
        block = self.megatron_cfg.peft if self.megatron_cfg.enabled else self.dtensor_cfg.lora_cfg
        return block if block.enabled else None

    @property
    def backend(self) -> Literal["dtensor", "megatron"]:
        return "megatron" if self.megatron_cfg.enabled else "dtensor"
