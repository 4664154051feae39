"""Where an algorithm's samples come from (the built-in tiny task or local data sets), the
tokenizer with its chat template, and how samples are batched."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from lora_rl.backends.base import TokenBatch
from lora_rl.config.policy import PolicyConfig
from lora_rl.config.sections import DataConfig
from lora_rl.data.bounded import read_text_file
from lora_rl.data.examples import Example, Limits
from lora_rl.data.files import check_path, load_records
from lora_rl.data.jsonl import DataError
from lora_rl.data.render import ChatRenderer, PlainRenderer, Renderer, example, prompt_ids
from lora_rl.data.samples import Conversation, Reader, Sample, read_samples
from lora_rl.data.specs import DataSpec, Split, data_specs, hub_only_blocks, uses_chat
from lora_rl.data.specs import limits as data_limits
from lora_rl.model_source import TINY_MODEL_NAME, require_local_model_dir


def _builtin_spec(data: DataConfig, algorithm: str, split: Split) -> DataSpec | None:
    """The tiny task's files, when no local data is named."""
    if data.dataset_name != "tiny-arithmetic" or data.train is not None:
        return None
    model_dir = require_local_model_dir(TINY_MODEL_NAME)
    output = data.answer_key if algorithm == "grpo" else data.response_key
    return DataSpec(path=model_dir / "data" / f"{algorithm}_{split}.jsonl", kind="plain",
                    where="data.dataset_name", input_key=data.prompt_key, output_key=output,
                    prompt_key=data.prompt_key, chosen_key=data.chosen_key,
                    rejected_key=data.rejected_key)


def _specs(data: DataConfig, algorithm: str, split: Split) -> list[DataSpec]:
    specs = data_specs(data, algorithm, split)
    if not specs and (builtin := _builtin_spec(data, algorithm, split)) is not None:
        specs = [builtin]
    if split == "train" and not specs:
        hub = hub_only_blocks(data)
        named = f"'{hub[0][1].dataset_name}' ({hub[0][0]})" if hub else \
            repr(data.dataset_name)
        raise DataError(f"no training data: {named} is not a local file and lora-rl downloads "
                        "nothing\nfix: set data.train.data_path (or data.train_data_path) to a "
                        "local .jsonl/.parquet/.arrow/.csv file or a save_to_disk directory")
    return specs


def _holdout(samples: list[Sample], share: float, seed: int) -> tuple[list, list]:
    """(train, held out): a seeded `split_validation_size` share of the records."""
    if share <= 0:
        return samples, []
    order = list(range(len(samples)))
    random.Random(f"holdout/{seed}").shuffle(order)
    n = max(1, round(share * len(samples)))
    held = set(order[:n])
    return ([s for i, s in enumerate(samples) if i not in held],
            [s for i, s in enumerate(samples) if i in held])


def _read(spec: DataSpec, algorithm: str) -> list[Sample]:
    reader = Reader.for_spec(spec, algorithm)
    return read_samples(reader, load_records(spec.path, spec.where, spec.split,
                                              spec.limits))


def typed_prompt(data: DataConfig, algorithm: str, text: str) -> Conversation:
    """A user's prompt as the (first) training data set frames its prompts."""
    return Reader.for_spec(_specs(data, algorithm, "train")[0], algorithm).prompt(text)


def load_samples(data: DataConfig, algorithm: str, split: Split) -> list[Sample]:
    """The split's samples from every data set (NeMo RL blocks are concatenated in order).
    Without validation data, `split_validation_size` holds a seeded share of each training
    block out for validation."""
    val_specs = _specs(data, algorithm, "val")
    if split == "val" and val_specs:
        return [s for spec in val_specs for s in _read(spec, algorithm)]
    out: list[Sample] = []
    for spec in _specs(data, algorithm, "train"):
        if split == "val" and spec.holdout <= 0:
            continue
        kept, held = _holdout(_read(spec, algorithm), 0.0 if val_specs else spec.holdout,
                              spec.holdout_seed)
        out += kept if split == "train" else held
    return out


def resolve_template(policy: PolicyConfig, data: DataConfig, tokenizer) -> str | None:
    """The chat template in force (NeMo RL's rules, see TokenizerConfig.chat_template); a
    template file is read under the data section's read limits."""
    configured = policy.tokenizer.chat_template
    if configured is None:
        return None
    if configured == "default":
        return tokenizer.chat_template
    if configured.endswith(".jinja"):
        path = Path(configured)
        check_path(path, "policy.tokenizer.chat_template", data=False)
        return read_text_file(path, data_limits(data), "policy.tokenizer.chat_template")
    return configured


def load_tokenizer(policy: PolicyConfig, data: DataConfig):
    from transformers import AutoTokenizer

    source = policy.tokenizer.name or policy.model_name
    directory = require_local_model_dir(source)
    tokenizer = AutoTokenizer.from_pretrained(directory,
                                              trust_remote_code=policy.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = resolve_template(policy, data, tokenizer)
    return tokenizer


def renderer(policy: PolicyConfig, data: DataConfig, algorithm: str, tokenizer) -> Renderer:
    """The chat template when one is in force, else plain text. Chat data with the template
    left at `default` on a tokenizer that has none is refused (validate says so earlier)."""
    if tokenizer.chat_template:
        return ChatRenderer(tokenizer, tokenizer.chat_template,
                            dict(policy.tokenizer.chat_template_kwargs or {}))
    if policy.tokenizer.chat_template == "default" and uses_chat(data, algorithm):
        raise DataError(f"{policy.tokenizer.name or policy.model_name}: the tokenizer "
                        "has no chat template, and the recipe's data is chat data\nfix: set "
                        "policy.tokenizer.chat_template to a Jinja template (or a .jinja file), "
                        "or to null to concatenate the messages' text")
    return PlainRenderer(tokenizer, data.add_bos, data.add_eos)


def limits(policy: PolicyConfig, data: DataConfig) -> Limits:
    total = policy.max_total_sequence_length
    return Limits(total, data.max_input_seq_length or total, data.on_overlong)


def collate(examples: list[Example], pad_id: int) -> TokenBatch:
    """Right-pad to the longest example."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    loss = torch.zeros((len(examples), width), dtype=torch.long)
    for row, item in enumerate(examples):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        attention[row, :n] = 1
        loss[row, :n] = torch.tensor(item.loss_mask)
    return TokenBatch(ids, attention, loss)


def rank_slice(indices: list[int], dp_rank: int, dp_size: int) -> list[int]:
    """This data-parallel rank's contiguous share of a global batch."""
    per = len(indices) // dp_size
    return indices[dp_rank * per:(dp_rank + 1) * per]


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def rendered(renderer: Renderer, samples: list[Sample], lim: Limits) -> list[tuple[Example, ...]]:
    """Each sample's training conversations as examples (SFT: one; DPO: chosen, rejected);
    samples with an over-long part are left out under `data.on_overlong: skip`."""
    out = []
    for sample in samples:
        made = [example(renderer, conv, lim, sample.where) for conv in sample.train]
        if all(e is not None for e in made):
            out.append(tuple(made))
    return out


def prompts(renderer: Renderer, samples: list[Sample],
            lim: Limits) -> list[tuple[Sample, list[int]]]:
    """(sample, prompt ids with the generation prompt) for evaluation and rollouts."""
    return [(s, ids) for s in samples
            if (ids := prompt_ids(renderer, s.prompt, lim, s.where)) is not None]
