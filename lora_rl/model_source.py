"""Where a `policy.model_name` lives on disk. Torch-free: `validate` uses it.

lora-rl downloads nothing: a model is a local Hugging Face directory, or the embedded tiny model
that lora-rl builds itself (deterministically) into its cache on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

from lora_rl.errors import LoraRlError

TINY_MODEL_NAME = "lora-rl/tiny-llama"
TINY_MODEL_DIRNAME = "tiny-llama-v1"
BUILT_MODELS = {"lora-rl/smollm2-135m-instruct": ("smollm2-135m-instruct-v1",
                                                  "lora-rl build-model smollm2")}
"""Models lora-rl builds into its cache on request (name -> (directory, command))."""


class ModelSourceError(LoraRlError, ValueError):
    pass


def cache_root() -> Path:
    """`$LORA_RL_CACHE`, else `~/.cache/lora-rl`."""
    configured = os.environ.get("LORA_RL_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lora-rl"


def tiny_model_dir() -> Path:
    return cache_root() / TINY_MODEL_DIRNAME


def names_a_path(name: str) -> bool:
    """Whether a `policy.model_name` means a local path: it is written as one (`/`, `./`,
    `../`, `~`) or something exists there; otherwise it is a hub-style id (`org/model`)."""
    if name.startswith(("/", "./", "../", "~")):
        return True
    try:
        return Path(name).expanduser().exists()
    except (OSError, ValueError, RuntimeError):  # too long a name, `~nosuchuser/...`
        return False


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
    try:
        path = Path(name).expanduser()
    except RuntimeError:  # `~nosuchuser/...`
        raise ModelSourceError(f"model directory {name} does not exist") from None
    if path.is_dir():
        return path
    if names_a_path(name):
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


# ---- weight formats ---------------------------------------------------------------------------

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""Weight files read with `torch.load`: pickle, which can run code while loading."""
PICKLE_RULE = "LR804"


def weight_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """(safetensors files, pickle files) directly in a model directory."""
    files = sorted(p for p in directory.iterdir() if p.is_file())
    return ([p for p in files if p.suffix == ".safetensors"],
            [p for p in files if p.suffix in PICKLE_SUFFIXES])


def pickle_only(directory: Path) -> list[Path]:
    """The pickle weight files of a directory that has no safetensors weights (else [])."""
    try:
        safe, pickled = weight_files(directory)
    except OSError:
        return []
    return [] if safe else pickled


def conversion_command(directory: Path) -> str:
    return (f"python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{directory}').save_pretrained('{directory}')\" (writes "
            "model.safetensors next to the pickle; transformers reads it with weights_only=True)")


def check_weights(directory: Path, allow_pickle: bool) -> None:
    """Safetensors only, unless the recipe opts in (`policy.allow_pickle_weights`); opted-in
    pickle files are opened now with torch's safe loader (`weights_only=True`), so a file it
    refuses stops the run with one line instead of an UnpicklingError traceback mid-load."""
    pickled = pickle_only(directory)
    if not pickled:
        return
    names = ", ".join(p.name for p in pickled[:3]) + (" ..." if len(pickled) > 3 else "")
    if not allow_pickle:
        raise ModelSourceError(
            f"{PICKLE_RULE}: {directory} holds pickle weights only ({names}); lora-rl loads "
            f"safetensors only, because unpickling can run code.\nfix: convert once: "
            f"{conversion_command(directory)}; or, for a source you trust, set "
            "policy.allow_pickle_weights: true")
    import pickle

    import torch

    for path in pickled:
        try:
            torch.load(path, map_location="meta", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
            raise ModelSourceError(
                f"{PICKLE_RULE}: {path} is refused by torch's safe loader (weights_only=True): "
                f"{_reason(exc)}\nfix: use safetensors weights from a source you trust") from None


def _reason(exc: Exception) -> str:
    """The line of torch's message that says what was refused (not its advice to retry with
    weights_only=False)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "weights_only` set to `False`" not in line and
              not line.startswith(("Weights only load failed", "Check the documentation",
                                   "Please file an issue"))]
    return (useful or lines or [type(exc).__name__])[0][:300]
