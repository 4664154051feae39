"""The Hugging Face PEFT adapter layout, both ways.

lora-rl names adapter tensors by the HF module path (`model.layers.0.self_attn.q_proj.lora_A.
weight`); PEFT prefixes `base_model.model.` and, in memory, inserts the adapter name
(`.default`), which saved files drop.

MoE expert parameters (`model.layers.0.mlp.experts.gate_up_proj`) are PEFT `target_parameters`:
PEFT wraps the experts module once per adapted parameter, in registration order, so the first
one sits deepest: with gate_up_proj and down_proj adapted, gate_up_proj's adapter is
`mlp.experts.base_layer.lora_A.weight` and down_proj's `mlp.experts.lora_A.weight`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from lora_rl.architecture import EXPERT_PARAMETERS
from lora_rl.errors import LoraRlError
from lora_rl.interop.adapter_fit import ADAPTER_CONFIG, ADAPTER_WEIGHTS

if TYPE_CHECKING:
    from lora_rl.lora.spec import LoraSpec

PEFT_PREFIX = "base_model.model."
_NESTED = ".base_layer"
MAGNITUDE = ".lora_magnitude_vector"
"""DoRA's magnitude key suffix, the same in lora-rl and in saved PEFT files."""
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


class AdapterFormatError(LoraRlError, ValueError):
    pass


def expert_parameter(name: str) -> tuple[str, str] | None:
    """(experts module, parameter) when `name` is a MoE expert parameter, else None."""
    parent, _, short = name.rpartition(".")
    if short in EXPERT_PARAMETERS and parent.rpartition(".")[2] == "experts":
        return parent, short
    return None


def _expert_wrappers(modules: list[str]) -> dict[str, str]:
    """lora-rl expert parameter name -> PEFT module name (with its `base_layer` nesting)."""
    adapted: dict[str, list[str]] = {}
    for name in modules:
        found = expert_parameter(name)
        if found:
            adapted.setdefault(found[0], []).append(found[1])
    out = {}
    for parent, params in adapted.items():
        ordered = [p for p in EXPERT_PARAMETERS if p in params]
        for index, param in enumerate(ordered):
            out[f"{parent}.{param}"] = parent + ".base_layer" * (len(ordered) - 1 - index)
    return out


def to_peft_keys(adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    wrappers = _expert_wrappers(patched_modules(adapter))
    out = {}
    for key, value in adapter.items():
        match = _LORA_KEY.match(key)
        if match and match["module"] in wrappers:
            key = f"{wrappers[match['module']]}.lora_{match['ab']}.weight"
        out[PEFT_PREFIX + key] = value
    return out


def from_peft_keys(tensors: dict[str, torch.Tensor],
                   target_parameters: list[str] | None = None) -> dict[str, torch.Tensor]:
    expert_params = [p for p in EXPERT_PARAMETERS
                     if any(t.rpartition(".")[2] == p for t in target_parameters or ())]
    out = {}
    for key, value in tensors.items():
        bare = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if bare.endswith(MAGNITUDE) and _NESTED not in bare:  # DoRA's per-row magnitude
            out[bare] = value
            continue
        match = _LORA_KEY.match(bare)
        if match is None:
            raise AdapterFormatError(f"tensor {key!r} is not a LoRA A/B weight")
        module, depth = match["module"], 0
        while module.endswith(_NESTED):
            module, depth = module[:-len(_NESTED)], depth + 1
        if expert_params and module.endswith(".experts"):
            index = len(expert_params) - 1 - depth
            if not 0 <= index < len(expert_params):
                raise AdapterFormatError(f"tensor {key!r} does not fit target_parameters "
                                         f"{target_parameters}")
            module = f"{module}.{expert_params[index]}"
        elif depth:
            raise AdapterFormatError(f"tensor {key!r}: nested PEFT wrappers outside MoE experts "
                                     "are not supported")
        out[f"{module}.lora_{match['ab']}.weight"] = value
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
    from lora_rl.lora.experts import ExpertsLora

    modules = patched_modules(adapter)
    if not modules:
        raise AdapterFormatError("the adapter has no LoRA A/B weights")
    model.requires_grad_(False)
    experts: dict[str, list[str]] = {}
    for name in modules:
        found = expert_parameter(name)
        if found:
            experts.setdefault(found[0], []).append(found[1])
            continue
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
    for name, params in experts.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child, None)
        if base is None or any(getattr(base, p, None) is None for p in params):
            raise AdapterFormatError(f"the adapter names expert parameters of {name!r}, which "
                                     "the model does not have (another base model?)")
        setattr(parent, child, ExpertsLora(base, [p for p in EXPERT_PARAMETERS if p in params],
                                           spec))
    return modules


