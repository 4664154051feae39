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

import torch

from lora_rl.backends.base import TrainingBackend
from lora_rl.config.recipe import RecipeConfig
from lora_rl.generation.torch_generator import Generated, SamplingParams
from lora_rl.generation.vllm_engine import LoraSlot, VllmEngine


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
    def __init__(self, adapters: Sequence[tuple[str, RecipeConfig, TrainingBackend]]) -> None:
        """`adapters`: (name, recipe, training backend) of every GRPO adapter that samples with
        vLLM, in run order."""
        if not adapters:
            raise ValueError("a shared vLLM engine needs at least one adapter")
        _, first, backend = adapters[0]
        rollouts = max(cfg.grpo.num_prompts_per_step * cfg.grpo.num_generations_per_prompt
                       for _, cfg, _ in adapters)
        # The tokenizer is not needed: vLLM loads its own from the model directory.
        self.engine = VllmEngine(first.policy, backend, None, rollouts,
                                 adapters=[cfg.policy for _, cfg, _ in adapters])
        self.slots = {name: SlotEngine(self.engine, LoraSlot(name, member_backend))
                      for name, _, member_backend in adapters}

    def close(self) -> None:
        for slot in self.slots.values():
            slot.close()
        self.engine.close()
