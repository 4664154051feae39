"""One rank of a run: join the process group, rebuild the validated recipe, run the algorithm.

Started by `lora_rl.launcher` (or by an external `torchrun -m lora_rl.worker RESOLVED.json`).
The recipe arrives as the launcher's resolved, validated JSON and is validated again here, so no
code path ever reads a raw dict.

Exit codes: 0 done, 1 failed with one line, EXIT_PREEMPTED (75) stopped by a signal after
checkpointing, EXIT_PEER_LOST (76) stopped because another rank disappeared.
"""

from __future__ import annotations

import os
import sys

# Before anything heavy is imported: a stop signal from here on is noted, never a traceback.
from lora_rl.training import preemption

if __name__ == "__main__":
    _launcher = os.environ.get("LORA_RL_LAUNCHER_PID")
    preemption.install(parent_pid=int(_launcher) if _launcher else None)

import json  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from lora_rl.config.recipe import RecipeConfig  # noqa: E402
from lora_rl.training.console import quiet_third_party_progress  # noqa: E402

if TYPE_CHECKING:
    from lora_rl.training.runtime import Runtime


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--joint":
        # A multi-adapter run: {"names": [...], "recipes": [resolved recipe, ...]}.
        joint = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
        return run_joint_rank([RecipeConfig.model_validate(r) for r in joint["recipes"]],
                              joint["names"])
    if len(argv) != 1:
        print("usage: python -m lora_rl.worker [--joint] RESOLVED_RECIPE.json", file=sys.stderr)
        return 2
    cfg = RecipeConfig.model_validate(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    return run_rank(cfg)


def run_rank(cfg: RecipeConfig) -> int:
    """Run this process's rank; returns the exit code. Expected failures print one clean line."""
    from lora_rl.algorithms import run_algorithm

    def body(runtime: Runtime) -> int:
        run_algorithm(cfg, runtime)
        return 0

    return _guarded([cfg], body)


def run_joint_rank(cfgs: Sequence[RecipeConfig], names: Sequence[str]) -> int:
    """A multi-adapter run (`algorithms.joint`; this process or one rank of it): exit code 1
    when any adapter failed, each failure reported with the adapter's name."""
    from lora_rl.algorithms.joint import run_joint

    return _guarded(cfgs, lambda runtime: run_joint(cfgs, names, runtime))


def _guarded(cfgs: Sequence[RecipeConfig], body: Callable[[Runtime], int]) -> int:
    # Already done when this process is `python -m lora_rl.worker`; under `torchrun -m lora_rl
    # run` (WORLD_SIZE set) it is a rank that dies with torchrun; alone it is the CLI itself.
    preemption.install(child="WORLD_SIZE" in os.environ)
    preemption.configure(max(cfg.checkpointing.preemption_grace_s for cfg in cfgs))
    try:
        return _run(cfgs, body)
    finally:
        preemption.finished()


def _run(cfgs: Sequence[RecipeConfig], body: Callable[[Runtime], int]) -> int:
    from lora_rl.errors import LoraRlError
    from lora_rl.trackers import require_trackers
    from lora_rl.training.runtime import start_runtime, stop_runtime

    runtime = start_runtime()
    try:
        for cfg in cfgs:
            require_trackers(cfg.logger)
        code = body(runtime)
    except LoraRlError as exc:  # expected (bad data, model, checkpoint, setup): one line
        if runtime.is_main:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        if not (runtime.distributed and preemption.is_peer_failure(exc)):
            raise
        reason = preemption.peer_failure_reason(exc)
        print(f"rank {runtime.rank}: stopping: another rank left the process group ({reason})",
              file=sys.stderr, flush=True)
        # Tearing down a group with a dead member can block; nothing is left to flush.
        sys.stdout.flush()
        os._exit(preemption.EXIT_PEER_LOST)
    finally:
        stop_runtime()
    if code:
        return code
    return preemption.EXIT_PREEMPTED if preemption.stopped() else 0


if __name__ == "__main__":
    quiet_third_party_progress()
    sys.exit(main(sys.argv[1:]))
