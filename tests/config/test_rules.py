"""Every diagnostic id, table-driven: a failing recipe and a passing one.

For each failing case the test checks the rule id, its severity (from the catalogue), the dotted
key path, and that file:line:column points at the right place of the YAML that was written:
the value of a written scalar, the key of a block section, or — for a value that is not written
(its default applies) — the nearest written ancestor key with a `via` note.

A new rule without a case here fails `test_every_rule_id_has_a_case`.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lora_rl.config import catalogue
from lora_rl.config.rules import RULES
from lora_rl.config.validate import ValidationResult, validate_recipe

DELETE = object()  # replaced by recipe_kit.DELETE when a case is built


@dataclass(frozen=True)
class Case:
    rule: str
    name: str
    bad: dict[str, Any]
    good: dict[str, Any]
    path: str
    """Dotted key path the diagnostic must carry."""
    anchor: str | None = None
    """Key whose position the diagnostic points at; default `path`. "<top>" is line 1, col 1."""
    point: str = "value"
    """"value" (a written scalar), "key" (a block section, or an unwritten default's ancestor)."""
    kind: str = "sft"
    model: dict[str, Any] | None = None
    """config.json of a model directory passed as model_dir (None: no model)."""
    good_model: dict[str, Any] | None = None
    """config.json for the passing case when it differs from `model`."""
    vllm: bool | None = None
    """Pretend vLLM is installed (True) or not (False); None: whatever is true here."""
    files: tuple[str, ...] = field(default_factory=tuple)
    """Files created in the working directory before validating the passing case (a name
    ending in `/` is a PEFT adapter directory)."""
    missing: tuple[str, ...] = ()
    """Modules that look uninstalled while validating the failing case."""
    contents: dict[str, str] = field(default_factory=dict)
    """Files (name -> text) created in the working directory before both cases."""
    model_files: tuple[str, ...] = field(default_factory=tuple)
    """Empty files created in the model directory of the failing case."""

    @property
    def id(self) -> str:
        return f"{self.rule}-{self.name}"


QUANT = "policy.quantization"
QUANTIZED = {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}
LLAMA_6_HEADS = {"num_attention_heads": 6, "num_key_value_heads": 6, "hidden_size": 96,
                 "intermediate_size": 192}
LORA = "policy.dtensor_cfg.lora_cfg"
PEFT = "policy.megatron_cfg.peft"
GEN = "policy.generation"
MEGATRON_CANONICAL = ["linear_q", "linear_k", "linear_v", "linear_proj", "linear_fc1_gate",
                      "linear_fc1_up", "linear_fc2"]

CHAT_LINE = ('{"messages": [{"role": "user", "content": "1+1="}, '
             '{"role": "assistant", "content": "2"}]}\n')

RULE_CASES: list[Case] = [
    Case("LR100", "two-algorithms", {"dpo": {"max_num_steps": 1}}, {}, "dpo", point="key"),
    Case("LR100", "no-algorithm", {"sft": DELETE}, {}, "", anchor="<top>"),
    Case("LR101", "both-backends", {"policy.megatron_cfg.enabled": True}, {},
         "policy.megatron_cfg.enabled"),
    Case("LR101", "no-backend", {"policy.dtensor_cfg.enabled": False}, {},
         "policy.dtensor_cfg.enabled"),
    Case("LR102", "v2-false", {"policy.dtensor_cfg._v2": False}, {}, "policy.dtensor_cfg._v2"),
    Case("LR102", "v2-default", {"policy.dtensor_cfg._v2": DELETE},
         {"policy.dtensor_cfg._v2": DELETE, f"{LORA}.enabled": False},
         "policy.dtensor_cfg._v2", anchor="policy.dtensor_cfg", point="key"),
    Case("LR103", "triton-tp2",
         {"policy.dtensor_cfg.tensor_parallel_size": 2, "cluster.gpus_per_node": 2,
          f"{LORA}.use_triton": True},
         {"policy.dtensor_cfg.tensor_parallel_size": 2, "cluster.gpus_per_node": 2,
          f"{LORA}.use_triton": False},
         f"{LORA}.use_triton"),
    Case("LR104", "targets-ignored", {f"{LORA}.target_modules": ["q_proj"]},
         {f"{LORA}.target_modules": ["q_proj"], f"{LORA}.match_all_linear": False},
         f"{LORA}.target_modules", point="key"),
    Case("LR104", "excludes-ignored", {f"{LORA}.exclude_modules": ["o_proj"]},
         {f"{LORA}.exclude_modules": ["o_proj"], f"{LORA}.match_all_linear": False},
         f"{LORA}.exclude_modules", point="key"),
    Case("LR105", "matches-nothing", {f"{LORA}.match_all_linear": False},
         {f"{LORA}.match_all_linear": False, f"{LORA}.exclude_modules": ["o_proj"]},
         f"{LORA}.match_all_linear"),
    Case("LR106", "target-and-exclude",
         {f"{PEFT}.target_modules": ["linear_qkv"], f"{PEFT}.exclude_modules": ["linear_fc2"]},
         {f"{PEFT}.target_modules": None, f"{PEFT}.exclude_modules": ["linear_fc2"]},
         f"{PEFT}.exclude_modules", point="key", kind="megatron"),
    Case("LR111", "fused-and-canonical",
         {f"{PEFT}.target_modules": ["linear_q", "linear_v", "linear_fc1"]},
         {f"{PEFT}.target_modules": ["linear_q", "linear_v", "linear_fc1_up"]},
         f"{PEFT}.target_modules[2]", kind="megatron"),
    Case("LR107", "mbridge", {"policy.megatron_cfg.bridge_type": "mbridge"},
         {"policy.megatron_cfg.bridge_type": "megatron-bridge"},
         "policy.megatron_cfg.bridge_type", kind="megatron"),
    Case("LR108", "b-not-zero", {f"{PEFT}.lora_B_init_method": "xavier"},
         {f"{PEFT}.lora_B_init_method": "zero"}, f"{PEFT}.lora_B_init_method", kind="megatron"),
    Case("LR109", "megatron-no-dtype", {f"{PEFT}.lora_dtype": None},
         {f"{PEFT}.lora_dtype": "bfloat16"}, f"{PEFT}.lora_dtype", kind="megatron",
         model=QUANTIZED),
    Case("LR109", "megatron-None-string", {f"{PEFT}.lora_dtype": "None"},
         {f"{PEFT}.lora_dtype": "torch.float32"}, f"{PEFT}.lora_dtype", kind="megatron",
         model=QUANTIZED),
    Case("LR109", "dtensor-quantized", {f"{LORA}.lora_dtype": None},
         {f"{LORA}.lora_dtype": "float32"},
         f"{LORA}.lora_dtype", model=QUANTIZED),
    Case("LR109", "dtensor-policy-quantization",
         {f"{QUANT}.load_in_4bit": True, f"{LORA}.lora_dtype": "None"},
         {f"{QUANT}.load_in_4bit": True, f"{LORA}.lora_dtype": "float32"},
         f"{LORA}.lora_dtype"),
    Case("LR110", "dtensor-lora-on-megatron",
         {"policy.dtensor_cfg.enabled": False, "policy.megatron_cfg.enabled": True},
         {"policy.dtensor_cfg.enabled": False, f"{LORA}.enabled": False,
          "policy.megatron_cfg.enabled": True}, f"{LORA}.enabled"),
    Case("LR110", "megatron-peft-on-dtensor", {f"{PEFT}.enabled": True},
         {f"{PEFT}.enabled": False}, f"{PEFT}.enabled"),
    Case("LR201", "tp-exceeds-world", {"policy.dtensor_cfg.tensor_parallel_size": 2},
         {"policy.dtensor_cfg.tensor_parallel_size": 2, "cluster.gpus_per_node": 2},
         "policy.dtensor_cfg.tensor_parallel_size"),
    Case("LR201", "megatron-tp-pp", {"policy.megatron_cfg.pipeline_model_parallel_size": 2,
                                     "policy.megatron_cfg.tensor_model_parallel_size": 2,
                                     "cluster.gpus_per_node": 2},
         {"policy.megatron_cfg.pipeline_model_parallel_size": 2,
          "policy.megatron_cfg.tensor_model_parallel_size": 2, "cluster.gpus_per_node": 4},
         "policy.megatron_cfg.tensor_model_parallel_size", kind="megatron"),
    Case("LR202", "global-not-multiple",
         {"policy.train_global_batch_size": 5, "policy.train_micro_batch_size": 2},
         {"policy.train_global_batch_size": 6, "policy.train_micro_batch_size": 2},
         "policy.train_global_batch_size"),
    Case("LR202", "dp-counts", {"cluster.gpus_per_node": 3},
         {"cluster.gpus_per_node": 2}, "policy.train_global_batch_size"),
    Case("LR203", "tp-vs-heads",
         {"policy.dtensor_cfg.tensor_parallel_size": 4, "cluster.gpus_per_node": 4},
         {"policy.dtensor_cfg.tensor_parallel_size": 2, "cluster.gpus_per_node": 2},
         "policy.dtensor_cfg.tensor_parallel_size", model=LLAMA_6_HEADS),
    Case("LR203", "tp-vs-expert-mlp",
         {"policy.dtensor_cfg.tensor_parallel_size": 2, "cluster.gpus_per_node": 2},
         {"policy.dtensor_cfg.tensor_parallel_size": 2, "cluster.gpus_per_node": 2},
         "policy.dtensor_cfg.tensor_parallel_size",
         model={"model_type": "qwen3_moe", "num_experts": 4, "moe_intermediate_size": 33},
         good_model={"model_type": "qwen3_moe", "num_experts": 4, "moe_intermediate_size": 32}),
    Case("LR204", "context-parallel",
         {"policy.dtensor_cfg.context_parallel_size": 2, "cluster.gpus_per_node": 2},
         {"policy.dtensor_cfg.context_parallel_size": 1, "cluster.gpus_per_node": 2},
         "policy.dtensor_cfg.context_parallel_size"),
    Case("LR205", "pp-vs-layers",
         {"policy.megatron_cfg.pipeline_model_parallel_size": 2, "cluster.gpus_per_node": 2},
         {"policy.megatron_cfg.pipeline_model_parallel_size": 3, "cluster.gpus_per_node": 3,
          "policy.train_global_batch_size": 3},
         "policy.megatron_cfg.pipeline_model_parallel_size", kind="megatron",
         model={"num_hidden_layers": 3}),
    Case("LR207", "sequence-parallel-without-tp",
         {"policy.megatron_cfg.sequence_parallel": True},
         {"policy.megatron_cfg.sequence_parallel": True,
          "policy.megatron_cfg.tensor_model_parallel_size": 2, "cluster.gpus_per_node": 2},
         "policy.megatron_cfg.sequence_parallel", kind="megatron"),
    Case("LR206", "val-batch",
         {"sft.val_global_batch_size": 5, "sft.val_micro_batch_size": 2},
         {"sft.val_global_batch_size": 6, "sft.val_micro_batch_size": 2},
         "sft.val_global_batch_size"),
    Case("LR301", "group-of-one",
         {"grpo.num_generations_per_prompt": 1, "grpo.num_prompts_per_step": 4},
         {"grpo.num_generations_per_prompt": 2, "grpo.num_prompts_per_step": 2},
         "grpo.num_generations_per_prompt", kind="grpo"),
    Case("LR302", "no-room-for-prompt", {f"{GEN}.max_new_tokens": 64},
         {f"{GEN}.max_new_tokens": 63}, f"{GEN}.max_new_tokens", kind="grpo"),
    Case("LR600", "vllm-max-model-len",
         {f"{GEN}.backend": "vllm", f"{GEN}.vllm_cfg": {"max_model_len": 32}},
         {f"{GEN}.backend": "vllm", f"{GEN}.vllm_cfg": {"max_model_len": 64}},
         f"{GEN}.vllm_cfg.max_model_len", kind="grpo", vllm=True),
    Case("LR303", "split-without-lora",
         {f"{GEN}": {"lora_weight_sync": "split"}, f"{LORA}.enabled": False},
         {f"{GEN}": {"lora_weight_sync": "split"}}, f"{GEN}.lora_weight_sync"),
    Case("LR304", "vllm-missing", {f"{GEN}.backend": "vllm"}, {f"{GEN}.backend": "torch"},
         f"{GEN}.backend", kind="grpo", vllm=False),
    Case("LR305", "rollouts-vs-batch", {"grpo.num_prompts_per_step": 3},
         {"grpo.num_prompts_per_step": 4}, "policy.train_global_batch_size", kind="grpo"),
    Case("LR306", "not-colocated", {f"{GEN}.colocated": {"enabled": False}},
         {f"{GEN}.colocated": {"enabled": True}}, f"{GEN}.colocated.enabled", kind="grpo"),
    Case("LR306", "multi-turn", {"grpo.max_rollout_turns": 2}, {"grpo.max_rollout_turns": 1},
         "grpo.max_rollout_turns", kind="grpo"),
    Case("LR307", "megatron-dpo-without-lora",
         {"dpo": {"max_num_steps": 1}, "sft": DELETE, f"{PEFT}.enabled": False},
         {"dpo": {"max_num_steps": 1}, "sft": DELETE}, f"{PEFT}.enabled", kind="megatron"),
    Case("LR307", "grpo-kl-without-lora", {f"{LORA}.enabled": False},
         {f"{LORA}.enabled": False, "loss_fn": {"reference_policy_kl_penalty": 0.0}},
         f"{LORA}.enabled", kind="grpo"),
    # A TP engine serves tp consecutive training ranks of one node: 3 ranks cannot be split
    # into engines of 2; 2 ranks share one.
    Case("LR308", "vllm-tp3-four-ranks",
         {f"{GEN}.backend": "vllm", f"{GEN}.vllm_cfg.tensor_parallel_size": 3,
          "cluster.gpus_per_node": 4, "policy.train_micro_batch_size": 1},
         {f"{GEN}.backend": "vllm", f"{GEN}.vllm_cfg.tensor_parallel_size": 2,
          "cluster.gpus_per_node": 4, "policy.train_micro_batch_size": 1},
         f"{GEN}.vllm_cfg.tensor_parallel_size", kind="grpo", vllm=True),
    Case("LR308", "vllm-tp-vs-heads",
         {f"{GEN}.backend": "vllm", f"{GEN}.vllm_cfg.tensor_parallel_size": 4},
         {f"{GEN}.backend": "vllm", f"{GEN}.vllm_cfg.tensor_parallel_size": 2},
         f"{GEN}.vllm_cfg.tensor_parallel_size", kind="grpo", vllm=True, model=LLAMA_6_HEADS),
    # Pipeline stages are engine workers too: tp 1 x pp 4 needs groups of 4 ranks, so 2 ranks
    # per node cannot hold one; pp 2 can.
    Case("LR308", "vllm-pp4-two-ranks",
         {f"{GEN}.backend": "vllm", f"{GEN}.vllm_cfg.pipeline_parallel_size": 4,
          "cluster.gpus_per_node": 2, "policy.train_micro_batch_size": 2},
         {f"{GEN}.backend": "vllm", f"{GEN}.vllm_cfg.pipeline_parallel_size": 2,
          "cluster.gpus_per_node": 2, "policy.train_micro_batch_size": 2},
         f"{GEN}.vllm_cfg.pipeline_parallel_size", kind="grpo", vllm=True),
    Case("LR308", "vllm-split-rank", {f"{GEN}.backend": "vllm", f"{GEN}.lora_weight_sync": "split",
                                      f"{LORA}.dim": 1024},
         {f"{GEN}.backend": "vllm", f"{GEN}.lora_weight_sync": "split", f"{LORA}.dim": 512},
         f"{GEN}.lora_weight_sync", kind="grpo", vllm=True),
    Case("LR401", "dtensor-unknown-target",
         {f"{LORA}.match_all_linear": False, f"{LORA}.target_modules": ["qkv_proj"]},
         {f"{LORA}.match_all_linear": False, f"{LORA}.target_modules": ["q_proj", "v_proj"]},
         f"{LORA}.target_modules[0]", model={}),
    Case("LR401", "one-typo-of-two",
         {f"{LORA}.match_all_linear": False, f"{LORA}.target_modules": ["q_prj", "v_proj"]},
         {f"{LORA}.match_all_linear": False, f"{LORA}.target_modules": ["q_proj", "v_proj"]},
         f"{LORA}.target_modules[0]", model={}),
    Case("LR401", "megatron-unknown-target", {f"{PEFT}.target_modules": ["q_proj"]},
         {f"{PEFT}.target_modules": ["linear_qkv"]}, f"{PEFT}.target_modules[0]",
         kind="megatron", model={}),
    Case("LR401", "megatron-excludes-everything",
         {f"{PEFT}.exclude_modules": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]},
         {f"{PEFT}.exclude_modules": ["linear_qkv"]}, f"{PEFT}.target_modules",
         anchor=PEFT, point="key", kind="megatron", model={}),
    Case("LR614", "exclude-typo",
         {f"{LORA}.match_all_linear": False, f"{LORA}.exclude_modules": ["o_prj"]},
         {f"{LORA}.match_all_linear": False, f"{LORA}.exclude_modules": ["o_proj"]},
         f"{LORA}.exclude_modules[0]", model={}),
    Case("LR402", "lm-head", {f"{LORA}.match_all_linear": False,
                              f"{LORA}.target_modules": ["q_proj", "lm_head"]},
         {f"{LORA}.match_all_linear": False, f"{LORA}.target_modules": ["q_proj"]},
         f"{LORA}.target_modules", point="key", model={}),
    Case("LR410", "gemma2-on-megatron", {}, {"policy.megatron_cfg.enabled": False,
                                             "policy.dtensor_cfg.enabled": True},
         "policy.model_name", kind="megatron", model={"model_type": "gemma2"}),
    Case("LR410", "unknown-family-on-megatron", {}, {"policy.megatron_cfg.enabled": False,
                                                     "policy.dtensor_cfg.enabled": True},
         "policy.model_name", kind="megatron", model={"model_type": "gpt2"}),
    Case("LR415", "moe-on-megatron-tp2", {"policy.megatron_cfg.tensor_model_parallel_size": 2,
                                          "cluster.gpus_per_node": 2},
         {"policy.megatron_cfg.tensor_model_parallel_size": 2, "cluster.gpus_per_node": 2,
          "policy.megatron_cfg.sequence_parallel": True},
         "policy.megatron_cfg.sequence_parallel", anchor="policy.megatron_cfg", point="key",
         kind="megatron", model={"model_type": "qwen3_moe"}),
    Case("LR411", "unknown-family-tp2", {"policy.dtensor_cfg.tensor_parallel_size": 2,
                                         "cluster.gpus_per_node": 2},
         {"policy.dtensor_cfg.tensor_parallel_size": 1, "cluster.gpus_per_node": 2,
          "policy.train_micro_batch_size": 2}, "policy.dtensor_cfg.tensor_parallel_size",
         model={"model_type": "gpt2"}),
    Case("LR414", "expert-parallel-dense-model",
         {"policy.megatron_cfg.expert_model_parallel_size": 2, "cluster.gpus_per_node": 2,
          "policy.train_micro_batch_size": 2},
         {"policy.megatron_cfg.expert_model_parallel_size": 1, "cluster.gpus_per_node": 2,
          "policy.train_micro_batch_size": 2},
         "policy.megatron_cfg.expert_model_parallel_size", kind="megatron", model={}),
    Case("LR414", "expert-parallel-beyond-dp",
         {"policy.megatron_cfg.expert_model_parallel_size": 2},
         {"policy.megatron_cfg.expert_model_parallel_size": 2, "cluster.gpus_per_node": 2,
          "policy.train_micro_batch_size": 2},
         "policy.megatron_cfg.expert_model_parallel_size", kind="megatron",
         model={"model_type": "qwen3_moe", "num_experts": 4, "moe_intermediate_size": 32}),
    Case("LR414", "expert-parallel-beyond-dp-x-tp",
         {"policy.megatron_cfg.expert_model_parallel_size": 4,
          "policy.megatron_cfg.tensor_model_parallel_size": 2,
          "policy.megatron_cfg.sequence_parallel": True, "cluster.gpus_per_node": 2},
         {"policy.megatron_cfg.expert_model_parallel_size": 2,
          "policy.megatron_cfg.tensor_model_parallel_size": 2,
          "policy.megatron_cfg.sequence_parallel": True, "cluster.gpus_per_node": 2},
         "policy.megatron_cfg.expert_model_parallel_size", kind="megatron",
         model={"model_type": "qwen3_moe", "num_experts": 4, "moe_intermediate_size": 32}),
    Case("LR412", "unknown-family-lora", {}, {f"{LORA}.enabled": False}, "policy.model_name",
         model={"model_type": "gpt2"}),
    Case("LR413", "expert-dropout", {f"{LORA}.dropout": 0.1},
         {f"{LORA}.dropout": 0.1, f"{LORA}.match_all_linear": False,
          f"{LORA}.target_modules": ["q_proj", "v_proj"]}, f"{LORA}.dropout",
         model={"model_type": "qwen3_moe", "num_experts": 4, "moe_intermediate_size": 32}),
    Case("LR130", "rank-above-hidden", {f"{LORA}.dim": 128}, {f"{LORA}.dim": 64}, f"{LORA}.dim",
         model={}),
    Case("LR130", "megatron-rank-above-hidden", {f"{PEFT}.dim": 65}, {f"{PEFT}.dim": 64},
         f"{PEFT}.dim", kind="megatron", model={}),
    Case("LR131", "dtensor-null-optimizer", {"policy.optimizer": None}, {},
         "policy.optimizer"),
    Case("LR501", "no-data", {"data.dataset_name": DELETE, "data.prompt_key": "question"},
         {"data.prompt_key": "question"}, "data", point="key"),
    Case("LR501", "not-built-in", {"data.dataset_name": "openmathinstruct2"},
         {"data.dataset_name": "openmathinstruct2", "data.train_data_path": "train.jsonl"},
         "data.dataset_name", files=("train.jsonl",)),
    Case("LR502", "missing-file", {"data.train_data_path": "nowhere.jsonl"},
         {"data.train_data_path": "train.jsonl"}, "data.train_data_path",
         files=("train.jsonl",)),
    Case("LR510", "two-layouts", {"data.train.data_path": "train.jsonl",
                                  "data.train_data_path": "train.jsonl"},
         {"data.train.data_path": "train.jsonl", "data.train.input_key": "prompt",
          "data.train.output_key": "response"}, "data.train_data_path",
         files=("train.jsonl",)),
    Case("LR511", "unknown-format", {"data.train_data_path": "train.txt"},
         {"data.train_data_path": "train.jsonl"}, "data.train_data_path",
         files=("train.jsonl",), contents={"train.txt": "1+1=2\n"}),
    Case("LR512", "chat-key-absent",
         {"data.train": {"dataset_name": "openai_format", "data_path": "other.jsonl"},
          "policy.tokenizer.chat_template": None},
         {"data.train": {"dataset_name": "openai_format", "data_path": "chat.jsonl"},
          "policy.tokenizer.chat_template": None}, "data.train.data_path",
         contents={"chat.jsonl": CHAT_LINE, "other.jsonl": CHAT_LINE.replace("messages", "conv")}),
    Case("LR513", "no-template",
         {"data.train": {"dataset_name": "openai_format", "data_path": "chat.jsonl"}},
         {"data.train": {"dataset_name": "openai_format", "data_path": "chat.jsonl"},
          "policy.tokenizer.chat_template": None}, "policy.tokenizer.chat_template",
         anchor="policy", point="key", contents={"chat.jsonl": CHAT_LINE}),
    Case("LR514", "preference-for-sft",
         {"data.train": {"dataset_name": "PreferenceDataset", "data_path": "pref.jsonl"}},
         {"data.train": {"dataset_name": "ResponseDataset", "data_path": "train.jsonl"}},
         "data.train.data_path",
         contents={"train.jsonl": '{"input": "1+1=", "output": "2"}\n',
                   "pref.jsonl": '{"context": [], "completions": []}\n'}),
    Case("LR515", "holdout-unused",
         {"data.train": {"data_path": "train.jsonl", "split_validation_size": 0.1},
          "data.validation": {"data_path": "train.jsonl"}},
         {"data.train": {"data_path": "train.jsonl", "split_validation_size": 0.1}},
         "data.train.split_validation_size", files=("train.jsonl",),
         contents={"train.jsonl": '{"input": "1+1=", "output": "2"}\n'}),
    Case("LR516", "missing-prompt-file",
         {"data.train": {"data_path": "train.jsonl", "prompt_file": "p.txt"}},
         {"data.train": {"data_path": "train.jsonl", "prompt_file": "q.txt"}},
         "data.train.prompt_file", contents={"train.jsonl": '{"input": "1", "output": "2"}\n',
                                             "q.txt": "say {}"}),
    Case("LR601", "no-transformers", {}, {}, "", anchor="<top>", missing=("transformers",)),
    Case("LR602", "no-megatron-core", {}, {}, "policy.megatron_cfg.enabled", kind="megatron",
         missing=("megatron.core",)),
    Case("LR610", "hub-id", {"policy.model_name": "meta-llama/Llama-3.1-8B"}, {},
         "policy.model_name"),
    Case("LR611", "missing-model-dir", {"policy.model_name": "./models/llama"},
         {"policy.model_name": "./models/llama"}, "policy.model_name", files=("models/llama/",)),
    Case("LR612", "missing-adapter", {"policy.init_adapter_path": "results/sft-peft"},
         {"policy.init_adapter_path": "results/sft-peft"}, "policy.init_adapter_path",
         files=("results/sft-peft/",)),
    Case("LR613", "adapter-rank", {"policy.init_adapter_path": "adapter", f"{LORA}.dim": 4},
         {"policy.init_adapter_path": "adapter"}, f"{LORA}.dim", files=("adapter/",),
         anchor=f"{LORA}.dim"),
    Case("LR620", "adapter-without-lora",
         {"policy.init_adapter_path": "adapter", f"{LORA}.enabled": False},
         {"policy.init_adapter_path": "adapter"}, "policy.init_adapter_path",
         files=("adapter/",)),
    Case("LR621", "pipeline-dtype", {"policy.megatron_cfg.pipeline_dtype": "bfloat16"},
         {"policy.megatron_cfg.pipeline_dtype": "float32"}, "policy.megatron_cfg.pipeline_dtype",
         kind="megatron"),
    Case("LR630", "kwarg-typo",
         {"policy.scheduler": [{"name": "torch.optim.lr_scheduler.LinearLR",
                                "kwargs": {"start_factr": 0.1}}]},
         {"policy.scheduler": [{"name": "torch.optim.lr_scheduler.LinearLR",
                                "kwargs": {"start_factor": 0.1}}]},
         "policy.scheduler[0].kwargs.start_factr"),
    Case("LR630", "kwarg-not-whole",
         {"policy.scheduler": [{"name": "torch.optim.lr_scheduler.ConstantLR",
                                "kwargs": {"total_iters": 2.5}}]},
         {"policy.scheduler": [{"name": "torch.optim.lr_scheduler.ConstantLR",
                                "kwargs": {"total_iters": 2}}]},
         "policy.scheduler[0].kwargs.total_iters"),
    Case("LR630", "cosine-needs-t-max",
         {"policy.scheduler": [{"name": "torch.optim.lr_scheduler.CosineAnnealingLR",
                                "kwargs": {"eta_min": 0.0}}]},
         {"policy.scheduler": [{"name": "torch.optim.lr_scheduler.CosineAnnealingLR",
                                "kwargs": {"T_max": 10}}]},
         "policy.scheduler[0].kwargs", point="key"),
    Case("LR631", "milestones-count",
         {"policy.scheduler": [{"name": "torch.optim.lr_scheduler.LinearLR"},
                               {"name": "torch.optim.lr_scheduler.ConstantLR"},
                               {"milestones": [2, 5]}]},
         {"policy.scheduler": [{"name": "torch.optim.lr_scheduler.LinearLR"},
                               {"name": "torch.optim.lr_scheduler.ConstantLR"},
                               {"milestones": [2]}]},
         "policy.scheduler[2].milestones", point="key"),
    Case("LR640", "logprob-batch", {"policy.logprob_batch_size": 2},
         {"policy.logprob_batch_size": 1}, "policy.logprob_batch_size", kind="grpo"),
    Case("LR802", "stdlib-reward", {"env.reward": "os:system"}, {"env.reward": "exact_match"},
         "env.reward", kind="grpo"),
    Case("LR803", "reward-not-on-path", {"env.reward": "no_such_rewards_mod:score"},
         {"env.reward": "exact_match"}, "env.reward", kind="grpo"),
    Case("LR804", "pickle-only-model", {}, {},
         "policy.model_name", model={}, model_files=("pytorch_model.bin",)),
    Case("LR805", "pickle-opt-in", {"policy.allow_pickle_weights": True}, {},
         "policy.allow_pickle_weights", model={}, model_files=("pytorch_model.bin",)),
    Case("LR150", "dora-triton", {f"{LORA}.use_dora": True, f"{LORA}.use_triton": True},
         {f"{LORA}.use_dora": True, f"{LORA}.use_triton": False}, f"{LORA}.use_triton"),
    Case("LR151", "dora-tp2",
         {f"{LORA}.use_dora": True, f"{LORA}.use_triton": False,
          "policy.dtensor_cfg.tensor_parallel_size": 2, "cluster.gpus_per_node": 2},
         {f"{LORA}.use_dora": True, f"{LORA}.use_triton": False, "cluster.gpus_per_node": 2},
         f"{LORA}.use_dora"),
    Case("LR152", "dora-split",
         {f"{LORA}.use_dora": True, f"{LORA}.use_triton": False,
          f"{GEN}.lora_weight_sync": "split"},
         {f"{LORA}.use_dora": True, f"{LORA}.use_triton": False,
          f"{GEN}.lora_weight_sync": "merge"}, f"{GEN}.lora_weight_sync", kind="grpo"),
    Case("LR153", "dora-post-dropout",
         {f"{LORA}.use_dora": True, f"{LORA}.use_triton": False, f"{LORA}.dropout": 0.1,
          f"{LORA}.dropout_position": "post"},
         {f"{LORA}.use_dora": True, f"{LORA}.use_triton": False, f"{LORA}.dropout": 0.1,
          f"{LORA}.dropout_position": "pre"}, f"{LORA}.dropout_position"),
    Case("LR154", "lora-plus-below-one", {f"{LORA}.lora_plus_lr_ratio": 0.5},
         {f"{LORA}.lora_plus_lr_ratio": 16}, f"{LORA}.lora_plus_lr_ratio"),
    Case("LR153", "megatron-dora-post-dropout",
         {f"{PEFT}.use_dora": True, f"{PEFT}.dropout": 0.1, f"{PEFT}.dropout_position": "post"},
         {f"{PEFT}.use_dora": True, f"{PEFT}.dropout": 0.1, f"{PEFT}.dropout_position": "pre"},
         f"{PEFT}.dropout_position", kind="megatron"),
    Case("LR154", "megatron-lora-plus-below-one", {f"{PEFT}.lora_plus_lr_ratio": 0.5},
         {f"{PEFT}.lora_plus_lr_ratio": 16}, f"{PEFT}.lora_plus_lr_ratio", kind="megatron"),
    Case("LR169", "megatron-dora-canonical",
         {f"{PEFT}.use_dora": True, f"{PEFT}.target_modules": ["linear_q", "linear_v"]},
         {f"{PEFT}.use_dora": True, f"{PEFT}.target_modules": ["linear_qkv"]},
         f"{PEFT}.target_modules", point="key", kind="megatron"),
    Case("LR169", "megatron-dora-moe-experts", {f"{PEFT}.use_dora": True},
         {f"{PEFT}.use_dora": True, f"{PEFT}.target_modules": ["linear_qkv", "linear_proj"]},
         f"{PEFT}.use_dora", kind="megatron",
         model={"model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2,
                "moe_intermediate_size": 64}),
    Case("LR155", "pissa-vllm-split",
         {f"{LORA}.init_lora_weights": "pissa", f"{GEN}.backend": "vllm",
          f"{GEN}.lora_weight_sync": "split"},
         {f"{LORA}.init_lora_weights": "pissa", f"{GEN}.backend": "vllm",
          f"{GEN}.lora_weight_sync": "merge"},
         f"{GEN}.lora_weight_sync", kind="grpo", vllm=True),
    Case("LR156", "olora-init-adapter",
         {f"{LORA}.init_lora_weights": "olora", "policy.init_adapter_path": "adapter"},
         {f"{LORA}.init_lora_weights": "olora"}, "policy.init_adapter_path"),
    Case("LR157", "pissa-dora",
         {f"{LORA}.init_lora_weights": "pissa", f"{LORA}.use_dora": True,
          f"{LORA}.use_triton": False},
         {f"{LORA}.init_lora_weights": "pissa", f"{LORA}.use_triton": False},
         f"{LORA}.init_lora_weights"),
    Case("LR158", "pissa-tp2",
         {f"{LORA}.init_lora_weights": "pissa",
          "policy.dtensor_cfg.tensor_parallel_size": 2, "cluster.gpus_per_node": 2},
         {f"{LORA}.init_lora_weights": "pissa", "cluster.gpus_per_node": 2},
         f"{LORA}.init_lora_weights"),
    Case("LR159", "olora-on-megatron", {f"{LORA}.init_lora_weights": "olora"}, {},
         f"{LORA}.init_lora_weights", kind="megatron"),
    Case("LR159", "megatron-pissa-fused",
         {f"{PEFT}.init_lora_weights": "pissa",
          f"{PEFT}.target_modules": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]},
         {f"{PEFT}.init_lora_weights": "pissa", f"{PEFT}.target_modules": MEGATRON_CANONICAL},
         f"{PEFT}.target_modules", point="key", kind="megatron"),
    Case("LR158", "megatron-olora-tp2",
         {f"{PEFT}.init_lora_weights": "olora", f"{PEFT}.target_modules": MEGATRON_CANONICAL,
          "policy.megatron_cfg.tensor_model_parallel_size": 2, "cluster.gpus_per_node": 2},
         {f"{PEFT}.init_lora_weights": "olora", f"{PEFT}.target_modules": MEGATRON_CANONICAL,
          "policy.megatron_cfg.pipeline_model_parallel_size": 2, "cluster.gpus_per_node": 2},
         f"{PEFT}.init_lora_weights", kind="megatron"),
    Case("LR157", "megatron-olora-dora",
         {f"{PEFT}.init_lora_weights": "olora", f"{PEFT}.target_modules": MEGATRON_CANONICAL,
          f"{PEFT}.use_dora": True},
         {f"{PEFT}.init_lora_weights": "olora", f"{PEFT}.target_modules": MEGATRON_CANONICAL},
         f"{PEFT}.init_lora_weights", kind="megatron"),
    Case("LR156", "megatron-pissa-init-adapter",
         {f"{PEFT}.init_lora_weights": "pissa", f"{PEFT}.target_modules": MEGATRON_CANONICAL,
          "policy.init_adapter_path": "adapter"},
         {f"{PEFT}.init_lora_weights": "pissa", f"{PEFT}.target_modules": MEGATRON_CANONICAL},
         "policy.init_adapter_path", kind="megatron"),
    Case("LR160", "quantization-no-width", {f"{QUANT}.bnb_4bit_quant_type": "nf4"},
         {f"{QUANT}.load_in_4bit": True, f"{LORA}.lora_dtype": "float32"},
         f"{QUANT}.load_in_4bit", anchor=QUANT, point="key"),
    Case("LR160", "quantization-both-widths",
         {f"{QUANT}.load_in_4bit": True, f"{QUANT}.load_in_8bit": True,
          f"{LORA}.lora_dtype": "float32"},
         {f"{QUANT}.load_in_8bit": True, f"{LORA}.lora_dtype": "float32"},
         f"{QUANT}.load_in_8bit"),
    Case("LR161", "quantization-on-megatron",
         {f"{QUANT}.load_in_4bit": True, f"{PEFT}.lora_dtype": "float32"},
         {f"{PEFT}.lora_dtype": "float32"}, QUANT, point="key", kind="megatron"),
    Case("LR162", "quantized-full-finetune",
         {f"{QUANT}.load_in_4bit": True, f"{LORA}.enabled": False},
         {f"{QUANT}.load_in_4bit": True, f"{LORA}.lora_dtype": "float32"},
         f"{LORA}.enabled"),
    Case("LR163", "quantized-two-processes",
         {f"{QUANT}.load_in_4bit": True, f"{LORA}.lora_dtype": "float32",
          "cluster.gpus_per_node": 2},
         {f"{QUANT}.load_in_4bit": True, f"{LORA}.lora_dtype": "float32"},
         "cluster.gpus_per_node"),
    Case("LR163", "quantized-checkpoint-tp2",
         {f"{LORA}.lora_dtype": "float32", "policy.dtensor_cfg.tensor_parallel_size": 2,
          "cluster.gpus_per_node": 2},
         {f"{LORA}.lora_dtype": "float32"}, "policy.dtensor_cfg.tensor_parallel_size",
         model=QUANTIZED),
    Case("LR164", "quantized-vllm",
         {f"{QUANT}.load_in_8bit": True, f"{LORA}.lora_dtype": "float32",
          f"{GEN}.backend": "vllm"},
         {f"{QUANT}.load_in_8bit": True, f"{LORA}.lora_dtype": "float32",
          f"{GEN}.backend": "torch", f"{GEN}.lora_weight_sync": "split"}, f"{GEN}.backend",
         kind="grpo", vllm=True),
    Case("LR168", "quantized-merge-sync",
         {f"{LORA}.lora_dtype": "float32", f"{GEN}.lora_weight_sync": "merge"},
         {f"{LORA}.lora_dtype": "float32", f"{GEN}.lora_weight_sync": "split"},
         f"{GEN}.lora_weight_sync", kind="grpo", model=QUANTIZED),
    Case("LR165", "quantized-dora",
         {f"{QUANT}.load_in_4bit": True, f"{LORA}.lora_dtype": "float32",
          f"{LORA}.use_dora": True, f"{LORA}.use_triton": False},
         {f"{QUANT}.load_in_4bit": True, f"{LORA}.lora_dtype": "float32",
          f"{LORA}.use_triton": False}, f"{LORA}.use_dora"),
    Case("LR165", "quantized-pissa",
         {f"{LORA}.lora_dtype": "float32", f"{LORA}.init_lora_weights": "pissa"},
         {f"{LORA}.lora_dtype": "float32"}, f"{LORA}.init_lora_weights", model=QUANTIZED),
    Case("LR166", "gptq-checkpoint", {f"{LORA}.lora_dtype": "float32"},
         {f"{LORA}.lora_dtype": "float32"}, "policy.model_name",
         model={"quantization_config": {"quant_method": "gptq", "bits": 4}},
         good_model=QUANTIZED),
    Case("LR167", "quantization-without-bitsandbytes",
         {f"{QUANT}.load_in_4bit": True, f"{LORA}.lora_dtype": "float32"},
         {}, QUANT, point="key", missing=("bitsandbytes",)),
    Case("LR517", "packing-on-megatron", {"policy.sequence_packing.enabled": True},
         {"policy.sequence_packing.enabled": False}, "policy.sequence_packing.enabled",
         kind="megatron"),
    Case("LR901", "compat-key", {"policy.dtensor_cfg.sequence_parallel": True},
         {"policy.dtensor_cfg.sequence_parallel": False},
         "policy.dtensor_cfg.sequence_parallel"),
    Case("LR902", "remote-code", {"policy.trust_remote_code": True},
         {"policy.trust_remote_code": False}, "policy.trust_remote_code"),
    Case("LR960", "tracker-not-installed", {"logger.wandb_enabled": True},
         {"logger.wandb_enabled": False}, "logger.wandb_enabled", missing=("wandb",)),
    Case("LR903", "grpo-section-in-sft", {"loss_fn": {"ratio_clip_min": 0.1}}, {}, "loss_fn",
         point="key"),
]


