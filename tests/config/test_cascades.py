"""One mistake, one diagnostic: no rule reports on a value that an earlier error rejected.

Each case writes one wrong value and checks the whole report: exactly the one expected
diagnostic, its message, its file:line:column, and `validate`'s exit code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from lora_rl.cli import app
from lora_rl.config.rules import RULES, Finding, Rule
from lora_rl.config.validate import validate_recipe

LORA = "policy.dtensor_cfg.lora_cfg"
MG = "policy.megatron_cfg"


def _summary(result: Any) -> list[tuple[str, str, str, int, int]]:
    return [(d.rule, d.dotted_path, d.message, d.location.line, d.location.column)
            for d in result.diagnostics]


def test_a_string_for_target_modules_is_one_type_error(recipe_dir: Any) -> None:
    """Before: also LR105 "neither target_modules nor exclude_modules is set" (about the
    default that stood in for the rejected string)."""
    path = recipe_dir.write({f"{LORA}.match_all_linear": False, f"{LORA}.target_modules": "q_proj"})
    pos = recipe_dir.position(f"{LORA}.target_modules")
    assert _summary(validate_recipe(path)) == [
        ("LR002", f"{LORA}.target_modules",
         f"{LORA}.target_modules: expected a valid list, found 'q_proj' (a string)",
         pos.line, pos.value_column)]
    assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 1


def test_a_quoted_boolean_for_megatron_enabled_is_one_type_error(recipe_dir: Any) -> None:
    """Before: also LR101 "no backend is enabled" and LR110 "Megatron LoRA ... has no effect"."""
    path = recipe_dir.write({f"{MG}.enabled": "true"}, kind="megatron")
    pos = recipe_dir.position(f"{MG}.enabled")
    assert _summary(validate_recipe(path)) == [
        ("LR002", f"{MG}.enabled", f"{MG}.enabled: expected true or false, found 'true' "
         "(a string)", pos.line, pos.value_column)]
    assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 1


def test_a_misspelt_key_does_not_let_its_default_be_judged(recipe_dir: Any) -> None:
    """`_v22: true` for `_v2`: the default `_v2: false` is not what the user chose, so LR102
    ("LoRA needs _v2") does not follow the typo."""
    path = recipe_dir.write({"policy.dtensor_cfg._v2": recipe_dir.kit.DELETE,
                             "policy.dtensor_cfg._v22": True})
    pos = recipe_dir.position("policy.dtensor_cfg._v22")
    result = validate_recipe(path)
    assert _summary(result) == [("LR001", "policy.dtensor_cfg._v22",
                                 "unknown key '_v22' in policy.dtensor_cfg", pos.line,
                                 pos.key_column)]
    assert result.diagnostics[0].fix == "did you mean '_v2'?"


def test_a_rule_error_is_not_followed_by_rules_on_the_same_value(recipe_dir: Any) -> None:
    """tp=4 on one process (LR201) is not also judged against the model's heads (LR203)."""
    path = recipe_dir.write({"policy.dtensor_cfg.tensor_parallel_size": 4})
    model = recipe_dir.model(num_attention_heads=6, num_key_value_heads=6, hidden_size=96,
                             intermediate_size=192)
    pos = recipe_dir.position("policy.dtensor_cfg.tensor_parallel_size")
    result = validate_recipe(path, model_dir=model)
    assert [(d.rule, d.location.line, d.location.column) for d in result.errors] == \
        [("LR201", pos.line, pos.value_column)]


def test_a_bad_scheduler_entry_still_lets_unrelated_rules_run(recipe_dir: Any) -> None:
    """A schema error in a list item rejects that list only: rules on other values run."""
    path = recipe_dir.write({"policy.scheduler": [{"name": "nope"}],
                             "policy.dtensor_cfg._v2": False})
    rules = [d.rule for d in validate_recipe(path).diagnostics]
    assert sorted(rules) == ["LR002", "LR102"]  # (listed in file order)


@pytest.fixture
def probe_rule(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A temporary rule that reports dim, then reads target_modules behind `except Exception`."""
    ran: list[str] = []

    def check(cfg: Any, ctx: Any) -> Iterator[Finding]:
        lora = cfg.policy.dtensor_cfg.lora_cfg
        yield Finding(f"{LORA}.dim", f"dim is {lora.dim}", "a fix")
        try:
            ran.append(f"targets {lora.target_modules}")
        except Exception:  # noqa: BLE001 - the rule's own guard must not swallow the skip
            ran.append("swallowed")
        yield Finding(f"{LORA}.target_modules", "targets", "a fix")

    monkeypatch.setitem(RULES, "LR999", Rule("LR999", "warning", "probe", check))
    return ran


def test_a_rule_stops_at_a_rejected_read_and_keeps_what_it_found_before(
        recipe_dir: Any, probe_rule: list[str]) -> None:
    path = recipe_dir.write({f"{LORA}.target_modules": "q_proj", f"{LORA}.dim": 4})
    probes = [(d.dotted_path, d.message) for d in validate_recipe(path).diagnostics
              if d.rule == "LR999"]
    assert probes == [(f"{LORA}.dim", "dim is 4")]
    assert probe_rule == []


def test_the_guard_is_gone_after_the_rules(recipe_dir: Any, probe_rule: list[str]) -> None:
    from lora_rl.config.base import Section

    validate_recipe(recipe_dir.write({f"{LORA}.target_modules": "q_proj"}))
    assert "__getattribute__" not in Section.__dict__
    path = recipe_dir.write({f"{LORA}.match_all_linear": False,
                             f"{LORA}.target_modules": ["q_proj"]}, name="ok.yaml")
    found = [d.dotted_path for d in validate_recipe(path).diagnostics if d.rule == "LR999"]
    assert found == [f"{LORA}.dim", f"{LORA}.target_modules"]
    assert probe_rule == ["targets ['q_proj']"]


def test_a_rule_error_does_not_cut_the_compat_key_scan_short(recipe_dir: Any) -> None:
    """LR901 reports keys as written: a value another rule rejected (LR101 on
    megatron_cfg.enabled, read by the scan to skip disabled sections) does not stop it before
    the compat keys after it."""
    path = recipe_dir.write({f"{MG}.enabled": True, "logger.monitor_gpus": True})
    result = validate_recipe(path)
    assert [(d.rule, d.dotted_path) for d in result.errors] == [("LR101", f"{MG}.enabled")]
    assert [d.dotted_path for d in result.warnings if d.rule == "LR901"] == \
        ["logger.monitor_gpus"]
