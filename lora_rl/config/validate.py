"""The validation pipeline: file -> layered tree -> typed recipe -> cross-field rules.

`validate_recipe` never raises for bad input: every problem becomes a located Diagnostic.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lora_rl.config import validator_cache
from lora_rl.config.cascade import ReadGuard
from lora_rl.config.diagnostics import (
    USAGE_RULES,
    Diagnostic,
    KeyPath,
    Location,
    RecipeError,
    dotted,
)
from lora_rl.config.interpolation import EnvReads, resolve_interpolations
from lora_rl.config.layering import apply_overrides, display_name, load_layered
from lora_rl.config.model_facts import ModelFacts, ModelFactsError, read_model_facts
from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.rules import RULES, RuleContext
from lora_rl.config.schema_errors import locate, rejected_paths, translate
from lora_rl.config.yaml_source import SourceMap


@dataclass
class ValidationResult:
    file: str
    config: RecipeConfig | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    model: ModelFacts | None = None
    resolved: dict[str, Any] | None = None
    positions: SourceMap = field(default_factory=dict)
    env_reads: EnvReads = field(default_factory=EnvReads)
    """Values read through `${oc.env:...}`: output shows `${oc.env:NAME}` instead."""

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    @property
    def recipe_warnings(self) -> list[Diagnostic]:
        """Warnings about the recipe itself: what `--strict` fails on. Environment findings
        (a package or an input file missing here) are left to `--check-env`."""
        return [d for d in self.warnings if not (d.rule in RULES and RULES[d.rule].environment)]

    @property
    def ok(self) -> bool:
        return not self.errors


def validate_for_run(path: Path, overrides: Sequence[str] = ()) -> ValidationResult:
    """Validation before a run: what this machine lacks (a package, an input file) is an error,
    found before anything loads — a first pass does not even build the embedded model; the
    second adds the checks that need the model's shape."""
    result = validate_recipe(path, overrides, check_env=True)
    if result.config is not None and not result.errors:
        result = validate_recipe(path, overrides, resolve_embedded_model=True, check_env=True)
    return result


def validate_recipe(path: Path, overrides: Sequence[str] = (), model_dir: Path | None = None,
                    *, resolve_embedded_model: bool = False,
                    check_env: bool = False) -> ValidationResult:
    """Validate a recipe file. `model_dir` (or a local `policy.model_name`) enables the rules
    that need the model's config.json; `resolve_embedded_model` also builds the embedded tiny
    model when missing (used by `run`, never by `validate`). `check_env` makes what this
    machine lacks (packages, input files: environment rules) errors, as `run` does."""
    result = _validate(path, overrides, model_dir, resolve_embedded_model, check_env)
    # Findings about the recipe as a whole (no algorithm section, a missing top-level key, ...)
    # have no key to point at: they point at the top of the file. Command-line problems
    # (USAGE_RULES: an unreadable file, a bad override) are not about the file's content.
    top = Location(result.file, 1, 1)
    located = [d if d.location or d.rule in USAGE_RULES else replace(d, location=top)
               for d in result.diagnostics]
    result.diagnostics = sorted(located, key=lambda d: _reading_order(d, result.file))
    if result.env_reads.reads:
        result.diagnostics = [_masked(d, result.env_reads) for d in result.diagnostics]
    return result


def _reading_order(d: Diagnostic, own_file: str) -> tuple[int, str, int, int]:
    """The recipe's own file first, then its `defaults:` parents, then the overrides (applied
    last); by line and column within each."""
    loc = d.location
    if loc is None:
        return (-1, "", 0, 0)
    rank = 0 if loc.file == own_file else 2 if loc.file.startswith("<") else 1
    return (rank, loc.file, loc.line, loc.column)


def _masked(d: Diagnostic, env: EnvReads) -> Diagnostic:
    via = d.location.via if d.location else None
    return replace(d, message=env.mask(d.message), fix=d.fix and env.mask(d.fix),
                   location=d.location and replace(d.location, via=via and env.mask(via)))


def _validate(path: Path, overrides: Sequence[str], model_dir: Path | None,
              resolve_embedded_model: bool, check_env: bool) -> ValidationResult:
    validator_cache.install(RecipeConfig)
    result = ValidationResult(file=display_name(path))
    try:
        data, positions = load_layered(path)
        apply_overrides(data, positions, overrides)
        result.env_reads = resolve_interpolations(data, positions)
    except RecipeError as exc:
        result.diagnostics = list(exc.diagnostics)
        return result
    result.resolved, result.positions = data, positions
    try:
        config = RecipeConfig.model_validate(data)
    except ValidationError as exc:
        schema_errors = translate(exc, RecipeConfig, data, positions)
        result.diagnostics = schema_errors + _rules_despite(schema_errors, data, positions,
                                                            check_env)
        return result
    result.config = config
    context, model_diagnostics = _model_context(config, model_dir, positions,
                                                resolve_embedded_model)
    result.model = context.model
    result.diagnostics = model_diagnostics + run_rules(config, context, positions,
                                                       check_env=check_env)
    return result


