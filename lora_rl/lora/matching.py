"""Which linear modules get LoRA, decided on module *names* only.

Torch-free: `lora-rl validate` runs the same matcher on names derived from a model's config.json
as training runs on the real module tree, so both agree on what is adapted.

DTensor (HF / NeMo Automodel) semantics:
  - `match_all_linear`: every linear layer except the output layer;
  - otherwise `target_modules` (or, with no targets, every linear layer except the output layer),
    minus `exclude_modules`.
Megatron-Bridge semantics:
  - `target_modules` (default, when empty or null: linear_qkv, linear_proj, linear_fc1,
    linear_fc2);
  - `exclude_modules` only with empty targets: every linear layer except the output layer and
    the excluded ones;
  - canonical LoRA (Megatron-Bridge's `CanonicalLoRA`): patterns naming `linear_q`, `linear_k`,
    `linear_v`, `linear_fc1_gate` or `linear_fc1_up` give the fused `linear_qkv` / `linear_fc1`
    one adapter per projection, as PEFT does on q/k/v_proj and gate/up_proj. The matcher then
    sees each fused module as its parts (`...self_attention.linear_q`, `...linear_k`, ...), so
    targets, excludes and wildcards work on the parts. Fused and canonical names do not mix.
A pattern matches a module when it equals the module's short name (last component) or its full
dotted name, or matches the full name as an `fnmatchcase` glob: dots are literal and `*` spans
anything, so `*.layers.1.*.linear_qkv` matches layer 1 and not layer 11 (Megatron-Bridge's
unescaped regex gets this wrong).

Where this deliberately differs from upstream: the output layer (`lm_head` / `output_layer`, or
whatever the model reports as its output embeddings) is never adapted implicitly, only when a
target names it, and then with a `LoraWarning`. Upstream exclude-only modes adapt it silently.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig
from lora_rl.errors import LoraRlError
from lora_rl.lora.spec import Semantics

OUTPUT_LAYERS = frozenset({"lm_head", "output_layer"})
MEGATRON_DEFAULT_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
CANONICAL_PARTS = {"linear_qkv": ("linear_q", "linear_k", "linear_v"),
                   "linear_fc1": ("linear_fc1_gate", "linear_fc1_up")}
"""Megatron-Bridge's canonical names for the projections inside each fused module."""
_CANONICAL_NAMES = tuple(part for parts in CANONICAL_PARTS.values() for part in parts)
_SAMPLE = 12
"""How many module names an error message shows: enough to spot the naming scheme."""


class LoraMatchError(LoraRlError, ValueError):
    """The LoRA target/exclude lists do not select any module, or contradict each other."""


class LoraWarning(UserWarning):
    """A LoRA setup that works but is rarely intended (e.g. adapting the output layer)."""


