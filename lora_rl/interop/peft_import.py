"""Start training from an existing PEFT adapter (`policy.init_adapter_path`)."""

from __future__ import annotations

from pathlib import Path

import torch

from lora_rl.interop.adapter_fit import adapter_fit_problem, residual_init_of
from lora_rl.interop.peft_format import AdapterFormatError, read_adapter
from lora_rl.lora import iter_lora_layers, load_lora_state_dict


def load_peft_adapter(model: torch.nn.Module, directory: Path) -> None:
    """Load adapter weights into a model already patched with the recipe's LoRA config; the
    adapter's rank and scale must match that config (`adapter_fit_problem`)."""
    config, tensors = read_adapter(directory)
    layers = list(iter_lora_layers(model))
    if not layers:
        raise AdapterFormatError("the model has no LoRA layers to load the adapter into")
    name, layer = layers[0]
    if getattr(layer, "lora_A_init", None) is not None:
        raise AdapterFormatError(f"{directory}: the recipe's {layer.spec.weight_init} init "
                                 "rewrote the base weights, so an adapter trained on the "
                                 "original base does not fit (LR156); set init_lora_weights: "
                                 "true")
    init = residual_init_of(config)
    if init is not None:
        raise AdapterFormatError(f"{directory}: the adapter was saved with init_lora_weights "
                                 f"{init!r}, which rewrote its base weights, so it does not "
                                 "continue on the original base; save it from peft with "
                                 "path_initial_model_for_weight_conversion (a plain LoRA), or "
                                 "export it with lora-rl")
    rank = layer.lora_A.weight.shape[0]
    problem = adapter_fit_problem(config, rank, layer.scale)
    if problem:
        rslora = str(config.get("use_rslora", False) is True).lower()
        raise AdapterFormatError(f"{directory}: {problem}; set the LoRA dim to {config.get('r')}, "
                                 f"alpha to {config.get('lora_alpha')} and use_rslora to {rslora}")
    dora = bool(config.get("use_dora", False))
    if dora != bool(getattr(layer, "use_dora", False)):
        raise AdapterFormatError(f"{directory}: the adapter has use_dora {str(dora).lower()}, "
                                 f"the recipe the opposite; set use_dora: {str(dora).lower()}")
    load_lora_state_dict(model, tensors)
