"""Every family, 5 SFT steps with LoRA: FSDP2 (dp=2) and tensor parallel (tp=2) reproduce the
single-process losses within 1e-4, in one two-rank process group for all families."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_rl.architecture import FAMILIES
from tests.families.conftest import run_two_ranks


def _losses(path: Path) -> list[float]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
def test_every_family_matches_single_process_on_fsdp2_and_tp2(family_models, tiny_cache,
                                                              tmp_path):
    run_two_ranks("tests.families._worker",
                  [str(tmp_path), *(f"{family}={path}" for family, path in family_models.items())],
                  {"LORA_RL_CACHE": str(tiny_cache), "LORA_RL_THREADS": "1"})
    for family in family_models:
        single = _losses(tmp_path / f"{family}-single")
        variants = ["fsdp2", "tp2"] if FAMILIES[family].tensor_parallel else ["fsdp2"]
        assert len(single) == 5
        for variant in variants:
            other = _losses(tmp_path / f"{family}-{variant}")
            gap = max(abs(a - b) for a, b in zip(single, other, strict=True))
            assert gap < 1e-4, (family, variant, single, other)
