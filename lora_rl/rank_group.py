"""The ranks `lora-rl run` starts on one machine, watched until they all end.

- A stop signal to the launcher (SIGTERM from a scheduler, SIGINT from Ctrl-C, SIGHUP from a
  closed terminal) is forwarded to every rank as SIGTERM; the ranks finish their step,
  checkpoint it and exit with EXIT_PREEMPTED within `checkpointing.preemption_grace_s`. A second
  signal, or a rank still running after the grace period, is answered with SIGKILL.
- No rank outlives the launcher: each gets a parent-death signal (SIGTERM) before it runs a line
  of Python, and sits in its own process group, so a terminal's Ctrl-C reaches the launcher
  only and the ranks are told once, by it.
- A rank that fails is named with its exit code or signal and the last line it printed; the
  others are stopped. Ranks that only stopped because a peer vanished (EXIT_PEER_LOST) are never
  blamed when the rank that died is known.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lora_rl.training.preemption import (
    EXIT_PEER_LOST,
    EXIT_PREEMPTED,
    STOP_NOTE_ENV,
    STOP_SIGNALS,
    die_with_parent,
)

KILL_SLACK_S = 10.0
"""Beyond the grace period: interpreter exit, process-group teardown."""
SETTLE_S = 2.0
"""After one rank fails, how long the others may take to end by themselves."""
REPEAT_S = 0.5
"""A second signal within this is the same request delivered twice (`timeout`, Slurm and
`kill -- -PGID` signal the launcher's process group as well as the launcher); after it, a
second Ctrl-C means "stop now"."""


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    names = {EXIT_PREEMPTED: " (stopped by a signal)", EXIT_PEER_LOST: " (lost another rank)"}
    return f"exited with code {code}{names.get(code, '')}"


class RankGroup:
    def __init__(self, grace_s: float, stop_note: Path) -> None:
        self.grace_s = grace_s
        self.stop_note = stop_note
        """Where the ranks read which signal the launcher got (they are sent SIGTERM: a
        SIGINT before a rank's handlers are installed would be a KeyboardInterrupt)."""
        self.procs: list[subprocess.Popen] = []
        self.last_line: list[str] = []
        self._readers: list[threading.Thread] = []
        self._write_lock = threading.Lock()
        self.signum: int | None = None
        self._deadline = float("inf")
        self._first_signal_at = 0.0
        self._abandon = False

    # ---- starting -------------------------------------------------------------------------

    def start(self, command: list[str], env: dict[str, str]) -> None:
        # stdout stays the terminal when there is one (rich draws the progress bar there).
        pipe_out = not sys.stdout.isatty()
        env = {**env, STOP_NOTE_ENV: str(self.stop_note)}
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE,
                                stdout=subprocess.PIPE if pipe_out else None,
                                process_group=0, preexec_fn=die_with_parent)
        self.procs.append(proc)
        self.last_line.append("")
        if self.signum is not None:
            proc.send_signal(signal.SIGTERM)

    @contextlib.contextmanager
    def forwarding_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._kill_all()

    def _on_signal(self, signum: int, _frame: object) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum = signum
            self._first_signal_at = now
            self._deadline = now + self.grace_s + KILL_SLACK_S
            with contextlib.suppress(OSError):
                self.stop_note.write_text(signal.Signals(signum).name, encoding="utf-8")
            self._signal_all(signal.SIGTERM)
        elif now - self._first_signal_at > REPEAT_S:
            self._abandon = True

    # ---- watching -------------------------------------------------------------------------

    def watch(self) -> int:
        """Wait for the ranks; the run's exit code, with one line saying why when it failed."""
        for rank, proc in enumerate(self.procs):
            for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
                if stream is not None:
                    thread = threading.Thread(target=self._forward, args=(rank, stream, out),
                                              daemon=True)
                    thread.start()
                    self._readers.append(thread)
        try:
            return self._wait()
        finally:
            self._kill_all()
            for thread in self._readers:
                thread.join(timeout=5)

    def _wait(self) -> int:
        while True:
            codes = [proc.poll() for proc in self.procs]
            if self.signum is not None:
                if all(code is not None for code in codes):
                    return self._stopped(codes)
                if self._abandon or time.monotonic() > self._deadline:
                    self._kill_all()
                    why = ("a second signal" if self._abandon else
                           f"the grace period (checkpointing.preemption_grace_s = "
                           f"{self.grace_s:g} s)")
                    self._say(f"stopped by {signal.Signals(self.signum).name}: {why} ended the "
                              "wait; killed the ranks still running (checkpoints already "
                              "written are kept)")
                    return 128 + self.signum
            elif any(code not in (None, 0, EXIT_PREEMPTED) for code in codes):
                return self._failed(codes)
            elif all(code is not None for code in codes):
                return EXIT_PREEMPTED if EXIT_PREEMPTED in codes else 0
            time.sleep(0.1)

    def _stopped(self, codes: list[int]) -> int:
        if all(code in (0, EXIT_PREEMPTED) for code in codes):
            return EXIT_PREEMPTED  # rank 0 said where it stopped and what it saved
        odd = [(rank, code) for rank, code in enumerate(codes) if code not in (0, EXIT_PREEMPTED)]
        rank, code = odd[0]
        self._say(f"stopped by {signal.Signals(self.signum).name}; rank {rank} "
                  f"{describe_exit(code)}{self._last(rank)}")
        return EXIT_PREEMPTED

    def _failed(self, codes: list[int | None]) -> int:
        # Ranks failing on the same error (rank 0 printed it) end within moments of each other;
        # signalling them mid-exit would only add noise.
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(0.05)
        codes = [proc.poll() for proc in self.procs]
        if all(code == 1 for code in codes):
            return 1  # a clean failure on every rank: rank 0 said why
        failed = [(rank, code) for rank, code in enumerate(codes)
                  if code not in (None, 0, EXIT_PREEMPTED)]
        # The rank that died, not one that stopped because it lost it; then the lowest rank.
        rank, code = min(failed, key=lambda item: (item[1] == EXIT_PEER_LOST, item[1] >= 0,
                                                   item[0]))
        running = any(code is None for code in codes)
        self._say(f"error: rank {rank} {describe_exit(code)}{self._last(rank)}"
                  + ("; stopping the other ranks" if running else ""))
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + KILL_SLACK_S
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(0.1)
        return 1

    # ---- helpers --------------------------------------------------------------------------

    def _last(self, rank: int) -> str:
        line = self.last_line[rank].strip()
        return f"; its last line: {line[:300]}" if line else ""

    def _signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def _kill_all(self) -> None:
        self._signal_all(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def _say(self, line: str) -> None:
        with self._write_lock:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def _forward(self, rank: int, stream: IO[bytes], out: IO[str]) -> None:
        """Pass a rank's output through line by line (ranks never interleave within a line),
        keeping its last non-empty line for the error message."""
        sink = getattr(out, "buffer", None)
        for raw in iter(stream.readline, b""):
            text = raw.decode(errors="replace")
            pieces = [p for p in text.replace("\r", "\n").split("\n") if p.strip()]
            if pieces:
                self.last_line[rank] = pieces[-1]
            with self._write_lock:
                if sink is not None:
                    sink.write(raw)
                    sink.flush()
                else:
                    out.write(text)
                    out.flush()
        stream.close()
