"""One rank of the Megatron export check, started by `conftest.run_ranks`.

    python tests/megatron/_export_worker.py MODEL_DIR CHECKPOINT TP PP OUT_FILE

Builds the Megatron backend at tp/pp with the checkpoint's LoRA config, restores the checkpoint
(the trained adapter as the Megatron model holds it) and writes, from the last stage's first
tensor-parallel rank, the whole-vocabulary logits of `TOKENS` (no padding) to OUT_FILE.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

from lora_rl.algorithms import backend_inputs  # noqa: E402
from lora_rl.backends.base import TokenBatch  # noqa: E402
from lora_rl.checkpoint import load_checkpoint  # noqa: E402
from lora_rl.config.recipe import RecipeConfig  # noqa: E402
from lora_rl.training.runtime import start_runtime, stop_runtime  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.megatron._worker import whole_logits  # noqa: E402

TOKENS = [[1, 9, 4, 10, 5, 13], [1, 7, 4, 8, 5, 11], [1, 12, 4, 3, 5, 14]]


def main(model_dir: str, checkpoint: str, tp: int, pp: int, out_file: str) -> None:
    runtime = start_runtime()
    from lora_rl.backends.megatron import MegatronBackend

    ckpt = load_checkpoint(Path(checkpoint))
    cfg = RecipeConfig.model_validate({
        "sft": {"max_num_steps": 1},
        "policy": {
            "model_name": model_dir, "precision": "float32",
            "train_global_batch_size": 1, "train_micro_batch_size": 1,
            "dtensor_cfg": {"enabled": False},
            "megatron_cfg": {"enabled": True, "tensor_model_parallel_size": tp,
                             "pipeline_model_parallel_size": pp,
                             "peft": ckpt.state["run"]["lora"]},
        },
        "cluster": {"gpus_per_node": runtime.world_size},
    })
    backend = MegatronBackend(backend_inputs(cfg), runtime)
    backend.load_checkpoint_tensors(ckpt.tensors, ckpt.state["optimizer_meta"])
    ids = torch.tensor(TOKENS)
    batch = TokenBatch(ids, torch.ones_like(ids), torch.ones_like(ids))
    logits = whole_logits(backend, batch)
    layout = backend.layout
    if layout.last_stage and layout.tp_rank == 0 and layout.dp_rank == 0:
        torch.save(logits, out_file)  # [batch, sequence, vocab], like HF
    stop_runtime()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
