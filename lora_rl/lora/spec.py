"""A backend-neutral LoRA specification, from either recipe block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig

Semantics = Literal["dtensor", "megatron"]


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    dropout: float
    dropout_position: Literal["pre", "post"]
    a_init: str
    b_init: str
    dtype: str | None
    use_triton: bool

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_spec_from_config(cfg: DTensorLoraConfig | MegatronPeftConfig) -> LoraSpec:
    if isinstance(cfg, MegatronPeftConfig):
        return LoraSpec(cfg.dim, cfg.alpha, cfg.dropout, cfg.dropout_position,
                        cfg.lora_A_init_method, cfg.lora_B_init_method, cfg.lora_dtype, False)
    return LoraSpec(cfg.dim, cfg.alpha, cfg.dropout, cfg.dropout_position, cfg.lora_A_init,
                    "zero", None, cfg.use_triton)


def semantics_of(cfg: DTensorLoraConfig | MegatronPeftConfig) -> Semantics:
    return "megatron" if isinstance(cfg, MegatronPeftConfig) else "dtensor"
