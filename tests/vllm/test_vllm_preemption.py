"""GRPO with vLLM engines in two ranks: SIGTERM to the launcher checkpoints the last completed
step and leaves no process behind (the engines run inside the ranks); the re-run ends with the
rewards and losses of an uninterrupted run."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from lora_rl.training.preemption import EXIT_PREEMPTED
from tests.training.conftest import QUIET, Runner
from tests.vllm.test_vllm_grpo import start_adapter  # noqa: F401 (fixture: a non-zero adapter)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ARGS = ["recipes/grpo-tiny-dtensor-lora.yaml", "policy.generation.backend=vllm",
        "policy.generation.lora_weight_sync=merge", "grpo.max_num_steps=6",
        "grpo.num_prompts_per_step=4", "cluster.gpus_per_node=2",
        "policy.train_global_batch_size=32", "policy.train_micro_batch_size=16",
        "grpo.val_at_start=false", "grpo.val_period=0", "checkpointing.save_period=100", *QUIET]


def _rows(runner: Runner, tag: str) -> dict[int, tuple[float, float, float]]:
    return {r["step"]: (r["reward"], r["loss"], r["kl_to_reference"])
            for r in runner.metrics(f"logs/{tag}") if "reward" in r}


def test_sigterm_checkpoints_and_the_rerun_matches(vllm_cache, start_adapter,  # noqa: F811
                                                   tmp_path_factory):
    def args(tag: str) -> list[str]:
        return [*ARGS, f"policy.init_adapter_path={start_adapter}",
                f"logger.log_dir=logs/{tag}", f"checkpointing.checkpoint_dir=ck/{tag}"]

    runner = Runner(tmp_path_factory.mktemp("vllm-preempt"), vllm_cache)
    runner.env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    runner.run("run", *args("ref"))
    reference = _rows(runner, "ref")
    assert sorted(reference) == list(range(1, 7))
    # The start adapter makes the policy differ from the reference on the sampled tokens, so
    # equal rows below mean equal samples and equal adapter weights, not just zeros.
    assert all(kl > 0 for _, _, kl in reference.values())

    proc = runner.popen("run", *args("cut"))
    metrics = runner.workdir / "logs/cut/metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    last = max(_rows(runner, "cut"))
    assert f"stopped by SIGTERM after step {last}" in stdout
    assert (runner.workdir / f"ck/cut/step_{last}").is_dir()
    time.sleep(2)
    assert not [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    runner.run("run", *args("cut"))
    assert _rows(runner, "cut") == reference
