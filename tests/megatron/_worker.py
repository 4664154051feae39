"""One rank of a Megatron backend check, started by `conftest.run_ranks` (torchrun-style env).

    python tests/megatron/_worker.py MODEL_DIR TP PP RECOMPUTE OUT_DIR [TARGETS [EP [PEFT [SP]]]]

RECOMPUTE (0/1) turns on activation checkpointing; TARGETS, comma-separated `peft.target_modules`
(default: empty, i.e. the four fused modules); EP, `expert_model_parallel_size` (default 1);
PEFT, a JSON object of further `peft` fields (the LoRA variants: `{"use_dora": true}`); SP (0/1),
`sequence_parallel`.

Builds the backend with LoRA on a fixed batch and writes, from one rank, `result.pt`:
- `logits`: whole-vocabulary logits before training (LoRA B starts at zero, so = base model);
- `adapter0` / `adapter5`: the adapter (HF names) before step 1 and after step 5;
- `losses`, `grad_norms`: five SFT steps (AdamW, clipping), each data-parallel rank taking its
  share of the batch, micro-batches of one sequence;
- `resumed_losses`: steps 4-5 again after restoring the checkpoint taken after step 3;
- `generation_logprobs`, `logprobs`, `reference_logprobs`: the HF generation copy, the trained
  Megatron model and the reference policy (LoRA disabled) on the batch.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

warnings.filterwarnings("ignore")

from lora_rl.algorithms import backend_inputs  # noqa: E402
from lora_rl.backends.base import TokenBatch  # noqa: E402
from lora_rl.config.recipe import RecipeConfig  # noqa: E402
from lora_rl.training.runtime import start_runtime, stop_runtime  # noqa: E402


def fixed_batch(vocab: int) -> TokenBatch:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (4, 12), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, 9:] = 0  # right padding
    loss_mask = attention.clone()
    loss_mask[:, :5] = 0  # a "prompt" that is not trained on
    return TokenBatch(ids, attention, loss_mask)


def recipe(model_dir: str, tp: int, pp: int, recompute: bool, world: int,
           targets: list[str], ep: int = 1, peft: dict | None = None,
           sp: bool = False) -> RecipeConfig:
    return RecipeConfig.model_validate({
        "sft": {"max_num_steps": 5, "seed": 7},
        "policy": {
            "model_name": model_dir, "precision": "float32",
            "train_global_batch_size": 4, "train_micro_batch_size": 1,
            "dtensor_cfg": {"enabled": False},
            "megatron_cfg": {
                "enabled": True, "tensor_model_parallel_size": tp,
                "pipeline_model_parallel_size": pp, "activation_checkpointing": recompute,
                "expert_model_parallel_size": ep, "sequence_parallel": sp,
                "optimizer": {"lr": 1e-2, "weight_decay": 0.01, "clip_grad": 1.0},
                "peft": {"enabled": True, "dim": 4, "alpha": 8, "target_modules": targets,
                         **(peft or {})},
            },
        },
        "cluster": {"gpus_per_node": world},
    })


def whole_logits(backend, batch: TokenBatch) -> torch.Tensor | None:
    """Vocab-parallel logits gathered over tp, on the last stage (None elsewhere); pipeline
    stages hand their hidden states [L, B, hidden] on by plain send/recv."""
    from megatron.core import parallel_state

    from lora_rl.backends.megatron.schedule import model_inputs

    layout = backend.layout
    with backend.eval_mode():
        if not layout.first_stage:
            size, length = batch.input_ids.shape
            hidden = torch.empty(length // (layout.tp if layout.sp else 1), size,
                                 backend.shape.hidden_size)
            dist.recv(hidden, src=parallel_state.get_pipeline_model_parallel_prev_rank())
            backend.model.set_input_tensor(hidden)
        output = backend.model(*model_inputs(batch, layout))
    if not layout.last_stage:
        dist.send(output.contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank())
        return None
    parts = [torch.empty_like(output) for _ in range(backend.layout.tp)]
    dist.all_gather(parts, output.contiguous(), group=backend.layout.tp_group)
    return torch.cat(parts, dim=-1)[..., : backend.shape.vocab_size]


def train_steps(backend, batch: TokenBatch, steps: int) -> tuple[list[float], list[float]]:
    tokens = float(batch.target_mask.sum())
    size, rank = backend.dp_size, backend.dp_rank
    mine = range(rank * 4 // size, (rank + 1) * 4 // size)
    micro = [TokenBatch(batch.input_ids[i:i + 1], batch.attention_mask[i:i + 1],
                        batch.loss_mask[i:i + 1]) for i in mine]

    def loss_fn(logprobs, part):
        nll = -(logprobs * part.target_mask).sum()
        return nll / tokens, {"nll": float(nll.detach())}

    losses, norms = [], []
    for _ in range(steps):
        metrics = backend.forward_backward(micro, loss_fn)
        (nll,) = backend.all_reduce_sum([metrics["nll"]])
        losses.append(nll / tokens)
        norms.append(backend.optimizer_step().grad_norm)
    return losses, norms


def main(model_dir: str, tp: int, pp: int, recompute: bool, out_dir: str,
         targets: list[str], ep: int, peft: dict, sp: bool) -> None:
    runtime = start_runtime()
    from lora_rl.backends.megatron import MegatronBackend

    backend = MegatronBackend(
        backend_inputs(recipe(model_dir, tp, pp, recompute, runtime.world_size, targets, ep,
                              peft, sp)),
        runtime)
    batch = fixed_batch(backend.shape.vocab_size)
    result = {"logits": whole_logits(backend, batch),
              "adapter0": backend.checkpoint_tensors()["adapter"],
              "report": backend.trainable_report()}
    losses, norms = train_steps(backend, batch, 3)
    snapshot = backend.checkpoint_tensors(), backend.optimizer_meta()
    more, more_norms = train_steps(backend, batch, 2)
    result.update(losses=losses + more, grad_norms=norms + more_norms,
                  adapter5=backend.checkpoint_tensors()["adapter"])
    backend.load_checkpoint_tensors(*snapshot)
    result["resumed_losses"] = train_steps(backend, batch, 2)[0]
    with backend.eval_mode():
        result["logprobs"] = backend.token_logprobs(batch)
        with backend.reference_policy():
            result["reference_logprobs"] = backend.token_logprobs(batch)
        with backend.generation_model() as hf:
            logits = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    result["generation_logprobs"] = torch.log_softmax(logits[:, :-1], -1).gather(
        -1, batch.input_ids[:, 1:, None])[..., 0]
    layout = backend.layout
    if layout.last_stage and layout.tp_rank == 0 and layout.dp_rank == 0:
        torch.save(result, Path(out_dir) / "result.pt")
    stop_runtime()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5],
         sys.argv[6].split(",") if len(sys.argv) > 6 and sys.argv[6] else [],
         int(sys.argv[7]) if len(sys.argv) > 7 else 1,
         json.loads(sys.argv[8]) if len(sys.argv) > 8 else {},
         len(sys.argv) > 9 and sys.argv[9] == "1")
