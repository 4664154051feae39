"""Start training from an existing PEFT adapter (`policy.init_adapter_path`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lora_rl.interop.peft_format import AdapterFormatError, read_adapter
from lora_rl.lora import iter_lora_layers, load_lora_state_dict


def load_peft_adapter(model: torch.nn.Module, directory: Path) -> None:
    """Load adapter weights into a model already patched with the recipe's LoRA config; the
    adapter's rank and alpha must match that config."""
    config, tensors = read_adapter(directory)
    layers = list(iter_lora_layers(model))
    if not layers:
        raise AdapterFormatError("the model has no LoRA layers to load the adapter into")
    name, layer = layers[0]
    rank = layer.lora_A.weight.shape[0]
    if config.get("r") != rank:
        raise AdapterFormatError(f"{directory}: adapter rank r={config.get('r')} but the recipe "
                                 f"uses dim={rank}; set the LoRA dim to {config.get('r')}")
    rslora = bool(config.get("use_rslora", False))
    alpha = float(config.get("lora_alpha", 0))
    scale = alpha / math.sqrt(rank) if rslora else alpha / rank
    if abs(scale - layer.scale) > 1e-9:
        raise AdapterFormatError(f"{directory}: adapter alpha {config.get('lora_alpha')} "
                                 f"(use_rslora {str(rslora).lower()}) gives a scale different "
                                 f"from the recipe's ({layer.scale}); set alpha to "
                                 f"{config.get('lora_alpha')} and use_rslora to "
                                 f"{str(rslora).lower()}")
    dora = bool(config.get("use_dora", False))
    if dora != bool(getattr(layer, "use_dora", False)):
        raise AdapterFormatError(f"{directory}: the adapter has use_dora {str(dora).lower()}, "
                                 f"the recipe the opposite; set use_dora: {str(dora).lower()}")
    load_lora_state_dict(model, tensors)
