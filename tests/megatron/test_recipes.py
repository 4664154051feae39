"""The shipped Megatron recipes: they validate; SFT trains through `lora-rl run` with the same
losses at tp=2 and pp=2 (the initial adapter does not depend on the layout) and resumes on
another layout; DPO and GRPO learn by the same criteria as their DTensor counterparts."""

import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.megatron.conftest import MEGATRON_MISSING, REPO, megatron_available
from tests.training.conftest import (  # noqa: F401  (model_cache is a fixture)
    QUIET,
    Runner,
    model_cache,
    reward_gain,
    run_grpo_seeds,
    run_tiny_dpo,
)

RECIPES = ["recipes/sft-tiny-megatron-lora.yaml", "recipes/dpo-tiny-megatron-lora.yaml",
           "recipes/grpo-tiny-megatron-lora.yaml"]
needs_megatron = pytest.mark.skipif(not megatron_available(), reason=MEGATRON_MISSING)


def test_megatron_recipes_validate_strictly():
    done = subprocess.run([sys.executable, "-m", "lora_rl", "validate", "--strict", *RECIPES],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
@needs_megatron
def test_sft_recipe_trains_identically_at_tp2_and_pp2_and_resumes_across_layouts(
        tmp_path, model_cache):  # noqa: F811
    runner = Runner(tmp_path, model_cache)
    steps = ["sft.max_num_steps=8", "sft.val_period=8", "sft.val_at_start=false",
             "checkpointing.save_period=8", *QUIET]
    recipe = "recipes/sft-tiny-megatron-lora.yaml"
    runner.run("run", recipe, *steps, "logger.log_dir=logs/tp2")
    runner.run("run", recipe, *steps, "logger.log_dir=logs/pp2",
               "checkpointing.checkpoint_dir=results/pp2",
               "policy.megatron_cfg.tensor_model_parallel_size=1",
               "policy.megatron_cfg.pipeline_model_parallel_size=2")
    tp2, pp2 = runner.metrics("logs/tp2"), runner.metrics("logs/pp2")
    losses = [r["loss"] for r in tp2]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert max(abs(a - r["loss"]) for a, r in zip(losses, pp2, strict=True)) < 1e-4
    assert "val_accuracy" in tp2[-1] and abs(tp2[-1]["val_loss"] - pp2[-1]["val_loss"]) < 1e-4
    adapter = load_file(tmp_path / "results/sft-tiny-megatron-lora/step_8/adapter.safetensors")
    assert "model.layers.1.self_attn.v_proj.lora_B.weight" in adapter  # HF PEFT-style names
    # Stop after step 4 at tp=2, resume at pp=2 from that checkpoint: steps 5-8 continue the
    # uninterrupted tp=2 run (checkpoints are whole tensors, free of the layout).
    resume = ["sft.val_period=0", "sft.val_at_start=false", "checkpointing.save_period=4",
              "logger.log_dir=logs/r", "checkpointing.checkpoint_dir=results/r", *QUIET]
    runner.run("run", recipe, *resume, "sft.max_num_steps=4")
    done = runner.run("run", recipe, *resume, "sft.max_num_steps=8",
                      "policy.megatron_cfg.tensor_model_parallel_size=1",
                      "policy.megatron_cfg.pipeline_model_parallel_size=2")
    assert "resuming from results/r/step_4" in done.stdout
    resumed = {r["step"]: r["loss"] for r in runner.metrics("logs/r") if "loss" in r}
    assert sorted(resumed) == list(range(1, 9))
    assert max(abs(resumed[s] - losses[s - 1]) for s in range(1, 9)) < 1e-4


@pytest.mark.slow
@needs_megatron
def test_dpo_recipe_starts_at_log2_and_preference_accuracy_rises(tmp_path, model_cache):  # noqa: F811
    run_tiny_dpo(Runner(tmp_path, model_cache), "megatron")


@pytest.mark.slow
@needs_megatron
def test_sft_then_grpo_from_the_exported_adapter_raise_accuracy_and_reward(
        tmp_path, model_cache):  # noqa: F811
    """The GRPO recipe's documented path: SFT, export to PEFT, GRPO from it.

    250 SFT steps, not the DTensor test's 100: Megatron's fused adapters (one A for q/k/v, one
    for gate/up) learn the task more slowly, and from a 100-step adapter GRPO's reward moved
    by +0.01/-0.13/-0.18 (seeds 1-3); from 250 steps it rose by +0.41/+0.27/+0.26."""
    runner = Runner(tmp_path, model_cache)
    runner.run("run", "recipes/sft-tiny-megatron-lora.yaml", "sft.max_num_steps=250",
               "sft.val_period=125", *QUIET)
    rows = runner.metrics("logs/sft-tiny-megatron-lora")
    losses = [r["loss"] for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    assert sum(losses[-10:]) / 10 < losses[0] / 4  # the loss falls a lot (7.2 -> ~0.5)
    assert val[-1]["val_loss"] < val[0]["val_loss"] / 4
    runner.run("export", "--checkpoint", "results/sft-tiny-megatron-lora", "--format", "peft",
               "--out", "results/sft-tiny-megatron-peft")
    runs = run_grpo_seeds(runner, "recipes/grpo-tiny-megatron-lora.yaml")
    # the generator is a HF copy that receives the adapter: trainer and generator agree
    assert all(abs(r["gen_kl_error"]) < 1e-4 for rows in runs for r in rows)
    gains = [reward_gain(rows) for rows in runs]
    # From the same adapter and seed the DTensor backend samples the same first rollouts and
    # computes the same first loss (later steps differ: fused vs separate A, see above).
    runner.run("run", "recipes/grpo-tiny-dtensor-lora.yaml", "grpo.seed=1", "grpo.max_num_steps=1",
               "policy.init_adapter_path=results/sft-tiny-megatron-peft", "logger.log_dir=logs/d1",
               "checkpointing.enabled=false", "grpo.val_period=0", "grpo.val_at_start=false",
               *QUIET)
    first_megatron = next(r for r in runner.metrics("logs/grpo-1") if "reward" in r)
    first_dtensor = next(r for r in runner.metrics("logs/d1") if "reward" in r)
    assert first_megatron["reward"] == first_dtensor["reward"]
    assert abs(first_megatron["loss"] - first_dtensor["loss"]) < 1e-6
    # The DTensor GRPO test's margin: the last 10 steps' mean reward beats the first 5's by
    # >= 0.1 on average over 3 seeds, and every seed gains.
    assert sum(gains) / 3 >= 0.1, gains
    assert min(gains) > 0, gains


def _initial_adapter(directory, model_dir) -> None:
    """A PEFT adapter on every decoder linear: xavier A (one per projection), zero B."""
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)
    modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    tensors = {}
    for i, layer in enumerate(model.model.layers):
        for name in modules:
            block = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            linear = getattr(getattr(layer, block), name)
            a = torch.empty(8, linear.in_features)
            torch.nn.init.xavier_uniform_(a, generator=generator)
            key = f"base_model.model.model.layers.{i}.{block}.{name}"
            tensors[f"{key}.lora_A.weight"] = a
            tensors[f"{key}.lora_B.weight"] = torch.zeros(linear.out_features, 8)
    directory.mkdir()
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": list(modules)}))


@pytest.mark.slow
@needs_megatron
def test_first_five_sft_losses_equal_the_dtensor_backend(tmp_path, model_cache):  # noqa: F811
    """Megatron (tp=2) vs DTensor (one process), same recipe settings, same initial adapter on
    every linear. The Megatron recipe targets the canonical names, so its fused linear_qkv and
    linear_fc1 carry one adapter per projection, as the DTensor backend (and PEFT) do."""
    runner = Runner(tmp_path, model_cache)
    common = ["sft.max_num_steps=5", "sft.val_period=0", "sft.val_at_start=false",
              "checkpointing.enabled=false", "policy.init_adapter_path=init", *QUIET]
    _initial_adapter(tmp_path / "init", model_cache / "tiny-llama-v1")
    runner.run("run", "recipes/sft-tiny-megatron-lora.yaml", *common,
               "policy.megatron_cfg.peft.target_modules=[linear_q,linear_k,linear_v,linear_proj,"
               "linear_fc1_gate,linear_fc1_up,linear_fc2]", "logger.log_dir=logs/megatron")
    runner.run("run", "recipes/sft-tiny-dtensor-lora.yaml", *common,
               "logger.log_dir=logs/dtensor")
    megatron, dtensor = ([r["loss"] for r in runner.metrics(f"logs/{b}")]
                         for b in ("megatron", "dtensor"))
    assert len(megatron) == len(dtensor) == 5
    assert max(abs(m - d) for m, d in zip(megatron, dtensor, strict=True)) < 1e-4, \
        (megatron, dtensor)
    assert megatron[-1] < megatron[0] / 1.5  # and it trains
