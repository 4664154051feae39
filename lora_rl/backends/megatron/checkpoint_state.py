"""Checkpoint tensors of the Megatron backend: whole, layout-free, adapter in HF names.

- `adapter` (LoRA) / `model` (full fine-tuning): Hugging Face names, the same files the DTensor
  backend writes, so `lora-rl export` and PEFT read them. A fused module's shared A appears once
  per HF part (see bridge.py).
- `optimizer`: `<Megatron global name>::<state key>`, whole tensors. Neither depends on the
  tensor/pipeline layout, so a run can resume on a different one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lora_rl.backends.megatron.bridge import LlamaShape, hf_to_megatron, megatron_to_hf
from lora_rl.backends.megatron.model import load_whole
from lora_rl.backends.megatron.optim import MainParams
from lora_rl.backends.megatron.sharding import STATE_SEPARATOR, Sharder


@dataclass(frozen=True)
class TrainableWeights:
    """What checkpoints need of a Megatron model: its trainable parameters, how they are
    sharded, and how their names map to Hugging Face's."""

    names: list[str]
    """Megatron global names of the trainable parameters, in optimizer order."""
    main: MainParams
    """Their main copies (in `params_dtype`, so a resumed run continues from the exact values)."""
    sharder: Sharder
    shape: LlamaShape
    lora: bool
    """True: the weights are a LoRA adapter (`adapter`); False: the whole model (`model`)."""

    @property
    def checkpoint_name(self) -> str:
        return "adapter" if self.lora else "model"

    def main_params(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.main.params, strict=True))


def whole_weights(weights: TrainableWeights) -> dict[str, torch.Tensor]:
    """Trainable weights, whole, HF names, on every rank (collective)."""
    return megatron_to_hf(weights.sharder.gather_whole(weights.main_params()), weights.shape)


def optimizer_names(weights: TrainableWeights, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter name behind each index of the optimizer's state_dict: its groups' params
    in order (with LoRA+, the B group comes after the others)."""
    by_id = {id(p): name for name, p in zip(weights.names, weights.main.params, strict=True)}
    return [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]


def checkpoint_tensors(weights: TrainableWeights, optimizer: torch.optim.Optimizer
                       ) -> dict[str, dict[str, torch.Tensor]]:
    state = optimizer.state_dict()["state"]
    local = {}
    for index, name in enumerate(optimizer_names(weights, optimizer)):
        for key, value in state.get(index, {}).items():
            if isinstance(value, torch.Tensor):
                local[f"{name}{STATE_SEPARATOR}{key}"] = value
    whole = {k: v.contiguous() for k, v in weights.sharder.gather_whole(local).items()}
    return {weights.checkpoint_name: whole_weights(weights), "optimizer": whole}


def optimizer_meta(optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    groups = [{k: v for k, v in g.items() if k != "params"}
              for g in optimizer.state_dict()["param_groups"]]
    return {"optimizer": {"param_groups": groups}, "scheduler": scheduler.state_dict()}


def load_weights(weights: TrainableWeights, hf_tensors: dict[str, torch.Tensor]) -> None:
    """Trainable weights from HF-named whole tensors (a checkpoint or a PEFT adapter)."""
    names = list(weights.names)
    load_whole(weights.main_params(), hf_to_megatron(hf_tensors, names, weights.shape),
               weights.sharder, names)
    weights.main.publish()


def load_checkpoint_tensors(weights: TrainableWeights, optimizer: torch.optim.Optimizer,
                            scheduler: torch.optim.lr_scheduler.LRScheduler,
                            tensors: dict[str, dict[str, torch.Tensor]],
                            meta: dict[str, Any]) -> None:
    load_weights(weights, tensors[weights.checkpoint_name])
    saved = tensors["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for index, name in enumerate(optimizer_names(weights, optimizer)):
        prefix = f"{name}{STATE_SEPARATOR}"
        for key, whole in saved.items():
            if key.startswith(prefix):
                local = weights.sharder.shard(key, whole)
                state.setdefault(index, {})[key[len(prefix):]] = local.clone()
    groups = meta["optimizer"]["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(f"checkpoint has {len(groups)} optimizer parameter group(s), this run "
                         f"{len(optimizer.param_groups)} (LoRA+ adds a group for B): resume with "
                         "the checkpoint's peft.lora_plus_lr_ratio")
    start, restored = 0, []
    for saved_group, group in zip(groups, optimizer.param_groups, strict=True):
        restored.append({**saved_group, "params": list(range(start, start + len(group["params"])))})
        start += len(group["params"])
    optimizer.load_state_dict({"state": state, "param_groups": restored})
    scheduler.load_state_dict(meta["scheduler"])
