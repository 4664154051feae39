"""Scheduler entries, YAML syntax and document-shape errors: one message each, at the line and
column of the cause, with a fix, and `validate`'s exit code (0 valid, 1 invalid, 2 usage/I-O)."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from lora_rl.cli import app
from lora_rl.config.validate import validate_recipe

LINEAR = "torch.optim.lr_scheduler.LinearLR"


def _only(path: Any) -> tuple[str, str, str, int, int, str | None]:
    result = validate_recipe(path)
    assert len(result.diagnostics) == 1, [(d.rule, d.message) for d in result.diagnostics]
    d = result.diagnostics[0]
    return d.rule, d.dotted_path, d.message, d.location.line, d.location.column, d.fix


def _exit(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", *map(str, args)])
    return result.exit_code, result.output


# ---- policy.scheduler ----------------------------------------------------------------------


def test_scheduler_short_name(recipe_dir: Any) -> None:
    """Before: also "unknown key 'name' ... did you mean 'name'?", the same for kwargs, and
    "missing required key 'milestones'" (the item was judged as both kinds of entry)."""
    path = recipe_dir.write({"policy.scheduler": [
        {"name": "LinearLR", "kwargs": {"start_factor": 0.1, "total_iters": 2}}]})
    pos = recipe_dir.position("policy.scheduler")
    line = pos.line + 1  # `- name: LinearLR` under `scheduler:`
    assert _only(path) == (
        "LR002", "policy.scheduler[0].name",
        f"policy.scheduler[0].name: expected '{LINEAR}', "
        "'torch.optim.lr_scheduler.ConstantLR' or 'torch.optim.lr_scheduler.CosineAnnealingLR', "
        "found 'LinearLR' (a string)", line, pos.key_column + len("- name: "),
        f"did you mean '{LINEAR}'?")
    assert _exit(path)[0] == 1


def test_scheduler_milestone_typo(recipe_dir: Any) -> None:
    """Before: no suggestion ("valid keys here: name, kwargs") plus two "missing" errors."""
    path = recipe_dir.write({"policy.scheduler": [
        {"name": LINEAR, "kwargs": {"total_iters": 2}},
        {"name": "torch.optim.lr_scheduler.ConstantLR", "kwargs": {"factor": 1.0}},
        {"milestone": [2]}]})
    text = recipe_dir.text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if "milestone:" in t)
    assert _only(path) == ("LR001", "policy.scheduler[2].milestone",
                           "unknown key 'milestone' in policy.scheduler[2]", line,
                           text[line - 1].index("milestone") + 1, "did you mean 'milestones'?")


def test_scheduler_entries_that_are_right_validate(recipe_dir: Any) -> None:
    path = recipe_dir.write({"policy.scheduler": [
        {"name": LINEAR, "kwargs": {"total_iters": 2}},
        {"name": "torch.optim.lr_scheduler.ConstantLR", "kwargs": {"factor": 1.0}},
        {"milestones": [2]}]})
    result = validate_recipe(path)
    assert result.ok and result.diagnostics == []
    assert result.config.policy.scheduler[2].milestones == [2]


# ---- YAML syntax ---------------------------------------------------------------------------

BASE = "sft:\n  max_num_steps: 10\npolicy:\n  model_name: lora-rl/tiny-llama\n"


def test_no_space_after_colon_as_a_section_value(recipe_dir: Any) -> None:
    """`lora_cfg:` with only `dim:16` below it: YAML reads the section as the string 'dim:16'.
    Before: "... instance of DTensorLoraConfig" (a class name), at the line above, no hint."""
    text = BASE + "  dtensor_cfg:\n    lora_cfg:\n      dim:16\n" \
        "data:\n  dataset_name: tiny-arithmetic\n"
    path = recipe_dir.write(text=text)
    assert _only(path) == (
        "LR002", "policy.dtensor_cfg.lora_cfg", "policy.dtensor_cfg.lora_cfg: expected a mapping "
        "of keys, found 'dim:16' (a string)", 7, 7,
        "add a space after the colon: `dim: 16` (without one, YAML reads 'dim:16' as a single "
        "string)")
    assert _exit(path)[0] == 1


@pytest.mark.parametrize("after", ["", "      alpha: 16\n", "  precision: float32\n"])
def test_no_space_after_colon_among_keys(recipe_dir: Any, after: str) -> None:
    text = BASE + "  dtensor_cfg:\n    lora_cfg:\n      enabled: true\n      dim:16\n" + after
    path = recipe_dir.write(text=text)
    assert _only(path) == ("LR004", "", "YAML syntax: 'dim:16' has no space after the colon, so "
                           "YAML reads it as text, not as a key", 8, 10,
                           "add a space after the colon: `dim: 16`")
    assert _exit(path)[0] == 1


def test_key_indented_more_than_the_one_above(recipe_dir: Any) -> None:
    """Before: "mapping values are not allowed here" at the colon, PyYAML's words."""
    path = recipe_dir.write(text=BASE + "   train_micro_batch_size: 1\n")
    assert _only(path) == ("LR004", "", "YAML syntax: 'train_micro_batch_size:' is indented "
                           "more than 'model_name:' above it, so YAML reads it as part of "
                           "model_name's value", 5, 4,
                           "indent 'train_micro_batch_size:' by 2 spaces, like 'model_name:'")


