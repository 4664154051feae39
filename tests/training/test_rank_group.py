"""The launcher's rank group and the ranks' stop handling, with stand-in ranks (no torch, a
second each): signals reach every rank, a dead rank is named with its signal and last line,
the grace period bounds a rank that does not stop, and no rank outlives the launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lora_rl.rank_group import describe_exit
from lora_rl.training.preemption import EXIT_PEER_LOST, EXIT_PREEMPTED, peer_failure_reason

REPO = Path(__file__).resolve().parents[2]

RANK = textwrap.dedent("""
    import os, sys, time
    from lora_rl.training import preemption
    preemption.install(parent_pid=int(os.environ["LORA_RL_LAUNCHER_PID"]))
    preemption.configure(float(os.environ["GRACE"]))
    mode = sys.argv[1]
    print(f"rank {os.environ['RANK']} pid {os.getpid()}", flush=True)
    if mode == "die":
        time.sleep(0.3)
        print("last words", flush=True)
        os.kill(os.getpid(), 9)
    if mode == "fail":  # every rank hits the same error; rank 0 reports it
        time.sleep(0.2 * int(os.environ["RANK"]))
        if os.environ["RANK"] == "0":
            print("error: the recipe cannot resume this checkpoint", file=sys.stderr)
        sys.exit(1)
    if mode == "hijacked":  # a library (an inference engine) takes the signals while starting
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
    if mode == "setup":  # loading a model: only the watchdog can end it (no polling to race it)
        time.sleep(1000)
    preemption.enter_training()
    if mode == "stuck":  # a step that never ends: only the grace period stops it
        time.sleep(1000)
    while not preemption.requested():
        time.sleep(0.05)
    print(f"rank {os.environ['RANK']} stopped by {preemption.signal_name()}", flush=True)
    preemption.finished()
    sys.exit(preemption.EXIT_PREEMPTED)
""")

LAUNCHER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from lora_rl.rank_group import RankGroup
    group = RankGroup(float(os.environ["GRACE"]), Path(sys.argv[1]))
    with group.forwarding_signals():
        for rank, mode in enumerate(sys.argv[2:]):
            env = {**os.environ, "RANK": str(rank), "LORA_RL_LAUNCHER_PID": str(os.getpid())}
            group.start([sys.executable, "-c", os.environ["RANK_SRC"], mode], env)
        print("started", flush=True)
        sys.exit(group.watch())
""")


def _launch(tmp_path: Path, *modes: str, grace: float = 5.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRACE": str(grace), "RANK_SRC": RANK}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path / "note"), *modes],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc


def _wait_ranks(proc: subprocess.Popen, count: int) -> list[int]:
    """The ranks' pids, read from their first line (passed through by the launcher)."""
    pids: list[int] = []
    deadline = time.monotonic() + 60
    while len(pids) < count and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if " pid " in line:
            pids.append(int(line.split()[-1]))
    assert len(pids) == count
    time.sleep(0.3)
    return pids


def _gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stop_signal_reaches_every_rank_and_names_itself(tmp_path, sig):
    proc = _launch(tmp_path, "train", "train")
    pids = _wait_ranks(proc, 2)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_PREEMPTED, stderr
    for rank in (0, 1):
        assert f"rank {rank} stopped by {sig.name}" in stdout
    assert "Traceback" not in stdout + stderr
    assert _gone(pids)


def test_handlers_taken_by_a_library_are_put_back_when_training_starts(tmp_path):
    proc = _launch(tmp_path, "hijacked")
    _wait_ranks(proc, 1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_PREEMPTED, stderr
    assert "rank 0 stopped by SIGTERM" in stdout


def test_the_same_signal_twice_at_once_is_one_request(tmp_path):
    # `timeout`, Slurm and `kill -- -PGID` signal the launcher and its process group.
    proc = _launch(tmp_path, "train")
    _wait_ranks(proc, 1)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_PREEMPTED
    assert "second signal" not in stderr


def test_a_second_ctrl_c_kills_at_once(tmp_path):
    proc = _launch(tmp_path, "stuck", grace=60)
    pids = _wait_ranks(proc, 1)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT
    assert "a second signal ended the wait" in stderr
    assert _gone(pids)


def test_dead_rank_is_named_with_signal_and_last_line(tmp_path):
    proc = _launch(tmp_path, "train", "die")
    pids = _wait_ranks(proc, 2)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert ("error: rank 1 was killed by SIGKILL; its last line: last words; stopping the other "
            "ranks") in stderr
    assert _gone(pids)


def test_a_failure_every_rank_reports_alike_is_not_repeated_by_the_launcher(tmp_path):
    proc = _launch(tmp_path, "fail", "fail")
    _wait_ranks(proc, 2)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert stderr.strip() == "error: the recipe cannot resume this checkpoint"


def test_ranks_die_with_a_killed_launcher(tmp_path):
    proc = _launch(tmp_path, "train", "train")
    pids = _wait_ranks(proc, 2)
    proc.kill()
    proc.communicate(timeout=30)
    assert _gone(pids), "a rank outlived its launcher"


def test_grace_period_bounds_a_rank_that_does_not_stop(tmp_path):
    proc = _launch(tmp_path, "stuck", grace=1.0)
    pids = _wait_ranks(proc, 1)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert proc.returncode == EXIT_PREEMPTED
    assert "grace period (checkpointing.preemption_grace_s = 1 s) ran out" in stderr
    assert _gone(pids)


def test_signal_before_training_exits_at_once_with_nothing_to_save(tmp_path):
    proc = _launch(tmp_path, "setup", grace=60)
    pids = _wait_ranks(proc, 1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_PREEMPTED
    assert "stopped by SIGTERM before training started; nothing to save" in stderr
    assert _gone(pids)


def test_exit_descriptions():
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(EXIT_PREEMPTED).endswith("(stopped by a signal)")
    assert describe_exit(EXIT_PEER_LOST).endswith("(lost another rank)")


def test_gloo_failure_reason_is_one_short_line():
    exc = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read "
                       "error [127.0.0.1]:19638: Connection reset by peer. This is typically "
                       "caused by a remote peer\nmore")
    assert peer_failure_reason(exc) == "Read error [127.0.0.1]:19638: Connection reset by peer"
