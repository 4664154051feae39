"""Data rules (LR510-LR529): what `validate` can tell about the recipe's data before any model
loads. Files are looked at only as far as a cheap check goes: the kind of file, and the first
record of a JSON-lines file; `run` reads the whole data set (and reports every bad record)."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.rules import Finding, RuleContext, rule


def _specs(cfg: RecipeConfig):
    from lora_rl.data.specs import data_specs

    return [s for split in ("train", "val") for s in data_specs(cfg.data, cfg.algorithm, split)]


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode
    except (OSError, ValueError):
        return None


@rule("LR510", "error", "Both NeMo RL data blocks and the *_data_path keys name data")
def _one_layout(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    data = cfg.data
    for block, key in (("train", "train_data_path"), ("validation", "val_data_path")):
        if getattr(data, block) is not None and getattr(data, key):
            yield Finding(f"data.{key}", f"data.{block} and data.{key} both name "
                          f"{'training' if block == 'train' else 'validation'} data; lora-rl "
                          "would read both", f"keep one: move the file into data.{block}."
                          f"data_path, or remove data.{block}")


@rule("LR511", "error", "A data path is not a regular file or directory, or has no known format")
def _regular_files(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    from lora_rl.data.files import BUILDERS

    for spec in _specs(cfg):
        mode = _mode(spec.path)
        if mode is None:
            continue  # LR502 says it is missing
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            yield Finding(spec.where, f"{spec.path} is not a regular file or directory (a pipe, "
                          "socket or device); lora-rl reads data only from files",
                          "point it at a data file or a save_to_disk directory")
        elif stat.S_ISREG(mode) and spec.path.suffix.lower() not in BUILDERS:
            yield Finding(spec.where, f"{spec.path}: unknown data format "
                          f"'{spec.path.suffix}'", f"use one of {', '.join(BUILDERS)} or a "
                          "save_to_disk directory")


def _first_record_problem(spec, algorithm: str) -> str | None:
    from lora_rl.data.files import first_record

    try:
        first = first_record(spec.path, spec.limits)
    except OSError:
        return None
    if first is None:
        return None
    if isinstance(first, str):
        return first
    missing = [k for k in spec.required_keys(algorithm) if k not in first]
    if missing:
        return (f"{spec.path}: the first record has no field(s) {', '.join(missing)} "
                f"(has: {', '.join(sorted(first)) or 'nothing'})")
    if spec.kind == "chat" and not isinstance(first[spec.chat_key], list):
        return f"{spec.path}: the first record's '{spec.chat_key}' is not a list of messages"
    return None


@rule("LR512", "error", "The first record of a data file lacks the fields the recipe reads")
def _first_record(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    for spec in _specs(cfg):
        problem = _first_record_problem(spec, cfg.algorithm)
        if problem:
            keys = "chat_key" if spec.kind == "chat" else "the data block's *_key settings"
            yield Finding(spec.where, problem, f"fix the file, or set {keys} to the fields "
                          "your records use")


@rule("LR513", "error", "Chat data with a tokenizer that has no chat template")
def _template_for_chat(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    from lora_rl.data.specs import uses_chat

    if cfg.policy.tokenizer.chat_template != "default" or not uses_chat(cfg.data, cfg.algorithm):
        return
    if any(_misfit(spec, cfg) for spec in _specs(cfg)):
        return  # LR514 explains the problem: data of the wrong kind
    name = cfg.policy.tokenizer.name or cfg.policy.model_name
    if tokenizer_has_template(name) is False:
        yield Finding("policy.tokenizer.chat_template", f"the recipe's data is chat data, but "
                      f"the tokenizer of {name} has no chat template",
                      "set policy.tokenizer.chat_template to a Jinja template or a .jinja file "
                      "(or null to concatenate the messages' text)")


def tokenizer_has_template(name: str) -> bool | None:
    """Whether the local tokenizer `name` carries a chat template; None when it cannot be
    looked at here (a hub id, an unreadable directory)."""
    from lora_rl.model_source import TINY_MODEL_NAME, ModelSourceError, local_model_dir

    if name == TINY_MODEL_NAME:
        return False  # the embedded tokenizer is built without one
    try:
        directory = local_model_dir(name)
    except ModelSourceError:
        return None
    if directory is None:
        return None
    if (directory / "chat_template.jinja").is_file() or \
            (directory / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return bool(config.get("chat_template"))


def _misfit(spec, cfg: RecipeConfig) -> tuple[str, str] | None:
    """(message, fix) when a data set's kind does not fit the recipe's algorithm."""
    if spec.kind == "chat" and cfg.algorithm == "dpo":
        return ("openai_format records are conversations without preference pairs; DPO needs "
                "chosen/rejected responses", "use dataset_name: BinaryPreferenceDataset "
                "(prompt/chosen/rejected, strings or messages) or PreferenceDataset")
    if spec.kind == "ranked" and cfg.algorithm != "dpo":
        return (f"PreferenceDataset records are preference pairs; {cfg.algorithm.upper()} "
                "cannot train on them", "use openai_format or ResponseDataset records")
    return None


@rule("LR514", "error", "The data set's kind does not fit the algorithm")
def _kind_fits(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    for spec in _specs(cfg):
        misfit = _misfit(spec, cfg)
        if misfit:
            yield Finding(spec.where, *misfit)


@rule("LR515", "warning", "split_validation_size has no effect next to validation data")
def _holdout_unused(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    from lora_rl.data.specs import block_specs, data_specs

    if not data_specs(cfg.data, cfg.algorithm, "val"):
        return
    for key, block in block_specs(cfg.data, "train"):
        if block.split_validation_size:
            yield Finding(f"{key}.split_validation_size", "the recipe has validation data, so "
                          "no training records are held out", "remove split_validation_size, "
                          "or the validation data")


@rule("LR516", "warning", "A prompt, system prompt or chat template file does not exist (yet)")
def _text_files_exist(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    named = {}
    for spec in _specs(cfg):
        for key in ("prompt_file", "system_prompt_file"):
            value = getattr(spec, key)
            if value:
                named.setdefault(value, f"{spec.where.rsplit('.', 1)[0]}.{key}"
                                 if not spec.where.endswith("_data_path") else f"data.{key}")
    template = cfg.policy.tokenizer.chat_template
    if template and template.endswith(".jinja"):
        named[template] = "policy.tokenizer.chat_template"
    for value, key in named.items():
        mode = _mode(Path(value))
        if mode is None or not stat.S_ISREG(mode):
            yield Finding(key, f"{value} is not a file here (it is read when the run starts)",
                          "check the path; it is relative to the working directory")


@rule("LR517", "warning", "Sequence packing is acted on for SFT on the DTensor backend only")
def _packing_scope(cfg: RecipeConfig, ctx: RuleContext) -> Iterator[Finding]:
    if not cfg.policy.sequence_packing.enabled:
        return
    if cfg.algorithm != "sft" or cfg.policy.backend != "dtensor":
        yield Finding("policy.sequence_packing.enabled", "sequence packing has no effect here: "
                      f"lora-rl packs SFT batches on the DTensor backend, and this is "
                      f"{cfg.algorithm.upper()} on {cfg.policy.backend}",
                      "set policy.sequence_packing.enabled: false")
