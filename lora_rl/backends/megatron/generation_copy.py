"""An unsharded Hugging Face copy of the policy, for the torch generator and evaluation.

Sampling runs a different number of forward passes on each rank, which a tensor/pipeline-split
model cannot do without every rank stepping in lockstep; and the generator and exporters speak
HF. So each rank keeps a plain `LlamaForCausalLM` and, before each use, receives the current
trainable weights gathered from the Megatron model and mapped back to HF names (the LoRA adapter
only, or every weight for full fine-tuning).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from lora_rl.interop.peft_format import wrap_adapter_modules
from lora_rl.lora import load_lora_state_dict
from lora_rl.lora.spec import LoraSpec


class GenerationCopy:
    def __init__(self, trained_weights: Callable[[], dict[str, torch.Tensor]], model_dir: Path,
                 precision: str, trust_remote_code: bool, lora: LoraSpec | None) -> None:
        """`trained_weights` gathers the trainable weights in HF names (collective); the plain
        copy loads `model_dir` in `precision`, with adapters of the `lora` spec (None: full
        fine-tuning)."""
        self.trained_weights = trained_weights
        self.model_dir = model_dir
        self.precision = precision
        self.trust_remote_code = trust_remote_code
        self.lora = lora
        self.model: torch.nn.Module | None = None

    def _build(self, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=getattr(torch, self.precision),
            trust_remote_code=self.trust_remote_code, attn_implementation="sdpa")
        if self.lora is not None:
            # Exactly the HF modules the adapter names: q/k/v (or gate/up) each get their own
            # A, loaded with the fused module's shared values (as in a PEFT export).
            wrap_adapter_modules(model, weights, self.lora)
        return model.requires_grad_(False)

    @contextlib.contextmanager
    def synced(self) -> Iterator[torch.nn.Module]:
        """Collective: every rank of the training model must enter it."""
        weights = self.trained_weights()
        if self.model is None:
            self.model = self._build(weights)
        if self.lora is not None:
            load_lora_state_dict(self.model, weights)
        else:
            self.model.load_state_dict(weights, strict=True)
        self.model.eval()
        yield self.model
