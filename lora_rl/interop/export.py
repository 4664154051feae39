"""`lora-rl export`: a training checkpoint -> a PEFT adapter or a merged Hugging Face model.

Both are written into a temporary directory next to the target and renamed into place, so an
interrupted export never leaves a half-written model where a complete one is expected.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lora_rl import __version__
from lora_rl.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, step_dirs
from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig
from lora_rl.errors import LoraRlError
from lora_rl.interop.peft_format import AdapterFormatError, wrap_adapter_modules, write_adapter
from lora_rl.output_paths import OutputPathError, check_output_dir, check_overwrite
from lora_rl.state_file import read_state

EXPORT_SCHEMA_VERSION = 1
EXPORT_STAMP = "lora_rl_export.json"
"""Written into every export; `--force` replaces only a directory holding it."""
ExportFormat = Literal["peft", "merged"]


_LORA_CONFIGS = {"dtensor": DTensorLoraConfig, "megatron": MegatronPeftConfig}


class ExportError(LoraRlError, ValueError):
    pass


class OutputExistsError(ExportError):
    """--out cannot be used: it exists and --force was not given, it is not an earlier export,
    a file, not writable, or the working directory (a usage error, exit 2)."""


def _resolve_checkpoint(path: Path):
    if not path.is_dir():
        raise ExportError(f"{path}: no such checkpoint directory")
    if (path / "manifest.json").exists() or path.name.startswith("step_"):
        return load_checkpoint(path)
    if not step_dirs(path):
        raise ExportError(f"{path} holds no step_N checkpoints")
    found = latest_checkpoint(path, warn=lambda m: print(f"warning: {m}"))
    if found is None:
        raise ExportError(f"{path}: every checkpoint failed verification")
    return found


@dataclass(frozen=True)
class CheckpointAdapter:
    """A checkpoint's adapter in Hugging Face module names, with what it was trained as."""

    path: Path
    step: int
    backend: str
    lora: DTensorLoraConfig | MegatronPeftConfig
    base_model: str
    adapter: dict[str, torch.Tensor]
    tokenizer: dict | None
    """How training encoded text (state.json's `tokenizer`), for the exported tokenizer."""
    quantization: dict | None = None
    """The run's `policy.quantization` (QLoRA): the base the adapter trained on was quantized."""


def checkpoint_adapter(checkpoint: Path, base: str | None = None) -> CheckpointAdapter:
    """The adapter of a `step_N` directory, or of the latest good step of a checkpoint_dir."""
    try:
        ckpt = _resolve_checkpoint(checkpoint)
        state = read_state(ckpt)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    run = state.run
    backend = run.backend
    if backend not in _LORA_CONFIGS:
        raise ExportError(f"{ckpt.path}: unknown backend {backend!r} in the checkpoint's "
                          f"state.json (lora-rl exports {' and '.join(_LORA_CONFIGS)} checkpoints)")
    if run.lora is None or "adapter" not in ckpt.tensors:
        raise ExportError(f"{ckpt.path} is a full fine-tuning checkpoint, not a LoRA adapter")
    try:
        lora = _LORA_CONFIGS[backend].model_validate(run.lora)
    except ValueError as exc:
        raise ExportError(f"{ckpt.path}: the LoRA config in state.json does not fit the "
                          f"{backend} backend ({exc})") from None
    base_model = base or run.model_name
    if not base_model:
        raise ExportError(f"{ckpt.path}: the checkpoint does not name its base model; pass --base")
    adapter = ckpt.tensors["adapter"]
    if backend == "megatron":
        adapter = _megatron_adapter_in_hf_names(adapter, base_model, ckpt.path)
    _check_adapter(adapter, lora.dim, base_model, ckpt.path)
    quantization = (state.recipe or {}).get("fixed", {}).get("policy.quantization")
    return CheckpointAdapter(ckpt.path, ckpt.step, backend, lora, base_model, adapter,
                             state.tokenizer, quantization)


