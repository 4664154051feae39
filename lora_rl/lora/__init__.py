"""LoRA layers, matching, merge/unmerge and adapter state dicts, shared by both backends.

Attributes load lazily: `spec`, `matching`, `naming` and `kernel_select` are torch-free (or
import torch only when asked) and serve `lora-rl validate` / `explain`, which must not pay for
torch; triton is imported only when the Triton path actually runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoraSpec": "lora_rl.lora.spec",
    "lora_spec_from_config": "lora_rl.lora.spec",
    "semantics_of": "lora_rl.lora.spec",
    "LoraLinear": "lora_rl.lora.layer",
    "LoraMatchError": "lora_rl.lora.matching",
    "LoraWarning": "lora_rl.lora.matching",
    "ModuleMatcher": "lora_rl.lora.matching",
    "MatchResult": "lora_rl.lora.matching",
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
    "lora_plus_parameters": "lora_rl.lora.api",
    "linear_module_names": "lora_rl.lora.api",
    "to_megatron_bridge": "lora_rl.lora.naming",
    "from_megatron_bridge": "lora_rl.lora.naming",
    "triton_path_active": "lora_rl.lora.kernel_select",
    "triton_path_reason": "lora_rl.lora.kernel_select",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lora_rl.lora' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
