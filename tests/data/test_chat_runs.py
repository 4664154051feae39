"""Chat data end to end on the tiny model with a chat template (tests/data/conftest.py):
NeMo RL's data blocks drive SFT (loss falls, held-out accuracy rises, multi-turn), DPO on
conversational pairs (starts at log 2), GRPO (prompts rendered with the generation prompt);
chat data for a template-less tokenizer is refused at validate, bad chat records at run start."""

from __future__ import annotations

import math

import pytest

from tests.data.conftest import PAIRS, TRAIN, VAL, chat_pairs, chat_rows, write_jsonl
from tests.training.conftest import QUIET

pytestmark = pytest.mark.slow


def _recipe(runner, algorithm: str, data: str, model: str, extra: str = "") -> str:
    (runner.workdir / "chat.yaml").write_text(
        f"defaults: recipes/{algorithm}-tiny-dtensor-lora.yaml\n"
        f"policy:\n  model_name: {model}\n  max_total_sequence_length: 64\n{extra}"
        f"data:\n{data}checkpointing:\n  enabled: false\n", encoding="utf-8")
    return "chat.yaml"


CHAT_DATA = ("  train: {dataset_name: openai_format, data_path: chat_train.jsonl}\n"
             "  validation: {dataset_name: openai_format, data_path: chat_val.jsonl}\n"
             "  default: {chat_key: messages}\n")


def test_chat_sft_learns_on_assistant_turns(runner, chat_model):
    write_jsonl(runner.workdir / "chat_train.jsonl", chat_rows(TRAIN, turns=2))
    write_jsonl(runner.workdir / "chat_val.jsonl", chat_rows(VAL))
    recipe = _recipe(runner, "sft", CHAT_DATA, str(chat_model))
    runner.run("run", recipe, "sft.max_num_steps=150", "sft.val_period=150", *QUIET)
    rows = runner.metrics("logs/sft-tiny-dtensor-lora")
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_accuracy" in r]
    assert sum(r["loss"] for r in train[-10:]) / 10 < sum(r["loss"] for r in train[:5]) / 5 / 3
    assert val[-1]["val_accuracy"] > val[0]["val_accuracy"]   # 0.0 -> 0.3 measured


def test_validate_refuses_chat_data_without_a_template(runner):
    write_jsonl(runner.workdir / "chat_train.jsonl", chat_rows(TRAIN[:4]))
    write_jsonl(runner.workdir / "chat_val.jsonl", chat_rows(VAL[:4]))
    recipe = _recipe(runner, "sft", CHAT_DATA, "lora-rl/tiny-llama")
    done = runner.run("validate", recipe, check=False)
    assert done.returncode != 0 and "LR513" in done.stdout + done.stderr
    ran = runner.run("run", recipe, check=False)
    assert ran.returncode != 0 and "Traceback" not in ran.stderr


def test_run_reports_bad_chat_records_with_file_and_line(runner, chat_model):
    rows = chat_rows(TRAIN[:20])
    rows[6] = {"messages": [{"role": "user", "content": "1+1="}]}
    write_jsonl(runner.workdir / "chat_train.jsonl", rows)
    write_jsonl(runner.workdir / "chat_val.jsonl", chat_rows(VAL[:4]))
    done = runner.run("run", _recipe(runner, "sft", CHAT_DATA, str(chat_model)), *QUIET,
                      check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "chat_train.jsonl:7: 'messages' has no assistant message" in done.stderr


def test_dpo_on_conversational_pairs_starts_at_log_2(runner, chat_model):
    write_jsonl(runner.workdir / "pairs.jsonl", chat_pairs(PAIRS))
    data = ("  train: {dataset_name: BinaryPreferenceDataset, data_path: pairs.jsonl,"
            " split_validation_size: 0.2, seed: 1}\n")
    runner.run("run", _recipe(runner, "dpo", data, str(chat_model)), "dpo.max_num_steps=30",
               "dpo.val_period=30", *QUIET)
    rows = runner.metrics("logs/dpo-tiny-dtensor-lora")
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert val[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert train[-1]["loss"] < train[0]["loss"]


def test_grpo_prompts_carry_the_generation_prompt(runner, chat_model):
    rows = [{"messages": [{"role": "user", "content": f"{a}+{b}="},
                          {"role": "assistant", "content": str(a + b)}]} for a, b in PAIRS]
    write_jsonl(runner.workdir / "g.jsonl", rows)
    data = "  train: {dataset_name: openai_format, data_path: g.jsonl}\n"
    done = runner.run("preview", _recipe(runner, "grpo", data, str(chat_model)), "--n", "2",
                      "--format", "json")
    import json

    shown = json.loads(done.stdout)
    assert shown[0]["text"] == f"<s>user {PAIRS[0][0]}+{PAIRS[0][1]}= bot "
    assert shown[0]["trained_text"] == ""
    runner.run("run", "chat.yaml", "grpo.max_num_steps=2", "grpo.val_period=0",
               "policy.init_adapter_path=null",
               "grpo.val_at_start=false", *QUIET)
    assert len([r for r in runner.metrics("logs/grpo-tiny-dtensor-lora") if "reward" in r]) == 2
