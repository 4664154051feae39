"""A backend-neutral LoRA specification, from either recipe block.

Torch-free on purpose: `lora-rl validate` and `explain` build specs without paying for torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig
from lora_rl.interop.adapter_fit import lora_scale

Semantics = Literal["dtensor", "megatron"]
InitMethod = Literal["zero", "xavier", "uniform", "normal", "kaiming"]
WeightInit = Literal["default", "pissa", "olora"]

INIT_METHODS: tuple[str, ...] = ("zero", "xavier", "uniform", "normal", "kaiming")
ADAPTER_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
WEIGHT_INITS: tuple[str, ...] = ("default", "pissa", "olora")


@dataclass(frozen=True)
class LoraSpec:
    """What one adapter looks like; which modules get one is `ModuleMatcher`'s business."""

    rank: int
    alpha: float
    dropout: float = 0.0
    dropout_position: Literal["pre", "post"] = "post"
    a_init: InitMethod = "xavier"
    b_init: InitMethod = "zero"
    dtype: str | None = None
    """Adapter weight dtype name (`float32`, ...); None follows the base layer."""
    use_triton: bool = False
    """Ask for the fused Triton kernel; it only runs where `triton_path_active` says so."""
    use_rslora: bool = False
    """Rank-stabilised scale alpha / sqrt(rank) instead of alpha / rank (PEFT's `use_rslora`)."""
    use_dora: bool = False
    """Weight-decomposed LoRA (PEFT's `use_dora`): a trainable per-output-row magnitude times the
    direction of W + scale * B A."""
    weight_init: WeightInit = "default"
    """`default`: A and B from `a_init`/`b_init`. `pissa`/`olora` (PEFT's `init_lora_weights`):
    A and B from the base weight's SVD/QR, and the base rewritten to the residual (see
    `residual_init`)."""

    def __post_init__(self) -> None:
        # Specs are also built by hand (tests, benchmarks, export), not only from validated
        # configs, so the invariants the layer relies on are checked here once.
        problems = []
        if self.rank < 1:
            problems.append(f"rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            problems.append(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout_position not in ("pre", "post"):
            problems.append(f"dropout_position must be 'pre' or 'post', got "
                            f"{self.dropout_position!r}")
        for which, method in (("a_init", self.a_init), ("b_init", self.b_init)):
            if method not in INIT_METHODS:
                problems.append(f"{which} must be one of {', '.join(INIT_METHODS)}, got {method!r}")
        if self.dtype is not None and self.dtype not in ADAPTER_DTYPES:
            problems.append(f"dtype must be one of {', '.join(ADAPTER_DTYPES)} or None, got "
                            f"{self.dtype!r}")
        if self.use_dora and self.use_triton:
            problems.append("use_dora has no Triton kernel; set use_triton False")
        if self.use_dora and self.dropout > 0 and self.dropout_position == "post":
            problems.append("use_dora applies dropout to the input (PEFT); set dropout_position "
                            "'pre'")
        if self.weight_init not in WEIGHT_INITS:
            problems.append(f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got "
                            f"{self.weight_init!r}")
        if self.weight_init != "default" and self.use_dora:
            problems.append(f"{self.weight_init} with use_dora is not supported")
        if problems:
            raise ValueError("invalid LoraSpec: " + "; ".join(problems))

    @property
    def scale(self) -> float:
        return lora_scale(self.rank, self.alpha, self.use_rslora)

    @property
    def scale_formula(self) -> str:
        return "alpha/sqrt(dim)" if self.use_rslora else "alpha/dim"


def lora_spec_from_config(cfg: DTensorLoraConfig | MegatronPeftConfig) -> LoraSpec:
    if isinstance(cfg, MegatronPeftConfig):
        # Megatron-Bridge has no Triton LoRA path; its adapters may have their own dtype.
        return LoraSpec(rank=cfg.dim, alpha=cfg.alpha, dropout=cfg.dropout,
                        dropout_position=cfg.dropout_position, a_init=cfg.lora_A_init_method,
                        b_init=cfg.lora_B_init_method, dtype=cfg.lora_dtype, use_triton=False,
                        use_rslora=cfg.use_rslora, use_dora=cfg.use_dora,
                        # validate refuses a residual init with DoRA (LR157)
                        weight_init="default" if cfg.use_dora else weight_init_of(cfg))
    if isinstance(cfg, DTensorLoraConfig):
        # Automodel always starts B at zero; adapters follow the base dtype unless lora_dtype.
        return LoraSpec(rank=cfg.dim, alpha=cfg.alpha, dropout=cfg.dropout,
                        dropout_position=cfg.dropout_position, a_init=cfg.lora_A_init,
                        b_init="zero", dtype=cfg.lora_dtype,
                        use_triton=cfg.use_triton and not cfg.use_dora,  # validate refuses both
                        use_rslora=cfg.use_rslora, use_dora=cfg.use_dora,
                        # validate refuses a residual init with DoRA (LR157)
                        weight_init="default" if cfg.use_dora else weight_init_of(cfg))
    raise TypeError(f"expected DTensorLoraConfig or MegatronPeftConfig, got {type(cfg).__name__}")


def weight_init_of(cfg: DTensorLoraConfig | MegatronPeftConfig) -> WeightInit:
    """The spec's `weight_init` for the recipe's `init_lora_weights` (PEFT's `true` is
    `default`)."""
    value = cfg.init_lora_weights
    return "default" if value is True else value


def semantics_of(cfg: DTensorLoraConfig | MegatronPeftConfig) -> Semantics:
    return "megatron" if isinstance(cfg, MegatronPeftConfig) else "dtensor"
