"""`lora-rl run` with PiSSA/OLoRA on the tiny recipes: SFT trains (loss falls), the checkpoint
and its PEFT export (a plain LoRA for the ORIGINAL base) load as the trained model, and DPO's
reference policy is the original model (the first loss is log 2)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lora_rl.interop.export import export_checkpoint
from lora_rl.interop.trained_policy import load_trained_policy
from tests.training.conftest import QUIET, Runner

LORA = "policy.dtensor_cfg.lora_cfg"
TOKENS = torch.tensor([[1, 9, 4, 10, 5, 13], [1, 7, 4, 8, 5, 11]])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def test_pissa_sft_run_trains_and_exports_for_the_original_base(runner: Runner, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_rl.config.validate import validate_for_run
    from lora_rl.model_source import require_local_model_dir

    recipe = "recipes/sft-tiny-dtensor-lora.yaml"
    runner.run("run", recipe, f"{LORA}.init_lora_weights=pissa", "sft.max_num_steps=30",
               "checkpointing.save_period=30", "sft.val_period=0", "sft.val_at_start=false",
               *QUIET)
    losses = [r["loss"] for r in runner.metrics("logs/sft-tiny-dtensor-lora") if "loss" in r]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses

    monkeypatch.chdir(runner.workdir)
    monkeypatch.setenv("LORA_RL_CACHE", runner.env["LORA_RL_CACHE"])
    cfg = validate_for_run(Path(recipe), [f"{LORA}.init_lora_weights=pissa"]).config
    assert cfg is not None
    step = Path("results/sft-tiny-dtensor-lora/step_30")
    trained = _logits(load_trained_policy(cfg, step).model)  # rebuilt: residual + adapter
    exported = export_checkpoint(step, "peft", Path("adapter"), None, force=False)
    merged = export_checkpoint(step, "merged", Path("merged"), None, force=False)

    base_dir = require_local_model_dir(cfg.policy.model_name)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    plain = _logits(base)
    assert (trained - plain).abs().max() > 1e-2  # training moved the model
    via_peft = _logits(PeftModel.from_pretrained(base, exported).eval())
    assert (via_peft - trained).abs().max() < 1e-4
    # generate/chat/eval from the export: a plain rank-2r LoRA on the original base.
    assert (_logits(load_trained_policy(cfg, exported).model) - trained).abs().max() < 1e-4
    merged_model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    assert (_logits(merged_model) - trained).abs().max() < 1e-4


def test_olora_dpo_reference_policy_is_the_original_model(runner: Runner):
    runner.run("run", "recipes/dpo-tiny-dtensor-lora.yaml", f"{LORA}.init_lora_weights=olora",
               "dpo.max_num_steps=3", "dpo.val_period=0", "dpo.val_at_start=false",
               "checkpointing.enabled=false", *QUIET)
    train = [r for r in runner.metrics("logs/dpo-tiny-dtensor-lora") if "loss" in r]
    # Policy and reference agree at step 0 only if the disabled layer adds the init back.
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.slow  # three runs, ~40 s on the 2-core machine
def test_a_resumed_pissa_run_equals_the_uninterrupted_one(runner: Runner):
    """Checkpoints hold A and B only: resume rebuilds the residual from the original weights,
    bit for bit (the same device factorises the same weights the same way)."""
    args = ["recipes/sft-tiny-dtensor-lora.yaml", f"{LORA}.init_lora_weights=pissa",
            "sft.val_period=0", "sft.val_at_start=false", "checkpointing.save_period=3", *QUIET]
    runner.run("run", *args, "sft.max_num_steps=6", "logger.log_dir=logs/ref",
               "checkpointing.checkpoint_dir=ck/ref")
    runner.run("run", *args, "sft.max_num_steps=3", "logger.log_dir=logs/cut",
               "checkpointing.checkpoint_dir=ck/cut")
    done = runner.run("run", *args, "sft.max_num_steps=6", "logger.log_dir=logs/cut",
                      "checkpointing.checkpoint_dir=ck/cut")
    assert "resuming from ck/cut/step_3" in done.stdout

    def losses(log_dir):
        return {r["step"]: r["loss"] for r in runner.metrics(log_dir) if "loss" in r}

    reference = losses("logs/ref")
    assert sorted(reference) == list(range(1, 7))
    assert losses("logs/cut") == reference
