"""Edit a recipe's YAML in place (ruamel round-trip) so its LoRA block uses another schema.

Values come from the *validated* input (so inherited `defaults:` values and schema defaults are
known); the file itself is only touched where the converted recipe must differ from what it
would inherit anyway, which keeps the diff small and every comment in place.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from lora_rl.config.recipe import RecipeConfig
from lora_rl.convert.mapping import Loss, Schema, read_block, write_block

BLOCKS: dict[str, tuple[str, str]] = {
    # schema -> (backend section under policy, LoRA block in it)
    "dtensor": ("dtensor_cfg", "lora_cfg"),
    "megatron": ("megatron_cfg", "peft"),
}
AREAL_SECTION = "actor"
"""AReaL keeps its LoRA keys on the train engine config, i.e. under `actor:`."""


def round_trip_yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines or comments
    yaml.indent(mapping=2, sequence=4, offset=2)  # NeMo RL's style for block lists
    # ruamel writes a plain null as an empty value; recipes spell it `null`.
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def dump(yaml: YAML, doc: Any) -> str:
    buffer = io.StringIO()
    yaml.dump(doc, buffer)
    return buffer.getvalue()


@dataclass
class Edit:
    """A document being converted, and what did not map exactly."""

    doc: Any
    losses: list[Loss] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def source_schema(cfg: RecipeConfig) -> Schema | None:
    """The LoRA block that trains: the enabled backend's, else any enabled one."""
    p = cfg.policy
    blocks = {"megatron": p.megatron_cfg.peft.enabled and p.megatron_cfg.enabled,
              "dtensor": p.dtensor_cfg.lora_cfg.enabled and p.dtensor_cfg.enabled}
    for schema, active in blocks.items():
        if active:
            return schema  # type: ignore[return-value]
    if p.megatron_cfg.peft.enabled:
        return "megatron"
    return "dtensor" if p.dtensor_cfg.lora_cfg.enabled else None


def effective_block(cfg: RecipeConfig, schema: Schema) -> dict[str, Any]:
    backend, block = BLOCKS[schema]
    return getattr(getattr(cfg.policy, backend), block).model_dump()


def to_backend(edit: Edit, cfg: RecipeConfig, source: Schema, target: Schema) -> None:
    """Rewrite `edit.doc` (a lora-rl recipe) so the LoRA block and backend are `target`'s."""
    spec, losses = read_block(source, effective_block(cfg, source))
    values, more = write_block(target, spec, source)
    edit.losses += losses + more
    _switch_backend(edit, cfg, target)  # first, so a new section starts with `enabled`
    backend, block = BLOCKS[target]
    old_backend, old_block = BLOCKS[source]
    eff_target = effective_block(cfg, target)
    for key, value in values.items():
        _put(edit.doc, ("policy", backend, block, key), value, eff_target.get(key))
    _put(edit.doc, ("policy", old_backend, old_block, "enabled"), False,
         effective_block(cfg, source)["enabled"])


def _switch_backend(edit: Edit, cfg: RecipeConfig, target: Schema) -> None:
    p, doc = cfg.policy, edit.doc
    dt, mg = p.dtensor_cfg, p.megatron_cfg
    _put(doc, ("policy", "dtensor_cfg", "enabled"), target == "dtensor", dt.enabled)
    _put(doc, ("policy", "megatron_cfg", "enabled"), target == "megatron", mg.enabled)
    if target == "megatron":
        if mg.bridge_type != "megatron-bridge":
            edit.notes.append("bridge_type set to megatron-bridge (mbridge has no LoRA path)")
        _put(doc, ("policy", "megatron_cfg", "bridge_type"), "megatron-bridge", mg.bridge_type)
        _put(doc, ("policy", "megatron_cfg", "tensor_model_parallel_size"),
             dt.tensor_parallel_size, mg.tensor_model_parallel_size)
        _carry_training(edit, cfg, target)
        return
    _put(doc, ("policy", "dtensor_cfg", "_v2"), True, dt.v2)  # DTensor LoRA needs v2 (LR102)
    tp = mg.tensor_model_parallel_size
    _put(doc, ("policy", "dtensor_cfg", "tensor_parallel_size"), tp, dt.tensor_parallel_size)
    if tp > 1 and dt.lora_cfg.use_triton:
        # The Triton kernels do not support TP > 1 (LR103).
        _put(doc, ("policy", "dtensor_cfg", "lora_cfg", "use_triton"), False, True)
        edit.notes.append(f"use_triton set to false (tensor_parallel_size {tp})")
    if mg.pipeline_model_parallel_size > 1:
        pp = mg.pipeline_model_parallel_size
        edit.losses.append(Loss("pipeline_model_parallel_size", f"{pp} has no DTensor "
                                "counterpart; those devices become data parallel"))
    _carry_training(edit, cfg, target)


