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

from lora_rl.config.docstrings import all_models, attribute_docs
from lora_rl.config.recipe import RecipeConfig

Draft = Literal["07", "2020-12"]
DRAFT_URIS = {
    "07": "http://json-schema.org/draft-07/schema#",
    "2020-12": "https://json-schema.org/draft/2020-12/schema",
}
INTERPOLATION = {"type": "string", "pattern": r"^.*\$\{.+\}.*$",
                 "description": "An interpolation such as ${policy.model_name}."}


def recipe_json_schema(draft: Draft = "07") -> dict[str, Any]:
    defs_key = "definitions" if draft == "07" else "$defs"
    schema = RecipeConfig.model_json_schema(ref_template=f"#/{defs_key}/{{model}}")
    definitions = schema.pop("$defs", {})
    _add_descriptions(schema, definitions)
    for node in [schema, *definitions.values()]:
        _for_files(node, draft)
    schema["properties"] = {"defaults": {
        "description": "Parent recipe(s) this file inherits from, relative to this file; later "
                       "entries and this file win.",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }, **schema["properties"]}
    definitions["Interpolation"] = INTERPOLATION
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
        # Sections stay plain so editors point at the deepest wrong key, not at the section.
        if prop.get("type") != "string" and "$ref" not in repr(prop):
            node["properties"][name] = _allow_interpolation(prop, draft)


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
        node["additionalItems"] = False
        node.pop("maxItems", None)
        node.pop("minItems", None)
    if "properties" in node:
        _for_files(node, draft)
    for value in node.values():
        _walk(value, draft)
