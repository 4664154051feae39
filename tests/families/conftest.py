"""Tiny random models of every family, built once per session with transformers' own classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_rl.tiny.families import FAMILY_CONFIGS


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, Path]:
    from lora_rl.tiny.families import build_family_model

    root = tmp_path_factory.mktemp("families")
    return {family: build_family_model(family, root / family) for family in FAMILY_CONFIGS}


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """The embedded tiny model (its task data feeds every family's SFT run)."""
    from lora_rl.tiny import ensure_tiny_model

    cache = tmp_path_factory.mktemp("lora-rl-cache")
    ensure_tiny_model(cache)
    return cache
