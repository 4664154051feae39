"""The DPO objective (sigmoid loss, Rafailov et al. 2023), as pure tensor functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lora_rl.backends.base import TokenBatch
from lora_rl.config.algorithms import DPOConfig


@dataclass
class PreferenceBatch(TokenBatch):
    """A training micro-batch of pairs: chosen rows stacked over rejected rows ([2P, L]), with
    the reference policy's response log-probs of each pair."""

    reference_chosen: torch.Tensor | None = None
    """[P] reference response log-probs of the chosen rows."""
    reference_rejected: torch.Tensor | None = None
    """[P] reference response log-probs of the rejected rows."""


def sequence_logprobs(token_logprobs: torch.Tensor, target_mask: torch.Tensor,
                      average: bool) -> torch.Tensor:
    """[B, L-1] token log-probs -> [B] response log-prob (sum, or mean over response tokens)."""
    total = (token_logprobs * target_mask).sum(-1)
    return total / target_mask.sum(-1).clamp(min=1) if average else total


def pair_logprobs(token_logprobs: torch.Tensor, target_mask: torch.Tensor,
                  average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """[2P, L-1] token log-probs of chosen-over-rejected rows -> ([P] chosen, [P] rejected)
    response log-probs."""
    seq = sequence_logprobs(token_logprobs, target_mask, average)
    half = seq.shape[0] // 2
    return seq[:half], seq[half:]


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
               reference_chosen: torch.Tensor, reference_rejected: torch.Tensor,
               beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair loss -log sigmoid(beta * (log-ratio chosen - log-ratio rejected)), and the
    implicit rewards beta * log(pi / pi_ref) of chosen and rejected."""
    chosen_reward = beta * (policy_chosen - reference_chosen)
    rejected_reward = beta * (policy_rejected - reference_rejected)
    losses = -F.logsigmoid(chosen_reward - rejected_reward)
    return losses, chosen_reward.detach(), rejected_reward.detach()


def dpo_loss(token_logprobs: torch.Tensor, batch: PreferenceBatch, *, cfg: DPOConfig,
             n_pairs: int) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's share of the step loss: preference_loss_weight * the sigmoid losses
    minus sft_loss_weight * the chosen responses' log-probs, summed over its pairs and divided
    by the step's `n_pairs` (all ranks); with the sums the step's metrics are made of."""
    mask = batch.target_mask
    chosen, rejected = pair_logprobs(token_logprobs, mask, cfg.preference_average_log_probs)
    losses, r_chosen, r_rejected = dpo_losses(chosen, rejected, batch.reference_chosen,
                                              batch.reference_rejected,
                                              cfg.reference_policy_kl_penalty)
    sft_chosen, _ = pair_logprobs(token_logprobs, mask, cfg.sft_average_log_probs)
    loss = (cfg.preference_loss_weight * losses.sum()
            - cfg.sft_loss_weight * sft_chosen.sum()) / n_pairs
    return loss, {"loss_sum": float(loss.detach()) * n_pairs,
                  "chosen_reward_sum": float(r_chosen.sum()),
                  "rejected_reward_sum": float(r_rejected.sum()),
                  "correct": float((r_chosen > r_rejected).sum()),
                  "margin_sum": float((r_chosen - r_rejected).sum())}
