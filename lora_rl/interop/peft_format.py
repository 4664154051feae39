"""The Hugging Face PEFT adapter layout, both ways.

lora-rl names adapter tensors by the HF module path (`model.layers.0.self_attn.q_proj.lora_A.
weight`); PEFT prefixes `base_model.model.` and, in memory, inserts the adapter name
(`.default`), which saved files drop.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

if TYPE_CHECKING:
    from lora_rl.lora.spec import LoraSpec

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


class AdapterFormatError(ValueError):
    pass


def to_peft_keys(adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {PEFT_PREFIX + key: value for key, value in adapter.items()}


def from_peft_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tensors.items():
        bare = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        match = _LORA_KEY.match(bare)
        if match is None:
            raise AdapterFormatError(f"tensor {key!r} is not a LoRA A/B weight")
        out[f"{match['module']}.lora_{match['ab']}.weight"] = value
    return out


def patched_modules(adapter: dict[str, torch.Tensor]) -> list[str]:
    return sorted({_LORA_KEY.match(k)["module"] for k in adapter if _LORA_KEY.match(k)})


def wrap_adapter_modules(model: torch.nn.Module, adapter: dict[str, torch.Tensor],
                         spec: LoraSpec) -> list[str]:
    """Freeze `model` and wrap exactly the modules an HF-named adapter names in `LoraLinear`s
    (in place); the wrapped module names. For adapters whose module set is not what a recipe's
    matcher would pick on a HF model, e.g. one trained on the Megatron backend (q/k/v and
    gate/up each get their own A, holding the fused module's shared values)."""
    from lora_rl.lora import LoraLinear

    modules = patched_modules(adapter)
    if not modules:
        raise AdapterFormatError("the adapter has no LoRA A/B weights")
    model.requires_grad_(False)
    for name in modules:
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            base = getattr(parent, child)
        except AttributeError:
            raise AdapterFormatError(f"the adapter names {name!r}, which the model does not "
                                     "have (another base model?)") from None
        if not isinstance(base, torch.nn.Linear):
            raise AdapterFormatError(f"the adapter names {name!r}, which is a "
                                     f"{type(base).__name__}, not a linear layer")
        setattr(parent, child, LoraLinear(base, spec))
    return modules


def adapter_config(*, rank: int, alpha: float, dropout: float, modules: list[str],
                   base_model: str) -> dict[str, Any]:
    short = sorted({name.rsplit(".", 1)[-1] for name in modules})
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "lora_dropout": dropout, "target_modules": short, "base_model_name_or_path": base_model,
        "fan_in_fan_out": False, "bias": "none", "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "inference_mode": True, "peft_version": peft_version(),
    }


PEFT_FORMAT_VERSION = "0.13.0"
"""The oldest peft whose adapter layout lora-rl writes (pyproject's `peft>=0.13`)."""


def peft_version() -> str:
    """The installed peft's version (what peft itself records), else the oldest it supports."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peft")
    except PackageNotFoundError:
        return PEFT_FORMAT_VERSION


def read_adapter(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config, lora-rl-keyed tensors) of a PEFT adapter directory."""
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not config_path.is_file() or not weights_path.is_file():
        raise AdapterFormatError(f"{directory} is not a PEFT adapter directory (needs "
                                 f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterFormatError(f"{config_path}: unreadable ({exc})") from None
    if config.get("peft_type") != "LORA":
        raise AdapterFormatError(f"{config_path}: peft_type is {config.get('peft_type')!r}, "
                                 "lora-rl reads LORA adapters")
    return config, from_peft_keys(load_file(str(weights_path)))
