"""`env.reward` names a function of the user's with the reward signature: checked statically by
`validate` (nothing imported), and again when a run starts, before the model loads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lora_rl.config.validate import validate_recipe
from lora_rl.rewards import RewardError, load_reward

MODULE = """\
import pathlib
pathlib.Path(__file__).with_name("IMPORTED").write_text("yes")
from os import system as imported
from os.path import *

def score(prompts, responses, answers, **kwargs):
    return [1.0 for _ in responses]

def two(prompts, responses):
    return []

def needs_scale(prompts, responses, answers, scale):
    return [scale for _ in responses]

def fixed(prompts, responses, answers):
    return [0.0 for _ in responses]

async def later(prompts, responses, answers):
    return []

made = lambda a, b: []
"""


@pytest.fixture
def reward_module(recipe_dir: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module `hostile_rewards_<n>` importable from the recipe folder (on sys.path)."""
    name = f"hostile_rewards_{abs(hash(str(recipe_dir.root))) % 10**8}"
    (recipe_dir.root / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(recipe_dir.root))
    return name


def grpo(recipe_dir: Any, reward: str, **kwargs: Any) -> list[tuple[str, str]]:
    path = recipe_dir.write({"env.reward": reward, "env.reward_kwargs": kwargs}, kind="grpo")
    result = validate_recipe(path)
    return [(d.rule, d.message) for d in result.diagnostics if d.rule in ("LR802", "LR803")]


@pytest.mark.parametrize("reward", ["os:system", "builtins:exec", "subprocess:call",
                                    "sys:exit", "shutil:rmtree", "importlib:import_module",
                                    "os.path:join"])
def test_standard_library_functions_are_refused(recipe_dir, reward):
    [(rule, message)] = grpo(recipe_dir, reward)
    assert rule == "LR802" and "standard-library" in message
    with pytest.raises(RewardError, match="standard-library"):
        load_reward(reward)


@pytest.mark.parametrize(("attr", "kwargs", "rule", "says"), [
    ("score", {}, None, None),
    ("score", {"scale": 2}, None, None),
    ("fixed", {}, None, None),
    ("needs_scale", {"scale": 2}, None, None),
    ("two", {}, "LR802", "takes 2 positional parameter(s)"),
    ("needs_scale", {}, "LR802", "requires scale"),
    ("fixed", {"scale": 2}, "LR802", "accepts no keyword argument scale"),
    ("later", {}, "LR802", "async def"),
    ("imported", {}, "LR802", "imports 'imported' from os"),
    ("nope", {}, None, None),  # `from os.path import *` may provide it: not decidable
    ("made", {}, "LR803", "cannot be checked without running"),
])
def test_static_check_of_the_users_module(recipe_dir, reward_module, attr, kwargs, rule, says):
    found = grpo(recipe_dir, f"{reward_module}:{attr}", **kwargs)
    if attr == "nope":
        assert [r for r, _ in found] == ["LR803"]
    elif rule is None:
        assert found == []
    else:
        assert [r for r, _ in found] == [rule] and says in found[0][1]
    assert not (recipe_dir.root / "IMPORTED").exists()  # validate imported nothing


def test_missing_function_without_star_import_is_an_error(recipe_dir, monkeypatch):
    (recipe_dir.root / "plain_rewards_mod.py").write_text("def score(p, r, a):\n    return []\n")
    monkeypatch.syspath_prepend(str(recipe_dir.root))
    [(rule, message)] = grpo(recipe_dir, "plain_rewards_mod:scroe")
    assert rule == "LR802" and "defines no function 'scroe'" in message


@pytest.mark.parametrize(("attr", "kwargs", "says"), [
    ("two", {}, "cannot be called as"),
    ("needs_scale", {}, "cannot be called as"),
    ("fixed", {"scale": 1}, "cannot be called as"),
    ("imported", {}, "has no function"),
    ("made", {}, "cannot be called as"),
])
def test_run_time_check(reward_module, attr, kwargs, says):
    with pytest.raises(RewardError, match=says):
        load_reward(f"{reward_module}:{attr}", kwargs)
    assert load_reward(f"{reward_module}:score", {"scale": 1})(["p"], ["r"], ["a"]) == [1.0]


def test_run_refuses_a_bad_reward_before_loading_the_model(tmp_path: Path):
    """validate can only warn (the function is bound by an assignment); `run` refuses it with
    one clean line, before the model loads (no start banner, which follows the load)."""
    (tmp_path / "late_rewards.py").write_text("score = lambda prompts, responses: []\n")
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "grpo-tiny-dtensor-lora.yaml"
    (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
        defaults: {recipe}
        policy:
          init_adapter_path: null
        env:
          reward: late_rewards:score
        """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), str(tmp_path)])}
    done = subprocess.run([sys.executable, "-P", "-m", "lora_rl", "run", "r.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "LR803" in done.stdout + done.stderr
    assert "error: env.reward: late_rewards:score cannot be called as" in done.stderr
    assert "lora-rl grpo | model" not in done.stdout
    assert "Traceback" not in done.stderr
