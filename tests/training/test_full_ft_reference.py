"""Full fine-tuning DPO/GRPO: the reference policy is a frozen copy of the starting weights
(NeMo RL's default), swapped into the model in place while reference log-probs are computed."""

import math

import pytest
import torch

from lora_rl.backends.base import FrozenReference
from lora_rl.config.validate import validate_recipe
from tests.training.conftest import QUIET, REPO


def test_frozen_reference_swaps_the_starting_weights_in_and_back_out():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)  # frozen weights are not copied: they never change
    start = {k: v.clone() for k, v in model.state_dict().items()}
    reference = FrozenReference(model)
    assert len(reference.saved) == 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(trained["0.weight"], start["0.weight"])
    params = list(model.parameters())
    x = torch.randn(3, 4)
    with reference.swapped_in():
        assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
        assert list(model.parameters()) == params  # the same objects the optimizer holds
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    with reference.swapped_in():  # the copy is still the starting weights, not the trained
        before = model(x)
    torch.testing.assert_close(before, torch.func.functional_call(model, start, (x,)))


@pytest.mark.parametrize("recipe,overrides", [
    ("recipes/dpo-tiny-dtensor-lora.yaml", ["policy.dtensor_cfg.lora_cfg.enabled=false"]),
    ("recipes/grpo-tiny-dtensor-lora.yaml", ["policy.dtensor_cfg.lora_cfg.enabled=false",
                                             "~policy.init_adapter_path"]),
])
def test_full_fine_tuning_with_a_reference_validates_on_dtensor(recipe, overrides):
    result = validate_recipe(REPO / recipe, overrides)
    assert result.errors == []


def test_full_fine_tuning_dpo_starts_at_log2_and_learns(runner):
    """With policy == reference at step 0 the DPO loss is exactly log 2; the policy then moves
    away from the frozen copy (a reference that followed the policy would keep it at log 2)."""
    runner.run("run", "recipes/dpo-tiny-dtensor-lora.yaml",
               "policy.dtensor_cfg.lora_cfg.enabled=false", "policy.optimizer.kwargs.lr=1e-4",
               "dpo.max_num_steps=40", "dpo.val_period=40", "checkpointing.enabled=false",
               "logger.log_dir=logs/full", *QUIET)
    rows = runner.metrics("logs/full")
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_accuracy" in r]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert val[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert sum(r["accuracy"] for r in train[-10:]) / 10 > 0.9
    assert train[-1]["loss"] < 0.5
    assert val[-1]["val_accuracy"] > val[0]["val_accuracy"]


@pytest.mark.slow
def test_full_fine_tuning_dpo_on_two_fsdp2_ranks_matches_one_process(runner):
    """The swap goes through FSDP2's sharded parameters (each rank swaps its shard, then the
    gathered weights are dropped): 2 data-parallel ranks give one process's losses."""
    common = ["policy.dtensor_cfg.lora_cfg.enabled=false", "policy.optimizer.kwargs.lr=1e-4",
              "dpo.max_num_steps=12", "dpo.val_period=12", "checkpointing.enabled=false", *QUIET]
    runner.run("run", "recipes/dpo-tiny-dtensor-lora.yaml", *common, "logger.log_dir=logs/one")
    runner.run("run", "recipes/dpo-tiny-dtensor-lora.yaml", *common, "logger.log_dir=logs/two",
               "cluster.gpus_per_node=2", "policy.train_micro_batch_size=8",
               "dpo.val_micro_batch_size=5")
    one, two = ([r["loss"] for r in runner.metrics(f"logs/{n}") if "loss" in r]
                for n in ("one", "two"))
    assert len(one) == len(two) == 12
    assert two == pytest.approx(one, abs=1e-4)


@pytest.mark.slow
def test_full_fine_tuning_dpo_on_megatron_gives_the_dtensor_losses(runner):
    """The Megatron backend (tp x pp shards and stages, each swapped on its own rank) keeps the
    same frozen reference: full fine-tuning DPO follows the DTensor backend's losses."""
    common = ["dpo.max_num_steps=12", "dpo.val_period=12", "checkpointing.enabled=false",
              *QUIET]
    runner.run("run", "recipes/dpo-tiny-dtensor-lora.yaml", *common, "logger.log_dir=logs/dt",
               "policy.dtensor_cfg.lora_cfg.enabled=false", "policy.optimizer.kwargs.lr=1e-4")
    runner.run("run", "recipes/dpo-tiny-megatron-lora.yaml", *common, "logger.log_dir=logs/mg",
               "policy.megatron_cfg.peft.enabled=false", "policy.megatron_cfg.optimizer.lr=1e-4")
    dt, mg = ([r["loss"] for r in runner.metrics(f"logs/{n}") if "loss" in r]
              for n in ("dt", "mg"))
    assert mg[0] == pytest.approx(math.log(2), abs=1e-6)
    assert mg == pytest.approx(dt, abs=1e-3)
