"""Both LoRA blocks: DTensor `policy.dtensor_cfg.lora_cfg` and Megatron `policy.megatron_cfg.peft`.

Field names, defaults and choices follow NeMo RL (DTensor from NeMo Automodel, Megatron from
Megatron-Bridge) so that its recipes load unchanged. Cross-field rules that need more than one
field (target vs exclude, use_triton with TP>1, ...) live in `lora_rl.config.rules`.
"""


from typing import Literal

from pydantic import Field

from lora_rl.config.base import DType, Section, compat

LoraAInit = Literal["xavier", "uniform", "normal", "kaiming"]
"""`xavier`: xavier-normal; `uniform`: kaiming-uniform(a=sqrt(5)) as PEFT; `normal`: N(0, 1/dim);
`kaiming`: kaiming-normal."""

DropoutPosition = Literal["pre", "post"]


class DTensorLoraConfig(Section):
    """LoRA on the DTensor (FSDP2 + tensor parallel) backend. Requires `dtensor_cfg._v2: true`."""

    enabled: bool = False
    """Train LoRA adapters instead of the full model."""
    target_modules: list[str] = Field(default_factory=list)
    """Module names to adapt: short HF names (`q_proj`) or full names with `*` wildcards
    (`model.layers.*.self_attn.q_proj`). Must be empty while `match_all_linear` is true."""
    exclude_modules: list[str] = Field(default_factory=list)
    """Module names to leave alone. With `match_all_linear: false` and no `target_modules`, every
    linear layer except these is adapted."""
    match_all_linear: bool = True
    """Adapt every linear layer of the decoder (not `lm_head`)."""
    dim: int = Field(8, ge=1)
    """LoRA rank r. Higher gives more capacity and more memory; typical 4-64."""
    alpha: float = Field(32, gt=0)
    """Scale numerator: the adapter output is multiplied by alpha / dim (alpha / sqrt(dim) with
    `use_rslora`). Typical 16-64."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout probability on the LoRA branch."""
    dropout_position: DropoutPosition = "post"
    """`pre`: dropout on the LoRA input; `post`: on the LoRA branch output."""
    lora_A_init: LoraAInit = "xavier"
    """Initialisation of A (B always starts at zero, so training starts from the base model)."""
    use_triton: bool = True
    """Use the fused Triton LoRA kernel when CUDA is present (v2 path only, not with TP > 1).
    On CPU the torch path runs regardless; `lora-rl explain` says which."""
    use_rslora: bool = False
    """Rank-stabilised LoRA (PEFT's `use_rslora`): scale the adapter by alpha / sqrt(dim) instead
    of alpha / dim, so higher ranks keep learning at the same rate."""
    use_dora: bool = False
    """DoRA (PEFT's `use_dora`): each adapted layer also trains a magnitude per output row and
    applies it to the direction of W + scale * B A. Not with the Triton kernel, tensor
    parallelism or split-weight vLLM sync (`lora-rl validate` says why)."""
    init_lora_weights: Literal[True, "pissa", "olora"] = True
    """PEFT's `init_lora_weights`. `true`: A from `lora_A_init`, B zero. `pissa`: A and B from the
    r principal singular directions of each adapted weight (exact SVD), `olora`: from its QR
    decomposition; both rewrite the base weight to the residual W - scale * B A, so step 0 is
    still the base model and exports convert to a plain LoRA of rank 2 * dim. Not with DoRA,
    tensor parallelism, split-weight vLLM sync or `init_adapter_path` (`lora-rl validate` says
    why); the Megatron backend has its own (`megatron_cfg.peft.init_lora_weights`). PEFT's
    fast-SVD `pissa_niter_N` is not offered."""
    lora_dtype: DType | None = None
    """Adapter weight dtype (NeMo Automodel's `lora_dtype`); null follows the base layer.
    Required when the base is quantized (`policy.quantization`, or a quantized checkpoint)."""
    lora_plus_lr_ratio: float | None = Field(None, gt=0)
    """LoRA+ (PEFT's `create_loraplus_optimizer`): the B matrices train with the optimizer's
    learning rate times this ratio (A keeps the base rate); null trains both at one rate. The
    paper uses 2-16; lower the base learning rate a little when raising it."""


