"""Supervised fine-tuning: token-level cross-entropy on response tokens.

The loss of a step is the mean over *all* response tokens of the global batch, whatever the
data-parallel split and micro-batching: each micro-batch contributes sum(nll) / global_tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from lora_rl.algorithms.base import Algorithm
from lora_rl.algorithms.evaluation import exact_match_accuracy
from lora_rl.backends.base import TokenBatch
from lora_rl.config.algorithms import SFTConfig
from lora_rl.data.examples import Example
from lora_rl.data.order import DataOrder
from lora_rl.data.packing import packed_micro_batches
from lora_rl.data.sources import (
    chunks,
    collate,
    limits,
    load_samples,
    load_tokenizer,
    prompts,
    rank_slice,
    rendered,
    renderer,
)
from lora_rl.data.tokenizer_export import tokenizer_state
from lora_rl.training.runtime import seed_step


def masked_nll_sum(token_logprobs: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    return -(token_logprobs * batch.target_mask).sum()


class SFT(Algorithm):
    algo: SFTConfig

    def setup(self) -> None:
        self.tokenizer = load_tokenizer(self.cfg)
        self.renderer = renderer(self.cfg, self.tokenizer)
        self.session.tokenizer_state = tokenizer_state(self.cfg, self.renderer)
        self.train_set = self._examples(load_samples(self.cfg, "train"))
        val_samples = load_samples(self.cfg, "val")
        self.val_set = self._examples(val_samples)
        self.val_prompts = prompts(self.renderer, val_samples, limits(self.cfg))
        self.order = DataOrder(len(self.train_set), self.algo.seed, self.cfg.data.shuffle)
        self.start_step = self.session.resume(self.order)
        self.session.banner(f"{len(self.train_set)} training examples")

    def _examples(self, samples) -> list[Example]:
        kept = [e for (e,) in rendered(self.renderer, samples, limits(self.cfg))]
        if len(kept) < len(samples):
            self.session.say(f"skipped {len(samples) - len(kept)} over-long record(s) "
                             "(data.on_overlong: skip)")
        return kept

    def train(self) -> None:
        policy = self.cfg.policy
        steps = self.algo.max_num_steps
        self.session.start_progress(self.start_step, steps)
        if self.algo.val_at_start and self.start_step == 0:
            self.session.log(0, self.validate())
        step = self.start_step
        while step < steps:
            indices, epoch = self.order.next_batch(policy.train_global_batch_size)
            if epoch >= self.algo.max_num_epochs:
                break
            step += 1
            seed_step(self.algo.seed, step, self.runtime.rank)
            metrics = self._train_step(indices)
            self.session.check_finite(step, metrics["loss"], metrics["skipped_step"])
            if self.algo.val_period and step % self.algo.val_period == 0:
                metrics.update(self.validate())
            self.session.log(step, metrics)
            self.session.maybe_save(step)
            if self.session.stop_requested(step):
                break
        self.session.maybe_save(step, final=step > self.start_step)

    def _train_step(self, indices: list[int]) -> dict[str, Any]:
        examples = [self.train_set[i] for i in indices]
        global_tokens = sum(sum(e.loss_mask[1:]) for e in examples)
        mine = rank_slice(examples, self.backend.dp_rank, self.backend.dp_size)
        micro = self._micro_batches(mine)

        def loss_fn(token_logprobs: torch.Tensor, batch: TokenBatch):
            nll = masked_nll_sum(token_logprobs, batch)
            return nll / global_tokens, {"nll_sum": float(nll.detach())}

        started = _now()
        sums = self.backend.forward_backward(micro, loss_fn)
        (nll_sum,) = self.backend.all_reduce_sum([sums["nll_sum"]])
        stats = self.backend.optimizer_step()
        elapsed = _now() - started
        tokens = sum(len(e.input_ids) for e in examples)
        return {"loss": nll_sum / global_tokens, "lr": stats.lr, "grad_norm": stats.grad_norm,
                "tokens_per_s": tokens / elapsed, "step_time_s": elapsed,
                "skipped_step": stats.skipped}

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

    def validate(self) -> dict[str, float]:
        if not self.val_set:
            return {}
        algo = self.algo
        limit = len(self.val_set) if algo.val_batches is None else \
            algo.val_batches * algo.val_global_batch_size
        examples = self.val_set[:limit]
        mine = rank_slice(examples, self.backend.dp_rank, self.backend.dp_size) \
            if len(examples) >= self.backend.dp_size else examples
        nll, tokens = 0.0, 0
        with self.backend.eval_mode():
            for chunk in chunks(mine, algo.val_micro_batch_size):
                batch = collate(chunk, self.tokenizer.pad_token_id)
                nll += float(masked_nll_sum(self.backend.token_logprobs(batch), batch))
                tokens += int(batch.target_mask.sum())
        nll, tokens = self.backend.all_reduce_sum([nll, float(tokens)])
        metrics = {"val_loss": nll / max(tokens, 1.0)}
        if self.val_prompts:
            metrics["val_accuracy"] = exact_match_accuracy(
                self.backend, self.renderer, self.val_prompts[:limit], self.runtime)
        return metrics



def _now() -> float:
    import time

    return time.perf_counter()
