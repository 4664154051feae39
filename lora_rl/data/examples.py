"""Records -> token ids with a loss mask, under the recipe's length limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lora_rl.data.jsonl import DataError, Record

Overlong = Literal["error", "skip", "truncate"]


@dataclass(frozen=True)
class Example:
    """One token sequence. `loss_mask[t]` is 1 where token t is a training target."""

    input_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]
    source: str = ""


@dataclass(frozen=True)
class TextFormat:
    """How text becomes ids: plain `prompt + response` with BOS/EOS (the tiny tasks), which
    keeps train and generate tokenization identical."""

    tokenizer: Any
    add_bos: bool
    add_eos: bool

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, prompt: str) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if self.add_bos and self.tokenizer.bos_token_id \
            is not None else []
        return bos + self.ids(prompt)

    def response_ids(self, response: str) -> list[int]:
        eos = [self.tokenizer.eos_token_id] if self.add_eos else []
        return self.ids(response) + eos


@dataclass(frozen=True)
class Limits:
    max_total: int
    max_prompt: int
    on_overlong: Overlong


def completion_example(fmt: TextFormat, record: Record, prompt_key: str, response_key: str,
                       limits: Limits) -> Example | None:
    """prompt + response with loss on the response (and EOS). None means: skip this record."""
    prompt = fmt.prompt_ids(record.text(prompt_key))
    response = fmt.response_ids(record.text(response_key))
    where = f"{record.file}:{record.line}"
    if len(prompt) > limits.max_prompt or len(prompt) + len(response) > limits.max_total:
        if limits.on_overlong == "error":
            raise DataError(f"{where}: {len(prompt)} prompt + {len(response)} response tokens "
                            f"exceed the limits (prompt {limits.max_prompt}, total "
                            f"{limits.max_total})\nfix: raise policy.max_total_sequence_length "
                            "or set data.on_overlong: skip | truncate")
        if limits.on_overlong == "skip":
            return None
        prompt = prompt[: limits.max_prompt]
        response = response[: max(0, limits.max_total - len(prompt))]
        if not response:
            return None
    return Example(tuple(prompt + response), tuple([0] * len(prompt) + [1] * len(response)), where)


def prompt_only(fmt: TextFormat, record: Record, prompt_key: str,
                limits: Limits) -> list[int] | None:
    ids = fmt.prompt_ids(record.text(prompt_key))
    if len(ids) <= limits.max_prompt:
        return ids
    if limits.on_overlong == "error":
        raise DataError(f"{record.file}:{record.line}: prompt of {len(ids)} tokens exceeds "
                        f"{limits.max_prompt}\nfix: raise data.max_input_seq_length or set "
                        "data.on_overlong: skip | truncate")
    return None if limits.on_overlong == "skip" else ids[: limits.max_prompt]
