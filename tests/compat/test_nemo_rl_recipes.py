"""NeMo RL recipes load unchanged: lora-rl's own fixtures in NeMo RL's layout (key names,
`defaults:` with relative paths, `${mul:...}`, `${.x}`, string `None`, `1e-5`, `_override_`)
validate with no errors, and every NeMo RL-only key they set is named by an LR901 warning.

NeMo RL's DPO and GRPO base files train without LoRA (full fine-tuning against a frozen
reference copy, which lora-rl keeps too); they are validated as they are, and with the overrides
NeMo RL's LoRA guide gives. The `*_megatron.yaml` children switch a base to Megatron the way
NeMo RL's do: `policy.optimizer: null` (Megatron trains with `megatron_cfg.optimizer`) and
`clip_grad: 0` (no clipping) or `${policy.max_grad_norm}`.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_rl.config.validate import ValidationResult, validate_recipe

FIXTURES = Path(__file__).parent / "fixtures"
LLM = "recipes/llm"
VLLM_MISSING = importlib.util.find_spec("vllm") is None

# NeMo RL's data blocks (data.train / validation / default) are acted on, not LR901: their hub
# data sets are LR501 warnings instead (see test_hub_data_blocks_warn_with_lr501).
SFT_BASE = {"logger.monitor_gpus", "logger.gpu_monitoring", "data.default.processor"}
DPO_BASE = {"logger.monitor_gpus", "logger.gpu_monitoring"}
# Sequence packing is acted on for SFT; on GRPO it is LR517 (see test_packing_outside_sft_warns).
GRPO_BASE = {"policy.generation_batch_size", "policy.sequence_packing.logprob_mb_tokens",
             "policy.generation.val_temperature", "policy.generation.val_top_p",
             "policy.generation.refit_cfg", "env.math", "data.default.processor",
             "data.default.env_name"}
GRPO_CHILD = GRPO_BASE - {"policy.sequence_packing.logprob_mb_tokens"}
MEGATRON_MOE = {"policy.megatron_cfg.freeze_moe_router", "policy.megatron_cfg.moe_router_dtype",
                "policy.megatron_cfg.moe_router_load_balancing_type",
                "policy.megatron_cfg.moe_router_bias_update_rate",
                "policy.megatron_cfg.checkpoint.async_save",
                "policy.megatron_cfg.checkpoint.ckpt_assume_constant_structure"}
WEIGHT_DECAY_RAMP = {"policy.megatron_cfg.scheduler.start_weight_decay",
                     "policy.megatron_cfg.scheduler.end_weight_decay"}

MEGATRON_BASE = {"policy.megatron_cfg.checkpoint.async_save",
                 "policy.megatron_cfg.checkpoint.ckpt_assume_constant_structure",
                 "policy.megatron_cfg.freeze_moe_router",
                 "policy.megatron_cfg.moe_router_bias_update_rate",
                 "policy.megatron_cfg.moe_router_dtype",
                 "policy.megatron_cfg.moe_router_load_balancing_type"}

EXPECTED_COMPAT = {
    "sft.yaml": SFT_BASE,
    "dpo.yaml": DPO_BASE,
    "grpo_math_1B.yaml": GRPO_BASE,
    "sft_megatron.yaml": SFT_BASE | WEIGHT_DECAY_RAMP,
    "dpo_megatron.yaml": DPO_BASE | WEIGHT_DECAY_RAMP | {
        "policy.megatron_cfg.moe_router_dtype", "policy.megatron_cfg.sequence_parallel"},
    "grpo_math_1B_megatron.yaml": GRPO_BASE | MEGATRON_BASE,
    f"{LLM}/sft-llama3.1-8b-1n8g-fsdp2tp1-lora.yaml":
        SFT_BASE
        | {"policy.make_sequence_length_divisible_by", "data.add_generation_prompt"},
    f"{LLM}/sft-llama3.1-8b-1n8g-megatron-lora.yaml": SFT_BASE | WEIGHT_DECAY_RAMP,
    f"{LLM}/dpo-llama3.2-1b-1n8g-fsdp2-lora.yaml": DPO_BASE,
    f"{LLM}/grpo-qwen3-8b-base-1n8g-fsdp2-lora.yaml": GRPO_CHILD,
    f"{LLM}/grpo-qwen3-8b-base-1n8g-fsdp2-lora-tq.yaml":
        GRPO_CHILD - {"data.default.processor", "data.default.env_name"} | {"data_plane"},
    f"{LLM}/grpo-qwen3-8b-base-1n8g-megatron-lora.yaml":
        GRPO_CHILD | MEGATRON_MOE,
}


LORA_ON = "policy.dtensor_cfg.lora_cfg.enabled=true"
GUIDE_OVERRIDES = {"dpo.yaml": [LORA_ON, "++policy.dtensor_cfg._v2=true"],
                   "grpo_math_1B.yaml": [LORA_ON]}


def _validate(name: str) -> ValidationResult:
    return validate_recipe(FIXTURES / name, GUIDE_OVERRIDES.get(name, []))


def _errors(result: ValidationResult) -> list[str]:
    # generation.backend: vllm is NeMo RL's default; whether the optional vllm extra is
    # installed here is an environment fact (LR304: a warning unless --check-env), so the
    # verdict is the same with and without it. (NeMo RL's 8-GPU GRPO recipes run vLLM with one
    # engine per training rank, which lora-rl does too.)
    return [f"{d.rule} {d.message}" for d in result.errors]


def test_every_fixture_is_listed() -> None:
    found = {str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*.yaml")}
    assert found == set(EXPECTED_COMPAT)


@pytest.mark.parametrize("name", sorted(EXPECTED_COMPAT))
def test_validates_without_errors(name: str) -> None:
    result = _validate(name)
    assert result.config is not None and _errors(result) == []


@pytest.mark.parametrize("name", sorted(EXPECTED_COMPAT))
def test_compat_keys_are_named_by_lr901(name: str) -> None:
    warned = {".".join(d.path) for d in _validate(name).warnings if d.rule == "LR901"}
    assert warned == EXPECTED_COMPAT[name]


def test_nemo_spellings_resolve() -> None:
    cfg = _validate("sft.yaml").config
    assert cfg is not None
    mg = cfg.policy.megatron_cfg
    assert mg.peft.lora_dtype is None                       # `lora_dtype: None` (a string)
    assert mg.optimizer.adam_eps == 1e-5                    # `1e-5` is a float
    assert cfg.policy.dynamic_batching["train_mb_tokens"] == 1024   # ${mul:1024, 1}
    assert cfg.policy.tokenizer.name == "meta-llama/Llama-3.2-1B"   # ${policy.model_name}
    assert cfg.logger.wandb.name == "sft-dev-squad"      # text around an interpolation


def test_relative_interpolation_and_null_env_vars() -> None:
    dpo = _validate("dpo.yaml").config
    grpo = _validate("grpo_math_1B.yaml").config
    assert dpo is not None and grpo is not None
    assert dpo.dpo.sft_average_log_probs is False           # ${.preference_average_log_probs}
    assert grpo.policy.generation.val_temperature == 1.0    # ${.temperature}
    assert grpo.policy.megatron_cfg.env_vars == {}          # `env_vars: null`


def test_child_recipes_inherit_and_override() -> None:
    sft = _validate(f"{LLM}/sft-llama3.1-8b-1n8g-fsdp2tp1-lora.yaml").config
    assert sft is not None
    lora = sft.policy.active_lora
    assert lora is not None and (lora.dim, lora.alpha) == (64, 128)
    assert sft.sft.val_batches == 4                         # inherited from ../../sft.yaml
    assert sft.data.train.seed == 7                         # ${sft.seed}, resolved after merge

    tq = _validate(f"{LLM}/grpo-qwen3-8b-base-1n8g-fsdp2-lora-tq.yaml").config
    assert tq is not None
    assert tq.data.train is None and tq.data.train_data_path == "data/math_train.jsonl"
    assert tq.policy.dtensor_cfg.lora_cfg.dim == 128        # grandparent chain ./ then ../../


@pytest.mark.parametrize("name,key", [
    ("sft.yaml", "data.train.dataset_name"),
    ("dpo.yaml", "data.train.dataset_name"),
    ("grpo_math_1B.yaml", "data.train.dataset_name"),
])
def test_hub_data_blocks_warn_with_lr501(name: str, key: str) -> None:
    warned = {".".join(d.path) for d in _validate(name).warnings if d.rule == "LR501"}
    assert warned == {key}


def test_packing_outside_sft_warns() -> None:
    warned = [".".join(d.path) for d in _validate("grpo_math_1B.yaml").warnings
              if d.rule == "LR517"]
    assert warned == ["policy.sequence_packing.enabled"]


def test_megatron_child_switches_backend() -> None:
    cfg = _validate(f"{LLM}/grpo-qwen3-8b-base-1n8g-megatron-lora.yaml").config
    assert cfg is not None and cfg.policy.backend == "megatron"
    assert cfg.policy.megatron_cfg.peft.dim == 128


def test_dpo_lora_without_v2_is_caught() -> None:
    result = validate_recipe(FIXTURES / "dpo.yaml", [LORA_ON])
    assert [d.rule for d in result.errors] == ["LR102"]


STOCK_FULL_FT = ["dpo.yaml", "grpo_math_1B.yaml", "dpo_megatron.yaml",
                 "grpo_math_1B_megatron.yaml"]


@pytest.mark.parametrize("name", STOCK_FULL_FT)
def test_stock_full_fine_tuning_validates_with_a_reference_copy(name: str) -> None:
    """Before: LR307 refused them ("lora-rl keeps no second model copy"); now a frozen copy is
    kept, and LR307 only warns what it costs."""
    result = validate_recipe(FIXTURES / name)
    assert result.config is not None and _errors(result) == []
    assert result.config.policy.active_lora is None
    (copy,) = [d for d in result.warnings if d.rule == "LR307"]
    assert "second copy of every trainable weight" in copy.message


def test_megatron_children_null_the_dtensor_optimizer_and_clip_with_zero() -> None:
    """Before: LR002 on `optimizer: null` and on `clip_grad: 0`."""
    sft = _validate("sft_megatron.yaml").config
    grpo = _validate("grpo_math_1B_megatron.yaml").config
    assert sft is not None and grpo is not None
    assert sft.policy.optimizer is None and sft.policy.backend == "megatron"
    assert sft.policy.megatron_cfg.optimizer.clip_grad == 0.0   # no clipping
    assert grpo.policy.megatron_cfg.optimizer.clip_grad == 1.0  # ${policy.max_grad_norm}
    assert grpo.policy.make_sequence_length_divisible_by == 1   # ${...tensor_model_parallel_size}


def test_a_null_optimizer_on_dtensor_is_caught() -> None:
    result = validate_recipe(FIXTURES / "sft_megatron.yaml",
                             ["policy.dtensor_cfg.enabled=true",
                              "policy.megatron_cfg.enabled=false"])
    assert [(d.rule, d.dotted_path) for d in result.errors] == [("LR131", "policy.optimizer")]


def test_advantage_estimator_must_agree_with_grpo() -> None:
    grpo = FIXTURES / "grpo_math_1B.yaml"
    agree = validate_recipe(grpo, [LORA_ON, "grpo.normalize_rewards=false"])
    assert _errors(agree) == []                              # interpolated: they follow
    differ = validate_recipe(grpo, [LORA_ON, "grpo.adv_estimator.normalize_rewards=false"])
    assert any("adv_estimator.normalize_rewards" in e for e in _errors(differ))
    other = validate_recipe(grpo, [LORA_ON, "grpo.adv_estimator.name=reinforce_plus_plus"])
    assert [d.path for d in other.errors if d.rule == "LR002"] == \
        [("grpo", "adv_estimator", "name")]


@pytest.mark.parametrize("name", sorted(EXPECTED_COMPAT))
def test_editors_accept_them(name: str) -> None:
    """The JSON Schema (yaml-language-server) agrees: NeMo RL files show no squiggles."""
    import jsonschema

    from lora_rl.config.schema_export import recipe_json_schema
    from lora_rl.config.yaml_source import parse_yaml

    path = FIXTURES / name
    data, _ = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    errors = jsonschema.Draft7Validator(recipe_json_schema("07")).iter_errors(data)
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []


BASE_INSTALL_ONLY = """
import sys
# A None entry in sys.modules is how Python spells "not installed" to both `import` and
# importlib.util.find_spec.
for name in ("torch", "transformers", "safetensors", "vllm", "megatron", "megatron.core",
             "peft", "triton"):
    sys.modules[name] = None
