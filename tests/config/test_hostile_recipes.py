"""Recipes written to leak: `defaults:` naming files that are not recipes, or outside the
allowed folders, and `${oc.env:...}` secrets. No output format may show their content."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lora_rl.cli import app
from lora_rl.config.validate import validate_recipe

SECRET = "s3cr3t-Hunter2-token"
FORMATS = ("text", "json", "sarif", "github")


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def outputs(path: Path, *extra: str) -> dict[str, Any]:
    """`validate` in every output format, plus `explain`."""
    runs = {fmt: invoke("validate", str(path), "--format", fmt, *extra) for fmt in FORMATS}
    runs["explain"] = invoke("explain", str(path), *extra)
    return runs


def assert_no_leak(runs: dict[str, Any], *secrets: str) -> None:
    for name, done in runs.items():
        text = done.output
        assert "Traceback" not in text, name
        for secret in secrets:
            assert secret not in text, (name, text)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder that is neither the recipe's, the working directory nor the catalogue."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "shadow").write_text(f"root:{SECRET}:19000:0:99999:7:::\n"
                                   f"{SECRET}: 1\n")
    (folder / "creds.yaml").write_text(f"api_token: {SECRET}\n{SECRET}_key: 1\n")
    (folder / "parent.yaml").write_text("policy:\n  train_micro_batch_size: 2\n")
    return folder


def with_parent(recipe_dir: Any, parent: str) -> Path:
    return recipe_dir.write(text=f"defaults: {parent}\n" +
                            recipe_dir.kit.dump(recipe_dir.kit.base()))


@pytest.mark.parametrize("parent", ["/etc/passwd", "{outside}/shadow", "../outside/shadow",
                                    "{outside}/creds.yaml", "../outside/creds.yaml"])
def test_parent_outside_the_allowed_folders_is_refused_unread(recipe_dir, outside, parent):
    path = with_parent(recipe_dir, parent.format(outside=outside))
    result = validate_recipe(path)
    assert [d.rule for d in result.diagnostics] == ["LR800"]
    assert result.diagnostics[0].path == ("defaults",)
    runs = outputs(path)
    assert all(done.exit_code == 1 for done in runs.values())
    assert_no_leak(runs, SECRET, "root:")


def test_symlink_to_a_foreign_file_is_refused(recipe_dir, outside):
    (recipe_dir.root / "base.yaml").symlink_to(outside / "creds.yaml")
    path = with_parent(recipe_dir, "base.yaml")
    assert [d.rule for d in validate_recipe(path).diagnostics] == ["LR800"]


def test_yaml_in_the_recipe_folder_that_is_not_a_recipe_is_not_quoted(recipe_dir, outside):
    (recipe_dir.root / "creds.yaml").write_text((outside / "creds.yaml").read_text())
    path = with_parent(recipe_dir, "creds.yaml")
    result = validate_recipe(path)
    assert [d.rule for d in result.diagnostics] == ["LR801"]
    runs = outputs(path)
    assert all(done.exit_code == 1 for done in runs.values())
    assert_no_leak(runs, SECRET, "api_token")


def test_allowed_folder_from_the_environment(recipe_dir, outside, monkeypatch):
    path = with_parent(recipe_dir, str(outside / "parent.yaml"))
    assert [d.rule for d in validate_recipe(path).diagnostics] == ["LR800"]
    monkeypatch.setenv("LORA_RL_DEFAULTS_PATH", os.pathsep.join(["/nonexistent", str(outside)]))
    result = validate_recipe(path)
    assert result.diagnostics == []
    assert result.config is not None
    assert result.config.policy.train_micro_batch_size == 1  # the recipe's own value wins


def test_catalogue_parents_still_load(recipe_dir):
    from lora_rl.recipes_catalog import _candidates

    catalogue = next(c for c in _candidates() if (c / "base" / "sft.yaml").is_file())
    path = recipe_dir.write(text=f"defaults: {catalogue / 'base' / 'sft.yaml'}\n")
    assert not [d for d in validate_recipe(path).diagnostics if d.rule.startswith("LR80")]


# ---- ${oc.env:...} -----------------------------------------------------------------------


def env_recipe(recipe_dir: Any) -> Path:
    return recipe_dir.write({
        "policy.train_micro_batch_size": "${oc.env:LORA_RL_TEST_SECRET}",  # a type error
        "data.dataset_name": "x-${oc.env:LORA_RL_TEST_SECRET}",  # a warning quoting it
    })


def test_env_values_are_masked_in_every_output(recipe_dir, monkeypatch):
    monkeypatch.setenv("LORA_RL_TEST_SECRET", SECRET)
    path = env_recipe(recipe_dir)
    result = validate_recipe(path)
    assert {d.rule for d in result.diagnostics} == {"LR002", "LR501"}
    assert all("${oc.env:LORA_RL_TEST_SECRET}" in d.message for d in result.diagnostics)
    runs = outputs(path)
    assert all(done.exit_code == 1 for done in runs.values())
    assert_no_leak(runs, SECRET)


def test_env_values_are_masked_in_explain_of_a_valid_recipe(recipe_dir, monkeypatch):
    monkeypatch.setenv("LORA_RL_TEST_SECRET", SECRET)
    path = recipe_dir.write({"logger.log_dir": "logs/${oc.env:LORA_RL_TEST_SECRET}"})
    done = invoke("explain", str(path))
    assert done.exit_code == 0, done.output
    assert "logs/${oc.env:LORA_RL_TEST_SECRET}" in done.output
    assert SECRET not in done.output
    assert validate_recipe(path).config.logger.log_dir == f"logs/{SECRET}"  # run gets the value


def test_env_value_inside_a_failing_resolver_is_masked(recipe_dir, monkeypatch):
    monkeypatch.setenv("LORA_RL_TEST_SECRET", SECRET)
    path = recipe_dir.write({"policy.train_micro_batch_size":
                             "${mul:${oc.env:LORA_RL_TEST_SECRET},2}"})
    [diag] = validate_recipe(path).diagnostics
    assert diag.rule == "LR008"
    assert SECRET not in diag.message and "${oc.env:LORA_RL_TEST_SECRET}" in diag.message


def test_oc_env_can_be_turned_off(recipe_dir, monkeypatch):
    monkeypatch.setenv("LORA_RL_TEST_SECRET", SECRET)
    monkeypatch.setenv("LORA_RL_OC_ENV", "off")
    path = recipe_dir.write({"logger.log_dir": "${oc.env:LORA_RL_TEST_SECRET}"})
    [diag] = validate_recipe(path).diagnostics
    assert diag.rule == "LR008" and "turned off" in diag.message
    assert_no_leak(outputs(path), SECRET)


# ---- bounded numbers ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [10**30, 2**32, -1])
def test_huge_seed_is_a_located_schema_error(recipe_dir, seed):
    path = recipe_dir.write({"sft.seed": seed})
    [diag] = validate_recipe(path).diagnostics
    assert diag.rule == "LR002" and diag.path == ("sft", "seed")
    pos = recipe_dir.position("sft.seed")
    assert (diag.location.line, diag.location.column) == (pos.line, pos.value_column)
    done = invoke("validate", str(path))
    assert done.exit_code == 1 and "Traceback" not in done.output and "Overflow" not in done.output


def test_largest_seed_is_accepted(recipe_dir):
    assert validate_recipe(recipe_dir.write({"sft.seed": 2**32 - 1})).diagnostics == []
