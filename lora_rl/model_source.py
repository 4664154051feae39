"""Where a `policy.model_name` lives on disk. Torch-free: `validate` uses it.

lora-rl downloads nothing: a model is a local Hugging Face directory, or the embedded tiny model
that lora-rl builds itself (deterministically) into its cache on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

TINY_MODEL_NAME = "lora-rl/tiny-llama"
TINY_MODEL_DIRNAME = "tiny-llama-v1"
BUILT_MODELS = {"lora-rl/smollm2-135m-instruct": ("smollm2-135m-instruct-v1",
                                                  "lora-rl build-model smollm2")}
"""Models lora-rl builds into its cache on request (name -> (directory, command))."""


class ModelSourceError(ValueError):
    pass


def cache_root() -> Path:
    """`$LORA_RL_CACHE`, else `~/.cache/lora-rl`."""
    configured = os.environ.get("LORA_RL_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lora-rl"


def tiny_model_dir() -> Path:
    return cache_root() / TINY_MODEL_DIRNAME


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.sep in name and Path(name).exists()


def local_model_dir(name: str, *, build: bool = False) -> Path | None:
    """The directory of `name`, or None when it is a hub-style id that cannot be checked here.

    With `build`, the embedded tiny model is built when missing (imports torch)."""
    if name == TINY_MODEL_NAME:
        directory = tiny_model_dir()
        if (directory / "config.json").is_file():
            return directory
        if build:
            from lora_rl.tiny import ensure_tiny_model

            return ensure_tiny_model(cache_root())
        return None
    if name in BUILT_MODELS:
        directory = cache_root() / BUILT_MODELS[name][0]
        return directory if (directory / "config.json").is_file() else None
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if _looks_like_path(name) or path.exists():
        raise ModelSourceError(f"model directory {name} does not exist")
    return None


def require_local_model_dir(name: str) -> Path:
    """For `run`: a directory that exists, or a clear error (no hub downloads)."""
    directory = local_model_dir(name, build=True)
    if directory is None and name in BUILT_MODELS:
        raise ModelSourceError(f"{name} is not built yet: run `{BUILT_MODELS[name][1]}` "
                               f"(it goes to {cache_root() / BUILT_MODELS[name][0]})")
    if directory is None:
        raise ModelSourceError(
            f"'{name}' is not a local directory and lora-rl downloads nothing: download the "
            f"model yourself (e.g. `huggingface-cli download {name} --local-dir models/x`) and "
            f"set policy.model_name to that directory, or use {TINY_MODEL_NAME}"
        )
    return directory
