"""Run real recipes in subprocesses, in a temporary working directory, against a tiny model
cache built once per session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("lora-rl-cache")
    from lora_rl.tiny import ensure_tiny_model

    ensure_tiny_model(cache)
    return cache


class Runner:
    def __init__(self, workdir: Path, cache: Path) -> None:
        self.workdir = workdir
        self.env = {**os.environ, "LORA_RL_CACHE": str(cache), "LORA_RL_THREADS": "1"}
        shutil.copytree(RECIPES, workdir / "recipes")

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "lora_rl", *args]

    def run(self, *args: str, check: bool = True, timeout: float = 600,
            input: str | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(self.command(*args), cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"lora-rl {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        return done

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.command(*args), cwd=self.workdir, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def metrics(self, log_dir: str) -> list[dict]:
        path = self.workdir / log_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture
def runner(tmp_path, model_cache) -> Runner:
    return Runner(tmp_path, model_cache)


QUIET = ["logger.progress_bar=false"]


# ---- learning checks shared by the DTensor and Megatron recipe tests ------------------------


def run_tiny_dpo(runner: Runner, backend: str) -> list[dict]:
    """60 steps of the tiny DPO recipe: loss starts at log 2 (policy = reference) on train and
    validation, preference accuracy ends > 0.9 on train and rises on validation. The per-step
    training rows, for backend-specific checks."""
    import math

    runner.run("run", f"recipes/dpo-tiny-{backend}-lora.yaml", "dpo.max_num_steps=60",
               "dpo.val_period=60", "checkpointing.enabled=false", *QUIET)
    rows = runner.metrics(f"logs/dpo-tiny-{backend}-lora")
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_accuracy" in r]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert val[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert sum(r["accuracy"] for r in train[-10:]) / 10 > 0.9
    assert val[-1]["val_accuracy"] > val[0]["val_accuracy"]
    return train


def run_grpo_seeds(runner: Runner, recipe: str, seeds=(1, 2, 3)) -> list[list[dict]]:
    """The GRPO recipe once per seed (logs/grpo-SEED); each run's per-step reward rows."""
    runs = []
    for seed in seeds:
        log_dir = f"logs/grpo-{seed}"
        runner.run("run", recipe, f"grpo.seed={seed}", f"logger.log_dir={log_dir}",
                   f"checkpointing.checkpoint_dir=results/g{seed}", "grpo.val_period=0",
                   "grpo.val_at_start=false", *QUIET)
        runs.append([r for r in runner.metrics(log_dir) if "reward" in r])
    return runs


def reward_gain(rows: list[dict]) -> float:
    """Mean reward of the last 10 steps minus that of the first 5."""
    return sum(r["reward"] for r in rows[-10:]) / 10 - sum(r["reward"] for r in rows[:5]) / 5
