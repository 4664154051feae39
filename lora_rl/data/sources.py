"""Where an algorithm's records come from: the built-in tiny task or local JSONL files."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from lora_rl.backends.base import TokenBatch
from lora_rl.config.recipe import RecipeConfig
from lora_rl.data.examples import Example, Limits, TextFormat
from lora_rl.data.jsonl import DataError, Record, read_jsonl
from lora_rl.model_source import TINY_MODEL_NAME, require_local_model_dir

Split = Literal["train", "val"]


def data_file(cfg: RecipeConfig, split: Split) -> Path | None:
    data = cfg.data
    explicit = data.train_data_path if split == "train" else data.val_data_path
    if explicit:
        return Path(explicit)
    if data.dataset_name == "tiny-arithmetic":
        model_dir = require_local_model_dir(TINY_MODEL_NAME)
        return model_dir / "data" / f"{cfg.algorithm}_{split}.jsonl"
    if split == "val":
        return None
    raise DataError(f"no training data: dataset_name {data.dataset_name!r} is not built in and "
                    "data.train_data_path is not set\nfix: set data.train_data_path to a local "
                    "JSONL file")


def load_records(cfg: RecipeConfig, split: Split, required: tuple[str, ...]) -> list[Record]:
    path = data_file(cfg, split)
    return [] if path is None else read_jsonl(path, required)


def load_tokenizer(cfg: RecipeConfig):
    from transformers import AutoTokenizer

    source = cfg.policy.tokenizer.name or cfg.policy.model_name
    directory = require_local_model_dir(source)
    tokenizer = AutoTokenizer.from_pretrained(directory,
                                              trust_remote_code=cfg.policy.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def text_format(cfg: RecipeConfig, tokenizer) -> TextFormat:
    return TextFormat(tokenizer, cfg.data.add_bos, cfg.data.add_eos)


def limits(cfg: RecipeConfig) -> Limits:
    total = cfg.policy.max_total_sequence_length
    return Limits(total, cfg.data.max_input_seq_length or total, cfg.data.on_overlong)


def collate(examples: list[Example], pad_id: int) -> TokenBatch:
    """Right-pad to the longest example."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    loss = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        attention[row, :n] = 1
        loss[row, :n] = torch.tensor(example.loss_mask)
    return TokenBatch(ids, attention, loss)


def rank_slice(indices: list[int], dp_rank: int, dp_size: int) -> list[int]:
    """This data-parallel rank's contiguous share of a global batch."""
    per = len(indices) // dp_size
    return indices[dp_rank * per:(dp_rank + 1) * per]


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]