def test_key_indented_between_levels(recipe_dir: Any) -> None:
    """Before: "expected <block end>, but found '<block mapping start>'"."""
    path = recipe_dir.write(text=BASE + "  dtensor_cfg:\n    enabled: true\n   _v2: true\n")
    assert _only(path) == ("LR004", "", "YAML syntax: '_v2' is indented 3 spaces, which "
                           "matches none of the sections above it (their keys are at 0 or 2 or "
                           "4)", 7, 4, "indent '_v2' by 0 or 2 or 4 spaces, like the keys it "
                           "belongs with")


def test_colon_inside_a_value(recipe_dir: Any) -> None:
    path = recipe_dir.write(text=BASE + "  tokenizer:\n    chat_template: User: {{x}}\n")
    rule, _, message, line, column, fix = _only(path)
    assert (rule, message, line, column) == (
        "LR004", "YAML syntax: the value of 'chat_template' contains ': ', which YAML reads as "
        "a second key on the same line", 6, len("    chat_template: User:"))
    assert fix == 'quote the value: `chat_template: "User: {{x}}"`'


def test_unclosed_bracket_and_quote(recipe_dir: Any) -> None:
    path = recipe_dir.write(text=BASE + "  scheduler: [a, b\ncluster: {}\n")
    assert _only(path)[2:5] == ("YAML syntax: the '[' opened here is not closed", 5, 14)
    path = recipe_dir.write(text=BASE + "  precision: 'float32\ncluster: {}\n", name="q.yaml")
    assert _only(path)[2:5] == ("YAML syntax: the quote opened here is never closed", 5, 14)


# ---- document shape and exit codes ---------------------------------------------------------


def test_a_list_document_is_reported_where_the_list_starts(recipe_dir: Any) -> None:
    """Before: at 1:1, with no fix, though the list starts on line 2."""
    path = recipe_dir.write(text="# my recipe\n- sft: {}\n- policy: {}\n")
    assert _only(path) == ("LR004", "", "a recipe is a mapping of sections (`sft:`, `policy:`, "
                           f"...), but {path.name} holds a list", 2, 1,
                           "write the sections as `key:` lines at the left margin, without '- '")
    assert _exit(path)[0] == 1


def test_a_single_value_document(recipe_dir: Any) -> None:
    path = recipe_dir.write(text="\n\n  sft\n")
    rule, _, message, line, column, fix = _only(path)
    assert (rule, line, column) == ("LR004", 3, 3)
    assert message.endswith("holds a single value ('sft')") and "key: value" in fix


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_an_empty_file_is_an_invalid_recipe_exit_1(recipe_dir: Any, text: str) -> None:
    """Before: LR010 and exit 2 (the I/O code) while printing "invalid"."""
    path = recipe_dir.write(text=text)
    assert _only(path)[0] == "LR011"
    code, output = _exit(path)
    assert code == 1 and f"{path.name}: invalid (1 error(s), 0 warning(s))" in output


@pytest.mark.parametrize("override", ["foo", "a..b=1", "policy.dtensor_cfg.lora_cfg.dim=[1,"])
def test_a_malformed_override_is_a_usage_error_exit_2(recipe_dir: Any, override: str) -> None:
    """Before: exit 1, as if the recipe were wrong."""
    path = recipe_dir.write()
    code, output = _exit(path, "--set", override)
    assert code == 2 and "LR007" in output
    assert f"{path.name}: not validated (the file or an override could not be used)" in output


def test_a_missing_file_exits_2_without_saying_invalid(recipe_dir: Any) -> None:
    code, output = _exit(recipe_dir.root / "nope.yaml")
    assert code == 2 and "LR010" in output and "invalid" not in output
