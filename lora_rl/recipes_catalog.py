"""The shipped recipe catalogue: find recipes by name, summarise them, copy one out.

Where the recipes are, first match wins:
1. `$LORA_RL_RECIPES` (a directory), for a catalogue of your own;
2. `recipes/` next to the `lora_rl` package: a source checkout or an editable install;
3. `<prefix>/share/lora-rl/recipes`: a wheel install (pyproject's `data-files`).

A recipe's name is its path inside the catalogue without `.yaml` (`sft-tiny-dtensor-lora`,
`base/sft`). Shared parents live in `base/` and are not listed unless asked for.
"""

from __future__ import annotations

import difflib
import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lora_rl.config.layering import DEFAULTS_KEY
from lora_rl.errors import LoraRlError

if TYPE_CHECKING:
    from lora_rl.config.recipe import RecipeConfig

ENV_VAR = "LORA_RL_RECIPES"
BASE_DIR = "base"
SCHEMA_FILE = "lora-rl.schema.json"
MODELINE = re.compile(r"^(#\s*yaml-language-server:\s*\$schema=)(\S+)", re.MULTILINE)


class CatalogError(LoraRlError):
    """No catalogue, an unknown recipe name, or a copy that would overwrite a file."""


def _candidates() -> list[Path]:
    found = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
    found.append(Path(__file__).resolve().parent.parent / "recipes")
    found.append(Path(sysconfig.get_path("data")) / "share" / "lora-rl" / "recipes")
    return found


def recipes_dir() -> Path:
    for candidate in _candidates():
        if candidate.is_dir():
            return candidate
    looked = ", ".join(str(c) for c in _candidates())
    raise CatalogError(f"no recipe catalogue found (looked in {looked}); set {ENV_VAR}")


@dataclass(frozen=True)
class RecipeEntry:
    name: str
    path: Path

    @property
    def is_base(self) -> bool:
        return self.name.startswith(f"{BASE_DIR}/")


def list_recipes(include_bases: bool = False) -> list[RecipeEntry]:
    root = recipes_dir()
    entries = [RecipeEntry(p.relative_to(root).with_suffix("").as_posix(), p)
               for p in sorted(root.rglob("*.yaml"))]
    return [e for e in entries if include_bases or not e.is_base]


def find_recipe(name: str) -> RecipeEntry:
    wanted = name.removesuffix(".yaml")
    entries = list_recipes(include_bases=True)
    for entry in entries:
        if entry.name == wanted:
            return entry
    close = difflib.get_close_matches(wanted, [e.name for e in entries], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `lora-rl recipes ls` lists them"
    raise CatalogError(f"no recipe named '{name}'{hint}")


@dataclass(frozen=True)
class RecipeSummary:
    name: str
    algorithm: str
    backend: str
    model: str
    devices: str
    lora: str
    problems: int
    """Validation errors (a shipped recipe has none; a test checks it)."""


def summarize(entry: RecipeEntry) -> RecipeSummary:
    """Read a recipe the way `lora-rl validate` does and describe what it runs."""
    from lora_rl.config.validate import validate_recipe

    result = validate_recipe(entry.path)
    cfg = result.config
    if cfg is None or len(cfg.present_algorithms) != 1:
        return RecipeSummary(entry.name, "?", "?", "?", "?", "?", max(len(result.errors), 1))
    policy, cluster = cfg.policy, cfg.cluster
    lora = policy.active_lora
    return RecipeSummary(
        name=entry.name,
        algorithm=cfg.algorithm,
        backend=_backend(cfg),
        model=policy.model_name,
        devices=f"{cluster.num_nodes}x{cluster.gpus_per_node}",
        lora=f"r={lora.dim} alpha={lora.alpha:g}" if lora else "off",
        problems=len(result.errors),
    )


def _backend(cfg: RecipeConfig) -> str:
    if cfg.policy.megatron_cfg.enabled:
        mg = cfg.policy.megatron_cfg
        sizes = {"tp": mg.tensor_model_parallel_size, "pp": mg.pipeline_model_parallel_size}
        name = "megatron"
    else:
        sizes = {"tp": cfg.policy.dtensor_cfg.tensor_parallel_size}
        name = "dtensor"
    return " ".join([name, *(f"{k}{v}" for k, v in sizes.items() if v > 1)])


def copy_recipe(name: str, dest: Path, force: bool = False) -> Path:
    """Copy a recipe to `dest` (a file, or an existing directory), keeping its comments.

    Its `defaults:` parents and its editor modeline are relative paths; they are rewritten to
    point from `dest` back into the catalogue, so the copy validates where it lands."""
    from lora_rl.output_paths import deepest_existing

    entry = find_recipe(name)
    target = dest / entry.path.name if dest.is_dir() else dest
    blocker = deepest_existing(target.parent)
    if not blocker.is_dir():
        raise CatalogError(f"{blocker} is a file, so {target} cannot be created under it; "
                           "choose another DEST")
    if target.is_dir():
        raise CatalogError(f"{target} is a directory; name a file in it, or choose another DEST")
    if target.exists() and not force:
        raise CatalogError(f"{target} exists; pass --force to overwrite it, or choose another "
                           "DEST")
    text = _repoint(entry.path.read_text(encoding="utf-8"), entry.path, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target


def _pointer(path: Path, start: Path) -> str:
    """`path` as seen from directory `start`: relative inside the catalogue's own tree (a
    checkout stays movable), absolute elsewhere (a copy in ~/work survives being moved)."""
    path, start = path.resolve(), start.resolve()
    if start.is_relative_to(recipes_dir().resolve().parent):
        return Path(os.path.relpath(path, start)).as_posix()
    return path.as_posix()


def _repoint(text: str, source: Path, target: Path) -> str:
    from lora_rl.config.yaml_source import parse_yaml

    data, positions = parse_yaml(text, str(source))
    lines = text.splitlines(keepends=True)
    parents = (data or {}).get(DEFAULTS_KEY)
    for index, parent in enumerate([parents] if isinstance(parents, str) else parents or []):
        where = positions.get((DEFAULTS_KEY, index)) or positions.get((DEFAULTS_KEY,))
        if where is None or where.value is None:
            continue
        row = where.value.line - 1
        moved = _pointer(source.parent / parent, target.parent)
        lines[row] = lines[row].replace(parent, moved, 1)
    text = "".join(lines)
    schema = _schema_file()
    if schema is None:
        return text
    pointer = _pointer(schema, target.parent)
    if Path(pointer).is_absolute():
        pointer = Path(pointer).as_uri()  # what yaml-language-server expects for a local file
    return MODELINE.sub(lambda m: m.group(1) + pointer, text, count=1)


def _schema_file() -> Path | None:
    """The catalogue's schema: `schema/` beside `recipes/` (checkout or share/lora-rl)."""
    candidate = recipes_dir().parent / "schema" / SCHEMA_FILE
    return candidate if candidate.is_file() else None
