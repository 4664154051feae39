"""Crash-safe checkpoints: `step_N/` directories written atomically, verified on load.

A checkpoint is complete only when its `manifest.json` (sha256 of every file) exists: it is
written last, into a temporary directory that is then renamed into place. A SIGKILL at any
point leaves either the previous checkpoints untouched or a `.tmp-*` directory that is ignored
and removed at the next start (`remove_stale_temp_dirs`).
Loading verifies the checksums, reports a corrupt or truncated checkpoint, and falls back to
the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lora_rl.errors import LoraRlError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


class CheckpointError(LoraRlError, ValueError):
    """A checkpoint that cannot be used: resume skips it for the previous one."""


class CheckpointVersionError(CheckpointError):
    """A checkpoint written by a newer lora-rl: resume and export stop rather than skip it
    (an older checkpoint would silently undo the newer run's progress)."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    tensors: dict[str, dict[str, torch.Tensor]]
    """File stem -> tensors (e.g. "adapter", "optimizer", "rng")."""
    state: dict[str, Any]
    """JSON state: data position, scheduler, metrics, run metadata."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    found = []
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and child.name.startswith("step_") and child.name[5:].isdigit():
                found.append((int(child.name[5:]), child))
    return sorted(found)


def save_checkpoint(root: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]],
                    state: dict[str, Any]) -> Path:
    """Write `root/step_{step}` atomically; replaces an existing checkpoint of the same step."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files: dict[str, str] = {}
    for stem, group in tensors.items():
        target = tmp / f"{stem}.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in group.items()}, str(target))
        files[target.name] = _sha256(target)
    _write_json(tmp / "state.json", state)
    files["state.json"] = _sha256(tmp / "state.json")
    _write_json(tmp / MANIFEST, {"schema_version": SCHEMA_VERSION, "step": step, "files": files})
    _fsync_dir(tmp)
    if final.exists():
        trash = root / f".old-step_{step}-{os.getpid()}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(root)
    return final


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and verify one checkpoint directory. Raises CheckpointError saying what is wrong."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        step = int(manifest["step"])
    except FileNotFoundError:
        raise CheckpointError(f"{path}: incomplete (no {MANIFEST}; the write was "
                              "interrupted)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}/{MANIFEST} is unreadable: {exc}") from None
    version = manifest.get("schema_version", 1)
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise CheckpointVersionError(f"{path}/{MANIFEST} has schema_version {version}; this "
                                     f"lora-rl reads version {SCHEMA_VERSION} and older. Use "
                                     "the lora-rl that wrote it, or a new checkpoint_dir")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if _sha256(file) != expected:
            raise CheckpointError(f"{path}: {name} is corrupt or truncated (checksum mismatch)")
    tensors = {name[: -len(".safetensors")]: load_file(str(path / name))
               for name in files if name.endswith(".safetensors")}
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    return Checkpoint(path, step, tensors, state)


def restore_interrupted_replacements(root: Path) -> None:
    """A kill between the two renames that replace `step_N` leaves the old, complete checkpoint
    as `.old-step_N-<pid>` and no `step_N`: put it back rather than lose that step."""
    if not root.is_dir():
        return
    for child in root.iterdir():
        step = child.name.removeprefix(".old-step_").rpartition("-")[0]
        if child.name.startswith(".old-step_") and step.isdigit():
            final = root / f"step_{step}"
            if not final.exists():
                os.rename(child, final)


_TEMP_NAME = re.compile(r"^\.(tmp|old)-step_(\d+)-(\d+)$")


def _writer_alive(pid: int) -> bool:
    """A lora-rl process with this pid is running (one that might still be writing)."""
    if pid == os.getpid():
        return False
    try:
        return b"lora_rl" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def remove_stale_temp_dirs(root: Path) -> list[Path]:
    """Remove what interrupted writes left in `root`: `.tmp-step_N-PID` (a write killed before
    its rename) and `.old-step_N-PID` once `step_N` is back in place (a replacement killed
    before deleting the old copy). Only these names of lora-rl's own, never anything else, and
    not while the process that made them may still be writing. Call after
    `restore_interrupted_replacements`, which may still need an `.old-step_N`."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for child in sorted(root.iterdir()):
        match = _TEMP_NAME.match(child.name)
        if not match or not child.is_dir() or child.is_symlink():
            continue
        kind, step, pid = match.group(1), match.group(2), int(match.group(3))
        if kind == "old" and not (root / f"step_{step}").is_dir():
            continue
        if _writer_alive(pid):
            continue
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def latest_checkpoint(root: Path, warn: Any = print,
                      check: Callable[[Checkpoint], None] | None = None) -> Checkpoint | None:
    """The newest checkpoint under `root` that verifies (and passes `check`, which raises
    CheckpointError for content that does not fit); broken ones are reported and skipped. A
    CheckpointVersionError (written by a newer lora-rl) is raised, not skipped."""
    restore_interrupted_replacements(root)
    for _step, path in reversed(step_dirs(root)):
        try:
            found = load_checkpoint(path)
            if check is not None:
                check(found)
            return found
        except CheckpointVersionError:
            raise
        except CheckpointError as exc:
            warn(f"skipping checkpoint: {exc}")
    return None


def prune_checkpoints(root: Path, keep: int | None, metric_name: str | None,
                      higher_is_better: bool) -> list[Path]:
    """Keep `keep` checkpoints: the best by `metric_name` when all carry it, else the newest.
    The newest checkpoint is always kept, since resume needs it."""
    if keep is None:
        return []
    entries = step_dirs(root)
    if len(entries) <= keep:
        return []
    newest = entries[-1][1]

    def score(entry: tuple[int, Path]) -> float:
        try:
            metrics = json.loads((entry[1] / "state.json").read_text())["metrics"]
            value = float(metrics[metric_name])
        except (OSError, ValueError, KeyError, TypeError):
            return float("-inf")
        return value if higher_is_better else -value

    if metric_name:
        ranked = sorted(entries, key=lambda e: (score(e), e[0]), reverse=True)
    else:
        ranked = sorted(entries, key=lambda e: e[0], reverse=True)
    kept = {p for _, p in ranked[:keep]} | {newest}
    removed = [p for _, p in entries if p not in kept]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
