"""The recipe stops at the algorithm: backends get `BackendInputs` (the policy section and a few
run-level facts), data/ the data and policy sections, generation the policy section. A module
under these packages that imports `RecipeConfig`, names it, or takes an untyped `cfg`/`recipe`
(the way the whole recipe used to travel) fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lora_rl"
NARROW = ("backends", "data", "generation", "algorithms/evaluation.py")
"""Packages (and modules) that see only their sections, never the whole recipe."""


def recipe_leaks(source: str) -> list[str]:
    """Where `source` imports or names the recipe model, or takes an untyped `cfg`/`recipe`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {alias.name for alias in node.names}
            if module == "lora_rl.config.recipe" or (module == "lora_rl.config"
                                                     and "recipe" in names):
                found.append(f"line {node.lineno}: imports from lora_rl.config.recipe")
        elif isinstance(node, ast.Import):
            if any(alias.name == "lora_rl.config.recipe" for alias in node.names):
                found.append(f"line {node.lineno}: imports lora_rl.config.recipe")
        elif isinstance(node, ast.Name) and node.id == "RecipeConfig":
            found.append(f"line {node.lineno}: names RecipeConfig")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.strip() == "RecipeConfig":
            found.append(f"line {node.lineno}: names RecipeConfig (string annotation)")
        elif isinstance(node, ast.arg) and node.arg in ("cfg", "recipe") \
                and node.annotation is None:
            found.append(f"line {node.lineno}: takes an untyped `{node.arg}`")
    return found


def _modules() -> list[Path]:
    out: list[Path] = []
    for name in NARROW:
        path = PACKAGE / name
        out += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return out


def test_the_narrow_packages_exist_and_hold_modules():
    modules = _modules()
    assert len(modules) > 20
    assert {p.relative_to(PACKAGE).parts[0] for p in modules} == \
        {"backends", "data", "generation", "algorithms"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_never_sees_the_whole_recipe(path):
    assert recipe_leaks(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("source, expected", [
    ("from lora_rl.config.recipe import RecipeConfig\n",
     ["line 1: imports from lora_rl.config.recipe"]),
    ("from lora_rl.config.recipe import AlgorithmName\n",
     ["line 1: imports from lora_rl.config.recipe"]),
    ("from lora_rl.config import recipe\n", ["line 1: imports from lora_rl.config.recipe"]),
    ("import lora_rl.config.recipe\n", ["line 1: imports lora_rl.config.recipe"]),
    ("def f(x: RecipeConfig): pass\n", ["line 1: names RecipeConfig"]),
    ("def f(x: 'RecipeConfig'): pass\n", ["line 1: names RecipeConfig (string annotation)"]),
    ("def f(cfg, n): pass\n", ["line 1: takes an untyped `cfg`"]),
    ("def f(recipe): pass\n", ["line 1: takes an untyped `recipe`"]),
    ("def f(cfg: PolicyConfig, data: DataConfig): pass\n", []),
    ('"""Built from the recipe (RecipeConfig is never seen here)."""\n', []),
])
def test_the_check_flags_each_way_the_recipe_can_leak_in(source, expected):
    assert recipe_leaks(source) == expected