class MegatronPeftConfig(Section):
    """LoRA on the Megatron Core backend (Megatron-Bridge semantics). Requires
    `megatron_cfg.enabled: true` and `bridge_type: megatron-bridge`."""

    enabled: bool = False
    """Train LoRA adapters instead of the full model."""
    target_modules: list[str] | None = Field(default_factory=list)
    """Megatron module names: `linear_qkv`, `linear_proj`, `linear_fc1`, `linear_fc2`, or full
    names with `*` wildcards (`*.layers.0.*.linear_qkv`). Empty means all four. Canonical LoRA
    (one adapter per projection, like PEFT on q/k/v_proj, gate/up_proj): name the projections
    inside the fused modules instead, `linear_q`, `linear_k`, `linear_v`, `linear_fc1_gate`,
    `linear_fc1_up`; fused and canonical names do not mix."""
    exclude_modules: list[str] | None = Field(default_factory=list)
    """Linear modules to leave alone; requires `target_modules` empty or null. Canonical names
    here (`linear_k`) leave one projection of a fused module alone and adapt the others
    separately."""
    dim: int = Field(32, ge=1)
    """LoRA rank r."""
    alpha: float = Field(32, gt=0)
    """Scale numerator: the adapter output is multiplied by alpha / dim (alpha / sqrt(dim) with
    `use_rslora`)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout probability on the LoRA branch."""
    dropout_position: DropoutPosition = "pre"
    """`pre`: dropout on the LoRA input; `post`: on the LoRA branch output."""
    lora_A_init_method: LoraAInit = "xavier"
    """Initialisation of A (`linear_in`)."""
    lora_B_init_method: Literal["zero", "xavier", "uniform", "normal", "kaiming"] = "zero"
    """Initialisation of B (`linear_out`); must be `zero` so step 0 equals the base model."""
    a2a_experimental: bool = compat(False)
    """Megatron-Bridge's experimental all-to-all for MoE expert LoRA (lora-rl has no expert
    parallelism to apply it to)."""
    lora_dtype: DType | None = None
    """Adapter weight dtype; null follows the base layer. Required for quantized base weights."""
    use_rslora: bool = False
    """Rank-stabilised LoRA (PEFT's `use_rslora`): scale the adapter by alpha / sqrt(dim) instead
    of alpha / dim."""
    use_dora: bool = False
    """DoRA (PEFT's `use_dora`): each adapted module also trains a magnitude per output row and
    applies it to the direction of W + scale * B A (the same layer as the DTensor backend's).
    Fused targets only (not canonical ones), no MoE experts, and merged-weight vLLM sync
    (`lora-rl validate` says why); with tensor parallelism the row-parallel modules' row norms
    are summed over the ranks."""
    init_lora_weights: Literal[True, "pissa", "olora"] = True
    """PEFT's `init_lora_weights`. `true`: A and B from `lora_A_init_method` /
    `lora_B_init_method`. `pissa` (exact SVD) / `olora` (QR): A and B from each adapted
    projection's weight, which is rewritten to the residual W - scale * B A, so step 0 is still
    the base model and exports convert to a plain LoRA of rank 2 * dim. Canonical targets
    (`linear_q`, `linear_k`, `linear_v`, `linear_fc1_gate`, `linear_fc1_up`) and the unfused
    `linear_proj`, `linear_fc2` only (one adapter per PEFT module), at
    `tensor_model_parallel_size` 1, without DoRA, split-weight vLLM sync or `init_adapter_path`
    (`lora-rl validate` says why)."""
    lora_plus_lr_ratio: float | None = Field(None, gt=0)
    """LoRA+ (PEFT's `create_loraplus_optimizer`): the B matrices (and DoRA magnitudes) train
    with `optimizer.lr` times this ratio, A keeps `optimizer.lr`; null trains both at one rate.
    The paper uses 2-16."""


AnyLoraConfig = DTensorLoraConfig | MegatronPeftConfig
