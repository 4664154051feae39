"""The LoRA block of each schema, as one neutral `LoraSpec`, and the tables that map between them.

Schemas: DTensor `policy.dtensor_cfg.lora_cfg` (Hugging Face module names), Megatron
`policy.megatron_cfg.peft` (Megatron-Bridge names: q/k/v and gate/up fused, or canonical names
for one adapter per projection) and AReaL's flat
actor keys (`use_lora`, `lora_rank`, `lora_alpha`, `target_modules`, `peft_type`). Every
difference between them is data in this file; `rewrite.py` only edits YAML.

Whatever a target schema cannot say exactly becomes a `Loss` naming the key, so the user is told
instead of getting a silently different adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from lora_rl.architecture import FAMILIES
from lora_rl.lora.matching import CANONICAL_PARTS

Schema = Literal["dtensor", "megatron", "areal"]
SCHEMAS: tuple[Schema, ...] = ("dtensor", "megatron", "areal")

SCALARS: tuple[tuple[str, str | None, str | None, str | None], ...] = (
    # (neutral name, DTensor key, Megatron key, AReaL key); None: the schema has no such key.
    ("enabled", "enabled", "enabled", "use_lora"),
    ("dim", "dim", "dim", "lora_rank"),
    ("alpha", "alpha", "alpha", "lora_alpha"),
    ("dropout", "dropout", "dropout", None),
    ("dropout_position", "dropout_position", "dropout_position", None),
    ("a_init", "lora_A_init", "lora_A_init_method", None),
    ("use_rslora", "use_rslora", "use_rslora", None),
    ("use_dora", "use_dora", "use_dora", None),
    ("lora_plus_lr_ratio", "lora_plus_lr_ratio", "lora_plus_lr_ratio", None),
)
_COLUMN = {"dtensor": 1, "megatron": 2, "areal": 3}

AREAL_IMPLIED: dict[str, Any] = {"dropout": 0.0, "a_init": "uniform", "use_rslora": False,
                                  "use_dora": False, "lora_plus_lr_ratio": None}
"""AReaL hands its keys to `peft.LoraConfig`: no dropout, PEFT's kaiming-uniform A init, the
plain alpha / r scale."""

ONLY_IN: dict[Schema, dict[str, Any]] = {
    # Keys with no counterpart elsewhere, with the value at which dropping them loses nothing.
    "dtensor": {"use_triton": None,  # a kernel choice: never changes the adapter's maths
                "init_lora_weights": True},
    "megatron": {"lora_B_init_method": "zero", "a2a_experimental": False, "lora_dtype": None,
                 # Both blocks have it, but Megatron needs canonical targets for it (LR159),
                 # which the converter does not write: reported as lost either way.
                 "init_lora_weights": True},
    "areal": {"peft_type": "lora"},
}

HF_TO_MEGATRON: dict[str, str] = {
    hf.rsplit(".", 1)[-1]: megatron.rsplit(".", 1)[-1]
    for megatron, hfs in FAMILIES["llama"].megatron_layer.items()
    if megatron.rsplit(".", 1)[-1].startswith("linear") for hf in hfs}
"""HF short name -> Megatron module, from the architecture table (the same for every family
the Megatron backend maps): q/k/v_proj -> linear_qkv, o_proj -> linear_proj, ..."""
MEGATRON_TO_HF: dict[str, list[str]] = {}
for _hf, _mg in HF_TO_MEGATRON.items():
    MEGATRON_TO_HF.setdefault(_mg, []).append(_hf)
MEGATRON_ALL = list(MEGATRON_TO_HF)
"""Megatron's empty `target_modules` means these four."""
HF_TO_CANONICAL: dict[str, str] = {
    hf: part for fused, parts in CANONICAL_PARTS.items()
    for hf, part in zip(MEGATRON_TO_HF[fused], parts, strict=True)}
"""Canonical LoRA: a projection inside a fused module, adapted on its own (q_proj -> linear_q,
gate_proj -> linear_fc1_gate, ...)."""
CANONICAL_TO_HF = {mg: [hf] for hf, mg in HF_TO_CANONICAL.items()}

AREAL_ALL_LINEAR = "all-linear"
"""PEFT's magic target that AReaL passes through: every linear layer but the output layer."""


@dataclass(frozen=True)
class Loss:
    """A key whose meaning the target schema cannot carry exactly."""

    key: str
    detail: str

    def __str__(self) -> str:
        return f"{self.key}: {self.detail}"


