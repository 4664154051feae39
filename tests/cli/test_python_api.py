"""The documented Python API: `lora_rl.validate` and `lora_rl.run`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lora_rl

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "recipes" / "sft-tiny-dtensor-lora.yaml"


def test_import_loads_nothing_heavy() -> None:
    code = "import sys, lora_rl; print(sorted(m for m in ('torch', 'pydantic', 'transformers') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_validate_returns_the_report(tmp_path: Path) -> None:
    report = lora_rl.validate(MAIN, ["policy.dtensor_cfg.lora_cfg.dim=16"])
    assert report.ok and report.config.policy.dtensor_cfg.lora_cfg.dim == 16
    bad = tmp_path / "bad.yaml"
    bad.write_text(MAIN.read_text().replace("_v2: true", "_v2: false"))
    report = lora_rl.validate(bad)
    assert not report.ok
    (error,) = report.errors
    assert error.rule == "LR102" and Path(error.location.file).name == "bad.yaml"


def test_run_refuses_an_invalid_recipe_before_anything_runs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MAIN.read_text().replace("_v2: true", "_v2: false"))
    with pytest.raises(lora_rl.RecipeInvalidError, match=r"bad.yaml:\d+:\d+: LR102") as info:
        lora_rl.run(bad)
    assert info.value.report.errors[0].rule == "LR102"
