"""log p(target) from logits without a [tokens, vocab] log-softmax tensor.

`log_softmax` + `gather` (or `cross_entropy`) keeps the whole log-softmax output for backward and
allocates two more vocabulary-wide tensors there (the scattered target gradient, then the
softmax gradient). Here forward keeps only the logits (which exist anyway) and one logsumexp per
token; backward builds the gradient, softmax * (-g) plus g at the target, in one buffer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from lora_rl.backends.base import TokenBatch


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(logits, lse, targets)
        return picked - lse

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, lse, targets = ctx.saved_tensors
        # d(picked - lse)/d(logits) = onehot(target) - softmax(logits)
        out = logits.sub(lse.unsqueeze(-1)).exp_().mul_(-grad.unsqueeze(-1))
        out.scatter_add_(-1, targets.unsqueeze(-1), grad.unsqueeze(-1).to(out.dtype))
        return out, None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[..., target] for logits [..., V] and integer targets [...], in the
    logits' dtype (cast the logits to float32 first for low-precision models)."""
    return _TokenLogprobs.apply(logits, targets)


def batch_token_logprobs(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """[B, L-1] float32 log p of each next token of `batch` under a Hugging Face causal LM:
    packed rows (`segment_ids`, data/packing.py) with positions restarting and attention kept
    inside each example, else the padded rows with their attention mask."""
    if batch.segment_ids is not None:
        from lora_rl.data.packing import packed_model_inputs

        mask, positions = packed_model_inputs(batch.segment_ids)
        logits = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=positions,
                       use_cache=False).logits
    else:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       use_cache=False).logits
    # Scored at every position (the last one against a dummy target) and trimmed after:
    # slicing the logits first would copy all of them.
    targets = F.pad(batch.input_ids[:, 1:], (0, 1))
    return token_logprobs(logits.float(), targets)[:, :-1]
