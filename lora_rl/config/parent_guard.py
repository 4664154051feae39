"""Which files a `defaults:` entry may name, and what a parent must look like.

A recipe from elsewhere (a pull request, a download) must not make `validate` read and echo
arbitrary files: `defaults: /etc/shadow` used to print every line of it as an "unknown key",
into SARIF and GitHub annotations too. So a parent is

- a `.yaml` / `.yml` file (after symlinks are resolved),
- under one of the allowed folders: the named recipe's folder, the working directory (unless
  it is `/` or the home directory itself), the recipe catalogue (`lora-rl recipes ls`), and
  the folders listed in `$LORA_RL_DEFAULTS_PATH` (separated by `os.pathsep`),
- a recipe: at least one of its top-level keys is a recipe section.

A rejected parent is named, never quoted: the messages hold no text read from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lora_rl.config.diagnostics import Diagnostic, Location, RecipeError

ALLOWED_ENV = "LORA_RL_DEFAULTS_PATH"
SUFFIXES = (".yaml", ".yml")
META_KEYS = frozenset({"defaults"})


def parent_roots(recipe: Path) -> tuple[Path, ...]:
    """The folders `defaults:` parents of `recipe` (and of its ancestors) may live under."""
    from lora_rl.recipes_catalog import _candidates

    roots = [recipe.resolve().parent]
    cwd = Path.cwd().resolve()
    if cwd != Path(cwd.anchor) and cwd != Path.home().resolve():  # those would allow anything
        roots.append(cwd)
    roots += [c.resolve() for c in _candidates() if c.is_dir()]
    extra = os.environ.get(ALLOWED_ENV, "")
    roots += [Path(item).expanduser().resolve() for item in extra.split(os.pathsep) if item]
    return tuple(dict.fromkeys(roots))


def check_parent(named: str, resolved: Path, roots: tuple[Path, ...], where: Location) -> None:
    """Refuse a parent that is not a YAML file under an allowed folder, before reading it."""
    if resolved.suffix.lower() not in SUFFIXES:
        raise _reject("LR800", f"defaults: parent '{named}' is not a .yaml/.yml file; "
                      "parents must be recipes", where,
                      "name a recipe file, e.g. `defaults: base/sft.yaml`")
    if not any(resolved.is_relative_to(root) for root in roots):
        raise _reject("LR800", f"defaults: parent '{named}' is outside the folders parents may "
                      "come from (the recipe's folder, the working directory, the recipe "
                      f"catalogue, ${ALLOWED_ENV})", where,
                      f"copy the parent next to the recipe, or add its folder to {ALLOWED_ENV}")


def reject_non_recipe(named: str, data: dict[str, Any], where: Location) -> None:
    """A parent none of whose top-level keys is a recipe section is some other file that
    happens to parse as a YAML mapping: reject it without quoting a key or value of it."""
    from lora_rl.config.recipe import RecipeConfig

    sections = set(META_KEYS)
    for name, info in RecipeConfig.model_fields.items():
        sections.update({name, info.alias} - {None})
    if data and not sections.intersection(k for k in data if isinstance(k, str)):
        raise _reject("LR801", f"defaults: parent '{named}' is not a recipe: none of its "
                      f"{len(data)} top-level keys is a recipe section (its content is not "
                      "shown)", where, "point defaults: at a lora-rl or NeMo RL recipe")


def _reject(rule: str, message: str, where: Location, fix: str) -> RecipeError:
    return RecipeError([Diagnostic(rule, "error", message, ("defaults",), where, fix)])
