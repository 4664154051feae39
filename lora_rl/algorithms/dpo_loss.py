"""The DPO objective (sigmoid loss, Rafailov et al. 2023), as pure tensor functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logprobs(token_logprobs: torch.Tensor, target_mask: torch.Tensor,
                      average: bool) -> torch.Tensor:
    """[B, L-1] token log-probs -> [B] response log-prob (sum, or mean over response tokens)."""
    total = (token_logprobs * target_mask).sum(-1)
    return total / target_mask.sum(-1).clamp(min=1) if average else total


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
               reference_chosen: torch.Tensor, reference_rejected: torch.Tensor,
               beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair loss -log sigmoid(beta * (log-ratio chosen - log-ratio rejected)), and the
    implicit rewards beta * log(pi / pi_ref) of chosen and rejected."""
    chosen_reward = beta * (policy_chosen - reference_chosen)
    rejected_reward = beta * (policy_rejected - reference_rejected)
    losses = -F.logsigmoid(chosen_reward - rejected_reward)
    return losses, chosen_reward.detach(), rejected_reward.detach()
