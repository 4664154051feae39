"""Which linear modules get LoRA, on module *names* only (torch-free: `validate` uses it).

DTensor/HF semantics: `match_all_linear` takes every linear layer except the output layer;
otherwise `target_modules` (or, with no targets, every linear layer minus `exclude_modules`).
Megatron-Bridge semantics: targets default to linear_qkv, linear_proj, linear_fc1, linear_fc2;
`exclude_modules` applies only with empty targets.
A pattern matches a module when it equals the module's short name or its full dotted name, or
matches the full name as a glob (`fnmatchcase`: `*.layers.1.*` does not match layer 11, and
dots are literal).
"""

from __future__ import annotations

import warnings
from fnmatch import fnmatchcase

from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig

OUTPUT_LAYERS = frozenset({"lm_head", "output_layer"})
MEGATRON_DEFAULT_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


class LoraMatchError(ValueError):
    pass


class LoraWarning(UserWarning):
    pass


def short_name(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def matches(pattern: str, name: str) -> bool:
    return pattern in (short_name(name), name) or fnmatchcase(name, pattern)


def _any(patterns: list[str], name: str) -> bool:
    return any(matches(p, name) for p in patterns)


def select(names: list[str], cfg: DTensorLoraConfig | MegatronPeftConfig) -> list[str]:
    """The subset of linear module `names` the config adapts (may be empty)."""
    body = [n for n in names if short_name(n) not in OUTPUT_LAYERS]
    if isinstance(cfg, MegatronPeftConfig):
        targets = list(cfg.target_modules or [])
        if targets:
            return [n for n in names if _any(targets, n)]
        excludes = list(cfg.exclude_modules or [])
        if excludes:
            return [n for n in body if not _any(excludes, n)]
        return [n for n in names if _any(list(MEGATRON_DEFAULT_TARGETS), n)]
    if cfg.match_all_linear:
        return body
    if cfg.target_modules:
        chosen = [n for n in names if _any(cfg.target_modules, n)]
    else:
        chosen = body
    return [n for n in chosen if not _any(cfg.exclude_modules, n)]


def match_names(names: list[str], cfg: DTensorLoraConfig | MegatronPeftConfig) -> list[str]:
    """`select`, but zero matches is an error listing what exists, and adapting the output
    layer warns (LoraWarning)."""
    chosen = select(names, cfg)
    if not chosen:
        shown = sorted({short_name(n) for n in names})
        raise LoraMatchError(
            "LoRA target modules match no linear layer of the model; it has: "
            f"{', '.join(shown[:20])}{' ...' if len(shown) > 20 else ''} "
            f"(e.g. {names[0] if names else 'none'})")
    heads = [n for n in chosen if short_name(n) in OUTPUT_LAYERS]
    if heads:
        warnings.warn(f"LoRA adapts the output layer ({', '.join(heads)})", LoraWarning,
                      stacklevel=2)
    return chosen
