"""The recipe's data section, resolved: which local files feed which split, and how their records
read. Torch-free and import-light: `validate` uses it as well as `run`.

Both layouts land here: NeMo RL's blocks (`data.train` / `data.validation`, one block or a list,
each completed by `data.default`) and lora-rl's `train_data_path` / `val_data_path` keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lora_rl.config.sections import DataBlock, DataConfig
from lora_rl.data.bounded import DEFAULT_LIMITS, Limits

Split = Literal["train", "val"]
Kind = Literal["chat", "plain", "ranked"]
"""chat: `openai_format` conversations; plain: keyed strings (SFT input/output, DPO
prompt/chosen/rejected whose values may also be message lists, GRPO input/answer); ranked:
NeMo RL's `PreferenceDataset` (context + ranked completions)."""

_KINDS: dict[str, Kind] = {"openai_format": "chat", "PreferenceDataset": "ranked"}


@dataclass(frozen=True)
class DataSpec:
    """One local data set and how to read its records."""

    path: Path
    kind: Kind
    where: str
    """The recipe key that named the file, e.g. `data.train[1].data_path`."""
    split: str = "train"
    input_key: str = "input"
    output_key: str = "output"
    chat_key: str = "messages"
    tool_key: str = "tools"
    system_key: str | None = None
    prompt_key: str = "prompt"
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    system_prompt: str | None = None
    system_prompt_file: str | None = None
    prompt_file: str | None = None
    holdout: float = 0.0
    """Share of this training set held out for validation (`split_validation_size`)."""
    holdout_seed: int = 0
    limits: Limits = DEFAULT_LIMITS
    """`data.max_line_bytes` / `data.max_file_bytes`."""

    def required_keys(self, algorithm: str) -> tuple[str, ...]:
        """Fields every record must carry (the first record is checked at validate time)."""
        if self.kind == "chat":
            return (self.chat_key,)
        if self.kind == "ranked":
            return ("context", "completions")
        if algorithm == "dpo":
            return (self.prompt_key, self.chosen_key, self.rejected_key)
        return (self.input_key, self.output_key)


def limits(data: DataConfig) -> Limits:
    """The read limits of every data file of the recipe."""
    return Limits(line_bytes=data.max_line_bytes, file_bytes=data.max_file_bytes)


def _merged(block: DataBlock, default: DataBlock | None) -> DataBlock:
    if default is None:
        return block
    values = default.model_dump(exclude_none=True)
    values.update(block.model_dump(exclude_none=True))
    return DataBlock.model_validate(values)


def _blocks(value: DataBlock | list[DataBlock] | None) -> list[DataBlock]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def block_key(split: Split, index: int, many: bool) -> str:
    name = "train" if split == "train" else "validation"
    return f"data.{name}.{index}" if many else f"data.{name}"


def _from_block(block: DataBlock, where: str, top: DataConfig) -> DataSpec | None:
    if block.data_path is None:
        return None
    return DataSpec(
        path=Path(block.data_path), kind=_KINDS.get(block.dataset_name or "", "plain"),
        where=f"{where}.data_path", split=block.split or "train",
        input_key=block.input_key or "input", output_key=block.output_key or "output",
        chat_key=block.chat_key or "messages", tool_key=block.tool_key or "tools",
        system_key=block.system_key, prompt_key=block.prompt_key or "prompt",
        chosen_key=block.chosen_key or "chosen", rejected_key=block.rejected_key or "rejected",
        system_prompt=block.system_prompt,
        system_prompt_file=block.system_prompt_file or top.system_prompt_file,
        prompt_file=block.prompt_file or top.prompt_file,
        holdout=block.split_validation_size or 0.0, holdout_seed=block.seed or 0,
        limits=limits(top))


def block_specs(data: DataConfig, split: Split) -> list[tuple[str, DataBlock]]:
    """(recipe key, merged block) for every NeMo RL data block of `split`."""
    raw = data.train if split == "train" else data.validation
    blocks = _blocks(raw)
    many = isinstance(raw, list)
    return [(block_key(split, i, many), _merged(b, data.default)) for i, b in enumerate(blocks)]


def legacy_spec(data: DataConfig, algorithm: str, split: Split) -> DataSpec | None:
    """`train_data_path` / `val_data_path`: plain records under the top-level key names."""
    path = data.train_data_path if split == "train" else data.val_data_path
    if not path:
        return None
    output = {"sft": data.response_key, "grpo": data.answer_key}.get(algorithm,
                                                                       data.response_key)
    key = "train_data_path" if split == "train" else "val_data_path"
    return DataSpec(path=Path(path), kind="plain", where=f"data.{key}",
                    input_key=data.prompt_key, output_key=output, prompt_key=data.prompt_key,
                    chosen_key=data.chosen_key, rejected_key=data.rejected_key,
                    system_prompt_file=data.system_prompt_file, prompt_file=data.prompt_file,
                    limits=limits(data))


def data_specs(data: DataConfig, algorithm: str, split: Split) -> list[DataSpec]:
    """Every local data set of `split` named by the data section (built-in data sets
    excluded); `algorithm` picks the legacy layout's output key."""
    specs = [s for key, block in block_specs(data, split)
             if (s := _from_block(block, key, data))]
    legacy = legacy_spec(data, algorithm, split)
    return specs + ([legacy] if legacy else [])


def hub_only_blocks(data: DataConfig) -> list[tuple[str, DataBlock]]:
    """Blocks that name a data set but no local `data_path` (lora-rl downloads nothing)."""
    return [(key, block) for split in ("train", "val") for key, block in block_specs(data, split)
            if block.data_path is None]


def uses_chat(data: DataConfig, algorithm: str) -> bool:
    return any(s.kind in ("chat", "ranked") for split in ("train", "val")
               for s in data_specs(data, algorithm, split))
