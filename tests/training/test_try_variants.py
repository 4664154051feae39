"""`generate`, `chat` and `eval` load a checkpoint trained with rsLoRA or DoRA as the LoRA it
was trained as: the loaded policy's logits are PEFT's for the same adapter, whether loaded from
the checkpoint or from its PEFT export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_rl.interop.export import checkpoint_adapter, export_checkpoint
from lora_rl.interop.trained_policy import load_trained_policy
from tests.training.conftest import QUIET, Runner

MAIN = "recipes/sft-tiny-dtensor-lora.yaml"
TOKENS = torch.tensor([[1, 9, 4, 10, 5, 13], [1, 7, 4, 8, 5, 11]])
VARIANTS = {"rslora": "use_rslora", "dora": "use_dora"}


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_variant_checkpoint_loads_with_the_trained_lora(variant, runner: Runner, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_rl.config.validate import validate_for_run
    from lora_rl.interop.peft_format import MAGNITUDE, wrap_adapter_modules
    from lora_rl.lora import LoraSpec, load_lora_state_dict
    from lora_rl.model_source import require_local_model_dir

    flag = f"policy.dtensor_cfg.lora_cfg.{VARIANTS[variant]}=true"
    # Two steps at a high LR: an adapter far enough from zero that its scale shows in logits.
    runner.run("run", MAIN, flag, "sft.max_num_steps=2", "checkpointing.save_period=2",
               "sft.val_period=0", "sft.val_at_start=false", "policy.optimizer.kwargs.lr=0.05",
               *QUIET)
    monkeypatch.chdir(runner.workdir)
    monkeypatch.setenv("LORA_RL_CACHE", runner.env["LORA_RL_CACHE"])
    # The plain recipe: what the checkpoint recorded decides the LoRA, not the recipe given.
    cfg = validate_for_run(Path(MAIN), []).config
    assert cfg is not None
    step = Path("results/sft-tiny-dtensor-lora/step_2")
    exported = export_checkpoint(step, "peft", Path("adapter"), None, force=False)

    base_dir = require_local_model_dir(cfg.policy.model_name)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    plain = _logits(base)
    reference = _logits(PeftModel.from_pretrained(base, exported).eval())
    assert (reference - plain).abs().max() > 1e-2  # the adapter matters

    for where in (step, exported):
        policy = load_trained_policy(cfg, where)
        assert (_logits(policy.model) - reference).abs().max() < 1e-5, where

    # What the loader built before: alpha / rank, no magnitude. That is not the trained model.
    found = checkpoint_adapter(step)
    naive = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    pairs = {k: v for k, v in found.adapter.items() if not k.endswith(MAGNITUDE)}
    wrap_adapter_modules(naive, pairs, LoraSpec(rank=found.lora.dim, alpha=found.lora.alpha))
    load_lora_state_dict(naive, pairs)
    assert (_logits(naive) - reference).abs().max() > 1e-3
