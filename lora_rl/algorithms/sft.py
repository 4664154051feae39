"""Supervised fine-tuning: token-level cross-entropy on response tokens.

The loss of a step is the mean over *all* response tokens of the global batch, whatever the
data-parallel split and micro-batching: each micro-batch contributes sum(nll) / global_tokens
(`sft_loss`).
"""

from __future__ import annotations

from functools import partial

from lora_rl.algorithms.base import Algorithm, StepMetrics, val_limit
from lora_rl.algorithms.evaluation import exact_match_accuracy
from lora_rl.algorithms.sft_loss import masked_nll_sum, sft_loss
from lora_rl.backends.base import TokenBatch
from lora_rl.config.algorithms import SFTConfig
from lora_rl.data.examples import Example
from lora_rl.data.packing import packed_micro_batches
from lora_rl.data.samples import Sample
from lora_rl.data.sources import (
    chunks,
    collate,
    prompts,
    rank_slice,
    rendered,
)


class SFT(Algorithm):
    algo: SFTConfig
    unit = "training examples"

    def prepare(self) -> list[Example]:
        train = self._examples(self.samples("train"))
        val_samples = self.samples("val")
        self.val_set = self._examples(val_samples)
        self.val_prompts = prompts(self.renderer, val_samples, self.limits)
        return train

    def _examples(self, samples: list[Sample]) -> list[Example]:
        kept = [e for (e,) in rendered(self.renderer, samples, self.limits)]
        if len(kept) < len(samples):
            self.session.say(f"skipped {len(samples) - len(kept)} over-long record(s) "
                             "(data.on_overlong: skip)")
        return kept

    def train_step(self, examples: list[Example]) -> StepMetrics:
        global_tokens = sum(sum(e.loss_mask[1:]) for e in examples)
        mine = rank_slice(examples, self.backend.dp_rank, self.backend.dp_size)
        sums = self.backend.forward_backward(self._micro_batches(mine),
                                             partial(sft_loss, global_tokens=global_tokens))
        (nll_sum,) = self.backend.all_reduce_sum([sums["nll_sum"]])
        stats = self.backend.optimizer_step()
        return StepMetrics(nll_sum / global_tokens, stats,
                           tokens=sum(len(e.input_ids) for e in examples))

    def _micro_batches(self, examples: list[Example]) -> list[TokenBatch]:
        policy = self.cfg.policy
        packing = policy.sequence_packing
        if packing.enabled and policy.backend == "dtensor":
            budget = packing.train_mb_tokens or \
                policy.max_total_sequence_length * policy.train_micro_batch_size
            return packed_micro_batches(examples, policy.max_total_sequence_length, budget,
                                        self.tokenizer.pad_token_id)
        return [collate(c, self.tokenizer.pad_token_id)
                for c in chunks(examples, policy.train_micro_batch_size)]

    def has_validation(self) -> bool:
        return bool(self.val_set)

    def validate(self) -> dict[str, float]:
        algo = self.algo
        limit = val_limit(len(self.val_set), algo.val_batches, algo.val_global_batch_size)
        nll, tokens = 0.0, 0
        with self.backend.eval_mode():
            for chunk in chunks(self.rank_share(self.val_set[:limit]), algo.val_micro_batch_size):
                batch = collate(chunk, self.tokenizer.pad_token_id)
                nll += float(masked_nll_sum(self.backend.token_logprobs(batch), batch))
                tokens += int(batch.target_mask.sum())
        nll, tokens = self.backend.all_reduce_sum([nll, float(tokens)])
        metrics = {"val_loss": nll / max(tokens, 1.0)}
        if self.val_prompts:
            metrics["val_accuracy"] = exact_match_accuracy(
                self.backend, self.renderer, self.val_prompts[:limit], self.runtime)
        return metrics