@dataclass
class LoraSpec:
    """A LoRA block without backend spelling. Module names are Hugging Face names (or patterns
    ending in one); `targets` empty with `match_all` means every decoder linear layer."""

    enabled: bool = True
    dim: int = 8
    alpha: float = 16
    dropout: float = 0.0
    dropout_position: str = "post"
    a_init: str = "xavier"
    use_rslora: bool = False
    use_dora: bool = False
    lora_plus_lr_ratio: float | None = None
    match_all: bool = True
    targets: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    """Backend-only keys of the source, e.g. {"use_triton": False}."""


# ---- reading ---------------------------------------------------------------------------------


def read_block(schema: Schema, block: dict[str, Any]) -> tuple[LoraSpec, list[Loss]]:
    """The effective (defaults filled in) LoRA block of `schema` as a LoraSpec."""
    column = _COLUMN[schema]
    spec = LoraSpec(**{row[0]: block[row[column]] for row in SCALARS
                       if row[column] is not None and row[column] in block})
    spec.extras = {k: block[k] for k in ONLY_IN[schema] if k in block}
    losses: list[Loss] = []
    if schema == "dtensor":
        spec.match_all = bool(block.get("match_all_linear", True))
        spec.targets = list(block.get("target_modules") or [])
        spec.excludes = list(block.get("exclude_modules") or [])
    elif schema == "megatron":
        spec.targets, losses = _names_to_hf(block.get("target_modules") or [], "target_modules")
        excludes, more = _names_to_hf(block.get("exclude_modules") or [], "exclude_modules")
        spec.excludes, losses = excludes, losses + more
        # Empty targets mean Megatron's four modules: all linear layers of the decoder.
        spec.match_all = not spec.targets and not spec.excludes
    else:
        spec = _read_areal(spec, block, losses)
    return spec, losses


def _read_areal(spec: LoraSpec, block: dict[str, Any], losses: list[Loss]) -> LoraSpec:
    for name, value in AREAL_IMPLIED.items():
        setattr(spec, name, value)
    targets = list(block.get("target_modules") or [])
    spec.match_all = not targets or AREAL_ALL_LINEAR in targets
    spec.targets = [] if spec.match_all else targets
    if not targets:
        losses.append(Loss("target_modules", "empty in AReaL means PEFT's per-model default; "
                           "read as all linear layers"))
    if block.get("peft_type", "lora") != "lora":
        losses.append(Loss("peft_type", f"'{block['peft_type']}' is not LoRA; read as LoRA"))
    return spec


# ---- writing ---------------------------------------------------------------------------------


def write_block(schema: Schema, spec: LoraSpec, source: Schema) -> tuple[dict[str, Any],
                                                                         list[Loss]]:
    """The target block's keys (in schema spelling) for `spec`, and what did not map exactly.
    Keys the target has no use for are absent, not None."""
    losses = _scalar_losses(schema, spec) + _extra_losses(schema, spec, source)
    block = {row[_COLUMN[schema]]: getattr(spec, row[0]) for row in SCALARS
             if row[_COLUMN[schema]] is not None}
    if schema == "dtensor":
        block.update(match_all_linear=spec.match_all, target_modules=list(spec.targets),
                     exclude_modules=list(spec.excludes))
    elif schema == "megatron":
        targets, excludes, more = _megatron_names(spec)
        block.update(target_modules=targets, exclude_modules=excludes)
        losses += more
    else:
        block.update(target_modules=_areal_targets(spec, losses), peft_type="lora")
        alpha = block["lora_alpha"]
        if alpha != int(alpha):  # AReaL declares lora_alpha: int
            losses.append(Loss("alpha", f"{alpha} rounded to {round(alpha)} (AReaL takes an "
                               "integer)"))
        block["lora_alpha"] = round(alpha)
    return block, losses


def _scalar_losses(schema: Schema, spec: LoraSpec) -> list[Loss]:
    losses = []
    implied = AREAL_IMPLIED if schema == "areal" else {}
    for name, *columns in SCALARS:
        if columns[_COLUMN[schema] - 1] is not None:
            continue
        value = getattr(spec, name)
        # dropout_position means nothing while dropout is 0.
        if name == "dropout_position" and spec.dropout == 0:
            continue
        if name not in implied or value != implied[name]:
            uses = f"it uses {implied[name]!r}" if name in implied else "no such setting"
            losses.append(Loss(name, f"{value!r} has no {schema} key ({uses})"))
    return losses