def short_name(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def names_canonical_part(pattern: str) -> bool:
    """Whether a Megatron pattern names a projection inside a fused module (`linear_q`,
    `*.layers.0.*.linear_fc1_up`, ...); the same test Megatron-Bridge applies."""
    return pattern.endswith(_CANONICAL_NAMES)


def names_fused_module(pattern: str) -> bool:
    return pattern.endswith(tuple(CANONICAL_PARTS))


def canonical_units(names: Sequence[str]) -> list[str]:
    """Megatron module names with each fused module replaced by its projections, in order.
    A MoE expert's `linear_fc1` stays whole: its HF and PEFT counterpart is one fused
    parameter (`experts.gate_up_proj`) with one adapter, so gate and up cannot be split."""
    out = []
    for name in names:
        parent, _, short = name.rpartition(".")
        parts = None if ".experts." in f".{name}" else CANONICAL_PARTS.get(short)
        out += [f"{parent}.{p}" if parent else p for p in parts] if parts else [name]
    return out


def fused_module_of(unit: str) -> tuple[str, str | None]:
    """(Megatron module, projection) for a canonical unit name; (name, None) otherwise."""
    parent, _, short = unit.rpartition(".")
    for fused, parts in CANONICAL_PARTS.items():
        if short in parts:
            return (f"{parent}.{fused}" if parent else fused), short
    return unit, None


def matches(pattern: str, name: str) -> bool:
    return pattern in (short_name(name), name) or fnmatchcase(name, pattern)


def _matches_any(patterns: Sequence[str], name: str) -> bool:
    return any(matches(p, name) for p in patterns)


@dataclass(frozen=True)
class MatchResult:
    names: tuple[str, ...]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModuleMatcher:
    semantics: Semantics = "dtensor"
    target_modules: tuple[str, ...] = ()
    exclude_modules: tuple[str, ...] = ()
    match_all_linear: bool = False
    """DTensor semantics only; Megatron-Bridge has no such switch."""
    output_names: frozenset[str] = field(default_factory=frozenset)
    """Full names of the model's output layer(s), beyond the conventional short names."""

    @classmethod
    def from_config(cls, cfg: DTensorLoraConfig | MegatronPeftConfig,
                    output_names: Collection[str] = ()) -> ModuleMatcher:
        if isinstance(cfg, MegatronPeftConfig):
            return cls("megatron", tuple(cfg.target_modules or ()),
                       tuple(cfg.exclude_modules or ()), False, frozenset(output_names))
        return cls("dtensor", tuple(cfg.target_modules), tuple(cfg.exclude_modules),
                   cfg.match_all_linear, frozenset(output_names))

    @classmethod
    def default(cls, semantics: Semantics) -> ModuleMatcher:
        """Each backend's default: all linear layers (DTensor), the four Megatron names."""
        return cls(semantics, match_all_linear=semantics == "dtensor")

    def with_output_names(self, output_names: Collection[str]) -> ModuleMatcher:
        return ModuleMatcher(self.semantics, self.target_modules, self.exclude_modules,
                             self.match_all_linear, self.output_names | frozenset(output_names))

    def conflict(self) -> str | None:
        """Why these lists contradict each other, or None. `validate` reports the same cases as
        rules with locations; this is for callers that never went through validation."""
        if self.canonical and any(names_fused_module(p)
                                  for p in (*self.target_modules, *self.exclude_modules)):
            return ("Megatron LoRA: target_modules/exclude_modules mix fused names (linear_qkv, "
                    "linear_fc1) with canonical ones (linear_q/k/v, linear_fc1_gate/up); use "
                    "one kind")
        if self.semantics == "megatron" and self.target_modules and self.exclude_modules:
            return ("Megatron LoRA: exclude_modules requires target_modules to be empty; got "
                    f"target_modules={list(self.target_modules)} and "
                    f"exclude_modules={list(self.exclude_modules)}")
        if self.semantics == "dtensor" and self.match_all_linear and (
                self.target_modules or self.exclude_modules):
            return ("DTensor LoRA: match_all_linear is true, which would ignore target_modules/"
                    "exclude_modules; set match_all_linear: false")
        return None

    @property
    def canonical(self) -> bool:
        """Megatron semantics with per-projection adapters on the fused modules."""
        return self.semantics == "megatron" and any(
            names_canonical_part(p) for p in (*self.target_modules, *self.exclude_modules))

    def is_output(self, name: str) -> bool:
        return short_name(name) in OUTPUT_LAYERS or name in self.output_names

    def select(self, names: Sequence[str]) -> list[str]:
        """The subset of linear module `names` to adapt, in model order (may be empty); with
        canonical patterns, the fused modules are matched (and returned) as their parts."""
        if self.canonical:
            names = canonical_units(names)
        body = [n for n in names if not self.is_output(n)]
        if self.semantics == "megatron":
            if self.target_modules:
                return [n for n in names if _matches_any(self.target_modules, n)]
            if self.exclude_modules:
                return [n for n in body if not _matches_any(self.exclude_modules, n)]
            return [n for n in names if _matches_any(MEGATRON_DEFAULT_TARGETS, n)]
        if self.match_all_linear:
            return body
        chosen = [n for n in names if _matches_any(self.target_modules, n)] \
            if self.target_modules else body
        return [n for n in chosen if not _matches_any(self.exclude_modules, n)]

    def match(self, names: Sequence[str]) -> MatchResult:
        """`select`, but selecting nothing is a `LoraMatchError` that lists what exists, and an
        adapted output layer is reported (not emitted: the caller decides how to surface it)."""
        chosen = self.select(names)
        if not chosen:
            raise LoraMatchError(self._nothing_matched(names))
        heads = [n for n in chosen if self.is_output(n)]
        notes = (f"LoRA adapts the output layer ({', '.join(heads)}): a vocabulary-sized "
                 "adapter that is rarely intended",) if heads else ()
        return MatchResult(tuple(chosen), notes)

    def _nothing_matched(self, names: Sequence[str]) -> str:
        if self.semantics == "megatron" and not self.target_modules and not self.exclude_modules:
            asked = f"the default Megatron targets {list(MEGATRON_DEFAULT_TARGETS)}"
        else:
            asked = (f"target_modules={list(self.target_modules)}, "
                     f"exclude_modules={list(self.exclude_modules)}")
        if not names:
            return f"LoRA ({asked}) found no linear layers in the model at all"
        shorts = sorted({short_name(n) for n in names})
        more = f" (+{len(shorts) - _SAMPLE} more)" if len(shorts) > _SAMPLE else ""
        examples = ", ".join(names[:4])
        return (f"LoRA {asked} matches none of the model's {len(names)} linear layers. Their "
                f"short names: {', '.join(shorts[:_SAMPLE])}{more}; full names look like: "
                f"{examples}")


def select(names: Sequence[str], cfg: DTensorLoraConfig | MegatronPeftConfig) -> list[str]:
    """The linear module `names` a config adapts (may be empty); see the module docstring."""
    return ModuleMatcher.from_config(cfg).select(names)


def match_names(names: Sequence[str], cfg: DTensorLoraConfig | MegatronPeftConfig) -> list[str]:
    """`select`; zero matches raises `LoraMatchError` listing the existing names, and adapting
    the output layer emits a `LoraWarning`."""
    result = ModuleMatcher.from_config(cfg).match(names)
    for note in result.warnings:
        warnings.warn(note, LoraWarning, stacklevel=2)
    return list(result.names)
