"""GRPO with a tensor-parallel vLLM engine (tensor_parallel_size 2, its workers in their own
processes) on a tiny Llama with head_dim 64 (the head size of real models; the tiny family
models' head_dim 16 has no vLLM CPU attention kernel): merge- and split-weight sync both run, keep
gen_kl_error within bounds after optimizer steps (a stale or mis-sharded sync would not), the
step-1 rollouts equal the in-process TP=1 engine's for the same seeds, and no worker process
outlives the run, also when Ctrl-C stops it (checkpointed). A worker killed mid-run stops the run
with an error naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch

from lora_rl.training.preemption import EXIT_PREEMPTED
from tests.training.conftest import QUIET, Runner

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                 reason="a TP 2 engine needs a CPU core per worker")]

STEPS = 2
GEN_KL_BOUND = {"split": 1e-3, "merge": 1e-2}


@pytest.fixture(scope="module")
def hd64_model(vllm_cache, tmp_path_factory) -> Path:
    """The tiny Llama's tokenizer and sizes with 2 heads of 64 (hidden 128), random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lora_rl.tiny.model import LM_HEAD_STD, build_tokenizer

    out = tmp_path_factory.mktemp("tiny-llama-hd64") / "model"
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        torch.nn.init.normal_(model.lm_head.weight, std=LM_HEAD_STD)
    assert model.config.hidden_size // model.config.num_attention_heads == 64
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def hd64_adapter(hd64_model, tmp_path_factory) -> Path:
    """A PEFT adapter with non-zero B (the recipe's LoRA shape): the policy then differs from
    the reference and every step pushes a gradient, so each sync carries new weights."""
    from tests.vllm.test_vllm_grpo import write_start_adapter

    return write_start_adapter(hd64_model, tmp_path_factory.mktemp("hd64-adapter") / "adapter")


def _args(model: Path, adapter: Path, mode: str, tp: int, steps: int, tag: str) -> list[str]:
    return ["recipes/grpo-tiny-dtensor-lora.yaml", f"policy.model_name={model}",
            "policy.generation.backend=vllm", f"policy.generation.lora_weight_sync={mode}",
            f"policy.generation.vllm_cfg.tensor_parallel_size={tp}",
            f"policy.init_adapter_path={adapter}", f"grpo.max_num_steps={steps}",
            "grpo.num_prompts_per_step=4", "policy.train_global_batch_size=32",
            "policy.train_micro_batch_size=32", "grpo.val_at_start=false", "grpo.val_period=0",
            "checkpointing.save_period=1000", f"checkpointing.checkpoint_dir=ck/{tag}",
            f"logger.log_dir=logs/{tag}", *QUIET]


def _start(runner: Runner, args: list[str], tag: str) -> subprocess.Popen:
    """`lora-rl run` in a process group of its own (as a terminal's foreground job), output to
    files (a pipe left unread could fill up and stall the run)."""
    out = (runner.workdir / f"{tag}.out").open("w")
    err = (runner.workdir / f"{tag}.err").open("w")
    return subprocess.Popen(runner.command("run", *args), cwd=runner.workdir, env=runner.env,
                            stdout=out, stderr=err, text=True, start_new_session=True)


def _output(runner: Runner, tag: str) -> tuple[str, str]:
    return ((runner.workdir / f"{tag}.out").read_text(),
            (runner.workdir / f"{tag}.err").read_text())