def adapter_config(*, rank: int, alpha: float, dropout: float, modules: list[str],
                   base_model: str, use_rslora: bool = False,
                   use_dora: bool = False) -> dict[str, Any]:
    short = sorted({name.rsplit(".", 1)[-1] for name in modules if not expert_parameter(name)})
    parameters = sorted({_layer_relative(name) for name in modules if expert_parameter(name)})
    extra: dict[str, Any] = {"target_parameters": parameters} if parameters else {}
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "lora_dropout": dropout, "target_modules": short, **extra,
        "base_model_name_or_path": base_model,
        "fan_in_fan_out": False, "bias": "none", "use_rslora": use_rslora, "use_dora": use_dora,
        "modules_to_save": None, "inference_mode": True, "peft_version": peft_version(),
    }


def adapter_spec(config: dict[str, Any]) -> LoraSpec:
    """The `LoraSpec` an adapter_config.json describes (rank, scale, rsLoRA, DoRA): the inverse
    of `adapter_config`. PEFT applies dropout to the layer input, so its position is `pre`."""
    from lora_rl.interop.adapter_fit import residual_init_of
    from lora_rl.lora.spec import WEIGHT_INITS, LoraSpec

    # An adapter peft saved with init_lora_weights pissa/olora is rebuilt as peft rebuilds it:
    # the init recomputed from the original base, the trained A/B loaded over it.
    init = residual_init_of(config)
    if init is not None and init not in WEIGHT_INITS:
        raise AdapterFormatError(f"the adapter was saved with init_lora_weights {init!r}, "
                                 "which rewrote its base weights in a way lora-rl cannot "
                                 "recompute; save it from peft with "
                                 "path_initial_model_for_weight_conversion (a plain LoRA)")
    return LoraSpec(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                    dropout=float(config.get("lora_dropout") or 0.0), dropout_position="pre",
                    use_rslora=config.get("use_rslora", False) is True,
                    use_dora=config.get("use_dora", False) is True,
                    weight_init=init or "default")


def _layer_relative(name: str) -> str:
    """`model.layers.3.mlp.experts.down_proj` -> `mlp.experts.down_proj` (PEFT matches
    target_parameters by suffix)."""
    match = re.search(r"(?:^|\.)layers\.\d+\.(.+)$", name)
    return match[1] if match else name
PEFT_FORMAT_VERSION = "0.13.0"
"""The oldest peft whose adapter layout lora-rl writes (pyproject's `peft>=0.13`)."""


def peft_version() -> str:
    """The installed peft's version (what peft itself records), else the oldest it supports."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("peft")
    except PackageNotFoundError:
        return PEFT_FORMAT_VERSION


def write_adapter(directory: Path, adapter: dict[str, torch.Tensor], *, rank: int,
                  alpha: float, dropout: float, base_model: str, use_rslora: bool = False,
                  use_dora: bool = False) -> None:
    """A PEFT adapter directory (what `peft` and vLLM's LoRA loader read) from lora-rl-keyed
    adapter tensors; `directory` exists. The inverse of `read_adapter`."""
    config = adapter_config(rank=rank, alpha=alpha, dropout=dropout,
                            modules=patched_modules(adapter), base_model=base_model,
                            use_rslora=use_rslora, use_dora=use_dora)
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in to_peft_keys(adapter).items()},
              str(directory / ADAPTER_WEIGHTS))


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
    return config, from_peft_keys(load_file(str(weights_path)),
                                  config.get("target_parameters"))
