"""Bad data files end in one clear message with file:line, never a traceback."""

import json

import pytest

from tests.training.conftest import QUIET

# File-level cases (malformed lines, wrong keys, empty, missing, pipes): tests/data/test_loading.py


@pytest.mark.parametrize("content,expected", [
    ('{"prompt": "1+1=", "response": "2"}\nnot json\n', "train.jsonl:2:"),
    ('{"prompt": "1+1=", "response": "' + "9" * 200 + '"}\n', "train.jsonl:1: "),
    ('{"prompt": "1+1=", "response": "2"}\n{"prompt": "1+1="}\n', "train.jsonl:2: "),
    ("\n", "the data set is empty"),
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
