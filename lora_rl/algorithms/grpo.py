"""Group Relative Policy Optimization; the reference policy is the adapter turned off (full
fine-tuning: a frozen copy of the starting weights, see `backends.base.FrozenReference`).

A step: sample `num_prompts_per_step` prompts -> `num_generations_per_prompt` responses each
(native torch generator, LoRA merged in fp32 or kept split) -> rewards -> group-normalised
advantages -> one or more optimizer steps on the clipped policy loss with a KL penalty.
Every rank generates the same rollouts from the same seed (each holds an unsharded copy), then
trains on its data-parallel share.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from lora_rl.algorithms.base import Algorithm
from lora_rl.algorithms.grpo_loss import clipped_policy_loss, group_advantages, k3_kl
from lora_rl.backends.base import TokenBatch, TrainingBackend
from lora_rl.config.algorithms import GRPOConfig
from lora_rl.config.recipe import RecipeConfig
from lora_rl.data.examples import Example
from lora_rl.data.order import DataOrder
from lora_rl.data.sources import (
    chunks,
    collate,
    limits,
    load_samples,
    load_tokenizer,
    prompts,
    rank_slice,
    renderer,
)
from lora_rl.data.tokenizer_export import tokenizer_state
from lora_rl.generation.engines import RolloutEngine, build_engine
from lora_rl.generation.torch_generator import SamplingParams
from lora_rl.rewards import load_reward, score
from lora_rl.training.runtime import Runtime, seed_step


@dataclass
class Rollouts:
    """P prompts x G generations, groups contiguous. Lists are [P*G]."""

    examples: list[Example]
    gen_logprobs: list[list[float]]
    rewards: torch.Tensor
    advantages: torch.Tensor
    responses: list[str]
    stopped: list[bool]


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
    """[B, L-1] the generator's log-probs of the sampled tokens."""


