"""Loading a recipe: `defaults:` inheritance, overrides, interpolation, YAML edge cases, I/O.

Positions are checked against the YAML text each test writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lora_rl.config.diagnostics import Diagnostic
from lora_rl.config.validate import ValidationResult, validate_recipe

LORA = "policy.dtensor_cfg.lora_cfg"


def rules(result: ValidationResult) -> list[str]:
    return [d.rule for d in result.diagnostics]


def only(result: ValidationResult, rule: str) -> Diagnostic:
    found = [d for d in result.diagnostics if d.rule == rule]
    assert len(found) == 1, [(d.rule, d.message, str(d.location)) for d in result.diagnostics]
    return found[0]


def lora(result: ValidationResult) -> Any:
    assert result.config is not None, [(d.rule, d.message) for d in result.diagnostics]
    return result.config.policy.dtensor_cfg.lora_cfg


# ---- defaults: inheritance -----------------------------------------------------------------


def test_defaults_string_inherits_and_child_wins(recipe_dir: Any) -> None:
    recipe_dir.write({f"{LORA}.dim": 4, f"{LORA}.alpha": 8}, name="base.yaml")
    child = recipe_dir.write(text="defaults: base.yaml\npolicy:\n  dtensor_cfg:\n"
                                  "    lora_cfg:\n      dim: 16\n")
    result = validate_recipe(child)
    assert result.diagnostics == []
    assert (lora(result).dim, lora(result).alpha) == (16, 8)


def test_defaults_list_last_parent_wins_then_the_file(recipe_dir: Any) -> None:
    recipe_dir.write({f"{LORA}.dim": 4, f"{LORA}.alpha": 8, f"{LORA}.dropout": 0.1},
                     name="a.yaml")
    recipe_dir.write(text="policy:\n  dtensor_cfg:\n    lora_cfg:\n      dim: 32\n      "
                          "alpha: 64\n", name="b.yaml")
    child = recipe_dir.write(text="defaults: [a.yaml, b.yaml]\npolicy:\n  dtensor_cfg:\n"
                                  "    lora_cfg:\n      alpha: 1\n")
    got = lora(validate_recipe(child))
    assert (got.dim, got.alpha, got.dropout) == (32, 1, 0.1)


def test_defaults_are_relative_to_the_file_and_nest(recipe_dir: Any) -> None:
    recipe_dir.write({f"{LORA}.dim": 4}, name="base/root.yaml")
    recipe_dir.write(text="defaults: root.yaml\npolicy:\n  dtensor_cfg:\n    lora_cfg:\n"
                          "      alpha: 2\n", name="base/mid.yaml")
    leaf = recipe_dir.write(text="defaults: ../base/mid.yaml\n"
                                 "policy:\n  train_micro_batch_size: 2\n", name="recipes/leaf.yaml")
    result = validate_recipe(leaf)
    assert result.diagnostics == []
    assert (lora(result).dim, lora(result).alpha) == (4, 2)
    assert result.config.policy.train_micro_batch_size == 2


def test_defaults_cycle_names_the_chain(recipe_dir: Any) -> None:
    recipe_dir.write(text="defaults: b.yaml\n", name="a.yaml")
    recipe_dir.write(text="defaults: c.yaml\n", name="b.yaml")
    recipe_dir.write(text="defaults: a.yaml\n", name="c.yaml")
    diag = only(validate_recipe(recipe_dir.root / "a.yaml"), "LR006")
    assert "a.yaml -> b.yaml -> c.yaml -> a.yaml" in diag.message
    assert (diag.location.file, diag.location.line, diag.location.column) == ("c.yaml", 1, 11)


def test_defaults_self_cycle(recipe_dir: Any) -> None:
    path = recipe_dir.write(text="defaults: [recipe.yaml]\nsft: {}\n")
    diag = only(validate_recipe(path), "LR006")
    assert "cycle" in diag.message and diag.location.line == 1


def test_defaults_missing_parent(recipe_dir: Any, recipe_kit: Any) -> None:
    text = "defaults:\n- base.yaml\n- nope/missing.yaml\n" + recipe_kit.dump(recipe_kit.base())
    recipe_dir.write(name="base.yaml")
    diag = only(validate_recipe(recipe_dir.write(text=text)), "LR006")
    assert "missing.yaml" in diag.message and "not found" in diag.message
    assert (diag.location.line, diag.location.column) == (3, 3)
    assert diag.fix


@pytest.mark.parametrize("value", ["5", "{a: b}", "[1, 2]"])
def test_defaults_malformed(recipe_dir: Any, value: str) -> None:
    diag = only(validate_recipe(recipe_dir.write(text=f"defaults: {value}\nsft: {{}}\n")), "LR006")
    assert diag.location.line == 1


def test_inherited_value_is_located_in_the_parent_with_a_via_note(recipe_dir: Any) -> None:
    recipe_dir.write({"policy.train_micro_batch_size": "abc"}, name="parent.yaml")
    child = recipe_dir.write(text="defaults: parent.yaml\nlogger:\n  log_dir: logs/x\n",
                             name="child.yaml")
    diag = only(validate_recipe(child), "LR002")
    pos = recipe_dir.position("policy.train_micro_batch_size", "parent.yaml")
    assert (diag.location.file, diag.location.line, diag.location.column) == \
        ("parent.yaml", pos.line, pos.value_column)
    assert diag.location.via == "inherited through defaults: of child.yaml"


def test_inherited_rule_finding_points_into_the_parent(recipe_dir: Any) -> None:
    recipe_dir.write({"policy.dtensor_cfg._v2": False}, name="parent.yaml")
    child = recipe_dir.write(text="defaults: parent.yaml\n", name="child.yaml")
    diag = only(validate_recipe(child), "LR102")
    pos = recipe_dir.position("policy.dtensor_cfg._v2", "parent.yaml")
    assert (diag.location.file, diag.location.line) == ("parent.yaml", pos.line)
    assert "inherited" in diag.location.via


def test_override_marker_replaces_an_inherited_section(recipe_dir: Any) -> None:
    recipe_dir.write({f"{LORA}.target_modules": ["q_proj"], f"{LORA}.match_all_linear": False,
                      f"{LORA}.dim": 4}, name="base.yaml")
    child = recipe_dir.write(text="defaults: base.yaml\npolicy:\n  dtensor_cfg:\n    lora_cfg:\n"
                                  "      _override_: true\n      enabled: true\n")
    got = lora(validate_recipe(child))
    # the inherited section is replaced, not merged: every other key is back to its default
    assert (got.target_modules, got.match_all_linear, got.dim) == ([], True, 8)


def test_override_marker_without_a_parent_is_dropped(recipe_dir: Any) -> None:
    path = recipe_dir.write({f"{LORA}._override_": True})
    result = validate_recipe(path)
    assert result.diagnostics == []
    assert lora(result).dim == 8


def test_override_marker_false_is_an_unknown_key(recipe_dir: Any) -> None:
    path = recipe_dir.write({f"{LORA}._override_": False})
    assert only(validate_recipe(path), "LR001").dotted_path == f"{LORA}._override_"


# ---- overrides -----------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["", "++"])
def test_override_sets(recipe_dir: Any, op: str) -> None:
    result = validate_recipe(recipe_dir.write(), [f"{op}{LORA}.dim=16"])
    assert result.diagnostics == [] and lora(result).dim == 16


def test_override_creates_missing_sections(recipe_dir: Any) -> None:
    result = validate_recipe(recipe_dir.write(), ["++logger.log_dir=logs/new",
                                                  "policy.generation.max_new_tokens=4"])
    assert result.config.logger.log_dir == "logs/new"
    assert result.config.policy.generation.max_new_tokens == 4


def test_override_add_new_key_and_error_when_it_exists(recipe_dir: Any) -> None:
    path = recipe_dir.write()
    assert lora(validate_recipe(path, [f"+{LORA}.dropout=0.1"])).dropout == 0.1
    diag = only(validate_recipe(path, [f"+{LORA}.dim=4"]), "LR007")
    assert "already exists" in diag.message and f"++{LORA}.dim=4" in diag.fix
    assert (diag.location.file, diag.location.line) == ("<overrides>", 1)


def test_override_delete_and_error_when_missing(recipe_dir: Any) -> None:
    path = recipe_dir.write()
    got = lora(validate_recipe(path, [f"~{LORA}.dim"]))
    assert got.dim == 8  # back to the default
    diag = only(validate_recipe(path, [f"{LORA}.dim=4", f"~{LORA}.nope"]), "LR007")
    assert "no key" in diag.message and diag.location.line == 2


def test_override_list_values(recipe_dir: Any) -> None:
    result = validate_recipe(recipe_dir.write(), [f"{LORA}.match_all_linear=false",
                                                  f"{LORA}.target_modules=[q_proj,v_proj]"])
    assert result.diagnostics == []
    assert lora(result).target_modules == ["q_proj", "v_proj"]


def test_override_list_index_and_negative_index(recipe_dir: Any) -> None:
    path = recipe_dir.write({f"{LORA}.match_all_linear": False,
                             f"{LORA}.target_modules": ["q_proj", "v_proj"]})
    assert lora(validate_recipe(path, [f"{LORA}.target_modules.0=k_proj"])).target_modules == \
        ["k_proj", "v_proj"]
    assert lora(validate_recipe(path, [f"{LORA}.target_modules.-1=o_proj"])).target_modules == \
        ["q_proj", "o_proj"]
    assert lora(validate_recipe(path, [f"{LORA}.target_modules.2=o_proj"])).target_modules == \
        ["q_proj", "v_proj", "o_proj"]
    for bad in (f"{LORA}.target_modules.-5=x", f"{LORA}.target_modules.7=x",
                f"~{LORA}.target_modules.-9", f"{LORA}.target_modules.name=x"):
        assert rules(validate_recipe(path, [bad])) == ["LR007"], bad


@pytest.mark.parametrize("spelling", ["null", "None", "~", "none"])
def test_null_spellings_mean_null_for_optional_fields(recipe_dir: Any, recipe_kit: Any,
                                                      spelling: str) -> None:
    path = recipe_dir.write({"policy.megatron_cfg.peft.lora_dtype": "bfloat16"}, kind="megatron")
    result = validate_recipe(path, [f"policy.megatron_cfg.peft.lora_dtype={spelling}"])
    assert result.diagnostics == []
    assert result.config.policy.megatron_cfg.peft.lora_dtype is None
    # and written in the file (NeMo RL writes `lora_dtype: None`)
    text = recipe_kit.dump(recipe_kit.base("megatron")).replace(
        "      lora_B_init_method: zero\n",
        f"      lora_B_init_method: zero\n      lora_dtype: {spelling}\n")
    result = validate_recipe(recipe_dir.write(text=text, name="file.yaml"))
    assert result.diagnostics == [] and result.config.policy.megatron_cfg.peft.lora_dtype is None


def test_null_for_a_required_value_is_a_type_error(recipe_dir: Any) -> None:
    diag = only(validate_recipe(recipe_dir.write(), [f"{LORA}.dim=None"]), "LR002")
    assert diag.dotted_path == f"{LORA}.dim"


def test_override_positions_name_the_override(recipe_dir: Any) -> None:
    path = recipe_dir.write()
    result = validate_recipe(path, ["logger.log_dir=logs/a", f"{LORA}.dim=zero",
                                    f"{LORA}.bogus=1"])
    wrong, unknown = only(result, "LR002"), only(result, "LR001")
    assert (wrong.location.file, wrong.location.line, wrong.location.column) == \
        ("<overrides>", 2, 1)
    assert wrong.location.via == f"override '{LORA}.dim=zero'"
    assert (unknown.location.file, unknown.location.line) == ("<overrides>", 3)


def test_override_inside_a_list_is_located_at_the_override(recipe_dir: Any) -> None:
    path = recipe_dir.write({"policy.scheduler": [
        {"name": "torch.optim.lr_scheduler.ConstantLR", "kwargs": {"factor": 1.0}}]})
    diag = only(validate_recipe(path, ["policy.scheduler.0.name=Nope"]), "LR002")
    assert diag.dotted_path == "policy.scheduler[0].name"
    assert (diag.location.file, diag.location.line) == ("<overrides>", 1)


@pytest.mark.parametrize("text", ["=5", "~", "a..b=1", "justakey", f"{LORA}.dim=[1,",
                                  "policy.model_name.x=1", f"+{LORA}.dim", "sft.seed=\x07"])
def test_malformed_overrides(recipe_dir: Any, text: str) -> None:
    diag = only(validate_recipe(recipe_dir.write(), ["logger.log_dir=x", text]), "LR007")
    assert (diag.location.file, diag.location.line) == ("<overrides>", 2)
    assert text in diag.message or repr(text)[1:-1] in diag.message


def test_override_value_is_yaml(recipe_dir: Any) -> None:
    result = validate_recipe(recipe_dir.write(), [f"{LORA}.alpha=1e-1",
                                                  "policy.tokenizer.chat_template='a: b'"])
    assert lora(result).alpha == 0.1
    assert result.config.policy.tokenizer.chat_template == "a: b"


# ---- interpolation -------------------------------------------------------------------------


def test_interpolation_absolute_relative_and_resolvers(recipe_dir: Any) -> None:
    path = recipe_dir.write({
        "policy.tokenizer.name": "${policy.model_name}",
        f"{LORA}.dim": 8,
        f"{LORA}.alpha": "${mul:${.dim},2}",
        "policy.train_global_batch_size": "${max:${policy.train_micro_batch_size},4}",
        "logger.log_dir": "logs/${policy.precision}-r${policy.dtensor_cfg.lora_cfg.dim}",
        "checkpointing.checkpoint_dir": "${..logger.log_dir}/ckpt",
    })
    result = validate_recipe(path)
    assert result.diagnostics == []
    cfg = result.config
    assert cfg.policy.tokenizer.name == "lora-rl/tiny-llama"
    assert lora(result).alpha == 16 and isinstance(result.resolved[
        "policy"]["dtensor_cfg"]["lora_cfg"]["alpha"], int)
    assert cfg.policy.train_global_batch_size == 4
    assert cfg.logger.log_dir == "logs/float32-r8"
    assert cfg.checkpointing.checkpoint_dir == "logs/float32-r8/ckpt"


def test_interpolation_of_overridden_values(recipe_dir: Any) -> None:
    path = recipe_dir.write({f"{LORA}.alpha": "${mul:${.dim},4}"})
    assert lora(validate_recipe(path, [f"{LORA}.dim=4"])).alpha == 16


def test_interpolation_of_a_section_is_a_copy(recipe_dir: Any) -> None:
    path = recipe_dir.write({"env.reward_kwargs": {"cluster": "${cluster}"}})
    result = validate_recipe(path)
    copied = result.resolved["env"]["reward_kwargs"]["cluster"]
    assert copied == result.resolved["cluster"] and copied is not result.resolved["cluster"]


@pytest.mark.parametrize("changes,key,words", [
    ({"policy.model_name": "${policy.nope}"}, "policy.model_name", "not set"),
    ({"policy.model_name": "${nope:1}"}, "policy.model_name", "unknown resolver"),
    ({"policy.model_name": "${policy"}, "policy.model_name", "unclosed"),
    ({"logger.log_dir": "${checkpointing.checkpoint_dir}",
      "checkpointing.checkpoint_dir": "${logger.log_dir}"}, "logger.log_dir", "cycle"),
    ({f"{LORA}.alpha": "${div:1,0}"}, f"{LORA}.alpha", "division"),
    ({f"{LORA}.alpha": "${mul:abc,1000000000}"}, f"{LORA}.alpha", "not a number"),
    ({f"{LORA}.alpha": "${oc.env:LORA_RL_TEST_SURELY_UNSET}"}, f"{LORA}.alpha", "not set"),
])
def test_interpolation_errors(recipe_dir: Any, changes: dict, key: str, words: str) -> None:
    path = recipe_dir.write(changes)
    diag = only(validate_recipe(path), "LR008")
    assert diag.dotted_path == key and words in diag.message
    pos = recipe_dir.position(key)
    assert (diag.location.line, diag.location.column) == (pos.line, pos.value_column)


def test_interpolation_cycle_names_the_chain(recipe_dir: Any) -> None:
    path = recipe_dir.write({"logger.log_dir": "${checkpointing.checkpoint_dir}",
                             "checkpointing.checkpoint_dir": "${logger.log_dir}"})
    diag = only(validate_recipe(path), "LR008")
    assert "logger.log_dir -> checkpointing.checkpoint_dir -> logger.log_dir" in diag.message


def test_oc_env(recipe_dir: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORA_RL_TEST_DIM", "12")
    path = recipe_dir.write({f"{LORA}.dim": "${oc.env:LORA_RL_TEST_DIM}",
                             f"{LORA}.alpha": "${oc.env:LORA_RL_TEST_UNSET_X,24}"})
    got = lora(validate_recipe(path))
    assert (got.dim, got.alpha) == (12, 24)


@pytest.mark.parametrize("build", [
    lambda: "".join(f"v{i}: ${{v{i + 1}}}\n" for i in range(1500)) + "v1500: 1\n",
    lambda: "x: " + "${mul:" * 400 + "1" + ",2}" * 400 + "\n",
    lambda: "".join(f"b{i}: ${{b{i + 1}}}${{b{i + 1}}}\n" for i in range(40)) + "b40: xx\n",
    lambda: "".join(f"b{i}: ['${{b{i + 1}}}', '${{b{i + 1}}}']\n" for i in range(40)) + "b40: x\n",
], ids=["long-chain", "deep-nesting", "text-doubling", "section-doubling"])
def test_interpolation_bombs_are_bounded(recipe_dir: Any, recipe_kit: Any, build: Any) -> None:
    text = recipe_kit.dump(recipe_kit.base()) + "env:\n  reward_kwargs:\n" + "".join(
        f"    {line}\n" for line in build().splitlines())
    result = validate_recipe(recipe_dir.write(text=text))
    assert rules(result) == ["LR008"], result.diagnostics


# ---- YAML ----------------------------------------------------------------------------------


def test_exponent_without_a_dot_is_a_float(recipe_dir: Any, recipe_kit: Any) -> None:
    text = recipe_kit.dump(recipe_kit.changed(recipe_kit.base(), {
        "policy.optimizer": {"kwargs": {"lr": 1.0}}})).replace("lr: 1.0", "lr: 1e-5")
    assert "lr: 1e-5" in text
    result = validate_recipe(recipe_dir.write(text=text))
    assert result.diagnostics == [] and result.config.policy.optimizer.kwargs.lr == 1e-5


def test_duplicate_key(recipe_dir: Any) -> None:
    text = "sft: {}\npolicy:\n  model_name: a\n  precision: float32\n  model_name: b\n"
    diag = only(validate_recipe(recipe_dir.write(text=text)), "LR005")
    assert (diag.location.line, diag.location.column) == (5, 3)
    assert "line 3" in diag.message and diag.dotted_path == "policy.model_name"


def test_merge_keys_are_not_duplicates(recipe_dir: Any, recipe_kit: Any) -> None:
    text = recipe_kit.dump(recipe_kit.base()).replace(
        "    lora_cfg:\n", "    lora_cfg:\n      <<: &shared {dim: 4, alpha: 8}\n")
    text += "env:\n  reward_kwargs: {<<: *shared, dim: 2}\n"
    result = validate_recipe(recipe_dir.write(text=text))
    assert rules(result) == ["LR903"], result.diagnostics  # env: in an SFT recipe
    assert lora(result).dim == 8  # explicit keys win over merged ones
    assert result.config.env.reward_kwargs == {"dim": 2, "alpha": 8}


def test_tabs(recipe_dir: Any) -> None:
    diag = only(validate_recipe(recipe_dir.write(text="sft: {}\npolicy:\n\tmodel_name: x\n")),
                "LR004")
    assert (diag.location.line, diag.location.column) == (3, 1)
    assert "tab" in diag.fix


def test_multi_document(recipe_dir: Any, recipe_kit: Any) -> None:
    text = recipe_kit.dump(recipe_kit.base()) + "---\nsft: {}\n"
    diag = only(validate_recipe(recipe_dir.write(text=text)), "LR004")
    assert "several" in diag.message


def test_alias_bomb(recipe_dir: Any) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    text = "sft: {}\nbomb:\n" + "".join(f"  {line}\n" for line in lines)
    diag = only(validate_recipe(recipe_dir.write(text=text)), "LR009")
    assert diag.location.file == "recipe.yaml" and diag.location.line >= 3


def test_deep_nesting(recipe_dir: Any) -> None:
    for depth in (100, 5000):
        result = validate_recipe(recipe_dir.write(text="x: " + "[" * depth + "]" * depth + "\n"))
        assert rules(result) == ["LR009"], depth
    block = "".join("  " * i + f"k{i}:\n" for i in range(80)) + "  " * 80 + "v: 1\n"
    assert rules(validate_recipe(recipe_dir.write(text=block))) == ["LR009"]


def test_recursive_alias(recipe_dir: Any) -> None:
    assert rules(validate_recipe(recipe_dir.write(text="a: &a [*a]\n"))) == ["LR009"]


@pytest.mark.parametrize("text", [
    "sft: !!python/object/apply:os.system ['true']\n",
    "sft: !!python/name:os.system\n",
    "sft: !!set {a, b}\n",
    "sft: !custom {a: 1}\n",
    "sft: !!binary aGVsbG8=\n",
    "policy: {model_name: !!float abc}\n",
    "policy: {model_name: !!bool maybe}\n",
    "!!float \n",  # an empty float: PyYAML's constructor raises IndexError (found by fuzzing)
    "policy: {train_micro_batch_size: !!int }\n",
    "policy: {train_micro_batch_size: " + "9" * 5000 + "}\n",
    "? [a, b]\n: 1\n",
    "sft: {}\x07\n",
])
def test_unsafe_or_unreadable_yaml_is_rejected(recipe_dir: Any, text: str) -> None:
    result = validate_recipe(recipe_dir.write(text=text))
    assert rules(result) == ["LR004"], result.diagnostics
    assert result.diagnostics[0].location.file == "recipe.yaml"


def test_not_utf8(recipe_dir: Any) -> None:
    path = recipe_dir.root / "recipe.yaml"
    path.write_bytes(b"sft: {}\npolicy:\n  model_name: \xff\n")
    diag = only(validate_recipe(path), "LR004")
    assert diag.location.line == 3


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_document_must_be_a_mapping(recipe_dir: Any, text: str) -> None:
    assert rules(validate_recipe(recipe_dir.write(text=text))) == ["LR004"]


def test_dates_and_keys_that_are_not_strings(recipe_dir: Any) -> None:
    path = recipe_dir.write({"logger.log_dir": "2024-01-01", "env.reward_kwargs": {"k": 1}})
    result = validate_recipe(path)
    assert result.config.logger.log_dir == "2024-01-01"
    text = recipe_dir.text().replace("'2024-01-01'", "2024-01-01").replace("k: 1", "1: 1")
    result = validate_recipe(recipe_dir.write(text=text, name="raw.yaml"))
    assert result.ok and result.config.logger.log_dir == "2024-01-01"
    assert result.config.env.reward_kwargs == {"1": 1}


# ---- values that lax validation would coerce ------------------------------------------------


@pytest.mark.parametrize("key,value", [
    (f"{LORA}.dim", True), (f"{LORA}.dim", "8"), (f"{LORA}.enabled", 1),
    (f"{LORA}.enabled", "yes"), (f"{LORA}.alpha", "16"), (f"{LORA}.dropout", False),
    ("policy.generation.stop_token_ids", [1, "2"]), ("policy.optimizer.kwargs.betas", [0.9, "x"]),
])
def test_wrong_scalar_types_are_errors(recipe_dir: Any, key: str, value: Any) -> None:
    diag = only(validate_recipe(recipe_dir.write({key: value})), "LR002")
    assert diag.dotted_path == key and diag.fix


def test_wrong_scalar_types_are_reported_with_the_other_errors(recipe_dir: Any) -> None:
    path = recipe_dir.write({f"{LORA}.dim": "8", f"{LORA}.alpah": 16, f"{LORA}.dropout": "x",
                             "policy.dtensor_cfg.enabled": "yes",
                             "policy.train_micro_batch_size": True})
    found = {(d.rule, d.dotted_path) for d in validate_recipe(path).diagnostics}
    assert found == {("LR002", f"{LORA}.dim"), ("LR001", f"{LORA}.alpah"),
                     ("LR002", f"{LORA}.dropout"), ("LR002", "policy.dtensor_cfg.enabled"),
                     ("LR002", "policy.train_micro_batch_size")}


def test_numbers_are_accepted_where_floats_are_expected(recipe_dir: Any) -> None:
    result = validate_recipe(recipe_dir.write({f"{LORA}.alpha": 16, f"{LORA}.dim": 8.0}))
    assert result.diagnostics == [] and lora(result).dim == 8


# ---- files ---------------------------------------------------------------------------------


def test_empty_file(recipe_dir: Any) -> None:
    for text in ("", "# only a comment\n", "\n\n"):
        diag = only(validate_recipe(recipe_dir.write(text=text)), "LR011")
        assert "empty" in diag.message and diag.location.line == 1


def test_directory_and_missing_file(recipe_dir: Any) -> None:
    assert "directory" in only(validate_recipe(recipe_dir.empty_dir("d")), "LR010").message
    assert "no such file" in only(validate_recipe(recipe_dir.root / "nope.yaml"), "LR010").message


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_endless_file_is_bounded() -> None:
    assert "larger" in only(validate_recipe(Path("/dev/zero")), "LR010").message


@pytest.mark.parametrize("setup", ["directory", "missing"])
def test_io_errors_exit_2(recipe_dir: Any, setup: str) -> None:
    target = {"directory": lambda: recipe_dir.empty_dir("d"),
              "missing": lambda: recipe_dir.root / "missing.yaml"}[setup]()
    proc = subprocess.run([sys.executable, "-m", "lora_rl", "validate", str(target)],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "LR010" in proc.stdout and "Traceback" not in proc.stderr
