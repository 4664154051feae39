"""RecipeConfig's compiled validator, kept on disk between runs.

Building it (pydantic turning ~530 annotated fields into a core schema) is the largest part of
`validate`'s own start-up. pydantic-core pickles a compiled validator as its core schema: plain
data plus references, by name, to lora-rl's section classes and validator functions; loading
one compiles it again in about a millisecond.

The file is keyed by the versions of lora-rl, pydantic, pydantic-core and Python and by the
path, size and modification time of every module of lora_rl/config, so any edit of the
schema's code makes a new one. It lives in `$LORA_RL_CACHE/validators` (default
`~/.cache/lora-rl/validators`), is written by this user only (0700 folder), and a file another
user owns or could change is ignored, like any file that fails to load. The trust is that of
Python's own `__pycache__`. `LORA_RL_VALIDATOR_CACHE=0` turns the cache off.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile
from functools import cache
from pathlib import Path

from pydantic import BaseModel

ENV_SWITCH = "LORA_RL_VALIDATOR_CACHE"


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


def cache_file(model: type[BaseModel]) -> Path:
    from lora_rl.model_source import cache_root

    return cache_root() / "validators" / f"{model.__name__}-{_key()}.pickle"


@cache
def install(model: type[BaseModel]) -> str:
    """Give `model` its compiled validator: from the cache when there is a valid file, else
    built (and stored). Returns how: "cached", "built", "ready" (already built) or "off"."""
    if model.__pydantic_complete__:
        return "ready"
    if not enabled():
        return "off"
    path = cache_file(model)
    validator = _load(path)
    if validator is not None:
        model.__pydantic_validator__ = validator  # type: ignore[misc]
        return "cached"
    model.model_rebuild()
    _store(path, model.__pydantic_validator__)
    return "built"


def _key() -> str:
    import pydantic_core
    from pydantic.version import VERSION

    from lora_rl import __version__

    digest = hashlib.sha256(f"{__version__}|{VERSION}|{pydantic_core.__version__}|"
                            f"{sys.version}".encode())
    # The schema is defined by lora_rl.config alone (its models import nothing else of lora-rl).
    for file in sorted(Path(__file__).parent.glob("*.py")):
        stat = file.stat()
        digest.update(f"|{file}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def _load(path: Path):
    from pydantic_core import SchemaValidator

    try:
        stat = path.stat()
        getuid = getattr(os, "getuid", None)
        if (getuid is not None and stat.st_uid != getuid()) or stat.st_mode & 0o022:
            return None
        validator = pickle.loads(path.read_bytes())  # noqa: S301 - this user's own cache
    except Exception:  # noqa: BLE001 - a missing, stale or broken file: build instead
        return None
    return validator if isinstance(validator, SchemaValidator) else None


def _store(path: Path, validator) -> None:
    """Write atomically (ranks of one run may race); any failure leaves no file and no cache."""
    temporary = None
    try:
        data = pickle.dumps(validator)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except Exception:  # noqa: BLE001 - a read-only home or an unpicklable schema: no cache
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
