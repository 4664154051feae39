"""Output directories (checkpoints, logs, exports, the tiny model) checked before anything loads.

A directory lora-rl writes must not be a file or lie under one, must be writable (probed with a
real file: root ignores permission bits but not read-only mounts or immutable directories), and
must not be the working directory or one of its parents, which a run would litter and an
`export --force` would replace. An existing output is replaced only with `--force`, and
`--force` replaces only an earlier lora-rl output, recognised by the marker file lora-rl writes
into it, or an empty directory (which needs no `--force`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lora_rl.errors import LoraRlError


class OutputPathError(LoraRlError, ValueError):
    pass


def deepest_existing(target: Path) -> Path:
    for candidate in (target, *target.parents):
        if candidate.exists():
            return candidate
    return Path(target.anchor)


def check_output_dir(path: Path | str, what: str, cwd: Path | None = None) -> Path:
    """`path` (relative to `cwd`), named `what` in errors (a recipe key or an option), resolved."""
    root = (cwd or Path.cwd()).resolve()
    target = (root / path).resolve()
    shown = f"{what} = {path}"
    if target == root or target in root.parents:
        where = "the working directory" if target == root else \
            f"{target}, a parent of the working directory"
        raise OutputPathError(f"{shown} is {where} {root if target != root else ''}".rstrip()
                              + "; lora-rl would write (or replace) files among yours there. "
                              "Use a subdirectory, e.g. results/run")
    existing = deepest_existing(target)
    if not existing.is_dir():
        if existing == target:
            raise OutputPathError(f"{shown}: {target} is a file, not a directory; choose "
                                  "another path or move the file away")
        raise OutputPathError(f"{shown}: {existing} is a file, so {target} cannot be created "
                              "under it; choose another path")
    try:
        handle, probe = tempfile.mkstemp(prefix=".lora-rl-probe-", dir=existing)
    except OSError as exc:
        raise OutputPathError(f"{shown}: cannot write in {existing} ({exc.strerror}); choose a "
                              f"writable directory or fix the permissions of {existing}") from None
    os.close(handle)
    os.unlink(probe)
    return target


def check_replaceable(target: Path, marker: str, what: str) -> None:
    """`--force` on an existing `target`: allowed only for an empty directory or one holding
    lora-rl's `marker` file (an earlier output of the same command)."""
    if not target.exists():
        return
    if target.is_dir() and (not any(target.iterdir()) or (target / marker).is_file()):
        return
    kind = "a directory that is not" if target.is_dir() else "a file, not"
    raise OutputPathError(f"{what} = {target} is {kind} an earlier lora-rl output (no {marker} "
                          "in it); --force only replaces those. Choose another path, or remove "
                          "it yourself if it should go")


def check_overwrite(target: Path, marker: str, what: str, force: bool) -> None:
    """An output directory `target` that exists (`export --out`, `init-model --out`): fine if
    empty; else replaced only with `force` and only if it is an earlier output (holds
    `marker`). Each refusal names the path and the fix."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    if force:
        check_replaceable(target, marker, what)
    elif target.is_dir() and (target / marker).is_file():
        raise OutputPathError(f"{what} = {target} exists (an earlier lora-rl output); pass "
                              "--force to replace it, or choose another folder")
    else:
        raise OutputPathError(f"{what} = {target} exists and is not an earlier lora-rl output "
                              f"(no {marker} in it); choose another folder, or remove it "
                              "yourself if it should go")
