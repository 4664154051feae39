"""The CPU placement of a tensor-parallel vLLM engine's workers and the way a dead worker is
named (no vLLM needed: these are lora-rl's own helpers around vLLM's executor)."""

from __future__ import annotations

import multiprocessing
import os
import signal
from types import SimpleNamespace

import pytest

from lora_rl.errors import SetupError
from lora_rl.generation.vllm_processes import (
    VllmWorkerDiedError,
    WorkerWatch,
    check_workers,
    cpu_thread_binding,
    dead_worker,
)


def test_cpus_are_split_evenly_between_workers():
    assert cpu_thread_binding(2, {0, 1}) == "0|1"
    assert cpu_thread_binding(2, {4, 5, 6, 7, 8}) == "4,5|6,7"   # the spare CPU stays free
    assert cpu_thread_binding(1, {3, 1}) == "1,3"


def test_fewer_cpus_than_workers_is_a_clear_setup_error():
    with pytest.raises(SetupError, match="tensor_parallel_size=4 needs a CPU core per worker"):
        cpu_thread_binding(4, {0, 1})
    # Pipeline stages are workers too: tp 2 x pp 2 needs four cores.
    with pytest.raises(SetupError, match=r"pipeline_parallel_size=2 needs a CPU core per worker "
                                         r"\(4\)"):
        cpu_thread_binding(4, {0, 1, 2}, "tensor_parallel_size=2 x pipeline_parallel_size=2")


def _llm(procs, failed=False):
    executor = SimpleNamespace(workers=[SimpleNamespace(proc=p) for p in procs],
                               is_failed=failed)
    return SimpleNamespace(llm_engine=SimpleNamespace(
        engine_core=SimpleNamespace(engine_core=SimpleNamespace(model_executor=executor))))


def _sleeper() -> None:
    signal.pause()


def test_the_worker_that_died_is_named_with_its_signal():
    context = multiprocessing.get_context("fork")
    alive = context.Process(target=_sleeper, name="VllmWorker-0", daemon=True)
    victim = context.Process(target=_sleeper, name="VllmWorker-1", daemon=True)
    alive.start()
    victim.start()
    try:
        llm = _llm([alive, victim])
        assert dead_worker(llm) is None
        check_workers(llm, "generation")   # nothing ended: returns
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        assert dead_worker(llm) == f"VllmWorker-1 (pid {victim.pid}) was killed by SIGKILL"
        with pytest.raises(VllmWorkerDiedError, match=r"VllmWorker-1 .* during generation"):
            check_workers(llm, "generation", RuntimeError("cancelled"))
    finally:
        alive.kill()
        alive.join(10)


def test_a_failed_executor_without_a_dead_process_still_stops_the_run():
    with pytest.raises(VllmWorkerDiedError, match="a vLLM worker process ended"):
        check_workers(_llm([], failed=True), "weight sync")


def _exit_when_told(pipe) -> None:
    pipe.recv()


def test_the_watch_names_the_first_worker_to_die_not_the_peers_stopped_after_it():
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    peer = context.Process(target=_exit_when_told, args=(reader,), name="VllmWorker-0",
                           daemon=True)
    victim = context.Process(target=_sleeper, name="VllmWorker-1", daemon=True)
    peer.start()
    victim.start()
    watch = WorkerWatch([peer, victim])
    os.kill(victim.pid, signal.SIGKILL)
    first = watch.wait_first(timeout=10)
    writer.send("stop")          # the peer then exits cleanly, as vLLM's shutdown makes it
    peer.join(10)
    assert first == f"VllmWorker-1 (pid {victim.pid}) was killed by SIGKILL"
    with pytest.raises(VllmWorkerDiedError, match=r"VllmWorker-1 .*SIGKILL during weight sync"):
        check_workers(_llm([peer, victim]), "weight sync", watch=watch)
