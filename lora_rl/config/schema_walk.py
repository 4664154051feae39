"""Walking the recipe's pydantic models: the keys a section accepts, the section models a
field holds, every model reachable from the root, and where each key lives.

One module for the schema error translation (`schema_errors`), the key hints (`key_hints`), the
schema export and the docs generator, so that none of them needs another's private helpers.
Torch-free and pydantic-only.
"""

from __future__ import annotations

import types
import typing
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lora_rl.config.diagnostics import KeyPath


def field_keys(model: type[BaseModel]) -> list[str]:
    """The YAML keys a section accepts (aliases where a field has one, e.g. `_v2`)."""
    return [info.alias or name for name, info in model.model_fields.items()]


def field_info(model: type[BaseModel], key: str) -> FieldInfo | None:
    """The field `key` names in `model`, by name or alias."""
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info
    return None


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The section models an annotation holds: itself, or inside Annotated, unions, lists,
    tuples and dicts."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if origin is typing.Annotated:
        return models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            found.extend(models_in(arg))
        return found
    return []


def all_models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """`root` and every section model reachable through its fields."""
    seen: list[type[BaseModel]] = []
    stack = [root]
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.append(model)
        for info in model.model_fields.values():
            stack.extend(models_in(info.annotation))
    return seen


@cache
def key_paths(root: type[BaseModel]) -> dict[str, tuple[KeyPath, ...]]:
    """key -> the section paths of `root` that have it (list items stepped over), shortest
    first."""
    found: dict[str, list[KeyPath]] = {}
    stack: list[tuple[type[BaseModel], KeyPath]] = [(root, ())]
    seen: set[type[BaseModel]] = set()
    while stack:
        model, path = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            key = info.alias or name
            found.setdefault(key, []).append(path)
            for child in models_in(info.annotation):
                stack.append((child, path + (key,)))
    return {key: tuple(sorted(paths, key=len)) for key, paths in found.items()}
