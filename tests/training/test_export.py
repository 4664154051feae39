"""Export: the PEFT adapter loads in `peft` with the merged export's logits and lora-rl's own;
bad targets and existing outputs are refused cleanly."""

import pytest
import torch

from tests.training.conftest import QUIET


@pytest.fixture
def trained(runner):
    runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", "sft.max_num_steps=30",
               "sft.val_period=0", "sft.val_at_start=false", "checkpointing.save_period=30",
               *QUIET)
    return runner


def test_peft_and_merged_exports_agree_with_lora_rl(trained, model_cache):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from lora_rl.config.lora import DTensorLoraConfig
    from lora_rl.lora import apply_lora, load_lora_state_dict

    runner = trained
    ckpt = "results/sft-tiny-dtensor-lora/step_30"
    runner.run("export", "--checkpoint", ckpt, "--format", "peft", "--out", "out/peft")
    runner.run("export", "--checkpoint", ckpt, "--format", "merged", "--out", "out/merged")
    base_dir = model_cache / "tiny-llama-v1"
    tokens = torch.tensor([[1, 9, 4, 10, 5, 13], [1, 7, 4, 8, 5, 11]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        peft_logits = PeftModel.from_pretrained(base, runner.workdir / "out/peft")(tokens).logits
        merged = AutoModelForCausalLM.from_pretrained(runner.workdir / "out/merged").eval()
        merged_logits = merged(tokens).logits
        ours = AutoModelForCausalLM.from_pretrained(base_dir).eval()
        apply_lora(ours, DTensorLoraConfig(enabled=True, dim=8, alpha=16))
        load_lora_state_dict(ours, load_file(str(runner.workdir / ckpt / "adapter.safetensors")))
        ours_logits = ours(tokens).logits
    assert (peft_logits - merged_logits).abs().max() < 1e-4
    assert (peft_logits - ours_logits).abs().max() < 1e-5
    keys = load_file(str(runner.workdir / "out/peft/adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.") and ".default" not in k for k in keys)


def test_peft_export_names_a_base_that_peft_resolves(trained, model_cache):
    """`AutoPeftModelForCausalLM.from_pretrained(adapter)` alone: base_model_name_or_path is the
    embedded model's local directory, not the unresolvable name `lora-rl/tiny-llama`."""
    import json

    import peft
    from peft import AutoPeftModelForCausalLM

    runner = trained
    runner.run("export", "--checkpoint", "results/sft-tiny-dtensor-lora/step_30", "--format",
               "peft", "--out", "out/peft")
    config = json.loads((runner.workdir / "out/peft/adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((model_cache / "tiny-llama-v1").resolve())
    assert config["peft_version"] == peft.__version__
    model = AutoPeftModelForCausalLM.from_pretrained(runner.workdir / "out/peft")
    tokens = torch.tensor([[1, 9, 4, 10, 5, 13]])
    with torch.no_grad():
        assert model(tokens).logits.shape == (1, 6, model.config.vocab_size)


def test_export_refuses_to_overwrite_and_explains_bad_checkpoints(trained):
    runner = trained
    args = ["export", "--checkpoint", "results/sft-tiny-dtensor-lora", "--format", "peft"]
    runner.run(*args, "--out", "out/a")
    again = runner.run(*args, "--out", "out/a", check=False)
    assert again.returncode == 2 and "--force" in again.stderr
    runner.run(*args, "--out", "out/a", "--force")
    missing = runner.run("export", "--checkpoint", "nowhere", "--format", "peft", "--out", "x",
                         check=False)
    assert missing.returncode == 1 and "no such checkpoint" in missing.stderr
    assert "Traceback" not in missing.stderr + again.stderr


def test_training_can_start_from_a_peft_adapter(trained):
    runner = trained
    runner.run("export", "--checkpoint", "results/sft-tiny-dtensor-lora", "--format", "peft",
               "--out", "out/init")
    runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", "policy.init_adapter_path=out/init",
               "sft.max_num_steps=1", "sft.val_period=0", "sft.val_at_start=false",
               "checkpointing.enabled=false", "logger.log_dir=logs/init", *QUIET)
    first = runner.metrics("logs/init")[0]["loss"]
    fresh = runner.metrics("logs/sft-tiny-dtensor-lora")[0]["loss"]
    assert first < fresh / 2  # the adapter's knowledge carried over
    wrong = runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml",
                       "policy.init_adapter_path=out/init", "policy.dtensor_cfg.lora_cfg.dim=4",
                       "checkpointing.enabled=false", *QUIET, check=False)
    # caught by `validate`'s rule before the model loads
    assert wrong.returncode == 1 and "error LR613" in wrong.stderr and "r=8" in wrong.stderr