class GRPO(Algorithm):
    algo: GRPOConfig

    def __init__(self, cfg: RecipeConfig, backend: TrainingBackend, runtime: Runtime) -> None:
        super().__init__(cfg, backend, runtime)
        self.gen_cfg = cfg.policy.generation
        self.engine: RolloutEngine | None = None

    def setup(self) -> None:
        from lora_rl.config.generation import GenerationConfig

        self.gen_cfg = self.gen_cfg or GenerationConfig()
        self.tokenizer = load_tokenizer(self.cfg)
        self.renderer = renderer(self.cfg, self.tokenizer)
        self.session.tokenizer_state = tokenizer_state(self.cfg, self.renderer)
        lim = limits(self.cfg)
        self.train_records = prompts(self.renderer, load_samples(self.cfg, "train"), lim)
        self.val_records = prompts(self.renderer, load_samples(self.cfg, "val"), lim)
        self.reward_fn = load_reward(self.cfg.env.reward, self.cfg.env.reward_kwargs)
        self.params = SamplingParams(
            max_new_tokens=self.gen_cfg.max_new_tokens, temperature=self.gen_cfg.temperature,
            top_p=self.gen_cfg.top_p, top_k=self.gen_cfg.top_k,
            stop_token_ids=frozenset([self.tokenizer.eos_token_id,
                                      *(self.gen_cfg.stop_token_ids or [])]),
            stop_strings=tuple(self.gen_cfg.stop_strings or ()))
        self.engine = build_engine(self.cfg, self.backend, self.tokenizer)
        self.order = DataOrder(len(self.train_records), self.algo.seed, self.cfg.data.shuffle)
        self.start_step = self.session.resume(self.order)
        self.session.banner(f"{len(self.train_records)} prompts")

    # ---- rollouts -------------------------------------------------------------------------

    def rollouts(self, step: int, items: list) -> tuple[Rollouts, dict[str, float]]:
        group = self.algo.num_generations_per_prompt
        prompts = [ids for _, ids in items for _ in range(group)]
        answers = [s.answer for s, _ in items for _ in range(group)]
        prompt_texts = [s.prompt_text for s, _ in items for _ in range(group)]
        # Same seed on every rank: identical rollouts everywhere, no gather needed.
        params = capped_to_context(self.params, prompts, self.cfg.policy.max_total_sequence_length)
        out, timing = self.engine.sample(prompts, params, seed_step(self.algo.seed, step, 0))
        responses = [self.tokenizer.decode(t, skip_special_tokens=True) for t in out.tokens]
        rewards = torch.tensor(score(self.reward_fn, prompt_texts, responses, answers,
                                     self.cfg.env.reward_kwargs), dtype=torch.float32)
        advantages = group_advantages(rewards, group, self.algo.use_leave_one_out_baseline,
                                      self.algo.normalize_rewards)
        examples = []
        for prompt, tokens, stopped in zip(prompts, out.tokens, out.stopped, strict=True):
            keep = stopped or not self.algo.overlong_filtering
            examples.append(Example(tuple(prompt + tokens),
                                    tuple([0] * len(prompt) + [int(keep)] * len(tokens))))
        return Rollouts(examples, out.logprobs, rewards, advantages, responses, out.stopped), timing

    # ---- training -------------------------------------------------------------------------

    def train(self) -> None:
        steps = self.algo.max_num_steps
        self.session.start_progress(self.start_step, steps)
        if self.algo.val_at_start and self.start_step == 0 and self.val_records:
            self.session.log(0, self.validate(0))
        step = self.start_step
        while step < steps:
            indices, epoch = self.order.next_batch(self.algo.num_prompts_per_step)
            if epoch >= self.algo.max_num_epochs:
                break
            step += 1
            started = time.perf_counter()
            rollouts, metrics = self.rollouts(step, [self.train_records[i] for i in indices])
            seed_step(self.algo.seed, step, self.runtime.rank)
            metrics.update(self._optimize(rollouts))
            metrics["step_time_s"] = time.perf_counter() - started
            self.session.check_finite(step, metrics["loss"], metrics["skipped_step"])
            if self.algo.val_period and step % self.algo.val_period == 0 and self.val_records:
                metrics.update(self.validate(step))
            self.session.log(step, metrics)
            self.session.maybe_save(step)
            if self.session.stop_requested(step):
                break
        self.session.maybe_save(step, final=step > self.start_step)

    def _logprobs_no_grad(self, batch: TokenBatch, reference: bool) -> torch.Tensor:
        ctx = self.backend.reference_policy() if reference else contextlib.nullcontext()
        with self.backend.eval_mode(), ctx:
            return self.backend.token_logprobs(batch)

    def _optimize(self, rollouts: Rollouts) -> dict[str, Any]:
        loss_cfg = self.cfg.loss_fn
        started = time.perf_counter()
        gbs = self.cfg.policy.train_global_batch_size
        order = list(range(len(rollouts.examples)))
        totals = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "gen_kl_error": 0.0, "tokens": 0.0}
        stats = None
        for minibatch in chunks(order, gbs):
            mine = rank_slice(minibatch, self.backend.dp_rank, self.backend.dp_size)
            token_count = float(sum(sum(rollouts.examples[i].loss_mask) for i in minibatch))
            seq_count = float(len(minibatch))
            micro = []
            for part in chunks(mine, self.cfg.policy.train_micro_batch_size):
                tokens = collate([rollouts.examples[i] for i in part], self.tokenizer.pad_token_id)
                old = self._logprobs_no_grad(tokens, reference=False)
                ref = self._logprobs_no_grad(tokens, reference=True) \
                    if loss_cfg.reference_policy_kl_penalty > 0 else old
                gen = _aligned(tokens, [rollouts.gen_logprobs[i] for i in part],
                               [rollouts.examples[i] for i in part])
                micro.append(PolicyBatch(tokens.input_ids, tokens.attention_mask,
                                         tokens.loss_mask, rollouts.advantages[part], old, ref,
                                         gen))

            def loss_fn(logprobs: torch.Tensor, batch: TokenBatch,
                        token_count: float = token_count, seq_count: float = seq_count):
                mask = batch.target_mask
                pg, clipped = clipped_policy_loss(logprobs, batch.old, batch.advantages,
                                                  loss_cfg.ratio_clip_min, loss_cfg.ratio_clip_max,
                                                  loss_cfg.ratio_clip_c)
                kl = k3_kl(logprobs, batch.ref)
                per_token = pg + loss_cfg.reference_policy_kl_penalty * kl
                if loss_cfg.token_level_loss:
                    loss = (per_token * mask).sum() / token_count
                else:
                    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
                    loss = per_seq.sum() / seq_count
                # float64: generator and trainer agree to ~1e-6, whose KL (~d^2/2) fp32 rounds
                # to zero or to noise.
                gen_err = k3_kl(batch.gen, batch.old.double())
                return loss, {"loss": float(loss.detach()), "kl": float((kl.detach() * mask).sum()),
                              "clipped": float((clipped * mask).sum()),
                              "gen_kl_error": float((gen_err * mask).sum()),
                              "tokens": float(mask.sum())}

            sums = self.backend.forward_backward(micro, loss_fn)
            reduced = self.backend.all_reduce_sum([sums[k] for k in totals])
            for key, value in zip(totals, reduced, strict=True):
                totals[key] += value
            stats = self.backend.optimizer_step()
        tokens = max(totals["tokens"], 1.0)
        rewards = rollouts.rewards
        return {"loss": totals["loss"], "reward": float(rewards.mean()),
                "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
                "kl_to_reference": totals["kl"] / tokens,
                "clip_fraction": totals["clipped"] / tokens,
                "gen_kl_error": totals["gen_kl_error"] / tokens,
                "response_length": sum(map(len, rollouts.gen_logprobs)) / len(rollouts.examples),
                "lr": stats.lr, "grad_norm": stats.grad_norm, "skipped_step": stats.skipped,
                "training_time_s": time.perf_counter() - started}

    def validate(self, step: int) -> dict[str, float]:
        from lora_rl.algorithms.evaluation import exact_match_accuracy

        items = self.val_records[: self.algo.max_val_samples]
        return {"val_accuracy": exact_match_accuracy(self.backend, self.renderer, items,
                                                     self.runtime, self.algo.val_batch_size)}

    def cleanup(self) -> None:
        # The engine first: vLLM's shutdown needs the process groups the session tears down.
        if self.engine is not None:
            self.engine.close()
        super().cleanup()


def _aligned(batch: TokenBatch, gen_logprobs: list[list[float]],
             examples: list[Example]) -> torch.Tensor:
    """Generator log-probs placed where the trainer's log-probs of the same tokens sit."""
    out = torch.zeros(batch.input_ids.shape[0], batch.input_ids.shape[1] - 1, dtype=torch.float64)
    for row, (values, example) in enumerate(zip(gen_logprobs, examples, strict=True)):
        start = len(example.input_ids) - len(values) - 1
        out[row, start:start + len(values)] = torch.tensor(values, dtype=torch.float64)
    return out


def capped_to_context(params: SamplingParams, prompts: list[list[int]],
                      total: int) -> SamplingParams:
    """Generation stops at the model length, as vLLM stops at max_model_len: NeMo RL recipes
    write `max_new_tokens: ${policy.max_total_sequence_length}` (rule LR302 warns about it), so
    the budget is what the longest prompt of the batch leaves of max_total_sequence_length."""
    room = max(1, total - max(len(p) for p in prompts))
    return params if params.max_new_tokens <= room else replace(params, max_new_tokens=room)
