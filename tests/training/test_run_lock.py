"""One run per run directory: a second run refuses naming the holder; a dead holder's lock is
taken over; a lock from another host is honoured."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lora_rl.run_lock import LOCK_NAME, RunLockError, run_lock
from tests.training.conftest import QUIET

HOLD = textwrap.dedent("""\
    import sys, time
    from pathlib import Path
    from lora_rl.run_lock import run_lock
    with run_lock([Path(sys.argv[1])]):
        print("held", flush=True)
        time.sleep(120)
""")


def _holder(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_with_the_holder_named(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunLockError) as caught, run_lock([tmp_path / "run"]):
            pass
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(caught.value)
    finally:
        holder.kill()
        holder.wait()


def test_dead_holders_lock_is_taken_over_and_a_finished_run_leaves_it_free(tmp_path):
    holder = _holder(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)  # no clean release: the file still names it
    holder.wait()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == holder.pid
    notes: list[str] = []
    with run_lock([tmp_path / "run"], say=notes.append):
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and f"pid {holder.pid}" in notes[0] and "stale" in notes[0]
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # released
    with run_lock([tmp_path / "run"], say=notes.append):
        pass
    assert len(notes) == 1  # a released lock is no stale lock


def test_lock_written_on_another_host_is_honoured(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere-7"}))
    with pytest.raises(RunLockError, match="another host.*elsewhere-7.*delete"), \
            run_lock([tmp_path / "run"]):
        pass


def test_every_directory_is_locked_and_released_on_error(tmp_path):
    holder = _holder(tmp_path / "ckpt")
    try:
        with pytest.raises(RunLockError), run_lock([tmp_path / "logs", tmp_path / "ckpt"]):
            pass
        # the first directory was released again when the second one was refused
        with run_lock([tmp_path / "logs"]):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_second_run_in_the_same_directory_refuses(runner):
    log_dir = runner.workdir / "logs" / "sft-tiny-dtensor-lora"
    holder = _holder(log_dir)
    args = ("run", "recipes/sft-tiny-dtensor-lora.yaml", "sft.max_num_steps=1",
            "sft.val_period=0", "sft.val_at_start=false", "checkpointing.enabled=false", *QUIET)
    try:
        done = runner.run(*args, check=False, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"in use by another run (pid {holder.pid} on host {socket.gethostname()}" in \
        done.stderr.replace("\n", " ")
    assert "Traceback" not in done.stderr
    assert not (log_dir / "metrics.jsonl").exists()
    # the holder died without releasing: the next run takes the lock over and trains
    done = runner.run(*args, timeout=300)
    assert "taking over the stale lock" in done.stderr
    assert len(runner.metrics("logs/sft-tiny-dtensor-lora")) == 1
