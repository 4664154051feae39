"""Turn pydantic's ValidationError into located diagnostics with did-you-mean hints."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from lora_rl.config.diagnostics import Diagnostic, KeyPath, Location, dotted
from lora_rl.config.yaml_source import SourceMap


def field_keys(model: type[BaseModel]) -> list[str]:
    """The YAML keys a section accepts (aliases where a field has one, e.g. `_v2`)."""
    return [info.alias or name for name, info in model.model_fields.items()]


def _field(model: type[BaseModel], key: str):
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info
    return None


def models_in(annotation: Any) -> list[type[BaseModel]]:
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


def model_at(root: type[BaseModel], path: KeyPath, data: Any) -> type[BaseModel] | None:
    """The section model that holds the keys at `path` (list indexes are stepped over)."""
    model: type[BaseModel] | None = root
    node = data
    for part in path:
        if isinstance(node, list) and isinstance(part, int):
            node = node[part] if part < len(node) else None
            continue
        if model is None:
            return None
        info = _field(model, str(part))
        if info is None:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        candidates = models_in(info.annotation)
        model = _pick(candidates, node)
    return model


def _pick(candidates: list[type[BaseModel]], node: Any) -> type[BaseModel] | None:
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    items = node if isinstance(node, list) else [node]
    keys = {k for item in items if isinstance(item, dict) for k in item}
    return max(candidates, key=lambda m: len(keys & set(field_keys(m))))


def _data_path(loc: tuple[Any, ...], data: Any, keep_last: bool) -> KeyPath:
    """pydantic's loc through the raw data: drops union-member and validator tags."""
    path: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif keep_last and index == len(loc) - 1:
            path.append(part)
    return tuple(path)


def locate(positions: SourceMap, path: KeyPath, prefer_key: bool) -> Location | None:
    """The position of `path`, or of its nearest written ancestor (for defaulted values)."""
    for depth in range(len(path), -1, -1):
        found = positions.get(path[:depth])
        if found is not None:
            # A block mapping/list "value" starts at its first child, lines below the key: the
            # key is the place to point at then.
            on_key_line = found.key is None or found.value.line == found.key.line
            return found.value if not prefer_key and depth == len(path) and on_key_line \
                else found.best
    return None


def did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
    "dict": "a mapping", "list": "a list", "NoneType": "null",
}


def _found(value: Any) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({_TYPE_WORDS.get(type(value).__name__, type(value).__name__)})"


def translate(exc: ValidationError, root: type[BaseModel], data: Any,
              positions: SourceMap) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    seen: set[tuple[str, KeyPath]] = set()
    for err in exc.errors(include_url=False):
        kind = err["type"]
        path = _data_path(err["loc"], data, keep_last=kind in ("missing", "extra_forbidden"))
        if (kind, path) in seen:
            continue
        seen.add((kind, path))
        out.append(_diagnostic(err, kind, path, root, data, positions))
    return out


def _diagnostic(err: dict, kind: str, path: KeyPath, root: type[BaseModel], data: Any,
                positions: SourceMap) -> Diagnostic:
    where = locate(positions, path, prefer_key=kind in ("extra_forbidden", "missing"))
    parent = dotted(path[:-1]) or "the top level"
    if kind == "extra_forbidden":
        key = str(path[-1])
        section = model_at(root, path[:-1], data)
        choices = field_keys(section) if section else []
        guess = did_you_mean(key, choices)
        fix = f"did you mean '{guess}'?" if guess else f"valid keys here: {', '.join(choices)}"
        return Diagnostic("LR001", "error", f"unknown key '{key}' in {parent}", path, where, fix)
    if kind == "missing":
        return Diagnostic("LR003", "error", f"missing required key '{path[-1]}' in {parent}",
                          path, where, f"add `{path[-1]}:` to {parent}")
    message = f"{dotted(path) or 'recipe'}: {_expected(err)}, found {_found(err.get('input'))}"
    return Diagnostic("LR002", "error", message, path, where, _value_fix(err))


def _expected(err: dict) -> str:
    msg = err["msg"]
    for prefix in ("Input should be ", "Value error, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
            break
    return msg if err["type"] == "value_error" else f"expected {msg}"


def _value_fix(err: dict) -> str | None:
    ctx = err.get("ctx") or {}
    if err["type"] == "literal_error" and isinstance(err.get("input"), str):
        choices = [c.strip().strip("'") for c in str(ctx.get("expected", "")).replace(" or ", ",")
                   .split(",") if c.strip()]
        guess = did_you_mean(err["input"], choices)
        return f"did you mean '{guess}'?" if guess else f"use one of: {', '.join(choices)}"
    return None


