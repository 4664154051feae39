"""Checks across the recipes of one multi-adapter run (lora_rl.config.joint: LR700-LR703):
each finding sits in its own recipe, at the key, and names the other recipe's location."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from lora_rl.cli import app
from lora_rl.cli_joint import adapter_names, split_arguments
from lora_rl.config import catalogue
from lora_rl.config.joint import check_joint
from lora_rl.config.validate import validate_recipe

TP2 = {"policy.dtensor_cfg.tensor_parallel_size": 2, "cluster.gpus_per_node": 2,
       "policy.dtensor_cfg.lora_cfg.use_triton": False}


def _own_dirs(name: str) -> dict[str, Any]:
    return {"logger.log_dir": f"logs/{name}", "checkpointing.checkpoint_dir": f"ck/{name}"}


def _pair(recipe_dir: Any, a: dict[str, Any], b: dict[str, Any], kind_b: str = "sft",
          kind_a: str = "sft"):
    pa = recipe_dir.write({**_own_dirs("a"), **a}, name="a.yaml", kind=kind_a)
    pb = recipe_dir.write({**_own_dirs("b"), **b}, name="b.yaml", kind=kind_b)
    results = [validate_recipe(pa), validate_recipe(pb)]
    assert all(r.ok for r in results), [r.errors for r in results]
    check_joint(results)
    return results


def _joint(result) -> list:
    return [d for d in result.diagnostics if d.rule in catalogue.JOINT_RULES]


def test_recipes_that_differ_in_what_the_base_needs_are_refused_in_both_files(recipe_dir):
    a, b = _pair(recipe_dir, {}, {"policy.precision": "bfloat16"})
    (in_a,), (in_b,) = _joint(a), _joint(b)
    assert in_a.rule == in_b.rule == "LR700" and in_a.severity == "error"
    assert in_a.path == in_b.path == ("policy", "precision")
    at_a = recipe_dir.position("policy.precision", "a.yaml")
    at_b = recipe_dir.position("policy.precision", "b.yaml")
    assert (in_a.location.file, in_a.location.line) == ("a.yaml", at_a.line)
    assert (in_b.location.file, in_b.location.line) == ("b.yaml", at_b.line)
    assert f"b.yaml:{at_b.line}:{at_b.value_column}" in in_a.message
    assert f"a.yaml:{at_a.line}:{at_a.value_column}" in in_b.message
    assert '"float32"' in in_a.message and '"bfloat16"' in in_a.message
    assert in_a.fix


@pytest.mark.parametrize("key, value", [
    ("policy.model_name", "./other-model"),
    ("policy.dtensor_cfg.activation_checkpointing", True),
    ("policy.trust_remote_code", True),
])
def test_each_shared_key_is_compared(recipe_dir, key, value):
    a, b = _pair(recipe_dir, {}, {key: value})
    assert [d.dotted_path for d in _joint(b) if d.rule == "LR700"] == [key]


def test_quantization_is_compared(recipe_dir):
    dtype = {"policy.dtensor_cfg.lora_cfg.lora_dtype": "float32"}
    a, b = _pair(recipe_dir, dtype, {**dtype, "policy.quantization.load_in_4bit": True})
    assert [d.dotted_path for d in _joint(b) if d.rule == "LR700"] == ["policy.quantization"]


def test_algorithm_rank_optimizer_data_and_seed_may_differ(recipe_dir):
    a, b = _pair(recipe_dir, {}, {
        "policy.dtensor_cfg.lora_cfg.dim": 4, "policy.dtensor_cfg.lora_cfg.alpha": 8,
        "policy.optimizer": {"name": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
        "policy.train_global_batch_size": 8, "sft.seed": 3, "sft.max_num_steps": 3,
    })
    assert _joint(a) == [] and _joint(b) == []


def test_a_shared_checkpoint_or_log_directory_is_refused(recipe_dir):
    a, b = _pair(recipe_dir, {}, {"logger.log_dir": "logs/a"})
    (clash,) = _joint(b)
    assert clash.rule == "LR701" and clash.dotted_path == "logger.log_dir"
    assert clash.location.line == recipe_dir.position("logger.log_dir", "b.yaml").line
    at_a = recipe_dir.position("logger.log_dir", "a.yaml")
    assert f"a.yaml:{at_a.line}:{at_a.value_column}" in clash.message
    assert _joint(a) == []


@pytest.mark.parametrize("changes, kind, path", [
    ({"cluster.gpus_per_node": 2, "policy.train_global_batch_size": 4}, "sft",
     "cluster.gpus_per_node"),
    ({"policy.generation.backend": "vllm"}, "grpo", "policy.generation.lora_weight_sync"),
    ({**TP2, "policy.train_global_batch_size": 4}, "grpo", "cluster.gpus_per_node"),
    ({"policy.dtensor_cfg.lora_cfg.enabled": False}, "sft", "policy.dtensor_cfg.lora_cfg.enabled"),
    ({}, "megatron", "policy.megatron_cfg.enabled"),
    ({"policy.dtensor_cfg.lora_cfg.init_lora_weights": "pissa"}, "sft",
     "policy.dtensor_cfg.lora_cfg.init_lora_weights"),
])
def test_what_multi_adapter_runs_do_not_build_is_refused(recipe_dir, changes, kind, path):
    pa = recipe_dir.write(_own_dirs("a"), name="a.yaml")
    pb = recipe_dir.write({**_own_dirs("b"), **changes}, name="b.yaml", kind=kind)
    results = [validate_recipe(pa), validate_recipe(pb)]
    assert results[1].ok, results[1].errors
    check_joint(results)
    assert path in [d.dotted_path for d in _joint(results[1]) if d.rule == "LR702"]


def test_tensor_parallel_adapters_may_join(recipe_dir):
    a, b = _pair(recipe_dir, TP2, {**TP2, "sft.seed": 3})
    assert _joint(a) == [] and _joint(b) == []


def test_grpo_with_the_torch_generator_may_join(recipe_dir):
    pa = recipe_dir.write(_own_dirs("a"), name="a.yaml")
    pb = recipe_dir.write({**_own_dirs("b"), "policy.generation.backend": "torch"}, name="b.yaml",
                          kind="grpo")
    results = [validate_recipe(pa), validate_recipe(pb)]
    check_joint(results)
    assert _joint(results[0]) == [] and _joint(results[1]) == []


VLLM_SPLIT = {"policy.generation.backend": "vllm", "policy.generation.lora_weight_sync": "split"}


def test_grpo_adapters_on_one_split_weight_vllm_engine_may_join(recipe_dir):
    """Ranks, sampling and sequence lengths may differ: each request carries its own, and the
    engine takes the largest rank and the longest sequence."""
    a, b = _pair(recipe_dir, {**VLLM_SPLIT, "grpo.seed": 1}, {
        **VLLM_SPLIT, "policy.dtensor_cfg.lora_cfg.dim": 16,
        "policy.dtensor_cfg.lora_cfg.alpha": 32, "policy.generation.temperature": 0.7,
        "policy.max_total_sequence_length": 64}, kind_b="grpo", kind_a="grpo")
    assert _joint(a) == [] and _joint(b) == []


def test_grpo_adapters_on_one_vllm_engine_must_agree_on_its_settings(recipe_dir):
    """LR703 in both files, each naming the other's line; a recipe that samples with the torch
    generator starts no engine, so its vllm_cfg is not compared."""
    gmu = "policy.generation.vllm_cfg.gpu_memory_utilization"
    pa = recipe_dir.write({**_own_dirs("a"), **VLLM_SPLIT, gmu: 0.5}, name="a.yaml",
                          kind="grpo")
    pb = recipe_dir.write({**_own_dirs("b"), **VLLM_SPLIT, gmu: 0.3}, name="b.yaml",
                          kind="grpo")
    pc = recipe_dir.write({**_own_dirs("c"), gmu: 0.9}, name="c.yaml", kind="grpo")
    results = [validate_recipe(pa), validate_recipe(pb), validate_recipe(pc)]
    assert all(r.ok for r in results), [r.errors for r in results]
    check_joint(results)
    (in_a,), (in_b,) = _joint(results[0]), _joint(results[1])
    assert in_a.rule == in_b.rule == "LR703" and in_a.severity == "error"
    assert in_a.dotted_path == in_b.dotted_path == gmu
    at_a, at_b = recipe_dir.position(gmu, "a.yaml"), recipe_dir.position(gmu, "b.yaml")
    assert (in_a.location.file, in_a.location.line) == ("a.yaml", at_a.line)
    assert (in_b.location.file, in_b.location.line) == ("b.yaml", at_b.line)
    assert f"b.yaml:{at_b.line}:{at_b.value_column}" in in_a.message and "0.3" in in_a.message
    assert f"a.yaml:{at_a.line}:{at_a.value_column}" in in_b.message and "0.5" in in_b.message
    assert _joint(results[2]) == []


def test_every_joint_rule_has_a_case_here() -> None:
    covered = {"LR700", "LR701", "LR702", "LR703"}
    assert covered == set(catalogue.JOINT_RULES)


def test_validate_checks_across_recipes_only_with_joint(recipe_dir):
    recipe_dir.write(_own_dirs("a"), name="a.yaml")
    recipe_dir.write({**_own_dirs("b"), "policy.precision": "bfloat16"}, name="b.yaml")
    alone = CliRunner().invoke(app, ["validate", "a.yaml", "b.yaml"])
    assert alone.exit_code == 0, alone.output
    joint = CliRunner().invoke(app, ["validate", "--joint", "a.yaml", "b.yaml"])
    assert joint.exit_code == 1 and "LR700" in joint.output


def test_run_refuses_recipes_that_do_not_fit_together_before_loading(recipe_dir):
    recipe_dir.write(_own_dirs("a"), name="a.yaml")
    recipe_dir.write({**_own_dirs("b"), "policy.precision": "bfloat16"}, name="b.yaml")
    result = CliRunner().invoke(app, ["run", "a.yaml", "b.yaml", "logger.progress_bar=false",
                                      "--dry-run"])
    assert result.exit_code == 1
    assert "LR700" in result.output and "policy.precision" in result.output


def test_run_arguments_split_into_recipes_and_overrides_for_all():
    recipes, overrides = split_arguments(
        ["a.yaml", "b.yaml", "sft.seed=3", "~logger.trackers", "++x.y=1", "~/r/c.yaml"])
    assert [str(r) for r in recipes] == ["a.yaml", "b.yaml", "~/r/c.yaml"]
    assert overrides == ["sft.seed=3", "~logger.trackers", "++x.y=1"]
    assert adapter_names([p for p in recipes[:2]] + [recipes[0]]) == ["a", "b", "a-2"]
