"""Sequence packing for SFT: several examples per row, attention kept inside each example.

Rows hold at most `max_total_sequence_length` tokens (first-fit decreasing); a micro-batch holds
`train_mb_tokens // max_total_sequence_length` rows. The model sees position ids that restart
at every example and a block-diagonal causal mask, so each example's logits are those of the
example alone; the first token of each example carries no loss (it would otherwise be predicted
from the previous example's last token), exactly as in an unpacked row. Losses therefore equal
unpacked training up to float rounding.
"""

from __future__ import annotations

import torch

from lora_rl.backends.base import TokenBatch
from lora_rl.data.examples import Example


def first_fit_decreasing(examples: list[Example], capacity: int) -> list[list[Example]]:
    """Bins of total length <= capacity; the longest examples are placed first."""
    bins: list[list[Example]] = []
    room: list[int] = []
    for example in sorted(examples, key=lambda e: len(e.input_ids), reverse=True):
        size = len(example.input_ids)
        for index, free in enumerate(room):
            if size <= free:
                bins[index].append(example)
                room[index] -= size
                break
        else:
            bins.append([example])
            room.append(capacity - size)
    return bins


def collate_packed(rows: list[list[Example]], pad_id: int) -> TokenBatch:
    """One row per bin, right-padded to the longest row, with segment ids."""
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for k, example in enumerate(row, start=1):
            n = len(example.input_ids)
            ids[r, start:start + n] = torch.tensor(example.input_ids)
            attention[r, start:start + n] = 1
            loss[r, start + 1:start + n] = torch.tensor(example.loss_mask[1:])
            segments[r, start:start + n] = k
            start += n
    return TokenBatch(ids, attention, loss, segment_ids=segments)


def packed_micro_batches(examples: list[Example], max_len: int, mb_tokens: int,
                         pad_id: int) -> list[TokenBatch]:
    rows = first_fit_decreasing(examples, max_len)
    per = max(1, mb_tokens // max_len)
    return [collate_packed(rows[i:i + per], pad_id) for i in range(0, len(rows), per)]


def packed_model_inputs(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention mask [B, 1, L, L] bool, position ids [B, L]) for packed rows: causal within
    each example, nothing across examples or onto padding; positions restart per example."""
    length = segment_ids.shape[1]
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=segment_ids.device))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    mask = same & causal & (segment_ids[:, None, :] != 0)
    # Padding rows attend to themselves only, so no softmax row is empty (no NaN).
    mask |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    index = torch.arange(length, device=segment_ids.device).expand_as(segment_ids)
    last_start = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values
    return mask[:, None], index - last_start
