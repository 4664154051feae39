"""Turn pydantic's ValidationError into located diagnostics with did-you-mean hints."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from lora_rl.config.diagnostics import Diagnostic, KeyPath, Location, dotted
from lora_rl.config.key_hints import KeyHint, hint
from lora_rl.config.schema_walk import all_models, field_info, field_keys, models_in
from lora_rl.config.yaml_errors import NO_SPACE_KEY
from lora_rl.config.yaml_source import SourceMap


def model_at(root: type[BaseModel], path: KeyPath, data: Any) -> type[BaseModel] | None:
    """The section model that holds the keys at `path` (list indexes are stepped over; in a
    list of a union of sections, each item is judged as the member it is meant to be)."""
    candidates: list[type[BaseModel]] = [root]
    discriminator: Any = None
    node = data
    for part in path:
        if isinstance(node, list) and isinstance(part, int):
            node = node[part] if part < len(node) else None
            continue
        model = _pick(candidates, node, discriminator)
        info = field_info(model, str(part)) if model is not None else None
        if info is None:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        candidates, discriminator = models_in(info.annotation), _discriminator(info.annotation)
    return _pick(candidates, node, discriminator)


def _discriminator(annotation: Any) -> tuple[Any, dict[str, type[BaseModel]]] | None:
    """(the callable that tells a union's members apart, {tag: member}) where the field
    declares one, as `policy.scheduler`'s items do."""
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in annotation.__metadata__:
            if callable(getattr(meta, "discriminator", None)):
                members = {}
                for member in typing.get_args(typing.get_args(annotation)[0]):
                    tags = [m.tag for m in getattr(member, "__metadata__", ()) if hasattr(m, "tag")]
                    models = models_in(member)
                    if tags and models:
                        members[tags[0]] = models[0]
                return meta.discriminator, members
    for arg in typing.get_args(annotation):
        found = _discriminator(arg)
        if found is not None:
            return found
    return None


def _pick(candidates: list[type[BaseModel]], node: Any,
          discriminator: tuple[Any, dict[str, type[BaseModel]]] | None = None
          ) -> type[BaseModel] | None:
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    if discriminator is not None and not isinstance(node, list):
        choose, members = discriminator
        chosen = members.get(choose(node))
        if chosen is not None:
            return chosen
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


def suggested_key(root: type[BaseModel], path: KeyPath, data: Any) -> str | None:
    """The key an unknown key at `path` most likely meant, in the same section."""
    return key_hint(root, path, data).key


def key_hint(root: type[BaseModel], path: KeyPath, data: Any) -> KeyHint:
    return hint(root, model_at(root, path[:-1], data), path[:-1], str(path[-1]))


def rejected_paths(diag: Diagnostic, root: type[BaseModel], data: Any) -> list[KeyPath]:
    """The values a schema error rejects: the wrong value itself; for an unknown key also the
    key it most likely meant (its default is not what the user chose); for a missing key the
    section that lacks it."""
    if diag.rule == "LR003":
        return [diag.path[:-1]]
    if diag.rule == "LR001":
        guess = suggested_key(root, diag.path, data)
        return [diag.path] + ([diag.path[:-1] + (guess,)] if guess else [])
    return [diag.path]


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
    for err in _best_union_branch(exc.errors(include_url=False), root, data):
        kind = err["type"]
        path = _data_path(err["loc"], data, keep_last=kind in ("missing", "extra_forbidden"))
        rule_kind = kind if kind in ("missing", "extra_forbidden") else "value"
        if (rule_kind, path) in seen:  # one wrong value, one error (`float | int` fails twice)
            continue
        seen.add((rule_kind, path))
        out.append(_diagnostic(err, kind, path, root, data, positions))
    # `milestone:` for `milestones:` is one mistake: the unknown key's did-you-mean says it all,
    # a "missing required key 'milestones'" next to it would be a second message for it.
    meant = {d.path[:-1] + (guess,) for d in out if d.rule == "LR001"
             for guess in [suggested_key(root, d.path, data)] if guess}
    return [d for d in out if not (d.rule == "LR003" and d.path in meant)]


def _union_tag(loc: tuple[Any, ...], data: Any) -> tuple[KeyPath, str, Any] | None:
    """(data path, member tag, data there) when `loc` goes through a union member's tag,
    e.g. ('policy', 'scheduler', 0, 'SchedulerStep', 'name')."""
    node, path = data, ()
    for part in loc[:-1]:
        if isinstance(node, dict) and part in node or \
                isinstance(node, list) and isinstance(part, int) and part < len(node):
            node, path = node[part], path + (part,)
        elif isinstance(part, str):
            return path, part, node
        else:
            return None
    return None


def _best_union_branch(errors: list[dict], root: type[BaseModel], data: Any) -> list[dict]:
    """Where a value matched no member of a union of sections (a scheduler list item is a
    SchedulerStep or a SchedulerMilestones), pydantic reports every member's errors; keep the
    errors of the member whose keys the value shares most, as a user would read it."""

    models = {m.__name__: m for m in all_models(root)}
    branches: dict[KeyPath, dict[str, int]] = {}
    tags = [_union_tag(err["loc"], data) for err in errors]
    for tag in tags:
        if tag is not None:
            path, name, node = tag
            keys = set(node) if isinstance(node, dict) else set()
            model = models.get(name)
            branches.setdefault(path, {})[name] = len(keys & set(field_keys(model))) \
                if model else -1
    chosen = {path: max(scores, key=lambda n: scores[n]) for path, scores in branches.items()}
    return [err for err, tag in zip(errors, tags, strict=True)
            if tag is None or chosen[tag[0]] == tag[1]]


def _diagnostic(err: dict, kind: str, path: KeyPath, root: type[BaseModel], data: Any,
                positions: SourceMap) -> Diagnostic:
    where = locate(positions, path, prefer_key=kind in ("extra_forbidden", "missing"))
    parent = dotted(path[:-1]) or "the top level"
    if kind == "extra_forbidden":
        key = str(path[-1])
        fix = key_hint(root, path, data).fix
        return Diagnostic("LR001", "error", f"unknown key '{key}' in {parent}", path, where, fix)
    if kind == "missing" and isinstance(path[-1], int):  # a fixed-length list is too short
        where = locate(positions, path[:-1], prefer_key=False)
        return Diagnostic("LR002", "error", f"{parent}: too few items (item [{path[-1]}] is "
                          "missing)", path[:-1], where, f"give {parent} all its items")
    if kind == "missing":
        return Diagnostic("LR003", "error", f"missing required key '{path[-1]}' in {parent}",
                          path, where, f"add `{path[-1]}:` to {parent}")
    message = f"{dotted(path) or 'recipe'}: {_expected(err)}, found {_found(err.get('input'))}"
    value = err.get("input")
    if kind in _MAPPING_ERRORS and not isinstance(value, (dict, list)) and path in positions:
        # A scalar where a section belongs (`lora_cfg:` with `dim:16` below it): the scalar is
        # the mistake, not the key above it.
        where = positions[path].value
    return Diagnostic("LR002", "error", message, path, where, _value_fix(err, path))


_MAPPING_ERRORS = ("dict_type", "model_type", "model_attributes_type")


def _expected(err: dict) -> str:
    if err["type"] in _MAPPING_ERRORS:  # pydantic names the section's class here
        return "expected a mapping of keys"
    msg = err["msg"]
    for prefix in ("Input should be ", "Value error, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
            break
    return msg if err["type"] == "value_error" else f"expected {msg}"


def _value_fix(err: dict, path: KeyPath) -> str | None:
    ctx = err.get("ctx") or {}
    if err["type"] == "literal_error" and isinstance(err.get("input"), str):
        choices = [c.strip().strip("'") for c in str(ctx.get("expected", "")).replace(" or ", ",")
                   .split(",") if c.strip()]
        # `LinearLR` for `torch.optim.lr_scheduler.LinearLR`: the short name of a dotted choice.
        short = [c for c in choices if c.rsplit(".", 1)[-1] == err["input"]]
        guess = short[0] if len(short) == 1 else did_you_mean(err["input"], choices)
        return f"did you mean '{guess}'?" if guess else f"use one of: {', '.join(choices)}"
    # Every wrong value gets a fix line: what to write instead.
    key = dotted(path) or "the recipe"
    value = err.get("input")
    if err["type"] in _MAPPING_ERRORS and isinstance(value, str) and NO_SPACE_KEY.match(value):
        name, rest = value.split(":", 1)
        return f"add a space after the colon: `{name}: {rest}` (without one, YAML reads " \
            f"'{value}' as a single string)"
    if err["type"] in _MAPPING_ERRORS:
        return f"write {key} as a mapping of keys (key: value lines)"
    msg = err["msg"]
    if msg.startswith("Input should be "):
        want = msg[len("Input should be "):].split(",")[0]
        if want.startswith(("greater", "less")):
            want = f"a number {want}"
        return f"set {key} to {want}"
    return None


