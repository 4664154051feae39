"""Resuming with an edited recipe: optimizer and schedule edits take effect (the restored
state does not silently win) and are announced; settings that define the trained state are
refused with each key's old and new value."""

from __future__ import annotations

import warnings

import pytest
import torch

from lora_rl.config.recipe import RecipeConfig
from lora_rl.training.resume_diff import (
    adjustable_changes,
    apply_recipe_hparams,
    fixed_changes,
    recipe_record,
    snapshot_hparams,
)
from tests.training.conftest import QUIET

ARGS = ["recipes/sft-tiny-dtensor-lora.yaml", "sft.val_period=0", "sft.val_at_start=false",
        "checkpointing.save_period=3", "logger.log_dir=logs/e", "checkpointing.checkpoint_dir=ck/e",
        *QUIET]


def test_lr_edit_trains_at_the_new_lr_and_optimizer_change_is_refused(runner):
    runner.run("run", *ARGS, "sft.max_num_steps=4")
    stale = runner.workdir / f"ck/e/.tmp-step_5-{2**22 + 1}"  # a write killed mid-way
    stale.mkdir()
    done = runner.run("run", *ARGS, "sft.max_num_steps=6", "policy.optimizer.kwargs.lr=1e-4")
    assert ("resume: recipe changed since the checkpoint: policy.optimizer.kwargs.lr: 0.005 -> "
            "0.0001; applied to the restored optimizer and schedule (lr now 0.0001)") in done.stdout
    assert "sft.max_num_steps: 4 -> 6; in effect from this resume" in done.stdout
    assert f"removed 1 temporary checkpoint dir(s) left by an interrupted write: {stale.name}" \
        in done.stdout and not stale.exists()
    lrs = {row["step"]: row["lr"] for row in runner.metrics("logs/e")}
    assert lrs == {1: 5e-3, 2: 5e-3, 3: 5e-3, 4: 5e-3, 5: 1e-4, 6: 1e-4}

    refused = runner.run("run", *ARGS, "sft.max_num_steps=8", "policy.optimizer.kwargs.lr=1e-4",
                         "policy.optimizer.name=torch.optim.SGD", check=False)
    assert refused.returncode == 1
    assert ("policy.optimizer.name: 'torch.optim.AdamW' in the checkpoint, 'torch.optim.SGD' in "
            "the recipe") in refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
    assert max(row["step"] for row in runner.metrics("logs/e")) == 6


def _cfg(**policy) -> RecipeConfig:
    return RecipeConfig.model_validate({
        "sft": {"max_num_steps": 10},
        "policy": {"model_name": "tiny", **policy},
    })


def test_record_splits_fixed_from_adjustable_keys():
    lora = {"lora_cfg": {"enabled": True, "dim": 8}}
    base = recipe_record(_cfg(dtensor_cfg=lora))
    edited = recipe_record(_cfg(optimizer={"kwargs": {"lr": 1e-4, "weight_decay": 0.1}},
                                dtensor_cfg={"lora_cfg": {"enabled": True, "dim": 4}}))
    assert [c.key for c in fixed_changes(base, edited)] == ["policy.dtensor_cfg.lora_cfg.dim"]
    assert [c.key for c in adjustable_changes(base, edited)] == [
        "policy.optimizer.kwargs.lr", "policy.optimizer.kwargs.weight_decay"]
    # Checkpoints hold whole tensors, so a new layout is announced, not refused.
    wider = recipe_record(_cfg(dtensor_cfg={**lora, "tensor_parallel_size": 2}))
    assert fixed_changes(base, wider) == []
    (change,) = adjustable_changes(base, wider)
    assert change.key == "policy.dtensor_cfg.tensor_parallel_size" and "resharded" in change.effect
    sgd = recipe_record(_cfg(dtensor_cfg=lora, optimizer={"name": "torch.optim.SGD"}))
    assert [str(c) for c in fixed_changes(base, sgd)] == [
        "policy.optimizer.name: 'torch.optim.AdamW' -> 'torch.optim.SGD'"]


@pytest.mark.parametrize("schedule", [
    lambda opt: torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=10),
    lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10),
], ids=["linear", "cosine"])
def test_applied_hparams_replay_the_new_schedule_and_keep_the_moments(schedule):
    def build(lr, wd):
        param = torch.nn.Parameter(torch.ones(3))
        opt = torch.optim.AdamW([param], lr=lr, weight_decay=wd)
        return param, opt, schedule(opt)

    param, old_opt, old_sched = build(1e-2, 0.0)
    for _ in range(4):
        param.grad = torch.full((3,), 0.5)
        old_opt.step()
        old_sched.step()
    _, new_opt, new_sched = build(1e-3, 0.1)
    fresh = snapshot_hparams(new_opt, new_sched)
    new_opt.load_state_dict(old_opt.state_dict())
    new_sched.load_state_dict(old_sched.state_dict())
    lr = apply_recipe_hparams(new_opt, new_sched, fresh)

    _, ref_opt, ref_sched = build(1e-3, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping the schedule alone is the point here
        for _ in range(4):
            ref_sched.step()
    assert lr == ref_opt.param_groups[0]["lr"]
    assert new_opt.param_groups[0]["weight_decay"] == 0.1
    assert new_sched.last_epoch == 4
    state = new_opt.state_dict()["state"][0]
    assert torch.equal(state["exp_avg"], old_opt.state_dict()["state"][0]["exp_avg"])
