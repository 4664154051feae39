"""LoRA variant fields: defaults keep plain LoRA, the spec carries them from both blocks, and
`explain` shows the effective scale."""

import math
from pathlib import Path

import pytest

from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig
from lora_rl.config.validate import load_config
from lora_rl.explain import lora_rows
from lora_rl.lora.spec import LoraSpec, lora_spec_from_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("block", [DTensorLoraConfig, MegatronPeftConfig])
def test_rslora_scale_from_both_blocks(block):
    assert not block().use_rslora
    plain = lora_spec_from_config(block(dim=16, alpha=8))
    rs = lora_spec_from_config(block(dim=16, alpha=8, use_rslora=True))
    assert plain.scale == 0.5 and rs.scale == 2.0 and rs.use_rslora
    assert LoraSpec(rank=9, alpha=6, use_rslora=True).scale == 6 / math.sqrt(9)


@pytest.mark.parametrize("recipe,block", [
    ("sft-tiny-dtensor-lora.yaml", "policy.dtensor_cfg.lora_cfg"),
    ("sft-tiny-megatron-lora.yaml", "policy.megatron_cfg.peft"),
])
def test_explain_shows_the_effective_scale(recipe, block):
    cfg = load_config(RECIPES / recipe, [f"{block}.dim=16", f"{block}.alpha=8"])
    assert ("scale alpha/dim", "0.5") in lora_rows(cfg)
    cfg = load_config(RECIPES / recipe, [f"{block}.dim=16", f"{block}.alpha=8",
                                         f"{block}.use_rslora=true"])
    assert ("scale alpha/sqrt(dim)", "2 (rsLoRA)") in lora_rows(cfg)


@pytest.mark.parametrize("recipe,lora,lr,tp", [
    ("sft-tiny-dtensor-lora.yaml", "policy.dtensor_cfg.lora_cfg", "policy.optimizer.kwargs.lr",
     "policy.dtensor_cfg.tensor_parallel_size"),
    ("sft-tiny-megatron-lora.yaml", "policy.megatron_cfg.peft", "policy.megatron_cfg.optimizer.lr",
     "policy.megatron_cfg.tensor_model_parallel_size"),
])
def test_explain_shows_dora_and_lora_plus(recipe, lora, lr, tp):
    cfg = load_config(RECIPES / recipe, [f"{lora}.use_dora=true", f"{lora}.lora_plus_lr_ratio=16",
                                         f"{lr}=1e-4", f"{tp}=1"])
    rows = dict(lora_rows(cfg))
    assert rows["LoRA+ learning rates"] == "A 0.0001, B 0.0016 (x16)"
    assert "magnitude" in rows["DoRA"]
    assert lora_spec_from_config(cfg.policy.active_lora).use_dora
    assert "DoRA" not in dict(lora_rows(load_config(RECIPES / recipe)))


def test_residual_init_reaches_the_spec_explain_and_convert():
    from lora_rl.convert.mapping import read_block, write_block

    assert lora_spec_from_config(DTensorLoraConfig()).weight_init == "default"
    assert lora_spec_from_config(DTensorLoraConfig(init_lora_weights="olora")).weight_init \
        == "olora"
    lora = "policy.dtensor_cfg.lora_cfg"
    cfg = load_config(RECIPES / "sft-tiny-dtensor-lora.yaml",
                      [f"{lora}.init_lora_weights=pissa", f"{lora}.dim=8"])
    rows = dict(lora_rows(cfg))
    assert "SVD" in rows["init"] and "rank 16" in rows["init"]
    spec, _ = read_block("dtensor", {"init_lora_weights": "pissa", "dim": 4})
    _, losses = write_block("megatron", spec, "dtensor")
    assert "init_lora_weights" in {loss.key for loss in losses}
    # The Megatron block has its own (canonical targets), which the converter does not carry.
    assert lora_spec_from_config(MegatronPeftConfig(init_lora_weights="olora")).weight_init \
        == "olora"
    peft = "policy.megatron_cfg.peft"
    cfg = load_config(RECIPES / "sft-tiny-megatron-lora.yaml",
                      [f"{peft}.init_lora_weights=olora", f"{peft}.dim=4",
                       f"{peft}.target_modules=[linear_q,linear_v,linear_fc2]",
                       "policy.megatron_cfg.tensor_model_parallel_size=1"])
    rows = dict(lora_rows(cfg))
    assert "QR" in rows["init"] and "rank 8" in rows["init"]
    spec, _ = read_block("megatron", {"init_lora_weights": "olora", "dim": 4})
    _, losses = write_block("dtensor", spec, "megatron")
    assert "init_lora_weights" in {loss.key for loss in losses}
