"""The TrainingBackend protocol members generation and checkpoints rely on: `model_dir` (what a
vLLM engine loads) and `optimizer_meta()`, which must not depend on `checkpoint_tensors()`
having run first (the session calls it on the main rank alone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.state_dict import get_state_dict

from lora_rl.backends.base import TokenBatch
from lora_rl.backends.optimizer_state import flatten_optimizer_state

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sft-tiny-dtensor-lora.yaml"


@pytest.fixture
def backend(model_cache, monkeypatch):
    from lora_rl.algorithms import backend_inputs
    from lora_rl.backends import build_backend
    from lora_rl.config.validate import load_config
    from lora_rl.training.runtime import Runtime

    monkeypatch.setenv("LORA_RL_CACHE", str(model_cache))
    return build_backend(backend_inputs(load_config(RECIPE)), Runtime(0, 1, 0, torch.device("cpu")))


def _json(value):
    return json.loads(json.dumps(value))


def _meta_from_state_dict(backend) -> dict:
    """What checkpoints recorded before: the metadata half of torch's full optimizer state."""
    _, optim_sd = get_state_dict(backend.model, backend.optimizer, options=backend._STATE_OPTIONS)
    return flatten_optimizer_state(optim_sd)[1]


def _train_one_step(backend) -> None:
    ids = torch.arange(2, 14).reshape(2, 6)
    batch = TokenBatch(ids, torch.ones_like(ids), torch.ones_like(ids))
    backend.forward_backward([batch], lambda lp, b: (-(lp * b.target_mask).sum(), {}))
    backend.optimizer_step()


def test_model_dir_is_a_protocol_member_naming_the_loaded_model(backend, model_cache):
    from lora_rl.backends.base import TrainingBackend

    assert "model_dir" in TrainingBackend.__dict__
    assert backend.model_dir.parent == model_cache
    assert (backend.model_dir / "config.json").is_file()


def test_optimizer_meta_needs_no_checkpoint_tensors_first(backend):
    first = _json(backend.optimizer_meta())  # before checkpoint_tensors() ever ran
    params = first["optimizer"]["param_groups"][0]["params"]
    trainable = [n for n, p in backend.model.named_parameters() if p.requires_grad]
    assert params == trainable and all(".lora_" in n for n in params)
    assert first["optimizer"] == _json(_meta_from_state_dict(backend))
    assert set(first["scheduler"]) == set(backend.scheduler.state_dict())


def test_optimizer_meta_matches_the_state_dict_after_training(backend):
    _train_one_step(backend)
    meta = _json(backend.optimizer_meta())
    backend.checkpoint_tensors()
    assert _json(backend.optimizer_meta()) == meta
    assert meta["optimizer"] == _json(_meta_from_state_dict(backend))
    assert meta["scheduler"]["last_epoch"] == 1


def test_generation_copy_needs_only_the_model_and_its_load_settings(backend):
    """DTensor's GenerationCopy takes narrow state (trained module, model dir, precision, the
    LoRA section), not the backend; its synced copy computes what the training model computes."""
    from lora_rl.backends.dtensor.generation_copy import GenerationCopy
    from lora_rl.lora import iter_lora_layers

    with torch.no_grad():  # non-zero B, or the copy would match the base model too
        for _, layer in iter_lora_layers(backend.model):
            layer.lora_B.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    from lora_rl.config.validate import load_config

    policy = load_config(RECIPE).policy
    copy = GenerationCopy(backend.model, backend.model_dir, policy.precision,
                          policy.trust_remote_code, lora=policy.dtensor_cfg.lora_cfg)
    ids = torch.arange(2, 14).reshape(2, 6)
    with copy.synced() as model, torch.no_grad():
        assert model is not backend.model
        theirs = model(input_ids=ids).logits
        ours = backend.model(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours)
