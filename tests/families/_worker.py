"""One rank of the family matrix: every family's 5 SFT steps on tp=2 and on FSDP2 (dp=2), in
one process group; rank 0 also runs each single-process reference (a world of one).

usage: python -m tests.families._worker OUT_DIR FAMILY=MODEL_DIR ...
Writes OUT_DIR/<family>-<variant>/metrics.jsonl (rank 0's logger).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lora_rl.algorithms import run_algorithm
from lora_rl.architecture import FAMILIES
from lora_rl.config.validate import load_config
from lora_rl.training.runtime import Runtime, start_runtime, stop_runtime

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft-tiny-dtensor-lora.yaml"
STEPS = ["sft.max_num_steps=5", "sft.val_period=0", "sft.val_at_start=false",
         "checkpointing.enabled=false", "logger.progress_bar=false"]


def _config(model_dir: str, log_dir: Path, tp: int, world: int):
    # 16 sequences per step: one micro-batch of 16 per data-parallel rank, or 8 each on two.
    micro = 16 * tp // world
    return load_config(RECIPE, [*STEPS, f"policy.model_name={model_dir}",
                                f"logger.log_dir={log_dir}",
                                f"policy.train_micro_batch_size={micro}",
                                f"policy.dtensor_cfg.tensor_parallel_size={tp}",
                                f"cluster.gpus_per_node={world}"])


def main(out: Path, families: dict[str, str]) -> None:
    runtime = start_runtime()
    single = Runtime(0, 1, 0, torch.device("cpu"))
    for family, model_dir in families.items():
        if runtime.rank == 0:
            run_algorithm(_config(model_dir, out / f"{family}-single", 1, 1), single)
        runtime.barrier()
        run_algorithm(_config(model_dir, out / f"{family}-fsdp2", 1, 2), runtime)
        if FAMILIES[family].tensor_parallel:
            run_algorithm(_config(model_dir, out / f"{family}-tp2", 2, 2), runtime)
    stop_runtime()


if __name__ == "__main__":
    main(Path(sys.argv[1]), dict(arg.split("=", 1) for arg in sys.argv[2:]))
