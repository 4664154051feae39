"""The architecture table against the installed transformers: the copied tensor-parallel plans
equal transformers' own, and the derived module names equal the real models' linear layers."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lora_rl.architecture import (
    FAMILIES,
    LORA_SHARDING,
    UnsupportedArchitecture,
    architecture_from_config,
    supported_families,
)
from lora_rl.tiny.families import FAMILY_CONFIGS
from tests.peft_twins import assert_logits_and_lora_grads_equal, pair_with_peft


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_plan_is_transformers_own(model_type):
    import transformers

    class_name, _ = FAMILY_CONFIGS[model_type]
    config = getattr(transformers, class_name)()
    assert dict(FAMILIES[model_type].tp_plan) == config.base_model_tp_plan


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_linear_names_are_the_models(family_models, model_type):
    from transformers import AutoModelForCausalLM

    directory = family_models[model_type]
    arch = architecture_from_config(json.loads((directory / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(directory)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(arch.hf_linear_names()) == sorted(linears)
    layer = model.model.layers[0]
    for linear in arch.linears(0):
        assert linear.style in LORA_SHARDING
        assert isinstance(layer.get_submodule(linear.path), torch.nn.Linear)
    for expert in arch.expert_params():
        assert layer.get_parameter(expert.path).dim() == 3


def test_unknown_family_names_the_supported_ones():
    with pytest.raises(UnsupportedArchitecture, match="supported: gemma2, gemma3_text, llama"):
        architecture_from_config({"model_type": "gpt2", "num_hidden_layers": 2})


def test_backend_support_is_explained():
    gemma = architecture_from_config({"model_type": "gemma2", "num_hidden_layers": 2})
    reason = gemma.unsupported("megatron")
    assert "megatron supports: llama, mistral, mixtral, qwen2, qwen3, qwen3_moe" in reason
    assert gemma.unsupported("dtensor", tensor_parallel=2) is None
    moe = architecture_from_config({"model_type": "qwen3_moe", "num_hidden_layers": 2})
    assert moe.unsupported("dtensor") is None
    assert moe.unsupported("dtensor", tensor_parallel=2) is None  # experts split (moe_tp_experts)
    assert "qwen3_moe" in supported_families("dtensor", tensor_parallel=True)
    assert moe.unsupported("megatron") is None
    # Megatron shards MoE too, under sequence parallelism (LR415 asks for it).
    assert moe.unsupported("megatron", tensor_parallel=2) is None
    assert "qwen3_moe" in supported_families("megatron", tensor_parallel=True)


def test_dense_layers_of_a_moe_model_keep_their_mlp():
    arch = architecture_from_config({"model_type": "qwen3_moe", "num_hidden_layers": 2,
                                     "mlp_only_layers": [1]})
    assert arch.moe_layers == (0,)
    assert [m.path for m in arch.linears(0) if m.group == "mlp"] == []
    assert [m.path for m in arch.linears(1) if m.group == "mlp"] == [
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_phi3_lora_is_peft_layout_on_the_fused_modules(family_models):
    """PEFT adapts Phi-3's fused qkv_proj / gate_up_proj as one module each (its default
    targets for phi3 are these names); lora-rl does the same, so logits and gradients match."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lora_rl.config.lora import DTensorLoraConfig
    from lora_rl.lora import apply_lora

    base = AutoModelForCausalLM.from_pretrained(family_models["phi3"])
    ours = copy.deepcopy(base)
    report = apply_lora(ours, DTensorLoraConfig(enabled=True, dim=4, alpha=8))
    assert sorted({n.rsplit(".", 1)[-1] for n in report.patched}) == [
        "down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    theirs = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    pairs = pair_with_peft(ours, theirs)
    tokens = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(2))
    assert_logits_and_lora_grads_equal(ours, theirs, pairs, tokens)


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "mistral"])
def test_megatron_mapping_round_trips_family_weights(family_models, model_type):
    """Qwen2's q/k/v biases fuse into linear_qkv's bias (interleaved per query group like the
    weight); Qwen3's q_norm/k_norm become q_layernorm/k_layernorm."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from lora_rl.backends.megatron.bridge import LlamaShape, hf_to_megatron, megatron_to_hf

    directory = family_models[model_type]
    shape = LlamaShape.from_hf(AutoConfig.from_pretrained(directory))
    hf = load_file(str(directory / "model.safetensors"))
    names = ["embedding.word_embeddings.weight", "decoder.final_layernorm.weight",
             "output_layer.weight"]
    layer = ["input_layernorm.weight", "self_attention.linear_qkv.weight",
             "self_attention.linear_proj.weight", "pre_mlp_layernorm.weight",
             "mlp.linear_fc1.weight", "mlp.linear_fc2.weight"]
    if model_type == "qwen2":
        layer.append("self_attention.linear_qkv.bias")
    if model_type == "qwen3":
        layer += ["self_attention.q_layernorm.weight", "self_attention.k_layernorm.weight"]
    names += [f"decoder.layers.{i}.{n}" for i in range(shape.num_layers) for n in layer]
    megatron = hf_to_megatron(hf, names, shape)
    back = megatron_to_hf(megatron, shape)
    assert back.keys() == hf.keys()
    assert all(torch.equal(back[k], hf[k]) for k in hf)
