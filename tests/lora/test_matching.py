"""Module matching tables for both semantics (names only; torch-free code path)."""

import warnings

import pytest

from lora_rl.config.lora import DTensorLoraConfig as D
from lora_rl.config.lora import MegatronPeftConfig as M
from lora_rl.lora.matching import LoraMatchError, LoraWarning, match_names, select

HF = [f"model.layers.{i}.{m}" for i in (0, 1, 11) for m in
      ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")] + ["lm_head"]
MG = [f"decoder.layers.{i}.{m}" for i in (0, 1, 11) for m in
      ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1",
       "mlp.linear_fc2")] + ["output_layer"]


def short(names):
    return sorted({n.split(".layers.")[-1] if ".layers." in n else n for n in names})


@pytest.mark.parametrize("cfg,expected_count,must,must_not", [
    (D(), 21, ["model.layers.0.self_attn.q_proj"], ["lm_head"]),
    (D(match_all_linear=False, target_modules=["q_proj"]), 3, ["model.layers.11.self_attn.q_proj"],
     ["model.layers.0.self_attn.k_proj"]),
    (D(match_all_linear=False, target_modules=["model.layers.1.*"]), 7,
     ["model.layers.1.mlp.up_proj"], ["model.layers.11.mlp.up_proj"]),
    (D(match_all_linear=False, exclude_modules=["*mlp*"]), 12, ["model.layers.0.self_attn.o_proj"],
     ["model.layers.0.mlp.up_proj", "lm_head"]),
    (D(match_all_linear=False, target_modules=["*_proj"], exclude_modules=["*.o_proj"]), 18,
     ["model.layers.0.self_attn.v_proj"], ["model.layers.0.self_attn.o_proj"]),
], ids=["match-all", "short-name", "layer-1-not-11", "exclude-only", "target-and-exclude"])
def test_dtensor_semantics(cfg, expected_count, must, must_not):
    chosen = select(HF, cfg)
    assert len(chosen) == expected_count
    assert all(n in chosen for n in must) and not any(n in chosen for n in must_not)


@pytest.mark.parametrize("cfg,expected_count,must,must_not", [
    (M(), 12, ["decoder.layers.11.mlp.linear_fc2"], ["output_layer"]),
    (M(target_modules=None), 12, ["decoder.layers.0.self_attention.linear_qkv"], ["output_layer"]),
    (M(target_modules=["linear_qkv"]), 3, ["decoder.layers.1.self_attention.linear_qkv"],
     ["decoder.layers.1.self_attention.linear_proj"]),
    (M(target_modules=["*.layers.1.*.linear_qkv"]), 1,
     ["decoder.layers.1.self_attention.linear_qkv"],
     ["decoder.layers.11.self_attention.linear_qkv"]),
    (M(target_modules=[], exclude_modules=["linear_fc2"]), 9, ["decoder.layers.0.mlp.linear_fc1"],
     ["decoder.layers.0.mlp.linear_fc2", "output_layer"]),
    (M(target_modules=["linear_q", "linear_v"]), 6,
     ["decoder.layers.0.self_attention.linear_q", "decoder.layers.11.self_attention.linear_v"],
     ["decoder.layers.0.self_attention.linear_qkv", "decoder.layers.0.self_attention.linear_k"]),
    (M(target_modules=["*.layers.1.*.linear_fc1_up"]), 1, ["decoder.layers.1.mlp.linear_fc1_up"],
     ["decoder.layers.11.mlp.linear_fc1_up", "decoder.layers.1.mlp.linear_fc1_gate"]),
    (M(target_modules=[], exclude_modules=["linear_k"]), 18,
     ["decoder.layers.0.self_attention.linear_q", "decoder.layers.0.mlp.linear_fc1_gate",
      "decoder.layers.0.self_attention.linear_proj"],
     ["decoder.layers.0.self_attention.linear_k", "decoder.layers.0.mlp.linear_fc1",
      "output_layer"]),
], ids=["default-four", "null-target", "short-name", "layer-1-not-11", "exclude",
        "canonical-q-v", "canonical-wildcard", "canonical-exclude"])
def test_megatron_semantics(cfg, expected_count, must, must_not):
    chosen = select(MG, cfg)
    assert len(chosen) == expected_count
    assert all(n in chosen for n in must) and not any(n in chosen for n in must_not)


def test_zero_matches_lists_existing_names():
    with pytest.raises(LoraMatchError) as err:
        match_names(HF, D(match_all_linear=False, target_modules=["query"]))
    assert "q_proj" in str(err.value) and "down_proj" in str(err.value)


def test_output_layer_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        match_names(HF, D(match_all_linear=False, target_modules=["lm_head", "q_proj"]))
    assert any(issubclass(w.category, LoraWarning) and "lm_head" in str(w.message) for w in caught)


def test_fused_and_canonical_names_conflict():
    from lora_rl.lora.matching import ModuleMatcher

    matcher = ModuleMatcher.from_config(M(target_modules=["linear_q", "linear_fc1"]))
    assert "linear_fc1_gate/up" in matcher.conflict()
    assert ModuleMatcher.from_config(M(target_modules=["linear_q", "linear_proj"])).conflict() \
        is None
