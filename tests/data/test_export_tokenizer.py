"""Exports ship a tokenizer that encodes like training (BOS) with a chat template that
reproduces the training format, so plain `transformers` gets the run's own accuracy."""

from __future__ import annotations

import json

import pytest
import torch

from lora_rl.rewards import normalise
from tests.training.conftest import QUIET

pytestmark = pytest.mark.slow
STEPS = 200


def _accuracy(model, tokenizer, records) -> float:
    correct = 0
    with torch.no_grad():
        for record in records:
            ids = tokenizer(record["prompt"], return_tensors="pt")["input_ids"]
            out = model.generate(ids, max_new_tokens=6, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            correct += normalise(text) == normalise(record["response"])
    return correct / len(records)


def test_exported_model_scores_the_runs_val_accuracy(runner, model_cache):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", f"sft.max_num_steps={STEPS}",
               f"sft.val_period={STEPS}", f"checkpointing.save_period={STEPS}", *QUIET)
    final = [r for r in runner.metrics("logs/sft-tiny-dtensor-lora") if "val_accuracy" in r][-1]
    ckpt = f"results/sft-tiny-dtensor-lora/step_{STEPS}"
    runner.run("export", "--checkpoint", ckpt, "--format", "merged", "--out", "out/merged")
    runner.run("export", "--checkpoint", ckpt, "--format", "peft", "--out", "out/peft")
    val = model_cache / "tiny-llama-v1" / "data" / "sft_val.jsonl"
    records = [json.loads(line) for line in val.read_text().splitlines() if line]

    merged_dir = runner.workdir / "out/merged"
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert tokenizer("3+4=")["input_ids"][0] == tokenizer.bos_token_id
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "3+4="}],
                                             add_generation_prompt=True, tokenize=False)
    assert rendered == "<s>3+4="
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert final["val_accuracy"] > 0.2
    assert _accuracy(merged, tokenizer, records) == final["val_accuracy"]

    peft_tokenizer = AutoTokenizer.from_pretrained(runner.workdir / "out/peft")
    base = AutoModelForCausalLM.from_pretrained(model_cache / "tiny-llama-v1")
    adapted = PeftModel.from_pretrained(base, runner.workdir / "out/peft").eval()
    assert _accuracy(adapted, peft_tokenizer, records) == final["val_accuracy"]

    # The base tokenizer alone (what exports shipped before) drops the BOS training added.
    plain = AutoTokenizer.from_pretrained(model_cache / "tiny-llama-v1")
    assert plain("3+4=")["input_ids"][0] != plain.bos_token_id
