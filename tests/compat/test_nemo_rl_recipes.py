"""NeMo RL's own recipes load unchanged: verbatim copies of its stock SFT/DPO/GRPO configs and
its LoRA recipes (tests/compat/fixtures/README.md says from which commit, and which NeMo RL files
are left out and why) validate with no errors, and every NeMo RL-only key they set is named by an
LR901 warning.

They exercise NeMo RL's layout as it is: `defaults:` chains with relative paths, `${mul:...}`,
`${.x}`, string `None`, `1e-5`. The DPO and GRPO base files train without LoRA (full fine-tuning
against a frozen reference copy, which lora-rl keeps too); they are validated as they are, and
with the overrides NeMo RL's LoRA guide gives. The `*_megatron.yaml` children switch a base to
Megatron the way NeMo RL does: `policy.optimizer: null` (Megatron trains with
`megatron_cfg.optimizer`) and `clip_grad: 0` (no clipping) or `${policy.max_grad_norm}`.
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

# NeMo RL's data blocks (data.train / validation / default) are acted on, not LR901: their hub
# data sets are LR501 warnings instead (see test_hub_data_blocks_warn_with_lr501).
LOGGER = {"logger.monitor_gpus", "logger.gpu_monitoring"}
SFT_BASE = LOGGER | {"data.default.processor"}
OPENMATH = {"data.add_generation_prompt", "data.default.processor",
            "policy.make_sequence_length_divisible_by"}
GRPO_GEN = {"policy.generation_batch_size", "policy.generation.val_temperature",
            "policy.generation.val_top_p", "policy.generation.refit_cfg",
            "policy.generation.mcore_generation_config", "env.math", "data.default.processor",
            "data.default.env_name"}
# Sequence packing is acted on for SFT; on GRPO it is LR517 (see test_packing_outside_sft_warns).
GRPO_PACKING = {"policy.sequence_packing.logprob_mb_tokens",
                "policy.sequence_packing.microbatch_order"}
GRPO_BASE = GRPO_GEN | GRPO_PACKING | LOGGER
MOE_ROUTER = {"policy.megatron_cfg.freeze_moe_router", "policy.megatron_cfg.moe_router_dtype",
              "policy.megatron_cfg.moe_router_load_balancing_type",
              "policy.megatron_cfg.moe_router_bias_update_rate"}
MEGATRON_CKPT = {"policy.megatron_cfg.checkpoint.async_save",
                 "policy.megatron_cfg.checkpoint.ckpt_assume_constant_structure"}
WEIGHT_DECAY_RAMP = {"policy.megatron_cfg.scheduler.start_weight_decay",
                     "policy.megatron_cfg.scheduler.end_weight_decay"}
GRPO_MEGATRON = GRPO_GEN | GRPO_PACKING | MOE_ROUTER | MEGATRON_CKPT | WEIGHT_DECAY_RAMP
GRPO_LORA = GRPO_GEN | LOGGER
SFT_LLAMA_LORA = SFT_BASE | {"data.add_generation_prompt",
                             "policy.make_sequence_length_divisible_by"}
AUTOMODEL = {"policy.dtensor_cfg.automodel_kwargs"}

EXPECTED_COMPAT = {
    "sft.yaml": SFT_BASE,
    "sft_openmathinstruct2.yaml": OPENMATH,
    "sft_openmathinstruct2_megatron.yaml":
        OPENMATH | MOE_ROUTER | WEIGHT_DECAY_RAMP | {
            "policy.megatron_cfg.distributed_data_parallel_config.grad_reduce_in_fp32",
            "policy.megatron_cfg.optimizer.use_precision_aware_optimizer",
            "policy.sequence_packing.microbatch_order"},
    "dpo.yaml": LOGGER,
    "grpo_math_1B.yaml": GRPO_BASE,
    "grpo_smoke.yaml": GRPO_BASE,
    "grpo_math_8B.yaml": GRPO_BASE,
    "grpo_math_1B_megatron.yaml": GRPO_MEGATRON,
    "grpo_math_8B_megatron.yaml": GRPO_MEGATRON,
    "grpo_math_70B_megatron.yaml": GRPO_MEGATRON | {"policy.make_sequence_length_divisible_by"},
    "grpo_math_qwen30ba3b_megatron.yaml":
        GRPO_GEN | MOE_ROUTER | MEGATRON_CKPT | WEIGHT_DECAY_RAMP
        | {"policy.generation.vllm_kwargs", "policy.make_sequence_length_divisible_by"},
    f"{LLM}/sft-llama3.1-8b-1n8g-fsdp2tp1-lora.yaml": SFT_LLAMA_LORA,
    f"{LLM}/sft-llama3.1-8b-1n8g-megatron-lora.yaml": SFT_LLAMA_LORA | WEIGHT_DECAY_RAMP,
    f"{LLM}/sft-nanov3-30BA3B-2n8g-fsdp2-lora.yaml": SFT_BASE | AUTOMODEL,
    f"{LLM}/sft-nanov3-30BA3B-2n4g-fsdp2-lora.yaml": SFT_BASE | AUTOMODEL,
    f"{LLM}/grpo-qwen3-8B-base-1n8g-fsdp2-lora.yaml": GRPO_LORA,
    f"{LLM}/grpo-qwen3-8B-base-1n8g-fsdp2-lora-tq_mooncake.yaml": GRPO_LORA | {"data_plane"},
    f"{LLM}/grpo-qwen3-8b-base-1n8g-megatron-lora.yaml":
        GRPO_LORA | MOE_ROUTER | MEGATRON_CKPT | WEIGHT_DECAY_RAMP,
    f"{LLM}/grpo-nanov3-30BA3B-2n8g-fsdp2-lora.yaml": GRPO_LORA | AUTOMODEL,
    f"{LLM}/grpo-nanov3-30BA3B-2n8g-megatron-lora.yaml":
        GRPO_LORA | MOE_ROUTER | MEGATRON_CKPT | WEIGHT_DECAY_RAMP
        | {"policy.megatron_cfg.bias_activation_fusion"},
}

# NeMo RL's recipes that split one vLLM engine over several GPUs (tensor_parallel_size 4 or 8)
# while training on 16-64 ranks: each tp consecutive training ranks share one TP engine
# (lora_rl.generation.engine_group), so they validate with no errors as written.
VLLM_TP_RECIPES = ("grpo_math_70B_megatron.yaml", "grpo_math_qwen30ba3b_megatron.yaml",
                   f"{LLM}/grpo-nanov3-30BA3B-2n8g-fsdp2-lora.yaml",
                   f"{LLM}/grpo-nanov3-30BA3B-2n8g-megatron-lora.yaml")

# Warnings other than LR901 a stock recipe may draw: hub model/data ids that are not files here
# (LR610/LR501), vLLM not installed (LR304), the full-FT reference copy (LR307), packing on
# GRPO (LR517), max_new_tokens equal to the sequence length (LR302), a logprob batch size that
# differs from the micro-batch (LR640).
ALLOWED_WARNINGS = {"LR302", "LR304", "LR307", "LR501", "LR517", "LR610", "LR640", "LR901"}


LORA_ON = "policy.dtensor_cfg.lora_cfg.enabled=true"
GUIDE_OVERRIDES = {"dpo.yaml": [LORA_ON, "++policy.dtensor_cfg._v2=true"],
                   "grpo_math_1B.yaml": [LORA_ON]}


def _validate(name: str) -> ValidationResult:
    return validate_recipe(FIXTURES / name, GUIDE_OVERRIDES.get(name, []))


def _errors(result: ValidationResult) -> list[str]:
    # generation.backend: vllm is NeMo RL's default; whether the optional vllm extra is
    # installed here is an environment fact (LR304: a warning unless --check-env), so the
    # verdict is the same with and without it.
    return [f"{d.rule} {d.message}" for d in result.errors]


def _error_keys(result: ValidationResult) -> list[tuple[str, str]]:
    return [(d.rule, d.dotted_path) for d in result.errors]


def test_every_fixture_is_listed() -> None:
    found = {str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*.yaml")}
    assert found == set(EXPECTED_COMPAT)
    assert set(VLLM_TP_RECIPES) < found


def test_every_nemo_rl_lora_recipe_is_here() -> None:
    """NeMo RL's nine LoRA recipes (examples/configs/recipes/llm/*lora*.yaml at the commit the
    README names)."""
    assert len(list((FIXTURES / LLM).glob("*lora*.yaml"))) == 9


@pytest.mark.parametrize("name", sorted(EXPECTED_COMPAT))
def test_validates_without_errors(name: str) -> None:
    result = _validate(name)
    assert result.config is not None
    assert _errors(result) == []


@pytest.mark.parametrize("name", VLLM_TP_RECIPES)
def test_vllm_tp_recipes_share_one_engine_per_tp_ranks(name: str) -> None:
    """Their vLLM TP is kept: one engine per tp training ranks of a node. A node whose rank
    count is not a multiple of tp could not be split into engines, and LR308 says so."""
    result = _validate(name)
    assert result.config is not None and _errors(result) == []
    tp = result.config.policy.generation.vllm_cfg.tensor_parallel_size
    assert tp > 1 and result.config.cluster.world_size > tp
    odd = validate_recipe(FIXTURES / name, [f"cluster.gpus_per_node={tp + 2}"])
    assert ("LR308", "policy.generation.vllm_cfg.tensor_parallel_size") in _error_keys(odd)


@pytest.mark.parametrize("name", sorted(EXPECTED_COMPAT))
def test_compat_keys_are_named_by_lr901(name: str) -> None:
    warned = {".".join(d.path) for d in _validate(name).warnings if d.rule == "LR901"}
    assert warned == EXPECTED_COMPAT[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_COMPAT))
def test_other_warnings_are_the_expected_kinds(name: str) -> None:
    assert {d.rule for d in _validate(name).warnings} <= ALLOWED_WARNINGS


def test_nemo_spellings_resolve() -> None:
    cfg = _validate("sft.yaml").config
    assert cfg is not None
    mg = cfg.policy.megatron_cfg
    assert mg.peft.lora_dtype is None                       # `lora_dtype: None` (a string)
    assert mg.optimizer.adam_eps == 1e-5                    # `1e-5` is a float
    assert mg.optimizer.clip_grad == 1.0                    # ${policy.max_grad_norm}
    assert cfg.policy.dynamic_batching is not None
    assert cfg.policy.dynamic_batching["train_mb_tokens"] == \
        cfg.policy.max_total_sequence_length * cfg.policy.train_micro_batch_size  # ${mul:..}
    assert cfg.policy.tokenizer.name == cfg.policy.model_name       # ${policy.model_name}
    assert cfg.logger.wandb.name == "sft-dev-squad"      # text around an interpolation


def test_relative_interpolation_and_env_vars() -> None:
    dpo = _validate("dpo.yaml").config
    grpo = _validate("grpo_math_1B.yaml").config
    assert dpo is not None and grpo is not None
    assert dpo.dpo.sft_average_log_probs is dpo.dpo.preference_average_log_probs  # ${.x}
    assert grpo.policy.generation.val_temperature == grpo.policy.generation.temperature


def test_child_recipes_inherit_and_override() -> None:
    sft = _validate(f"{LLM}/sft-llama3.1-8b-1n8g-fsdp2tp1-lora.yaml").config
    assert sft is not None
    lora = sft.policy.active_lora
    assert lora is not None and (lora.dim, lora.alpha) == (128, 128)
    assert sft.sft.val_batches == 8                         # inherited from ../../sft.yaml
    assert sft.data.train.seed == sft.sft.seed == 42        # ${sft.seed}, resolved after merge

    # a chain ./ then ../../: 2n4g overrides 2n8g, which overrides sft.yaml
    two = _validate(f"{LLM}/sft-nanov3-30BA3B-2n4g-fsdp2-lora.yaml").config
    eight = _validate(f"{LLM}/sft-nanov3-30BA3B-2n8g-fsdp2-lora.yaml").config
    assert two is not None and eight is not None
    assert (two.cluster.gpus_per_node, eight.cluster.gpus_per_node) == (4, 8)
    assert two.policy.active_lora == eight.policy.active_lora is not None

    tq = _validate(f"{LLM}/grpo-qwen3-8B-base-1n8g-fsdp2-lora-tq_mooncake.yaml").config
    assert tq is not None and tq.data_plane is not None
    assert (tq.data_plane["enabled"], tq.data_plane["backend"]) == (True, "mooncake_cpu")
    assert tq.data_plane["impl"] == "transfer_queue"        # the rest merged from the base
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


STOCK_FULL_FT = ["dpo.yaml", "grpo_math_1B.yaml", "grpo_smoke.yaml", "grpo_math_8B.yaml",
                 "grpo_math_1B_megatron.yaml", "grpo_math_8B_megatron.yaml"]


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
    sft = _validate("sft_openmathinstruct2_megatron.yaml").config
    grpo = _validate("grpo_math_1B_megatron.yaml").config
    assert sft is not None and grpo is not None
    assert sft.policy.optimizer is None and sft.policy.backend == "megatron"
    assert sft.policy.megatron_cfg.optimizer.clip_grad == 0.0   # no clipping
    assert grpo.policy.optimizer is None and grpo.policy.backend == "megatron"
    assert grpo.policy.megatron_cfg.optimizer.clip_grad == 1.0  # ${policy.max_grad_norm}


def test_a_null_optimizer_on_dtensor_is_caught() -> None:
    result = validate_recipe(FIXTURES / "sft_openmathinstruct2_megatron.yaml",
                             ["policy.dtensor_cfg.enabled=true",
                              "policy.megatron_cfg.enabled=false"])
    assert ("LR131", "policy.optimizer") in _error_keys(result)


def test_val_period_minus_one_turns_validation_off() -> None:
    """grpo_smoke.yaml's `val_period: -1` (NeMo RL validates only when val_period > 0). Before:
    LR002 'expected greater than or equal to 0'."""
    cfg = _validate("grpo_smoke.yaml").config
    assert cfg is not None and cfg.grpo is not None and cfg.grpo.val_period == 0
    other = validate_recipe(FIXTURES / "grpo_smoke.yaml", ["grpo.val_period=-2"])
    assert [(d.rule, d.dotted_path) for d in other.errors] == [("LR002", "grpo.val_period")]


def test_router_replay_is_accepted_and_a_typo_is_not() -> None:
    """grpo_math_qwen30ba3b_megatron.yaml's `policy.router_replay` (MoE routing replay, which
    lora-rl does not do): accepted, LR901 when switched on; a misspelling is still LR001."""
    name = "grpo_math_qwen30ba3b_megatron.yaml"
    on = validate_recipe(FIXTURES / name, ["policy.router_replay.enabled=true"])
    assert _errors(on) == []
    assert "policy.router_replay" in {d.dotted_path for d in on.warnings if d.rule == "LR901"}
    typo = validate_recipe(FIXTURES / name, ["++policy.router_replays.enabled=true"])
    assert ("LR001", "policy.router_replays") in _error_keys(typo)


def test_a_recipe_without_an_algorithm_section_is_reported_not_crashed(tmp_path: Path) -> None:
    """NeMo RL's distillation_math_megatron.yaml shape (no sft/dpo/grpo, packing on Megatron).
    Before: ValueError from the LR517 rule reading `cfg.algorithm`."""
    recipe = tmp_path / "distill.yaml"
    recipe.write_text("policy:\n  model_name: m\n  dtensor_cfg:\n    enabled: false\n"
                      "  megatron_cfg:\n    enabled: true\n  sequence_packing:\n"
                      "    enabled: true\n")
    result = validate_recipe(recipe)
    assert [d.rule for d in result.errors] == ["LR100"]


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
    overrides = GUIDE_OVERRIDES
    plain = [str(FIXTURES / n) for n in sorted(EXPECTED_COMPAT) if n not in overrides]
    runs = [plain] + [[str(FIXTURES / n), *(f"--set={o}" for o in overrides[n])]
                      for n in sorted(overrides)]
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
    # missing packages (train extra, vLLM, megatron-core), hub model and data set ids
    assert errors == {"LR601", "LR304", "LR602", "LR610", "LR501"}


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
    child.write_text(f"defaults: {FIXTURES / 'sft_openmathinstruct2_megatron.yaml'}\n"
                     "policy:\n  megatron_cfg:\n    peft:\n      enabled: true\n")
    result = convert_text(child, "dtensor")
    assert result.output_errors == []
    assert "  optimizer:\n    name: torch.optim.AdamW\n    kwargs:\n      lr: 2e-05\n" \
        in result.text
    assert "\n  max_grad_norm: 0.0\n" in result.text         # clip_grad: 0, no clipping
