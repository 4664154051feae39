"""Rewards for GRPO: built-in verifiable rewards, or a user function named in the recipe.

A user function is imported only when a run starts and only because the recipe names it
(`env.reward: my_pkg.rewards:score`); it receives (prompts, responses, answers, **reward_kwargs)
and returns one float per response.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from lora_rl.errors import LoraRlError

RewardFn = Callable[..., list[float]]


def normalise(text: str) -> str:
    return " ".join(text.strip().split())


def exact_match(prompts: list[str], responses: list[str], answers: list[str]) -> list[float]:
    """1.0 when the response equals the reference answer (whitespace-normalised)."""
    return [float(normalise(r) == normalise(a)) for r, a in zip(responses, answers, strict=True)]


def format_reward(prompts: list[str], responses: list[str], answers: list[str]) -> list[float]:
    """1.0 for a non-empty single-line response (the tiny task's answer format)."""
    return [float(bool(r.strip()) and "\n" not in r.strip()) for r in responses]


def exact_match_and_format(prompts: list[str], responses: list[str],
                           answers: list[str]) -> list[float]:
    """0.9 x exact match + 0.1 x format."""
    return [0.9 * e + 0.1 * f for e, f in zip(exact_match(prompts, responses, answers),
                                              format_reward(prompts, responses, answers),
                                              strict=True)]


BUILTIN: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "format": format_reward,
    "exact_match_and_format": exact_match_and_format,
}


class RewardError(LoraRlError, ValueError):
    pass


def load_reward(name: str, kwargs: dict | None = None) -> RewardFn:
    """The reward function `name`, checked before any rollout: a module of the user's (not the
    standard library), a function defined in it, and a signature that takes
    (prompts, responses, answers, **kwargs). Every refusal is a RewardError, one clean line."""
    from lora_rl.reward_source import SIGNATURE, forbidden_module

    if name in BUILTIN:
        return BUILTIN[name]
    module_name, _, attr = name.partition(":")
    if forbidden_module(module_name):
        raise RewardError(f"env.reward: '{module_name}' is a standard-library module, not a "
                          f"module of yours; a reward is a function you write, {SIGNATURE}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RewardError(f"env.reward: cannot import module '{module_name}' ({exc})\nfix: make "
                          "it importable (e.g. PYTHONPATH=.) or use a built-in reward") from None
    function = getattr(module, attr, None)
    if not inspect.isfunction(function):
        raise RewardError(f"env.reward: '{module_name}' has no function '{attr}' (a plain "
                          f"`def`; found {type(function).__name__})")
    if function.__module__ != module.__name__:
        raise RewardError(f"env.reward: {name} is defined in '{function.__module__}', not in "
                          f"'{module_name}'; name the module that defines it")
    try:
        inspect.signature(function).bind(None, None, None, **(kwargs or {}))
    except TypeError as exc:
        raise RewardError(f"env.reward: {name} cannot be called as {SIGNATURE} with "
                          f"env.reward_kwargs {sorted(kwargs or {})}: {exc}") from None
    return function


def score(fn: RewardFn, prompts: list[str], responses: list[str], answers: list[str],
          kwargs: dict) -> list[float]:
    values = fn(prompts, responses, answers, **kwargs)
    if not isinstance(values, (list, tuple)) or len(values) != len(responses):
        raise RewardError(f"the reward function returned {type(values).__name__} of length "
                          f"{len(values) if hasattr(values, '__len__') else '?'}; expected a "
                          f"list of {len(responses)} floats")
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise RewardError("the reward function returned non-numeric values") from None
