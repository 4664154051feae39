"""Whether a PEFT adapter directory fits a recipe's LoRA, without torch: what `validate`
(LR613) and both backends' `init_adapter_path` loading check, with one tolerance."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

SCALE_RTOL = 1e-9
"""Relative tolerance between the adapter's scale and the recipe's (JSON round trips of
alpha; alpha / sqrt(r) is not exact)."""


def lora_scale(rank: int, alpha: float, use_rslora: bool) -> float:
    """What the adapter output is multiplied by: alpha / rank, or alpha / sqrt(rank)."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def adapter_fit_problem(config: Mapping[str, Any], rank: int, scale: float) -> str | None:
    """Why an adapter_config.json (r, lora_alpha, use_rslora) does not fit a LoRA of `rank`
    scaled by `scale`; None when it fits. The scale, not alpha, is compared: alpha 16 with
    use_rslora on r=16 is the same adapter as alpha 64 without it."""
    r, alpha = config.get("r"), config.get("lora_alpha")
    rslora = config.get("use_rslora", False) is True
    if type(r) is not int or r != rank:
        return f"adapter rank r={r}, the recipe's dim={rank}"
    if type(alpha) not in (int, float) or not alpha > 0:
        return f"adapter lora_alpha={alpha!r} is not a positive number"
    theirs = lora_scale(r, float(alpha), rslora)
    if not math.isclose(theirs, scale, rel_tol=SCALE_RTOL):
        return (f"adapter lora_alpha={alpha:g} with use_rslora {str(rslora).lower()} scales by "
                f"{theirs:g}, the recipe's LoRA by {scale:g}")
    return None


RESIDUAL_INIT_PREFIXES: tuple[str, ...] = ("pissa", "olora", "corda", "loftq", "lora_ga")
"""PEFT `init_lora_weights` values that rewrite the base weights at init: an adapter saved
with one of them (without PEFT's conversion) only reproduces its model on that rewritten base."""


def residual_init_of(config: Mapping[str, Any]) -> str | None:
    """The adapter_config's base-rewriting `init_lora_weights` (`pissa`, `olora`, ...); None for
    an adapter that adds to the original base (`true`, `gaussian`, ...)."""
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(RESIDUAL_INIT_PREFIXES):
        return init
    return None
