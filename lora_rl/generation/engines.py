"""Rollout engines: where GRPO's samples come from, and how LoRA weights reach them.

An engine is chosen by `policy.generation.backend`; each one takes the current policy (through
the training backend) and returns sampled tokens with their log-probs. The torch engine samples
from the policy module itself (LoRA merged in fp32 or left split); the vLLM engine keeps a
separate vLLM instance in sync (lora_rl.generation.vllm_engine).
"""

from __future__ import annotations

import time
from typing import Protocol

import torch

from lora_rl.backends.base import TrainingBackend
from lora_rl.config.policy import PolicyConfig
from lora_rl.generation.torch_generator import Generated, SamplingParams, generate
from lora_rl.lora import merge_lora, unmerge_lora


class RolloutEngine(Protocol):
    def sample(self, prompts: list[list[int]], params: SamplingParams,
               generator: torch.Generator) -> tuple[Generated, dict[str, float]]:
        """Sampled responses and timings (`generation_time_s`, `weight_sync_time_s`)."""

    def close(self) -> None:
        """Release the engine's resources; must run before torch.distributed is torn down."""


class TorchEngine:
    def __init__(self, policy: PolicyConfig, backend: TrainingBackend, tokenizer) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.merge = (policy.generation is None
                      or policy.generation.lora_weight_sync == "merge") \
            and policy.active_lora is not None

    def sample(self, prompts, params, generator):
        sync_s = 0.0
        with self.backend.eval_mode(), self.backend.generation_model() as model:
            if self.merge:
                started = time.perf_counter()
                merge_lora(model)
                sync_s += time.perf_counter() - started
            try:
                started = time.perf_counter()
                out = generate(model, prompts, params, pad_id=self.tokenizer.pad_token_id,
                               generator=generator, decode=self.tokenizer.decode)
                gen_s = time.perf_counter() - started
            finally:
                if self.merge:
                    started = time.perf_counter()
                    unmerge_lora(model)
                    sync_s += time.perf_counter() - started
        return out, {"generation_time_s": gen_s, "weight_sync_time_s": sync_s}

    def close(self) -> None:
        """Nothing to release: the torch engine samples from the training module itself."""


def build_engine(policy: PolicyConfig, backend: TrainingBackend, tokenizer,
                 rollouts_per_step: int) -> RolloutEngine:
    """The engine `policy.generation` selects; `rollouts_per_step` (prompts x generations)
    sizes vLLM's KV cache on CPU."""
    gen = policy.generation
    if gen is not None and gen.backend == "vllm":
        from lora_rl.generation.vllm_engine import VllmEngine

        return VllmEngine(policy, backend, tokenizer, rollouts_per_step)
    return TorchEngine(policy, backend, tokenizer)


