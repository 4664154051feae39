"""One tensor-parallel vLLM engine shared by several training ranks (NeMo RL's layout: one engine
per tp ranks): two gloo training ranks and one tp=2 engine owned by rank 0, whose two workers
are the run's only vLLM workers (rank 1 starts none and hands rank 0 its requests). Merge- and
split-weight sync both run with gen_kl_error in bounds, step 1 equals the two-rank run whose
ranks each own an in-process TP=1 engine (same seeds), and no process outlives the run. The
split run then loses a worker to SIGKILL: both ranks stop, the error names the worker."""

from __future__ import annotations

import pytest

from tests.training.conftest import Runner
from tests.vllm.test_vllm_tp import (  # noqa: F401  (module fixtures)
    GEN_KL_BOUND,
    _args,
    assert_step1_equal,
    hd64_adapter,
    hd64_model,
    pytestmark,
    watch_run,
)

RANKS = 2


@pytest.fixture(scope="module")
def ranks_run(vllm_cache, hd64_model, hd64_adapter, tmp_path_factory):  # noqa: F811
    """(mode, tp) -> (metrics rows, stdout + stderr, exit code, vLLM TP workers seen, the
    run's processes still alive after it, the pid of the worker it killed): a GRPO run on two
    training ranks, one step; the split TP 2 run instead runs on until step 1 is logged, then
    one of its vLLM workers is SIGKILLed (one engine start serves both checks)."""
    runs: dict[tuple[str, int], tuple] = {}

    def run(mode: str, tp: int):
        if (mode, tp) not in runs:
            tag = f"ranks-{mode}-tp{tp}"
            kill = (mode, tp) == ("split", 2)
            runner = Runner(tmp_path_factory.mktemp(tag), vllm_cache)
            args = [*_args(hd64_model, hd64_adapter, mode, tp, 50 if kill else 1, tag),
                    f"cluster.gpus_per_node={RANKS}",
                    f"policy.train_micro_batch_size={32 // RANKS}"]
            runs[mode, tp] = watch_run(
                runner, args, tag, "Worker_TP",
                lambda rows, workers: max(workers) if kill and workers and rows else None)
        return runs[mode, tp]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["merge", "split"])
def test_two_ranks_share_one_tp2_engine(mode, ranks_run):
    rows, output, code, workers, left, _ = ranks_run(mode, 2)
    # The split run goes on until a worker is killed (the last test); merge runs its one step.
    assert mode == "split" or code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert [r["step"] for r in rows][:1] == [1], output[-3000:]
    # One engine for both ranks: tp workers in all (two engines would make 4).
    assert workers == 2, output[-3000:]
    row = rows[0]
    # The engine loaded the base; the start adapter reaches it only through the owner's sync
    # (without it gen_kl_error would be ~4).
    assert abs(row["gen_kl_error"]) <= GEN_KL_BOUND[mode], row
    assert row["weight_sync_time_s"] > 0 and row["kl_to_reference"] > 0, row
    assert left == [], f"processes left behind: {left}"

    # The same two ranks, each owning an in-process TP=1 engine: same seeds, same rollouts.
    # The trainer's step-1 numbers are computed on those tokens, so they are equal too.
    tp1_rows, tp1_output, tp1_code, tp1_workers, _, _ = ranks_run("merge", 1)
    assert tp1_code == 0 and tp1_workers == 0, tp1_output[-3000:]
    assert_step1_equal(row, tp1_rows[0])


@pytest.mark.slow
def test_a_killed_worker_of_the_shared_engine_stops_both_ranks(ranks_run):
    """The owner (rank 0) names the worker in one error line; rank 1, waiting for its
    results, gets the same error from it and stops with it (not later, as a rank that lost a
    peer, which the launcher would then blame); nothing is left running."""
    rows, output, code, _, left, victim = ranks_run("split", 2)
    assert victim is not None and rows, output[-3000:]
    assert code == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert f"(pid {victim}) was killed by SIGKILL" in output, output[-3000:]
    assert output.count("error: vLLM worker VllmWorker-") == 1, output[-3000:]
    assert "lost another rank" not in output, output[-3000:]
    assert left == [], f"processes left behind: {left}"
