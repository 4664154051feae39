"""An unsharded copy of the policy for sampling in multi-process runs.

Sampling loops run a different number of forward passes on each rank, which sharded (FSDP/TP)
modules cannot do without every rank stepping in lockstep. So each rank keeps a plain copy of
the model and, before each use, receives the current trainable weights (the small LoRA adapter,
or everything for full fine-tuning) gathered from the training model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lora_rl.backends.dtensor.model import load_hf_model
from lora_rl.config.lora import DTensorLoraConfig
from lora_rl.lora import apply_lora


class GenerationCopy:
    def __init__(self, trained: torch.nn.Module, model_dir: Path, precision: str,
                 trust_remote_code: bool, lora: DTensorLoraConfig | None) -> None:
        """`trained` is the (sharded) training model whose trainable weights each `synced`
        copies; the plain copy loads `model_dir` in `precision`, with the `lora` adapter
        layout (None: full fine-tuning)."""
        self.trained = trained
        self.model_dir = model_dir
        self.precision = precision
        self.trust_remote_code = trust_remote_code
        self.lora = lora
        self.model: torch.nn.Module | None = None

    def _build(self) -> torch.nn.Module:
        model = load_hf_model(self.model_dir, self.precision, self.trust_remote_code)
        if self.lora is not None:
            apply_lora(model, self.lora)
        return model.requires_grad_(False)

    @contextlib.contextmanager
    def synced(self) -> Iterator[torch.nn.Module]:
        """Collective: every rank of the training model must enter it."""
        weights = get_model_state_dict(self.trained, options=StateDictOptions(
            full_state_dict=True, ignore_frozen_params=True))
        if self.model is None:
            self.model = self._build()
        result = self.model.load_state_dict(weights, strict=False)
        if result.unexpected_keys:
            raise RuntimeError("generation copy does not match the policy: "
                               f"{result.unexpected_keys[:5]}")
        self.model.eval()
        yield self.model
