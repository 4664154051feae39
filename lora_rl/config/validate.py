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

from lora_rl.config.diagnostics import Diagnostic, KeyPath, Location, RecipeError, dotted
from lora_rl.config.interpolation import EnvReads, resolve_interpolations
from lora_rl.config.layering import apply_overrides, display_name, load_layered
from lora_rl.config.model_facts import ModelFacts, ModelFactsError, read_model_facts
from lora_rl.config.recipe import RecipeConfig
from lora_rl.config.rules import RULES, RuleContext
from lora_rl.config.schema_errors import locate, translate
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
    def ok(self) -> bool:
        return not self.errors


def validate_recipe(path: Path, overrides: Sequence[str] = (), model_dir: Path | None = None,
                    *, resolve_embedded_model: bool = False) -> ValidationResult:
    """Validate a recipe file. `model_dir` (or a local `policy.model_name`) enables the rules
    that need the model's config.json; `resolve_embedded_model` also builds the embedded tiny
    model when missing (used by `run`, never by `validate`)."""
    result = _validate(path, overrides, model_dir, resolve_embedded_model)
    # Findings about the recipe as a whole (no algorithm section, a missing top-level key, ...)
    # have no key to point at: they point at the top of the file.
    top = Location(result.file, 1, 1)
    result.diagnostics = [d if d.location or d.rule in IO_RULES else replace(d, location=top)
                          for d in result.diagnostics]
    if result.env_reads.reads:
        result.diagnostics = [_masked(d, result.env_reads) for d in result.diagnostics]
    return result


def _masked(d: Diagnostic, env: EnvReads) -> Diagnostic:
    via = d.location.via if d.location else None
    return replace(d, message=env.mask(d.message), fix=d.fix and env.mask(d.fix),
                   location=d.location and replace(d.location, via=via and env.mask(via)))


IO_RULES = frozenset({"LR010"})


def _validate(path: Path, overrides: Sequence[str], model_dir: Path | None,
              resolve_embedded_model: bool) -> ValidationResult:
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
        result.diagnostics = schema_errors + _rules_despite(schema_errors, data, positions)
        return result
    result.config = config
    context, model_diagnostics = _model_context(config, model_dir, positions,
                                                resolve_embedded_model)
    result.model = context.model
    result.diagnostics = model_diagnostics + run_rules(config, context, positions)
    return result


def _rules_despite(schema_errors: list[Diagnostic], data: dict,
                   positions: SourceMap) -> list[Diagnostic]:
    """Run the cross-field rules on the recipe minus its schema errors, so one run reports
    typos, type errors and rule violations together. Findings on keys that had a schema error
    are dropped (they would be about a default the user did not choose)."""
    repaired = copy.deepcopy(data)
    broken = {d.path for d in schema_errors}
    for path in broken:
        if not _delete(repaired, path):
            return []
    try:
        config = RecipeConfig.model_validate(repaired)
    except ValidationError:
        return []
    return [d for d in run_rules(config, RuleContext(), positions)
            if not any(d.path[: len(b)] == b for b in broken)]


def _delete(tree: Any, path: KeyPath) -> bool:
    """Remove the value at `path` so its default applies; False when that cannot help."""
    if not path:
        return False
    node = tree
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return True
    if isinstance(node, dict):
        node.pop(path[-1], None)
        return True
    return False


def run_rules(config: RecipeConfig, context: RuleContext,
              positions: SourceMap) -> list[Diagnostic]:
    out = []
    for rule in RULES.values():
        for finding in rule.check(config, context):
            # A numeric component is a list index (`target_modules.2`), as in the source map.
            path: KeyPath = tuple(int(part) if part.isdigit() else part
                                  for part in finding.path.split(".")) if finding.path else ()
            where = locate(positions, path, prefer_key=False)
            if where is not None and path not in positions:
                where = replace(where, via=f"{dotted(path)} is not written here: its default "
                                "applies (shown at the nearest written key)")
            out.append(Diagnostic(rule.id, rule.severity, finding.message, path, where,
                                  finding.fix))
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
    except (ModelFactsError, ModelSourceError, OSError, RuntimeError, ArithmeticError) as exc:
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
