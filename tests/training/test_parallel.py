"""Multi-process runs on gloo: FSDP2 (dp=2) and tensor parallel (tp=2) reproduce the
single-process loss curve; a rank that dies stops the whole run, naming the rank."""

import signal
import time

import psutil
import pytest

from tests.training.conftest import QUIET

TEN_STEPS = ["sft.max_num_steps=10", "sft.val_period=0", "sft.val_at_start=false",
             "checkpointing.enabled=false", *QUIET]


def _losses(runner, recipe, tag):
    runner.run("run", f"recipes/{recipe}", *TEN_STEPS, f"logger.log_dir=logs/{tag}")
    return [r["loss"] for r in runner.metrics(f"logs/{tag}")]


@pytest.mark.slow
def test_fsdp2_and_tp2_reproduce_single_process_losses(runner):
    single = _losses(runner, "sft-tiny-dtensor-lora.yaml", "single")
    fsdp = _losses(runner, "sft-tiny-dtensor-lora-fsdp2.yaml", "fsdp")
    tp = _losses(runner, "sft-tiny-dtensor-lora-tp2.yaml", "tp")
    assert len(single) == len(fsdp) == len(tp) == 10
    assert max(abs(a - b) for a, b in zip(single, fsdp, strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(single, tp, strict=True)) < 1e-4


@pytest.mark.slow
def test_dead_rank_stops_the_run_and_is_named(runner):
    proc = runner.popen("run", "recipes/sft-tiny-dtensor-lora-fsdp2.yaml",
                        "sft.max_num_steps=100000", "checkpointing.enabled=false", *QUIET)
    deadline = time.monotonic() + 60
    workers = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "lora_rl.worker" in " ".join(p.cmdline())]
        time.sleep(0.2)
    assert len(workers) == 2, "workers did not start"
    time.sleep(4)  # let them reach training
    victim = next(w for w in workers if "RANK" in w.environ() and w.environ()["RANK"] == "1")
    victim.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "rank 1 was killed by SIGKILL" in stderr
