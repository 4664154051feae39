"""What every `lora-rl` command prints with and exits with."""

from __future__ import annotations

import sys
from functools import cache

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
"""0 ok, 1 invalid recipe / failed run, 2 usage or I/O error."""


@cache
def console(stderr: bool = False):
    # rich costs ~20 ms to import; `validate --format json` never needs it.
    from rich.console import Console

    # Piped into grep or a file there is no terminal width to respect; rich would fall back to
    # 80 columns and cut tables and paths.
    width = None if (sys.stderr if stderr else sys.stdout).isatty() else 200
    return Console(stderr=stderr, highlight=False, width=width)
