"""The one base of every failure lora-rl expects, and the generic run-time setup error.

An expected failure (bad data, a model that cannot be found or built, a checkpoint that cannot
be resumed, a recipe that cannot run on this model or machine, ...) is a `LoraRlError`: the CLI
and `worker.py` print it as one line, `error: ...`, and exit non-zero. Anything else that
escapes is a bug and keeps its traceback. Each specific class lives beside the code that raises
it (`data.jsonl.DataError`, `checkpoint.CheckpointError`, ...) and derives from `LoraRlError`;
most also keep `ValueError` (or `RuntimeError`) as a second base so that older callers which
catch those still do.
"""

from __future__ import annotations


class LoraRlError(Exception):
    """An expected failure, reported in one line without a traceback."""


class SetupError(LoraRlError, ValueError):
    """The validated recipe cannot run as given, found only when the run builds its model,
    data order or optimizer (what `lora-rl validate` cannot know without loading them)."""
