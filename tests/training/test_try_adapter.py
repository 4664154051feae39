"""`generate`, `chat` and `eval` on a trained checkpoint answer as the run measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.conftest import QUIET, Runner

MAIN = "recipes/sft-tiny-dtensor-lora.yaml"


def _val_records(runner: Runner) -> list[dict]:
    path = next(Path(runner.env["LORA_RL_CACHE"]).rglob("data/sft_val.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _check_answers_match_the_run(runner: Runner, log_dir: str, *args: str) -> float:
    measured = [r["val_accuracy"] for r in runner.metrics(log_dir) if "val_accuracy" in r][-1]
    done = runner.run("eval", MAIN, *args)
    assert done.stdout.strip() == f"val_accuracy {measured:.4f} (20 records)"
    records = _val_records(runner)
    done = runner.run("generate", MAIN, *args, *[r["prompt"] for r in records])
    answers = [line.split("\t") for line in done.stdout.splitlines()]
    assert [a[0] for a in answers] == [r["prompt"] for r in records]
    correct = sum(a[1].strip() == r["response"] for a, r in zip(answers, records, strict=True))
    assert correct == round(measured * len(records))
    return measured


def test_no_checkpoint_is_a_clean_error(runner: Runner) -> None:
    done = runner.run("generate", "sft-tiny-dtensor-lora", "2+3=", check=False)
    assert done.returncode == 1
    assert "using catalogue recipe sft-tiny-dtensor-lora" in done.stderr
    assert "results/sft-tiny-dtensor-lora: no such checkpoint or adapter directory (train " \
           "first with `lora-rl run`, or pass --checkpoint)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_the_main_job_checkpoint_answers_as_the_run_measured(runner: Runner) -> None:
    """README's main job, whole: its checkpoint scores its own final val_accuracy."""
    runner.run("run", MAIN, *QUIET)
    assert _check_answers_match_the_run(runner, "logs/sft-tiny-dtensor-lora") >= 0.5
    chat = runner.run("chat", MAIN, input="2+3=\n\n")
    assert chat.stdout.split("> ")[1].strip() == "5"
    base = runner.run("generate", MAIN, "--base-only", "2+3=")
    assert "with base model only" in base.stderr
