"""Recipe layering, in precedence order: `defaults:` parents -> the recipe file -> overrides.

Each layer carries the source position of every value, so a diagnostic can point into the
parent file a value was inherited from, or to the override that set it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lora_rl.config.diagnostics import Diagnostic, KeyPath, Location, RecipeError
from lora_rl.config.parent_guard import check_parent, parent_roots, reject_non_recipe
from lora_rl.config.yaml_source import Positions, SourceMap, parse_yaml, read_text

DEFAULTS_KEY = "defaults"
OVERRIDE_MARK = "_override_"


def display_name(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def load_layered(path: Path) -> tuple[dict[str, Any], SourceMap]:
    """Load a recipe and its `defaults:` ancestors, merged (later wins)."""
    return _load(path.resolve(), path, (), parent_roots(path))


def _load(resolved: Path, shown_path: Path, stack: tuple[Path, ...],
          roots: tuple[Path, ...]) -> tuple[dict, SourceMap]:
    shown = display_name(shown_path)
    text = read_text(shown_path)
    data, positions = parse_yaml(text, shown)
    if data is None:
        # The file was read: an empty recipe is an invalid recipe (exit 1), not an I/O error.
        raise _error("LR011", f"{shown} is empty (no YAML content, only blank lines or "
                     "comments)", Location(shown, 1, 1),
                     "start from `lora-rl recipes cp sft-tiny-dtensor-lora my.yaml`")
    if not isinstance(data, dict):
        raise _not_a_mapping(data, text, shown)
    merged: dict[str, Any] = {}
    merged_positions: SourceMap = {}
    for parent, where in _parents(data, positions, shown):
        parent_path = (resolved.parent / parent).resolve()
        if parent_path in stack or parent_path == resolved:
            chain = " -> ".join(display_name(p) for p in (*stack, resolved, parent_path))
            raise _error("LR006", f"defaults: cycle {chain}", where,
                         "remove one of the defaults: entries of the cycle")
        check_parent(parent, parent_path, roots, where)
        if not parent_path.is_file():
            raise _error("LR006", f"defaults: parent '{parent}' not found "
                         f"(looked for {display_name(parent_path)})", where,
                         "paths in defaults: are relative to the file that names them")
        parent_data, parent_positions = _load(parent_path, parent_path, (*stack, resolved), roots)
        reject_non_recipe(parent, parent_data, where)
        via = f"inherited through defaults: of {shown}"
        deep_merge(merged, merged_positions, parent_data, _mark(parent_positions, via))
    deep_merge(merged, merged_positions, data, positions)
    return merged, merged_positions


def _parents(data: dict, positions: SourceMap, shown: str) -> list[tuple[str, Location]]:
    value = data.pop(DEFAULTS_KEY, None)
    if value is None:
        return []
    where = positions.pop((DEFAULTS_KEY,)).value
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise _error("LR006", "defaults: must be a file name or a list of file names", where,
                     "e.g. `defaults: ../base/sft.yaml`")
    located = []
    for index, item in enumerate(items):
        item_pos = positions.pop((DEFAULTS_KEY, index), None)
        located.append((item, item_pos.value if item_pos else where))
    return located


def _mark(positions: SourceMap, via: str) -> SourceMap:
    def marked(loc: Location | None) -> Location | None:
        return loc if loc is None or loc.via else dataclasses.replace(loc, via=via)

    return {path: Positions(marked(p.key), marked(p.value)) for path, p in positions.items()}


def deep_merge(dst: dict, dst_pos: SourceMap, src: dict, src_pos: SourceMap,
               prefix: KeyPath = ()) -> None:
    """Merge `src` into `dst` (mappings merge key by key; anything else is replaced)."""
    _merge(dst, dst_pos, src, _group(src_pos.items(), prefix), prefix)


def _group(items: Any, prefix: KeyPath) -> dict[Any, SourceMap]:
    """Positions under `prefix`, by their next key (one pass, so merging stays linear)."""
    depth = len(prefix)
    groups: dict[Any, SourceMap] = {}
    for path, pos in items:
        if len(path) > depth and path[:depth] == prefix:
            groups.setdefault(path[depth], {})[path] = pos
    return groups


def _merge(dst: dict, dst_pos: SourceMap, src: dict, groups: dict[Any, SourceMap],
           prefix: KeyPath) -> None:
    for key, value in src.items():
        path = prefix + (key,)
        src_pos = groups.get(key, {})
        if isinstance(value, dict) and value.get(OVERRIDE_MARK) is True:
            # NeMo RL's `_override_: true`: replace the inherited section instead of merging.
            value = {k: v for k, v in value.items() if k != OVERRIDE_MARK}
            src_pos = {p: pos for p, pos in src_pos.items() if p != path + (OVERRIDE_MARK,)}
            if key in dst:
                _drop_subtree(dst_pos, path)
                del dst[key]
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            dst_pos[path] = src_pos.get(path, dst_pos.get(path))
            _merge(dst[key], dst_pos, value, _group(src_pos.items(), path), path)
            continue
        if isinstance(dst.get(key), (dict, list)):
            _drop_subtree(dst_pos, path)
        else:
            dst_pos.pop(path, None)
        dst[key] = _strip_override_marks(copy.deepcopy(value))
        dst_pos.update(src_pos)


def _strip_override_marks(value: Any) -> Any:
    """A section copied whole (nothing inherited to merge into) still drops its nested
    `_override_: true` marks: there is nothing for them to replace."""
    if isinstance(value, dict):
        if value.get(OVERRIDE_MARK) is True:
            del value[OVERRIDE_MARK]
        for child in value.values():
            _strip_override_marks(child)
    return value


def _drop_subtree(positions: SourceMap, path: KeyPath) -> None:
    for stale in [p for p in positions if p[: len(path)] == path]:
        del positions[stale]


def apply_overrides(data: dict, positions: SourceMap, overrides: Sequence[str]) -> None:
    """Apply Hydra-style overrides in order: `a.b=v` (set), `++a.b=v` (set), `+a.b=v` (add,
    key must be new), `~a.b` (delete). Values are YAML: `x=[q_proj,v_proj]`, `x=null`."""
    for index, text in enumerate(overrides, start=1):
        where = Location("<overrides>", index, 1, via=f"override {text!r}")
        op, key, raw = _split_override(text, where)
        path = tuple(part for part in key.split("."))
        if not key or any(part == "" for part in path):
            raise _error("LR007", f"override {text!r}: empty key name", where,
                         "write dotted keys like policy.dtensor_cfg.lora_cfg.dim=16")
        parent = _container(data, path, text, where, create=op != "~")
        leaf = _index(parent, path[-1])
        exists = leaf in parent if isinstance(parent, dict) else -len(parent) <= leaf < len(parent)
        path = _key_path(data, path)  # list indexes as ints, as the positions store them
        if op == "~":
            if not exists:
                raise _error("LR007", f"override {text!r}: there is no key {key} to delete",
                             where)
            del parent[leaf]
            _drop_subtree(positions, path)
            continue
        if op == "+" and exists:
            raise _error("LR007", f"override {text!r}: {key} already exists", where,
                         f"use {key}={raw} or ++{key}={raw} to replace it")
        try:
            value, value_pos = parse_yaml(raw, "<overrides>", via=f"override {text!r}")
        except RecipeError as exc:  # report it at the override, as the malformed override it is
            problem = "; ".join(d.message for d in exc.diagnostics)
            raise _error("LR007", f"override {text!r}: the value is not valid YAML ({problem})",
                         where, "quote the value, e.g. key='a: b', or write lists as [a,b]") \
                from None
        if raw == "":
            value = ""
        if isinstance(parent, list) and not exists:
            if leaf != len(parent):
                raise _error("LR007", f"override {text!r}: index {leaf} is past the end of a "
                             f"list of {len(parent)}", where, f"use index {len(parent)} to append")
            parent.append(None)
        _drop_subtree(positions, path)
        # Sections the override created (`++a.b.c=v` on a recipe without `a.b`) come from it too.
        positions.update({path[:depth]: Positions(where, where)
                          for depth in range(1, len(path)) if path[:depth] not in positions})
        positions[path] = Positions(where, where)
        positions.update({path + p: Positions(where, where) for p in value_pos})
        parent[leaf] = value


def _split_override(text: str, where: Location) -> tuple[str, str, str]:
    if text.startswith("~"):
        return "~", text[1:].split("=", 1)[0], ""
    op = "++" if text.startswith("++") else "+" if text.startswith("+") else "="
    body = text[len(op):] if op != "=" else text
    if "=" not in body:
        raise _error("LR007", f"override {text!r} is not key=value", where,
                     "e.g. policy.dtensor_cfg.lora_cfg.dim=16, ++key=value, ~key")
    key, raw = body.split("=", 1)
    return op, key.strip(), raw


def _key_path(data: dict, path: KeyPath) -> KeyPath:
    out: list[str | int] = []
    node: Any = data
    for part in path:
        step = _index(node, part) if isinstance(node, list) else part
        if isinstance(step, int) and step < 0:
            step += len(node)
        out.append(step)
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(out)


def _index(container: Any, part: str) -> Any:
    return int(part) if isinstance(container, list) and part.lstrip("-").isdigit() else part


def _container(data: dict, path: KeyPath, text: str, where: Location, create: bool) -> Any:
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        step = _index(node, part)
        if isinstance(node, dict):
            if step not in node or node[step] is None:
                if not create:
                    raise _error("LR007", f"override {text!r}: there is no key "
                                 f"{'.'.join(path[: depth + 1])}", where)
                node[step] = {}
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and -len(node) <= step < len(node):
            node = node[step]
        else:
            raise _error("LR007", f"override {text!r}: {'.'.join(path[: depth + 1])} is not a "
                         "mapping", where)
        if not isinstance(node, (dict, list)):
            raise _error("LR007", f"override {text!r}: {'.'.join(path[: depth + 1])} holds a "
                         "plain value, not a mapping", where)
    if isinstance(node, list) and not isinstance(_index(node, path[-1]), int):
        raise _error("LR007", f"override {text!r}: {'.'.join(path[:-1])} is a list; index it "
                     "with a number", where)
    return node


def _not_a_mapping(data: Any, text: str, shown: str) -> RecipeError:
    """A document that is a list or a single value, reported where its content starts."""
    line, column = 1, 1
    for number, content in enumerate(text.splitlines(), 1):
        stripped = content.strip()
        if stripped and not stripped.startswith(("#", "%", "---")):
            line, column = number, len(content) - len(content.lstrip()) + 1
            break
    if isinstance(data, list):
        return _error("LR004", f"a recipe is a mapping of sections (`sft:`, `policy:`, ...), "
                      f"but {shown} holds a list", Location(shown, line, column),
                      "write the sections as `key:` lines at the left margin, without '- '")
    return _error("LR004", f"a recipe is a mapping of sections (`sft:`, `policy:`, ...), but "
                  f"{shown} holds a single value ({data!r:.40})", Location(shown, line, column),
                  "write the recipe as `key: value` lines (a space after each colon); start "
                  "from `lora-rl recipes cp sft-tiny-dtensor-lora my.yaml`")


def _error(rule: str, message: str, where: Location | None, fix: str | None = None) -> RecipeError:
    path: KeyPath = (DEFAULTS_KEY,) if rule in ("LR006", "LR800", "LR801") else ()
    return RecipeError([Diagnostic(rule, "error", message, path, where, fix)])
