"""Shared fixtures: small recipes written as YAML into a temporary directory.

Tests build recipes from a valid minimal base (`recipe_kit.base(kind)`) plus nested changes
(`{"policy.dtensor_cfg.lora_cfg.dim": 4, "sft": DELETE}`), dump them to YAML and validate the
file; expected line/column numbers are computed from the YAML text that was written
(`recipe_kit.position(text, "policy.dtensor_cfg._v2")`), never hard-coded.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

DELETE = object()
"""A change value that removes the key."""

_SFT: dict[str, Any] = {
    "sft": {"max_num_steps": 10, "val_global_batch_size": 4, "val_micro_batch_size": 1},
    "policy": {
        "model_name": "lora-rl/tiny-llama",
        "precision": "float32",
        "train_global_batch_size": 4,
        "train_micro_batch_size": 1,
        "max_total_sequence_length": 64,
        "dtensor_cfg": {
            "enabled": True,
            "_v2": True,
            "tensor_parallel_size": 1,
            "lora_cfg": {"enabled": True, "match_all_linear": True, "dim": 8, "alpha": 16,
                         "use_triton": False},
        },
    },
    "data": {"dataset_name": "tiny-arithmetic"},
    "cluster": {"num_nodes": 1, "gpus_per_node": 1},
}

_KIND_CHANGES: dict[str, dict[str, Any]] = {
    "sft": {},
    "grpo": {
        "sft": DELETE,
        "grpo": {"max_num_steps": 2, "num_prompts_per_step": 2, "num_generations_per_prompt": 2},
        "policy.generation": {"backend": "torch", "max_new_tokens": 8, "temperature": 1.0},
        "loss_fn": {"reference_policy_kl_penalty": 0.01},
        "env": {"reward": "exact_match"},
    },
    "megatron": {
        "policy.dtensor_cfg": {"enabled": False},
        "policy.megatron_cfg": {
            "enabled": True,
            "bridge_type": "megatron-bridge",
            "tensor_model_parallel_size": 1,
            "pipeline_model_parallel_size": 1,
            "peft": {"enabled": True, "dim": 8, "alpha": 16, "lora_B_init_method": "zero"},
        },
    },
}

LLAMA_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "vocab_size": 128,
}


@dataclass(frozen=True)
class Position:
    """Where a key is written: 1-based line, the key's column and its scalar value's column."""

    line: int
    key_column: int
    value_column: int


class RecipeKit:
    """Pure helpers (no files): base trees, nested changes, YAML text and key positions."""

    DELETE = DELETE
    KINDS = tuple(_KIND_CHANGES)
    LLAMA_CONFIG = LLAMA_CONFIG

    @staticmethod
    def base(kind: str = "sft") -> dict[str, Any]:
        return RecipeKit.changed(_SFT, _KIND_CHANGES[kind])

    @staticmethod
    def changed(tree: dict[str, Any], changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """A deep copy of `tree` with dotted-key changes applied in order (DELETE removes)."""
        out = copy.deepcopy(tree)
        for dotted, value in (changes or {}).items():
            parts = dotted.split(".")
            node = out
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            if value is DELETE:
                node.pop(parts[-1], None)
            else:
                node[parts[-1]] = copy.deepcopy(value)
        return out

    @staticmethod
    def dump(tree: Any) -> str:
        return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False,
                              allow_unicode=True, width=1000)

    @staticmethod
    def position(text: str, dotted: str) -> Position:
        """The position of a mapping key, or of a list item (`key[2]`; a mapping inside an item:
        `key[2].name`), in block-style YAML (as `dump` writes it), found by indentation alone,
        independently of the loader under test."""
        lines = text.splitlines()
        start, stop, indent = 0, len(lines), 0
        found = -1
        parts = dotted.split(".")
        item = re.fullmatch(r"(.+)\[(\d+)\]", parts[-1])
        if item:
            parts[-1] = item[1]
        for depth, part in enumerate(parts):
            inner = re.fullmatch(r"(.+)\[(\d+)\]", part) if depth < len(parts) - 1 else None
            part = inner[1] if inner else part
            found = -1
            for index in range(start, stop):
                line = lines[index]
                if line.startswith(" " * indent + f"{part}:") and \
                        (len(line) == indent or line[indent] != " "):
                    found = index
                    break
            if found < 0:
                raise KeyError(f"{dotted}: '{part}' not found in\n{text}")
            if depth == len(parts) - 1:
                break
            end = found + 1
            while end < stop and (not lines[end].strip()
                                  or len(lines[end]) - len(lines[end].lstrip(" ")) > indent
                                  or lines[end].lstrip(" ").startswith("- ")
                                  and len(lines[end]) - len(lines[end].lstrip(" ")) == indent):
                end += 1
            start, stop = found + 1, end
            if inner:  # the item's mapping: its first key shares the "- " line
                items = [k for k in range(start, stop) if lines[k].startswith(" " * indent + "- ")]
                start = items[int(inner[2])]
                stop = next((k for k in items if k > start), stop)
                lines[start] = lines[start][:indent] + "  " + lines[start][indent + 2:]
            indent += 2
        key_column = indent + 1
        if item:
            # `dump` writes a block list's items at its key's indent, one per line: "- value".
            line = found + 2 + int(item[2])
            return Position(line, key_column, key_column + 2)
        return Position(found + 1, key_column, key_column + len(parts[-1]) + 2)


class RecipeDir:
    """A temporary working directory for recipes, model directories and data files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.kit = RecipeKit

    def write(self, changes: dict[str, Any] | None = None, *, kind: str = "sft",
              name: str = "recipe.yaml", tree: Any = None, text: str | None = None) -> Path:
        """Write a recipe: `text` verbatim, or `tree`, or the base of `kind` with `changes`."""
        if text is None:
            text = RecipeKit.dump(tree if tree is not None else
                                  RecipeKit.changed(RecipeKit.base(kind), changes))
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def text(self, name: str = "recipe.yaml") -> str:
        return (self.root / name).read_text(encoding="utf-8")

    def position(self, dotted: str, name: str = "recipe.yaml") -> Position:
        return RecipeKit.position(self.text(name), dotted)

    def model(self, name: str = "model", config: dict[str, Any] | None = None,
              **changes: Any) -> Path:
        """A model directory with a hand-written config.json: the small Llama-like
        LLAMA_CONFIG (or `config`) updated with `changes`. `empty_dir` makes one without."""
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        content = {**(LLAMA_CONFIG if config is None else config), **changes}
        (directory / "config.json").write_text(json.dumps(content), encoding="utf-8")
        return directory

    def empty_dir(self, name: str) -> Path:
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        return directory


@pytest.fixture(scope="session")
def recipe_kit() -> type[RecipeKit]:
    """Recipe helpers without files (session scope, so hypothesis tests can use them)."""
    return RecipeKit


@pytest.fixture
def recipe_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RecipeDir:
    """A fresh working directory (the cwd, so diagnostics name files as `recipe.yaml`) with an
    empty model cache: model-aware rules run only against the model directories a test makes."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("LORA_RL_CACHE", str(tmp_path / "cache"))
    return RecipeDir(work)
