"""One run per run directory: a lock file in `logger.log_dir` and `checkpointing.checkpoint_dir`.

Two runs in one directory used to both exit 0, with duplicated steps in `metrics.jsonl` and
interleaved checkpoints. `lora-rl run` now takes `<dir>/.lora-rl.lock` for each of its output
directories before any rank starts, and a second run refuses, naming the holder.

The lock is an exclusive `flock` on the file, held by the launching process for the whole run,
and the file names the holder (pid, host, start time). A holder that dies loses its `flock`
with it, so on the same host a lock whose `flock` is free is stale whatever its pid says (a
recorded pid may since belong to another process): it is taken over, with a note. A lock
written on another host cannot be checked from here (a network file system may not share
`flock`): it is honoured until its holder releases it, or until the user deletes the file. A
run that ends (normally, by an error or Ctrl-C) empties the file, so an empty file is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lora_rl.errors import LoraRlError

if TYPE_CHECKING:
    from lora_rl.config.recipe import RecipeConfig

LOCK_NAME = ".lora-rl.lock"


class RunLockError(LoraRlError, RuntimeError):
    """Another run holds one of this run's directories."""


def _holder_text(holder: dict) -> str:
    started = holder.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) \
        if isinstance(started, (int, float)) else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{since}"


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        holder = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return {"pid": "?", "host": "?"}  # a torn or foreign file: held by an unknown run
    return holder if isinstance(holder, dict) else {"pid": "?", "host": "?"}


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _acquire(directory: Path, say: Callable[[str], None]) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockError(
                f"{directory} is in use by another run ({_holder_text(_read(fd))}); wait for it "
                "to finish, or give this run another logger.log_dir / "
                "checkpointing.checkpoint_dir") from None
        holder = _read(fd)
        host = socket.gethostname()
        if holder and holder.get("host") != host:
            raise RunLockError(
                f"{directory} is locked by a run on another host ({_holder_text(holder)}), "
                f"which cannot be checked from here; if that run is over, delete {path}")
        if holder:
            state = "no longer running" if not _pid_alive(holder.get("pid")) else \
                "not holding the lock (its pid was reused)"
            say(f"note: taking over the stale lock {path}: {_holder_text(holder)} is {state}")
        mine = {"pid": os.getpid(), "host": host, "started": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(mine).encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # empty before unlocking: the next run sees a free lock
    os.close(fd)  # closing drops the flock


@contextlib.contextmanager
def run_lock(directories: Iterable[Path],
             say: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock of every directory (deduplicated) for the duration of the block."""
    unique = list(dict.fromkeys(Path(d).resolve() for d in directories))
    held: list[int] = []
    try:
        for directory in unique:
            held.append(_acquire(directory, say))
        yield
    finally:
        for fd in reversed(held):
            _release(fd)


def hold_run_directories(cfg: RecipeConfig) -> contextlib.AbstractContextManager[None]:
    """The lock of a run's directories: its log directory and, when enabled, its checkpoints.
    Under an external torchrun every rank runs `lora-rl run`; rank 0 alone takes the lock."""
    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    dirs = [Path(cfg.logger.log_dir)]
    if cfg.checkpointing.enabled:
        dirs.append(Path(cfg.checkpointing.checkpoint_dir))
    return run_lock(dirs, say=lambda line: print(line, file=sys.stderr, flush=True))
