"""Every diagnostic id lora-rl can emit, with a one-line title. Ids are stable: never reuse one.

The troubleshooting page of the docs is generated from this table, and a test checks that the
rules in code and this table agree.
"""

from __future__ import annotations

LOADER_RULES: dict[str, str] = {
    "LR001": "Unknown key (with a did-you-mean suggestion)",
    "LR002": "Wrong type or out-of-range value",
    "LR003": "Missing required key",
    "LR004": "YAML syntax error, tag or non-mapping document",
    "LR005": "Duplicate key in a mapping",
    "LR006": "`defaults:` parent missing, malformed or cyclic",
    "LR007": "Malformed or inapplicable override",
    "LR008": "Interpolation `${...}` cannot be resolved",
    "LR009": "Document too large or too deeply nested (alias bomb)",
    "LR010": "Recipe file missing, unreadable or too large (exit code 2)",
    "LR011": "Recipe file is empty (only blank lines or comments)",
    "LR800": "`defaults:` parent not a YAML file or outside the allowed folders",
    "LR801": "`defaults:` parent is not a recipe (its content is not shown)",
}

MODEL_RULES: dict[str, str] = {
    "LR403": "Model directory or its config.json cannot be read",
}


JOINT_RULES: dict[str, str] = {
    "LR700": "Recipes of one multi-adapter run must agree on base model, backend, precision "
             "and parallel layout",
    "LR701": "Recipes of one multi-adapter run need their own checkpoint and log directories",
    "LR702": "Multi-adapter runs: LoRA on DTensor, tensor-parallel at most, GRPO in one "
             "process (vLLM only with split-weight sync)",
    "LR703": "GRPO recipes of one multi-adapter run that sample with vLLM share one engine: "
             "its vllm_cfg must agree",
}
"""Checks across the recipes of one multi-adapter run (`lora_rl.config.joint`)."""


def all_rules() -> dict[str, tuple[str, str]]:
    """Every id -> (title, severity) across the loader, the model check and the rule table."""
    from lora_rl.config.rules import RULES

    table = {rid: (title, "error")
             for rid, title in {**LOADER_RULES, **MODEL_RULES, **JOINT_RULES}.items()}
    table["LR403"] = (MODEL_RULES["LR403"], "error or warning")
    table.update({r.id: (r.title, r.severity) for r in RULES.values()})
    return table
