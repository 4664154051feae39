"""JSON Schema of a recipe file, for editors (yaml-language-server) and CI linters.

Differences from pydantic's own schema, all for files as users write them:
- `defaults:` (inheritance) is a valid top-level key;
- any value may be a `${...}` interpolation;
- no key is `required`, because a recipe may inherit it through `defaults:` (`lora-rl validate`
  checks completeness on the merged recipe).
Draft-07 output uses `#/definitions/` references, which yaml-language-server resolves.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from lora_rl.config.base import NULL_SPELLINGS
from lora_rl.config.docstrings import attribute_docs
from lora_rl.config.layering import OVERRIDE_MARK
from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.schema_walk import all_models
from lora_rl.config.sections import _IMPORT_PATH as IMPORT_PATH
from lora_rl.config.sections import BUILTIN_REWARDS

Draft = Literal["07", "2020-12"]
DRAFT_URIS = {
    "07": "http://json-schema.org/draft-07/schema#",
    "2020-12": "https://json-schema.org/draft/2020-12/schema",
}
OVERRIDE = {"const": True, "description": "NeMo RL's `_override_: true`: this section replaces "
                                          "the inherited one instead of merging into it."}
INTERPOLATION = {"type": "string", "pattern": r"^.*\$\{.+\}.*$",
                 "description": "An interpolation such as ${policy.model_name}."}


def recipe_json_schema(draft: Draft = "07") -> dict[str, Any]:
    defs_key = "definitions" if draft == "07" else "$defs"
    schema = RecipeConfig.model_json_schema(ref_template=f"#/{defs_key}/{{model}}")
    definitions = schema.pop("$defs", {})
    _add_descriptions(schema, definitions)
    _reward_choices(definitions)
    for node in [schema, *definitions.values()]:
        _for_files(node, draft)
    for node in definitions.values():
        if "properties" in node:
            node["properties"][OVERRIDE_MARK] = OVERRIDE
    schema["properties"] = {"defaults": {
        "description": "Parent recipe(s) this file inherits from, relative to this file; later "
                       "entries and this file win.",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }, **schema["properties"]}
    definitions["Interpolation"] = INTERPOLATION
    schema.pop("title", None)  # pydantic's "RecipeConfig" would replace the title below
    return {"$schema": DRAFT_URIS[draft], "$id": "lora-rl.schema.json",
            "title": "lora-rl recipe", **schema, defs_key: definitions}


def _add_descriptions(schema: dict[str, Any], definitions: dict[str, Any]) -> None:
    for model in all_models(RecipeConfig):
        node = schema if model is RecipeConfig else definitions.get(model.__name__)
        if node is None:
            continue
        if model.__doc__:
            node["description"] = inspect.cleandoc(model.__doc__)
        docs = attribute_docs(model)
        for name, info in model.model_fields.items():
            prop = node.get("properties", {}).get(info.alias or name)
            if prop is not None and name in docs:
                prop["description"] = docs[name]


def _for_files(node: dict[str, Any], draft: Draft) -> None:
    node.pop("required", None)
    for name, prop in list(node.get("properties", {}).items()):
        _walk(prop, draft)
        _accept_null_spellings(prop)
        # Sections stay plain so editors point at the deepest wrong key, not at the section.
        # A free string already admits `${...}`; an enum or pattern does not.
        constrained = any(k in prop for k in ("enum", "const", "pattern", "anyOf"))
        if (prop.get("type") != "string" or constrained) and "$ref" not in repr(prop):
            node["properties"][name] = _allow_interpolation(prop, draft)


def _accept_null_spellings(prop: dict[str, Any]) -> None:
    """Validation reads `None`, `none`, `~` (strings) as null where null is allowed
    (NeMo RL writes `lora_dtype: None`); so does the schema."""
    options = prop.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        options.append({"type": "string", "enum": sorted(NULL_SPELLINGS)})


def _reward_choices(definitions: dict[str, Any]) -> None:
    """`env.reward` is checked by a validator: a built-in name or a `module:function` path."""
    reward = definitions.get("EnvConfig", {}).get("properties", {}).get("reward")
    if reward is not None and reward.get("type") == "string":
        del reward["type"]
        reward["anyOf"] = [{"type": "string", "enum": list(BUILTIN_REWARDS)},
                           {"type": "string", "pattern": IMPORT_PATH.pattern}]


def _allow_interpolation(prop: dict[str, Any], draft: Draft) -> dict[str, Any]:
    keep = {k: prop.pop(k) for k in ("title", "description", "default") if k in prop}
    ref = "#/definitions/Interpolation" if draft == "07" else "#/$defs/Interpolation"
    return {**keep, "anyOf": [prop, {"$ref": ref}]}


def _walk(node: Any, draft: Draft) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, draft)
        return
    if not isinstance(node, dict):
        return
    if draft == "07" and "prefixItems" in node:
        node["items"] = node.pop("prefixItems")
        node["additionalItems"] = False  # minItems stays: a too-short tuple is an error
    if "properties" in node:
        _for_files(node, draft)
    for value in node.values():
        _walk(value, draft)
