"""Property: one mistake, one error, at the key that was changed.

Valid recipes (the three test bases, and every shipped recipe resolved to one file) are changed in
exactly one place: a value replaced by one of the wrong type, or a key misspelt. Whatever the
place, `validate` must report exactly one error, located at the changed key: no rule may follow
up on the rejected value (a default standing in for it), and no second message may describe the
same mistake. The bases are swept exhaustively; the shipped recipes, which have hundreds of keys,
are sampled by hypothesis.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_rl.config.catalogue import all_rules
from lora_rl.config.diagnostics import KeyPath, dotted
from lora_rl.config.validate import validate_recipe

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (ROOT / "recipes").glob("*.yaml"))
KINDS = ("sft", "grpo", "megatron")


def _places(tree: Any, prefix: KeyPath = ()) -> Iterator[KeyPath]:
    """Every mapping key (sections too) and list item of a recipe tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield prefix + (key,)
            yield from _places(value, prefix + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield prefix + (index,)
            yield from _places(value, prefix + (index,))


def _get(tree: Any, path: KeyPath) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _wrong(value: Any) -> Any | None:
    """A value of another type than `value` that no field of `value`'s type accepts."""
    if isinstance(value, bool):
        return "maybe"
    if isinstance(value, (int, float)):
        return "many"
    if isinstance(value, str):
        return {"oops": [1]}
    if isinstance(value, (list, dict)):
        return "oops"
    return None  # null: the field admits null, and may admit anything else too


def _mutations(tree: dict) -> list[tuple[str, KeyPath]]:
    out: list[tuple[str, KeyPath]] = []
    for path in _places(tree):
        if path[0] == "defaults":
            continue
        if _wrong(_get(tree, path)) is not None:
            out.append(("type", path))
        if isinstance(path[-1], str):
            out.append(("typo", path))
    return out


def _apply(tree: dict, kind: str, path: KeyPath) -> tuple[dict, KeyPath]:
    """The changed tree and the path of the key the error must point at."""
    changed = copy.deepcopy(tree)
    parent = _get(changed, path[:-1])
    if kind == "type":
        parent[path[-1]] = _wrong(parent[path[-1]])
        return changed, path
    # a typo keeps the key's place in its mapping
    renamed = f"{path[-1]}x"
    items = [(renamed if k == path[-1] else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)
    return changed, path[:-1] + (renamed,)


def _check(tree: dict, kind: str, path: KeyPath, directory: Path) -> None:
    changed, where = _apply(tree, kind, path)
    file = directory / "mutated.yaml"
    file.write_text(yaml.safe_dump(changed, sort_keys=False, width=1000), encoding="utf-8")
    result = validate_recipe(file)
    errors = [(d.rule, d.dotted_path, d.message) for d in result.errors]
    label = f"{kind} at {dotted(path)}"
    assert len(errors) == 1, f"{label}: {errors}"
    error = result.errors[0]
    assert error.path == where, f"{label}: {errors}"
    assert error.rule == ("LR002" if kind == "type" else "LR001"), f"{label}: {errors}"
    assert error.location is not None and Path(error.location.file).name == "mutated.yaml"
    assert error.location.line in _lines(file.read_text(encoding="utf-8"), where), \
        f"{label}: {error.location}"
    assert error.fix, f"{label}: no fix"


def _lines(text: str, path: KeyPath) -> set[int]:
    """The lines of `path`'s key and value, read by PyYAML itself (not lora-rl's source map)."""
    node, key = yaml.compose(text), None
    for part in path:
        if isinstance(part, int):
            key, node = None, node.value[part]
        else:
            key, node = next((k, v) for k, v in node.value if k.value == part)
    return {node.start_mark.line + 1} | ({key.start_mark.line + 1} if key else set())


def _base(recipe_kit: Any, kind: str) -> dict:
    return recipe_kit.base(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_every_single_mutation_of_a_base_recipe_is_one_error(
        kind: str, recipe_kit: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tree = _base(recipe_kit, kind)
    assert validate_recipe(_write(tree, tmp_path / "base.yaml")).ok
    mutations = _mutations(tree)
    assert len(mutations) > 40
    for how, path in mutations:
        _check(tree, how, path, tmp_path)


def _write(tree: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False, width=1000), encoding="utf-8")
    return path


def _resolved(recipe: Path) -> dict:
    result = validate_recipe(recipe)
    assert result.ok and result.resolved is not None, result.errors
    return result.resolved


SHIPPED_TREES = {p.name: _resolved(p) for p in SHIPPED}


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_single_mutations_of_shipped_recipes_are_one_error(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(SHIPPED_TREES)), label="recipe")
    tree = SHIPPED_TREES[name]
    how, path = data.draw(st.sampled_from(_mutations(tree)), label="mutation")
    with tempfile.TemporaryDirectory() as directory:
        _check(tree, how, path, Path(directory))


# ---- the rule catalogue ----------------------------------------------------------------------

TWO_CONSTRAINTS = {
    # case id -> why its one change breaks two independent constraints (both are reported)
    "LR202-dp-counts": "gpus_per_node: 3 leaves neither the training nor the validation batch "
                       "(4 each) a multiple of the data-parallel size",
}


def _rule_cases() -> list[Any]:
    from tests.config.test_rules import RULE_CASES

    return RULE_CASES


@pytest.mark.parametrize("case", _rule_cases(), ids=lambda c: c.id)
def test_each_rule_violation_is_reported_once_by_its_rule(
        case: Any, recipe_dir: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalogue's failing cases (one concern each): exactly one error, from the rule the
    case is about, at the case's key; no other rule follows up on the value it rejected."""
    from tests.config.test_rules import run_failing

    _, result = run_failing(case, recipe_dir, monkeypatch)
    errors = [(d.rule, d.dotted_path) for d in result.errors]
    if case.id in TWO_CONSTRAINTS:  # errors are listed in file order
        assert len(errors) == 2 and (case.rule, case.path) in errors, errors
    elif all_rules()[case.rule][1] == "error":
        assert errors == [(case.rule, case.path)], errors
    else:  # a warning rule: no error at all
        assert errors == [], errors
