"""GRPO with a pipeline-parallel vLLM engine (pipeline_parallel_size 2: two worker processes,
one per stage, each holding one of the head_dim-64 tiny Llama's two layers; the first stage also
holds the embedding, the last the norm and LM head). Merge-weight sync (every worker gets the
merged groups and keeps its stage's layers) and split-weight sync (every stage loads its layers'
share of the adapter) both keep gen_kl_error in bounds after an optimizer step, step 1 equals
the in-process TP=1 engine's for the same seeds, and no process outlives the run. The split run
then loses its last stage's worker to SIGKILL: the run stops with an error naming it. Two
training ranks share one such engine (NeMo RL's layout, one engine per tp x pp ranks)."""

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

STEPS = 2


@pytest.fixture(scope="module")
def pp_run(vllm_cache, hd64_model, hd64_adapter, tmp_path_factory):  # noqa: F811
    """(mode, pp, training ranks) -> (metrics rows, stdout + stderr, exit code, vLLM PP
    workers seen, the run's processes still alive after it, the pid of the worker it killed).
    One rank at pp 2 runs STEPS steps (split: then one stage's worker is SIGKILLed, so one
    engine start serves both checks); the others run one step."""
    runs: dict[tuple[str, int, int], tuple] = {}

    def run(mode: str, pp: int, ranks: int = 1):
        if (mode, pp, ranks) not in runs:
            tag = f"pp-{mode}-pp{pp}-ranks{ranks}"
            kill = (mode, pp, ranks) == ("split", 2, 1)
            runner = Runner(tmp_path_factory.mktemp(tag), vllm_cache)
            steps = 50 if kill else (STEPS if (pp, ranks) == (2, 1) else 1)
            args = [*_args(hd64_model, hd64_adapter, mode, 1, steps, tag),
                    f"policy.generation.vllm_cfg.pipeline_parallel_size={pp}",
                    f"cluster.gpus_per_node={ranks}",
                    f"policy.train_micro_batch_size={32 // ranks}"]
            runs[mode, pp, ranks] = watch_run(
                runner, args, tag, "Worker_PP",
                # The last stage: it samples, and holds the LM head.
                lambda rows, workers: next((pid for pid, title in workers.items()
                                            if "Worker_PP1" in title), None)
                if kill and len(rows) >= STEPS else None)
        return runs[mode, pp, ranks]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["merge", "split"])
def test_grpo_with_a_pp2_engine(mode, pp_run):
    rows, output, code, workers, _, _ = pp_run(mode, 2)
    # The split run goes on until its worker is killed (the last test).
    assert mode == "split" or code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert [r["step"] for r in rows][:STEPS] == list(range(1, STEPS + 1)), output[-3000:]
    assert workers == 2, output[-3000:]
    for row in rows[:STEPS]:
        # The engine loaded the base; the start adapter (step 1) and the updated policy
        # (step 2) reach both stages only through the sync: a stage left stale would put
        # step 1's gen_kl_error at ~4.
        assert abs(row["gen_kl_error"]) <= GEN_KL_BOUND[mode], row
        assert row["weight_sync_time_s"] > 0 and row["kl_to_reference"] > 0, row

    # The in-process TP=1 engine with the same adapter and seeds samples the same tokens, so
    # the trainer's step-1 numbers are equal.
    tp1_rows, tp1_output, tp1_code, tp1_workers, _, _ = pp_run("merge", 1)
    assert tp1_code == 0 and tp1_workers == 0, tp1_output[-3000:]
    assert_step1_equal(rows[0], tp1_rows[0])


@pytest.mark.slow
def test_merge_run_leaves_no_process(pp_run):
    rows, output, code, _, left, _ = pp_run("merge", 2)
    assert code == 0 and rows, output[-3000:]
    assert left == [], f"processes left behind: {left}"


@pytest.mark.slow
def test_two_ranks_share_one_pp2_engine(pp_run):
    """Two training ranks, one engine of two stages owned by rank 0 (two workers in all, not
    two per rank): step 1 equals two ranks each owning an in-process TP=1 engine (measured:
    bitwise equal)."""
    rows, output, code, workers, left, _ = pp_run("merge", 2, 2)
    assert code == 0 and "Traceback" not in output, output[-3000:]
    assert workers == 2, output[-3000:]
    assert abs(rows[0]["gen_kl_error"]) <= GEN_KL_BOUND["merge"], rows[0]
    assert left == [], f"processes left behind: {left}"
    ref, ref_output, ref_code, ref_workers, _, _ = pp_run("merge", 1, 2)
    assert ref_code == 0 and ref_workers == 0, ref_output[-3000:]
    assert_step1_equal(rows[0], ref[0])


@pytest.mark.slow
def test_a_killed_pipeline_stage_stops_the_run_and_is_named(pp_run):
    rows, output, code, _, left, victim = pp_run("split", 2)
    assert victim is not None and rows, output[-3000:]
    assert code == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert f"(pid {victim}) was killed by SIGKILL" in output, output[-3000:]
    assert output.count("error: vLLM worker VllmWorker-") == 1, output[-3000:]
    assert left == [], f"processes left behind: {left}"