def export_checkpoint(checkpoint: Path, fmt: ExportFormat, out: Path, base: str | None,
                      force: bool) -> Path:
    try:
        check_output_dir(out, "--out")
        check_overwrite(out, EXPORT_STAMP, "--out", force)
    except OutputPathError as exc:
        raise OutputExistsError(str(exc)) from None
    found = checkpoint_adapter(checkpoint, base)
    adapter, lora, base_model = found.adapter, found.lora, found.base_model
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        try:
            if fmt == "peft":
                _write_peft(tmp, adapter, lora, base_model)
            else:
                _write_merged(tmp, adapter, lora, base_model, found.quantization)
            _write_tokenizer(found.tokenizer, base_model, tmp)
        except AdapterFormatError as exc:
            raise ExportError(f"{found.path}: {exc}") from None
        stamp = {"schema_version": EXPORT_SCHEMA_VERSION, "lora_rl_version": __version__,
                 "format": fmt, "source_checkpoint": str(found.path), "step": found.step,
                 "backend": found.backend, "base_model": base_model}
        (tmp / EXPORT_STAMP).write_text(json.dumps(stamp, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_adapter(adapter: dict[str, torch.Tensor], rank: int, base_model: str,
                   where: Path) -> None:
    """Refuse NaN/inf, unpaired or wrong-rank adapters, and (base model local) adapters that do
    not fit its linear layers, before anything is written."""
    from lora_rl.model_source import ModelSourceError, local_model_dir
    from lora_rl.tensor_guard import base_linear_shapes, check_adapter

    try:
        directory = local_model_dir(base_model, build=True)
    except ModelSourceError:
        directory = None
    try:
        check_adapter(adapter, rank, base_linear_shapes(directory) if directory else None)
    except ValueError as exc:
        raise ExportError(f"{where}: {exc}; nothing was written") from None


def _megatron_adapter_in_hf_names(adapter: dict[str, torch.Tensor], base_model: str,
                                  where: Path) -> dict[str, torch.Tensor]:
    """A Megatron-backend adapter with HF module names. lora-rl's Megatron checkpoints already
    store it so (bridge.megatron_to_hf at save time); an adapter in Megatron Core names
    (`decoder.layers.N.self_attention.linear_qkv.lora_A.weight`, or Megatron-Bridge's
    `.adapter.linear_in/linear_out`) is mapped here: linear_qkv's B is split into q/k/v after
    undoing the per-query-group interleave, linear_fc1's into gate/up, and the shared A is
    copied to each part."""
    from lora_rl.lora.naming import from_megatron_bridge

    adapter = from_megatron_bridge(adapter)
    if not any(k.startswith(("decoder.", "output_layer.")) for k in adapter):
        return adapter
    from transformers import AutoConfig

    from lora_rl.backends.megatron.bridge import LlamaShape, megatron_to_hf
    from lora_rl.model_source import require_local_model_dir

    config = AutoConfig.from_pretrained(require_local_model_dir(base_model))
    try:
        return megatron_to_hf(adapter, LlamaShape.from_hf(config))
    except (KeyError, ValueError) as exc:
        raise ExportError(f"{where}: cannot map the Megatron adapter to {base_model}'s HF "
                          f"modules: {exc}") from None


def _write_peft(target: Path, adapter: dict[str, torch.Tensor],
                lora: DTensorLoraConfig | MegatronPeftConfig, base_model: str) -> None:
    rank, alpha = lora.dim, lora.alpha
    if lora.init_lora_weights is not True:
        # PiSSA/OLoRA trained on a rewritten base: a plain LoRA of rank 2 * dim for the
        # original base (what peft itself writes with path_initial_model_for_weight_conversion).
        from lora_rl.interop.residual_export import as_plain_lora, init_factors

        try:
            init = init_factors(base_model, lora, adapter)
            adapter, rank, alpha = as_plain_lora(adapter, init, rank, alpha, lora.use_rslora)
        except ValueError as exc:
            raise ExportError(f"cannot convert the {lora.init_lora_weights} adapter to a plain "
                              f"LoRA: {exc}") from None
    write_adapter(target, adapter, rank=rank, alpha=alpha, dropout=lora.dropout,
                  base_model=peft_base(base_model), use_rslora=lora.use_rslora,
                  use_dora=lora.use_dora)


def peft_base(base_model: str) -> str:
    """What `base_model_name_or_path` must say for `peft` to find the base: the absolute local
    directory (the embedded tiny model's cache directory, a recipe's relative `models/x`); a
    hub id that is not on disk is written as given (peft resolves hub ids itself)."""
    from lora_rl.model_source import ModelSourceError, local_model_dir

    try:
        directory = local_model_dir(base_model, build=True)
    except ModelSourceError:
        return base_model
    return str(directory.resolve()) if directory is not None else base_model


def _write_merged(target: Path, adapter: dict[str, torch.Tensor],
                  lora: DTensorLoraConfig | MegatronPeftConfig, base_model: str,
                  quantization: dict | None = None) -> None:
    from transformers import AutoModelForCausalLM

    from lora_rl.lora import (
        apply_lora,
        load_lora_state_dict,
        lora_spec_from_config,
        merge_and_unwrap,
    )
    from lora_rl.model_source import check_weights, require_local_model_dir

    directory = require_local_model_dir(base_model)
    check_weights(directory, allow_pickle=False)  # safetensors only (LR804)
    if quantization is not None and isinstance(lora, DTensorLoraConfig):
        # QLoRA: the dequantized base it trained on, not the original weights (rules LR16x
        # keep quantization to DTensor LoRA).
        from lora_rl.config.quantization import QuantizationConfig
        from lora_rl.interop.quantized_export import dequantized_merged_model

        model = dequantized_merged_model(directory, adapter, lora,
                                         QuantizationConfig.model_validate(quantization))
        model.save_pretrained(target, safe_serialization=True)
        return
    model = AutoModelForCausalLM.from_pretrained(directory)
    if isinstance(lora, MegatronPeftConfig):
        # The recipe's targets are Megatron module names; the adapter names the HF modules.
        wrap_adapter_modules(model, adapter, lora_spec_from_config(lora))
    else:
        apply_lora(model, lora)
    load_lora_state_dict(model, adapter)
    merge_and_unwrap(model)
    model.save_pretrained(target, safe_serialization=True)


def _write_tokenizer(state: dict | None, base_model: str, target: Path) -> None:
    """The training tokenizer, encoding as the run did (BOS) with its chat template."""
    from lora_rl.data.tokenizer_export import write_tokenizer
    from lora_rl.model_source import require_local_model_dir

    write_tokenizer(state, require_local_model_dir(base_model), target)
