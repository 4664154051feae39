"""One vLLM engine for every GRPO adapter of a multi-adapter run, each in a LoRA slot of its own.

The engine loads the shared base once (`VllmEngine` sized for all the adapters: `max_loras` a
slot per adapter, `max_lora_rank` the largest rank); each GRPO adapter gets a `SlotEngine`, the
`RolloutEngine` its algorithm samples through. In the adapter's turn (its LoRA modules in the
model) `sample` writes that adapter's current weights as a PEFT directory, loads it under a
fresh LoRA id named after the adapter (split-weight sync, so after each of its optimizer steps)
and generates the adapter's prompts with that LoRARequest alone, under the adapter's own seeds:
its rollouts are those of its solo run on an engine of its own (tests/vllm/test_vllm_grpo.py).

Merge-weight sync cannot share an engine (it writes the adapter into the base weights every
adapter reads), and what the engine fixes (its `vllm_cfg`) must agree between the recipes:
rules LR702 and LR703 check both at validate time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lora_rl.backends.base import TrainingBackend
from lora_rl.config.policy import PolicyConfig
from lora_rl.generation.torch_generator import Generated, SamplingParams
from lora_rl.generation.vllm_engine import LoraSlot, VllmEngine


@dataclass(frozen=True)
class ServedAdapter:
    """A GRPO adapter the shared engine serves."""

    name: str
    policy: PolicyConfig
    backend: TrainingBackend
    """Its training backend: `generation_model()` holds its current adapter in its turn."""
    rollouts_per_step: int
    """Prompts x generations of one of its steps (the engine's KV cache holds the largest)."""


class SlotEngine:
    """One adapter's view of the shared engine (a `RolloutEngine`)."""

    def __init__(self, engine: VllmEngine, slot: LoraSlot) -> None:
        self.engine = engine
        self.slot = slot

    def sample(self, prompts: list[list[int]], params: SamplingParams,
               generator: torch.Generator) -> tuple[Generated, dict[str, float]]:
        return self.engine.sample_for(self.slot, prompts, params, generator)

    def close(self) -> None:
        """Unload this adapter; the engine itself is closed by `SharedVllmEngine.close`."""
        self.engine.release(self.slot)


class SharedVllmEngine:
    def __init__(self, adapters: Sequence[ServedAdapter]) -> None:
        """`adapters`: every GRPO adapter of the run that samples with vLLM, in run order."""
        if not adapters:
            raise ValueError("a shared vLLM engine needs at least one adapter")
        first = adapters[0]
        # The tokenizer is not needed: vLLM loads its own from the model directory.
        self.engine = VllmEngine(first.policy, first.backend, None,
                                 max(a.rollouts_per_step for a in adapters),
                                 adapters=[a.policy for a in adapters])
        self.slots = {a.name: SlotEngine(self.engine, LoraSlot(a.name, a.backend))
                      for a in adapters}

    def close(self) -> None:
        for slot in self.slots.values():
            slot.close()
        self.engine.close()
