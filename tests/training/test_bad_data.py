"""Bad data files end in one clear message with file:line, never a traceback."""

import json

import pytest

from lora_rl.data.jsonl import DataError, read_jsonl
from tests.training.conftest import QUIET


def test_malformed_lines_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{oops\n[1, 2]\n{"prompt": "a"}\n\n')
    with pytest.raises(DataError) as err:
        read_jsonl(path, ("prompt", "response"))
    text = str(err.value)
    assert f"{path}:2:" in text and "not valid JSON" in text
    assert f"{path}:3:" in text and "JSON object" in text
    assert f"{path}:4:" in text and "response" in text


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        read_jsonl(tmp_path / "empty.jsonl", ("prompt",))
    with pytest.raises(DataError, match="no such data file"):
        read_jsonl(tmp_path / "missing.jsonl", ("prompt",))


@pytest.mark.parametrize("content,expected", [
    ('{"prompt": "1+1=", "response": "2"}\nnot json\n', "train.jsonl:2:"),
    ('{"prompt": "1+1=", "response": "' + "9" * 200 + '"}\n', "train.jsonl:1: "),
])
def test_run_stops_cleanly_on_bad_data(runner, content, expected):
    (runner.workdir / "train.jsonl").write_text(content)
    done = runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml",
                      "data.train_data_path=train.jsonl",
                      "checkpointing.enabled=false", *QUIET, check=False)
    assert done.returncode == 1
    assert expected in done.stderr and "fix:" in done.stderr
    assert "Traceback" not in done.stderr


def test_overlong_records_can_be_skipped_and_counted(runner):
    rows = [{"prompt": "1+1=", "response": "2"}] * 16 + [{"prompt": "1+1=", "response": "9" * 200}]
    (runner.workdir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml",
                      "data.train_data_path=train.jsonl",
                      "data.on_overlong=skip", "sft.max_num_steps=1", "sft.val_period=0",
                      "sft.val_at_start=false", "checkpointing.enabled=false", *QUIET)
    assert "skipped 1 over-long record" in done.stdout
