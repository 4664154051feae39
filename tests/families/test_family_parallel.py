"""Every family, 5 SFT steps with LoRA: FSDP2 (dp=2) and tensor parallel (tp=2) reproduce the
single-process losses within 1e-4, in one two-rank process group for all families."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lora_rl.architecture import FAMILIES

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _losses(path: Path) -> list[float]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
def test_every_family_matches_single_process_on_fsdp2_and_tp2(family_models, tiny_cache,
                                                              tmp_path):
    env = {**os.environ, "LORA_RL_CACHE": str(tiny_cache), "LORA_RL_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, "-m", "tests.families._worker", str(tmp_path),
            *(f"{family}={path}" for family, path in family_models.items())]
    ranks = [subprocess.Popen(args, cwd=REPO, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    outputs = [p.communicate(timeout=900)[0] for p in ranks]
    for proc, output in zip(ranks, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]
        assert "Traceback" not in output
    for family in family_models:
        single = _losses(tmp_path / f"{family}-single")
        variants = ["fsdp2", "tp2"] if FAMILIES[family].tensor_parallel else ["fsdp2"]
        assert len(single) == 5
        for variant in variants:
            other = _losses(tmp_path / f"{family}-{variant}")
            gap = max(abs(a - b) for a, b in zip(single, other, strict=True))
            assert gap < 1e-4, (family, variant, single, other)
