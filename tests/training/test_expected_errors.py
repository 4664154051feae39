"""One base for the failures lora-rl expects: a run that hits one prints one line and exits 1;
anything else (a plain ValueError from a bug) keeps its traceback."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from lora_rl.config.recipe import RecipeConfig
from lora_rl.errors import LoraRlError, SetupError

EXPECTED = [
    "lora_rl:RecipeInvalidError", "lora_rl.checkpoint:CheckpointError",
    "lora_rl.checkpoint:CheckpointVersionError", "lora_rl.config.diagnostics:RecipeError",
    "lora_rl.config.model_facts:ModelFactsError", "lora_rl.convert:ConvertError",
    "lora_rl.data.jsonl:DataError", "lora_rl.generation.vllm_engine:VllmUnavailableError",
    "lora_rl.interop.export:ExportError", "lora_rl.interop.peft_format:AdapterFormatError",
    "lora_rl.interop.policy_eval:EvalError", "lora_rl.interop.trained_policy:PolicyLoadError",
    "lora_rl.lora.matching:LoraMatchError", "lora_rl.model_source:ModelSourceError",
    "lora_rl.output_paths:OutputPathError", "lora_rl.plotting:PlotError",
    "lora_rl.pretrained:PretrainedBuildError", "lora_rl.recipes_catalog:CatalogError",
    "lora_rl.rewards:RewardError", "lora_rl.run_lock:RunLockError",
    "lora_rl.trackers:TrackerMissingError", "lora_rl.training.session:NonFiniteLossError",
    "lora_rl.training.session:ResumeRefusedError",
]


@pytest.mark.parametrize("where", EXPECTED)
def test_every_expected_failure_derives_from_the_base(where):
    module, name = where.split(":")
    assert issubclass(getattr(importlib.import_module(module), name), LoraRlError)


def test_setup_checks_found_at_run_time_raise_the_base():
    from lora_rl.data.order import DataOrder
    from lora_rl.training.optim import build_scheduler

    with pytest.raises(LoraRlError, match="empty data set"):
        DataOrder(0, 1, True)
    with pytest.raises(LoraRlError, match="larger than the data set"):
        DataOrder(2, 1, True).next_batch(3)
    import torch

    from lora_rl.config.policy import PolicyConfig

    policy = PolicyConfig.model_validate({"model_name": "x", "scheduler": [
        {"name": "torch.optim.lr_scheduler.LinearLR", "kwargs": {}},
        {"name": "torch.optim.lr_scheduler.ConstantLR", "kwargs": {}}]})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(SetupError, match="milestone"):
        build_scheduler(optimizer, policy.scheduler)


# The worker itself, with the algorithm replaced by one that raises: `python -m lora_rl.worker`
# is what every rank runs.
WORKER = """
import sys, lora_rl.algorithms
from lora_rl.data.jsonl import DataError
def fail(cfg, runtime):
    raise {error}
lora_rl.algorithms.run_algorithm = fail
from lora_rl.worker import main
sys.exit(main([sys.argv[1]]))
"""


def _worker(tmp_path, error: str) -> subprocess.CompletedProcess:
    cfg = RecipeConfig.model_validate({"sft": {"max_num_steps": 1},
                                       "policy": {"model_name": "x"},
                                       "checkpointing": {"enabled": False}})
    recipe = tmp_path / "resolved.json"
    recipe.write_text(json.dumps(cfg.model_dump(mode="json", by_alias=True)))
    return subprocess.run([sys.executable, "-c", WORKER.format(error=error), str(recipe)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_an_expected_failure_is_one_line_and_exit_1(tmp_path):
    done = _worker(tmp_path, "DataError('train.jsonl:3: field prompt is missing')")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: train.jsonl:3: field prompt is missing"


def test_a_plain_value_error_from_a_bug_keeps_its_traceback(tmp_path):
    done = _worker(tmp_path, "ValueError('a bug')")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "in fail" in done.stderr and done.stderr.strip().endswith("ValueError: a bug")


CLI = """
import sys, lora_rl.plotting
from lora_rl.data.jsonl import DataError
def fail(*args):
    raise {error}
lora_rl.plotting.plot_metrics = fail
sys.argv = ["lora-rl", "plot", "logs"]
from lora_rl.cli import main
main()
"""


@pytest.mark.parametrize(("error", "one_line"), [
    ("DataError('logs/metrics.jsonl:2: not JSON [fix it]')", True),
    ("ValueError('a bug')", False),
])
def test_the_cli_reports_an_expected_failure_no_command_catches(tmp_path, error, one_line):
    done = subprocess.run([sys.executable, "-c", CLI.format(error=error)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    if one_line:
        assert done.stderr.strip() == "error: logs/metrics.jsonl:2: not JSON [fix it]"
    else:
        assert "Traceback (most recent call last)" in done.stderr
