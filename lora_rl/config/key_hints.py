"""What an unknown key most likely meant: a spelling in the same section, another schema's name
for one of its keys (AReaL's `lora_rank`, PEFT's `r`, Megatron's `lora_A_init_method` in the
DTensor block), or a key that exists, but in another section.

The AReaL and DTensor/Megatron names come from `lora_rl.convert.mapping.SCALARS`, the table
`lora-rl convert` translates with: one table for both.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pydantic import BaseModel

from lora_rl.config.diagnostics import KeyPath, dotted
from lora_rl.config.schema_walk import field_keys, key_paths

PEFT_NAMES: dict[str, str] = {"r": "dim", "rank": "dim", "lora_alpha": "alpha",
                              "lora_dropout": "dropout"}
"""Hugging Face PEFT's `LoraConfig` names (and the bare `rank`) -> the neutral names of
`SCALARS`."""

_MEANING = {"enabled": "the LoRA switch", "dim": "the LoRA rank", "alpha": "the LoRA scale "
            "numerator", "dropout": "LoRA dropout", "dropout_position": "where LoRA dropout "
            "applies", "a_init": "the initialisation of A"}
_SCHEMA_WORDS = {"dtensor": "NeMo RL's DTensor lora_cfg", "megatron": "NeMo RL's Megatron peft",
                 "areal": "AReaL's"}


@dataclass(frozen=True)
class KeyHint:
    key: str | None
    """The key of this section that was meant, when there is one."""
    fix: str


def hint(root: type[BaseModel], section: type[BaseModel] | None, section_path: KeyPath,
         key: str) -> KeyHint:
    """The fix line for unknown `key` in `section` (at `section_path` of `root`)."""
    if section is None:
        return KeyHint(None, "remove the key")
    choices = field_keys(section)
    foreign = _foreign_name(section, key)
    if foreign is not None:
        meant, words = foreign
        return KeyHint(meant, f"did you mean '{meant}'? ('{key}' is {words}; here it is "
                       f"'{meant}')")
    lora_name = _lora_name(key)
    if lora_name is not None:  # `lora_rank:` outside both LoRA blocks
        words, neutral = lora_name
        return KeyHint(None, f"'{key}' is {words} name for {_MEANING.get(neutral, neutral)}: in "
                       f"lora-rl it is policy.dtensor_cfg.lora_cfg.{_column('dtensor', neutral)}"
                       f" (or policy.megatron_cfg.peft.{_column('megatron', neutral)})")
    twin = _BACKEND_TWINS.get((section.__name__, key))
    if twin is not None:
        return KeyHint(twin[0], f"did you mean '{twin[0]}'? ('{key}' is {twin[1]}; here it is "
                       f"'{twin[0]}')")
    elsewhere = [p for p in _sections_with(root, key) if p != section_path]
    where = f"'{key}' is a key of {' and '.join(dotted(p) for p in elsewhere[:2])}" \
        if elsewhere else None
    # A key that exists verbatim in another section is most likely misplaced: only a very close
    # spelling here beats that (use_triton in the Megatron block is not a typo of use_rslora).
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.8 if where else 0.6)
    if close:
        return KeyHint(close[0], f"did you mean '{close[0]}'?" + (f" ({where})" if where else ""))
    if where:
        return KeyHint(None, f"{where}, not of {dotted(section_path) or 'the top level'}: "
                       "move it there, or remove it")
    return KeyHint(None, f"valid keys here: {', '.join(choices)}")


_BACKEND_TWINS: dict[tuple[str, str], tuple[str, str]] = {
    # (section class, the other backend's key) -> (this backend's key, whose name it is)
    ("DTensorConfig", "peft"): ("lora_cfg", "the Megatron backend's LoRA block"),
    ("DTensorConfig", "tensor_model_parallel_size"):
        ("tensor_parallel_size", "the Megatron backend's name"),
    ("MegatronConfig", "lora_cfg"): ("peft", "the DTensor backend's LoRA block"),
    ("MegatronConfig", "tensor_parallel_size"):
        ("tensor_model_parallel_size", "the DTensor backend's name"),
}


def _lora_name(key: str) -> tuple[str, str] | None:
    """("whose", neutral name) when `key` is AReaL's or PEFT's name for a LoRA setting."""
    from lora_rl.convert.mapping import SCALARS, SCHEMAS

    areal = SCHEMAS.index("areal") + 1
    for row in SCALARS:
        if row[areal] == key:
            return "AReaL's" + (" and PEFT's" if key in PEFT_NAMES else ""), row[0]
    if key in PEFT_NAMES:
        return ("a common" if key == "rank" else "PEFT's"), PEFT_NAMES[key]
    return None


def _column(schema: str, neutral: str) -> str:
    from lora_rl.convert.mapping import SCALARS, SCHEMAS

    row = next(row for row in SCALARS if row[0] == neutral)
    return str(row[SCHEMAS.index(schema) + 1])  # type: ignore[arg-type]


def _foreign_name(section: type[BaseModel], key: str) -> tuple[str, str] | None:
    """(this section's key, "whose name it is") when `key` is another schema's name for a key
    of this LoRA block."""
    from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig
    from lora_rl.convert.mapping import SCALARS, SCHEMAS

    schema = {DTensorLoraConfig: "dtensor", MegatronPeftConfig: "megatron"}.get(section)
    if schema is None:
        return None
    column = {name: index for index, name in enumerate(SCHEMAS, 1)}  # SCALARS' columns
    rows = {row[0]: row for row in SCALARS}
    for row in SCALARS:
        neutral, here = row[0], row[column[schema]]
        for other in SCHEMAS:
            if other != schema and row[column[other]] == key and here and here != key:
                whose = _SCHEMA_WORDS[other] + (" and PEFT's" if key in PEFT_NAMES else "")
                return here, f"{whose} name for {_MEANING.get(neutral, neutral)}"
    found = _lora_name(key)
    here = rows[found[1]][column[schema]] if found else None
    if found and here:
        return here, f"{found[0]} name for {_MEANING.get(found[1], found[1])}"
    return None


def _sections_with(root: type[BaseModel], key: str) -> tuple[KeyPath, ...]:
    return key_paths(root).get(key, ())
