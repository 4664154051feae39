"""Held-out accuracy: greedy generation compared to the reference answer (exact match)."""

from __future__ import annotations

from lora_rl.backends.base import TrainingBackend
from lora_rl.config.recipe import RecipeConfig
from lora_rl.data.examples import TextFormat
from lora_rl.data.jsonl import Record
from lora_rl.data.sources import chunks
from lora_rl.generation.torch_generator import SamplingParams, generate
from lora_rl.rewards import normalise
from lora_rl.training.runtime import Runtime

EVAL_BATCH = 64


def exact_match_accuracy(backend: TrainingBackend, fmt: TextFormat, records: list[Record],
                         cfg: RecipeConfig, runtime: Runtime,
                         answer_key: str | None = None, batch_size: int = EVAL_BATCH) -> float:
    """Share of records whose greedy completion equals the reference (computed on rank 0)."""
    key = answer_key or cfg.data.response_key
    tokenizer = fmt.tokenizer
    max_new = max(len(fmt.response_ids(r.text(key))) for r in records) + 2
    params = SamplingParams(max_new_tokens=max_new, temperature=0.0,
                            stop_token_ids=frozenset({tokenizer.eos_token_id}))
    correct = 0
    with backend.eval_mode(), backend.generation_model() as model:
        if runtime.is_main:
            model.eval()
            for chunk in chunks(records, batch_size):
                prompts = [fmt.prompt_ids(r.text(cfg.data.prompt_key)) for r in chunk]
                out = generate(model, prompts, params, pad_id=tokenizer.pad_token_id)
                for record, tokens in zip(chunk, out.tokens, strict=True):
                    text = tokenizer.decode(tokens, skip_special_tokens=True)
                    correct += normalise(text) == normalise(record.text(key))
    return float(runtime.broadcast_object(correct / len(records)))
