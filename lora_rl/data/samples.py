"""Records -> conversations: what each algorithm trains on and what generation continues.

Every data kind becomes the same shape, so one renderer (chat template or plain text) serves
SFT, DPO and GRPO alike. Record problems are collected and reported with their file:line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_rl.data.files import summarise
from lora_rl.data.jsonl import DataError, Record
from lora_rl.data.specs import DataSpec

Message = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Conversation:
    """Messages (and tool definitions) to render. Assistant turns at index >= `train_from`
    carry the loss; earlier ones are context (a DPO prompt's own history)."""

    messages: tuple[Message, ...]
    tools: tuple[Message, ...] | None = None
    train_from: int = 0


@dataclass(frozen=True)
class Sample:
    where: str
    train: tuple[Conversation, ...]
    """SFT: the conversation; DPO: (chosen, rejected); GRPO: none."""
    prompt: Conversation
    """What generation continues (evaluation, rollouts)."""
    answer: str
    """Reference text: the last response (SFT), the answer (GRPO); empty for DPO."""
    prompt_text: str
    """The record's own prompt text (handed to reward functions)."""


class RecordProblem(ValueError):
    pass


def _text(record: Record, key: str) -> str:
    value = record.fields.get(key)
    if not isinstance(value, str):
        found = "missing" if value is None else f"a {type(value).__name__}, not a string"
        present = sorted(k for k, v in record.fields.items() if v is not None)
        raise RecordProblem(f"field '{key}' is {found} (has: {', '.join(present)})")
    return value


def _messages(value: Any, key: str) -> list[Message]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RecordProblem(f"field '{key}' must be a non-empty list of messages "
                            "({\"role\": ..., \"content\": ...})")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RecordProblem(f"{key}[{i}] is not a message with a role in {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str) and not message.get("tool_calls"):
            raise RecordProblem(f"{key}[{i}] ({message['role']}) has no text `content`")
        out.append({k: v for k, v in message.items() if v is not None})
    return out


@dataclass(frozen=True)
class Reader:
    """How one data set's records become samples for one algorithm."""

    spec: DataSpec
    algorithm: str
    system_prompt: str | None
    prompt_template: str | None

    @classmethod
    def for_spec(cls, spec: DataSpec, algorithm: str) -> Reader:
        system = spec.system_prompt
        if spec.system_prompt_file:
            system = _read_text(spec.system_prompt_file, "system_prompt_file", spec)
        template = _read_text(spec.prompt_file, "prompt_file", spec) if spec.prompt_file \
            else None
        return cls(spec, algorithm, system, template)

    def _system(self, record: Record, messages: list[Message]) -> list[Message]:
        system = self.system_prompt
        if self.spec.system_key and isinstance(record.fields.get(self.spec.system_key), str):
            system = record.fields[self.spec.system_key]
        if system is None or (messages and messages[0]["role"] == "system"):
            return messages
        return [{"role": "system", "content": system}, *messages]

    def _user(self, text: str) -> Message:
        return {"role": "user", "content": self.prompt_template.replace("{}", text)
                if self.prompt_template else text}

    def prompt(self, text: str) -> Conversation:
        """The conversation a prompt typed by a user becomes, as a record's prompt would
        (system prompt and prompt_file template included): what `lora-rl generate` renders."""
        return Conversation(tuple(self._system(Record("<prompt>", 1, {}), [self._user(text)])))

    def _tools(self, record: Record) -> tuple[Message, ...] | None:
        tools = record.fields.get(self.spec.tool_key)
        if tools is None:
            return None
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise RecordProblem(f"field '{self.spec.tool_key}' must be a list of tool "
                                "definitions (JSON objects)")
        return tuple(tools)

    def sample(self, record: Record) -> Sample:
        where = f"{record.file}:{record.line}"
        if self.algorithm == "dpo":
            return self._preference(record, where)
        if self.spec.kind == "chat":
            return self._chat(record, where)
        if self.spec.kind == "ranked":
            raise RecordProblem("PreferenceDataset records are preference pairs; they train DPO")
        prompt = _text(record, self.spec.input_key)
        answer = _text(record, self.spec.output_key)
        context = self._system(record, [self._user(prompt)])
        full = Conversation(tuple(context + [{"role": "assistant", "content": answer}]))
        train = (full,) if self.algorithm == "sft" else ()
        return Sample(where, train, Conversation(tuple(context)), answer, prompt)

    def _chat(self, record: Record, where: str) -> Sample:
        messages = self._system(record, _messages(record.fields.get(self.spec.chat_key),
                                                  self.spec.chat_key))
        tools = self._tools(record)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise RecordProblem(f"'{self.spec.chat_key}' has no assistant message to "
                                f"{'learn' if self.algorithm == 'sft' else 'take the answer'} "
                                "from")
        prompt = Conversation(tuple(messages[:last]), tools)
        users = [m["content"] for m in messages[:last] if m["role"] == "user"]
        train = (Conversation(tuple(messages), tools),) if self.algorithm == "sft" else ()
        return Sample(where, train, prompt, messages[last].get("content") or "",
                      users[-1] if users else "")

    def _preference(self, record: Record, where: str) -> Sample:
        spec = self.spec
        if spec.kind == "ranked":
            context = _messages(record.fields.get("context"), "context")
            ranked = record.fields.get("completions")
            if not isinstance(ranked, list) or len(ranked) < 2 or not all(
                    isinstance(c, dict) and isinstance(c.get("rank"), int) for c in ranked):
                raise RecordProblem("'completions' must list at least two {\"rank\": int, "
                                    "\"completion\": [messages]}")
            ordered = sorted(ranked, key=lambda c: c["rank"])
            chosen = _messages(ordered[0].get("completion"), "completions[rank 0].completion")
            rejected = _messages(ordered[1].get("completion"), "completions[rank 1].completion")
        elif spec.kind == "chat":
            raise RecordProblem("openai_format records have no preference pairs; DPO reads "
                                "BinaryPreferenceDataset or PreferenceDataset records")
        else:
            raw = record.fields.get(spec.prompt_key)
            context = [self._user(raw)] if isinstance(raw, str) else \
                _messages(raw, spec.prompt_key)
            chosen = self._completion(record, spec.chosen_key)
            rejected = self._completion(record, spec.rejected_key)
        context = self._system(record, context)
        tools = self._tools(record)
        start = len(context)
        pair = (Conversation(tuple(context + chosen), tools, start),
                Conversation(tuple(context + rejected), tools, start))
        users = [m["content"] for m in context if m["role"] == "user"]
        return Sample(where, pair, Conversation(tuple(context), tools), "",
                      users[-1] if users else "")

    def _completion(self, record: Record, key: str) -> list[Message]:
        value = record.fields.get(key)
        if isinstance(value, str):
            return [{"role": "assistant", "content": value}]
        if value is None:
            raise RecordProblem(f"field '{key}' is missing")
        messages = _messages(value, key)
        if not any(m["role"] == "assistant" for m in messages):
            raise RecordProblem(f"'{key}' has no assistant message")
        return messages


def _read_text(name: str, key: str, spec: DataSpec) -> str:
    from lora_rl.data.bounded import read_text_file
    from lora_rl.data.files import check_path

    path = Path(name)
    check_path(path, f"{key} of {spec.where}", data=False)
    try:
        return read_text_file(path, spec.limits, key)
    except OSError as exc:
        raise DataError(f"{path}: cannot read {key} ({exc})") from None


def read_samples(reader: Reader, records: list[Record]) -> list[Sample]:
    """All samples, or DataError listing every bad record with its file:line."""
    samples, problems = [], []
    for record in records:
        try:
            samples.append(reader.sample(record))
        except RecordProblem as exc:
            problems.append(f"{record.file}:{record.line}: {exc}")
    if problems:
        keys = ", ".join(reader.spec.required_keys(reader.algorithm))
        raise DataError(summarise(problems, "fix: correct those records, or name the right "
                                  f"fields in the recipe (expected: {keys})"))
    return samples
