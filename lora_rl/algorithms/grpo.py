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
from functools import partial

import torch

from lora_rl.algorithms.base import Algorithm, StepMetrics
from lora_rl.algorithms.grpo_loss import PolicyBatch, group_advantages, grpo_loss
from lora_rl.backends.base import TokenBatch, TrainingBackend
from lora_rl.config.algorithms import GRPOConfig
from lora_rl.config.recipe import RecipeConfig
from lora_rl.data.examples import Example
from lora_rl.data.samples import Sample
from lora_rl.data.sources import chunks, collate, prompts, rank_slice
from lora_rl.generation.engines import RolloutEngine, build_engine
from lora_rl.generation.torch_generator import SamplingParams
from lora_rl.rewards import load_reward, score
from lora_rl.training.runtime import Runtime, seed_step

Prompt = tuple[Sample, list[int]]
"""A prompt record: the sample and its rendered prompt ids."""

_SUMS = ("loss", "kl", "clipped", "gen_kl_error", "tokens")


@dataclass
class Rollouts:
    """P prompts x G generations, groups contiguous. Lists are [P*G]."""

    examples: list[Example]
    gen_logprobs: list[list[float]]
    rewards: torch.Tensor
    advantages: torch.Tensor
    responses: list[str]
    stopped: list[bool]
    timing: dict[str, float]
    """The engine's timings of the sampling (metrics.jsonl keys)."""


class GRPO(Algorithm):
    algo: GRPOConfig
    unit = "prompts"

    def __init__(self, cfg: RecipeConfig, backend: TrainingBackend, runtime: Runtime) -> None:
        super().__init__(cfg, backend, runtime)
        self.gen_cfg = cfg.policy.generation
        self.engine: RolloutEngine | None = None

    def prepare(self) -> list[Prompt]:
        from lora_rl.config.generation import GenerationConfig

        self.gen_cfg = self.gen_cfg or GenerationConfig()
        train = prompts(self.renderer, self.samples("train"), self.limits)
        self.val_records = prompts(self.renderer, self.samples("val"), self.limits)
        self.reward_fn = load_reward(self.cfg.env.reward, self.cfg.env.reward_kwargs)
        self.params = SamplingParams(
            max_new_tokens=self.gen_cfg.max_new_tokens, temperature=self.gen_cfg.temperature,
            top_p=self.gen_cfg.top_p, top_k=self.gen_cfg.top_k,
            stop_token_ids=frozenset([self.tokenizer.eos_token_id,
                                      *(self.gen_cfg.stop_token_ids or [])]),
            stop_strings=tuple(self.gen_cfg.stop_strings or ()))
        if self.engine is None:  # a multi-adapter run hands in its shared engine's slot
            self.engine = build_engine(self.cfg.policy, self.backend, self.tokenizer,
                                       self.algo.num_prompts_per_step
                                       * self.algo.num_generations_per_prompt)
        return train

    def items_per_step(self) -> int:
        return self.algo.num_prompts_per_step

    # ---- rollouts -------------------------------------------------------------------------

    def collect(self, step: int, indices: list[int]) -> Rollouts:
        return self.rollouts(step, [self.train_items[i] for i in indices])

    def rollouts(self, step: int, items: list[Prompt]) -> Rollouts:
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
        return Rollouts(examples, out.logprobs, rewards, advantages, responses, out.stopped,
                        timing)

    # ---- training -------------------------------------------------------------------------

    def _logprobs_no_grad(self, batch: TokenBatch, reference: bool) -> torch.Tensor:
        ctx = self.backend.reference_policy() if reference else contextlib.nullcontext()
        with self.backend.eval_mode(), ctx:
            return self.backend.token_logprobs(batch)

    def _policy_batch(self, rollouts: Rollouts, part: list[int]) -> PolicyBatch:
        tokens = collate([rollouts.examples[i] for i in part], self.tokenizer.pad_token_id)
        old = self._logprobs_no_grad(tokens, reference=False)
        ref = self._logprobs_no_grad(tokens, reference=True) \
            if self.cfg.loss_fn.reference_policy_kl_penalty > 0 else old
        gen = _aligned(tokens, [rollouts.gen_logprobs[i] for i in part],
                       [rollouts.examples[i] for i in part])
        return PolicyBatch(tokens.input_ids, tokens.attention_mask, tokens.loss_mask,
                           rollouts.advantages[part], old, ref, gen)

    def train_step(self, rollouts: Rollouts) -> StepMetrics:
        """One optimizer step per `train_global_batch_size` rollouts."""
        started = time.perf_counter()
        totals = dict.fromkeys(_SUMS, 0.0)
        stats = None
        for minibatch in chunks(list(range(len(rollouts.examples))),
                                self.cfg.policy.train_global_batch_size):
            mine = rank_slice(minibatch, self.backend.dp_rank, self.backend.dp_size)
            micro = [self._policy_batch(rollouts, part)
                     for part in chunks(mine, self.cfg.policy.train_micro_batch_size)]
            loss_fn = partial(grpo_loss, cfg=self.cfg.loss_fn, seq_count=float(len(minibatch)),
                              token_count=float(sum(sum(rollouts.examples[i].loss_mask)
                                                    for i in minibatch)))
            sums = self.backend.forward_backward(micro, loss_fn)
            reduced = self.backend.all_reduce_sum([sums[k] for k in _SUMS])
            for key, value in zip(_SUMS, reduced, strict=True):
                totals[key] += value
            stats = self.backend.optimizer_step()
        tokens = max(totals["tokens"], 1.0)
        rewards = rollouts.rewards
        return StepMetrics(totals["loss"], stats, {
            **rollouts.timing, "reward": float(rewards.mean()),
            "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "kl_to_reference": totals["kl"] / tokens,
            "clip_fraction": totals["clipped"] / tokens,
            "gen_kl_error": totals["gen_kl_error"] / tokens,
            "response_length": sum(map(len, rollouts.gen_logprobs)) / len(rollouts.examples),
            "training_time_s": time.perf_counter() - started})

    def has_validation(self) -> bool:
        return bool(self.val_records)

    def validate(self) -> dict[str, float]:
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
