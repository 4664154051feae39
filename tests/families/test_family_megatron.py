"""The Megatron backend on every family it maps (Llama, Mistral, Qwen2 with q/k/v biases,
Qwen3 with q/k norms) and the MoE families (Mixtral, Qwen3-MoE, under sequence parallelism, LoRA
on every expert), at tp=2 on gloo: the first SFT loss (LoRA B starts at zero, so it is the base
model's) equals the DTensor backend's within 1e-3, and training lowers the loss."""

from __future__ import annotations

import pytest

from lora_rl.architecture import FAMILIES, supported_families
from tests.megatron.conftest import MEGATRON_MISSING, megatron_available
from tests.training.conftest import QUIET, Runner

FIVE_STEPS = ["sft.max_num_steps=5", "sft.val_period=0", "sft.val_at_start=false",
              "checkpointing.enabled=false", *QUIET]


def _losses(runner: Runner, recipe: str, model_dir, tag: str, *extra: str) -> list[float]:
    runner.run("run", f"recipes/{recipe}", *FIVE_STEPS, f"policy.model_name={model_dir}",
               f"logger.log_dir=logs/{tag}", *extra)
    return [r["loss"] for r in runner.metrics(f"logs/{tag}") if "loss" in r]


def _megatron_parallel(family: str) -> list[str]:
    """tp=2 (the recipe's two processes); MoE layers need sequence parallelism with it."""
    moe = any(style == "moe_tp_experts" for style in FAMILIES[family].tp_plan.values())
    return ["policy.megatron_cfg.tensor_model_parallel_size=2",
            *(["policy.megatron_cfg.sequence_parallel=true"] if moe else [])]


@pytest.mark.slow
@pytest.mark.skipif(not megatron_available(), reason=MEGATRON_MISSING)
@pytest.mark.parametrize("family", supported_families("megatron"))
def test_megatron_first_loss_equals_dtensor(family, family_models, tiny_cache, tmp_path):
    runner = Runner(tmp_path, tiny_cache)
    model_dir = family_models[family]
    dtensor = _losses(runner, "sft-tiny-dtensor-lora.yaml", model_dir, "dtensor")
    megatron = _losses(runner, "sft-tiny-megatron-lora.yaml", model_dir, "megatron",
                       *_megatron_parallel(family))
    assert len(megatron) == 5
    assert abs(megatron[0] - dtensor[0]) < 1e-3, (dtensor, megatron)
    assert min(megatron[1:]) < megatron[0]


def test_unsupported_family_is_refused_before_any_process_starts(family_models, tiny_cache,
                                                                 tmp_path):
    runner = Runner(tmp_path, tiny_cache)
    done = runner.run("run", "recipes/sft-tiny-megatron-lora.yaml",
                      f"policy.model_name={family_models['gemma2']}", check=False)
    assert done.returncode != 0
    assert "LR410" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_moe_on_megatron_tensor_parallel_without_sequence_parallel_is_refused(
        family_models, tiny_cache, tmp_path):
    runner = Runner(tmp_path, tiny_cache)
    done = runner.run("validate", "recipes/sft-tiny-megatron-lora.yaml",
                      "--set", f"policy.model_name={family_models['mixtral']}", check=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "LR415" in out and "Traceback" not in out
    assert "sequence_parallel: true" in out


@pytest.mark.slow
@pytest.mark.skipif(not megatron_available(), reason=MEGATRON_MISSING)
def test_megatron_full_fine_tuning_at_tp2_equals_one_process(family_models, tiny_cache,
                                                             tmp_path):
    """Full fine-tuning trains the replicated weights whose gradients each tensor-parallel rank
    holds only a share of: Qwen3's q/k norms (this rank's heads) and, under sequence
    parallelism, every norm (this rank's part of the sequence). Summed over ranks (megatron-core's
    finalize_model_grads rule), tp=2 takes the single process's steps; before the q/k norm sum,
    step 2 was already 4.6e-3 off."""
    runner = Runner(tmp_path, tiny_cache)
    full = ["policy.megatron_cfg.peft.enabled=false"]
    one = _losses(runner, "sft-tiny-megatron-lora.yaml", family_models["qwen3"], "tp1", *full,
                  "policy.megatron_cfg.tensor_model_parallel_size=1", "cluster.gpus_per_node=1")
    two = _losses(runner, "sft-tiny-megatron-lora.yaml", family_models["qwen3"], "tp2", *full,
                  "policy.megatron_cfg.sequence_parallel=true")
    assert len(two) == 5
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-4, (one, two)
