"""Batched sampling with a KV cache on any Hugging Face causal LM (lora-rl's default generator).

Prompts are left-padded so every row's next token sits in the last column; position ids come
from the attention mask, so padding does not shift positions. Returned log-probabilities are
those of the *unprocessed* model distribution (no temperature / top-p), the quantity the trainer
recomputes — their difference is GRPO's `gen_kl_error`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    stop_token_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()


@dataclass
class Generated:
    tokens: list[list[int]]
    """Generated tokens per prompt, up to and including the stop token."""
    logprobs: list[list[float]]
    """log p(token) under the model for each generated token."""
    stopped: list[bool]
    """False when the response hit max_new_tokens without a stop token."""


def _filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    logits = logits / params.temperature
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        drop = probs.cumsum(-1) - probs >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def _next_tokens(logits: torch.Tensor, params: SamplingParams,
                 generator: torch.Generator | None) -> torch.Tensor:
    if params.temperature == 0:
        return logits.argmax(-1)
    return sample_rows(torch.softmax(_filter_logits(logits, params), dim=-1), generator)


def sample_rows(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of `probs` [rows, vocab], by inverting the row's CDF with one uniform
    draw. `torch.multinomial` draws an exponential for every vocabulary entry instead: ~6 % of a
    decode step at a vocabulary of 8k, and it grows with the vocabulary."""
    cdf = probs.cumsum(-1)
    # Scaled by the row's total, so rounding in the cumulative sum cannot step past the end;
    # `right=True` picks the first entry whose CDF exceeds the draw, never a zero-mass one.
    draw = torch.rand(probs.shape[0], 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, draw, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


@torch.no_grad()
def generate(model: torch.nn.Module, prompts: list[list[int]], params: SamplingParams, *,
             pad_id: int, generator: torch.Generator | None = None,
             decode: Callable[[list[int]], str] | None = None) -> Generated:
    from transformers import DynamicCache

    rows = len(prompts)
    width = max(len(p) for p in prompts)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    # Only the last position's logits are sampled from; a whole prompt's worth would be
    # [rows, width, vocab] floats (GiBs for long prompts and a 150k vocabulary).
    last_only = ({"logits_to_keep": 1}
                 if "logits_to_keep" in inspect.signature(model.forward).parameters else {})
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                   past_key_values=cache, use_cache=True, **last_only).logits[:, -1]
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    done = torch.zeros(rows, dtype=torch.bool)
    next_pos = positions[:, -1]
    for step in range(params.max_new_tokens):
        logits = logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        chosen = _next_tokens(logits, params, generator)
        chosen_logp = logp.gather(-1, chosen[:, None]).squeeze(-1)
        for row in (~done).nonzero().flatten().tolist():
            token = int(chosen[row])
            tokens[row].append(token)
            logprobs[row].append(float(chosen_logp[row]))
            if token in params.stop_token_ids or _hit_stop_string(tokens[row], params, decode):
                done[row] = True
        if bool(done.all()) or step == params.max_new_tokens - 1:
            break  # no forward pass for a token that will not be sampled
        chosen = chosen.masked_fill(done, pad_id)
        mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
        next_pos = next_pos + 1
        logits = model(input_ids=chosen[:, None], attention_mask=mask,
                       position_ids=next_pos[:, None], past_key_values=cache,
                       use_cache=True).logits[:, -1]
    return Generated(tokens, logprobs, done.tolist())


def _hit_stop_string(tokens: list[int], params: SamplingParams,
                     decode: Callable[[list[int]], str] | None) -> bool:
    if not params.stop_strings or decode is None:
        return False
    text = decode(tokens)
    return any(stop in text for stop in params.stop_strings)