def _rules_despite(schema_errors: list[Diagnostic], data: dict, positions: SourceMap,
                   check_env: bool) -> list[Diagnostic]:
    """Run the cross-field rules on the recipe minus its schema errors, so one run reports
    typos, type errors and rule violations together. What a schema error rejected is removed
    (its default stands in) and marked rejected, so no rule reads it: a rule never reports on
    a default the user did not choose (see `cascade`)."""
    repaired = copy.deepcopy(data)
    rejected: set[KeyPath] = set()
    pending = [path for d in schema_errors for path in rejected_paths(d, RecipeConfig, data)]
    for _ in range(_REPAIR_ROUNDS):
        for path in pending:
            removed = _delete(repaired, path)
            if removed is None:
                return []
            rejected.add(removed)
        try:
            config = RecipeConfig.model_validate(repaired)
            break
        except ValidationError as exc:
            # Removing a value can expose another error (an item's required key, a section
            # left without a required field): remove that too.
            pending = [path for d in translate(exc, RecipeConfig, repaired, {})
                       for path in rejected_paths(d, RecipeConfig, repaired)]
    else:
        return []
    return [d for d in run_rules(config, RuleContext(), positions, rejected, check_env)
            if not any(d.path[: len(bad)] == bad for bad in rejected)]


_REPAIR_ROUNDS = 4


def _delete(tree: Any, path: KeyPath) -> KeyPath | None:
    """Remove the value at `path` (or the list holding it) so its default applies; the path
    removed, or None when nothing can be (a required top-level key)."""
    while path and isinstance(path[-1], int):
        path = path[:-1]  # a list item: the list goes, its default applies
    if not path:
        return None
    node = tree
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return path  # already gone with an ancestor
    if isinstance(node, dict):
        node.pop(path[-1], None)
        return path
    return None


def run_rules(config: RecipeConfig, context: RuleContext, positions: SourceMap,
              rejected: set[KeyPath] | frozenset[KeyPath] = frozenset(),
              check_env: bool = False) -> list[Diagnostic]:
    """Every rule in catalogue order; none reads a value that a schema error (`rejected`) or an
    earlier rule's error rejected (see `cascade`). Environment rules are errors under
    `check_env`."""
    out = []
    guard = ReadGuard(config, rejected)
    for rule in RULES.values():
        severity = "error" if rule.environment and check_env else rule.severity
        for finding in guard.findings(rule.check, config, context):
            # A numeric component is a list index (`target_modules.2`), as in the source map.
            path: KeyPath = tuple(int(part) if part.isdigit() else part
                                  for part in finding.path.split(".")) if finding.path else ()
            where = locate(positions, path, prefer_key=False)
            if where is not None and path not in positions:
                where = replace(where, via=f"{dotted(path)} is not written here: its default "
                                "applies (shown at the nearest written key)")
            out.append(Diagnostic(rule.id, severity, finding.message, path, where,
                                  finding.fix))
            if severity == "error":
                guard.reject(path)
    return out


def _model_context(config: RecipeConfig, model_dir: Path | None, positions: SourceMap,
                   build_embedded: bool) -> tuple[RuleContext, list[Diagnostic]]:
    from lora_rl.model_source import ModelSourceError, local_model_dir

    directory = model_dir
    try:
        directory = directory or local_model_dir(config.policy.model_name, build=build_embedded)
        if directory is None:
            return RuleContext(), []
        return RuleContext(model=read_model_facts(directory)), []
    except ModelSourceError:
        return RuleContext(), []  # a local path that does not exist: rule LR611 says so
    except (ModelFactsError, OSError, RuntimeError, ArithmeticError) as exc:
        # OSError: a name too long for the file system; RuntimeError: `~nosuchuser/...` or a
        # config.json nested too deeply; ArithmeticError: `"num_hidden_layers": Infinity`
        detail = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
        message = str(exc) if isinstance(exc, (ModelFactsError, ModelSourceError)) else \
            f"{directory}/config.json cannot be read ({detail})" if directory else \
            f"policy.model_name cannot be looked up as a local path ({detail})"
        path: KeyPath = ("policy", "model_name")
        return RuleContext(), [Diagnostic(
            "LR403", "error" if model_dir else "warning", message, path,
            locate(positions, path, prefer_key=False),
            "pass --model DIR with a Hugging Face model directory" if model_dir
            else "model checks skipped; the path is read when the run starts",
        )]


def load_config(path: Path, overrides: Sequence[str] = ()) -> RecipeConfig:
    """Load and validate, raising RecipeError with every diagnostic when invalid."""
    result = validate_recipe(path, overrides)
    if result.config is None or result.errors:
        raise RecipeError(result.errors)
    return result.config