def _rows(runner: Runner, tag: str) -> list[dict]:
    path = runner.workdir / f"logs/{tag}/metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in runner.metrics(f"logs/{tag}") if "reward" in r]


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[int]:
    return [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def assert_step1_equal(row: dict, reference: dict) -> None:
    """The trainer's step-1 numbers, computed on the sampled tokens: equal (to the last bit,
    measured) when both engines sampled the same tokens, moved by any different token."""
    for key in ("reward", "response_length", "kl_to_reference", "loss", "grad_norm"):
        assert row[key] == pytest.approx(reference[key], rel=1e-9, abs=1e-12), key


def watch_run(runner: Runner, args: list[str], tag: str, worker_title: str,
              pick_victim: Callable[[list[dict], dict[int, str]], int | None] | None = None
              ) -> tuple[list[dict], str, int, int, list[int], int | None]:
    """Run `lora-rl run` to its end (600 s at most), watching its processes: the vLLM workers
    are those whose title contains `worker_title` (vLLM retitles them "VLLM::Worker_TP<rank>"
    or "..._PP<stage>"). `pick_victim(metrics rows, workers by pid)` names a worker to SIGKILL,
    once. Returns (metrics rows, stdout + stderr, exit code, workers seen, the run's processes
    still alive after it, the killed worker's pid)."""
    proc = _start(runner, args, tag)
    family: dict[int, psutil.Process] = {}
    workers: dict[int, str] = {}
    victim = None
    deadline = time.monotonic() + 600
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            for child in _descendants(proc.pid):
                family.setdefault(child.pid, child)
                try:
                    title = " ".join(child.cmdline())
                    if worker_title in title:
                        workers[child.pid] = title
                except psutil.Error:
                    pass
            if pick_victim is not None and victim is None:
                victim = pick_victim(_rows(runner, tag), workers)
                if victim is not None:
                    psutil.Process(victim).send_signal(signal.SIGKILL)
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc.wait(timeout=60)
    time.sleep(1)
    stdout, stderr = _output(runner, tag)
    return (_rows(runner, tag), stdout + stderr, proc.returncode, len(workers),
            _alive(list(family.values())), victim)


@pytest.fixture(scope="module")
def tp_run(vllm_cache, hd64_model, hd64_adapter, tmp_path_factory):
    """(mode, tp) -> (metrics rows, stdout, stderr, exit code, the run's processes still alive
    after it), each run once per module. The split TP 2 run is stopped as a terminal's Ctrl-C
    stops it (SIGINT to its whole process group, vLLM workers included) once STEPS steps are
    logged; the others run their STEPS steps to the end."""
    runs: dict[tuple[str, int], tuple] = {}

    def run(mode: str, tp: int):
        if (mode, tp) not in runs:
            interrupt = (mode, tp) == ("split", 2)
            runner = Runner(tmp_path_factory.mktemp(f"grpo-{mode}-tp{tp}"), vllm_cache)
            tag = f"grpo-{mode}-tp{tp}"
            args = _args(hd64_model, hd64_adapter, mode, tp, 50 if interrupt else STEPS, tag)
            proc = _start(runner, args, tag)
            family: list[psutil.Process] = []
            deadline = time.monotonic() + 600
            try:
                while proc.poll() is None and time.monotonic() < deadline:
                    family += [p for p in _descendants(proc.pid) if p not in family]
                    if interrupt and len(_rows(runner, tag)) >= STEPS:
                        os.killpg(proc.pid, signal.SIGINT)
                        interrupt = False
                    time.sleep(0.2)
                proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
            time.sleep(1)
            stdout, stderr = _output(runner, tag)
            stopped = runner.workdir / "ck" / tag
            runs[mode, tp] = (_rows(runner, tag), stdout, stderr, proc.returncode,
                              _alive(family), stopped)
        return runs[mode, tp]

    return run


@pytest.mark.parametrize("mode", ["merge", "split"])
def test_grpo_with_a_tp2_engine(mode, tp_run):
    rows, stdout, stderr, code, left, _ = tp_run(mode, 2)
    expected = 0 if mode == "merge" else EXIT_PREEMPTED
    assert code == expected, (stdout + stderr)[-3000:]
    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    assert [r["step"] for r in rows[:STEPS]] == list(range(1, STEPS + 1))
    for row in rows:
        # The engine loaded the base from disk; the adapter reaches it only through the sync.
        # Without it (or with one shard left stale) step 1's gen_kl_error would be ~4 (the
        # start adapter is large); later steps sample after optimizer steps.
        assert abs(row["gen_kl_error"]) <= GEN_KL_BOUND[mode], row
        assert row["weight_sync_time_s"] > 0 and row["kl_to_reference"] > 0, row
    assert left == [], f"processes left behind: {left}"


def test_ctrl_c_checkpoints_with_the_tp_engine_and_leaves_no_process(tp_run):
    """SIGINT reaches the vLLM workers too (same process group); they ignore it, so the run
    finishes its step with them, checkpoints it, then closes the engine."""
    rows, stdout, stderr, code, left, checkpoints = tp_run("split", 2)
    assert code == EXIT_PREEMPTED, (stdout + stderr)[-3000:]
    last = rows[-1]["step"]
    assert f"stopped by SIGINT after step {last}" in stdout, stdout[-2000:]
    assert (checkpoints / f"step_{last}").is_dir()
    assert left == [], f"processes left behind: {left}"


@pytest.mark.parametrize("mode", ["merge", "split"])
def test_tp2_step1_rollouts_equal_the_tp1_engine(mode, tp_run):
    """Same adapter, same seeds: the sharded engine samples the in-process engine's tokens
    (split-weight too: the unmerged adapter gives the same samples here). The trainer's
    numbers at step 1 are computed on those tokens, so equal tokens make them equal to the
    last bit (measured: bitwise equal), and a different sampled token would move them."""
    tp2 = tp_run(mode, 2)[0]
    tp1 = tp_run("merge", 1)[0]
    assert_step1_equal(tp2[0], tp1[0])


@pytest.mark.slow
def test_a_killed_worker_stops_the_run_and_is_named(vllm_cache, hd64_model, hd64_adapter,
                                                   tmp_path_factory):
    runner = Runner(tmp_path_factory.mktemp("grpo-tp2-kill"), vllm_cache)
    proc = _start(runner, _args(hd64_model, hd64_adapter, "merge", 2, 50, "kill"), "kill")
    try:
        deadline = time.monotonic() + 600
        while not _rows(runner, "kill"):
            assert proc.poll() is None and time.monotonic() < deadline, _output(runner, "kill")
            time.sleep(0.2)
        family = _descendants(proc.pid)
        # vLLM retitles its workers "VLLM::Worker_TP<rank>".
        workers = [p for p in family if "Worker_TP" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in family]
        victim = workers[-1]
        victim.send_signal(signal.SIGKILL)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, stderr = _output(runner, "kill")
    assert proc.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert f"(pid {victim.pid}) was killed by SIGKILL" in stderr, stderr[-3000:]
    assert "error: vLLM worker VllmWorker-" in stderr, stderr[-3000:]
    time.sleep(2)
    assert _alive(family) == []
