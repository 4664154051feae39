"""What a cluster does to a 2-rank run (tensor parallel, gloo): a stop signal to the launcher,
SIGKILL to the launcher, SIGKILL to one rank. Afterwards no rank is left running, nothing
printed a traceback, and running the same command again ends with exactly the losses of an
uninterrupted run. SIGTERM/SIGINT/SIGHUP checkpoint the last completed step on the way out."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from lora_rl.training.preemption import EXIT_PREEMPTED
from tests.training.conftest import QUIET, Runner

RECIPE = "recipes/sft-tiny-dtensor-lora-tp2.yaml"
STEPS = 16
ARGS = [RECIPE, f"sft.max_num_steps={STEPS}", "sft.val_period=0", "sft.val_at_start=false",
        "checkpointing.save_period=5", *QUIET]


def _args(tag: str) -> list[str]:
    return [*ARGS, f"logger.log_dir=logs/{tag}", f"checkpointing.checkpoint_dir=ck/{tag}"]


def _losses(runner: Runner, tag: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in runner.metrics(f"logs/{tag}") if "loss" in r}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_cache) -> dict[int, float]:
    """The uninterrupted run every interrupted one is compared with."""
    runner = Runner(tmp_path_factory.mktemp("reference"), model_cache)
    runner.run("run", *_args("ref"))
    losses = _losses(runner, "ref")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def _wait_for_rows(runner: Runner, tag: str, rows: int, proc, timeout: float = 240) -> None:
    path = runner.workdir / f"logs/{tag}/metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"the run did not reach step {rows}")


def _running(pid: int) -> bool:
    """In /proc and not a zombie (a reaped-late zombie runs nothing)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


CASES = [
    ("SIGTERM", "launcher"),
    ("SIGINT", "launcher"),
    ("SIGHUP", "launcher"),
    ("SIGKILL", "launcher"),
    ("SIGKILL", "rank1"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("sig_name", "target"), CASES, ids=[f"{s}-{t}" for s, t in CASES])
def test_interrupted_run_leaves_nothing_running_and_resumes_exactly(runner, reference,
                                                                     sig_name, target):
    tag = "run"
    proc = runner.popen("run", *_args(tag))
    _wait_for_rows(runner, tag, 3, proc)
    ranks = sorted((p for p in psutil.Process(proc.pid).children(recursive=True)
                    if "lora_rl.worker" in " ".join(p.cmdline())),
                   key=lambda p: int(p.environ()["RANK"]))
    assert len(ranks) == 2
    victim = ranks[1].pid if target == "rank1" else proc.pid
    psutil.Process(victim).send_signal(getattr(signal, sig_name))
    stdout, stderr = proc.communicate(timeout=180)
    output = stdout + stderr
    deadline = time.monotonic() + 60
    while any(_running(p.pid) for p in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p.pid for p in ranks if _running(p.pid)], "a rank outlived the launcher"
    assert "Traceback" not in output, output[-3000:]

    if target == "rank1":
        assert proc.returncode == 1
        assert "error: rank 1 was killed by SIGKILL" in stderr
        assert "rank 0: stopping: another rank left the process group" in stderr \
            or "rank 0" not in stderr  # rank 0 may be stopped before its collective breaks
    elif sig_name != "SIGKILL":
        assert proc.returncode == EXIT_PREEMPTED, output[-3000:]
        last = max(_losses(runner, tag))
        assert f"stopped by {sig_name} after step {last}" in stdout
        from lora_rl.checkpoint import step_dirs

        assert step_dirs(runner.workdir / f"ck/{tag}")[-1][0] == last
    else:
        assert proc.returncode == -signal.SIGKILL

    runner.run("run", *_args(tag))
    assert _losses(runner, tag) == reference