def _carry_training(edit: Edit, cfg: RecipeConfig, target: Schema) -> None:
    """Optimizer, schedule, clipping and recompute: each backend reads its own keys, so the
    source backend's values are written into the target's (CannotCarry when impossible)."""
    from lora_rl.convert import training

    carried = training.to_megatron(cfg) if target == "megatron" else training.to_dtensor(cfg)
    for key, value in carried.values.items():
        path = ("policy", *key.split("."))
        effective = _effective(cfg, path)
        if isinstance(value, dict):  # optimizer kwargs: key by key, to keep the rest
            for sub, item in value.items():
                _put(edit.doc, (*path, sub), item, _plain((effective or {}).get(sub)))
        elif key == "scheduler":
            _put_block(edit.doc, path, value, effective)
        else:
            _put(edit.doc, path, value, effective)
    edit.losses += [Loss(key, detail) for key, detail in carried.losses]
    edit.notes.append(f"optimizer, learning-rate schedule and gradient clipping carried to "
                      f"{target}'s keys")


def _effective(cfg: RecipeConfig, path: tuple[str, ...]) -> Any:
    """The value in effect at `path`; None below a null section (NeMo RL's Megatron recipes
    write `policy.optimizer: null`)."""
    node: Any = cfg
    for part in path:
        if node is None:
            return None
        node = getattr(node, part)
    if isinstance(node, list):
        return [s.model_dump() for s in node]
    return node.model_dump() if hasattr(node, "model_dump") else node


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _put_block(doc: Any, path: tuple[str, ...], value: list[dict] | None, effective: Any) -> None:
    """A list of mappings in block style (the scheduler list), unless already in effect."""
    if value == effective or (not value and not effective):
        return
    node = doc
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = CommentedMap()
        node = node[key]
    node[path[-1]] = None if value is None else CommentedSeq(
        CommentedMap((k, CommentedMap(v) if isinstance(v, dict) else _yaml_value(v))
                     for k, v in item.items()) for item in value)


def to_areal(edit: Edit, cfg: RecipeConfig, source: Schema) -> Any:
    """An AReaL fragment (`actor:` keys) for the recipe's LoRA block."""
    spec, losses = read_block(source, effective_block(cfg, source))
    values, more = write_block("areal", spec, source)
    edit.losses += losses + more
    actor = CommentedMap(path=cfg.policy.model_name)
    for key, value in values.items():
        actor[key] = _yaml_value(value)
    doc = CommentedMap(actor=actor)
    doc.yaml_set_start_comment("AReaL LoRA settings converted by `lora-rl convert`; merge the "
                               "`actor:` keys into an AReaL experiment config.")
    return doc


def areal_block(doc: Any) -> tuple[CommentedMap, CommentedMap] | None:
    """(section holding AReaL's LoRA keys, its parent) in an AReaL config, if this is one."""
    if not isinstance(doc, dict):
        return None
    if "use_lora" in doc:
        return doc, doc
    section = doc.get(AREAL_SECTION)
    if isinstance(section, dict) and "use_lora" in section:
        return section, doc
    return None


def from_areal(edit: Edit, block: dict[str, Any], target: Schema) -> Any:
    """A lora-rl `policy:` fragment for an AReaL config's LoRA keys."""
    spec, losses = read_block("areal", dict(block))
    values, more = write_block(target, spec, "areal")
    edit.losses += losses + more
    backend, name = BLOCKS[target]
    section = CommentedMap(enabled=True)
    if target == "dtensor":
        section["_v2"] = True
    section[name] = CommentedMap((k, _yaml_value(v)) for k, v in values.items())
    other = "megatron_cfg" if target == "dtensor" else "dtensor_cfg"
    doc = CommentedMap(policy=CommentedMap([(backend, section),
                                            (other, CommentedMap(enabled=False))]))
    doc.yaml_set_start_comment("lora-rl policy settings converted from AReaL by `lora-rl "
                               "convert`; merge them into a recipe (`lora-rl recipes cp`).")
    return doc


def _put(doc: Any, path: tuple[str, ...], value: Any, effective: Any) -> None:
    """Set `path` to `value` unless the recipe already gets `value` there (from this file, its
    `defaults:` parents or the schema default). Creates missing sections only when writing."""
    node = doc
    for key in path[:-1]:
        child = node.get(key) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            if value == effective and key not in node:
                return
            child = CommentedMap()
            node[key] = child
        node = child
    leaf = path[-1]
    if leaf in node:
        # `1 == True` in Python: a type change counts as a change.
        if node[leaf] != value or isinstance(node[leaf], bool) != isinstance(value, bool):
            node[leaf] = _yaml_value(value)
    elif value != effective and leaf == "enabled" and isinstance(node, CommentedMap):
        node.insert(0, leaf, value)  # the switch reads best as a section's first key
    elif value != effective:
        node[leaf] = _yaml_value(value)


def _yaml_value(value: Any) -> Any:
    if isinstance(value, list):
        seq = CommentedSeq(value)
        seq.fa.set_flow_style()  # `[q_proj, v_proj]`, as recipes write module lists
        return seq
    if isinstance(value, float) and value.is_integer() and 1 <= abs(value) < 1e15:
        return int(value)  # `alpha: 16`, not `alpha: 16.0`
    return value
