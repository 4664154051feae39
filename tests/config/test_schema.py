"""The committed JSON Schema: up to date, valid, editor-friendly, and in agreement with
validation on what is structurally valid.

The file schema lists no `required` keys (a recipe may inherit them through `defaults:`, see
lora_rl/config/schema_export.py), so missing-key cases (LR003) are left out of the agreement.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lora_rl.config.schema_export import recipe_json_schema
from lora_rl.config.validate import validate_recipe
from lora_rl.config.yaml_source import parse_yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = {
    "07": ROOT / "schema" / "lora-rl.schema.json",
    "2020-12": ROOT / "schema" / "lora-rl.2020-12.schema.json",
}
REGENERATE = ("lora-rl schema --out schema/lora-rl.schema.json && "
              "lora-rl schema --draft 2020-12 --out schema/lora-rl.2020-12.schema.json")
RECIPES = sorted(ROOT.glob("recipes/**/*.yaml"))
LORA = "policy.dtensor_cfg.lora_cfg"
SCHED = "torch.optim.lr_scheduler.LinearLR"


@pytest.fixture(scope="module")
def validators() -> dict[str, Any]:
    out = {}
    for draft in SCHEMAS:
        schema = recipe_json_schema(draft)
        out[draft] = jsonschema.validators.validator_for(schema)(schema)
    return out


@pytest.mark.parametrize("draft", list(SCHEMAS))
def test_committed_schema_is_up_to_date(draft: str) -> None:
    path = SCHEMAS[draft]
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing; run: {REGENERATE}"
    committed = json.loads(path.read_text(encoding="utf-8"))
    assert committed == recipe_json_schema(draft), \
        f"{path.relative_to(ROOT)} is out of date with the config models; run: {REGENERATE}"


def test_cli_writes_what_the_library_makes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lora_rl.cli import app

    out = tmp_path / "nested" / "s.json"
    result = CliRunner().invoke(app, ["schema", "--draft", "2020-12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == \
        json.dumps(recipe_json_schema("2020-12"), indent=2) + "\n"


@pytest.mark.parametrize("draft,meta", [("07", jsonschema.Draft7Validator),
                                        ("2020-12", jsonschema.Draft202012Validator)])
def test_schema_is_valid_under_its_meta_schema(draft: str, meta: Any) -> None:
    schema = recipe_json_schema(draft)
    assert jsonschema.validators.validator_for(schema) is meta
    meta.check_schema(schema)
    assert schema["title"] == "lora-rl recipe"


def test_draft07_uses_only_definitions_refs() -> None:
    schema = recipe_json_schema("07")
    text = json.dumps(schema)
    refs = set(re.findall(r'"\$ref": "([^"]*)"', text))
    assert refs and all(r.startswith("#/definitions/") for r in refs), refs
    assert "$defs" not in schema and "prefixItems" not in text
    for ref in refs:  # every reference resolves
        assert ref.split("/")[-1] in schema["definitions"], ref


def test_2020_12_uses_defs_refs() -> None:
    schema = recipe_json_schema("2020-12")
    refs = set(re.findall(r'"\$ref": "([^"]*)"', json.dumps(schema)))
    assert refs and all(r.startswith("#/$defs/") for r in refs), refs
    assert "definitions" not in schema


def test_file_schema_has_no_required_keys() -> None:
    assert '"required"' not in json.dumps(recipe_json_schema("07"))


def _structural(result: Any) -> bool:
    return any(d.rule in ("LR001", "LR002") for d in result.diagnostics)


def _schema_errors(validators: dict[str, Any], tree: Any) -> dict[str, list[str]]:
    return {draft: [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:120]}"
                    for e in v.iter_errors(tree)] for draft, v in validators.items()}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipes_agree_with_the_schema(recipe: Path, validators: dict[str, Any]) -> None:
    result = validate_recipe(recipe)
    assert result.resolved is not None, result.diagnostics
    errors = _schema_errors(validators, result.resolved)
    for draft in validators:
        assert bool(errors[draft]) == _structural(result), (draft, errors[draft],
                                                            result.diagnostics)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_files_as_written_satisfy_the_schema(recipe: Path,
                                                    validators: dict[str, Any]) -> None:
    """What an editor sees: the file itself, with `defaults:` and `${...}` unresolved."""
    if not validate_recipe(recipe).ok:
        pytest.skip("an invalid recipe (another test reports it)")
    raw, _ = parse_yaml(recipe.read_text(encoding="utf-8"), recipe.name)
    errors = _schema_errors(validators, raw)
    assert errors == {draft: [] for draft in validators}


# Hand-made trees: changes to the valid SFT base. Each must be judged alike by jsonschema and
# pydantic (valid ones included, so the schema is not simply stricter).
TREES: dict[str, dict[str, Any]] = {
    "valid": {},
    "unknown-key": {"policy.precison": "float32"},
    "unknown-section": {"polciy": {}},
    "unknown-nested": {f"{LORA}.rank": 8},
    "int-as-text": {"policy.train_micro_batch_size": "abc"},
    "int-quoted": {"policy.train_micro_batch_size": "4"},
    "int-bool": {"policy.train_micro_batch_size": True},
    "int-fraction": {"policy.train_micro_batch_size": 1.5},
    "int-whole-float": {"policy.train_micro_batch_size": 2.0},
    "int-zero": {"policy.train_micro_batch_size": 0},
    "int-huge": {"policy.train_global_batch_size": 10**30},
    "bool-int": {"policy.dtensor_cfg.enabled": 1},
    "bool-text": {"policy.dtensor_cfg.enabled": "yes"},
    "float-int": {"policy.optimizer.kwargs.lr": 1},
    "float-text": {"policy.optimizer.kwargs.lr": "1e-5"},
    "float-bool": {"policy.optimizer.kwargs.lr": True},
    "float-negative": {"policy.max_grad_norm": -1.0},
    "dropout-one": {f"{LORA}.dropout": 1.0},
    "enum-bad": {"policy.precision": "bf16"},
    "enum-torch-prefix": {"policy.precision": "torch.bfloat16"},
    "null-ok": {"policy.max_grad_norm": None},
    "null-spelled": {"policy.max_grad_norm": "None"},
    "null-tilde": {"policy.max_grad_norm": "~"},
    "null-for-required": {f"{LORA}.dim": None},
    "lora-dtype-None": {"policy.megatron_cfg.peft.lora_dtype": "None"},
    "lora-dtype-bad": {"policy.megatron_cfg.peft.lora_dtype": "int8"},
    "tuple-short": {"policy.optimizer.kwargs.betas": [0.9]},
    "tuple-long": {"policy.optimizer.kwargs.betas": [0.9, 0.99, 0.1]},
    "tuple-ok": {"policy.optimizer.kwargs.betas": [0.9, 0.99]},
    "tuple-item-text": {"policy.optimizer.kwargs.betas": [0.9, "x"]},
    "list-as-text": {f"{LORA}.target_modules": "q_proj"},
    "list-item-int": {f"{LORA}.target_modules": [1]},
    "int-list-text": {"policy.generation": {"stop_token_ids": ["1"]}},
    "int-list-bool": {"policy.generation": {"stop_token_ids": [True]}},
    "dict-of-str-int": {"policy.dtensor_cfg.env_vars": {"A": 1}},
    "dict-of-str-ok": {"policy.dtensor_cfg.env_vars": {"A": "1"}},
    "section-as-int": {"sft": 5},
    "section-as-list": {"policy.dtensor_cfg": [1]},
    "section-null": {"policy.tokenizer": None},
    "str-as-int": {"policy.model_name": 5},
    "scheduler-ok": {"policy.scheduler": [{"name": SCHED, "kwargs": {"start_factor": 0.1}},
                                          {"milestones": [5]}]},
    "scheduler-bad-name": {"policy.scheduler": [{"name": "nope"}]},
    "scheduler-typo": {"policy.scheduler": [{"nmae": SCHED}]},
    "scheduler-kwarg-text": {"policy.scheduler": [{"name": SCHED, "kwargs": {"x": "1"}}]},
    "scheduler-kwarg-bool": {"policy.scheduler": [{"name": SCHED, "kwargs": {"x": True}}]},
    "scheduler-milestone-zero": {"policy.scheduler": [{"milestones": [0]}]},
    "reward-bad": {"env.reward": "???"},
    "reward-import-path": {"env.reward": "my_pkg.rewards:score"},
    "top-p-zero": {"policy.generation": {"top_p": 0}},
    "compat-dict": {"logger.wandb": {"project": "x"}},
    "megatron-enum": {"policy.megatron_cfg.bridge_type": "bridge"},
}


@pytest.mark.parametrize("name", list(TREES))
def test_hand_made_trees_agree_with_the_schema(name: str, recipe_dir: Any, recipe_kit: Any,
                                               validators: dict[str, Any]) -> None:
    tree = recipe_kit.changed(recipe_kit.base(), TREES[name])
    result = validate_recipe(recipe_dir.write(tree=tree))
    assert result.resolved is not None
    structural = _structural(result)
    if not structural and any(d.rule == "LR003" for d in result.diagnostics):
        pytest.skip("missing keys only: out of scope (the file schema has no `required`)")
    errors = _schema_errors(validators, result.resolved)
    for draft in validators:
        assert bool(errors[draft]) == structural, (
            draft, errors[draft], [(d.rule, d.message) for d in result.diagnostics])
    if name == "valid":
        assert not structural
