"""GRPO pieces as pure tensor functions: group advantages and the clipped policy loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lora_rl.backends.base import TokenBatch
from lora_rl.config.sections import LossFnConfig


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


@dataclass
class PolicyBatch(TokenBatch):
    """A training micro-batch with what the clipped loss needs per row / token."""

    advantages: torch.Tensor | None = None
    """[B] one advantage per sequence."""
    old: torch.Tensor | None = None
    """[B, L-1] log-probs before this step's update."""
    ref: torch.Tensor | None = None
    """[B, L-1] reference (adapter off) log-probs."""
    gen: torch.Tensor | None = None
    """[B, L-1] the generator's log-probs of the sampled tokens (float64)."""


def grpo_loss(logprobs: torch.Tensor, batch: PolicyBatch, *, cfg: LossFnConfig,
              token_count: float, seq_count: float) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's share of a minibatch's loss: the clipped policy loss plus
    `reference_policy_kl_penalty` x the k3 KL to the reference, per token; averaged over the
    minibatch's `token_count` response tokens (`token_level_loss`), or per sequence and then
    over its `seq_count` sequences. With the sums the step's metrics are made of."""
    mask = batch.target_mask
    pg, clipped = clipped_policy_loss(logprobs, batch.old, batch.advantages, cfg.ratio_clip_min,
                                      cfg.ratio_clip_max, cfg.ratio_clip_c)
    kl = k3_kl(logprobs, batch.ref)
    per_token = pg + cfg.reference_policy_kl_penalty * kl
    if cfg.token_level_loss:
        loss = (per_token * mask).sum() / token_count
    else:
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        loss = per_seq.sum() / seq_count
    # float64: generator and trainer agree to ~1e-6, whose KL (~d^2/2) fp32 rounds to zero or
    # to noise.
    gen_err = k3_kl(batch.gen, batch.old.double())
    return loss, {"loss": float(loss.detach()), "kl": float((kl.detach() * mask).sum()),
                  "clipped": float((clipped * mask).sum()),
                  "gen_kl_error": float((gen_err * mask).sum()),
                  "tokens": float(mask.sum())}
