"""Every recipe key either does something or says it does not.

A field that is not `compat()` (accepted-no-effect, warned about by LR901) must be read by
runtime code or by a rule. The check is textual: the field's name must appear as an attribute
(`.name`) or a string key (`"name"`) somewhere in lora_rl outside the modules that declare the
schema, convert recipes or render docs. Generic names (`enabled`, `name`) pass trivially; the
check is for the specific ones that were silently dropped before (`grpo.val_batch_size`,
`policy.logprob_batch_size`, `megatron_cfg.peft.a2a_experimental`).
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from lora_rl.config.base import is_compat_field
from lora_rl.config.recipe import RecipeConfig

PACKAGE = Path(__file__).resolve().parents[2] / "lora_rl"
SCHEMA_MODULES = {"algorithms.py", "base.py", "generation.py", "lora.py", "megatron.py",
                  "policy.py", "recipe.py", "sections.py", "schema_export.py", "docstrings.py",
                  "compat_scan.py", "schema_errors.py", "catalogue.py"}
"""config/ modules that declare or describe fields rather than act on them."""
NOT_RUNTIME = ("convert", "docsgen")
"""Packages that copy or document keys (convert maps `a2a_experimental` by name)."""

KNOWN_UNREAD: dict[str, str] = {}
"""Fields allowed to be unread for now, with the reason (none today)."""


def _corpus() -> str:
    texts = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in NOT_RUNTIME or rel.name == "explain.py":
            continue
        if rel.parts[0] == "config" and rel.name in SCHEMA_MODULES:
            continue
        texts.append(path.read_text(encoding="utf-8"))
    return "\n".join(texts)


def _models(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _single_choice(annotation: object) -> bool:
    return typing.get_origin(annotation) is typing.Literal and len(typing.get_args(annotation)) == 1


def unread_fields(corpus: str, model: type[BaseModel] = RecipeConfig, prefix: str = "",
                  seen: set | None = None) -> list[str]:
    """Dotted paths of non-compat leaf fields whose name `corpus` never mentions."""
    seen = set() if seen is None else seen
    if model in seen:
        return []
    seen.add(model)
    out = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        path = f"{prefix}.{key}" if prefix else key
        nested = _models(info.annotation)
        if nested:  # a section: its own keys are checked
            for sub in nested:
                out += unread_fields(corpus, sub, path, seen)
            continue
        if is_compat_field(info) or _single_choice(info.annotation):
            continue
        if not re.search(rf"\.{re.escape(name)}\b|[\"']{re.escape(name)}[\"']", corpus):
            out.append(path)
    return out


def test_every_field_is_read_by_runtime_code_or_a_rule() -> None:
    unread = set(unread_fields(_corpus()))
    assert unread <= set(KNOWN_UNREAD), (
        f"{sorted(unread - set(KNOWN_UNREAD))}: declared in the schema but read by neither "
        "runtime code nor a rule; act on it, warn about it in a rule, or declare it with "
        "compat() (accepted, no effect: LR901)")


def test_the_check_sees_an_unread_field() -> None:
    """Against code that reads nothing, every specific field is reported (the check can fail)."""
    unread = unread_fields("")
    assert {"grpo.val_batch_size", "policy.logprob_batch_size"} <= set(unread)
    assert "policy.megatron_cfg.peft.a2a_experimental" not in unread  # compat(): LR901 warns


def test_formerly_silent_keys_act_or_warn(recipe_dir: object) -> None:
    from lora_rl.config.validate import validate_recipe

    path = recipe_dir.write({"policy.logprob_batch_size": 2}, kind="grpo")  # type: ignore[attr-defined]
    (diag,) = [d for d in validate_recipe(path).warnings if d.rule == "LR640"]
    assert diag.message == ("logprob_batch_size is 2, but lora-rl computes log-probabilities "
                            "(old policy, reference) per train micro-batch of 1")
    path = recipe_dir.write({"policy.megatron_cfg.peft.a2a_experimental": True},  # type: ignore[attr-defined]
                            kind="megatron", name="mg.yaml")
    warned = [d.dotted_path for d in validate_recipe(path).warnings if d.rule == "LR901"]
    assert warned == ["policy.megatron_cfg.peft.a2a_experimental"]
