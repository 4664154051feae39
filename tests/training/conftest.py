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

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        done = subprocess.run(self.command(*args), cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
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