def _extra_losses(schema: Schema, spec: LoraSpec, source: Schema) -> list[Loss]:
    if schema == source:
        return []
    losses = []
    for key, harmless in ONLY_IN[source].items():
        value = spec.extras.get(key, harmless)
        if key == "use_triton" and value:
            losses.append(Loss(key, f"a {source}-only kernel switch; {schema} has none"))
        elif key != "use_triton" and value != harmless:
            losses.append(Loss(key, f"{value!r} has no {schema} counterpart (there: "
                               f"{harmless!r})"))
    return losses


# ---- module names ----------------------------------------------------------------------------

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+|\*)\.")


def _split(name: str) -> tuple[str | None, str]:
    """(layer index or '*' or None, short name) of a short name or a full-name pattern."""
    match = _LAYER.search(name)
    return (match.group(1) if match else None), name.rsplit(".", 1)[-1]


def _is_pattern(name: str) -> bool:
    return "." in name or "*" in name


def _names_to_hf(names: list[str], key: str) -> tuple[list[str], list[Loss]]:
    """Megatron names -> HF names: a fused module expands to all its parts."""
    out: list[str] = []
    losses: list[Loss] = []
    for name in names:
        layer, short = _split(name)
        parts = MEGATRON_TO_HF.get(short) or CANONICAL_TO_HF.get(short)
        if parts is None:
            out.append(name)
            losses.append(Loss(key, f"'{name}' is not a Megatron LoRA module name; kept as is"))
            continue
        if _is_pattern(name):
            prefix = f"model.layers.{layer}.*." if layer else "*."
            out += [prefix + part for part in parts]
            losses.append(Loss(key, f"'{name}' is a full-name pattern; rewritten from its layer "
                               "index and last component, check it"))
        else:
            out += parts
    return _unique(out), losses


def _megatron_names(spec: LoraSpec) -> tuple[list[str], list[str], list[Loss]]:
    """HF targets/excludes -> Megatron's. When every fused module is named whole, the fused
    names (Megatron-Bridge's usual LoRA); when a q/k/v or gate/up set is partial (q_proj and
    v_proj only, or k_proj excluded), canonical names throughout, which adapt exactly those
    projections."""
    losses: list[Loss] = []
    if spec.match_all and not spec.targets and not spec.excludes:
        return [], [], losses
    canonical = _partial_fused_set(spec.targets) or _partial_fused_set(spec.excludes)
    if spec.targets:
        targets = _megatron_module_names(spec.targets, "target_modules", losses, canonical)
        if spec.excludes:
            # Megatron takes targets or excludes, not both (LR106): fold the excludes in.
            dropped = set(_megatron_module_names(spec.excludes, "exclude_modules", losses,
                                                 canonical))
            targets = [t for t in targets if t not in dropped]
            losses.append(Loss("exclude_modules", "folded into target_modules (Megatron takes "
                               "one or the other)"))
        return targets, [], losses
    return [], _megatron_module_names(spec.excludes, "exclude_modules", losses, canonical), \
        losses


def _partial_fused_set(names: list[str]) -> bool:
    """Whether `names` name some, not all, of a fused module's parts (per layer pattern)."""
    named: dict[tuple[str | None, str], set[str]] = {}
    for name in names:
        layer, short = _split(name)
        if short in HF_TO_CANONICAL:
            key = (layer if _is_pattern(name) else None, HF_TO_MEGATRON[short])
            named.setdefault(key, set()).add(short)
    return any(len(parts) < len(MEGATRON_TO_HF[fused]) for (_, fused), parts in named.items())


def _megatron_module_names(names: list[str], key: str, losses: list[Loss],
                           canonical: bool) -> list[str]:
    out: list[str] = []
    for name in names:
        layer, short = _split(name)
        mapped = (HF_TO_CANONICAL.get(short) if canonical else None) or HF_TO_MEGATRON.get(short)
        if mapped is None:
            losses.append(Loss(key, f"'{name}' has no Megatron counterpart; kept as is"))
            out.append(name)
            continue
        if _is_pattern(name):
            losses.append(Loss(key, f"'{name}' is a full-name pattern; rewritten from its layer "
                               "index and last component, check it"))
            mapped = f"*.layers.{layer}.*.{mapped}" if layer is not None else mapped
        out.append(mapped)
    return _unique(out)


def _areal_targets(spec: LoraSpec, losses: list[Loss]) -> list[str]:
    if spec.excludes:
        losses.append(Loss("exclude_modules", f"{spec.excludes} dropped: AReaL has no exclude "
                           "list" + ("; all linear layers are adapted" if not spec.targets
                                     else "")))
    if spec.targets:
        return list(spec.targets)
    return [AREAL_ALL_LINEAR]


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))
