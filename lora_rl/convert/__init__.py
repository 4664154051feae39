"""`lora-rl convert`: move a recipe's LoRA block between the DTensor, Megatron and AReaL schemas.

`mapping` holds the tables (key names, module names, defaults) and `rewrite` edits the YAML.
This module reads the input, picks the direction, validates the output and reports.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_rl.convert.mapping import SCHEMAS, Loss, Schema
from lora_rl.errors import LoraRlError

__all__ = ["SCHEMAS", "ConvertError", "ConvertResult", "Loss", "convert_file", "convert_text"]


class ConvertError(LoraRlError):
    """Bad input: the message is one line, for the user."""


@dataclass
class ConvertResult:
    text: str
    source: str
    target: Schema
    losses: list[Loss] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    output_errors: list[str] = field(default_factory=list)
    """Validation errors of the converted recipe (empty when valid, or not a lora-rl recipe)."""
    validated: bool = False
    """True when the output is a lora-rl recipe and `lora-rl validate` ran on it."""


def convert_file(path: Path, target: Schema, out: Path | None = None) -> ConvertResult:
    """Convert `path`; write to `out` when given. Raises ConvertError for unusable input."""
    result = convert_text(path, target, out)
    if out is not None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(result.text, encoding="utf-8")
        except OSError as exc:
            raise ConvertError(f"cannot write {out}: {exc.strerror}") from None
    return result


def convert_text(path: Path, target: Schema, out: Path | None = None) -> ConvertResult:
    """The converted text of `path`, as it should read at `out` (default: beside `path`)."""
    from lora_rl.convert import rewrite

    yaml = rewrite.round_trip_yaml()
    doc = _load(yaml, path)
    edit = rewrite.Edit(doc)
    areal = rewrite.areal_block(doc)
    if areal is not None and "policy" not in doc:
        return _from_areal(yaml, edit, areal[0], target)
    cfg = _validated(path)
    source = rewrite.source_schema(cfg)
    if source is None:
        raise ConvertError(f"{path}: no LoRA block is enabled (neither "
                           "policy.dtensor_cfg.lora_cfg nor policy.megatron_cfg.peft)")
    if target == "areal":
        text = rewrite.dump(yaml, rewrite.to_areal(edit, cfg, source))
        return ConvertResult(text, source, target, edit.losses, edit.notes)
    if target == source:
        edit.notes.append(f"the LoRA block is already {target}'s; nothing to change")
    else:
        rewrite.to_backend(edit, cfg, source, target)
    _repoint_defaults(doc, path, out or path)
    text = rewrite.dump(yaml, doc)
    result = ConvertResult(text, source, target, edit.losses, edit.notes, validated=True)
    result.output_errors = _validate_text(yaml, doc, out or path)
    return result


def _from_areal(yaml: Any, edit: Any, block: Any, target: Schema) -> ConvertResult:
    from lora_rl.convert import rewrite

    if target == "areal":
        edit.notes.append("the file is already an AReaL config; nothing to change")
        return ConvertResult(rewrite.dump(yaml, edit.doc), "areal", target, [], edit.notes)
    fragment = rewrite.from_areal(edit, block, target)
    edit.notes.append("the output is a `policy:` fragment: merge it into a full recipe")
    return ConvertResult(rewrite.dump(yaml, fragment), "areal", target, edit.losses, edit.notes)


def _load(yaml: Any, path: Path) -> Any:
    from ruamel.yaml.error import YAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") \
            from None
    try:
        doc = yaml.load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConvertError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(doc, dict):
        raise ConvertError(f"{path}: not a recipe (a YAML mapping of sections)")
    return doc


def _validated(path: Path) -> Any:
    from lora_rl.config.validate import validate_recipe

    result = validate_recipe(path)
    if result.config is None:
        first = result.errors[0] if result.errors else None
        detail = f"{first.rule} {first.message}" if first else "it does not load"
        raise ConvertError(f"{path}: {detail} (see `lora-rl validate {path}`)")
    return result.config


def _repoint_defaults(doc: Any, source: Path, target: Path) -> None:
    """`defaults:` paths are relative to the file; keep them pointing at the same parents."""
    parents = doc.get("defaults")
    if parents is None or source.resolve().parent == target.resolve().parent:
        return
    items = [parents] if isinstance(parents, str) else parents
    moved = [_relative(source.resolve().parent / item, target.resolve().parent) for item in items]
    if isinstance(parents, str):
        doc["defaults"] = moved[0]
    else:
        parents[:] = moved


def _relative(path: Path, start: Path) -> str:
    # Relative while the two stay close (a checkout stays movable), absolute otherwise.
    try:
        relative = Path(os.path.relpath(path.resolve(), start)).as_posix()
    except ValueError:  # another drive on Windows
        return path.resolve().as_posix()
    return path.resolve().as_posix() if relative.startswith("../../") else relative


def _validate_text(yaml: Any, doc: Any, where: Path) -> list[str]:
    """Errors of the converted recipe, validated as a file beside `where` would be: a copy in
    a temporary directory with `defaults:` made absolute."""
    import copy

    from lora_rl.config.validate import validate_recipe
    from lora_rl.convert.rewrite import dump

    probe = copy.deepcopy(doc)
    with tempfile.TemporaryDirectory(prefix="lora-rl-convert-") as tmp:
        path = Path(tmp) / where.name
        parents = probe.get("defaults")
        if parents is not None:
            items = [parents] if isinstance(parents, str) else parents
            absolute = [(where.resolve().parent / item).resolve().as_posix() for item in items]
            probe["defaults"] = absolute[0] if isinstance(parents, str) else absolute
        path.write_text(dump(yaml, probe), encoding="utf-8")
        result = validate_recipe(path)
    return [f"{d.rule} {d.dotted_path}: {d.message}" for d in result.errors]
