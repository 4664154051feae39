"""Direct Preference Optimization with the reference policy = the base model, adapter off (full
fine-tuning: a frozen copy of the starting weights, see `backends.base.FrozenReference`).

Each micro-batch stacks chosen rows over rejected rows. Reference log-probs are computed once
per step (adapter disabled, dropout off) before the policy's forward/backward; the loss of a
step is the mean over all pairs of the global batch (`dpo_loss`).
"""

from __future__ import annotations

from functools import partial

import torch

from lora_rl.algorithms.base import Algorithm, StepMetrics, val_limit
from lora_rl.algorithms.dpo_loss import PreferenceBatch, dpo_loss, dpo_losses, pair_logprobs
from lora_rl.backends.base import TokenBatch
from lora_rl.config.algorithms import DPOConfig
from lora_rl.data.examples import Example
from lora_rl.data.samples import Sample
from lora_rl.data.sources import chunks, collate, rank_slice, rendered

Pair = tuple[Example, Example]

_SUMS = ("loss_sum", "chosen_reward_sum", "rejected_reward_sum", "correct", "margin_sum")


class DPO(Algorithm):
    algo: DPOConfig
    unit = "preference pairs"

    def prepare(self) -> list[Pair]:
        train = self._pairs(self.samples("train"))
        self.val_pairs = self._pairs(self.samples("val"))
        return train

    def _pairs(self, samples: list[Sample]) -> list[Pair]:
        return [(chosen, rejected) for chosen, rejected in
                rendered(self.renderer, samples, self.limits)]

    def _batch(self, pairs: list[Pair]) -> TokenBatch:
        return collate([c for c, _ in pairs] + [r for _, r in pairs], self.tokenizer.pad_token_id)

    def _reference(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        with self.backend.eval_mode(), self.backend.reference_policy():
            return pair_logprobs(self.backend.token_logprobs(batch), batch.target_mask,
                                 self.algo.preference_average_log_probs)

    def _with_reference(self, pairs: list[Pair]) -> PreferenceBatch:
        tokens = self._batch(pairs)
        chosen, rejected = self._reference(tokens)
        return PreferenceBatch(tokens.input_ids, tokens.attention_mask, tokens.loss_mask,
                               reference_chosen=chosen, reference_rejected=rejected)

    def train_step(self, pairs: list[Pair]) -> StepMetrics:
        n_pairs = len(pairs)
        mine = rank_slice(pairs, self.backend.dp_rank, self.backend.dp_size)
        micro = [self._with_reference(c)
                 for c in chunks(mine, self.cfg.policy.train_micro_batch_size)]
        sums = self.backend.forward_backward(micro, partial(dpo_loss, cfg=self.algo,
                                                            n_pairs=n_pairs))
        totals = dict(zip(_SUMS, self.backend.all_reduce_sum([sums[k] for k in _SUMS]),
                          strict=True))
        stats = self.backend.optimizer_step()
        return StepMetrics(totals["loss_sum"] / n_pairs, stats, {
            "rewards_chosen": totals["chosen_reward_sum"] / n_pairs,
            "rewards_rejected": totals["rejected_reward_sum"] / n_pairs,
            "accuracy": totals["correct"] / n_pairs,
            "margin": totals["margin_sum"] / n_pairs})

    def has_validation(self) -> bool:
        return bool(self.val_pairs)

    def validate(self) -> dict[str, float]:
        algo = self.algo
        limit = val_limit(len(self.val_pairs), algo.val_batches, algo.val_global_batch_size)
        mine = self.rank_share(self.val_pairs[:limit])
        loss, correct = 0.0, 0.0
        for chunk in chunks(mine, algo.val_micro_batch_size):
            batch = self._batch(chunk)
            ref_c, ref_r = self._reference(batch)
            with self.backend.eval_mode():
                pol_c, pol_r = pair_logprobs(self.backend.token_logprobs(batch),
                                             batch.target_mask, algo.preference_average_log_probs)
            losses, r_c, r_r = dpo_losses(pol_c, pol_r, ref_c, ref_r,
                                          algo.reference_policy_kl_penalty)
            loss += float(losses.sum())
            correct += float((r_c > r_r).sum())
        loss, correct, count = self.backend.all_reduce_sum([loss, correct, float(len(mine))])
        return {"val_loss": loss / count, "val_accuracy": correct / count}
