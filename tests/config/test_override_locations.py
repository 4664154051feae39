"""Overrides keep their own location (`<overrides>:N`) in every diagnostic, including for the
sections an override creates; diagnostics come in reading order (file, then line)."""

from __future__ import annotations

from typing import Any

from lora_rl.config.validate import validate_recipe


def test_a_section_created_by_an_override_points_at_the_override(recipe_dir: Any) -> None:
    path = recipe_dir.write()
    result = validate_recipe(path, ["policy.precision=float32",
                                    "++policy.dynamic_batching.enabled=true"])
    (diag,) = [d for d in result.diagnostics if d.rule == "LR901"]
    assert diag.dotted_path == "policy.dynamic_batching"
    loc = diag.location
    assert (loc.file, loc.line, loc.column) == ("<overrides>", 2, 1)
    assert loc.via == "override '++policy.dynamic_batching.enabled=true'"


def test_schema_and_rule_findings_on_overrides_name_their_override(recipe_dir: Any) -> None:
    path = recipe_dir.write()
    result = validate_recipe(path, ["++policy.dtensor_cfg.lora_cfg.dimm=3",
                                    "policy.train_global_batch_size=5",
                                    "policy.train_micro_batch_size=2"])
    where = {d.rule: (d.location.file, d.location.line, d.location.via)
             for d in result.diagnostics}
    assert where["LR001"] == ("<overrides>", 1, "override '++policy.dtensor_cfg.lora_cfg.dimm=3'")
    assert where["LR202"] == ("<overrides>", 2, "override 'policy.train_global_batch_size=5'")


def test_diagnostics_come_in_file_then_line_order(recipe_dir: Any) -> None:
    """The recipe's own lines first (in order), then its `defaults:` parent, then overrides."""
    recipe_dir.write({"policy.dtensor_cfg.sequence_parallel": True}, name="parent.yaml")
    child = recipe_dir.write(text="defaults: parent.yaml\n"
                                  "policy:\n"
                                  "  trust_remote_code: true\n"
                                  "  dtensor_cfg:\n"
                                  "    lora_cfg:\n"
                                  "      dropout: 0.5\n"
                                  "      target_modules: [q_proj]\n", name="child.yaml")
    result = validate_recipe(child, ["++policy.dtensor_cfg.cpu_offload=true"])
    order = [(d.location.file, d.location.line, d.rule) for d in result.diagnostics]
    assert order == sorted(order, key=lambda o: ({"child.yaml": 0, "parent.yaml": 1}.get(
        o[0], 2), o[1]))
    files = [o[0] for o in order]
    assert files[0] == "child.yaml" and files[-1] == "<overrides>" and "parent.yaml" in files
    assert [o[2] for o in order if o[0] == "child.yaml"] == ["LR902", "LR104"]
