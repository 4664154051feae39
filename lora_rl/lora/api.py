"""Public LoRA operations on a model: apply, merge/unmerge, adapter state dicts, disable."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig
from lora_rl.lora.experts import ExpertAdapter, ExpertsLora
from lora_rl.lora.layer import AdapterLayer, LoraLinear
from lora_rl.lora.matching import LoraMatchError, LoraWarning, ModuleMatcher
from lora_rl.lora.naming import is_lora_plus_parameter, unwrapped_name
from lora_rl.lora.spec import LoraSpec, Semantics, lora_spec_from_config, semantics_of

_PARALLEL_LINEARS = frozenset({"ColumnParallelLinear", "RowParallelLinear",
                               "TEColumnParallelLinear", "TERowParallelLinear",
                               "TELayerNormColumnParallelLinear"})
"""Megatron Core / Transformer Engine linears, recognised by class name so that matching works
without importing megatron (and on the mocks the tests use)."""


@dataclass(frozen=True)
class LoraReport:
    patched: tuple[str, ...]
    """Unwrapped module names that received an adapter, in model order."""
    trainable_params: int
    total_params: int
    scale: float
    warnings: tuple[str, ...] = ()
    semantics: Semantics = "dtensor"


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ in _PARALLEL_LINEARS


def _linear_paths(model: nn.Module) -> list[str]:
    paths, inside = [], None
    for path, module in model.named_modules():
        # named_modules is depth-first, so a LoraLinear's own linears follow it directly.
        if inside is not None and path.startswith(inside):
            continue
        inside = None
        if isinstance(module, (LoraLinear, ExpertsLora)):
            inside = f"{path}."
        elif path and _is_linear(module):
            paths.append(path)
    return paths


def _expert_param_paths(model: nn.Module) -> list[str]:
    """Paths of the fused 3-D expert parameters LoRA could adapt (`...mlp.experts.gate_up_proj`),
    from the family's architecture description; none for dense or unknown families."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return []
    from lora_rl.architecture import UnsupportedArchitecture, architecture_of

    try:
        arch = architecture_of(config)
    except (UnsupportedArchitecture, KeyError, TypeError, ValueError):
        return []
    wanted = [p.path for p in arch.expert_params()]  # relative to a decoder layer
    paths = []
    for path, param in model.named_parameters():
        if param.dim() == 3 and any(path.endswith(f".{w}") for w in wanted):
            paths.append(path)
    return paths


def expert_parameter_names(model: nn.Module) -> list[str]:
    """Unwrapped names of the MoE expert parameters LoRA could adapt."""
    return [unwrapped_name(p) for p in _expert_param_paths(model)]


def linear_module_names(model: nn.Module) -> list[str]:
    """Module paths of the linear layers LoRA could adapt (not those inside a LoraLinear)."""
    return _linear_paths(model)


def _output_names(model: nn.Module) -> set[str]:
    """Whatever the model itself calls its output layer (HF `get_output_embeddings`)."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Module):
        return set()
    return {unwrapped_name(path) for path, module in model.named_modules() if module is head}


def _resolve(cfg_or_spec: DTensorLoraConfig | MegatronPeftConfig | LoraSpec,
             semantics: Semantics | None,
             matcher: ModuleMatcher | None) -> tuple[LoraSpec, ModuleMatcher]:
    if isinstance(cfg_or_spec, (DTensorLoraConfig, MegatronPeftConfig)):
        inferred = semantics_of(cfg_or_spec)
        if semantics is not None and semantics != inferred:
            raise ValueError(f"semantics={semantics!r} contradicts the config type "
                             f"{type(cfg_or_spec).__name__} ({inferred!r})")
        spec = lora_spec_from_config(cfg_or_spec)
        matcher = matcher or ModuleMatcher.from_config(cfg_or_spec)
    elif isinstance(cfg_or_spec, LoraSpec):
        spec = cfg_or_spec
        matcher = matcher or ModuleMatcher.default(semantics or "dtensor")
    else:
        raise TypeError("apply_lora expects a DTensorLoraConfig, MegatronPeftConfig or LoraSpec, "
                        f"got {type(cfg_or_spec).__name__}")
    if semantics is not None and matcher.semantics != semantics:
        raise ValueError(f"semantics={semantics!r} but the matcher uses {matcher.semantics!r}")
    return spec, matcher


def apply_lora(model: nn.Module, cfg_or_spec: DTensorLoraConfig | MegatronPeftConfig | LoraSpec,
               *, semantics: Semantics | None = None,
               matcher: ModuleMatcher | None = None) -> LoraReport:
    """Freeze every parameter of `model` and wrap each matched linear in a `LoraLinear`, in
    place. A config brings its own matching rules (its type fixes `semantics`); a bare spec uses
    `matcher`, or the backend default (all linear layers / the four Megatron names).

    `enabled` on the config is the caller's business: this applies LoRA either way."""
    spec, matcher = _resolve(cfg_or_spec, semantics, matcher)
    problem = matcher.conflict()
    if problem:
        raise LoraMatchError(problem)
    if any(True for _ in iter_lora_layers(model)):
        raise ValueError("the model already has LoRA adapters; apply_lora runs once per model")
    paths = _linear_paths(model)
    by_name = {unwrapped_name(p): p for p in paths}
    experts = {unwrapped_name(p): p for p in _expert_param_paths(model)}
    result = matcher.with_output_names(_output_names(model)).match(
        [*by_name, *experts] if matcher.semantics == "dtensor" else list(by_name))
    for note in result.warnings:
        warnings.warn(note, LoraWarning, stacklevel=2)
    model.requires_grad_(False)
    grouped: dict[str, list[str]] = {}
    for name in result.names:
        if name in experts:
            module_path, _, param = experts[name].rpartition(".")
            grouped.setdefault(module_path, []).append(param)
            continue
        path = by_name[name]
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        # Construction order (A, then B, then their inits) consumes the RNG exactly like PEFT,
        # so the same seed gives PEFT's adapters.
        setattr(parent, child, LoraLinear(getattr(parent, child), spec))
    for module_path, params in grouped.items():
        parent_path, _, child = module_path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, ExpertsLora(getattr(parent, child), params, spec))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return LoraReport(result.names, trainable, total, spec.scale, result.warnings,
                      matcher.semantics)


