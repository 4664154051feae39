"""Checkpoint tensors of the Megatron backend: whole, layout-free, adapter in HF names.

- `adapter` (LoRA) / `model` (full fine-tuning): Hugging Face names, the same files the DTensor
  backend writes, so `lora-rl export` and PEFT read them. A fused module's shared A appears once
  per HF part (see bridge.py).
- `optimizer`: `<Megatron global name>::<state key>`, whole tensors. Neither depends on the
  tensor/pipeline layout, so a run can resume on a different one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lora_rl.backends.megatron.bridge import hf_to_megatron, megatron_to_hf
from lora_rl.backends.megatron.model import load_whole
from lora_rl.backends.megatron.sharding import STATE_SEPARATOR

if TYPE_CHECKING:
    from lora_rl.backends.megatron.backend import MegatronBackend


def weights_name(backend: MegatronBackend) -> str:
    return "adapter" if backend.lora is not None else "model"


def _main_params(backend: MegatronBackend) -> dict[str, torch.Tensor]:
    # The main copies: in `params_dtype`, so a resumed run continues from the exact values.
    return dict(zip(backend.trainable_names, backend.main.params, strict=True))


def whole_weights(backend: MegatronBackend) -> dict[str, torch.Tensor]:
    """Trainable weights, whole, HF names, on every rank (collective)."""
    local = _main_params(backend)
    return megatron_to_hf(backend.sharder.gather_whole(local), backend.shape)


def checkpoint_tensors(backend: MegatronBackend) -> dict[str, dict[str, torch.Tensor]]:
    state = backend.optimizer.state_dict()["state"]
    local = {}
    for index, name in enumerate(backend.trainable_names):
        for key, value in state.get(index, {}).items():
            if isinstance(value, torch.Tensor):
                local[f"{name}{STATE_SEPARATOR}{key}"] = value
    optimizer = {k: v.contiguous() for k, v in backend.sharder.gather_whole(local).items()}
    return {weights_name(backend): whole_weights(backend), "optimizer": optimizer}


def optimizer_meta(backend: MegatronBackend) -> dict[str, Any]:
    groups = [{k: v for k, v in g.items() if k != "params"}
              for g in backend.optimizer.state_dict()["param_groups"]]
    return {"optimizer": {"param_groups": groups}, "scheduler": backend.scheduler.state_dict()}


def load_weights(backend: MegatronBackend, hf_tensors: dict[str, torch.Tensor]) -> None:
    """Trainable weights from HF-named whole tensors (a checkpoint or a PEFT adapter)."""
    names = list(backend.trainable_names)
    load_whole(_main_params(backend), hf_to_megatron(hf_tensors, names, backend.shape),
               backend.sharder, names)
    backend.main.publish()


def load_checkpoint_tensors(backend: MegatronBackend, tensors: dict[str, dict[str, torch.Tensor]],
                            meta: dict[str, Any]) -> None:
    load_weights(backend, tensors[weights_name(backend)])
    saved = tensors["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for index, name in enumerate(backend.trainable_names):
        prefix = f"{name}{STATE_SEPARATOR}"
        for key, whole in saved.items():
            if key.startswith(prefix):
                local = backend.sharder.shard(key, whole)
                state.setdefault(index, {})[key[len(prefix):]] = local.clone()
    groups = meta["optimizer"]["param_groups"]
    if len(groups) != 1:
        raise ValueError(f"checkpoint has {len(groups)} optimizer parameter groups; the Megatron "
                         "backend writes one")
    params = list(range(len(backend.trainable_names)))
    backend.optimizer.load_state_dict({"state": state,
                                       "param_groups": [{**groups[0], "params": params}]})
    backend.scheduler.load_state_dict(meta["scheduler"])
