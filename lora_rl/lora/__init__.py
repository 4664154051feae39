"""LoRA layers, matching, merge/unmerge and adapter state dicts, shared by both backends.

Attributes load lazily: `lora_rl.lora.matching` is torch-free and used by `lora-rl validate`,
which must not pay for (or require) torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoraLinear": "lora_rl.lora.layer",
    "LoraSpec": "lora_rl.lora.spec",
    "lora_spec_from_config": "lora_rl.lora.spec",
    "LoraMatchError": "lora_rl.lora.matching",
    "LoraWarning": "lora_rl.lora.matching",
    "match_names": "lora_rl.lora.matching",
    "LoraReport": "lora_rl.lora.api",
    "apply_lora": "lora_rl.lora.api",
    "merge_lora": "lora_rl.lora.api",
    "unmerge_lora": "lora_rl.lora.api",
    "merge_and_unwrap": "lora_rl.lora.api",
    "disable_lora": "lora_rl.lora.api",
    "lora_state_dict": "lora_rl.lora.api",
    "load_lora_state_dict": "lora_rl.lora.api",
    "iter_lora_layers": "lora_rl.lora.api",
    "linear_module_names": "lora_rl.lora.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lora_rl.lora' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