def _fix(changes: dict[str, Any], kit: Any) -> dict[str, Any]:
    return {k: kit.DELETE if v is DELETE else v for k, v in changes.items()}


def _severity(rule: str) -> str:
    return catalogue.all_rules()[rule][1]


def _expected_location(case: Case, recipe_dir: Any, path: Path) -> tuple[str, int, int]:
    anchor = case.anchor or case.path
    if anchor == "<top>":
        return path.name, 1, 1
    pos = recipe_dir.position(anchor, path.name)
    return path.name, pos.line, pos.value_column if case.point == "value" else pos.key_column


def _run(case: Case, changes: dict[str, Any], recipe_dir: Any, monkeypatch: pytest.MonkeyPatch,
         name: str, missing: tuple[str, ...] = ()) -> tuple[Path, ValidationResult]:
    path = recipe_dir.write(_fix(changes, recipe_dir.kit), kind=case.kind, name=name)
    model = case.good_model if changes is case.good and case.good_model else case.model
    model_dir = recipe_dir.model(**model) if model is not None else None
    for file in case.model_files if changes is case.bad else ():
        (model_dir / file).write_bytes(b"")
    real_find_spec = importlib.util.find_spec
    fake = {"vllm": importlib.machinery.ModuleSpec("vllm", None) if case.vllm else None}
    fake = {**(fake if case.vllm is not None else {}), **dict.fromkeys(missing)}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: fake[n] if n in fake else real_find_spec(n, *a))
    return path, validate_recipe(path, model_dir=model_dir)


