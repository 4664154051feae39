"""GRPO pieces as pure tensor functions: group advantages and the clipped policy loss."""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, leave_one_out: bool,
                     normalize: bool, eps: float = 1e-6) -> torch.Tensor:
    """[P*G] rewards (groups contiguous) -> [P*G] advantages.

    Baseline: the group mean, or with `leave_one_out` the mean of the *other* G-1 samples.
    With `normalize`, divided by the group's standard deviation (unbiased)."""
    groups = rewards.view(-1, group_size)
    total = groups.sum(-1, keepdim=True)
    baseline = (total - groups) / (group_size - 1) if leave_one_out else total / group_size
    advantages = groups - baseline
    if normalize:
        advantages = advantages / (groups.std(-1, keepdim=True) + eps)
    return advantages.flatten()


def k3_kl(logprobs: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per-token non-negative estimate of KL(pi || other) from samples of pi (Schulman's k3):
    exp(other - logp) - (other - logp) - 1."""
    delta = other - logprobs
    return torch.exp(delta) - delta - 1


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                        advantages: torch.Tensor, clip_low: float, clip_high: float,
                        dual_clip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss [B, T] and a mask of tokens where clipping was active.
    `advantages` is [B] (one per sequence), broadcast over tokens."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    return loss, (clipped > unclipped).detach()
