"""RecipeConfig's compiled validator, cached on disk: the cached one gives the same verdicts as
a freshly built one, a stale, foreign or broken file is ignored, and the cache can be off."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from lora_rl.config import validator_cache
from lora_rl.config.recipe import RecipeConfig

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*.yaml"))
BROKEN = "sft:\n  max_num_steps: -1\n  bogus: 1\npolicy:\n  model_name: x\n  precision: fp7\n" \
         "  dtensor_cfg:\n    lora_cfg:\n      dim: true\n"
PROBE = ("import json, sys\nfrom pathlib import Path\n"
         "from lora_rl.config import validator_cache\nfrom lora_rl.config.recipe import "
         "RecipeConfig\nfrom lora_rl.config.validate import validate_recipe\n"
         "results = [validate_recipe(Path(p)) for p in sys.argv[1:]]\n"
         "print(json.dumps({'how': validator_cache.install(RecipeConfig), 'results': "
         "[[r.ok, [(d.rule, d.severity, d.message, str(d.location)) for d in r.diagnostics]] "
         "for r in results]}))\n")


def _probe(cache: Path, *paths: str, on: bool = True) -> dict:
    env = {**os.environ, "LORA_RL_CACHE": str(cache),
           validator_cache.ENV_SWITCH: "1" if on else "0"}
    proc = subprocess.run([sys.executable, "-c", PROBE, *paths], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT, check=True)
    return json.loads(proc.stdout)


@pytest.fixture
def broken(tmp_path: Path) -> str:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    return str(path)


def test_cached_validator_gives_the_same_verdicts(tmp_path: Path, broken: str) -> None:
    paths = [*RECIPES, broken]
    built = _probe(tmp_path, *paths)
    cached = _probe(tmp_path, *paths)
    fresh = _probe(tmp_path / "unused", *paths, on=False)
    assert (built["how"], cached["how"], fresh["how"]) == ("built", "cached", "off")
    assert cached["results"] == built["results"] == fresh["results"]
    assert not fresh["results"][-1][0] and len(fresh["results"][-1][1]) >= 3
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize("spoil", ["garbage", "world-writable", "not-a-validator"])
def test_a_spoilt_cache_file_is_ignored_and_replaced(tmp_path: Path, spoil: str) -> None:
    assert _probe(tmp_path, RECIPES[0])["how"] == "built"
    (path,) = (tmp_path / "validators").iterdir()
    if spoil == "garbage":
        path.write_bytes(b"not a pickle")
    elif spoil == "world-writable":
        path.chmod(0o666)
    else:
        path.write_bytes(pickle.dumps({"a": 1}))
    assert _probe(tmp_path, RECIPES[0])["how"] == "built"
    assert _probe(tmp_path, RECIPES[0])["how"] == "cached"
    assert path.stat().st_mode & 0o077 == 0
    assert oct((tmp_path / "validators").stat().st_mode & 0o777) == "0o700"


def test_the_compiled_validator_pickles() -> None:
    """A lambda or closure in the schema (a validator, a default factory) would silently turn
    the cache off: pydantic-core pickles functions by name."""
    RecipeConfig.model_rebuild()
    validator = pickle.loads(pickle.dumps(RecipeConfig.__pydantic_validator__))
    config = validator.validate_python({"sft": {}, "policy": {"model_name": "x"}})
    assert isinstance(config, RecipeConfig)
    assert config == RecipeConfig.model_validate({"sft": {}, "policy": {"model_name": "x"}})
