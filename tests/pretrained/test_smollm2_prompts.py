"""GRPO rollout prompts from chat data on SmolLM2-135M-Instruct: the prompts GRPO generates
from are rendered by SmolLM2's own chat template with the generation prompt. Tokenizer only
(seconds), so not marked slow; skipped when the model is not built (`lora-rl build-model
smollm2`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_rl.model_source import BUILT_MODELS, cache_root
from tests.data.conftest import VAL, chat_rows, write_jsonl

MODEL_DIR = cache_root() / BUILT_MODELS["lora-rl/smollm2-135m-instruct"][0]
RECIPES = Path(__file__).resolve().parents[2] / "recipes"

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "tokenizer.json").is_file(),
                                reason="SmolLM2 is not built: run `lora-rl build-model smollm2`")


def test_grpo_rollout_prompts_end_with_the_assistant_header(tmp_path):
    from lora_rl.config.validate import validate_recipe
    from lora_rl.data.sources import limits, load_samples, load_tokenizer, prompts, renderer

    rows = chat_rows(VAL[:4])
    write_jsonl(tmp_path / "g.jsonl", rows)
    recipe = tmp_path / "grpo-chat.yaml"
    recipe.write_text(
        f"defaults: {RECIPES / 'grpo-tiny-dtensor-lora.yaml'}\n"
        f"policy:\n  model_name: {MODEL_DIR}\n  tokenizer: {{chat_template: default}}\n"
        "  init_adapter_path: null\n  max_total_sequence_length: 64\n"
        f"data:\n  train: {{dataset_name: openai_format, data_path: {tmp_path / 'g.jsonl'}}}\n",
        encoding="utf-8")
    result = validate_recipe(recipe)
    assert not result.errors, result.errors
    cfg = result.config

    # The calls GRPO's `prepare` makes (lora_rl/algorithms/grpo.py).
    tokenizer = load_tokenizer(cfg.policy, cfg.data)
    built = prompts(renderer(cfg.policy, cfg.data, cfg.algorithm, tokenizer),
                    load_samples(cfg.data, cfg.algorithm, "train"), limits(cfg.policy, cfg.data))
    assert len(built) == len(rows)
    for (sample, ids), row in zip(built, rows, strict=True):
        text = tokenizer.decode(ids)
        user = row["messages"][0]["content"]
        assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant")
        assert text.endswith(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
        assert sample.answer == row["messages"][1]["content"]
