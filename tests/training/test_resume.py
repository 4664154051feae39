"""Crash safety: SIGKILL at random points, resume reproduces the uninterrupted losses exactly;
corrupt checkpoints are detected and skipped."""

import random
import signal
import time

import pytest

from tests.training.conftest import QUIET

SHORT = ["recipes/sft-tiny-dtensor-lora.yaml", "sft.max_num_steps=40", "sft.val_period=0",
         "sft.val_at_start=false", "checkpointing.save_period=3", "checkpointing.keep_top_k=2",
         *QUIET]


def _losses(runner, log_dir):
    return {r["step"]: r["loss"] for r in runner.metrics(log_dir) if "loss" in r}


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_uninterrupted(runner):
    runner.run("run", *SHORT, "logger.log_dir=logs/ref", "checkpointing.checkpoint_dir=ck/ref")
    reference = _losses(runner, "logs/ref")
    assert sorted(reference) == list(range(1, 41))
    rng = random.Random(1234)
    args = [*SHORT, "logger.log_dir=logs/killed", "checkpointing.checkpoint_dir=ck/killed"]
    kills = 0
    for _ in range(5):
        proc = runner.popen("run", *args)
        time.sleep(rng.uniform(2.5, 5.0))  # interpreter start + model build take ~2-3 s
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    runner.run("run", *args)
    assert kills >= 3, "the run finished before most kill points; lengthen it"
    resumed = _losses(runner, "logs/killed")
    assert resumed == reference


def test_corrupt_latest_checkpoint_falls_back_to_previous(runner):
    args = [*SHORT, "sft.max_num_steps=6", "logger.log_dir=logs/c",
            "checkpointing.checkpoint_dir=ck/c"]
    runner.run("run", *args)
    latest = runner.workdir / "ck/c/step_6/adapter.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    done = runner.run("run", *[a for a in args if "max_num_steps" not in a], "sft.max_num_steps=8")
    assert "corrupt or truncated" in done.stdout + done.stderr
    assert "resuming from ck/c/step_3" in done.stdout


def test_nonfinite_loss_stops_with_step_and_keeps_good_checkpoints(runner):
    done = runner.run("run", *SHORT, "logger.log_dir=logs/n", "checkpointing.checkpoint_dir=ck/n",
                      "checkpointing.save_period=1", "policy.optimizer.kwargs.lr=1e30",
                      "policy.max_grad_norm=null", check=False)
    assert done.returncode == 1
    assert "step " in done.stderr and "not finite" in done.stderr or "loss is nan" in done.stderr
    assert "Traceback" not in done.stderr
    from lora_rl.checkpoint import load_checkpoint

    for step_dir in (runner.workdir / "ck/n").glob("step_*"):
        ckpt = load_checkpoint(step_dir)
        assert all(t.isfinite().all() for t in ckpt.tensors["adapter"].values())


def test_nonfinite_steps_can_be_skipped_by_config(runner):
    done = runner.run("run", *SHORT, "sft.max_num_steps=5", "sft.on_nonfinite=skip",
                      "logger.log_dir=logs/s", "checkpointing.checkpoint_dir=ck/s",
                      "policy.optimizer.kwargs.lr=1e30", "policy.max_grad_norm=null")
    assert "update skipped (on_nonfinite: skip)" in done.stdout
    rows = runner.metrics("logs/s")
    assert len(rows) == 5 and rows[0]["skipped_step"] is False
    assert all(r["skipped_step"] for r in rows[1:])