def _make_files(case: Case, root: Path) -> None:
    for name in case.files:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):  # a PEFT adapter directory with the recipe's rank and alpha
            target.mkdir(exist_ok=True)
            (target / "adapter_config.json").write_text(
                '{"peft_type": "LORA", "r": 8, "lora_alpha": 16}')
            (target / "adapter_model.safetensors").write_bytes(b"")
        else:
            target.write_text('{"prompt": "1+1=", "response": "2"}\n')


def run_failing(case: Case, recipe_dir: Any,
                monkeypatch: pytest.MonkeyPatch) -> tuple[Path, ValidationResult]:
    """Validate a case's failing recipe, with the files it needs in place."""
    for name, text in case.contents.items():
        (recipe_dir.root / name).write_text(text)
    if case.rule in ("LR613", "LR620"):
        _make_files(case, recipe_dir.root)  # the adapter exists: the recipe disagrees with it
    return _run(case, case.bad, recipe_dir, monkeypatch, "bad.yaml", case.missing)


@pytest.mark.parametrize("case", RULE_CASES, ids=lambda c: c.id)
def test_rule_fails(case: Case, recipe_dir: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path, result = run_failing(case, recipe_dir, monkeypatch)
    found = [d for d in result.diagnostics if d.rule == case.rule]
    assert found, f"{case.rule} not reported: {[(d.rule, d.message) for d in result.diagnostics]}"
    matching = [d for d in found if d.dotted_path == case.path]
    assert matching, f"{case.rule} at {[d.dotted_path for d in found]}, expected {case.path!r}"
    diag = matching[0]
    assert diag.severity == _severity(case.rule)
    assert diag.message and diag.fix, "every finding says what is wrong and how to fix it"
    assert diag.location is not None
    assert (diag.location.file, diag.location.line, diag.location.column) == \
        _expected_location(case, recipe_dir, path), recipe_dir.text(path.name)
    written = case.anchor in (None, case.path, "<top>")
    assert (diag.location.via is None) == written, diag.location.via


@pytest.mark.parametrize("case", RULE_CASES, ids=lambda c: c.id)
def test_rule_passes(case: Case, recipe_dir: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_files(case, recipe_dir.root)
    for name, text in case.contents.items():
        (recipe_dir.root / name).write_text(text)
    _, result = _run(case, case.good, recipe_dir, monkeypatch, "good.yaml")
    assert not [d for d in result.diagnostics if d.rule == case.rule], result.diagnostics
    assert result.ok, [(d.rule, d.message) for d in result.errors]
    assert result.config is not None


def test_base_recipes_are_clean(recipe_dir: Any, recipe_kit: Any) -> None:
    """The bases every case starts from are valid and warning-free."""
    for kind in recipe_kit.KINDS:
        result = validate_recipe(recipe_dir.write(kind=kind, name=f"{kind}.yaml"))
        assert result.diagnostics == [], (kind, result.diagnostics)


# ---- loader and model ids ------------------------------------------------------------------


@dataclass(frozen=True)
class Located:
    rule: str
    path: str
    file: str | None
    line: int | None
    column: int | None
    via: bool = False


def _only(result: ValidationResult, rule: str) -> Any:
    found = [d for d in result.diagnostics if d.rule == rule]
    assert found, [(d.rule, d.message) for d in result.diagnostics]
    return found[0]


def _check(result: ValidationResult, want: Located) -> None:
    diag = _only(result, want.rule)
    assert diag.severity == "error"
    assert diag.dotted_path == want.path
    loc = diag.location
    got = (loc.file, loc.line, loc.column) if loc else (None, None, None)
    assert got == (want.file, want.line, want.column), diag
    assert bool(loc and loc.via) == want.via, loc


def _lr001(d: Any, kit: Any) -> tuple[Callable[[], ValidationResult], Located, Callable]:
    path = d.write({"policy.precison": "float32"})
    pos = d.position("policy.precison")
    return (lambda: validate_recipe(path),
            Located("LR001", "policy.precison", "recipe.yaml", pos.line, pos.key_column),
            lambda: validate_recipe(d.write({"policy.precision": "float32"}, name="ok.yaml")))


def _lr002(d: Any, kit: Any):
    path = d.write({"policy.train_micro_batch_size": "abc"})
    pos = d.position("policy.train_micro_batch_size")
    return (lambda: validate_recipe(path),
            Located("LR002", "policy.train_micro_batch_size", "recipe.yaml", pos.line,
                    pos.value_column),
            lambda: validate_recipe(d.write({"policy.train_micro_batch_size": 2}, name="ok.yaml")))


def _lr003(d: Any, kit: Any):
    path = d.write({"policy.model_name": kit.DELETE})
    pos = d.position("policy")
    return (lambda: validate_recipe(path),
            Located("LR003", "policy.model_name", "recipe.yaml", pos.line, pos.key_column),
            lambda: validate_recipe(d.write(name="ok.yaml")))


def _lr004(d: Any, kit: Any):
    text = kit.dump(kit.base()) + "logger:\n\tlog_dir: logs\n"
    path = d.write(text=text)
    line = text.count("\n")  # the tab-indented last line
    return (lambda: validate_recipe(path), Located("LR004", "", "recipe.yaml", line, 1),
            lambda: validate_recipe(d.write(text=text.replace("\t", "  "), name="ok.yaml")))


def _lr005(d: Any, kit: Any):
    text = kit.dump(kit.base()) + "data:\n  dataset_name: tiny-arithmetic\n"
    path = d.write(text=text)
    line = text.count("\n") - 1  # the second `data:`
    return (lambda: validate_recipe(path), Located("LR005", "data", "recipe.yaml", line, 1),
            lambda: validate_recipe(d.write(name="ok.yaml")))


def _lr006(d: Any, kit: Any):
    text = "defaults: missing-parent.yaml\n" + kit.dump(kit.base())
    path = d.write(text=text)
    d.write(name="parent.yaml")
    ok = d.write(text="defaults: parent.yaml\n", name="ok.yaml")
    return (lambda: validate_recipe(path),
            Located("LR006", "defaults", "recipe.yaml", 1, len("defaults: ") + 1),
            lambda: validate_recipe(ok))


def _lr007(d: Any, kit: Any):
    path = d.write()
    return (lambda: validate_recipe(path, ["policy.precision=float32",
                                           "+policy.model_name=other"]),
            Located("LR007", "", "<overrides>", 2, 1, via=True),
            lambda: validate_recipe(path, ["policy.model_name=other"]))


def _lr008(d: Any, kit: Any):
    path = d.write({"policy.model_name": "${policy.nope}"})
    pos = d.position("policy.model_name")
    ok = d.write({"policy.tokenizer.name": "${policy.model_name}"}, name="ok.yaml")
    return (lambda: validate_recipe(path),
            Located("LR008", "policy.model_name", "recipe.yaml", pos.line, pos.value_column),
            lambda: validate_recipe(ok))


def _lr009(d: Any, kit: Any):
    from lora_rl.config.yaml_source import MAX_DEPTH

    text = kit.dump(kit.base()) + "deep: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    path = d.write(text=text)
    line = text.count("\n")
    # the root mapping is depth 0 and `deep:`'s list depth 1: the first list too deep is the
    # (MAX_DEPTH + 1)th '['
    column = len("deep: ") + MAX_DEPTH + 1
    ok_text = kit.dump(kit.base()) + "logger: {log_dir: x}\n"
    return (lambda: validate_recipe(path), Located("LR009", "", "recipe.yaml", line, column),
            lambda: validate_recipe(d.write(text=ok_text, name="ok.yaml")))


def _lr010(d: Any, kit: Any):
    path = d.root / "missing.yaml"
    return (lambda: validate_recipe(path), Located("LR010", "", None, None, None),
            lambda: validate_recipe(d.write(name="ok.yaml")))


def _lr011(d: Any, kit: Any):
    path = d.write(text="# a comment\n\n")
    return (lambda: validate_recipe(path), Located("LR011", "", "recipe.yaml", 1, 1),
            lambda: validate_recipe(d.write(name="ok.yaml")))


def _lr403(d: Any, kit: Any):
    path = d.write()
    pos = d.position("policy.model_name")
    no_config = d.empty_dir("not-a-model")
    return (lambda: validate_recipe(path, model_dir=no_config),
            Located("LR403", "policy.model_name", "recipe.yaml", pos.line, pos.value_column),
            lambda: validate_recipe(path, model_dir=d.model()))


def _lr800(d: Any, kit: Any):
    path = d.write(text="defaults: /etc/passwd\n" + kit.dump(kit.base()))
    d.write(name="parent.yaml")
    ok = d.write(text="defaults: parent.yaml\n", name="ok.yaml")
    return (lambda: validate_recipe(path),
            Located("LR800", "defaults", "recipe.yaml", 1, len("defaults: ") + 1),
            lambda: validate_recipe(ok))


def _lr801(d: Any, kit: Any):
    d.write(text="token: abc\n", name="notes.yaml")
    path = d.write(text="defaults: notes.yaml\n" + kit.dump(kit.base()))
    d.write(name="parent.yaml")
    ok = d.write(text="defaults: parent.yaml\n", name="ok.yaml")
    return (lambda: validate_recipe(path),
            Located("LR801", "defaults", "recipe.yaml", 1, len("defaults: ") + 1),
            lambda: validate_recipe(ok))


LOADER_CASES = {
    "LR001": _lr001, "LR002": _lr002, "LR003": _lr003, "LR004": _lr004, "LR005": _lr005,
    "LR006": _lr006, "LR007": _lr007, "LR008": _lr008, "LR009": _lr009, "LR010": _lr010,
    "LR011": _lr011,
    "LR403": _lr403, "LR800": _lr800, "LR801": _lr801,
}


@pytest.mark.parametrize("rule", sorted(LOADER_CASES))
def test_loader_rule(rule: str, recipe_dir: Any, recipe_kit: Any) -> None:
    fail, want, passing = LOADER_CASES[rule](recipe_dir, recipe_kit)
    result = fail()
    _check(result, want)
    assert result.config is None or want.rule == "LR403"
    ok = passing()
    assert not [d for d in ok.diagnostics if d.rule == rule], ok.diagnostics
    assert ok.ok, ok.errors


def test_a_missing_model_path_is_an_environment_fact(recipe_dir: Any) -> None:
    """A missing local model directory is LR611 (not LR403): a warning in `validate`, an error
    under --check-env and in `run`."""
    path = recipe_dir.write({"policy.model_name": "./no-such-model"})
    result = validate_recipe(path)
    assert [d.rule for d in result.diagnostics] == ["LR611"]
    diag = result.diagnostics[0]
    assert diag.severity == "warning" and result.ok
    assert diag.message == "model directory ./no-such-model does not exist here"
    assert diag.location.line == recipe_dir.position("policy.model_name").line
    strict = validate_recipe(path, check_env=True)
    assert [(d.rule, d.severity) for d in strict.diagnostics] == [("LR611", "error")]


@pytest.mark.parametrize(("name", "is_path"), [
    ("org/model", False),               # a hub-style id: LR610, nothing to look up
    ("./models/llama", True),           # written as a path
    ("~no-such-user-lora-rl/m", True),  # written as a path, with no such home
    ("models/llama", True),             # not written as one, but something is there
])
def test_validate_and_run_agree_on_what_names_a_model_path(recipe_dir: Any, name: str,
                                                           is_path: bool) -> None:
    """One definition (model_source.names_a_path): a name `validate` checks as a local
    directory (LR611) is one `run` looks up on disk and refuses; a hub id is LR610 and `run`
    says it downloads nothing."""
    from lora_rl.model_source import ModelSourceError, local_model_dir

    (recipe_dir.root / "models").mkdir()
    (recipe_dir.root / "models/llama").write_text("a file, not a model directory")
    rules = {d.rule for d in validate_recipe(recipe_dir.write({"policy.model_name": name}))
             .diagnostics}
    assert ("LR611" in rules, "LR610" in rules) == (is_path, not is_path), rules
    if is_path:
        with pytest.raises(ModelSourceError, match=f"model directory {name} does not exist"):
            local_model_dir(name)
    else:
        assert local_model_dir(name) is None


def test_every_rule_id_has_a_case() -> None:
    # The cross-recipe rules (JOINT_RULES) have their cases in test_joint_rules.py.
    covered = {case.rule for case in RULE_CASES} | set(LOADER_CASES) | set(catalogue.JOINT_RULES)
    assert covered == set(catalogue.all_rules())


def test_catalogue_agrees_with_the_rule_table() -> None:
    table = catalogue.all_rules()
    for rule in RULES.values():
        assert table[rule.id] == (rule.title, rule.severity)
    assert set(catalogue.LOADER_RULES) | set(catalogue.MODEL_RULES) | set(catalogue.JOINT_RULES) \
        | set(RULES) == set(table)
    assert all(rid.startswith("LR") and len(rid) == 5 for rid in table)
