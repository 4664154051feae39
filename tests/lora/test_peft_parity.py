"""lora-rl's LoRA equals Hugging Face PEFT's given the same A/B values: logits and gradients."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lora_rl.config.lora import DTensorLoraConfig
from lora_rl.lora import apply_lora, iter_lora_layers

CASES = [
    # (id, lora-rl config kwargs, PEFT target_modules)
    ("all-linear", {"match_all_linear": True}, ["q_proj", "k_proj", "v_proj", "o_proj",
                                                "gate_proj", "up_proj", "down_proj"]),
    ("q-v", {"match_all_linear": False, "target_modules": ["q_proj", "v_proj"]},
     ["q_proj", "v_proj"]),
    ("wildcard-mlp", {"match_all_linear": False, "target_modules": ["model.layers.*.mlp.*"]},
     r".*mlp\..*_proj"),
    ("exclude", {"match_all_linear": False, "exclude_modules": ["*.self_attn.*"]},
     ["gate_proj", "up_proj", "down_proj"]),
]

VARIANTS = [
    # (id, lora-rl config kwargs, PEFT LoraConfig kwargs): the same adapter maths both ways
    ("plain", {}, {}),
    ("rslora", {"use_rslora": True}, {"use_rslora": True}),
    ("dora", {"use_dora": True, "use_triton": False}, {"use_dora": True}),
    ("dora-rslora", {"use_dora": True, "use_rslora": True, "use_triton": False},
     {"use_dora": True, "use_rslora": True}),
]


def _paired(model, kwargs, peft_targets, position, variant=("plain", {}, {})):
    _, ours_variant, peft_variant = variant
    ours = copy.deepcopy(model)
    report = apply_lora(ours, DTensorLoraConfig(enabled=True, dim=4, alpha=8,
                                                dropout_position=position, **kwargs,
                                                **ours_variant))
    theirs = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                             target_modules=peft_targets,
                                                             **peft_variant))
    peft_modules = dict(theirs.named_modules())
    torch.manual_seed(1)
    pairs = []
    for name, layer in iter_lora_layers(ours):
        layer.lora_B.weight.data.normal_()  # non-zero B, so the adapter matters
        twin = peft_modules[f"base_model.model.{name}"]
        twin.lora_A["default"].weight.data.copy_(layer.lora_A.weight)
        twin.lora_B["default"].weight.data.copy_(layer.lora_B.weight)
        if layer.use_dora:  # a magnitude away from ||W||, so it matters
            layer.lora_magnitude_vector.data.mul_(1 + 0.1 * torch.randn_like(
                layer.lora_magnitude_vector))
            twin.lora_magnitude_vector["default"].weight.data.copy_(layer.lora_magnitude_vector)
        pairs.append((layer, twin))
    assert len(pairs) == len([n for n, m in theirs.named_modules() if hasattr(m, "lora_A")
                              and isinstance(m.lora_A, torch.nn.ModuleDict)])
    return ours, theirs, pairs, report


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("position", ["pre", "post"])
@pytest.mark.parametrize("case_id,kwargs,peft_targets", CASES, ids=[c[0] for c in CASES])
def test_logits_and_grads_equal_peft(tiny_llama, case_id, kwargs, peft_targets, position,
                                     variant):
    ours, theirs, pairs, report = _paired(tiny_llama, kwargs, peft_targets, position, variant)
    assert report.scale == pairs[0][1].scaling["default"]
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    ours_logits = ours(tokens).logits
    peft_logits = theirs(tokens).logits
    assert torch.allclose(ours_logits, peft_logits, atol=1e-5, rtol=0)
    ours_logits.square().mean().backward()
    peft_logits.square().mean().backward()
    for layer, twin in pairs:
        assert torch.allclose(layer.lora_A.weight.grad, twin.lora_A["default"].weight.grad,
                              atol=1e-5, rtol=0)
        assert torch.allclose(layer.lora_B.weight.grad, twin.lora_B["default"].weight.grad,
                              atol=1e-5, rtol=0)
        if layer.use_dora:
            assert torch.allclose(layer.lora_magnitude_vector.grad,
                                  twin.lora_magnitude_vector["default"].weight.grad,
                                  atol=1e-5, rtol=0)


def test_only_adapters_are_trainable(tiny_llama):
    report = apply_lora(tiny_llama, DTensorLoraConfig(enabled=True, dim=4))
    trainable = {n for n, p in tiny_llama.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert report.trainable_params == sum(p.numel() for n, p in tiny_llama.named_parameters()
                                          if n in trainable)
    assert len(report.patched) == 14 and report.scale == 32 / 4


def test_uniform_init_matches_peft_kaiming_uniform(tiny_llama):
    peft_model = copy.deepcopy(tiny_llama)
    torch.manual_seed(5)
    apply_lora(tiny_llama, DTensorLoraConfig(enabled=True, dim=4, lora_A_init="uniform",
                                             match_all_linear=False, target_modules=["q_proj"]))
    torch.manual_seed(5)
    peft_model = get_peft_model(peft_model,
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    theirs = dict(peft_model.named_modules())
    layers = list(iter_lora_layers(tiny_llama))
    assert len(layers) == 2
    for name, ours in layers:
        twin = theirs[f"base_model.model.{name}"]
        assert torch.equal(ours.lora_A.weight, twin.lora_A["default"].weight)
        assert torch.count_nonzero(ours.lora_B.weight) == 0
