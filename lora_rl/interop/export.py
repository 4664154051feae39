"""`lora-rl export`: a training checkpoint -> a PEFT adapter or a merged Hugging Face model.

Both are written into a temporary directory next to the target and renamed into place, so an
interrupted export never leaves a half-written model where a complete one is expected.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from lora_rl import __version__
from lora_rl.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, step_dirs
from lora_rl.config.lora import DTensorLoraConfig
from lora_rl.interop.peft_format import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    adapter_config,
    patched_modules,
    to_peft_keys,
)

EXPORT_SCHEMA_VERSION = 1
ExportFormat = Literal["peft", "merged"]


class ExportError(ValueError):
    pass


class OutputExistsError(ExportError):
    """The target exists and --force was not given (a usage error, exit 2)."""


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


def export_checkpoint(checkpoint: Path, fmt: ExportFormat, out: Path, base: str | None,
                      force: bool) -> Path:
    try:
        ckpt = _resolve_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    run = ckpt.state.get("run") or {}
    if run.get("backend") != "dtensor":
        raise ExportError(f"{ckpt.path}: exporting {run.get('backend')!r} checkpoints is not "
                          "supported yet; lora-rl exports DTensor-backend checkpoints")
    if run.get("lora") is None or "adapter" not in ckpt.tensors:
        raise ExportError(f"{ckpt.path} is a full fine-tuning checkpoint, not a LoRA adapter")
    lora = DTensorLoraConfig.model_validate(run["lora"])
    base_model = base or run.get("model_name")
    if not base_model:
        raise ExportError(f"{ckpt.path}: the checkpoint does not name its base model; pass --base")
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists; pass --force to replace it")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if fmt == "peft":
            _write_peft(tmp, ckpt.tensors["adapter"], lora, base_model)
        else:
            _write_merged(tmp, ckpt.tensors["adapter"], lora, base_model)
        stamp = {"schema_version": EXPORT_SCHEMA_VERSION, "lora_rl_version": __version__,
                 "format": fmt, "source_checkpoint": str(ckpt.path), "step": ckpt.step,
                 "backend": run["backend"], "base_model": base_model}
        (tmp / "lora_rl_export.json").write_text(json.dumps(stamp, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_peft(target: Path, adapter: dict[str, torch.Tensor], lora: DTensorLoraConfig,
                base_model: str) -> None:
    config = adapter_config(rank=lora.dim, alpha=lora.alpha, dropout=lora.dropout,
                            modules=patched_modules(adapter), base_model=base_model)
    (target / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in to_peft_keys(adapter).items()},
              str(target / ADAPTER_WEIGHTS))


def _write_merged(target: Path, adapter: dict[str, torch.Tensor], lora: DTensorLoraConfig,
                  base_model: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_rl.lora import apply_lora, load_lora_state_dict, merge_and_unwrap
    from lora_rl.model_source import require_local_model_dir

    directory = require_local_model_dir(base_model)
    model = AutoModelForCausalLM.from_pretrained(directory)
    apply_lora(model, lora)
    load_lora_state_dict(model, adapter)
    merge_and_unwrap(model)
    model.save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(directory).save_pretrained(target)
