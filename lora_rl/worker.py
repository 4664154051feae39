"""One rank of a run: join the process group, rebuild the validated recipe, run the algorithm.

Started by `lora_rl.launcher` (or by an external `torchrun -m lora_rl.worker RESOLVED.json`).
The recipe arrives as the launcher's resolved, validated JSON and is validated again here, so no
code path ever reads a raw dict.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lora_rl.config.recipe import RecipeConfig
from lora_rl.training.console import quiet_third_party_progress


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m lora_rl.worker RESOLVED_RECIPE.json", file=sys.stderr)
        return 2
    cfg = RecipeConfig.model_validate(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    return run_rank(cfg)


def run_rank(cfg: RecipeConfig) -> int:
    """Run this process's rank; returns the exit code. Expected failures print one clean line."""
    from lora_rl.algorithms import run_algorithm
    from lora_rl.checkpoint import CheckpointError
    from lora_rl.data.jsonl import DataError
    from lora_rl.lora import LoraMatchError
    from lora_rl.model_source import ModelSourceError
    from lora_rl.trackers import TrackerMissingError, require_trackers
    from lora_rl.training.runtime import start_runtime, stop_runtime
    from lora_rl.training.session import NonFiniteLossError

    runtime = start_runtime()
    try:
        require_trackers(cfg.logger)
        run_algorithm(cfg, runtime)
    except (DataError, ModelSourceError, CheckpointError, LoraMatchError, NonFiniteLossError,
            TrackerMissingError, ValueError) as exc:
        if runtime.is_main:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stop_runtime()
    return 0


if __name__ == "__main__":
    quiet_third_party_progress()
    sys.exit(main(sys.argv[1:]))
