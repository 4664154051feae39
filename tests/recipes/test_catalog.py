"""`lora-rl recipes ls | cp` and the catalogue behind them: every shipped recipe validates,
opens with its header, and a copy validates wherever it lands."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lora_rl.cli_recipes import app as recipes_app
from lora_rl.config.validate import validate_recipe
from lora_rl.recipes_catalog import (
    CatalogError,
    copy_recipe,
    find_recipe,
    list_recipes,
    recipes_dir,
    summarize,
)

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = list_recipes(include_bases=True)
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def cli() -> typer.Typer:
    # The lead registers the sub-app in lora_rl.cli; this stand-in keeps the test independent.
    app = typer.Typer()
    app.add_typer(recipes_app, name="recipes")
    app.callback()(lambda: None)
    return app


def invoke(*args: str):
    return CliRunner().invoke(cli(), list(args), catch_exceptions=False)


def test_catalogue_is_the_checkout() -> None:
    assert recipes_dir() == ROOT / "recipes"
    assert {e.name for e in ENTRIES} >= {"sft-tiny-dtensor-lora", "base/sft", "base/grpo"}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_recipe_validates(entry) -> None:
    assert validate_recipe(entry.path).errors == []
    assert summarize(entry).problems == 0


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_recipe_opens_with_modeline_and_header(entry) -> None:
    lines = entry.path.read_text(encoding="utf-8").splitlines()
    schema = MODELINE.match(lines[0])
    assert schema, f"{entry.name}: first line must be the yaml-language-server modeline"
    assert (entry.path.parent / schema.group(1)).resolve() == ROOT / "schema" / \
        "lora-rl.schema.json"
    header = [line for line in lines[1:] if line.startswith("#")]
    assert len(header) >= 2 and lines[1].startswith("#"), f"{entry.name}: no comment header"
    if not entry.is_base:
        assert any(f"lora-rl run recipes/{entry.name}.yaml" in line for line in header)
        assert any(re.search(r"\.yaml \S+=\S+", line) for line in header), \
            f"{entry.name}: header has no override example"


def test_ls_lists_recipes_not_parents() -> None:
    result = invoke("recipes", "ls")
    assert result.exit_code == 0, result.output
    assert "sft-tiny-dtensor-lora" in result.output and "base/sft" not in result.output
    assert "base/sft" in invoke("recipes", "ls", "--all").output


def test_summary_reads_the_validated_recipe() -> None:
    s = summarize(find_recipe("grpo-llama3.1-8b-1n8g-megatron-tp2pp2-lora"))
    assert (s.algorithm, s.backend, s.devices) == ("grpo", "megatron tp2 pp2", "1x8")
    assert s.lora == "r=64 alpha=64"


def test_cp_outside_the_checkout_points_back_absolutely(tmp_path: Path) -> None:
    result = invoke("recipes", "cp", "grpo-qwen3-8b-base-1n8g-fsdp2tp2-lora.yaml",
                    str(tmp_path / "mine.yaml"))
    assert result.exit_code == 0, result.output
    copied = (tmp_path / "mine.yaml").read_text(encoding="utf-8")
    parent = recipes_dir() / "grpo-qwen3-8b-base-1n8g-fsdp2-lora.yaml"
    assert f"defaults: {parent.as_posix()}" in copied
    schema = (ROOT / "schema" / "lora-rl.schema.json").as_uri()
    assert copied.splitlines()[0] == f"# yaml-language-server: $schema={schema}"
    assert "# Triton LoRA kernels do not support TP > 1" in copied      # comments survive
    original = validate_recipe(recipes_dir() / "grpo-qwen3-8b-base-1n8g-fsdp2tp2-lora.yaml")
    mine = validate_recipe(tmp_path / "mine.yaml")
    assert mine.errors == [] and mine.config == original.config


def test_cp_inside_the_catalogue_tree_stays_relative(tmp_path: Path, monkeypatch) -> None:
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    shutil.copytree(ROOT / "schema", tmp_path / "schema")
    monkeypatch.setenv("LORA_RL_RECIPES", str(tmp_path / "recipes"))
    target = copy_recipe("sft-llama3.1-8b-1n8g-megatron-lora", tmp_path / "work" / "sft.yaml")
    text = target.read_text(encoding="utf-8")
    assert "defaults: ../recipes/base/sft.yaml" in text
    assert "$schema=../schema/lora-rl.schema.json" in text
    assert validate_recipe(target).errors == []


def test_cp_into_a_directory_keeps_the_name(tmp_path: Path) -> None:
    assert invoke("recipes", "cp", "sft-tiny-dtensor-lora", str(tmp_path)).exit_code == 0
    assert (tmp_path / "sft-tiny-dtensor-lora.yaml").is_file()


def test_cp_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    target = tmp_path / "mine.yaml"
    target.write_text("mine\n", encoding="utf-8")
    refused = invoke("recipes", "cp", "sft-tiny-dtensor-lora", str(target))
    assert refused.exit_code == 2 and "--force" in refused.output
    assert target.read_text(encoding="utf-8") == "mine\n"
    assert invoke("recipes", "cp", "sft-tiny-dtensor-lora", str(target), "--force").exit_code == 0
    assert target.read_text(encoding="utf-8").startswith("# yaml-language-server")


def test_cp_outside_the_working_directory_refuses_what_it_cannot_write(
        tmp_path: Path, monkeypatch) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    blocked = work / "d" / "sft-tiny-dtensor-lora.yaml"  # where `cp NAME d` would write
    blocked.mkdir(parents=True)
    (elsewhere / "mine.yaml").parent.mkdir()
    (elsewhere / "mine.yaml").write_text("mine\n", encoding="utf-8")
    monkeypatch.chdir(work)

    def refused(dest: Path | str, *force: str) -> str:
        result = invoke("recipes", "cp", "sft-tiny-dtensor-lora", str(dest), *force)
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        return lines[0]

    target = elsewhere / "mine.yaml"
    assert refused(target) == (f"error: {target} exists; pass --force to overwrite it, or "
                               "choose another DEST")
    assert refused(target / "sub.yaml") == (f"error: {target} is a file, so {target}/sub.yaml "
                                            "cannot be created under it; choose another DEST")
    for force in ((), ("--force",)):
        assert refused("d", *force) == ("error: d/sft-tiny-dtensor-lora.yaml is a directory; "
                                        "name a file in it, or choose another DEST")
    assert target.read_text(encoding="utf-8") == "mine\n"
    assert blocked.is_dir() and not any(blocked.iterdir())
    new = elsewhere / "deeper" / "new.yaml"
    assert invoke("recipes", "cp", "sft-tiny-dtensor-lora", str(new)).exit_code == 0
    assert validate_recipe(new).errors == []


def test_unknown_name_suggests(tmp_path: Path) -> None:
    result = invoke("recipes", "cp", "sft-tiny-dtensor", str(tmp_path / "x.yaml"))
    assert result.exit_code == 2 and "did you mean sft-tiny-dtensor-lora" in result.output
    with pytest.raises(CatalogError):
        find_recipe("nothing-like-it")


def test_env_var_names_another_catalogue(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "mine.yaml").write_text(
        (recipes_dir() / "sft-tiny-dtensor-lora.yaml").read_text(encoding="utf-8"),
        encoding="utf-8")
    monkeypatch.setenv("LORA_RL_RECIPES", str(tmp_path))
    assert [e.name for e in list_recipes()] == ["mine"]
