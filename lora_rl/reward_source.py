"""What `env.reward: module:function` names, checked without running it.

A reward function is user code: lora-rl imports it only when a run starts. Before that, and
without importing anything, `validate` can still tell that

- the module is the user's: not the standard library (`os:system`, `builtins:exec`,
  `subprocess:call` all validated before; they failed mid-run with a TypeError traceback),
- the module's source defines the function with a plain `def` (not imported from elsewhere),
- the `def` accepts the documented call `fn(prompts, responses, answers, **env.reward_kwargs)`.

The module file is found with `importlib.machinery.PathFinder`, which looks along `sys.path`
without importing the module or its parent packages, and is read with `ast`.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.machinery import PathFinder
from pathlib import Path

SIGNATURE = "fn(prompts, responses, answers, **reward_kwargs) -> list[float]"
POSITIONAL = ("prompts", "responses", "answers")
FORBIDDEN = frozenset(sys.stdlib_module_names) | {"__main__", "__mp_main__"}
"""Top-level packages a reward may not come from: the standard library (builtins, os,
subprocess, sys, shutil, importlib, ...) holds no reward function and plenty of harm."""
MAX_SOURCE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class RewardProblem:
    severity: str
    """"error": the run would refuse it; "warning": it can only be checked when the run starts."""
    message: str
    fix: str


def split(reference: str) -> tuple[str, str]:
    module, _, function = reference.partition(":")
    return module, function


def forbidden_module(module: str) -> bool:
    return module.split(".")[0] in FORBIDDEN


def find_source(module: str) -> Path | None:
    """The module's `.py` file along `sys.path`, found without importing it or its parents."""
    search: list[str] | None = list(sys.path)
    spec = None
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        if search is None:
            return None
        try:
            spec = PathFinder.find_spec(".".join(parts[:depth]), search)
        except (ImportError, ValueError, OSError):
            return None
        if spec is None:
            return None
        locations = spec.submodule_search_locations
        search = list(locations) if locations is not None else None
    origin = spec.origin if spec else None
    return Path(origin) if origin and origin.endswith(".py") else None


def check_reference(reference: str, kwargs: Iterable[str]) -> RewardProblem | None:
    """The first problem with `env.reward: module:function`, or None when it checks out."""
    module, function = split(reference)
    if forbidden_module(module):
        return RewardProblem(
            "error", f"env.reward: '{module}' is a standard-library module, not a module of "
            f"yours; a reward is a function you write, {SIGNATURE}",
            "write the function in your own module (e.g. my_rewards.py) and name it "
            "as my_rewards:score, or use a built-in reward")
    source = find_source(module)
    if source is None:
        return RewardProblem(
            "warning", f"env.reward: module '{module}' is not found on this Python path, so its "
            "function cannot be checked now; the run checks it before loading the model",
            "make it importable (e.g. PYTHONPATH=.) where you validate and run")
    return check_source(source, module, function, set(kwargs))


def check_source(source: Path, module: str, function: str,
                 kwargs: set[str]) -> RewardProblem | None:
    try:
        if source.stat().st_size > MAX_SOURCE_BYTES:
            return _unchecked(module, function, "its source is too large to read here")
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except SyntaxError as exc:
        return RewardProblem("error", f"env.reward: {source.name} does not parse (line "
                             f"{exc.lineno}: {exc.msg})", "fix the module's syntax")
    except (OSError, ValueError, RecursionError, MemoryError) as exc:
        return _unchecked(module, function, f"its source cannot be read ({type(exc).__name__})")
    binding = _binding(tree, function)
    if isinstance(binding, ast.FunctionDef):
        problem = signature_problem(binding.args, kwargs)
        return None if problem is None else RewardProblem(
            "error", f"env.reward: {module}:{function} {problem}; a reward is called as "
            f"{SIGNATURE}", "change the function's parameters, or env.reward_kwargs")
    if isinstance(binding, ast.AsyncFunctionDef):
        return RewardProblem("error", f"env.reward: {module}:{function} is `async def`; a "
                             "reward is a plain function", "make it a plain `def`")
    if isinstance(binding, (ast.Import, ast.ImportFrom)):
        origin = binding.module if isinstance(binding, ast.ImportFrom) else "another module"
        return RewardProblem(
            "error", f"env.reward: {module} imports '{function}' from {origin} instead of "
            "defining it", "name the module that defines the function with `def`")
    if binding is None and not _dynamic(tree):
        return RewardProblem("error", f"env.reward: module '{module}' ({source.name}) defines "
                             f"no function '{function}'",
                             "check the spelling after the colon, or add the function")
    return _unchecked(module, function, "it is not bound by a plain `def`")


def _unchecked(module: str, function: str, why: str) -> RewardProblem:
    return RewardProblem("warning", f"env.reward: {module}:{function} cannot be checked without "
                         f"running the module ({why}); the run checks it before loading the "
                         "model", f"define it with `def {function}(prompts, responses, answers, "
                         "**kwargs)` at the top level of the module")


def _binding(tree: ast.Module, name: str) -> ast.AST | None:
    """The last top-level statement that binds `name` (a later one wins, as at run time)."""
    found: ast.AST | None = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found = node if node.name == name else found
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound = {(a.asname or a.name).split(".")[0] for a in node.names}
            found = node if name in bound else found
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found = node
        elif not isinstance(node, (ast.Expr, ast.Pass)):
            # if/try/with blocks may bind it too: treat it as "cannot tell"
            if any(isinstance(n, ast.Name) and n.id == name or
                   isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name
                   for n in ast.walk(node)):
                found = node
    return found


def _dynamic(tree: ast.Module) -> bool:
    """A star import or a module `__getattr__` may provide any name."""
    return any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) or
               isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)


def signature_problem(args: ast.arguments, kwargs: set[str]) -> str | None:
    """Why `def` parameters `args` cannot take (prompts, responses, answers, **kwargs)."""
    positional = [*args.posonlyargs, *args.args]
    if len(positional) < len(POSITIONAL) and args.vararg is None:
        return (f"takes {len(positional)} positional parameter(s), but is called with "
                f"{len(POSITIONAL)}")
    first_default = len(positional) - len(args.defaults)
    extra = positional[len(POSITIONAL):]
    by_keyword = {p.arg for p in [*args.args, *args.kwonlyargs]
                  if p not in positional[:len(POSITIONAL)]}
    required = [p.arg for i, p in enumerate(extra, start=len(POSITIONAL)) if i < first_default]
    required += [p.arg for p, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
                 if d is None]
    missing = [name for name in required if name not in kwargs or name not in by_keyword]
    if missing:
        return (f"requires {', '.join(missing)}, which env.reward_kwargs does not give")
    unknown = sorted(kwargs - by_keyword) if args.kwarg is None else []
    if unknown:
        return f"accepts no keyword argument {', '.join(unknown)} (from env.reward_kwargs)"
    return None
