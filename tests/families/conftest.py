"""Tiny random models of every family, built once per session with transformers' own classes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lora_rl.tiny.families import FAMILY_CONFIGS

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_ranks(module: str, args: list[str], env: dict[str, str] | None = None,
                  timeout: float = 900) -> str:
    """`python -m module *args` as ranks 0 and 1 of a gloo world of two; asserts both exit 0
    without a traceback and returns rank 0's output."""
    env = {**os.environ, **(env or {}), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    ranks = [subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    outputs = [p.communicate(timeout=timeout)[0] for p in ranks]
    for proc, output in zip(ranks, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]
        assert "Traceback" not in output
    return outputs[0]


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, Path]:
    from lora_rl.tiny.families import build_family_model

    root = tmp_path_factory.mktemp("families")
    return {family: build_family_model(family, root / family) for family in FAMILY_CONFIGS}


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """The embedded tiny model (its task data feeds every family's SFT run)."""
    from lora_rl.tiny import ensure_tiny_model

    cache = tmp_path_factory.mktemp("lora-rl-cache")
    ensure_tiny_model(cache)
    return cache
