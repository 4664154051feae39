"""vLLM tier fixtures: one tiny-Llama policy with a non-zero LoRA adapter, and one in-process
vLLM engine per weight-sync mode, started once per module (a start costs 10-30 s on 2 cores).

The tier runs only where vLLM imports (tools/vllm_tier.sh builds that venv); elsewhere every test
marked `vllm` is skipped at collection, so the default suite never pays for it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml


def _vllm_installed() -> bool:
    # Under pytest `tests/` is on sys.path, so this very directory is importable as a namespace
    # package called `vllm`; only a spec with an origin (a real __init__.py) is the package.
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


HAVE_VLLM = _vllm_installed()
SKIP_REASON = "vLLM is not installed (tools/vllm_tier.sh runs this tier in its own venv)"


def pytest_collection_modifyitems(config, items):
    if HAVE_VLLM:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("vllm") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vllm_cache(tmp_path_factory) -> Path:
    """A private model cache holding the tiny Llama; LORA_RL_CACHE points at it for the whole
    session so the backend, the engine (VLLM_CACHE_ROOT) and subprocess runs share it."""
    from lora_rl.tiny import ensure_tiny_model

    cache = tmp_path_factory.mktemp("lora-rl-vllm-cache")
    ensure_tiny_model(cache)
    previous = os.environ.get("LORA_RL_CACHE")
    os.environ["LORA_RL_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("LORA_RL_CACHE", None)
    else:
        os.environ["LORA_RL_CACHE"] = previous


def grpo_tree(recipe_kit, mode: str, **changes) -> dict:
    return recipe_kit.changed(recipe_kit.base("grpo"), {
        "policy.generation.backend": "vllm",
        "policy.generation.lora_weight_sync": mode,
        "policy.generation.max_new_tokens": 8,
        "policy.max_total_sequence_length": 32,
        **changes,
    })


@dataclass
class Policy:
    cfg: object
    backend: object
    tokenizer: object


def build_policy(recipe_kit, directory: Path, mode: str, **changes) -> Policy:
    """A DTensor policy (single process) from a validated GRPO recipe, with LoRA B drawn
    non-zero so the adapter changes the outputs (zero B would make every parity check pass
    against the base model too)."""
    from lora_rl.algorithms import backend_inputs
    from lora_rl.backends import build_backend
    from lora_rl.config.validate import load_config
    from lora_rl.data.sources import load_tokenizer
    from lora_rl.lora import iter_lora_layers
    from lora_rl.training.runtime import Runtime

    path = directory / f"grpo-{mode}.yaml"
    path.write_text(yaml.safe_dump(grpo_tree(recipe_kit, mode, **changes), sort_keys=False))
    cfg = load_config(path)
    backend = build_backend(backend_inputs(cfg), Runtime(0, 1, 0, torch.device("cpu")))
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for _, layer in iter_lora_layers(backend.model):
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape,
                                                  generator=generator) * 0.2)
    return Policy(cfg, backend, load_tokenizer(cfg.policy, cfg.data))


@pytest.fixture(scope="module", params=["merge", "split"])
def served(request, recipe_kit, vllm_cache, tmp_path_factory):
    """(mode, policy, engine): the engine is closed before the next mode's starts, because
    in-process vLLM owns the process's distributed state while it runs."""
    if not HAVE_VLLM:
        pytest.skip(SKIP_REASON)
    from lora_rl.generation.vllm_engine import VllmEngine

    mode = request.param
    policy = build_policy(recipe_kit, tmp_path_factory.mktemp(f"vllm-{mode}"), mode,
                          **{"policy.optimizer.kwargs.lr": 0.05})
    engine = VllmEngine(policy.cfg.policy, policy.backend, policy.tokenizer,
                        policy.cfg.grpo.num_prompts_per_step
                        * policy.cfg.grpo.num_generations_per_prompt)
    yield mode, policy, engine
    engine.close()