sys.argv = ["lora-rl", "validate", *sys.argv[1:]]
from lora_rl.cli import main
main()
"""


def _cli_without_extras(*args: str) -> list[subprocess.CompletedProcess]:
    """`lora-rl validate` on every fixture (the guide's overrides where it gives some)."""
    plain = [str(FIXTURES / n) for n in sorted(EXPECTED_COMPAT) if n not in GUIDE_OVERRIDES]
    runs = [plain] + [[str(FIXTURES / n), *(f"--set={o}" for o in GUIDE_OVERRIDES[n])]
                      for n in sorted(GUIDE_OVERRIDES)]
    return [subprocess.run([sys.executable, "-c", BASE_INSTALL_ONLY, *argv, *args],
                           capture_output=True, text=True, env=os.environ.copy(), timeout=120)
            for argv in runs]


def test_valid_with_only_the_base_install() -> None:
    """No torch, transformers, vLLM or megatron-core importable: the same verdict (valid), and
    what is missing is named by environment warnings."""
    for done in _cli_without_extras():
        assert done.returncode == 0, done.stdout + done.stderr
        assert "LR601" in done.stdout and "torch, transformers, safetensors not installed" \
            in done.stdout
        assert " error " not in done.stdout


def test_check_env_reports_what_is_missing() -> None:
    errors = set()
    for done in _cli_without_extras("--check-env"):
        assert done.returncode == 1
        errors |= {line.split(" error ")[1].split(":")[0] for line in done.stdout.splitlines()
                   if " error LR" in line}
    # missing packages (train extra, vLLM, megatron-core), hub ids, data that is not here
    assert errors == {"LR601", "LR304", "LR602", "LR610", "LR501", "LR502"}


@pytest.mark.parametrize("name", sorted(EXPECTED_COMPAT))
def test_valid_with_every_extra(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: importlib.machinery.ModuleSpec(
        n, None) if n == "vllm" else real(n, *a))
    result = _validate(name)
    assert _errors(result) == []
    assert "LR304" not in {d.rule for d in result.diagnostics}


def test_max_new_tokens_equal_to_the_total_length_is_a_warning() -> None:
    """NeMo RL's `max_new_tokens: ${policy.max_total_sequence_length}`: generation is capped at
    the model length (as vLLM caps at max_model_len), so LR302 warns; it does not refuse."""
    result = _validate("grpo_math_1B.yaml")
    (diag,) = [d for d in result.diagnostics if d.rule == "LR302"]
    assert diag.severity == "warning"
    assert diag.message.startswith("max_new_tokens 512 reaches max_total_sequence_length 512")
    text = (FIXTURES / "grpo_math_1B.yaml").read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1)
                if "max_new_tokens: ${policy.max_total_sequence_length}" in t)
    assert (diag.location.file.endswith("grpo_math_1B.yaml"), diag.location.line) == (True, line)
def test_converting_a_megatron_child_with_a_null_optimizer(tmp_path: Path) -> None:
    """Before: AttributeError ('NoneType' object has no attribute ...). The Megatron optimizer is
    carried into the null DTensor one, so the converted recipe trains at the same LR."""
    from lora_rl.convert import convert_text

    child = tmp_path / "lora.yaml"
    child.write_text(f"defaults: {FIXTURES / 'sft_megatron.yaml'}\n"
                     "policy:\n  megatron_cfg:\n    peft:\n      enabled: true\n")
    result = convert_text(child, "dtensor")
    assert result.output_errors == []
    assert "  optimizer:\n    name: torch.optim.AdamW\n    kwargs:\n      lr: 5e-06\n" \
        in result.text
