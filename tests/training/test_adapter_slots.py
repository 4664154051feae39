"""AdapterSlots: several adapters (different targets and ranks) on one loaded base, one in the
model at a time, sharing the base weights; each built exactly as a solo run builds it."""

from __future__ import annotations

import pytest
import torch

from lora_rl.backends.dtensor.adapter_slots import AdapterSlots
from lora_rl.backends.dtensor.model import build_policy_model, load_hf_model
from lora_rl.config.validate import load_config
from lora_rl.errors import SetupError
from lora_rl.lora import iter_lora_layers, lora_state_dict
from lora_rl.model_source import require_local_model_dir
from tests.training.conftest import RECIPES

LORA = "policy.dtensor_cfg.lora_cfg"


def _cfg(*overrides: str):
    return load_config(RECIPES / "sft-tiny-dtensor-lora.yaml", list(overrides))


@pytest.fixture
def slots(model_cache, monkeypatch) -> AdapterSlots:
    monkeypatch.setenv("LORA_RL_CACHE", str(model_cache))
    policy = _cfg().policy
    return AdapterSlots(load_hf_model(require_local_model_dir(policy.model_name), "float32",
                                      False))


def test_adapters_with_other_targets_and_ranks_take_turns_on_shared_base_weights(slots):
    base_weights = {n: p for n, p in slots.model.named_parameters()}
    wide = _cfg()
    narrow = _cfg(f"{LORA}.match_all_linear=false", f"{LORA}.target_modules=[q_proj,v_proj]",
                  f"{LORA}.dim=2", "sft.seed=5")
    slots.add("wide", wide.policy, wide.sft.seed)
    slots.add("narrow", narrow.policy, narrow.sft.seed)
    assert list(iter_lora_layers(slots.model)) == []  # between turns: the bare base
    shapes = {}
    for name in ("wide", "narrow"):
        with slots.installed(name):
            layers = dict(iter_lora_layers(slots.model))
            ranks = {layer.lora_A.weight.shape[0] for layer in layers.values()}
            shapes[name] = (len(layers), ranks)
            trainable = [n for n, p in slots.model.named_parameters() if p.requires_grad]
            assert trainable and all(".lora_" in n for n in trainable)
            # The frozen weights are the very tensors the base was loaded with.
            for layer in layers.values():
                assert any(layer.base.weight is p for p in base_weights.values())
        with pytest.raises(RuntimeError, match="one adapter at a time"):
            with slots.installed("wide"), slots.installed("narrow"):
                pass
    assert shapes["wide"] == (14, {8}) and shapes["narrow"] == (4, {2})
    assert dict(slots.model.named_parameters()) == base_weights  # same names, same objects


def test_each_adapter_starts_as_its_solo_run_starts(slots, model_cache):
    cfg = _cfg(f"{LORA}.dim=4", "sft.seed=11")
    slots.add("other", _cfg().policy, 42)  # built first: must not shift this one's init
    slots.add("mine", cfg.policy, cfg.sft.seed)
    solo = lora_state_dict(build_policy_model(cfg.policy, seed=cfg.sft.seed).model)
    with slots.installed("mine"):
        joint = lora_state_dict(slots.model)
    assert joint.keys() == solo.keys()
    assert all(torch.equal(joint[k], solo[k]) for k in solo)


def test_full_fine_tuning_cannot_share_the_base(slots):
    with pytest.raises(SetupError, match="needs LoRA enabled"):
        slots.add("full", _cfg(f"{LORA}.enabled=false").policy, 1)
