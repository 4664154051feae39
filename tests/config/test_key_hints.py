"""Did-you-mean across schemas: AReaL's and PEFT's LoRA names, the other backend's names, and keys
that exist in another section. Each case: the one diagnostic, its location and its fix."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from lora_rl.cli import app
from lora_rl.config.validate import validate_recipe

LORA = "policy.dtensor_cfg.lora_cfg"
PEFT = "policy.megatron_cfg.peft"
DT = "policy.dtensor_cfg"
MG = "policy.megatron_cfg"

CASES = [
    # (kind, section, unknown key, value, fix)
    ("sft", LORA, "lora_rank", 16, "did you mean 'dim'? ('lora_rank' is AReaL's name for the "
     "LoRA rank; here it is 'dim')"),
    ("sft", LORA, "use_lora", True, "did you mean 'enabled'? ('use_lora' is AReaL's name for the "
     "LoRA switch; here it is 'enabled')"),
    ("sft", LORA, "r", 16, "did you mean 'dim'? ('r' is PEFT's name for the LoRA rank; here it "
     "is 'dim')"),
    ("sft", LORA, "rank", 16, "did you mean 'dim'? ('rank' is a common name for the LoRA rank; "
     "here it is 'dim')"),
    ("sft", LORA, "lora_alpha", 32, "did you mean 'alpha'? ('lora_alpha' is AReaL's and PEFT's "
     "name for the LoRA scale numerator; here it is 'alpha')"),
    ("sft", LORA, "lora_dropout", 0.1, "did you mean 'dropout'? ('lora_dropout' is PEFT's name "
     "for LoRA dropout; here it is 'dropout')"),
    ("sft", LORA, "lora_A_init_method", "uniform", "did you mean 'lora_A_init'? "
     "('lora_A_init_method' is NeMo RL's Megatron peft name for the initialisation of A; here "
     "it is 'lora_A_init')"),
    ("megatron", PEFT, "lora_A_init", "uniform", "did you mean 'lora_A_init_method'? "
     "('lora_A_init' is NeMo RL's DTensor lora_cfg name for the initialisation of A; here it is "
     "'lora_A_init_method')"),
    ("megatron", PEFT, "lora_rank", 16, "did you mean 'dim'? ('lora_rank' is AReaL's name for "
     "the LoRA rank; here it is 'dim')"),
    ("sft", LORA, "a2a_experimental", False, f"'a2a_experimental' is a key of {PEFT}, not of "
     f"{LORA}: move it there, or remove it"),
    ("megatron", PEFT, "use_triton", False, f"'use_triton' is a key of {LORA}, not of {PEFT}: "
     "move it there, or remove it"),
    ("sft", DT, "tensor_model_parallel_size", 1, "did you mean 'tensor_parallel_size'? "
     "('tensor_model_parallel_size' is the Megatron backend's name; here it is "
     "'tensor_parallel_size')"),
    ("megatron", MG, "tensor_parallel_size", 1, "did you mean 'tensor_model_parallel_size'? "
     "('tensor_parallel_size' is the DTensor backend's name; here it is "
     "'tensor_model_parallel_size')"),
    ("megatron", MG, "lora_cfg", {"enabled": True}, "did you mean 'peft'? ('lora_cfg' is the "
     "DTensor backend's LoRA block; here it is 'peft')"),
    ("sft", "policy", "lora_rank", 16, "'lora_rank' is AReaL's name for the LoRA rank: in "
     f"lora-rl it is {LORA}.dim (or {PEFT}.dim)"),
    ("sft", LORA, "dimm", 16, "did you mean 'dim'?"),
]


@pytest.mark.parametrize("kind,section,key,value,fix", CASES,
                         ids=[f"{c[1].rsplit('.', 1)[-1]}-{c[2]}" for c in CASES])
def test_unknown_key_names_what_was_meant(recipe_dir: Any, kind: str, section: str, key: str,
                                          value: Any, fix: str) -> None:
    path = recipe_dir.write({f"{section}.{key}": value}, kind=kind)
    pos = recipe_dir.position(f"{section}.{key}")
    result = validate_recipe(path)
    assert [(d.rule, d.dotted_path, d.message, d.location.line, d.location.column, d.fix)
            for d in result.diagnostics] == [
        ("LR001", f"{section}.{key}", f"unknown key '{key}' in {section}", pos.line,
         pos.key_column, fix)]


def test_the_meant_key_is_not_judged_at_its_default(recipe_dir: Any) -> None:
    """`use_lora: true` for `enabled` in a Megatron DPO recipe: the "full fine-tuning keeps a
    reference copy" warning (LR307) would otherwise fire on the default `enabled: false`."""
    path = recipe_dir.write({f"{PEFT}.enabled": recipe_dir.kit.DELETE, f"{PEFT}.use_lora": True,
                             "dpo": {"max_num_steps": 1}, "sft": recipe_dir.kit.DELETE},
                            kind="megatron")
    assert [d.rule for d in validate_recipe(path).diagnostics] == ["LR001"]
    unguessed = recipe_dir.write({f"{PEFT}.enabled": recipe_dir.kit.DELETE, "dpo": {
        "max_num_steps": 1}, "sft": recipe_dir.kit.DELETE}, kind="megatron", name="off.yaml")
    assert [d.rule for d in validate_recipe(unguessed).diagnostics] == ["LR307"]
    assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 1