def _lora_layers(model: nn.Module) -> Iterator[tuple[str, str, LoraLinear | ExpertAdapter]]:
    for path, module in model.named_modules():
        if isinstance(module, LoraLinear):
            yield path, unwrapped_name(path), module
        elif isinstance(module, ExpertsLora):
            # Named by the parameter it adapts: `...mlp.experts.gate_up_proj`.
            for param, adapter in module.adapters.items():
                yield path, f"{unwrapped_name(path)}.{param}", adapter


def iter_lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLinear | ExpertAdapter]]:
    """(unwrapped name, layer) for every adapter, in model order: a linear module's name, or a
    MoE expert parameter's (`...mlp.experts.down_proj`)."""
    for _, name, layer in _lora_layers(model):
        yield name, layer


def lora_plus_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters LoRA+ trains at the higher learning rate: every adapter's B matrix (and,
    as PEFT groups them, any 1-D adapter parameter such as a DoRA magnitude)."""
    return [p for name, p in model.named_parameters()
            if p.requires_grad and is_lora_plus_parameter(name)]


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (in fp32, then cast); all or none."""
    layers = [layer for _, layer in iter_lora_layers(model)]
    merged = [name for name, layer in iter_lora_layers(model) if layer.merged]
    if merged:
        raise RuntimeError(f"LoRA is already merged in {len(merged)} layer(s) (e.g. {merged[0]}); "
                           "unmerge first")
    for layer in layers:
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Restore every base weight exactly as it was before `merge_lora`; all or none."""
    layers = [layer for _, layer in iter_lora_layers(model)]
    unmerged = [name for name, layer in iter_lora_layers(model) if not layer.merged]
    if unmerged:
        raise RuntimeError(f"{len(unmerged)} LoRA layer(s) are not merged (e.g. {unmerged[0]}); "
                           "nothing to unmerge there")
    for layer in layers:
        layer.unmerge()


def merge_and_unwrap(model: nn.Module) -> None:
    """Fold every adapter into its base weight and put the plain base module back (export)."""
    for path, _, layer in list(_lora_layers(model)):
        if not layer.merged:
            layer.merge()
        layer._unmerged_weight = None  # the original is not coming back: free it
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        wrapper = getattr(parent, child)
        if isinstance(wrapper, (LoraLinear, ExpertsLora)):
            setattr(parent, child, wrapper.base)


@contextlib.contextmanager
def disable_lora(model: nn.Module) -> Iterator[None]:
    """The frozen base model (the DPO/GRPO reference policy), without copying weights."""
    named = [(unwrapped_name(path), m) for path, m in model.named_modules()
             if isinstance(m, AdapterLayer)]
    layers = [layer for _, layer in named]
    merged = [name for name, layer in named if layer.merged]
    if merged:
        raise RuntimeError(f"cannot disable LoRA while it is merged ({merged[0]}, ...); the base "
                           "weights include the adapters; unmerge first")
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield
    finally:
        for layer, was in zip(layers, previous, strict=True):
            layer.disabled = was


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A whole tensor from a possibly sharded (FSDP2 / TP DTensor) one; collective if sharded."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _adapter_params(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in iter_lora_layers(model):
        out[f"{name}.lora_A.weight"] = layer.lora_A.weight
        out[f"{name}.lora_B.weight"] = layer.lora_B.weight
        if getattr(layer, "use_dora", False):
            out[f"{name}.lora_magnitude_vector"] = layer.lora_magnitude_vector
    return out


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors by unwrapped module name + `.lora_A.weight` / `.lora_B.weight` (and DoRA's
    `.lora_magnitude_vector`).

    Whole tensors (sharded ones are gathered: call on every rank), detached but not copied:
    they change with training, so copy or save them before the next optimizer step."""
    return {key: _full(param).detach() for key, param in _adapter_params(model).items()}


def _list(keys: list[str]) -> str:
    shown = ", ".join(keys[:6])
    return f"{shown} (+{len(keys) - 6} more)" if len(keys) > 6 else shown


def load_lora_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy adapter tensors into the model. Strict: missing or unexpected keys, non-tensors and
    shape mismatches raise ValueError naming them, before anything is written."""
    own = _adapter_params(model)
    problems = []
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_list(unexpected)}")
    for key in sorted(set(own) & set(state)):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(own[key].shape):
            problems.append(f"{key} has shape {tuple(value.shape)}, the model expects "
                            f"{tuple(own[key].shape)} (different LoRA rank or model?)")
        elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
            problems.append(f"{key} holds NaN or inf")
    if problems:
        raise ValueError("adapter state dict does not fit the model: " + "; ".join(problems))
    with torch.no_grad():
        for key, param in own.items():
            _copy_into(param, state[key])


def _copy_into(param: torch.Tensor, value: torch.Tensor) -> None:
    from torch.distributed.tensor import DTensor, distribute_tensor

    value = value.detach().to(device=param.device, dtype=param.dtype)
    if isinstance(param, DTensor):
        # Every rank holds the whole value: each keeps its own shard, no communication.
        value = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
    param.copy_(value)
