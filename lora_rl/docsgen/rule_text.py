"""What each rule says, read from its source: the key paths it points at and its fix hints.

Rules build their Findings with f-strings at validation time, so there is no static table of
fixes to document. Reading the `Finding(...)` calls of each check keeps the troubleshooting page
and the reference's "rules" column generated from the code they describe: a new rule or a
reworded fix shows up on the next `python -m lora_rl.docsgen`. Parts only known at run time
(a value, a size) are shown as `…`.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field
from functools import cache

from lora_rl.config import rules as rules_module

HOLE = "…"
RECIPE_DEPENDENT = {"active_lora_key": (rules_module.LORA, rules_module.PEFT)}
"""Attributes (`cfg.policy.active_lora_key`) whose value depends on the recipe: a key built
from one is shown as `…` in paths and fixes, and counts as a mention of every alternative."""

LOADER_FIXES: dict[str, str] = {
    # Loader and model checks are raised from several places; their fixes are general.
    "LR001": "fix the spelling (the message suggests the closest key), or remove the key",
    "LR002": "use a value of the type and range the message names (`lora-rl schema` lists them)",
    "LR003": "add the key, or inherit it with `defaults:`",
    "LR004": "fix the YAML at the reported line; a recipe is one mapping of sections",
    "LR005": "keep one of the duplicated keys",
    "LR006": "point `defaults:` at existing files, relative to the file that names them; "
             "remove cycles",
    "LR007": "write overrides as a.b.c=value, ++a.b=value (add) or ~a.b (delete)",
    "LR008": "reference an existing key, e.g. ${policy.model_name}, or a known resolver such as "
             "${mul:2,4}",
    "LR009": "remove the YAML aliases that expand the document, or split it",
    "LR010": "pass an existing, readable .yaml file",
    "LR011": "write the recipe's sections, or start from `lora-rl recipes cp NAME my.yaml`",
    "LR403": "pass --model with a local model directory containing config.json",
    "LR800": "name a .yaml recipe next to the recipe, in the working directory or the catalogue, "
             "or add its folder to $LORA_RL_DEFAULTS_PATH",
    "LR801": "point `defaults:` at a lora-rl or NeMo RL recipe",
}


@dataclass
class RuleText:
    paths: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    text: str = ""
    """Every string the rule's check renders, joined (to find keys it mentions)."""


def _constants() -> dict[str, str]:
    return {name: value for name, value in vars(rules_module).items()
            if isinstance(value, str) and name.isupper()}


def _render(node: ast.AST | None, names: dict[str, str]) -> str:
    if node is None:
        return ""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_render(part, names) for part in node.values)
    if isinstance(node, ast.FormattedValue):
        inner = node.value
        if isinstance(inner, ast.Attribute) and inner.attr in names:
            return names[inner.attr]
        return names[inner.id] if isinstance(inner, ast.Name) and inner.id in names else HOLE
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _render(node.left, names) + _render(node.right, names)
    return HOLE


def _argument(call: ast.Call, index: int, keyword: str) -> ast.AST | None:
    if len(call.args) > index:
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


@cache
def rule_text(rule_id: str) -> RuleText:
    """Paths and fixes of a registered rule; the loader's fixed text for loader ids."""
    if rule_id in LOADER_FIXES:
        return RuleText(fixes=[LOADER_FIXES[rule_id]])
    from lora_rl.config import joint

    if rule_id in joint.FIXES:
        return RuleText(fixes=[joint.FIXES[rule_id]])
    check = rules_module.RULES[rule_id].check
    tree = ast.parse(textwrap.dedent(inspect.getsource(check)))
    names = _constants()
    found = RuleText()
    strings: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Constant, ast.JoinedStr)):
            strings.append(_render(node, names))
            strings.extend(_render(node, {**names, attr: value})
                           for attr, values in RECIPE_DEPENDENT.items() for value in values)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Finding":
            path = _render(_argument(node, 0, "path"), names)
            fix = _render(_argument(node, 2, "fix"), names)
            if path and path != HOLE and path not in found.paths:
                found.paths.append(path)
            if fix and fix not in found.fixes:
                found.fixes.append(fix)
    found.text = "\n".join(s for s in strings if isinstance(s, str))
    return found
