"""Optimizer state dicts <-> flat tensor maps (for safetensors) plus JSON metadata."""

from __future__ import annotations

from typing import Any

import torch

_SEP = "::"


def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """{"state": {param: {key: tensor|number}}, "param_groups": [...]} -> (tensors, meta)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, entries in state_dict.get("state", {}).items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                full = value.full_tensor() if hasattr(value, "full_tensor") else value
                tensors[f"{param}{_SEP}{key}"] = full.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param), {})[key] = value
    return tensors, {"param_groups": state_dict.get("param_groups", []), "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for name, value in tensors.items():
        param, key = name.rsplit(_SEP, 1)
        state.setdefault(param, {})[key] = value
    for param, entries in meta.get("scalars", {}).items():
        state.setdefault(param, {}).update(entries)
    return {"state": state, "param_groups": meta.get("param_groups", [])}
