"""What every `lora-rl` command prints with and exits with."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from functools import cache

import typer.core

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
"""0 ok, 1 invalid recipe / failed run, 2 usage or I/O error."""

def exit_code(results, strict: bool) -> int:
    """validate's exit code for these ValidationResults: 2 when a file or an override could not
    be used at all (USAGE_RULES), 1 for errors (or recipe warnings under --strict)."""
    from lora_rl.config.diagnostics import USAGE_RULES

    if any(d.rule in USAGE_RULES for r in results for d in r.diagnostics):
        return EXIT_USAGE
    # --strict fails on warnings about the recipe, not on what this machine lacks (--check-env).
    if any(r.errors or (strict and r.recipe_warnings) for r in results):
        return EXIT_INVALID
    return EXIT_OK


@cache
def console(stderr: bool = False):
    # rich costs ~20 ms to import; `validate --format json` never needs it.
    from rich.console import Console

    # Piped into grep or a file there is no terminal width to respect; rich would fall back to
    # 80 columns and cut tables and paths. No emoji codes: rich would turn the `:100:` of
    # `recipe.yaml:100:3` into an emoji.
    width = None if (sys.stderr if stderr else sys.stdout).isatty() else 200
    return Console(stderr=stderr, highlight=False, width=width, emoji=False)


def plain_stream(stderr: bool = False) -> bool:
    """Whether `console` would write to stdout (stderr) without any styling: the stream is not
    a terminal and no variable rich reads (TTY_COMPATIBLE=1, a non-empty FORCE_COLOR) says
    otherwise. Mirrors `rich.console.Console.is_terminal`; False under IPython/Jupyter, where
    rich renders differently."""
    import builtins

    if hasattr(builtins, "get_ipython"):
        return False
    tty_compatible = os.environ.get("TTY_COMPATIBLE", "")
    if tty_compatible in ("0", "1"):
        return tty_compatible == "0"
    force_color = os.environ.get("FORCE_COLOR")
    if force_color is not None:
        return force_color == ""
    try:
        return not (sys.stderr if stderr else sys.stdout).isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one: rich says not a terminal
        return True


def unchanged_by_rich(line: str) -> bool:
    """Whether rich prints `line` (its markup escaped, unstyled, soft-wrapped) as it is. Rich
    expands tabs and drops or rewrites control characters; a line with any goes through it."""
    return line.isprintable()


def say_error(message: str) -> None:
    """`error: message` on stderr, as is (no rich markup, not wrapped)."""
    console(stderr=True).print(f"error: {message}", markup=False, soft_wrap=True)


@contextlib.contextmanager
def reported(code: int, *kinds: type[Exception]) -> Iterator[None]:
    """An expected failure of one of `kinds` in the block is one line `error: ...` and exit
    `code` (EXIT_USAGE for a bad argument or unwritable path, EXIT_INVALID otherwise)."""
    try:
        yield
    except kinds as exc:
        say_error(str(exc))
        raise typer.Exit(code) from None


HELP_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _PlainArgument(typer.core.TyperArgument):
    """An argument shown by its metavar alone: `RECIPE...`, not typer's `{RECIPE}...` in the
    usage line and `RECIPE <list[Path]>` in the argument list."""

    def display_type_rich(self, ctx) -> None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        return name if self.required else f"[{name}]"


class CommandGroup(typer.core.TyperGroup):
    """Command summaries in full (wrapped), not cut at click's 45-character default with
    `...`: the summary is the docstring's first paragraph. Arguments with a metavar are shown
    by it alone (_PlainArgument)."""

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        for param in getattr(command, "params", ()):
            if type(param) is typer.core.TyperArgument and param.metavar:
                param.__class__ = _PlainArgument  # same fields; only its help display differs
        return command

    def format_commands(self, ctx, formatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                summary = (command.help or "").strip().split("\n\n")[0]
                rows.append((name, " ".join(summary.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def command_group(help: str, **settings) -> typer.Typer:
    """A `lora-rl` command group (the app, `recipes`): -h/--help, help on no arguments, plain
    text help, and no rich traceback pages (expected failures are one line, see `reported`)."""
    return typer.Typer(help=help, cls=CommandGroup, context_settings=HELP_SETTINGS,
                       no_args_is_help=True, pretty_exceptions_enable=False,
                       rich_markup_mode=None, **settings)
