"""Held-out accuracy: greedy generation compared to the reference answer (exact match)."""

from __future__ import annotations

from lora_rl.backends.base import TrainingBackend
from lora_rl.data.render import Renderer
from lora_rl.data.samples import Sample
from lora_rl.data.sources import chunks
from lora_rl.generation.torch_generator import SamplingParams, generate
from lora_rl.rewards import normalise
from lora_rl.training.runtime import Runtime

EVAL_BATCH = 64


def exact_match_accuracy(backend: TrainingBackend, renderer: Renderer,
                         items: list[tuple[Sample, list[int]]], runtime: Runtime,
                         batch_size: int = EVAL_BATCH) -> float:
    """Share of samples whose greedy completion of their rendered prompt (ids given) equals the
    reference answer (computed on rank 0)."""
    tokenizer = renderer.tokenizer
    max_new = max(renderer.answer_length(s.answer) for s, _ in items) + 2
    params = SamplingParams(max_new_tokens=max_new, temperature=0.0,
                            stop_token_ids=frozenset({tokenizer.eos_token_id}))
    correct = 0
    with backend.eval_mode(), backend.generation_model() as model:
        if runtime.is_main:
            model.eval()
            for chunk in chunks(items, batch_size):
                out = generate(model, [ids for _, ids in chunk], params,
                               pad_id=tokenizer.pad_token_id)
                for (sample, _), tokens in zip(chunk, out.tokens, strict=True):
                    text = tokenizer.decode(tokens, skip_special_tokens=True)
                    correct += normalise(text) == normalise(sample.answer)
    return float(runtime.broadcast_object(correct / len(items)))
