"""The SFT objective as pure tensor functions: cross-entropy on the response tokens."""

from __future__ import annotations

import torch

from lora_rl.backends.base import TokenBatch


def masked_nll_sum(token_logprobs: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """Summed negative log-likelihood of `batch`'s target tokens ([B, L-1] log-probs)."""
    return -(token_logprobs * batch.target_mask).sum()


def sft_loss(token_logprobs: torch.Tensor, batch: TokenBatch, *,
             global_tokens: int) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's share of the step loss: its summed NLL over the target tokens of the
    whole global batch (so the shares of all micro-batches and ranks add up to the mean), and
    that NLL sum (`nll_sum`) for the step's metrics."""
    nll = masked_nll_sum(token_logprobs, batch)
    return nll / global_tokens, {"nll_sum": float(nll.detach())}
