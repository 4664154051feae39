"""log p(target) from logits without a [tokens, vocab] log-softmax tensor.

`log_softmax` + `gather` (or `cross_entropy`) keeps the whole log-softmax output for backward and
allocates two more vocabulary-wide tensors there (the scattered target gradient, then the
softmax gradient). Here forward keeps only the logits (which exist anyway) and one logsumexp per
token; backward builds the gradient, softmax * (-g) plus g at the target, in one buffer.
"""

from __future__ import annotations

from typing import Any

import torch


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
