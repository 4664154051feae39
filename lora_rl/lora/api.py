"""Public LoRA operations on a model: apply, merge/unmerge, state dicts, disable."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig
from lora_rl.lora.layer import LoraLinear
from lora_rl.lora.matching import LoraWarning, match_names
from lora_rl.lora.spec import LoraSpec, lora_spec_from_config

_MEGATRON_LINEARS = ("ColumnParallelLinear", "RowParallelLinear")


@dataclass(frozen=True)
class LoraReport:
    patched: tuple[str, ...]
    trainable_params: int
    total_params: int
    scale: float
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ in _MEGATRON_LINEARS


def linear_module_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules()
            if name and _is_linear(module) and not isinstance(module, LoraLinear)
            and ".lora_" not in f".{name}"]


def apply_lora(model: nn.Module, cfg: DTensorLoraConfig | MegatronPeftConfig) -> LoraReport:
    """Freeze the model and wrap every matched linear in a LoraLinear (in place)."""
    spec: LoraSpec = lora_spec_from_config(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LoraWarning)
        names = match_names(linear_module_names(model), cfg)
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=2)
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoraLinear(getattr(parent, child), spec))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return LoraReport(tuple(names), trainable, total, spec.scale,
                      tuple(str(w.message) for w in caught))


def iter_lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            yield name, module


def merge_lora(model: nn.Module) -> None:
    for _, layer in iter_lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    for _, layer in iter_lora_layers(model):
        layer.unmerge()


def merge_and_unwrap(model: nn.Module) -> None:
    """Fold every adapter into its base weight and put the plain base module back (export)."""
    for name, layer in list(iter_lora_layers(model)):
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base)


@contextlib.contextmanager
def disable_lora(model: nn.Module) -> Iterator[None]:
    """The frozen base model (the DPO/GRPO reference policy), without copying weights."""
    layers = [layer for _, layer in iter_lora_layers(model)]
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield
    finally:
        for layer, was in zip(layers, previous):
            layer.disabled = was



def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in iter_lora_layers(model):
        out[f"{name}.lora_A.weight"] = layer.lora_A.weight.detach()
        out[f"{name}.lora_B.weight"] = layer.lora_B.weight.detach()
    return out


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strict: missing or unexpected keys, or a shape mismatch, raise ValueError."""
    own = lora_state_dict(model)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"adapter does not fit the model: missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(f"adapter tensor {key} has shape {tuple(value.shape)}, the model "
                             f"expects {tuple(own[key].shape)} (different LoRA rank?)")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))
