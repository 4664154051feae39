"""Merge/unmerge, disable, state dicts, dropout placement, dtype and tuple-returning bases."""

import pytest
import torch

from lora_rl.config.lora import DTensorLoraConfig, MegatronPeftConfig
from lora_rl.lora import (
    LoraLinear,
    apply_lora,
    disable_lora,
    iter_lora_layers,
    load_lora_state_dict,
    lora_state_dict,
    merge_and_unwrap,
    merge_lora,
    unmerge_lora,
)
from lora_rl.lora.spec import LoraSpec

TOKENS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))


def _randomise_b(model):
    torch.manual_seed(4)
    for _, layer in iter_lora_layers(model):
        layer.lora_B.weight.data.normal_(std=0.5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_merge_equals_unmerged_and_unmerge_restores_exactly(tiny_llama, dtype, tol):
    model = tiny_llama.to(dtype)
    apply_lora(model, DTensorLoraConfig(enabled=True, dim=4, alpha=8))
    _randomise_b(model)
    originals = {n: layer.base.weight.clone() for n, layer in iter_lora_layers(model)}
    with torch.no_grad():
        unmerged = model(TOKENS).logits.float()
        merge_lora(model)
        merged = model(TOKENS).logits.float()
        unmerge_lora(model)
        again = model(TOKENS).logits.float()
    assert (merged - unmerged).abs().max() < tol * max(1.0, unmerged.abs().max())
    assert torch.equal(again, unmerged)
    for name, layer in iter_lora_layers(model):
        assert torch.equal(layer.base.weight, originals[name])


def test_double_merge_is_refused(tiny_llama):
    apply_lora(tiny_llama, DTensorLoraConfig(enabled=True))
    merge_lora(tiny_llama)
    with pytest.raises(RuntimeError, match="already merged"):
        merge_lora(tiny_llama)


def test_disable_gives_the_base_model(tiny_llama_base, tiny_llama):
    apply_lora(tiny_llama, DTensorLoraConfig(enabled=True))
    _randomise_b(tiny_llama)
    with torch.no_grad():
        with disable_lora(tiny_llama):
            off = tiny_llama(TOKENS).logits
        on = tiny_llama(TOKENS).logits
        base = tiny_llama_base(TOKENS).logits
    assert torch.equal(off, base) and not torch.allclose(on, base)


def test_merge_and_unwrap_leaves_plain_linears(tiny_llama):
    apply_lora(tiny_llama, DTensorLoraConfig(enabled=True))
    _randomise_b(tiny_llama)
    with torch.no_grad():
        before = tiny_llama(TOKENS).logits
        merge_and_unwrap(tiny_llama)
        after = tiny_llama(TOKENS).logits
    assert not list(iter_lora_layers(tiny_llama))
    assert torch.allclose(before, after, atol=1e-5)


def test_state_dict_round_trip_and_strict_loading(tiny_llama, tiny_llama_base):
    import copy

    apply_lora(tiny_llama, DTensorLoraConfig(enabled=True, dim=4))
    _randomise_b(tiny_llama)
    state = lora_state_dict(tiny_llama)
    assert "model.layers.0.self_attn.q_proj.lora_A.weight" in state
    other = copy.deepcopy(tiny_llama_base)
    apply_lora(other, DTensorLoraConfig(enabled=True, dim=4))
    load_lora_state_dict(other, state)
    with torch.no_grad():
        assert torch.equal(other(TOKENS).logits, tiny_llama(TOKENS).logits)
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(other, dict(list(state.items())[1:]))
    wrong_rank = copy.deepcopy(tiny_llama_base)
    apply_lora(wrong_rank, DTensorLoraConfig(enabled=True, dim=8))
    with pytest.raises(ValueError, match="shape"):
        load_lora_state_dict(wrong_rank, state)


def _spec(position: str, dropout: float = 0.5) -> LoraSpec:
    return LoraSpec(rank=2, alpha=4, dropout=dropout, dropout_position=position,
                    a_init="xavier", b_init="zero", dtype=None, use_triton=False)


@pytest.mark.parametrize("position", ["pre", "post"])
def test_dropout_position_matches_hand_computation(position):
    torch.manual_seed(0)
    layer = LoraLinear(torch.nn.Linear(6, 5), _spec(position)).train()
    layer.lora_B.weight.data.normal_()
    x = torch.randn(3, 6)
    torch.manual_seed(7)
    got = layer(x)
    torch.manual_seed(7)
    drop = torch.nn.Dropout(0.5)
    a, b, scale = layer.lora_A.weight, layer.lora_B.weight, 2.0
    if position == "pre":
        expected = layer.base(x) + (drop(x) @ a.t() @ b.t()) * scale
    else:
        expected = layer.base(x) + drop((x @ a.t() @ b.t()) * scale)
    assert torch.allclose(got, expected, atol=1e-6)


def test_adapter_dtype_can_differ_from_base():
    base = torch.nn.Linear(8, 8).to(torch.bfloat16)
    spec = LoraSpec(2, 4, 0.0, "pre", "xavier", "zero", "float32", False)
    layer = LoraLinear(base, spec)
    assert layer.lora_A.weight.dtype == torch.float32
    assert layer(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_tuple_returning_base_gets_the_update_on_its_output():
    class ParallelLike(torch.nn.Module):  # Megatron linears return (output, bias)
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(5, 6))

        def forward(self, x):
            return x @ self.weight.t(), None

    layer = LoraLinear(ParallelLike(), _spec("pre", dropout=0.0))
    layer.lora_B.weight.data.normal_()
    x = torch.randn(2, 6)
    out, bias = layer(x)
    assert bias is None
    expected = x @ layer.base.weight.t() + x @ layer.lora_A.weight.t() @ layer.lora_B.weight.t() * 2
    assert torch.allclose(out, expected, atol=1e-6)


def test_megatron_config_defaults_apply():
    spec_model = torch.nn.Module()
    spec_model.linear_qkv = torch.nn.Linear(4, 12)
    spec_model.linear_proj = torch.nn.Linear(4, 4)
    spec_model.other = torch.nn.Linear(4, 4)
    report = apply_lora(spec_model, MegatronPeftConfig(enabled=True, dim=2))
    assert set(report.patched) == {"linear_qkv", "linear_proj"}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dropout_position", ["pre", "post"])
def test_fused_path_equals_module_path(bias, dropout_position):
    """The fused autograd path (plain nn.Linear base) and the module-by-module path (any other
    base) compute the same outputs and gradients, dropout included (same RNG state)."""
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 10, bias=bias)
    spec = LoraSpec(rank=3, alpha=6, dropout=0.3, dropout_position=dropout_position)
    layer = LoraLinear(base, spec)
    layer.lora_B.weight.data.normal_()
    x = torch.randn(2, 5, 12)
    results = []
    for hooked in (False, True):
        # A forward hook is enough to make the layer take the generic path.
        handle = layer.register_forward_hook(lambda *_: None) if hooked else None
        assert layer._fusable(x) is (not hooked and dropout_position == "pre")
        inp = x.clone().requires_grad_(True)
        torch.manual_seed(1)
        out = layer(inp)
        out.pow(2).sum().backward()
        results.append((out.detach(), inp.grad, layer.lora_A.weight.grad.clone(),
                        layer.lora_B.weight.grad.clone()))
        layer.zero_grad()
        if handle:
            handle.remove()
    for fused, generic in zip(*results, strict=True):
        torch.testing.assert_close(fused, generic, rtol=1e-5, atol=1e-6)
    assert base.weight.grad is None  # the frozen base gets no gradient on either path
