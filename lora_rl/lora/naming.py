"""Adapter tensor names: lora-rl's own, through wrappers, and Megatron-Bridge's.

lora-rl names an adapter by the module path in the *unwrapped* Hugging Face model plus
`.lora_A.weight` / `.lora_B.weight` (PEFT's layout minus `base_model.model.` and `.default`).
Megatron-Bridge wraps the base as `<module>.to_wrap` and keeps the adapter in
`<module>.adapter.linear_in` (A) / `.linear_out` (B); its canonical LoRA keeps one adapter per
projection of a fused module in `<module>.adapter.adapter_q.linear_in` (lora-rl:
`<module>.adapter_q.lora_A`); its `DoRALinear` keeps DoRA's magnitude in
`<module>.adapter.weight_magnitude` (lora-rl and PEFT: `<module>.lora_magnitude_vector`; the
same m / ||W + s B A|| row scaling). Checkpoints meant for it are renamed at export time instead
of giving the layer a second module structure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")

WRAPPER_COMPONENTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})
"""Path components inserted by torch.compile, FSDP1 and checkpoint_wrapper; none exists in the
model the user loaded, so no adapter name should carry them."""

_TO_BRIDGE = (("lora_A", ("adapter", "linear_in")), ("lora_B", ("adapter", "linear_out")),
              ("base", ("to_wrap",)))
_PROJECTION = "adapter_"
"""Canonical LoRA's per-projection adapters: adapter_q/k/v, adapter_gate/up."""


LORA_PLUS_SUFFIXES = (".lora_B.weight", ".lora_magnitude_vector")
"""The adapter parameters LoRA+ trains at the higher rate: B, and DoRA's 1-D magnitude (PEFT's
`create_loraplus_optimizer` puts both in its `groupB`)."""


def is_lora_plus_parameter(name: str) -> bool:
    """Whether parameter `name` (any backend's naming: a canonical `adapter_q.lora_B.weight`,
    a Megatron `linear_qkv.lora_B.weight`) belongs to LoRA+'s fast group."""
    return name.endswith(LORA_PLUS_SUFFIXES)


def unwrapped_name(name: str) -> str:
    return ".".join(part for part in name.split(".") if part not in WRAPPER_COMPONENTS)


_MAGNITUDE = ("lora_magnitude_vector", ("adapter", "weight_magnitude"))
"""DoRA's per-row magnitude: lora-rl's (PEFT's) name, Megatron-Bridge's `DoRALinear` name."""


def to_megatron_bridge_key(key: str) -> str:
    """`x.lora_A.weight` -> `x.adapter.linear_in.weight`, `x.lora_B.weight` ->
    `x.adapter.linear_out.weight`, `x.base.weight` -> `x.to_wrap.weight`,
    `x.lora_magnitude_vector` -> `x.adapter.weight_magnitude`; others unchanged."""
    parts = key.split(".")
    if len(parts) >= 2 and parts[-1] == _MAGNITUDE[0]:
        return ".".join([*parts[:-1], *_MAGNITUDE[1]])
    # The LoRA part is the component right before the parameter name; only that one is renamed,
    # so a user module that happens to be called `base` elsewhere in the path is left alone.
    if len(parts) >= 3:
        for ours, theirs in _TO_BRIDGE:
            if parts[-2] == ours:
                if ours != "base" and len(parts) >= 4 and parts[-3].startswith(_PROJECTION):
                    # canonical: x.adapter_q.lora_A.weight -> x.adapter.adapter_q.linear_in.weight
                    return ".".join([*parts[:-3], "adapter", parts[-3], theirs[-1], parts[-1]])
                return ".".join([*parts[:-2], *theirs, parts[-1]])
    return key


def from_megatron_bridge_key(key: str) -> str:
    """The inverse of `to_megatron_bridge_key`."""
    parts = key.split(".")
    if len(parts) >= 3 and tuple(parts[-2:]) == _MAGNITUDE[1]:
        return ".".join([*parts[:-2], _MAGNITUDE[0]])
    if len(parts) >= 5 and parts[-4] == "adapter" and parts[-3].startswith(_PROJECTION):
        lora = {"linear_in": "lora_A", "linear_out": "lora_B"}.get(parts[-2])
        if lora:
            return ".".join([*parts[:-4], parts[-3], lora, parts[-1]])
    for ours, theirs in _TO_BRIDGE:
        n = len(theirs)
        if len(parts) > n + 1 and tuple(parts[-1 - n:-1]) == theirs:
            return ".".join([*parts[:-1 - n], ours, parts[-1]])
    return key


def to_megatron_bridge(state: Mapping[str, T]) -> dict[str, T]:
    return {to_megatron_bridge_key(k): v for k, v in state.items()}


def from_megatron_bridge(state: Mapping[str, T]) -> dict[str, T]:
    return {from_megatron_bridge_key(k): v for k, v in state.items()}
