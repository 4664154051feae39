"""Conversations -> token ids with a loss mask on the assistant turns, under the length limits.

Two renderers with one contract:
- `ChatRenderer`: the tokenizer's chat template through transformers' `apply_chat_template`.
  Templates with `{% generation %}` blocks give the assistant mask directly
  (`return_assistant_tokens_mask`); for the others each assistant turn's characters are found
  by rendering the conversation up to it (with the generation prompt) and up to its end, which
  must be prefixes of the whole text; tokens starting inside those spans carry the loss.
- `PlainRenderer`: BOS + the messages' text, EOS after each response (the tiny tasks' format,
  `policy.tokenizer.chat_template: null`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lora_rl.data.examples import Example, Limits
from lora_rl.data.jsonl import DataError
from lora_rl.data.samples import Conversation

GENERATION_BLOCK = re.compile(r"{%-?\s*generation\s*-?%}")


def _trained(conv: Conversation, index: int) -> bool:
    return index >= conv.train_from and conv.messages[index]["role"] == "assistant"


def fit(ids: list[int], mask: list[int], limits: Limits, where: str) -> Example | None:
    """Apply `data.on_overlong` to a rendered sequence; None means: skip it."""
    prompt = mask.index(1) if 1 in mask else len(ids)
    if prompt <= limits.max_prompt and len(ids) <= limits.max_total:
        return Example(tuple(ids), tuple(mask), where)
    if limits.on_overlong == "error":
        raise DataError(f"{where}: {prompt} prompt + {len(ids) - prompt} response tokens "
                        f"exceed the limits (prompt {limits.max_prompt}, total "
                        f"{limits.max_total})\nfix: raise policy.max_total_sequence_length "
                        "or set data.on_overlong: skip | truncate")
    if limits.on_overlong == "skip":
        return None
    keep_prompt = min(prompt, limits.max_prompt)
    ids = ids[:keep_prompt] + ids[prompt:]
    mask = mask[:keep_prompt] + mask[prompt:]
    ids, mask = ids[: limits.max_total], mask[: limits.max_total]
    return Example(tuple(ids), tuple(mask), where) if 1 in mask else None


def fit_prompt(ids: list[int], limits: Limits, where: str) -> list[int] | None:
    if len(ids) <= limits.max_prompt:
        return ids
    if limits.on_overlong == "error":
        raise DataError(f"{where}: prompt of {len(ids)} tokens exceeds {limits.max_prompt}\n"
                        "fix: raise data.max_input_seq_length or set data.on_overlong: "
                        "skip | truncate")
    return None if limits.on_overlong == "skip" else ids[: limits.max_prompt]


@dataclass(frozen=True)
class PlainRenderer:
    tokenizer: Any
    add_bos: bool
    add_eos: bool

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if self.add_bos and bos is not None else []

    def render(self, conv: Conversation) -> tuple[list[int], list[int]]:
        ids, mask = self._bos(), []
        mask = [0] * len(ids)
        for index, message in enumerate(conv.messages):
            part = self.ids(message.get("content") or "")
            if message["role"] == "assistant" and self.add_eos:
                part.append(self.tokenizer.eos_token_id)
            ids += part
            mask += [int(_trained(conv, index))] * len(part)
        return ids, mask

    def prompt_ids(self, conv: Conversation) -> list[int]:
        return self._bos() + [t for m in conv.messages for t in self.ids(m.get("content") or "")]

    def answer_length(self, text: str) -> int:
        return len(self.ids(text)) + 1


@dataclass(frozen=True)
class ChatRenderer:
    tokenizer: Any
    template: str
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    def text(self, messages, tools, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tools=list(tools) if tools else None, chat_template=self.template,
            tokenize=False, add_generation_prompt=generation_prompt, **self.template_kwargs)

    def _encode(self, text: str, offsets: bool = False):
        return self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)

    def render(self, conv: Conversation) -> tuple[list[int], list[int]]:
        if GENERATION_BLOCK.search(self.template):
            return self._render_marked(conv)
        return self._render_by_prefix(conv)

    def _render_marked(self, conv: Conversation) -> tuple[list[int], list[int]]:
        out = self.tokenizer.apply_chat_template(
            list(conv.messages), tools=list(conv.tools) if conv.tools else None,
            chat_template=self.template, tokenize=True, return_dict=True,
            return_assistant_tokens_mask=True, **self.template_kwargs)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        if conv.train_from:
            context = self.text(conv.messages[: conv.train_from], conv.tools, True)
            mask[: len(self._encode(context)["input_ids"])] = [0] * len(
                self._encode(context)["input_ids"])
        return ids, mask

    def _render_by_prefix(self, conv: Conversation) -> tuple[list[int], list[int]]:
        full = self.text(conv.messages, conv.tools, False)
        spans = []
        for index in range(len(conv.messages)):
            if not _trained(conv, index):
                continue
            before = self.text(conv.messages[:index], conv.tools, True) if index else ""
            through = self.text(conv.messages[: index + 1], conv.tools, False)
            if not (full.startswith(before) and full.startswith(through)):
                raise DataError(
                    "the chat template renders earlier turns differently once later ones "
                    "follow, so the assistant tokens cannot be located\nfix: use a template "
                    "with {% generation %} blocks (policy.tokenizer.chat_template)")
            spans.append((len(before), len(through)))
        encoded = self._encode(full, offsets=True)
        mask = [int(any(lo <= start < hi for lo, hi in spans))
                for start, _ in encoded["offset_mapping"]]
        return list(encoded["input_ids"]), mask

    def prompt_ids(self, conv: Conversation) -> list[int]:
        return list(self._encode(self.text(conv.messages, conv.tools, True))["input_ids"])

    def answer_length(self, text: str) -> int:
        return len(self._encode(text)["input_ids"]) + 4  # end-of-turn tokens


Renderer = PlainRenderer | ChatRenderer


def example(renderer: Renderer, conv: Conversation, limits: Limits,
            where: str) -> Example | None:
    ids, mask = renderer.render(conv)
    if 1 not in mask:
        raise DataError(f"{where}: no token carries the loss (the template dropped every "
                        "assistant turn?)")
    return fit(ids, mask, limits, where)


def prompt_ids(renderer: Renderer, conv: Conversation, limits: Limits,
               where: str) -> list[int] | None:
    return fit_prompt(renderer.prompt_ids(conv), limits, where)
