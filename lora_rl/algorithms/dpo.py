"""Direct Preference Optimization with the reference policy = the base model, adapter off (full
fine-tuning: a frozen copy of the starting weights, see `backends.base.FrozenReference`).

Each micro-batch stacks chosen rows over rejected rows. Reference log-probs are computed once
per step (adapter disabled, dropout off) before the policy's forward/backward; the loss of a
step is the mean over all pairs of the global batch.
"""

from __future__ import annotations

from typing import Any

import torch

from lora_rl.algorithms.base import Algorithm
from lora_rl.algorithms.dpo_loss import dpo_losses, sequence_logprobs
from lora_rl.backends.base import TokenBatch
from lora_rl.config.algorithms import DPOConfig
from lora_rl.data.examples import Example
from lora_rl.data.order import DataOrder
from lora_rl.data.samples import Sample
from lora_rl.data.sources import (
    chunks,
    collate,
    limits,
    load_samples,
    load_tokenizer,
    rank_slice,
    rendered,
    renderer,
)
from lora_rl.data.tokenizer_export import tokenizer_state
from lora_rl.training.runtime import seed_step

Pair = tuple[Example, Example]


class DPO(Algorithm):
    algo: DPOConfig

    def setup(self) -> None:
        self.tokenizer = load_tokenizer(self.cfg)
        self.renderer = renderer(self.cfg, self.tokenizer)
        self.session.tokenizer_state = tokenizer_state(self.cfg, self.renderer)
        self.train_pairs = self._pairs(load_samples(self.cfg, "train"))
        self.val_pairs = self._pairs(load_samples(self.cfg, "val"))
        self.order = DataOrder(len(self.train_pairs), self.algo.seed, self.cfg.data.shuffle)
        self.start_step = self.session.resume(self.order)
        self.session.banner(f"{len(self.train_pairs)} preference pairs")

    def _pairs(self, samples: list[Sample]) -> list[Pair]:
        return [(chosen, rejected) for chosen, rejected in
                rendered(self.renderer, samples, limits(self.cfg))]

    def _batch(self, pairs: list[Pair]) -> TokenBatch:
        return collate([c for c, _ in pairs] + [r for _, r in pairs], self.tokenizer.pad_token_id)

    def _split(self, logprobs: torch.Tensor, batch: TokenBatch, average: bool):
        seq = sequence_logprobs(logprobs, batch.target_mask, average)
        half = seq.shape[0] // 2
        return seq[:half], seq[half:]

    def train(self) -> None:
        steps = self.algo.max_num_steps
        self.session.start_progress(self.start_step, steps)
        if self.algo.val_at_start and self.start_step == 0 and self.val_pairs:
            self.session.log(0, self.validate())
        step = self.start_step
        while step < steps:
            indices, epoch = self.order.next_batch(self.cfg.policy.train_global_batch_size)
            if epoch >= self.algo.max_num_epochs:
                break
            step += 1
            seed_step(self.algo.seed, step, self.runtime.rank)
            metrics = self._train_step([self.train_pairs[i] for i in indices])
            self.session.check_finite(step, metrics["loss"], metrics["skipped_step"])
            if self.algo.val_period and step % self.algo.val_period == 0 and self.val_pairs:
                metrics.update(self.validate())
            self.session.log(step, metrics)
            self.session.maybe_save(step)
            if self.session.stop_requested(step):
                break
        self.session.maybe_save(step, final=step > self.start_step)

    def _reference(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
        with self.backend.eval_mode(), self.backend.reference_policy():
            return self._split(self.backend.token_logprobs(batch), batch,
                               self.algo.preference_average_log_probs)

    def _train_step(self, pairs: list[Pair]) -> dict[str, Any]:
        algo = self.algo
        n_pairs = len(pairs)
        mine = rank_slice(pairs, self.backend.dp_rank, self.backend.dp_size)
        micro = [self._batch(c) for c in chunks(mine, self.cfg.policy.train_micro_batch_size)]
        references = {id(b): self._reference(b) for b in micro}

        def loss_fn(token_logprobs: torch.Tensor, batch: TokenBatch):
            chosen, rejected = self._split(token_logprobs, batch, algo.preference_average_log_probs)
            ref_chosen, ref_rejected = references[id(batch)]
            losses, r_chosen, r_rejected = dpo_losses(chosen, rejected, ref_chosen, ref_rejected,
                                                      algo.reference_policy_kl_penalty)
            sft_chosen, _ = self._split(token_logprobs, batch, algo.sft_average_log_probs)
            loss = (algo.preference_loss_weight * losses.sum()
                    - algo.sft_loss_weight * sft_chosen.sum()) / n_pairs
            return loss, {"loss_sum": float(loss.detach()) * n_pairs,
                          "chosen_reward_sum": float(r_chosen.sum()),
                          "rejected_reward_sum": float(r_rejected.sum()),
                          "correct": float((r_chosen > r_rejected).sum()),
                          "margin_sum": float((r_chosen - r_rejected).sum())}

        sums = self.backend.forward_backward(micro, loss_fn)
        keys = ["loss_sum", "chosen_reward_sum", "rejected_reward_sum", "correct", "margin_sum"]
        totals = dict(zip(keys, self.backend.all_reduce_sum([sums[k] for k in keys]), strict=True))
        stats = self.backend.optimizer_step()
        return {"loss": totals["loss_sum"] / n_pairs, "lr": stats.lr,
                "grad_norm": stats.grad_norm, "skipped_step": stats.skipped,
                "rewards_chosen": totals["chosen_reward_sum"] / n_pairs,
                "rewards_rejected": totals["rejected_reward_sum"] / n_pairs,
                "accuracy": totals["correct"] / n_pairs,
                "margin": totals["margin_sum"] / n_pairs}

    def validate(self) -> dict[str, float]:
        algo = self.algo
        pairs = self.val_pairs[: (algo.val_batches or len(self.val_pairs)) *
                               algo.val_global_batch_size]
        mine = rank_slice(pairs, self.backend.dp_rank, self.backend.dp_size) \
            if len(pairs) >= self.backend.dp_size else pairs
        loss, correct = 0.0, 0.0
        for chunk in chunks(mine, algo.val_micro_batch_size):
            batch = self._batch(chunk)
            ref_c, ref_r = self._reference(batch)
            with self.backend.eval_mode():
                pol_c, pol_r = self._split(self.backend.token_logprobs(batch), batch,
                                           algo.preference_average_log_probs)
            losses, r_c, r_r = dpo_losses(pol_c, pol_r, ref_c, ref_r,
                                          algo.reference_policy_kl_penalty)
            loss += float(losses.sum())
            correct += float((r_c > r_r).sum())
        loss, correct, count = self.backend.all_reduce_sum([loss, correct, float(len(mine))])
        return {"val_loss": loss / count, "val_accuracy": correct / count}

