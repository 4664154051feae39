"""DoRA: the magnitude starts at PEFT's value, merge equals PEFT's merge and the merged model
the adapter's logits, unmerge restores the base exactly, and what DoRA cannot do is refused."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lora_rl.config.lora import DTensorLoraConfig
from lora_rl.lora import LoraSpec, apply_lora, iter_lora_layers, merge_lora, unmerge_lora
from lora_rl.lora.experts import ExpertsLora

DORA = DTensorLoraConfig(enabled=True, dim=4, alpha=8, use_dora=True, use_triton=False,
                         match_all_linear=False, target_modules=["q_proj", "down_proj"])
TOKENS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(6))


def _trained_pair(model):
    ours = copy.deepcopy(model)
    apply_lora(ours, DORA)
    torch.manual_seed(7)
    theirs = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "down_proj"]))
    twins = dict(theirs.named_modules())
    for name, layer in iter_lora_layers(ours):
        twin = twins[f"base_model.model.{name}"]
        # PEFT's initial magnitude is ||W|| per output row: so is ours.
        assert torch.allclose(layer.lora_magnitude_vector,
                              twin.lora_magnitude_vector["default"].weight, atol=1e-6, rtol=0)
        layer.lora_B.weight.data.normal_(std=0.1)
        layer.lora_magnitude_vector.data.mul_(1 + 0.1 * torch.randn_like(
            layer.lora_magnitude_vector))
        twin.lora_A["default"].weight.data.copy_(layer.lora_A.weight)
        twin.lora_B["default"].weight.data.copy_(layer.lora_B.weight)
        twin.lora_magnitude_vector["default"].weight.data.copy_(layer.lora_magnitude_vector)
    return ours, theirs


def test_merge_equals_peft_and_unmerge_restores_the_base(tiny_llama):
    original = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    ours, theirs = _trained_pair(tiny_llama)
    with torch.no_grad():
        adapter_logits = ours(TOKENS).logits
        merge_lora(ours)
        merged_logits = ours(TOKENS).logits
        peft_merged = theirs.merge_and_unload()
        peft_state = peft_merged.state_dict()
    assert (adapter_logits - merged_logits).abs().max() < 1e-5
    assert (peft_merged(TOKENS).logits - merged_logits).abs().max() < 1e-5
    for name, layer in iter_lora_layers(ours):
        assert torch.allclose(layer.base.weight, peft_state[f"{name}.weight"], atol=1e-6, rtol=0)
        assert not torch.equal(layer.base.weight, original[f"{name}.weight"])
    unmerge_lora(ours)
    for name, layer in iter_lora_layers(ours):
        assert torch.equal(layer.base.weight, original[f"{name}.weight"])
    with torch.no_grad():
        assert torch.equal(ours(TOKENS).logits, adapter_logits)


def test_magnitude_is_trained_and_grouped_as_peft_does(tiny_llama):
    from lora_rl.lora import lora_plus_parameters, lora_state_dict

    apply_lora(tiny_llama, DORA)
    trainable = {n for n, p in tiny_llama.named_parameters() if p.requires_grad}
    assert sum(n.endswith("lora_magnitude_vector") for n in trainable) == 4
    state = lora_state_dict(tiny_llama)
    assert state["model.layers.0.self_attn.q_proj.lora_magnitude_vector"].shape == (64,)
    # PEFT's create_loraplus_optimizer puts 1-D parameters (the magnitude) with B.
    fast = {id(p) for p in lora_plus_parameters(tiny_llama)}
    assert all(id(layer.lora_magnitude_vector) in fast for _, layer in
               iter_lora_layers(tiny_llama))


def test_what_dora_cannot_do_is_refused():
    with pytest.raises(ValueError, match="Triton"):
        LoraSpec(rank=4, alpha=8, use_dora=True, use_triton=True)
    with pytest.raises(ValueError, match="dropout_position 'pre'"):
        LoraSpec(rank=4, alpha=8, use_dora=True, dropout=0.1, dropout_position="post")
    weight = torch.nn.Parameter(torch.zeros(2, 6, 4))
    experts = torch.nn.Module()
    experts.down_proj = weight
    with pytest.raises(ValueError, match="MoE expert"):
        ExpertsLora(experts, ["down_proj"], LoraSpec(rank=2, alpha=4, use_dora=True))


def test_vllm_merged_weights_are_the_dora_merge(tiny_llama):
    from lora_rl.generation.vllm_engine import merged_weights

    ours, _ = _trained_pair(tiny_llama)
    sent = dict(merged_weights(ours, {}))
    merge_lora(ours)
    for name, layer in iter_lora_layers(ours):
        assert torch.allclose(sent[f"{name}.weight"], layer.base.weight, atol=1e-6, rtol=0)


def test_convert_carries_dora_and_lora_plus_between_the_blocks_not_to_areal():
    from lora_rl.convert.mapping import read_block, write_block

    spec, _ = read_block("dtensor", {"use_dora": True, "lora_plus_lr_ratio": 8.0, "dim": 4})
    block, losses = write_block("megatron", spec, "dtensor")
    assert not {loss.key for loss in losses} & {"use_dora", "lora_plus_lr_ratio"}
    assert block["use_dora"] is True and block["lora_plus_lr_ratio"] == 8.0
    back, _ = read_block("megatron", block)
    assert back.use_dora and back.lora_plus_lr_ratio == 8.0
    _, losses = write_block("areal", spec, "dtensor")
    assert {loss.key for loss in losses} >= {"use_dora", "lora_plus_lr_ratio"}
    plain, _ = read_block("dtensor", {"dim": 4})
    _, losses = write_block("areal", plain, "dtensor")
    assert not {loss.key for loss in losses} & {"use_dora", "lora_plus_lr_ratio"}
