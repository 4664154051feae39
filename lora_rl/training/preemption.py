"""Stopping a rank on request: SIGTERM, SIGINT or SIGHUP end it at a step boundary, checkpointed.

Schedulers (Slurm, Kubernetes) send SIGTERM on preemption or at a time limit, terminals send
SIGINT or SIGHUP, and a launcher that dies sends SIGTERM through the parent-death signal set
here. A rank notes the signal and finishes the step in progress; at the next step boundary all
ranks agree (one all-reduce, so they stop after the same step), the last completed step is
checkpointed unless it already is, and the rank exits with EXIT_PREEMPTED.

A watchdog thread bounds this by the grace period (`checkpointing.preemption_grace_s`): before
training starts there is nothing to save and the rank exits at once; once the grace period is
spent it exits without a checkpoint (the last one on disk is kept). The thread is woken through
`signal.set_wakeup_fd`, so it acts even while the main thread is blocked in a C++ collective,
where Python-level signal handlers do not run. This module imports nothing heavy: the worker
installs it before torch is imported, so an early signal never becomes a KeyboardInterrupt.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys
import threading
from typing import Any

EXIT_PREEMPTED = 75
"""Stopped on request (EX_TEMPFAIL): the run can be resumed by running the same command."""
EXIT_PEER_LOST = 76
"""Another rank disappeared, so the collectives of this one cannot go on."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


class _State:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.rank = int(os.environ.get("RANK", "0"))
        self.grace_s = 30.0
        self.training = False
        self.stopped = False
        self.installed = False
        self.parent_pid: int | None = None
        self.wakeup_fd: int | None = None
        self.done = threading.Event()
        self.lock = threading.Lock()


_state = _State()


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()
"""Loaded here, not in `die_with_parent`: that also runs between fork and exec."""


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux), so no rank
    outlives `lora-rl run` or torchrun, even one killed with SIGKILL."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def install(parent_pid: int | None = None, child: bool = True) -> None:
    """Catch the stop signals in this (main) thread and start the watchdog. `child`: this rank
    was started by a launcher (ours or torchrun) and dies with it. `parent_pid`: our launcher;
    if it is already gone (it died before the parent-death signal was set), stop."""
    if _state.installed:
        return
    _state.installed = True
    _state.parent_pid = parent_pid
    if child:
        die_with_parent()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    _state.wakeup_fd = write_fd
    for sig in STOP_SIGNALS:
        signal.signal(sig, _note_signal)
    threading.Thread(target=_watchdog, args=(read_fd,), name="lora-rl-stop",
                     daemon=True).start()
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def reassert() -> list[str]:
    """Put our stop handlers and wakeup fd back if a library (an inference engine) replaced
    them while it started; the names of the signals it had taken."""
    if not _state.installed:
        return []
    taken = [signal.Signals(sig).name for sig in STOP_SIGNALS
             if signal.getsignal(sig) is not _note_signal]
    for sig in STOP_SIGNALS:
        signal.signal(sig, _note_signal)
    if _state.wakeup_fd is not None and signal.set_wakeup_fd(
            _state.wakeup_fd, warn_on_full_buffer=False) != _state.wakeup_fd:
        taken.append("wakeup fd")
    return taken


def configure(grace_s: float) -> None:
    _state.grace_s = grace_s


def enter_training() -> None:
    """From here on a stop request is honoured at a step boundary, with a checkpoint."""
    reassert()
    _state.training = True


def requested() -> bool:
    return _state.signum is not None


STOP_NOTE_ENV = "LORA_RL_STOP_NOTE"
"""A file in which our launcher writes the signal it got before forwarding SIGTERM."""


def signal_name() -> str:
    note = os.environ.get(STOP_NOTE_ENV)
    if note:
        try:
            with open(note, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError:
            pass
    return signal.Signals(_state.signum).name if _state.signum else "a stop request"


def mark_stopped() -> None:
    """The ranks agreed to stop before the last step: the run exits with EXIT_PREEMPTED."""
    _state.stopped = True


def stopped() -> bool:
    return _state.stopped


def finished() -> None:
    """The rank is done (checkpoint written or not needed): the watchdog stands down."""
    _state.done.set()


def _note_signal(signum: int, _frame: Any) -> None:
    with _state.lock:
        if _state.signum is None:
            _state.signum = signum


def _say(line: str) -> None:
    # os.write: the watchdog may end the process while the main thread holds stdout's lock.
    os.write(2, (line + "\n").encode())


def _silence() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _watchdog(read_fd: int) -> None:
    while True:
        data = os.read(read_fd, 64)
        if not data:
            return
        if any(b in STOP_SIGNALS for b in data):
            break
    with _state.lock:
        if _state.signum is None:
            _state.signum = next(b for b in data if b in STOP_SIGNALS)
    if _state.parent_pid is not None and os.getppid() != _state.parent_pid:
        _silence()  # the launcher died: nobody reads our pipes, a print would raise EPIPE
    if not _state.training:
        if _state.rank == 0:
            _say(f"stopped by {signal_name()} before training started; nothing to save")
        os._exit(EXIT_PREEMPTED)
    if _state.done.wait(_state.grace_s):
        return
    _say(f"rank {_state.rank}: stopped by {signal_name()}; the grace period "
         f"(checkpointing.preemption_grace_s = {_state.grace_s:g} s) ran out before the "
         "checkpoint was written, exiting without it (the last one on disk is kept)")
    os._exit(EXIT_PREEMPTED)


PEER_LOST_MARKERS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
                     "Connection refused", "NCCL communicator was aborted")


def is_peer_failure(exc: BaseException) -> bool:
    """A collective broke because another rank is gone (gloo: connection reset or closed),
    as opposed to a bug in what was sent, which keeps its traceback."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistNetworkError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in PEER_LOST_MARKERS)


def peer_failure_reason(exc: BaseException) -> str:
    """gloo's message without its source location and advice: "Read error [127.0.0.1]:19638:
    Connection reset by peer"."""
    text = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", str(exc).strip())
    first = text.splitlines()[0] if text else type(exc).__name__
    return first.split(". ")[0][:200]


def agree_to_stop(runtime: Any) -> bool:
    """True on every rank when any rank was asked to stop (one all-reduce per step)."""
    reassert()  # an engine started since (vLLM) may have installed its own handlers
    local = requested()
    if not runtime.distributed:
        return local
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=runtime.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
