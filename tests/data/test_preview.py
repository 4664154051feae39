"""`lora-rl preview`: the first N examples as the model sees them; trained tokens marked (text)
or listed (json); only assistant text is trained in chat data."""

from __future__ import annotations

import json

from tests.data.conftest import chat_rows, write_jsonl


def test_preview_json_lists_text_and_trained_text(runner, model_cache):
    done = runner.run("preview", "recipes/sft-tiny-dtensor-lora.yaml", "--n", "3",
                      "--format", "json")
    shown = json.loads(done.stdout)
    data = model_cache / "tiny-llama-v1" / "data" / "sft_train.jsonl"
    records = [json.loads(line) for line in data.read_text().splitlines()[:3]]
    assert shown == [{"text": f"<s>{r['prompt']}{r['response']}</s>",
                      "trained_text": f"{r['response']}</s>"} for r in records]


def test_preview_text_marks_only_assistant_turns(runner, chat_model):
    write_jsonl(runner.workdir / "chat.jsonl", chat_rows([(1, 2)], turns=2))
    (runner.workdir / "chat.yaml").write_text(
        "defaults: recipes/sft-tiny-dtensor-lora.yaml\n"
        f"policy: {{model_name: {chat_model}, max_total_sequence_length: 64}}\n"
        "data:\n  train: {dataset_name: openai_format, data_path: chat.jsonl}\n")
    done = runner.run("preview", "chat.yaml", "--n", "5")
    assert "1 example(s)" in done.stdout and "chat.jsonl:1" in done.stdout
    assert "<s>user 1+2= bot ⟦3</s>⟧user 2+1= bot ⟦3</s>⟧" in done.stdout


def test_preview_reports_bad_data_without_a_traceback(runner):
    (runner.workdir / "t.jsonl").write_text('{"prompt": "1+1=", "response": "2"}\n'
                                            '{"prompt": "1+1="}\n')
    done = runner.run("preview", "recipes/sft-tiny-dtensor-lora.yaml", "--set",
                      "data.train_data_path=t.jsonl", check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "t.jsonl:2: field 'response' is missing" in done.stderr
