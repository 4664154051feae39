"""Forward passes and Megatron's pipeline schedules for `TokenBatch`es.

Gradient accumulation always goes through `get_forward_backward_func` (no pipelining for one
stage, 1F1B otherwise); the algorithm's loss callback runs on the last stage, on per-token
log-probabilities computed from vocab-parallel logits without gathering the vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from lora_rl.backends.base import LossFn, TokenBatch
from lora_rl.backends.megatron.parallel import Layout, from_last_stage


def model_inputs(batch: TokenBatch, layout: Layout
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, position_ids, attention_mask). The mask is explicit (cpu_shim item 5):
    True where attention is blocked — future tokens and right padding. Under sequence
    parallelism the sequence is right-padded to a multiple of tp (each rank holds an equal
    part); callers drop the extra positions with `[:, :length - 1]`."""
    ids, attention = batch.input_ids, batch.attention_mask
    extra = -ids.shape[1] % layout.tp if layout.sp else 0
    if extra:
        ids, attention = F.pad(ids, (0, extra)), F.pad(attention, (0, extra))
    size, length = ids.shape
    positions = torch.arange(length).expand(size, length)
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    padding = attention[:, None, None, :] == 0
    return ids, positions, future[None, None] | padding


def _batch_logprobs(logits: torch.Tensor, ids: torch.Tensor, batch: TokenBatch, layout: Layout,
                    vocab_size: int) -> torch.Tensor:
    """`token_logprobs` of the (maybe padded) `ids`, cut to the batch's own [B, L-1]."""
    return token_logprobs(logits, ids, layout, vocab_size)[:, :batch.input_ids.shape[1] - 1]


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, layout: Layout,
                   vocab_size: int) -> torch.Tensor:
    """[B, L-1] log p(token t+1 | <= t) from logits split over tensor-parallel ranks by vocab."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    local = logits.shape[-1]
    padding_from = vocab_size - layout.tp_rank * local
    if padding_from < local:
        # Rows that only pad the vocabulary to a multiple of tp must get no probability.
        logits[..., max(padding_from, 0):] = float("-inf")
    # Whole (contiguous) logits with a wrapped-around target in the last column, dropped after:
    # the kernel needs contiguous logits, and slicing first would copy all of them.
    targets = input_ids.roll(-1, dims=1)
    return -vocab_parallel_cross_entropy(logits.float(), targets)[:, :-1]


def _forward_step(loss_fn: LossFn | None, layout: Layout, vocab_size: int):
    def step(batches: Iterator[TokenBatch], model: torch.nn.Module):
        batch = next(batches)
        inputs = model_inputs(batch, layout)
        output = model(*inputs)

        def loss(logits: torch.Tensor, non_loss_data: bool = False):
            logprobs = _batch_logprobs(logits, inputs[0], batch, layout, vocab_size)
            if non_loss_data:
                return logprobs
            value, metrics = loss_fn(logprobs, batch)
            # The 3-tuple form with calculate_per_token_loss leaves the loss unscaled.
            return value, torch.tensor(1, dtype=torch.int), metrics

        return output, loss

    return step


def _run(model: torch.nn.Module, layout: Layout, vocab_size: int, batches: list[TokenBatch],
         loss_fn: LossFn | None, forward_only: bool) -> list:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    return get_forward_backward_func()(
        forward_step_func=_forward_step(loss_fn, layout, vocab_size),
        data_iterator=iter(batches), model=[model], num_microbatches=len(batches),
        # Ignored under variable_seq_lengths: stages exchange each micro-batch's real shape.
        seq_length=batches[0].input_ids.shape[1], micro_batch_size=batches[0].input_ids.shape[0],
        forward_only=forward_only,
        collect_non_loss_data=loss_fn is None)


def forward_backward(model: torch.nn.Module, layout: Layout, vocab_size: int,
                     batches: list[TokenBatch], loss_fn: LossFn) -> dict[str, float]:
    """Accumulate gradients over `batches`; the summed metrics, on every stage."""
    totals: dict[str, float] = {}
    for metrics in _run(model, layout, vocab_size, batches, loss_fn, forward_only=False):
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    return from_last_stage(totals, layout)


def logprobs(model: torch.nn.Module, layout: Layout, vocab_size: int,
             batch: TokenBatch) -> torch.Tensor:
    """[B, L-1] on every stage. Differentiable with one stage; with several the pipeline runs
    forward-only (callers use it under no_grad: reference and rollout log-probabilities)."""
    if layout.pp == 1:
        inputs = model_inputs(batch, layout)
        return _batch_logprobs(model(*inputs), inputs[0], batch, layout, vocab_size)
    outputs = _run(model, layout, vocab_size, [batch], None, forward_only=True)
    return from_last_stage(outputs[0] if outputs else None, layout)
