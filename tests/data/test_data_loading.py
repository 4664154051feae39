"""Data sets through the Hugging Face `datasets` library, in NeMo RL's layout and lora-rl's:
every format reads the same records, the issue's exact YAML works, bad data ends in file:line
messages, and pipes/devices are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lora_rl.config.validate import validate_recipe
from lora_rl.data.files import load_records
from lora_rl.data.jsonl import DataError
from lora_rl.data.samples import Reader, read_samples
from lora_rl.data.sources import load_samples
from lora_rl.data.specs import data_specs
from tests.data.conftest import chat_rows, write_jsonl

REPO = Path(__file__).resolve().parents[2]
NO_TEMPLATE = "policy:\n  tokenizer:\n    chat_template: null\n"
ROWS = [{"input": f"{a}+1=", "output": str(a + 1)} for a in range(6)]


def _config(tmp_path: Path, data_yaml: str, algorithm: str = "sft", extra: str = ""):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"defaults: {REPO}/recipes/{algorithm}-tiny-dtensor-lora.yaml\n"
                      f"{extra}data:\n{data_yaml}", encoding="utf-8")
    result = validate_recipe(recipe)
    assert result.config is not None and result.ok, [d.message for d in result.errors]
    return result.config, result


def _samples(cfg, split: str):
    return load_samples(cfg.data, cfg.algorithm, split)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_format_reads_the_same_records(workdir):
    import datasets

    table = datasets.Dataset.from_list(ROWS)
    write_jsonl(workdir / "d.jsonl", ROWS)
    (workdir / "d.json").write_text(json.dumps(ROWS))
    table.to_parquet(str(workdir / "d.parquet"))
    table.to_csv(str(workdir / "d.csv"), index=False)
    table.save_to_disk(str(workdir / "saved"))
    datasets.DatasetDict({"train": table, "test": table.select(range(2))}).save_to_disk(
        str(workdir / "dict"))
    arrow = next((workdir / "saved").glob("*.arrow"))
    for name in ("d.jsonl", "d.json", "d.parquet", "d.csv", "saved", str(arrow)):
        records = load_records(workdir / name, "data.train.data_path")
        assert [r.fields for r in records] == ROWS, name
    assert len(load_records(workdir / "dict", "k", split="test")) == 2
    with pytest.raises(DataError, match="no split 'val'"):
        load_records(workdir / "dict", "k", split="val")


def test_the_issue_yaml_form_loads_chat_data(workdir):
    write_jsonl(workdir / "chat_train.jsonl", chat_rows([(1, 2), (3, 4)], turns=2))
    write_jsonl(workdir / "chat_val.jsonl", chat_rows([(5, 1)]))
    cfg, result = _config(workdir, (
        "  train: {dataset_name: openai_format, data_path: chat_train.jsonl}\n"
        "  validation: {dataset_name: openai_format, data_path: chat_val.jsonl}\n"
        "  default: {chat_key: messages}\n"), extra=NO_TEMPLATE)
    assert not [d for d in result.warnings if d.rule == "LR901"]
    train, val = _samples(cfg, "train"), _samples(cfg, "val")
    assert [s.where for s in train] == ["chat_train.jsonl:1", "chat_train.jsonl:2"]
    assert len(train[0].train[0].messages) == 4 and train[0].answer == "3"
    assert val[0].prompt.messages == ({"role": "user", "content": "5+1="},)
    assert val[0].answer == "6"


def test_block_lists_defaults_prompt_file_system_prompt_and_holdout(workdir):
    write_jsonl(workdir / "a.jsonl", ROWS)
    write_jsonl(workdir / "b.jsonl", [{"q": "9+9=", "a": "18"}])
    (workdir / "p.txt").write_text("solve {} now")
    cfg, _ = _config(workdir, (
        "  train:\n"
        "    - {dataset_name: ResponseDataset, data_path: a.jsonl, split_validation_size: 0.5,"
        " seed: 3}\n"
        "    - {data_path: b.jsonl, input_key: q, output_key: a}\n"
        "  default: {prompt_file: p.txt, system_prompt: be brief}\n"))
    specs = data_specs(cfg.data, cfg.algorithm, "train")
    assert [s.where for s in specs] == ["data.train.0.data_path", "data.train.1.data_path"]
    train, val = _samples(cfg, "train"), _samples(cfg, "val")
    assert len(train) == 3 + 1 and len(val) == 3
    assert {s.answer for s in train[:3]} | {s.answer for s in val} == {r["output"] for r in ROWS}
    first = train[-1].prompt.messages
    assert first == ({"role": "system", "content": "be brief"},
                     {"role": "user", "content": "solve 9+9= now"})
    assert train[-1].prompt_text == "9+9="
    again, _ = _config(workdir, "  train: [{dataset_name: ResponseDataset, data_path: a.jsonl,"
                       " split_validation_size: 0.5, seed: 3}]\n")
    assert [s.answer for s in _samples(again, "val")] == [s.answer for s in val]


def test_legacy_keys_still_work(workdir):
    write_jsonl(workdir / "t.jsonl", [{"prompt": "1+1=", "response": "2"}])
    cfg, _ = _config(workdir, "  train_data_path: t.jsonl\n")
    (sample,) = _samples(cfg, "train")
    assert sample.answer == "2" and sample.where == "t.jsonl:1"


def test_dpo_pairs_plain_conversational_and_ranked(workdir):
    # One file per shape: `datasets` infers one type per column.
    write_jsonl(workdir / "p.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}])
    write_jsonl(workdir / "c.jsonl", [
        {"prompt": [{"role": "user", "content": "2+2="}],
         "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]}])
    write_jsonl(workdir / "r.jsonl", [{
        "context": [{"role": "user", "content": "3+3="}],
        "completions": [{"rank": 1, "completion": [{"role": "assistant", "content": "7"}]},
                        {"rank": 0, "completion": [{"role": "assistant", "content": "6"}]}]}])
    cfg, _ = _config(workdir, "  train:\n"
                     "    - {dataset_name: BinaryPreferenceDataset, data_path: p.jsonl}\n"
                     "    - {dataset_name: BinaryPreferenceDataset, data_path: c.jsonl}\n"
                     "    - {dataset_name: PreferenceDataset, data_path: r.jsonl}\n",
                     algorithm="dpo", extra=NO_TEMPLATE)
    pairs = [(s.train[0].messages[-1]["content"], s.train[1].messages[-1]["content"],
              s.train[0].train_from) for s in _samples(cfg, "train")]
    assert pairs == [("2", "3", 1), ("4", "5", 1), ("6", "7", 1)]


def test_grpo_reads_prompt_and_answer(workdir):
    write_jsonl(workdir / "g.jsonl", [{"problem": "4+4=", "expected_answer": "8"}])
    cfg, _ = _config(workdir, "  train: {data_path: g.jsonl, input_key: problem, "
                     "output_key: expected_answer}\n", algorithm="grpo")
    (sample,) = _samples(cfg, "train")
    assert sample.train == () and sample.answer == "8" and sample.prompt_text == "4+4="


# ---- bad data ------------------------------------------------------------------------------


def _reader(workdir, algorithm="sft", **changes):
    from lora_rl.data.specs import DataSpec

    return Reader.for_spec(DataSpec(path=workdir / "d.jsonl", kind=changes.pop("kind", "plain"),
                                    where="data.train.data_path", **changes), algorithm)


def test_malformed_lines_are_reported_with_file_and_line(workdir):
    path = workdir / "d.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n{oops\n[1, 2]\n\n')
    with pytest.raises(DataError) as err:
        load_records(path, "data.train.data_path")
    text = str(err.value)
    assert f"{path}:2:" in text and "not valid JSON" in text
    assert f"{path}:3:" in text and "JSON object" in text


def test_wrong_keys_are_reported_per_record(workdir):
    write_jsonl(workdir / "d.jsonl", [{"input": "a", "output": "b"}, {"input": "a"},
                                      {"input": "a", "output": 3}])
    records = load_records(workdir / "d.jsonl", "k")
    with pytest.raises(DataError) as err:
        read_samples(_reader(workdir), records)
    text = str(err.value)
    assert "d.jsonl:2: field 'output' is missing" in text
    assert "d.jsonl:3: field 'output' is a int, not a string" in text
    assert "expected: input, output" in text


def test_bad_chat_records_are_reported(workdir):
    write_jsonl(workdir / "d.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": "hi"}])
    with pytest.raises(DataError) as err:
        read_samples(_reader(workdir, kind="chat"), load_records(workdir / "d.jsonl", "k"))
    lines = str(err.value).splitlines()
    assert lines[0].endswith("d.jsonl:1: 'messages' has no assistant message to learn from")
    assert "d.jsonl:2: messages[0] is not a message with a role" in lines[1]
    assert "d.jsonl:3: field 'messages' must be a non-empty list" in lines[2]


def test_empty_missing_and_special_files(workdir):
    (workdir / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_records(workdir / "empty.jsonl", "k")
    with pytest.raises(DataError, match="no such data file"):
        load_records(workdir / "missing.jsonl", "k")
    os.mkfifo(workdir / "pipe.jsonl")
    with pytest.raises(DataError, match="not a regular file or directory"):
        load_records(workdir / "pipe.jsonl", "data.train.data_path")
    with pytest.raises(DataError, match="not a regular file or directory"):
        load_records(Path("/dev/null"), "data.train.data_path")


def test_validate_refuses_a_fifo_and_reads_only_the_first_record(workdir):
    os.mkfifo(workdir / "pipe.jsonl")
    recipe = workdir / "r.yaml"
    recipe.write_text(f"defaults: {REPO}/recipes/sft-tiny-dtensor-lora.yaml\n"
                      "data:\n  train: {data_path: pipe.jsonl}\n")
    result = validate_recipe(recipe)  # must not block on the pipe
    assert [d.rule for d in result.errors] == ["LR511"]


def test_chat_template_setting_follows_nemo_rl(workdir, tiny_tokenizer):
    from lora_rl.data.sources import renderer, resolve_template
    from tests.data.conftest import TAGGED

    write_jsonl(workdir / "t.jsonl", [{"input": "1+1=", "output": "2"}])
    (workdir / "t.jinja").write_text(TAGGED)
    data = "  train: {data_path: t.jsonl}\n"
    tiny_tokenizer.chat_template = None
    for setting, expected in (("default", None), ("null", None), ("t.jinja", TAGGED),
                              ("'{{ bos_token }}'", "{{ bos_token }}")):
        cfg, _ = _config(workdir, data, extra=f"policy:\n  tokenizer:\n"
                         f"    chat_template: {setting}\n")
        assert resolve_template(cfg.policy, cfg.data, tiny_tokenizer) == expected, setting
    tiny_tokenizer.chat_template = TAGGED
    cfg, _ = _config(workdir, data)
    assert resolve_template(cfg.policy, cfg.data, tiny_tokenizer) == TAGGED  # default: its own
    cfg, _ = _config(workdir, data, extra=NO_TEMPLATE)
    assert resolve_template(cfg.policy, cfg.data, tiny_tokenizer) is None  # null: concatenation
    tiny_tokenizer.chat_template = None
    plain = renderer(cfg.policy, cfg.data, cfg.algorithm, tiny_tokenizer)
    assert type(plain).__name__ == "PlainRenderer"
